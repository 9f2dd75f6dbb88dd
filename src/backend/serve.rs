//! `serve`: the backend's runtime. Three loops around the SQLite store:
//! - **inbound**: every message from the pools is applied (once, by message id) and only then
//!   acknowledged to the broker;
//! - **dispatcher**: queued runs go to IDLE workers; the outbox is published while the link is
//!   connected; pools are told how many runs wait for them (`pool.status`);
//! - **HTTP**: the API and `/metrics`;
//! - **launcher API** (when `--launcher-listen` is given): HTTPS for the run Pods' launchers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use ulid::Ulid;

use super::BackendError;
use super::blobs::Blobs;
use super::state::StateDir;
use super::store::{Applied, PoolGauges, Store};
use super::{http, launcher};
use crate::credentials::{BrokerScheme, BrokerUrl};
use crate::link::{BackendEndpoint, BackendLink, Inbound, LinkMetrics, LinkOptions, LinkState};
use crate::protocol::{Body, Message, PoolDemand, PoolStatus, check_launcher_endpoint};

/// The launcher image a run gets unless its submission names one.
pub const DEFAULT_LAUNCHER_IMAGE: &str = "public.ecr.aws/spacelift/launcher:latest";

/// Options of `serve`.
#[derive(Clone)]
pub struct ServeOptions {
    /// HTTP listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Overrides the recorded broker URL.
    pub broker_url: Option<String>,
    /// Allow `mqtt://`.
    pub allow_insecure: bool,
    /// Default launcher image for runs.
    pub launcher_image: String,
    /// How often the dispatcher looks at the queue even without a trigger.
    pub tick: Duration,
    /// Link tuning (metrics are set by the server).
    pub link: LinkOptions,
    /// Where the launcher API listens (HTTPS); off when `None`.
    pub launcher_listen: Option<SocketAddr>,
    /// The launcher API's URL put into every schedule (`https://host[:port]`); by default
    /// `https://<launcher_listen>`.
    pub launcher_url: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            broker_url: None,
            allow_insecure: false,
            launcher_image: DEFAULT_LAUNCHER_IMAGE.to_string(),
            tick: Duration::from_secs(1),
            link: LinkOptions {
                first_connect_retries: None,
                ..LinkOptions::default()
            },
            launcher_listen: None,
            launcher_url: None,
        }
    }
}

/// Shared by the loops and the HTTP handlers.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub link_state: watch::Receiver<LinkState>,
    pub registry: prometheus::Registry,
    pub gauges: http::Gauges,
    pub launcher_image: String,
    pub wake: Notify,
    pub blobs: Blobs,
    /// What schedules carry as `launcherEndpoint` (the launcher API is on).
    pub launcher_endpoint: Option<String>,
}

/// A running backend.
pub struct Server {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// Where the launcher API listens, when it is on.
    pub launcher_addr: Option<SocketAddr>,
    /// The launcher API's URL in schedules, when it is on.
    pub launcher_url: Option<String>,
    link: Option<Arc<BackendLink>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Runs `f` on the blocking pool (SQLite is synchronous).
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|err| BackendError::Store(format!("store task failed: {err}")))?
}

impl Server {
    /// Opens the state, connects to the broker and starts serving.
    pub async fn start(state: &StateDir, options: ServeOptions) -> Result<Self, BackendError> {
        let config = state.config()?;
        let broker_url = options.broker_url.clone().unwrap_or(config.broker_url);
        let broker = BrokerUrl::parse(&broker_url)
            .map_err(|reason| BackendError::Input(format!("broker URL: {reason}")))?;
        let tls = match broker.scheme {
            BrokerScheme::Tls => Some(state.backend_tls()?),
            BrokerScheme::Plain => None,
        };
        let store = Arc::new(state.open_store()?);
        let resent = blocking(&store, |s| s.resend_unsettled()).await?;
        if resent > 0 {
            tracing::info!(
                resent,
                "re-sending schedules and stops not yet settled before the restart"
            );
        }

        let registry = prometheus::Registry::new();
        let gauges = http::Gauges::register(&registry)?;
        let mut link_options = options.link.clone();
        link_options.allow_insecure = options.allow_insecure;
        link_options.metrics = Some(LinkMetrics::register(&registry)?);
        let endpoint = BackendEndpoint {
            broker,
            tls,
            namespace: config.topic_namespace,
        };
        let launcher = match options.launcher_listen {
            Some(listen) => {
                // The URL's port may be the one the listener picks (`:0`), so the default URL
                // is made once bound; the certificate names hosts, not ports.
                let named = options
                    .launcher_url
                    .clone()
                    .unwrap_or_else(|| format!("https://{listen}"));
                check_launcher_endpoint(&named)
                    .map_err(|reason| BackendError::Input(format!("--launcher-url: {reason}")))?;
                let hosts = launcher::certificate_hosts(listen, &named);
                let listener =
                    launcher::LauncherListener::bind(listen, &state.authority()?, &hosts).await?;
                let url = options
                    .launcher_url
                    .clone()
                    .unwrap_or_else(|| format!("https://{}", listener.addr));
                Some((listener, url))
            }
            None => None,
        };
        let (link, inbound) = BackendLink::connect(&endpoint, link_options)?;
        let blobs = state.blobs();
        let shared = Arc::new(Shared {
            store,
            link_state: link.state(),
            registry,
            gauges,
            launcher_image: options.launcher_image.clone(),
            wake: Notify::new(),
            blobs: blobs.clone(),
            launcher_endpoint: launcher.as_ref().map(|(_, url)| url.clone()),
        });

        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|err| BackendError::Http(format!("bind {}: {err}", options.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|err| BackendError::Http(err.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let link = Arc::new(link);
        let mut tasks = vec![
            tokio::spawn(inbound_loop(shared.clone(), inbound)),
            tokio::spawn(dispatch_loop(
                shared.clone(),
                link.clone(),
                options.tick,
                stop_rx.clone(),
            )),
            tokio::spawn(http::serve(listener, shared.clone(), stop_rx.clone())),
        ];
        let (launcher_addr, launcher_url) = match launcher {
            Some((listener, url)) => {
                let addr = listener.addr;
                let api = Arc::new(launcher::LauncherState {
                    store: shared.store.clone(),
                    blobs,
                    nonces: launcher::Nonces::new(launcher::MAX_NONCES),
                });
                tasks.push(tokio::spawn(launcher::serve(listener, api, stop_rx)));
                tracing::info!(%addr, %url, "launcher API serving (HTTPS)");
                (Some(addr), Some(url))
            }
            None => (None, None),
        };
        tracing::info!(%addr, "reference backend serving");
        Ok(Self {
            addr,
            launcher_addr,
            launcher_url,
            link: Some(link),
            stop,
            tasks,
        })
    }

    /// Publishes `message` to `pool` on the backend's own connection, outside the store and
    /// its outbox (nothing records it): for tests and tools that re-send a message exactly as
    /// the backend would. The broker gives a certificate one client id, so a second connection
    /// with the backend's certificate would replace this one rather than sit beside it.
    pub async fn publish_unrecorded(
        &self,
        pool: Ulid,
        message: &Message,
    ) -> Result<(), BackendError> {
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| BackendError::Input("the backend is shut down".to_string()))?;
        link.publish(pool, message).await?;
        Ok(())
    }

    /// Waits until the backend's link is connected and subscribed: before that, a message a
    /// pool publishes reaches nobody if the backend never had a session with the broker.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), BackendError> {
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| BackendError::Input("the backend is shut down".to_string()))?;
        link.wait_connected(timeout).await?;
        Ok(())
    }

    /// Stops the loops and disconnects from the broker.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        // The tasks are gone, and with them the other references to the link.
        if let Some(link) = self.link.take().and_then(|link| Arc::try_unwrap(link).ok()) {
            link.shutdown().await;
        }
    }
}

/// The most inbound messages applied in one transaction.
const MAX_INBOUND_BATCH: usize = 256;

/// Applies what arrives, a burst at a time: every message already waiting goes into one
/// transaction (one fsync), and each is acknowledged only after that commit.
async fn inbound_loop(shared: Arc<Shared>, mut inbound: mpsc::Receiver<Inbound>) {
    let mut burst = Vec::with_capacity(MAX_INBOUND_BATCH);
    while inbound.recv_many(&mut burst, MAX_INBOUND_BATCH).await > 0 {
        let messages: Vec<(Ulid, Message)> = burst
            .iter()
            .map(|d: &Inbound| (d.topic.pool, d.message.clone()))
            .collect();
        let applied = blocking(&shared.store, move |s| {
            let refs: Vec<(Ulid, &Message)> = messages.iter().map(|(p, m)| (*p, m)).collect();
            s.apply_inbound_all(&refs)
        })
        .await;
        let results = match applied {
            Ok(results) => results,
            Err(err) => {
                // None acknowledged: the broker redelivers them after the next reconnect.
                tracing::error!(count = burst.len(), error = %err, "could not apply inbound messages");
                burst.clear();
                continue;
            }
        };
        for (delivery, result) in burst.drain(..).zip(results) {
            let pool = delivery.topic.pool;
            let kind = delivery.message.body.kind();
            match result {
                Ok(applied) => {
                    if applied == Applied::UnknownPool {
                        tracing::warn!(%pool, kind, "message from a pool this backend does not know; ignored");
                    }
                    if let Err(err) = delivery.ack().await {
                        tracing::warn!(error = %err, "could not acknowledge; the broker will redeliver");
                    }
                }
                // Not acknowledged: the broker redelivers it after the next reconnect.
                Err(err) => {
                    tracing::error!(%pool, kind, error = %err, "could not apply an inbound message")
                }
            }
        }
        shared.wake.notify_one();
    }
}

async fn dispatch_loop(
    shared: Arc<Shared>,
    link: Arc<BackendLink>,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut state = link.state();
    let mut last = LastSent::default();
    loop {
        if let Err(err) = dispatch_once(&shared, &link, &mut last).await {
            tracing::error!(error = %err, "dispatch pass failed");
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(tick) => {}
            changed = state.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(tick).await;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

async fn dispatch_once(
    shared: &Shared,
    link: &BackendLink,
    last: &mut LastSent,
) -> Result<(), BackendError> {
    let endpoint = shared.launcher_endpoint.clone();
    let dispatched = blocking(&shared.store, move |s| s.dispatch(endpoint.as_deref())).await?;
    if dispatched > 0 {
        tracing::info!(dispatched, "dispatched queued runs");
    }
    if !link.state().borrow().is_connected() {
        return Ok(());
    }
    loop {
        let batch = blocking(&shared.store, |s| s.unsent(100)).await?;
        if batch.is_empty() {
            break;
        }
        // Published one by one, marked sent together: a crash in between re-sends them
        // under their ids, which the workers de-duplicate.
        let mut sent = Vec::with_capacity(batch.len());
        let mut failed = None;
        for entry in batch {
            if let Err(err) = link.publish(entry.pool_id, &entry.message).await {
                failed = Some(err);
                break;
            }
            sent.push(entry.seq);
        }
        blocking(&shared.store, move |s| s.mark_sent_all(&sent)).await?;
        if let Some(err) = failed {
            return Err(err.into());
        }
    }
    let gauges = blocking(&shared.store, |s| s.gauges()).await?;
    send_demand(link, &gauges, &mut last.demand).await?;
    let last_pending = &mut last.pending;
    // Tell each pool how many runs wait for it, when that changes.
    for pool in gauges {
        if last_pending.get(&pool.id) == Some(&pool.pending) || pool.workers == 0 {
            continue;
        }
        let Ok(pool_id) = Ulid::from_string(&pool.id) else {
            continue;
        };
        let status = Message::for_pool(Body::PoolStatus(PoolStatus {
            workers: u32::try_from(pool.workers).unwrap_or(0),
            idle: u32::try_from(pool.workers - pool.busy).unwrap_or(0),
            busy: u32::try_from(pool.busy).unwrap_or(0),
            draining: 0,
            pending_runs: Some(u32::try_from(pool.pending).unwrap_or(0)),
        }));
        link.publish(pool_id, &status).await?;
        last_pending.insert(pool.id, pool.pending);
    }
    Ok(())
}

/// What the dispatch loop last told each pool (by pool ULID): forgotten on restart, so a
/// restarted backend tells every pool again.
#[derive(Default)]
struct LastSent {
    /// `pool.status`'s pending runs.
    pending: HashMap<String, i64>,
    /// `pool.demand`: pending and schedulable runs.
    demand: HashMap<String, PoolDemand>,
}

/// The demand of each pool, from the store's counts: queued runs can start as soon as a
/// worker is free; a tracked run whose plan awaits confirmation waits on a person, so it is
/// pending but not schedulable; a run dispatched and not accepted yet names its worker, which
/// the operator then counts busy before its Worker says so.
pub fn demand_of(pool: &PoolGauges) -> PoolDemand {
    let count = |n: i64| u32::try_from(n).unwrap_or(0);
    let mut dispatched_workers = pool.dispatched.clone();
    dispatched_workers.dedup();
    dispatched_workers.truncate(crate::protocol::MAX_DISPATCHED_WORKERS);
    PoolDemand {
        pending_runs: count(pool.pending).saturating_add(count(pool.awaiting_confirmation)),
        schedulable_runs: count(pool.pending),
        dispatched_workers,
    }
}

/// Pushes `pool.demand` to every pool whose demand changed since it was last sent, whether
/// or not the pool has workers (a pool at 0 must hear of its first run to grow). Retained by
/// the broker, so an operator that (re)connects gets the latest at once, without asking.
async fn send_demand(
    link: &BackendLink,
    gauges: &[PoolGauges],
    last: &mut HashMap<String, PoolDemand>,
) -> Result<(), BackendError> {
    for pool in gauges {
        let demand = demand_of(pool);
        if last.get(&pool.id) == Some(&demand) {
            continue;
        }
        let Ok(pool_id) = Ulid::from_string(&pool.id) else {
            continue;
        };
        let message = Message::for_pool(Body::PoolDemand(demand.clone()));
        link.publish_retained(pool_id, &message).await?;
        last.insert(pool.id.clone(), demand);
    }
    Ok(())
}

impl Server {
    /// Publishes `payload` byte for byte on `topic`, on the backend's own connection and
    /// outside the store (nothing records it): for tests and tools that send what a faulty
    /// backend would (malformed, oversized, another version). The broker gives a certificate
    /// one client id, so a second connection with the backend's certificate would replace
    /// this one rather than sit beside it.
    pub async fn publish_payload_unrecorded(
        &self,
        topic: &crate::protocol::Topic,
        payload: Vec<u8>,
    ) -> Result<(), BackendError> {
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| BackendError::Input("the backend is shut down".to_string()))?;
        link.publish_payload(topic, payload).await?;
        Ok(())
    }
}
