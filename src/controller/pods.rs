//! Run Pods: read as the run's state machine sees them ([`seen`]), created, deleted (with
//! their grace period, or by force when they outlived it), marked with the outcome that was
//! reported, and removed as the pool's retention settings say.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::error::{Error, Step, ignore_not_found, is_conflict};
use super::history::{FinishedPod, Retention, pods_to_delete};
use super::machine::{PodFacts, PodSeen};
use super::outcome::{PodProgress, classify};
use super::workers::{patch_params, post_params};
use super::{ANNOTATION_FINISHED_AT, ANNOTATION_OUTCOME, ANNOTATION_SCHEDULED_AT, Context};
use crate::crd::{ANNOTATION_WORKERPOOL_NAME, LABEL_RUN_ID, LABEL_WORKER, Worker};

/// The label selector of run Pods.
pub fn run_pod_selector() -> String {
    LABEL_RUN_ID.to_string()
}

/// The Worker a run Pod belongs to (its owner), if it is a run Pod of ours.
pub fn owner_worker(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.kind == "Worker" && o.api_version == Worker::api_version(&()))
        .map(|o| o.name.clone())
}

/// Whether the run Pod carries the outcome annotation (its report was sent).
pub fn reported(pod: &Pod) -> bool {
    pod.annotations().contains_key(ANNOTATION_OUTCOME)
}

/// Reads run Pod `name` as the state machine needs it: its status classified, or, when it is
/// gone, how it had ended if this process watched it go.
///
/// A Pod the cache has is taken from it (a stale copy only says less than the Pod does: the
/// next change of the Pod moves the run on). One the cache does not have is read from the API
/// server, since "gone" decides a run's end: it may be one just created.
pub async fn seen(ctx: &Context, namespace: &str, name: &str) -> Result<PodSeen, Error> {
    let pod = match ctx.caches.pod(namespace, name) {
        Some(pod) => Some(pod),
        None => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
            pods.get_opt(name)
                .await
                .map_err(Error::api(Step::ReadPod, format!("{namespace}/{name}")))?
                .map(std::sync::Arc::new)
        }
    };
    let now = Timestamp::now();
    Ok(match pod {
        Some(pod) => PodSeen::Present(facts(&pod, now, ctx)),
        None => PodSeen::Gone {
            last: ctx.vanished.last(namespace, name).and_then(|last| {
                match classify(&last, now, &ctx.config.waits) {
                    PodProgress::Ended(ending) => Some(ending),
                    PodProgress::InProgress { .. } => None,
                }
            }),
        },
    })
}

/// What a run Pod that exists says.
pub fn facts(pod: &Pod, now: Timestamp, ctx: &Context) -> PodFacts {
    PodFacts {
        progress: classify(pod, now, &ctx.config.waits),
        deleting_since: pod.meta().deletion_timestamp.as_ref().map(|t| t.0),
        reported: reported(pod),
    }
}

/// Whether a create found the Pod there already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    New,
    Existed,
}

/// Creates a run Pod under its deterministic name. The API server's error is returned as is:
/// whether a refusal answers the run is the caller's decision.
pub async fn create(ctx: &Context, namespace: &str, pod: &Pod) -> Result<Created, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    match pods.create(&post_params(), pod).await {
        Ok(created) => {
            ctx.caches.wrote_pod(&created);
            Ok(Created::New)
        }
        Err(err) if is_conflict(&err) => Ok(Created::Existed),
        Err(err) => Err(err),
    }
}

/// Deletes a run Pod, with its grace period (the tool gets its interrupt), or at once
/// (`force`: it outlived that on a node that does not answer). NotFound is done.
pub async fn delete(ctx: &Context, namespace: &str, name: &str, force: bool) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let params = if force {
        DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        }
    } else {
        DeleteParams::default()
    };
    let deleted = pods.delete(name, &params).await;
    if let Some(deleting) = deleted.as_ref().ok().and_then(|d| d.as_ref().left()) {
        ctx.caches.wrote_pod(deleting);
    } else {
        ctx.caches.forget_pod(namespace, name);
    }
    ignore_not_found(deleted).map_err(Error::api(Step::DeletePod, format!("{namespace}/{name}")))
}

/// Writes the reported outcome onto the run Pod: it says the report was sent, and retention
/// counts it as finished.
pub async fn mark_reported(
    ctx: &Context,
    namespace: &str,
    name: &str,
    outcome: &str,
    at: Timestamp,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mark = json!({"metadata": {"annotations": {
        ANNOTATION_OUTCOME: outcome,
        ANNOTATION_FINISHED_AT: at.to_string(),
    }}});
    let marked = pods
        .patch(name, &patch_params(), &Patch::Merge(&mark))
        .await;
    if let Ok(pod) = &marked {
        ctx.caches.wrote_pod(pod);
    }
    ignore_not_found(marked).map_err(Error::api(Step::MarkPod, format!("{namespace}/{name}")))
}

/// Observes schedule -> Running, once per Pod.
pub fn observe_start(ctx: &Context, pod: &Pod, pool_ulid: &str, now: Timestamp) {
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let scheduled = pod
        .annotations()
        .get(ANNOTATION_SCHEDULED_AT)
        .and_then(|t| t.parse::<Timestamp>().ok());
    if let (true, Some(scheduled)) = (running, scheduled)
        && ctx.started.first_time(&pod.uid().unwrap_or_default())
    {
        let latency = now.duration_since(scheduled).as_secs_f64().max(0.0);
        ctx.metrics
            .run_startup_duration
            .with_label_values(&[pool_ulid])
            .observe(latency);
    }
}

/// Removes the worker's finished Pods that the pool does not keep; requeues for TTLs. The
/// Worker, the pool and the worker's Pods come from the cache when there is one.
pub async fn retention(ctx: &Context, pod: &Pod, worker_name: &str) -> Result<Action, Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let pool_name = ctx
        .read_worker(&namespace, worker_name)
        .await?
        .and_then(|worker| {
            worker
                .annotations()
                .get(ANNOTATION_WORKERPOOL_NAME)
                .cloned()
        });
    // The Worker is gone: its Pods go with it (owner references).
    let Some(pool_name) = pool_name else {
        return Ok(Action::await_change());
    };
    let Some(pool) = ctx.read_pool(&namespace, &pool_name).await? else {
        return Ok(Action::await_change());
    };
    let retention = Retention::of(&pool.spec);
    let Some(worker_ulid) = pod.labels().get(LABEL_WORKER) else {
        return Ok(Action::await_change());
    };
    let of_worker = |p: &Pod| p.labels().get(LABEL_WORKER) == Some(worker_ulid);
    let pods: Vec<Pod> = match ctx.caches.pods(&namespace, of_worker).await {
        Some(pods) => pods.iter().map(|p| (**p).clone()).collect(),
        None => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            let selector = format!("{LABEL_WORKER}={worker_ulid}");
            pods.list(&ListParams::default().labels(&selector))
                .await
                .map_err(Error::api(Step::ListPods, format!("worker {worker_name}")))?
                .items
        }
    };
    let finished: Vec<FinishedPod> = pods
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .filter_map(|p| {
            let outcome = p.annotations().get(ANNOTATION_OUTCOME)?;
            let at = |key| p.annotations().get(key).and_then(|t| t.parse().ok());
            Some(FinishedPod {
                name: p.name_any(),
                succeeded: outcome == "succeeded",
                finished_at: at(ANNOTATION_FINISHED_AT).unwrap_or_else(Timestamp::now),
                scheduled_at: at(ANNOTATION_SCHEDULED_AT),
            })
        })
        .collect();
    let (delete_now, recheck) = pods_to_delete(&finished, &retention, Timestamp::now());
    for name in delete_now {
        delete(ctx, &namespace, &name, false).await?;
    }
    Ok(recheck.map_or_else(Action::await_change, |r| {
        Action::requeue(r + Duration::from_secs(1))
    }))
}
