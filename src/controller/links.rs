//! One backend link per pool: connected when the pool's credentials decode, replaced when the
//! Secret changes or (after a backoff) when its first connection failed, and drained by a
//! dispatcher that hands every inbound message to [`super::runs`] and acknowledges it only once
//! it has been handled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use ulid::Ulid;

use super::{Context, Error};
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

/// A pool's live link.
pub struct PoolHandle {
    pub key: PoolKey,
    pub pool_id: Ulid,
    pub link: PoolLink,
    fingerprint: u64,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    /// Links before this one that failed their first connection, in a row.
    failures: u32,
    /// When this link gave up its first connection ([`LinkState::Failed`]).
    failed_at: Mutex<Option<Instant>>,
}

impl PoolHandle {
    /// Publishes a message to the backend.
    pub async fn publish(&self, message: &Message) -> Result<(), LinkError> {
        self.link.publish(message).await
    }

    pub fn state(&self) -> LinkState {
        self.link.state().borrow().clone()
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

#[derive(Clone, Default)]
pub struct LinkManager {
    pools: Arc<Mutex<HashMap<PoolKey, Arc<PoolHandle>>>>,
    template: Arc<Mutex<LinkOptions>>,
}

impl LinkManager {
    pub fn new(template: LinkOptions) -> Self {
        Self {
            pools: Arc::default(),
            template: Arc::new(Mutex::new(template)),
        }
    }

    /// The pool's link, connecting (or reconnecting with new credentials) as needed. A link
    /// whose first connection failed is replaced by a fresh one once it has been failed for
    /// [`retry_failed_link_after`] (growing with each failed link in a row).
    pub fn ensure(
        &self,
        ctx: &Arc<Context>,
        key: &PoolKey,
        credentials: &Credentials,
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
        let handle = Arc::new(PoolHandle {
            key: key.clone(),
            pool_id: credentials.pool_id,
            link,
            fingerprint,
            dispatcher: Mutex::new(None),
            failures,
            failed_at: Mutex::new(None),
        });
        let task = tokio::spawn(dispatch(ctx.clone(), handle.clone(), inbound));
        *lock(&handle.dispatcher) = Some(task);
        if let Some(old) = pools.insert(key.clone(), handle.clone()) {
            if old.fingerprint != fingerprint {
                tracing::info!(pool = %key, "pool credentials changed: replacing its backend link");
            }
            retire(old);
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

    /// Drops a pool's link (its WorkerPool and Workers are gone).
    pub fn remove(&self, key: &PoolKey) {
        if let Some(old) = lock(&self.pools).remove(key) {
            retire(old);
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

    /// Closes every link (graceful shutdown): unacknowledged messages stay with the broker.
    pub async fn shutdown(&self) {
        let handles: Vec<_> = lock(&self.pools).drain().map(|(_, h)| h).collect();
        for handle in handles {
            if let Some(task) = lock(&handle.dispatcher).take() {
                task.abort();
            }
            if let Ok(handle) = Arc::try_unwrap(handle) {
                handle.link.shutdown().await;
            }
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
fn record_failure(handle: &PoolHandle, state: &LinkState) {
    if matches!(state, LinkState::Failed { .. }) {
        lock(&handle.failed_at).get_or_insert_with(Instant::now);
    }
}

fn retire(handle: Arc<PoolHandle>) {
    if let Some(task) = lock(&handle.dispatcher).take() {
        task.abort();
    }
    tokio::spawn(async move {
        // In-flight handlers may still hold the handle; the link closes with the last of them.
        if let Ok(handle) = Arc::try_unwrap(handle) {
            handle.link.shutdown().await;
        }
    });
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

/// Drains a pool's inbound messages. Messages are handled concurrently, except that one
/// worker's messages are handled one after the other in the order they arrived (see [`Turns`]):
/// a `run.stop` never overtakes its `run.schedule`. Each is acknowledged after its handler
/// finishes, so a crash mid-way leaves it with the broker for redelivery. Each (re)connection
/// re-sends every worker's state so the backend can reconcile.
async fn dispatch(
    ctx: Arc<Context>,
    pool: Arc<PoolHandle>,
    mut inbound: tokio::sync::mpsc::Receiver<Inbound>,
) {
    let limit = Arc::new(Semaphore::new(ctx.config.run_concurrency.max(1)));
    let mut turns = Turns::default();
    let mut state = pool.link.state();
    let mut heartbeat = tokio::time::interval(ctx.config.heartbeat);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            delivery = inbound.recv() => {
                let Some(delivery) = delivery else { break };
                // Taken here, in arrival order; the handler waits for it before anything else.
                let (previous, done) = match delivery.message.worker {
                    Some(worker) => turns.take(worker),
                    None => (None, None),
                };
                let (ctx, pool, limit) = (ctx.clone(), pool.clone(), limit.clone());
                tokio::spawn(async move {
                    if let Some(previous) = previous {
                        // Ok or Closed: either way the previous message is done with.
                        let _ = previous.await;
                    }
                    let Ok(_permit) = limit.acquire_owned().await else { return };
                    handle_and_acknowledge(&ctx, &pool, delivery).await;
                    drop(done);
                });
            }
            changed = state.changed() => {
                if changed.is_err() {
                    record_failure(&pool, &state.borrow());
                    break;
                }
                let current = state.borrow_and_update().clone();
                record_failure(&pool, &current);
                if current.is_connected() {
                    republish_states(&ctx, &pool, true).await;
                }
            }
            _ = heartbeat.tick() => {
                turns.prune();
                republish_states(&ctx, &pool, false).await;
            }
        }
    }
    tracing::debug!(pool = %pool.key, "dispatcher stopped");
}

/// Handles one message, retrying transient failures (the API server or the link briefly
/// unavailable, a conflict) with capped backoff for up to [`RETRY_FOR`], then acknowledges it.
/// A message that still fails stays unacknowledged, and the broker redelivers it after the
/// next reconnect.
async fn handle_and_acknowledge(ctx: &Arc<Context>, pool: &Arc<PoolHandle>, delivery: Inbound) {
    let kind = delivery.message.body.kind();
    let started = Instant::now();
    let mut attempt: u32 = 0;
    let result = loop {
        let result = super::runs::handle(ctx, pool, &delivery.message).await;
        let Err(err) = &result else { break result };
        ctx.metrics
            .reconcile_errors
            .with_label_values(&["message", err.metric_label()])
            .inc();
        attempt += 1;
        let delay = RETRY_BACKOFF.next_delay(attempt);
        if !transient(err) || started.elapsed() + delay > RETRY_FOR {
            break result;
        }
        tracing::warn!(pool = %pool.key, %kind, error = %err, attempt, retry_in = ?delay, "handling a backend message failed; retrying");
        tokio::time::sleep(delay).await;
    };
    match result {
        Ok(()) => {
            if let Err(err) = delivery.ack().await {
                tracing::warn!(pool = %pool.key, %kind, error = %err, "could not acknowledge a handled message; it will be redelivered and handled idempotently");
            }
        }
        Err(err) => {
            tracing::error!(pool = %pool.key, %kind, error = %err, attempts = attempt, "handling a backend message failed; it stays unacknowledged for redelivery after the next reconnect");
        }
    }
}

/// Delays between attempts at handling one message.
const RETRY_BACKOFF: crate::link::Backoff = crate::link::Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
    jitter: 0.5,
};

/// How long one message is retried before it is left for redelivery.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// Whether a handler error may go away by itself. Refusals that would only repeat (a request
/// the API server rejects as invalid or forbidden, a message the link cannot send, objects
/// missing our labels) are not retried.
fn transient(err: &Error) -> bool {
    match err {
        Error::Kube(kube::Error::Api(status)) => {
            !(400..500).contains(&status.code) || matches!(status.code, 401 | 408 | 409 | 429)
        }
        Error::Kube(_) => true,
        Error::Link(LinkError::Closed) => false,
        Error::Link(LinkError::Oversized { .. } | LinkError::Protocol(_)) => false,
        Error::Link(_) => true,
        Error::Unlabelled(_) => false,
        Error::Key(_) | Error::NoLink(_) | Error::Conflict(_) | Error::Hooks(_) => true,
    }
}

/// The order of each worker's messages: every message takes a turn on arrival and waits for
/// the turn before it. A turn ends when its `done` sender is dropped (handled, given up, or
/// the task aborted), so a failed message never blocks its worker for good.
#[derive(Default)]
struct Turns(HashMap<Ulid, oneshot::Receiver<()>>);

impl Turns {
    /// The end of the worker's previous turn to wait for, and the end of this one.
    fn take(
        &mut self,
        worker: Ulid,
    ) -> (Option<oneshot::Receiver<()>>, Option<oneshot::Sender<()>>) {
        let (done, ended) = oneshot::channel();
        let previous = self.0.insert(worker, ended);
        (previous, Some(done))
    }

    /// Forgets workers whose last message is done with.
    fn prune(&mut self) {
        self.0.retain(|_, ended| {
            matches!(ended.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        });
    }
}

async fn republish_states(ctx: &Arc<Context>, pool: &Arc<PoolHandle>, reconnected: bool) {
    if let Err(err) = super::workers::report_all_states(ctx, pool, reconnected).await {
        tracing::warn!(pool = %pool.key, error = %err, "could not report worker states to the backend; retrying at the next heartbeat");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    #[test]
    fn only_transient_failures_are_retried() {
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            })))
        };
        for code in [409, 429, 500, 503] {
            assert!(transient(&api(code)), "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert!(!transient(&api(code)), "{code}");
        }
        assert!(transient(&Error::Conflict("Worker a/b".into())));
        assert!(!transient(&Error::Link(LinkError::Closed)));
        assert!(!transient(&Error::Unlabelled("Pod p".into())));
    }

    #[tokio::test]
    async fn one_workers_messages_take_their_turns_in_arrival_order() {
        let mut turns = Turns::default();
        let (a, b) = (Ulid::generate(), Ulid::generate());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The first message of `a` is slow; its second and `b`'s must not overtake it wrongly.
        for (worker, label, pause) in [(a, "a1", 50), (a, "a2", 0), (b, "b1", 0), (a, "a3", 0)] {
            let (previous, done) = turns.take(worker);
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                tokio::time::sleep(Duration::from_millis(pause)).await;
                lock(&order).push(label);
                drop(done);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = lock(&order).clone();
        let of_a: Vec<&str> = order
            .iter()
            .copied()
            .filter(|l| l.starts_with('a'))
            .collect();
        assert_eq!(of_a, ["a1", "a2", "a3"]);
        assert_eq!(order[0], "b1", "another worker is not held up: {order:?}");
        turns.prune();
        assert!(turns.0.is_empty(), "finished turns are forgotten");
    }
}
