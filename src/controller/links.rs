//! One backend link per pool: connected when the pool's credentials decode, replaced when the
//! Secret changes or (after a backoff) when its first connection failed. Each link has one
//! dispatcher task ([`super::dispatch`]), started by the caller of [`LinkManager::ensure`] and
//! stopped here: on shutdown or replacement it finishes the messages it is handling (for a
//! while) before the link closes, so nothing acts after the process gave up its work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use ulid::Ulid;

use super::error::Error;
use super::lock;
use crate::credentials::Credentials;
use crate::link::{Inbound, LinkError, LinkOptions, LinkState, PoolLink};
use crate::protocol::Message;

/// Where a pool lives in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a pool's messages go.
enum Outbound {
    Mqtt(PoolLink),
    /// Kept in memory, for the reconciler tests.
    #[cfg(test)]
    Recorded(Recorder),
}

/// The messages a test pool sent, and a switch that makes its sends fail.
#[cfg(test)]
#[derive(Clone)]
pub struct Recorder {
    pub sent: Arc<Mutex<Vec<Message>>>,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    /// `kind/error` of every message given up for good.
    pub abandoned: Arc<Mutex<Vec<String>>>,
    state: Arc<watch::Sender<LinkState>>,
}

/// A pool's live link.
pub struct PoolHandle {
    pub key: PoolKey,
    pub pool_id: Ulid,
    outbound: Outbound,
    fingerprint: u64,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    /// Tells the dispatcher to stop taking messages.
    stop: watch::Sender<bool>,
    /// Links before this one that failed their first connection, in a row.
    failures: u32,
    /// When this link gave up its first connection ([`LinkState::Failed`]).
    failed_at: Mutex<Option<Instant>>,
}

impl PoolHandle {
    fn new(key: PoolKey, pool_id: Ulid, outbound: Outbound, fingerprint: u64) -> Self {
        Self {
            key,
            pool_id,
            outbound,
            fingerprint,
            dispatcher: Mutex::new(None),
            stop: watch::Sender::new(false),
            failures: 0,
            failed_at: Mutex::new(None),
        }
    }

    /// A pool whose messages are recorded, for tests.
    #[cfg(test)]
    pub fn recorded(key: PoolKey, pool_id: Ulid) -> (Arc<Self>, Recorder) {
        let recorder = Recorder {
            sent: Arc::default(),
            failing: Arc::default(),
            abandoned: Arc::default(),
            state: Arc::new(watch::Sender::new(LinkState::Connected {
                session_present: true,
            })),
        };
        let handle = Self::new(key, pool_id, Outbound::Recorded(recorder.clone()), 0);
        (Arc::new(handle), recorder)
    }

    /// Publishes a message to the backend.
    pub async fn publish(&self, message: &Message) -> Result<(), LinkError> {
        match &self.outbound {
            Outbound::Mqtt(link) => link.publish(message).await,
            #[cfg(test)]
            Outbound::Recorded(recorder) => {
                if recorder.failing.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(LinkError::Failed("the test broker is down".into()));
                }
                lock(&recorder.sent).push(message.clone());
                Ok(())
            }
        }
    }

    /// [`PoolHandle::publish`], its failure named for the controller.
    pub async fn send(&self, message: &Message) -> Result<(), Error> {
        self.publish(message)
            .await
            .map_err(|source| Error::Publish {
                kind: message.body.kind(),
                pool: self.key.to_string(),
                source,
            })
    }

    /// Counts an inbound message of `kind` given up for good with `error` (its metric label)
    /// and acknowledged anyway.
    pub fn count_abandoned(&self, kind: &str, error: &str) {
        match &self.outbound {
            Outbound::Mqtt(link) => link.count_abandoned(kind, error),
            #[cfg(test)]
            Outbound::Recorded(recorder) => {
                lock(&recorder.abandoned).push(format!("{kind}/{error}"))
            }
        }
    }

    pub fn state(&self) -> LinkState {
        self.state_changes().borrow().clone()
    }

    /// The link's state, watched.
    pub fn state_changes(&self) -> watch::Receiver<LinkState> {
        match &self.outbound {
            Outbound::Mqtt(link) => link.state(),
            #[cfg(test)]
            Outbound::Recorded(recorder) => recorder.state.subscribe(),
        }
    }

    /// Whether the dispatcher was told to stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops the dispatcher (it finishes what it handles, within its grace), then closes the
    /// link: unacknowledged messages stay with the broker for the next connection.
    async fn close(self: Arc<Self>) {
        self.stop.send_replace(true);
        let task = lock(&self.dispatcher).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        // Something may still hold the handle (a reconciler sending a report); the link then
        // closes when the last holder drops it.
        if let Ok(handle) = Arc::try_unwrap(self) {
            match handle.outbound {
                Outbound::Mqtt(link) => link.shutdown().await,
                #[cfg(test)]
                Outbound::Recorded(_) => {}
            }
        }
    }
}

/// Why a pool cannot have a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkSetupError {
    #[error(
        "pool ULID {pool_id} is already served by WorkerPool {other}: two WorkerPools cannot share one pool's credentials (they would take each other's MQTT session); give each pool its own credentials"
    )]
    Shared { pool_id: Ulid, other: PoolKey },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Starts a link's dispatcher: the handle, its inbound messages; returns the task.
pub type StartDispatcher<'a> =
    &'a dyn Fn(Arc<PoolHandle>, mpsc::Receiver<Inbound>) -> JoinHandle<()>;

#[derive(Clone, Default)]
pub struct LinkManager {
    pools: Arc<Mutex<HashMap<PoolKey, Arc<PoolHandle>>>>,
    template: Arc<Mutex<LinkOptions>>,
    /// Every dispatcher started, to abort them all when a shutdown runs out of time.
    dispatchers: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl LinkManager {
    pub fn new(template: LinkOptions) -> Self {
        Self {
            pools: Arc::default(),
            template: Arc::new(Mutex::new(template)),
            dispatchers: Arc::default(),
        }
    }

    /// The pool's link, connecting (or reconnecting with new credentials) as needed, its
    /// dispatcher started with `start`. A link whose first connection failed is replaced by a
    /// fresh one once it has been failed for [`retry_failed_link_after`] (growing with each
    /// failed link in a row).
    pub fn ensure(
        &self,
        key: &PoolKey,
        credentials: &Credentials,
        start: StartDispatcher<'_>,
    ) -> Result<Arc<PoolHandle>, LinkSetupError> {
        let fingerprint = credentials_fingerprint(credentials);
        let mut pools = lock(&self.pools);
        if let Some(other) = pools
            .iter()
            .find(|(k, h)| *k != key && h.pool_id == credentials.pool_id)
        {
            return Err(LinkSetupError::Shared {
                pool_id: credentials.pool_id,
                other: other.0.clone(),
            });
        }
        let mut failures = 0;
        if let Some(existing) = pools.get(key)
            && existing.fingerprint == fingerprint
        {
            record_failure(existing, &existing.state());
            let failed_at = *lock(&existing.failed_at);
            match failed_at {
                Some(at) if at.elapsed() >= retry_failed_link_after(existing.failures) => {
                    failures = existing.failures.saturating_add(1);
                    tracing::info!(pool = %key, attempt = failures + 1, "the pool's first connection to the broker failed: connecting again");
                }
                _ => return Ok(existing.clone()),
            }
        }
        let options = lock(&self.template).clone();
        let (link, inbound) = PoolLink::connect(credentials, options)?;
        let mut handle = PoolHandle::new(
            key.clone(),
            credentials.pool_id,
            Outbound::Mqtt(link),
            fingerprint,
        );
        handle.failures = failures;
        let handle = Arc::new(handle);
        let task = start(handle.clone(), inbound);
        {
            let mut dispatchers = lock(&self.dispatchers);
            dispatchers.retain(|d| !d.is_finished());
            dispatchers.push(task.abort_handle());
        }
        *lock(&handle.dispatcher) = Some(task);
        if let Some(old) = pools.insert(key.clone(), handle.clone()) {
            if old.fingerprint != fingerprint {
                tracing::info!(pool = %key, "pool credentials changed: replacing its backend link");
            }
            tokio::spawn(old.close());
        }
        Ok(handle)
    }

    pub fn get(&self, key: &PoolKey) -> Option<Arc<PoolHandle>> {
        lock(&self.pools).get(key).cloned()
    }

    /// The link of the pool with this ULID.
    pub fn by_pool_id(&self, pool_id: &str) -> Option<Arc<PoolHandle>> {
        lock(&self.pools)
            .values()
            .find(|h| h.pool_id.to_string() == pool_id)
            .cloned()
    }

    /// Adds a link made elsewhere (a test's recorded pool).
    #[cfg(test)]
    pub fn insert(&self, handle: Arc<PoolHandle>) {
        lock(&self.pools).insert(handle.key.clone(), handle);
    }

    /// Drops a pool's link (its WorkerPool and Workers are gone).
    pub fn remove(&self, key: &PoolKey) {
        if let Some(old) = lock(&self.pools).remove(key) {
            tokio::spawn(old.close());
        }
    }

    /// Every pool's link state, for readiness.
    pub fn states(&self) -> Vec<(PoolKey, LinkState)> {
        lock(&self.pools)
            .values()
            .map(|h| (h.key.clone(), h.state()))
            .collect()
    }

    pub fn keys(&self) -> Vec<PoolKey> {
        lock(&self.pools).keys().cloned().collect()
    }

    /// Closes every link (graceful shutdown): each dispatcher finishes or abandons what it
    /// handles first, so that no handler still acts when this returns.
    pub async fn shutdown(&self) {
        let handles: Vec<_> = lock(&self.pools).drain().map(|(_, h)| h).collect();
        futures::future::join_all(handles.into_iter().map(PoolHandle::close)).await;
    }

    /// Aborts every dispatcher and, with it, the messages it is handling: for a shutdown that
    /// ran out of time, before this process gives up its leadership.
    pub fn abort_dispatchers(&self) {
        for dispatcher in lock(&self.dispatchers).drain(..) {
            dispatcher.abort();
        }
    }
}

/// How long a link that failed its first connection stays failed before the next `ensure`
/// replaces it with a fresh one (which again retries `first_connect_retries` times): a broker
/// that comes up late is picked up, without hammering one that stays down.
fn retry_failed_link_after(failures: u32) -> Duration {
    crate::link::Backoff {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(300),
        jitter: 0.0,
    }
    .delay(failures.saturating_add(1), 0.0)
}

/// Remembers when a link gave up its first connection.
pub fn record_failure(handle: &PoolHandle, state: &LinkState) {
    if matches!(state, LinkState::Failed { .. }) {
        lock(&handle.failed_at).get_or_insert_with(Instant::now);
    }
}

fn credentials_fingerprint(credentials: &Credentials) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    credentials.pool_id.hash(&mut hasher);
    credentials.broker.to_string().hash(&mut hasher);
    credentials.topic_namespace.hash(&mut hasher);
    for cert in credentials.client_chain.iter().chain(&credentials.ca_certs) {
        cert.as_ref().hash(&mut hasher);
    }
    credentials.client_key().secret_der().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_link_is_retried_after_a_growing_capped_pause() {
        let pauses: Vec<u64> = (0..8)
            .map(|failures| retry_failed_link_after(failures).as_secs())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
