//! `serve`: the backend's runtime. Three loops around the SQLite store:
//! - **inbound**: every message from the pools is applied (once, by message id) and only then
//!   acknowledged to the broker;
//! - **dispatcher**: queued runs go to IDLE workers; the outbox is published while the link is
//!   connected; pools are told how many runs wait for them (`pool.status`);
//! - **HTTP**: the API and `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use ulid::Ulid;

use super::BackendError;
use super::http;
use super::state::StateDir;
use super::store::{Applied, Store};
use crate::credentials::{BrokerScheme, BrokerUrl};
use crate::link::{BackendEndpoint, BackendLink, Inbound, LinkMetrics, LinkOptions, LinkState};
use crate::protocol::{Body, Message, PoolStatus};

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
}

/// A running backend.
pub struct Server {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
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
        let (link, inbound) = BackendLink::connect(&endpoint, link_options)?;
        let shared = Arc::new(Shared {
            store,
            link_state: link.state(),
            registry,
            gauges,
            launcher_image: options.launcher_image.clone(),
            wake: Notify::new(),
        });

        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|err| BackendError::Http(format!("bind {}: {err}", options.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|err| BackendError::Http(err.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let link = Arc::new(link);
        let tasks = vec![
            tokio::spawn(inbound_loop(shared.clone(), inbound)),
            tokio::spawn(dispatch_loop(
                shared.clone(),
                link.clone(),
                options.tick,
                stop_rx.clone(),
            )),
            tokio::spawn(http::serve(listener, shared.clone(), stop_rx)),
        ];
        tracing::info!(%addr, "reference backend serving");
        Ok(Self {
            addr,
            link: Some(link),
            stop,
            tasks,
        })
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

async fn inbound_loop(shared: Arc<Shared>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(delivery) = inbound.recv().await {
        let pool = delivery.topic.pool;
        let message = delivery.message.clone();
        let kind = message.body.kind();
        match blocking(&shared.store, move |s| s.apply_inbound(pool, &message)).await {
            Ok(applied) => {
                if applied == Applied::UnknownPool {
                    tracing::warn!(%pool, kind, "message from a pool this backend does not know; ignored");
                }
                if let Err(err) = delivery.ack().await {
                    tracing::warn!(error = %err, "could not acknowledge; the broker will redeliver");
                }
                shared.wake.notify_one();
            }
            // Not acknowledged: the broker redelivers it after the next reconnect.
            Err(err) => {
                tracing::error!(%pool, kind, error = %err, "could not apply an inbound message")
            }
        }
    }
}

async fn dispatch_loop(
    shared: Arc<Shared>,
    link: Arc<BackendLink>,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut state = link.state();
    let mut last_pending: HashMap<String, i64> = HashMap::new();
    loop {
        if let Err(err) = dispatch_once(&shared, &link, &mut last_pending).await {
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
    last_pending: &mut HashMap<String, i64>,
) -> Result<(), BackendError> {
    let dispatched = blocking(&shared.store, |s| s.dispatch()).await?;
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
        for entry in batch {
            link.publish(entry.pool_id, &entry.message).await?;
            let seq = entry.seq;
            blocking(&shared.store, move |s| s.mark_sent(seq)).await?;
        }
    }
    // Tell each pool how many runs wait for it, when that changes.
    for pool in blocking(&shared.store, |s| s.gauges()).await? {
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
