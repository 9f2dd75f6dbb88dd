//! Starts the three controllers (pools, workers, run Pods) for every watched namespace and
//! stops them together.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::cache::Scope;
use super::outcome::{PodProgress, classify};
use super::{Context, Error, PoolKey, pods, pools, reconcile, sweep};
use crate::crd::{LABEL_WORKERPOOL, Worker, WorkerPool, WorkerState};
use crate::hooks::LoadReport;
use crate::hooks::report::HooksCondition;
use crate::link::LinkState;
use crate::ops::shutdown::Shutdown;

/// Runs the controllers until `shutdown` is triggered. `namespaces` empty means all namespaces.
pub async fn run(ctx: Arc<Context>, namespaces: &[String], shutdown: Shutdown) {
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut controllers = Vec::new();
    for scope in scopes {
        let client = ctx.client.clone();
        let (pool_store, pool_writer) = reflector::store();
        let watched_pools = watch::<WorkerPool>(&client, scope, watcher::Config::default())
            .reflect(pool_writer)
            .applied_objects();
        // Secrets and ConfigMaps by their metadata only: a change triggers the pools that use
        // them, and their resourceVersions say when a pool must read them again.
        let (secret_store, secret_writer) = reflector::store();
        let watched_secrets =
            watch::<PartialObjectMeta<Secret>>(&client, scope, watcher::Config::default())
                .reflect(secret_writer)
                .touched_objects();
        let (config_map_store, config_map_writer) = reflector::store();
        let watched_config_maps =
            watch::<PartialObjectMeta<ConfigMap>>(&client, scope, watcher::Config::default())
                .reflect(config_map_writer)
                .touched_objects();

        // One watch of Workers feeds the Worker reconciler, the cache, and the pools, which
        // are told only of the changes that matter to them.
        let (worker_store, worker_writer) = reflector::store();
        let (pool_changes, changed_pools) = futures::channel::mpsc::unbounded();
        let watched_workers = {
            let ctx = ctx.clone();
            let mut relevance = PoolRelevance::default();
            watch::<Worker>(&client, scope, watcher::Config::default())
                .reflect(worker_writer)
                .inspect_ok(move |event| relevance.observe(&ctx, &pool_changes, event))
                .applied_objects()
        };

        let run_pods = watcher::Config::default().labels(&pods::run_pod_selector());
        let (vanished, vanished_workers) = futures::channel::mpsc::unbounded();
        let (pod_store, pod_writer) = reflector::store();
        let watched_pods = {
            let ctx = ctx.clone();
            watch::<Pod>(&client, scope, run_pods)
                // Before the store: nobody reads a Pod from the store that is not remembered.
                .inspect_ok(move |event| remember_last_state(&ctx, &vanished, event))
                .reflect(pod_writer)
                .applied_objects()
        };
        ctx.caches.register(Scope {
            namespace: scope.map(str::to_string),
            workers: worker_store.clone(),
            pods: pod_store.clone(),
            pools: pool_store.clone(),
            secrets: secret_store,
            config_maps: config_map_store,
        });

        let by_secret = pool_store.clone();
        let by_config_map = pool_store.clone();
        let pools_ctrl = Controller::for_stream(watched_pools, pool_store)
            .with_config(controller::Config::default().debounce(POOL_DEBOUNCE))
            .watches_stream(watched_secrets, move |secret| {
                pools::pools_using_secret(&by_secret.state(), &secret)
            })
            .watches_stream(watched_config_maps, move |config_map| {
                pools::pools_using_config_map(&by_config_map.state(), &config_map)
            })
            .reconcile_on(changed_pools)
            .reconcile_all_on(nudges(ctx.clone(), scope.map(str::to_string)))
            // A pool whose demand the backend changed decides its size again at once.
            .reconcile_on(ctx.autoscale.nudges(scope.map(str::to_string)))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(pools::reconcile, error_policy("workerpool"), ctx.clone())
            .for_each(log_result("workerpool"));
        // A run Pod's deletion moves its Worker's run on (the Pod reconciler never sees a Pod
        // that is gone): after its last state was remembered, so that how it ended is known.
        let workers_ctrl = Controller::for_stream(watched_workers, worker_store)
            .reconcile_on(vanished_workers)
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(reconcile::worker, error_policy("worker"), ctx.clone())
            .for_each(log_result("worker"));
        let pods_ctrl = Controller::for_stream(watched_pods, pod_store)
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(reconcile::pod, error_policy("pod"), ctx.clone())
            .for_each(log_result("pod"));
        controllers.push(futures::future::join3(pools_ctrl, workers_ctrl, pods_ctrl));
    }
    let sweeper = {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut every = tokio::time::interval(ctx.config.resync);
            loop {
                tokio::select! {
                    _ = every.tick() => sweep::sweep_links(&ctx).await,
                    () = shutdown.clone().wait() => break,
                }
            }
        }
    };
    futures::future::join(join_all(controllers), sweeper).await;
    ctx.links.shutdown().await;
}

/// Remembers the last state of a run Pod that ended or whose deletion was watched, and nudges
/// the Worker of a deleted one. An ended Pod may be removed at once (the pod garbage collector
/// fails the Pods of a deleted node, then removes them with no grace): whoever reads it gone
/// before its deletion is watched still knows how its run ended.
pub(super) fn remember_last_state(
    ctx: &Context,
    vanished: &futures::channel::mpsc::UnboundedSender<ObjectRef<Worker>>,
    event: &watcher::Event<Pod>,
) {
    match event {
        watcher::Event::Delete(pod) => {
            ctx.caches.pod_deleted(pod);
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            if let Some(worker) = pods::owner_worker(pod) {
                ctx.vanished.remember(pod);
                let _ = vanished.unbounded_send(ObjectRef::new(&worker).within(&namespace));
            }
        }
        watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
            if matches!(
                classify(pod, Timestamp::now(), &ctx.config.waits),
                PodProgress::Ended(_)
            ) {
                ctx.vanished.remember(pod);
            }
        }
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// How long a pool's reconcile waits for more changes of its Workers (a scale-out registers
/// hundreds within seconds) before it runs once for all of them.
const POOL_DEBOUNCE: Duration = Duration::from_millis(500);

/// A watch of `K` in `namespace` (or all of them), retried with backoff, its objects without
/// their managed fields: nobody reads them, and they are most of a small object's size in
/// the stores.
fn watch<K>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
    K::DynamicType: Default,
{
    watcher(api::<K>(client, namespace), config)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
}

/// What of a Worker its pool's reconcile depends on: whether it exists, is registered, is
/// DRAINING, is being deleted, and the pool ULID it was registered under. Its runs (IDLE and
/// BUSY) are not: they only move the pool's idle gauge, which is set here.
#[derive(Clone, PartialEq, Eq)]
struct PoolFacts {
    registered: bool,
    draining: bool,
    deleting: bool,
    pool_ulid: Option<String>,
}

impl PoolFacts {
    fn of(worker: &Worker) -> Self {
        let status = worker.status.clone().unwrap_or_default();
        Self {
            registered: status.registered == Some(true),
            draining: status.state == Some(WorkerState::Draining),
            deleting: worker.metadata.deletion_timestamp.is_some(),
            pool_ulid: worker.labels().get(LABEL_WORKERPOOL).cloned(),
        }
    }
}

/// The Worker changes that matter to their pools, by Worker uid: each such change (and each
/// Worker that comes or goes) triggers its pool's reconcile; every change of a Worker's run
/// sets its pool's gauges from the store.
#[derive(Default)]
struct PoolRelevance {
    seen: HashMap<String, (PoolFacts, bool)>,
}

impl PoolRelevance {
    fn observe(
        &mut self,
        ctx: &Context,
        pools: &futures::channel::mpsc::UnboundedSender<ObjectRef<WorkerPool>>,
        event: &watcher::Event<Worker>,
    ) {
        let (worker, gone) = match event {
            watcher::Event::Apply(worker) | watcher::Event::InitApply(worker) => (worker, false),
            watcher::Event::Delete(worker) => (worker, true),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let uid = worker.metadata.uid.clone().unwrap_or_default();
        let namespace = worker.metadata.namespace.clone().unwrap_or_default();
        let facts = PoolFacts::of(worker);
        let busy = worker
            .status
            .as_ref()
            .is_some_and(|s| s.current_run.is_some() || s.state == Some(WorkerState::Busy));
        let before = if gone {
            ctx.caches.worker_deleted(worker);
            self.seen.remove(&uid)
        } else {
            self.seen.insert(uid, (facts.clone(), busy))
        };
        let matters = gone || before.as_ref().is_none_or(|(f, _)| *f != facts);
        let run_moved = before.is_some_and(|(_, was_busy)| was_busy != busy);
        let owner = pool_of(worker);
        // An autoscaled pool decides its size from its busy workers (and a worker that went
        // idle starts its scale-down delay): it hears of every run a Worker takes or ends.
        let autoscaled = || {
            owner.as_ref().is_some_and(|owner| {
                ctx.caches
                    .pool(&namespace, &owner.name)
                    .is_some_and(|pool| pool.spec.autoscaling.is_some())
            })
        };
        if (matters || (run_moved && autoscaled()))
            && let Some(owner) = owner
        {
            let _ = pools.unbounded_send(owner);
        } else if run_moved && let Some(ulid) = &facts.pool_ulid {
            pools::set_gauges_from_cache(ctx, &namespace, ulid);
        }
    }
}

/// The WorkerPool that owns a Worker.
fn pool_of(worker: &Worker) -> Option<ObjectRef<WorkerPool>> {
    let namespace = worker.metadata.namespace.clone().unwrap_or_default();
    worker
        .owner_references()
        .iter()
        .find(|o| o.kind == "WorkerPool")
        .map(|o| ObjectRef::new(&o.name).within(&namespace))
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

fn error_policy<K>(controller: &'static str) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action
where
    K: Resource,
{
    move |object, error, ctx| {
        ctx.metrics
            .reconcile_errors
            .with_label_values(&[controller, error.metric_label()])
            .inc();
        tracing::warn!(
            controller,
            object = %object.meta().name.clone().unwrap_or_default(),
            namespace = %object.meta().namespace.clone().unwrap_or_default(),
            error = %error,
            "reconcile failed; retrying"
        );
        Action::requeue(std::time::Duration::from_secs(5))
    }
}

/// How often [`nudges`] looks at the links and the cluster-wide hooks.
const NUDGE_INTERVAL: Duration = Duration::from_secs(2);

/// Ticks when something no watch sees changed, so that the pools are reconciled at once
/// instead of at the next resync: a pool's broker link connected, was lost or gave up (its
/// `Registered` condition and readiness), or the cluster-wide hooks loaded or failed (every
/// pool's `HooksReady`). One tick covers every change seen in an interval, so a broker outage
/// felt by many pools reconciles each of them once.
fn nudges(ctx: Arc<Context>, scope: Option<String>) -> impl futures::Stream<Item = ()> + Send {
    type Seen = (HashMap<PoolKey, u8>, Option<HooksCondition>);
    let seen: Seen = (HashMap::new(), None);
    futures::stream::unfold((ctx, seen), move |(ctx, (mut links, mut cluster))| {
        let scope = scope.clone();
        async move {
            loop {
                tokio::time::sleep(NUDGE_INTERVAL).await;
                let cluster_now = ctx.hooks.pool_condition(&LoadReport::default());
                let mut changed = cluster.as_ref().is_some_and(|c| *c != cluster_now);
                cluster = Some(cluster_now);
                let now: HashMap<PoolKey, u8> = ctx
                    .links
                    .states()
                    .into_iter()
                    .filter(|(key, _)| scope.as_ref().is_none_or(|ns| *ns == key.namespace))
                    .map(|(key, state)| (key, link_class(&state)))
                    .collect();
                changed |= now
                    .iter()
                    .any(|(key, class)| links.get(key).is_some_and(|before| before != class));
                links = now;
                if changed {
                    return Some(((), (ctx, (links, cluster))));
                }
            }
        }
    })
}

/// The part of a link's state that a pool's status shows.
fn link_class(state: &LinkState) -> u8 {
    match state {
        LinkState::Connected { .. } => 0,
        LinkState::Connecting { .. } | LinkState::Reconnecting { .. } => 1,
        LinkState::Failed { .. } => 2,
        LinkState::Closed => 3,
    }
}

/// Logs what the controller stream reports besides reconciles: a failing watch (e.g. the
/// ServiceAccount may not list a resource) is a warning, as nothing is reconciled while it
/// lasts; a failed reconcile was logged by [`error_policy`] already.
fn log_result<T: Debug, E1: std::error::Error, E2: std::error::Error>(
    controller: &'static str,
) -> impl FnMut(Result<T, kube::runtime::controller::Error<E1, E2>>) -> std::future::Ready<()> {
    use kube::runtime::controller::Error;
    move |result| {
        match result {
            Err(Error::QueueError(err)) => {
                tracing::warn!(controller, error = %err, "watching failed; retrying")
            }
            Err(err @ Error::ObjectNotFound(_)) => {
                tracing::debug!(controller, error = %err, "controller event")
            }
            Err(err @ Error::RunnerError(_)) => {
                tracing::warn!(controller, error = %err, "controller runner failed")
            }
            Err(Error::ReconcilerFailed(..)) | Ok(_) => {}
        }
        std::future::ready(())
    }
}
