//! The run Pod reconciler: reports how each run Pod ended, exactly once per Pod (the outcome is
//! written onto the Pod before the worker is freed), frees its worker (recording the report in
//! its status, see [`workers::release`]), and removes finished Pods as the pool's retention
//! settings say.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::history::{FinishedPod, Retention, pods_to_delete};
use super::outcome::{Verdict, classify};
use super::{
    ANNOTATION_FINISHED_AT, ANNOTATION_OUTCOME, ANNOTATION_SCHEDULED_AT, Context, Error,
    ignore_not_found, workers,
};
use crate::crd::{
    ANNOTATION_WORKERPOOL_NAME, LABEL_RUN_ID, LABEL_WORKER, LABEL_WORKERPOOL, Worker, WorkerPool,
};
use crate::protocol::{Outcome, RunRef};

/// Run Pods whose start-up latency has been observed (bounded; a restart may count one twice).
#[derive(Default)]
pub struct StartedPods(Mutex<HashSet<String>>);

impl StartedPods {
    fn first_time(&self, uid: &str) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 50_000 {
            seen.clear();
        }
        seen.insert(uid.to_string())
    }
}

/// The label selector of run Pods.
pub fn run_pod_selector() -> String {
    LABEL_RUN_ID.to_string()
}

pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let Some(worker_name) = owner_worker(&pod) else {
        return Ok(Action::await_change()); // not ours
    };
    let pool_ulid = pod
        .labels()
        .get(LABEL_WORKERPOOL)
        .cloned()
        .unwrap_or_default();
    let link = ctx.links.by_pool_id(&pool_ulid);

    if let Some(reported) = pod.annotations().get(ANNOTATION_OUTCOME) {
        // Reported already: make sure the worker was freed (a crash may have come between),
        // then apply retention.
        let guard = ctx.worker_lock(&namespace, &worker_name).await;
        free_after_restart(&ctx, link.as_deref(), &pod, &worker_name, reported).await?;
        drop(guard);
        return retention(&ctx, &pod, &worker_name).await;
    }

    let now = Timestamp::now();
    let ending = match classify(&pod, now, &ctx.config.waits) {
        Verdict::InProgress { recheck } => {
            observe_start(&ctx, &pod, &pool_ulid, now);
            return Ok(recheck.map_or_else(Action::await_change, Action::requeue));
        }
        Verdict::Ended(ending) => ending,
    };
    let Some(link) = link else {
        return Err(Error::NoLink(pool_ulid));
    };
    let _guard = ctx.worker_lock(&namespace, &worker_name).await;
    let worker_id = pod
        .labels()
        .get(LABEL_WORKER)
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| {
            Error::Unlabelled(format!(
                "run Pod {} has no valid {LABEL_WORKER} label",
                pod.name_any()
            ))
        })?;
    let run = run_of(&pod);
    let record = super::runs::finished_record(&run, &pod.name_any(), &ending, now);
    super::runs::report_finished(&ctx, &link, worker_id, &record).await?;
    tracing::info!(pod = %pod.name_any(), outcome = ?ending.outcome, cause = ?ending.cause, "{}", ending.message);

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let outcome = format!("{:?}", ending.outcome).to_lowercase();
    mark_reported(&pods, &pod.name_any(), &outcome, now).await?;
    if ending.outcome == Outcome::Failed {
        let workers_api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Some(worker) = workers_api.get_opt(&worker_name).await? {
            ctx.event(
                &worker,
                kube::runtime::events::EventType::Warning,
                "RunFailed",
                "ReportRun",
                format!("run Pod {} failed: {}", pod.name_any(), ending.message),
            )
            .await;
        }
    }
    workers::release(&ctx, Some(&link), &namespace, &worker_name, record).await?;
    if ending.abandon {
        delete(&pods, &pod.name_any()).await?;
    }
    drop(_guard);
    retention(&ctx, &pod, &worker_name).await
}

/// The outcome of `pod` was reported, but its worker may still hold the run: a crash came
/// between marking the Pod and freeing the worker. The worker is freed with a record of the
/// outcome (read again from the Pod), and the report is sent again first: the original may
/// have died queued in the crashed process. The backend ignores a copy.
async fn free_after_restart(
    ctx: &Arc<Context>,
    link: Option<&super::PoolHandle>,
    pod: &Pod,
    worker_name: &str,
    reported: &str,
) -> Result<(), Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let pod_name = pod.name_any();
    let workers_api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(worker) = workers_api.get_opt(worker_name).await? else {
        return Ok(());
    };
    let holds_run = worker
        .status
        .as_ref()
        .and_then(|s| s.current_run.as_ref())
        .is_some_and(|r| r.pod_name == pod_name);
    if !holds_run {
        return Ok(());
    }
    let at = pod
        .annotations()
        .get(ANNOTATION_FINISHED_AT)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(Timestamp::now);
    let ending = reported_ending(pod, reported, at, &ctx.config.waits);
    let record = super::runs::finished_record(&run_of(pod), &pod_name, &ending, at);
    if let Some(link) = link {
        super::runs::report_finished(ctx, link, workers::worker_ulid(&worker)?, &record).await?;
    }
    workers::release(ctx, link, &namespace, worker_name, record).await
}

/// What was reported about a Pod marked `reported`: its status read again (a Pod that ended
/// stays ended), or, for a stopped or unreadable one, the bare outcome.
fn reported_ending(
    pod: &Pod,
    reported: &str,
    at: Timestamp,
    waits: &super::outcome::Waits,
) -> super::outcome::Ending {
    let outcome = match reported {
        "succeeded" => Outcome::Succeeded,
        "stopped" => Outcome::Stopped,
        _ => Outcome::Failed,
    };
    if outcome != Outcome::Stopped
        && let Verdict::Ended(ending) = classify(pod, at, waits)
        && ending.outcome == outcome
    {
        return ending;
    }
    super::outcome::Ending {
        outcome,
        cause: None,
        message: format!("the run Pod was reported {reported} before the operator restarted"),
        exit_code: None,
        abandon: false,
    }
}

fn owner_worker(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.kind == "Worker" && o.api_version == Worker::api_version(&()))
        .map(|o| o.name.clone())
}

fn run_of(pod: &Pod) -> RunRef {
    // `<lowercase run ULID>-<stage>-<attempt>`; the run id label keeps the ULID's case.
    let run_id = pod.labels().get(LABEL_RUN_ID).cloned().unwrap_or_default();
    let name = pod.name_any();
    let rest = name.get(run_id.len() + 1..).unwrap_or_default();
    let (stage, attempt) = rest.rsplit_once('-').unwrap_or((rest, "0"));
    RunRef::new(&run_id, stage, attempt.parse().unwrap_or(0))
}

fn observe_start(ctx: &Context, pod: &Pod, pool_ulid: &str, now: Timestamp) {
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

/// Removes the worker's finished Pods that the pool does not keep; requeues for TTLs.
async fn retention(ctx: &Context, pod: &Pod, worker_name: &str) -> Result<Action, Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let workers_api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    let pool_name = match workers_api.get_opt(worker_name).await? {
        Some(worker) => worker
            .annotations()
            .get(ANNOTATION_WORKERPOOL_NAME)
            .cloned(),
        None => None,
    };
    let pools: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let retention = match pool_name {
        Some(name) => match pools.get_opt(&name).await? {
            Some(pool) => Retention::of(&pool.spec),
            None => return Ok(Action::await_change()),
        },
        // The Worker is gone: its Pods go with it (owner references).
        None => return Ok(Action::await_change()),
    };
    let Some(worker_ulid) = pod.labels().get(LABEL_WORKER) else {
        return Ok(Action::await_change());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{LABEL_WORKER}={worker_ulid}");
    let finished: Vec<FinishedPod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .filter_map(|p| {
            let outcome = p.annotations().get(ANNOTATION_OUTCOME)?;
            let finished_at = p
                .annotations()
                .get(ANNOTATION_FINISHED_AT)
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(Timestamp::now);
            Some(FinishedPod {
                name: p.name_any(),
                succeeded: outcome == "succeeded",
                finished_at,
            })
        })
        .collect();
    let (delete_now, recheck) = pods_to_delete(&finished, &retention, Timestamp::now());
    for name in delete_now {
        delete(&pods, &name).await?;
    }
    Ok(recheck.map_or_else(Action::await_change, |r| {
        Action::requeue(r + Duration::from_secs(1))
    }))
}

async fn delete(pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    ignore_not_found(pods.delete(name, &Default::default()).await)
}

/// Writes the reported outcome onto the run Pod: from then on it is never reported again.
pub async fn mark_reported(
    pods: &Api<Pod>,
    name: &str,
    outcome: &str,
    at: Timestamp,
) -> Result<(), Error> {
    let mark = json!({"metadata": {"annotations": {
        ANNOTATION_OUTCOME: outcome,
        ANNOTATION_FINISHED_AT: at.to_string(),
    }}});
    ignore_not_found(
        pods.patch(name, &workers::patch_params(), &Patch::Merge(&mark))
            .await,
    )
}
