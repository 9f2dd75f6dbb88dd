//! A `run.schedule` arrives: it is known by the run stage attempt it names on its worker
//! ([`machine::fit_schedule`]), then taken in named steps: [`build`] the Pod through the hooks
//! (nothing is recorded yet, so a crash here only means the schedule is evaluated again when
//! it is redelivered), [`accept`] it (the worker BUSY, this process its creator), [`create`]
//! the Pod under its deterministic name. A refusal is recorded before it is sent, so a copy of
//! the schedule gets the same answer whatever the hooks say by then.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use ulid::Ulid;

use super::super::error::{Error, Step, refused_for_good};
use super::super::machine::{self, Resume, ScheduleFit};
use super::super::records::{
    accepted_message, denied_record, pod_created_message, report_message, worker_name,
};
use super::super::workers::{leaving, update_status, worker_ulid};
use super::super::{ANNOTATION_SCHEDULED_AT, Context, PoolHandle, pods};
use super::drive::{advance_locked, count_outcome, note_on_worker, release_and_report};
use crate::crd::{CurrentRun, Worker};
use crate::hooks::{Decision, HookInput};
use crate::pod;
use crate::protocol::{DenyReason, RunRef, RunSchedule};

/// The name under which the operator itself refuses a run (unknown worker, busy worker ...).
const OPERATOR_HOOK: &str = "operator";
/// The name under which a run is refused when the API server refuses its Pod.
const KUBERNETES_HOOK: &str = "kubernetes";
/// The name under which a run is refused when its Pod cannot be built from the pool.
const BUILD_HOOK: &str = "build";

/// Handles one schedule, `schedule_id` its message id.
pub async fn on_schedule(
    ctx: &Arc<Context>,
    pool: &Arc<PoolHandle>,
    worker_id: Ulid,
    schedule_id: Ulid,
    schedule: &RunSchedule,
) -> Result<(), Error> {
    let received = Timestamp::now();
    let namespace = pool.key.namespace.clone();
    let name = worker_name(&pool.key.name, worker_id);
    let run = RunRef::new(&schedule.run_id, &schedule.stage, schedule.attempt);
    let pod_name = match pod::pod_name(schedule) {
        Ok(pod_name) => pod_name,
        Err(err) => {
            let reasons = vec![reason(OPERATOR_HOOK, err.to_string())];
            return answer_unrecorded(ctx, pool, worker_id, &run, reasons).await;
        }
    };
    let (_guard, worker) = ctx.locked_worker(&namespace, &name).await?;
    let Some(worker) = worker else {
        let message = format!(
            "worker {worker_id} is not a Worker of WorkerPool {}",
            pool.key
        );
        let reasons = vec![reason(OPERATOR_HOOK, message)];
        return answer_unrecorded(ctx, pool, worker_id, &run, reasons).await;
    };
    let mut fit = fit(&worker, &pod_name, schedule_id);
    let worker = if matches!(fit, ScheduleFit::Take) {
        worker
    } else {
        // The worker was read from the cache: before anything but taking the run (which a
        // conditional write guards), read it again, so that no run is refused or resumed on
        // a copy the watch had not brought up to date.
        let Some(fresh) = ctx.fresh_worker(&namespace, &name).await? else {
            let message = format!(
                "worker {worker_id} is not a Worker of WorkerPool {}",
                pool.key
            );
            let reasons = vec![reason(OPERATOR_HOOK, message)];
            return answer_unrecorded(ctx, pool, worker_id, &run, reasons).await;
        };
        fit = self::fit(&fresh, &pod_name, schedule_id);
        fresh
    };
    match fit {
        ScheduleFit::Take => {
            let taking = Taking {
                worker: &worker,
                schedule,
                schedule_id,
                pod_name: &pod_name,
                received,
            };
            take(ctx, pool, taking).await
        }
        ScheduleFit::Held => resume_held(ctx, pool, worker, schedule, &pod_name).await,
        ScheduleFit::Answered(record) => {
            tracing::info!(pool = %pool.key, worker = %name, pod = %pod_name, outcome = ?record.outcome, "schedule of a run stage this worker already finished: re-sending its report instead of running it again");
            pool.send(&report_message(worker_id, &record)).await
        }
        ScheduleFit::Stale => {
            tracing::info!(pool = %pool.key, worker = %name, pod = %pod_name, schedule = %schedule_id, "schedule older than the newest this worker took, for a run it no longer remembers: a copy of a run that ended long ago; nothing to do");
            Ok(())
        }
        ScheduleFit::Refuse(refusal) => {
            let reasons = vec![reason(OPERATOR_HOOK, refusal.message(worker_id))];
            deny(ctx, pool, &worker, &run, &pod_name, schedule_id, reasons).await
        }
    }
}

fn fit(worker: &Worker, pod_name: &str, schedule_id: Ulid) -> ScheduleFit {
    let status = worker.status.clone().unwrap_or_default();
    machine::fit_schedule(&status, leaving(worker), pod_name, schedule_id)
}

/// A schedule the worker takes.
struct Taking<'a> {
    worker: &'a Worker,
    schedule: &'a RunSchedule,
    schedule_id: Ulid,
    pod_name: &'a str,
    received: Timestamp,
}

/// build -> accept -> create.
async fn take(ctx: &Arc<Context>, pool: &PoolHandle, taking: Taking<'_>) -> Result<(), Error> {
    let run = RunRef::new(
        &taking.schedule.run_id,
        &taking.schedule.stage,
        taking.schedule.attempt,
    );
    let pod = match build(ctx, pool, taking.worker, taking.schedule, taking.received).await? {
        Built::Pod(pod) => pod,
        Built::Refused(reasons) => {
            return deny(
                ctx,
                pool,
                taking.worker,
                &run,
                taking.pod_name,
                taking.schedule_id,
                reasons,
            )
            .await;
        }
    };
    let current = CurrentRun {
        run_id: run.run_id.clone(),
        stage: run.stage.clone(),
        attempt: run.attempt,
        pod_name: taking.pod_name.to_string(),
        scheduled_at: Time(taking.received),
        pod_created: false,
        creator: Some(ctx.instance.clone()),
        ending: None,
    };
    let worker = accept(ctx, pool, taking.worker, &current, taking.schedule_id).await?;
    create(ctx, pool, &worker, &current, &pod).await
}

/// What the hooks made of the run Pod.
enum Built {
    Pod(Box<Pod>),
    Refused(Vec<DenyReason>),
}

/// Builds the run Pod from the pool and passes it through the hook pipeline.
async fn build(
    ctx: &Context,
    pool: &PoolHandle,
    worker: &Worker,
    schedule: &RunSchedule,
    received: Timestamp,
) -> Result<Built, Error> {
    let workerpool = ctx.read_pool(&pool.key.namespace, &pool.key.name).await?;
    let Some(workerpool) = workerpool else {
        let message = format!("WorkerPool {} no longer exists", pool.key);
        return Ok(Built::Refused(vec![reason(OPERATOR_HOOK, message)]));
    };
    let input = match HookInput::build(&workerpool, worker, schedule) {
        Ok(input) => input,
        Err(err) => return Ok(Built::Refused(vec![reason(BUILD_HOOK, err.to_string())])),
    };
    match ctx
        .hooks
        .pipeline(&workerpool)
        .evaluate_blocking(input)
        .await
    {
        Decision::Allowed(allowed) => {
            let mut pod = allowed.pod;
            pod.annotations_mut()
                .insert(ANNOTATION_SCHEDULED_AT.into(), received.to_string());
            Ok(Built::Pod(Box::new(pod)))
        }
        Decision::Denied(denial) => {
            let hook = format!("{}/{}", denial.stage, denial.hook);
            let reasons = denial
                .reasons
                .iter()
                .map(|message| reason(&hook, message.clone()))
                .collect();
            Ok(Built::Refused(reasons))
        }
    }
}

/// Records the worker BUSY with `current` (this process its creator) before anything is
/// created or sent, then sends `run.accepted`.
async fn accept(
    ctx: &Context,
    pool: &PoolHandle,
    worker: &Worker,
    current: &CurrentRun,
    schedule_id: Ulid,
) -> Result<Worker, Error> {
    let namespace = &pool.key.namespace;
    let name = worker.name_any();
    let Some(updated) = update_status(ctx, namespace, &name, |status| {
        machine::accept(status, current.clone(), schedule_id)
    })
    .await?
    else {
        return Err(Error::Conflict {
            object: format!("Worker {namespace}/{name}"),
        });
    };
    pool.send(&accepted_message(worker_ulid(&updated)?, current))
        .await?;
    Ok(updated)
}

/// Creates the run Pod, records that it exists, and sends `run.podCreated`. A Pod the API
/// server refuses for good answers the run: it is denied (recorded first, like any denial).
async fn create(
    ctx: &Context,
    pool: &PoolHandle,
    worker: &Worker,
    current: &CurrentRun,
    pod: &Pod,
) -> Result<(), Error> {
    let namespace = &pool.key.namespace;
    match pods::create(ctx, namespace, pod).await {
        Ok(created) => {
            tracing::info!(pool = %pool.key, worker = %worker.name_any(), pod = %current.pod_name, ?created, "run Pod created");
        }
        Err(err) if refused_for_good(&err) => {
            // Asking again gets the same answer (an invalid Pod, an admission policy or a
            // quota saying no): the run cannot start, and the backend hears why.
            let said = match &err {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            let message = format!("creating the run Pod failed: {said}");
            let record = denied_record(
                &super::super::records::run_of(current),
                &current.pod_name,
                &[reason(KUBERNETES_HOOK, message)],
                Timestamp::now(),
            );
            return release_and_report(ctx, pool, worker, &record).await;
        }
        Err(err) => {
            return Err(Error::api(
                Step::CreatePod,
                format!("{namespace}/{}", current.pod_name),
            )(err));
        }
    }
    record_created(ctx, pool, worker, current).await
}

/// Records that the run Pod exists and sends `run.podCreated` (both idempotent).
async fn record_created(
    ctx: &Context,
    pool: &PoolHandle,
    worker: &Worker,
    current: &CurrentRun,
) -> Result<(), Error> {
    update_status(ctx, &pool.key.namespace, &worker.name_any(), |status| {
        machine::record_created(status, &current.pod_name)
    })
    .await?;
    let message = pod_created_message(worker_ulid(worker)?, current, &pool.key.namespace);
    pool.send(&message).await
}

/// A schedule of the run the worker holds, delivered again: carry on where its records stand.
async fn resume_held(
    ctx: &Arc<Context>,
    pool: &PoolHandle,
    worker: Worker,
    schedule: &RunSchedule,
    pod_name: &str,
) -> Result<(), Error> {
    let Some(current) = worker.status.as_ref().and_then(|s| s.current_run.clone()) else {
        return Ok(());
    };
    let seen = pods::seen(ctx, &pool.key.namespace, pod_name).await?;
    let worker_id = worker_ulid(&worker)?;
    match machine::resume(&current, &seen, &ctx.instance) {
        Resume::CreatePod => {
            pool.send(&accepted_message(worker_id, &current)).await?;
            match build(ctx, pool, &worker, schedule, current.scheduled_at.0).await? {
                Built::Pod(pod) => create(ctx, pool, &worker, &current, &pod).await,
                Built::Refused(reasons) => {
                    let record = denied_record(
                        &super::super::records::run_of(&current),
                        pod_name,
                        &reasons,
                        Timestamp::now(),
                    );
                    release_and_report(ctx, pool, &worker, &record).await
                }
            }
        }
        Resume::RecordCreated => {
            pool.send(&accepted_message(worker_id, &current)).await?;
            record_created(ctx, pool, &worker, &current).await
        }
        Resume::ReportCreated => {
            pool.send(&accepted_message(worker_id, &current)).await?;
            let message = pod_created_message(worker_id, &current, &pool.key.namespace);
            pool.send(&message).await
        }
        Resume::Settle => advance_locked(ctx, worker).await.map(|_| ()),
    }
}

/// Refuses a schedule the worker does not take: recorded on the Worker (so that a copy gets
/// the same answer), then sent, with every reason and an event.
async fn deny(
    ctx: &Context,
    pool: &PoolHandle,
    worker: &Worker,
    run: &RunRef,
    pod_name: &str,
    schedule_id: Ulid,
    reasons: Vec<DenyReason>,
) -> Result<(), Error> {
    let record = denied_record(run, pod_name, &reasons, Timestamp::now());
    update_status(ctx, &pool.key.namespace, &worker.name_any(), |status| {
        Some(machine::record_denial(status, record.clone(), schedule_id))
    })
    .await?;
    tracing::warn!(pool = %pool.key, worker = %worker.name_any(), run = %pod_name, ?reasons, "run denied");
    note_on_worker(ctx, worker, &record).await;
    count_outcome(ctx, pool, &record);
    pool.send(&report_message(worker_ulid(worker)?, &record))
        .await
}

/// Refuses a schedule no Worker can record (no such worker, a run that names no Pod): the
/// answer is the same whenever it is asked, so nothing needs remembering.
async fn answer_unrecorded(
    ctx: &Context,
    pool: &PoolHandle,
    worker: Ulid,
    run: &RunRef,
    reasons: Vec<DenyReason>,
) -> Result<(), Error> {
    tracing::warn!(pool = %pool.key, %worker, run = %run.pod_name(), ?reasons, "run denied");
    let record = denied_record(run, &run.pod_name(), &reasons, Timestamp::now());
    count_outcome(ctx, pool, &record);
    pool.send(&report_message(worker, &record)).await
}

fn reason(hook: &str, message: String) -> DenyReason {
    DenyReason {
        hook: hook.into(),
        message,
    }
}
