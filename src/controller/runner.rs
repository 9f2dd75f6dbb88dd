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
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::outcome::{PodProgress, classify};
use super::{Context, Error, PoolKey, pods, pools, reconcile};
use crate::crd::{Worker, WorkerPool};
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
        let pools_ctrl = Controller::new(
            api::<WorkerPool>(&client, scope),
            watcher::Config::default(),
        );
        let by_secret = pools_ctrl.store();
        let by_config_map = pools_ctrl.store();
        let pools_ctrl = pools_ctrl
            .owns(api::<Worker>(&client, scope), watcher::Config::default())
            .watches(
                api::<PartialObjectMeta<Secret>>(&client, scope),
                watcher::Config::default(),
                move |secret| pools::pools_using_secret(&by_secret.state(), &secret),
            )
            .watches(
                api::<PartialObjectMeta<ConfigMap>>(&client, scope),
                watcher::Config::default(),
                move |config_map| {
                    pools::pools_using_config_map(&by_config_map.state(), &config_map)
                },
            )
            .reconcile_all_on(nudges(ctx.clone(), scope.map(str::to_string)))
            // A pool whose demand the backend changed decides its size again at once.
            .reconcile_on(ctx.autoscale.nudges(scope.map(str::to_string)))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(pools::reconcile, error_policy("workerpool"), ctx.clone())
            .for_each(log_result("workerpool"));
        let run_pods = watcher::Config::default().labels(&pods::run_pod_selector());
        let (vanished, vanished_workers) = futures::channel::mpsc::unbounded();
        let (pod_store, pod_writer) = reflector::store();
        let watched_pods = {
            let ctx = ctx.clone();
            watcher(api::<Pod>(&client, scope), run_pods)
                .default_backoff()
                // Before the store: nobody reads a Pod from the store that is not remembered.
                .inspect_ok(move |event| remember_last_state(&ctx, &vanished, event))
                .reflect(pod_writer)
                .applied_objects()
        };
        // A run Pod's deletion moves its Worker's run on (the Pod reconciler never sees a Pod
        // that is gone): after its last state was remembered, so that how it ended is known.
        let workers_ctrl =
            Controller::new(api::<Worker>(&client, scope), watcher::Config::default())
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
                    _ = every.tick() => pools::sweep_links(&ctx).await,
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
            if let Some(worker) = pods::owner_worker(pod) {
                ctx.vanished.remember(pod);
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
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

/// Logs what the controller stream reports besides reconciles: a failing watch (e.g. the
/// ServiceAccount may not list a resource) is a warning, as nothing is reconciled while it
/// lasts; a failed reconcile was logged by [`error_policy`] already.
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
