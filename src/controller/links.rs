//! One backend link per pool: connected when the pool's credentials decode, replaced when the
//! Secret changes, and drained by a dispatcher that hands every inbound message to
//! [`super::runs`] and acknowledges it only once it has been handled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use ulid::Ulid;

use super::Context;
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

    /// The pool's link, connecting (or reconnecting with new credentials) as needed.
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
        if let Some(existing) = pools.get(key)
            && existing.fingerprint == fingerprint
        {
            return Ok(existing.clone());
        }
        let options = lock(&self.template).clone();
        let (link, inbound) = PoolLink::connect(credentials, options)?;
        let handle = Arc::new(PoolHandle {
            key: key.clone(),
            pool_id: credentials.pool_id,
            link,
            fingerprint,
            dispatcher: Mutex::new(None),
        });
        let task = tokio::spawn(dispatch(ctx.clone(), handle.clone(), inbound));
        *lock(&handle.dispatcher) = Some(task);
        if let Some(old) = pools.insert(key.clone(), handle.clone()) {
            tracing::info!(pool = %key, "pool credentials changed: replacing its backend link");
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

/// Drains a pool's inbound messages. Messages are handled concurrently (one worker's messages
/// in order, see `Context::worker_lock`) and acknowledged after their handler finishes, so a
/// crash mid-way leaves them with the broker for redelivery. Each (re)connection republishes
/// every worker's state (and, after a reconnection, their recorded run reports) so the backend
/// can reconcile.
async fn dispatch(
    ctx: Arc<Context>,
    pool: Arc<PoolHandle>,
    mut inbound: tokio::sync::mpsc::Receiver<Inbound>,
) {
    let limit = Arc::new(Semaphore::new(ctx.config.run_concurrency.max(1)));
    let mut state = pool.link.state();
    let mut heartbeat = tokio::time::interval(ctx.config.heartbeat);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            delivery = inbound.recv() => {
                let Some(delivery) = delivery else { break };
                let Ok(permit) = limit.clone().acquire_owned().await else { break };
                let (ctx, pool) = (ctx.clone(), pool.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let kind = delivery.message.body.kind();
                    match super::runs::handle(&ctx, &pool, &delivery.message).await {
                        Ok(()) => {
                            if let Err(err) = delivery.ack().await {
                                tracing::warn!(pool = %pool.key, %kind, error = %err, "could not acknowledge a handled message; it will be redelivered and handled idempotently");
                            }
                        }
                        Err(err) => {
                            // Not acknowledged: the broker redelivers it after the next reconnect.
                            ctx.metrics.reconcile_errors.with_label_values(&["message", err.metric_label()]).inc();
                            tracing::error!(pool = %pool.key, %kind, error = %err, "handling a backend message failed; it stays unacknowledged for redelivery");
                        }
                    }
                });
            }
            changed = state.changed() => {
                if changed.is_err() { break }
                let connected = state.borrow_and_update().is_connected();
                if connected {
                    republish_states(&ctx, &pool, true).await;
                }
            }
            _ = heartbeat.tick() => republish_states(&ctx, &pool, false).await,
        }
    }
    tracing::debug!(pool = %pool.key, "dispatcher stopped");
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
