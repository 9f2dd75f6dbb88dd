//! A pool's dispatcher: drains its inbound messages into [`super::messages`], in arrival order
//! per worker, and acknowledges each only once it has been handled; re-sends every worker's
//! records and state to the backend after each (re)connection and as a heartbeat.
//!
//! Its handlers are its own tasks: when the link is told to stop (shutdown, lost leadership,
//! replaced credentials) the dispatcher takes no new message, lets the ones being handled
//! finish for [`super::ControllerConfig::shutdown_grace`], abandons the rest (unacknowledged,
//! so the broker redelivers them to whoever comes next) and only then returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use ulid::Ulid;

use super::error::{Error, Retry, Step};
use super::links::record_failure;
use super::records::{report_message, worker_name};
use super::workers::{register_again, state_message, worker_ulid};
use super::{Context, PoolHandle, cache, messages};
use crate::crd::{LABEL_WORKERPOOL, Worker};
use crate::link::Inbound;
use crate::protocol::Message;

/// What [`super::LinkManager::ensure`] starts for a new link.
pub fn starter(
    ctx: &Arc<Context>,
) -> impl Fn(Arc<PoolHandle>, mpsc::Receiver<Inbound>) -> JoinHandle<()> {
    let ctx = ctx.clone();
    move |pool, inbound| tokio::spawn(run(ctx.clone(), pool, inbound))
}

/// Drains a pool's inbound messages until the link closes or is told to stop. Messages are
/// handled concurrently, except that one worker's messages are handled one after the other in
/// the order they arrived (see [`Turns`]): a `run.stop` never overtakes its `run.schedule`.
pub async fn run(ctx: Arc<Context>, pool: Arc<PoolHandle>, mut inbound: mpsc::Receiver<Inbound>) {
    let limit = Arc::new(Semaphore::new(ctx.config.run_concurrency.max(1)));
    let mut handlers = JoinSet::new();
    let mut turns = Turns::default();
    let mut state = pool.state_changes();
    let mut stop = pool.stopping();
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
                handlers.spawn(async move {
                    if let Some(previous) = previous {
                        // Ok or Closed: either way the previous message is done with.
                        let _ = previous.await;
                    }
                    let Ok(_permit) = limit.acquire_owned().await else { return };
                    handle_and_acknowledge(&ctx, &pool, delivery).await;
                    drop(done);
                });
            }
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            changed = state.changed() => {
                if changed.is_err() {
                    record_failure(&pool, &state.borrow());
                    break;
                }
                let current = state.borrow_and_update().clone();
                record_failure(&pool, &current);
                if current.is_connected() {
                    resync_backend(&ctx, &pool, true).await;
                }
            }
            _ = heartbeat.tick() => {
                turns.prune();
                resync_backend(&ctx, &pool, false).await;
            }
            () = stopped(&mut stop) => break,
        }
    }
    finish(&ctx, &pool, handlers).await;
    tracing::debug!(pool = %pool.key, "dispatcher stopped");
}

/// Lets the handlers finish for the shutdown grace, then abandons the rest.
async fn finish(ctx: &Context, pool: &PoolHandle, mut handlers: JoinSet<()>) {
    let drained = tokio::time::timeout(ctx.config.shutdown_grace, async {
        while handlers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(pool = %pool.key, left = handlers.len(), "messages still being handled at shutdown are abandoned unacknowledged; the broker redelivers them");
        handlers.shutdown().await;
    }
}

/// Handles one message, retrying what may pass ([`Retry::Later`]) with capped backoff until it
/// is done or the link stops, then acknowledges it. A message given up stays unacknowledged,
/// and the broker redelivers it after the next reconnect.
async fn handle_and_acknowledge(ctx: &Arc<Context>, pool: &Arc<PoolHandle>, delivery: Inbound) {
    let kind = delivery.message.body.kind();
    let mut stop = pool.stopping();
    let mut attempt: u32 = 0;
    let result = loop {
        let result = messages::handle(ctx, pool, &delivery.message).await;
        let Err(err) = &result else { break result };
        ctx.metrics
            .reconcile_errors
            .with_label_values(&["message", err.metric_label()])
            .inc();
        attempt += 1;
        if err.retry() == Retry::Never || *stop.borrow() {
            break result;
        }
        let delay = RETRY_BACKOFF.next_delay(attempt);
        tracing::warn!(pool = %pool.key, %kind, error = %err, attempt, retry_in = ?delay, "handling a backend message failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => break result,
        }
    };
    match result {
        Ok(()) => {
            if let Err(err) = delivery.ack().await {
                tracing::warn!(pool = %pool.key, %kind, error = %err, "could not acknowledge a handled message; it will be redelivered and handled idempotently");
            }
        }
        Err(err) if err.retry() == Retry::Never => {
            // It would fail the same way again: acknowledged and reported, so that it does not
            // hold one of the link's in-flight slots until a reconnect.
            tracing::error!(pool = %pool.key, %kind, error = %err, "handling a backend message failed for good; acknowledged anyway, so that it does not hold one of the link's in-flight slots");
            pool.count_abandoned(kind, err.metric_label());
            report_abandoned(ctx, pool, &delivery.message, &err).await;
            if let Err(ack) = delivery.ack().await {
                tracing::warn!(pool = %pool.key, %kind, error = %ack, "could not acknowledge a message given up; it will be redelivered");
            }
        }
        Err(err) => {
            tracing::warn!(pool = %pool.key, %kind, error = %err, attempts = attempt, "the link stops while a backend message is being handled; it stays unacknowledged for redelivery to whoever comes next");
        }
    }
}

/// A Warning event on the Worker a message was for, saying it was given up.
async fn report_abandoned(ctx: &Context, pool: &PoolHandle, message: &Message, err: &Error) {
    let Some(worker) = message.worker else { return };
    let name = worker_name(&pool.key.name, worker);
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), &pool.key.namespace);
    if let Ok(Some(worker)) = api.get_opt(&name).await {
        let note = format!(
            "the backend's {} message {} could not be handled and was given up: {err}",
            message.body.kind(),
            message.id
        );
        ctx.event(
            &worker,
            EventType::Warning,
            "MessageAbandoned",
            "HandleMessage",
            note,
        )
        .await;
    }
}

/// Resolves once the link is told to stop (or its handle is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Delays between attempts at handling one message.
const RETRY_BACKOFF: crate::link::Backoff = crate::link::Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
    jitter: 0.5,
};

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

/// Re-sends every worker's state (and the registration of unregistered ones) so the backend can
/// reconcile after a reconnect or a controller restart: no lost or phantom runs. Each worker is
/// read under its lock from the cache, which is never older than this process's own writes, so
/// a state sent here is never older than a run message sent by a handler (a stale IDLE after
/// `run.accepted` would make the backend fail the run).
///
/// After a (re)connection (`reconnected`), the reports of the worker's recently finished runs
/// go first, under their original message ids: a report still queued in a process that
/// crashed was lost with it, and must reach the backend before the IDLE state that would
/// otherwise make it fail the run as lost. A backend that has them already ignores the copies.
/// A Worker being deleted still holds its finalizer and may hold a run: it is reported too.
async fn resync_backend(ctx: &Arc<Context>, pool: &Arc<PoolHandle>, reconnected: bool) {
    if let Err(err) = report_all_states(ctx, pool, reconnected).await {
        tracing::warn!(pool = %pool.key, error = %err, "could not report worker states to the backend; retrying at the next heartbeat");
    }
}

async fn report_all_states(
    ctx: &Arc<Context>,
    link: &Arc<PoolHandle>,
    reconnected: bool,
) -> Result<(), Error> {
    let namespace = &link.key.namespace;
    let pool_id = link.pool_id.to_string();
    // From the cache when there is one: a heartbeat costs the API server nothing.
    let names: Vec<String> = match ctx
        .caches
        .workers(namespace, cache::of_pool(&pool_id))
        .await
    {
        Some(workers) => workers.iter().map(|w| w.name_any()).collect(),
        None => {
            let workers: Api<Worker> = Api::namespaced(ctx.client.clone(), namespace);
            let selector = format!("{LABEL_WORKERPOOL}={pool_id}");
            workers
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                .map_err(Error::api(Step::ListWorkers, format!("pool {}", link.key)))?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect()
        }
    };
    for name in names {
        let (_guard, worker) = ctx.locked_worker(namespace, &name).await?;
        let Some(worker) = worker else {
            continue;
        };
        let deleting = worker.metadata.deletion_timestamp.is_some();
        if worker.status.as_ref().and_then(|s| s.registered) != Some(true) {
            let waiting = ctx
                .registrations
                .wait_before_resending(namespace, &name)
                .is_some();
            if !deleting && (reconnected || !waiting) {
                register_again(ctx, link, &worker).await?;
            }
            continue;
        }
        if reconnected {
            let worker_id = worker_ulid(&worker)?;
            for finished in worker.status.iter().flat_map(|s| &s.finished_runs) {
                link.send(&report_message(worker_id, finished)).await?;
            }
        }
        link.send(&state_message(&worker)?).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_workers_messages_take_their_turns_in_arrival_order() {
        let mut turns = Turns::default();
        let (a, b) = (Ulid::generate(), Ulid::generate());
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
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
                order.lock().unwrap().push(label);
                drop(done);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
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
