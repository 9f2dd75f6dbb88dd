//! What the backend sends a pool: run schedules and stops, and the answers to registrations.
//!
//! A schedule makes the worker BUSY (recorded in its status first, so a crash cannot lose it),
//! runs the hook pipeline over the built Pod, creates the Pod under its deterministic name
//! (a redelivered schedule finds it and changes nothing), and reports `run.accepted` and
//! `run.podCreated`, or `run.denied` with every reason. A schedule of a run stage the worker
//! already finished (redelivered after its Pod was removed) creates nothing: the worker's
//! status remembers what it reported, and that report is sent again.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use ulid::Ulid;

use super::outcome::Ending;
use super::workers::{self, remove_finalizer, update_status, worker_ulid};
use super::{
    ANNOTATION_SCHEDULED_AT, Context, Error, MANAGER, PoolHandle, ignore_not_found, is_conflict,
};
use crate::crd::{
    CurrentRun, DeniedBy, FinishedOutcome, FinishedRun, Worker, WorkerPool, WorkerState,
    WorkerStatus,
};
use crate::hooks::{Decision, HookInput};
use crate::pod;
use crate::protocol::{
    Body, DenyReason, FailureCause, Message, Outcome, PodCreated, RunDenied, RunFinished, RunRef,
    RunSchedule, RunStop,
};

/// The name under which the operator itself refuses a run (unknown worker, busy worker ...).
const OPERATOR_HOOK: &str = "operator";
/// The name under which a run is refused when the API server refuses its Pod.
const KUBERNETES_HOOK: &str = "kubernetes";

/// Whether the API server's refusal to create a run Pod would only repeat: a 4xx other than
/// 409 (the Pod exists), 429 (throttled), 408 (timeout) and 401 (our own credentials, which
/// the client refreshes).
fn refused_for_good(code: u16) -> bool {
    (400..500).contains(&code) && !matches!(code, 401 | 408 | 409 | 429)
}

/// Handles one inbound message. `Ok` means it may be acknowledged.
pub async fn handle(
    ctx: &Arc<Context>,
    pool: &Arc<PoolHandle>,
    message: &Message,
) -> Result<(), Error> {
    let worker = message.worker;
    match (&message.body, worker) {
        (Body::RunSchedule(schedule), Some(worker)) => {
            on_schedule(ctx, pool, worker, schedule).await
        }
        (Body::RunStop(stop), Some(worker)) => on_stop(ctx, pool, worker, stop).await,
        (Body::WorkerRegistered(_), Some(worker)) => on_registered(ctx, pool, worker).await,
        (Body::WorkerDeregistered(_), Some(worker)) => {
            let name = worker_name(pool, worker);
            remove_finalizer(ctx, &pool.key.namespace, &name).await
        }
        (Body::PoolStatus(status), None) => {
            tracing::debug!(pool = %pool.key, ?status, "backend pool status");
            Ok(())
        }
        (body, _) => {
            tracing::warn!(pool = %pool.key, kind = body.kind(), "ignoring a message the operator does not expect from the backend");
            Ok(())
        }
    }
}

/// Workers are named `<pool>-<lowercase worker ULID>`.
fn worker_name(pool: &PoolHandle, worker: Ulid) -> String {
    format!("{}-{}", pool.key.name, worker.to_string().to_lowercase())
}

async fn on_registered(ctx: &Arc<Context>, pool: &PoolHandle, worker: Ulid) -> Result<(), Error> {
    let name = worker_name(pool, worker);
    update_status(ctx, &pool.key.namespace, &name, |w| {
        let status = w.status.clone().unwrap_or_default();
        (status.registered != Some(true)).then(|| WorkerStatus {
            registered: Some(true),
            state: status.state.or(Some(WorkerState::Idle)),
            ..status
        })
    })
    .await?;
    Ok(())
}

async fn on_schedule(
    ctx: &Arc<Context>,
    pool: &Arc<PoolHandle>,
    worker_id: Ulid,
    schedule: &RunSchedule,
) -> Result<(), Error> {
    let received = Timestamp::now();
    let namespace = pool.key.namespace.clone();
    let name = worker_name(pool, worker_id);
    let run = RunRef::new(&schedule.run_id, &schedule.stage, schedule.attempt);
    let (_guard, worker) = ctx.locked_worker(&namespace, &name).await?;
    let Some(worker) = worker else {
        let reason = format!(
            "worker {worker_id} is not a Worker of WorkerPool {}",
            pool.key
        );
        return deny(ctx, pool, worker_id, &run, vec![operator_reason(reason)]).await;
    };
    let pod_name = match pod::pod_name(schedule) {
        Ok(name) => name,
        Err(err) => {
            return deny(
                ctx,
                pool,
                worker_id,
                &run,
                vec![operator_reason(err.to_string())],
            )
            .await;
        }
    };
    let status = worker.status.clone().unwrap_or_default();
    if let Some(done) = status.finished_runs.iter().find(|r| r.pod_name == pod_name) {
        tracing::info!(pool = %pool.key, worker = %name, pod = %pod_name, outcome = ?done.outcome, "schedule of a run stage this worker already finished: re-sending its report instead of running it again");
        pool.publish(&report_message(worker_id, done)).await?;
        return Ok(());
    }
    let worker = match &status.current_run {
        Some(current) if current.pod_name == pod_name => worker, // redelivery: carry on
        Some(current) => {
            let reason = format!(
                "worker {worker_id} is busy with run {} ({})",
                current.run_id, current.pod_name
            );
            return deny(ctx, pool, worker_id, &run, vec![operator_reason(reason)]).await;
        }
        None if worker.meta().deletion_timestamp.is_some()
            || status.state == Some(WorkerState::Draining) =>
        {
            let reason = format!(
                "worker {worker_id} is leaving the pool (scaled down) and takes no new run"
            );
            return deny(ctx, pool, worker_id, &run, vec![operator_reason(reason)]).await;
        }
        None => {
            let busy = WorkerStatus {
                state: Some(WorkerState::Busy),
                replicas: Some(1),
                current_run_id: Some(schedule.run_id.clone()),
                current_run: Some(CurrentRun {
                    run_id: schedule.run_id.clone(),
                    stage: schedule.stage.clone(),
                    attempt: schedule.attempt,
                    pod_name: pod_name.clone(),
                    scheduled_at: Time(received),
                    pod_created: false,
                }),
                ..status.clone()
            };
            let Some(updated) = update_status(ctx, &namespace, &name, |w| {
                w.status
                    .as_ref()
                    .is_none_or(|s| s.current_run.is_none())
                    .then(|| busy.clone())
            })
            .await?
            else {
                return Err(Error::Conflict(format!("Worker {namespace}/{name}")));
            };
            pool.publish(&Message::for_worker(
                worker_id,
                Body::RunAccepted(run.clone()),
            ))
            .await?;
            updated
        }
    };

    let pools: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(workerpool) = pools.get_opt(&pool.key.name).await? else {
        let reason = format!("WorkerPool {} no longer exists", pool.key);
        return refuse(
            ctx,
            pool,
            &worker,
            &run,
            &pod_name,
            vec![operator_reason(reason)],
        )
        .await;
    };
    let input = match HookInput::build(&workerpool, &worker, schedule) {
        Ok(input) => input,
        Err(err) => {
            let reasons = vec![DenyReason {
                hook: "build".into(),
                message: err.to_string(),
            }];
            return refuse(ctx, pool, &worker, &run, &pod_name, reasons).await;
        }
    };
    let mut run_pod = match ctx
        .hooks
        .pipeline(&workerpool)
        .evaluate_blocking(input)
        .await
    {
        Decision::Allowed(allowed) => allowed.pod,
        Decision::Denied(denial) => {
            let hook = format!("{}/{}", denial.stage, denial.hook);
            let reasons = denial
                .reasons
                .iter()
                .map(|message| DenyReason {
                    hook: hook.clone(),
                    message: message.clone(),
                })
                .collect();
            return refuse(ctx, pool, &worker, &run, &pod_name, reasons).await;
        }
    };
    run_pod
        .annotations_mut()
        .insert(ANNOTATION_SCHEDULED_AT.into(), received.to_string());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match pods.create(&params, &run_pod).await {
        Ok(_) => {
            tracing::info!(pool = %pool.key, worker = %name, pod = %pod_name, "run Pod created")
        }
        Err(err) if is_conflict(&err) => {
            tracing::info!(pool = %pool.key, pod = %pod_name, "run Pod already exists (redelivered schedule)");
        }
        Err(kube::Error::Api(status)) if refused_for_good(status.code) => {
            // Asking again gets the same answer (an invalid Pod, an admission webhook or a
            // quota saying no): the run cannot start, and the backend hears why.
            let reasons = vec![DenyReason {
                hook: KUBERNETES_HOOK.into(),
                message: format!("creating the run Pod failed: {}", status.message),
            }];
            return refuse(ctx, pool, &worker, &run, &pod_name, reasons).await;
        }
        Err(err) => return Err(err.into()),
    }
    update_status(ctx, &namespace, &name, |w| {
        let status = w.status.clone()?;
        let current = status.current_run.clone()?;
        (current.pod_name == pod_name && !current.pod_created).then_some(WorkerStatus {
            current_run: Some(CurrentRun {
                pod_created: true,
                ..current
            }),
            ..status
        })
    })
    .await?;
    pool.publish(&Message::for_worker(
        worker_id,
        Body::PodCreated(PodCreated {
            run_id: run.run_id.clone(),
            stage: run.stage.clone(),
            attempt: run.attempt,
            namespace,
            pod_name,
        }),
    ))
    .await?;
    Ok(())
}

fn operator_reason(message: String) -> DenyReason {
    DenyReason {
        hook: OPERATOR_HOOK.into(),
        message,
    }
}

/// Reports a run denied before the worker took it.
async fn deny(
    ctx: &Context,
    pool: &PoolHandle,
    worker: Ulid,
    run: &RunRef,
    reasons: Vec<DenyReason>,
) -> Result<(), Error> {
    tracing::warn!(pool = %pool.key, %worker, run = %run.pod_name(), ?reasons, "run denied");
    ctx.metrics
        .run_outcomes
        .with_label_values(&[&pool.pool_id.to_string(), "denied", ""])
        .inc();
    pool.publish(&Message::for_worker(
        worker,
        Body::RunDenied(RunDenied {
            run_id: run.run_id.clone(),
            stage: run.stage.clone(),
            attempt: run.attempt,
            reasons,
        }),
    ))
    .await?;
    Ok(())
}

/// Reports a run the worker had accepted but that may not start: a hook denied its Pod. The
/// Worker gets an event with every reason, and is free again.
async fn refuse(
    ctx: &Arc<Context>,
    pool: &PoolHandle,
    worker: &Worker,
    run: &RunRef,
    pod_name: &str,
    reasons: Vec<DenyReason>,
) -> Result<(), Error> {
    let note = reasons
        .iter()
        .map(|r| format!("{}: {}", r.hook, r.message))
        .collect::<Vec<_>>()
        .join("; ");
    ctx.event(
        worker,
        EventType::Warning,
        "RunDenied",
        "CreateRunPod",
        format!("run {} denied: {note}", run.pod_name()),
    )
    .await;
    let record = denied_record(run, pod_name, &reasons, Timestamp::now());
    let worker_id = worker_ulid(worker)?;
    tracing::warn!(pool = %pool.key, worker = %worker_id, run = %pod_name, ?reasons, "run denied");
    count_outcome(ctx, pool, &record);
    pool.publish(&report_message(worker_id, &record)).await?;
    let namespace = worker.namespace().unwrap_or_default();
    workers::release(ctx, Some(pool), &namespace, &worker.name_any(), record).await
}

async fn on_stop(
    ctx: &Arc<Context>,
    pool: &Arc<PoolHandle>,
    worker_id: Ulid,
    stop: &RunStop,
) -> Result<(), Error> {
    let namespace = pool.key.namespace.clone();
    let name = worker_name(pool, worker_id);
    let (_guard, worker) = ctx.locked_worker(&namespace, &name).await?;
    let current = worker
        .and_then(|w| w.status?.current_run)
        .filter(|r| r.run_id == stop.run_id && stop.stage.as_ref().is_none_or(|s| *s == r.stage));
    let Some(current) = current else {
        tracing::info!(pool = %pool.key, worker = %name, run = %stop.run_id, "stop for a run the worker is not processing: nothing to stop");
        return Ok(());
    };
    // Mark the Pod as reported first, so its disappearance is not taken for a failure.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    super::pods::mark_reported(&pods, &current.pod_name, "stopped", Timestamp::now()).await?;
    ignore_not_found(
        pods.delete(&current.pod_name, &DeleteParams::default())
            .await,
    )?;
    let ending = Ending {
        outcome: Outcome::Stopped,
        cause: None,
        message: if stop.reason.is_empty() {
            "stopped on request".to_string()
        } else {
            stop.reason.clone()
        },
        exit_code: None,
        abandon: false,
    };
    let run = RunRef::new(&current.run_id, &current.stage, current.attempt);
    let record = finished_record(&run, &current.pod_name, &ending, Timestamp::now());
    report_finished(ctx, pool, worker_id, &record).await?;
    workers::release(ctx, Some(pool), &namespace, &name, record).await
}

/// Reports how a run stage attempt ended, and counts it.
pub async fn report_finished(
    ctx: &Context,
    pool: &PoolHandle,
    worker: Ulid,
    record: &FinishedRun,
) -> Result<(), Error> {
    pool.publish(&report_message(worker, record)).await?;
    count_outcome(ctx, pool, record);
    Ok(())
}

fn count_outcome(ctx: &Context, pool: &PoolHandle, record: &FinishedRun) {
    let outcome = match record.outcome {
        FinishedOutcome::Succeeded => "succeeded",
        FinishedOutcome::Failed => "failed",
        FinishedOutcome::Stopped => "stopped",
        FinishedOutcome::Denied => "denied",
    };
    let cause = record
        .cause
        .as_deref()
        .and_then(parse_cause)
        .map(|c| format!("{c:?}"))
        .unwrap_or_default();
    ctx.metrics
        .run_outcomes
        .with_label_values(&[&pool.pool_id.to_string(), outcome, &cause])
        .inc();
}

/// What the worker reports about a run stage that ended with `ending`, under a fresh message id.
pub fn finished_record(
    run: &RunRef,
    pod_name: &str,
    ending: &Ending,
    at: Timestamp,
) -> FinishedRun {
    let outcome = match ending.outcome {
        Outcome::Succeeded => FinishedOutcome::Succeeded,
        Outcome::Failed => FinishedOutcome::Failed,
        Outcome::Stopped => FinishedOutcome::Stopped,
    };
    FinishedRun {
        cause: ending.cause.and_then(cause_name),
        message: ending.message.clone(),
        exit_code: ending.exit_code,
        ..new_record(run, pod_name, outcome, at)
    }
}

/// What the worker reports about a run stage whose Pod was refused, under a fresh message id.
pub fn denied_record(
    run: &RunRef,
    pod_name: &str,
    reasons: &[DenyReason],
    at: Timestamp,
) -> FinishedRun {
    FinishedRun {
        denied_by: reasons
            .iter()
            .map(|r| DeniedBy {
                hook: r.hook.clone(),
                message: r.message.clone(),
            })
            .collect(),
        ..new_record(run, pod_name, FinishedOutcome::Denied, at)
    }
}

/// A record of `run` with no detail yet, under a fresh message id.
fn new_record(
    run: &RunRef,
    pod_name: &str,
    outcome: FinishedOutcome,
    at: Timestamp,
) -> FinishedRun {
    FinishedRun {
        run_id: run.run_id.clone(),
        stage: run.stage.clone(),
        attempt: run.attempt,
        pod_name: pod_name.to_string(),
        message_id: Ulid::generate().to_string(),
        finished_at: Time(at),
        outcome,
        cause: None,
        message: String::new(),
        exit_code: None,
        denied_by: Vec::new(),
    }
}

/// The `run.finished` or `run.denied` a record stands for, under the record's message id: a
/// re-sent report is the same message, so a backend that applied it recognises the copy.
pub fn report_message(worker: Ulid, record: &FinishedRun) -> Message {
    let outcome = match record.outcome {
        FinishedOutcome::Succeeded => Some(Outcome::Succeeded),
        FinishedOutcome::Failed => Some(Outcome::Failed),
        FinishedOutcome::Stopped => Some(Outcome::Stopped),
        FinishedOutcome::Denied => None,
    };
    let body = match outcome {
        Some(outcome) => Body::RunFinished(RunFinished {
            run_id: record.run_id.clone(),
            stage: record.stage.clone(),
            attempt: record.attempt,
            outcome,
            cause: record.cause.as_deref().and_then(parse_cause),
            message: record.message.clone(),
            exit_code: record.exit_code,
        }),
        None => Body::RunDenied(RunDenied {
            run_id: record.run_id.clone(),
            stage: record.stage.clone(),
            attempt: record.attempt,
            reasons: record
                .denied_by
                .iter()
                .map(|r| DenyReason {
                    hook: r.hook.clone(),
                    message: r.message.clone(),
                })
                .collect(),
        }),
    };
    let mut message = Message::for_worker(worker, body);
    if let Ok(id) = record.message_id.parse() {
        message.id = id;
    }
    message
}

/// A failure cause as the protocol spells it, e.g. "OOMKilled".
fn cause_name(cause: FailureCause) -> Option<String> {
    serde_json::to_value(cause)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

fn parse_cause(name: &str) -> Option<FailureCause> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunRef {
        RunRef::new("01HN37WC3MCNE3CY9HAHWRF06K", "preparing", 2)
    }

    #[test]
    fn a_recorded_outcome_is_re_sent_as_the_same_message() {
        let ending = Ending {
            outcome: Outcome::Failed,
            cause: Some(FailureCause::OomKilled),
            message: "container init was OOMKilled".into(),
            exit_code: Some(137),
            abandon: false,
        };
        let record = finished_record(&run(), "p", &ending, Timestamp::UNIX_EPOCH);
        assert_eq!(record.cause.as_deref(), Some("OOMKilled"));
        let worker = Ulid::generate();
        let first = report_message(worker, &record);
        let again = report_message(worker, &record);
        assert_eq!(first.id, again.id, "a re-sent report keeps its message id");
        assert_eq!(first.id.to_string(), record.message_id);
        assert_eq!(
            first.body,
            Body::RunFinished(RunFinished {
                run_id: run().run_id,
                stage: "preparing".into(),
                attempt: 2,
                outcome: Outcome::Failed,
                cause: Some(FailureCause::OomKilled),
                message: "container init was OOMKilled".into(),
                exit_code: Some(137),
            })
        );
    }

    #[test]
    fn only_pod_creations_refused_for_good_refuse_the_run() {
        for code in [400, 403, 404, 422] {
            assert!(refused_for_good(code), "{code}");
        }
        for code in [401, 408, 409, 429, 500, 503] {
            assert!(!refused_for_good(code), "{code}");
        }
    }

    #[test]
    fn a_recorded_denial_is_re_sent_with_every_reason() {
        let reasons = vec![
            DenyReason {
                hook: "policy/initialization".into(),
                message: "pin a tag".into(),
            },
            DenyReason {
                hook: "kubernetes".into(),
                message: "forbidden".into(),
            },
        ];
        let record = denied_record(&run(), "p", &reasons, Timestamp::UNIX_EPOCH);
        let message = report_message(Ulid::generate(), &record);
        let Body::RunDenied(denied) = message.body else {
            panic!("{:?}", message.body)
        };
        assert_eq!((denied.attempt, denied.reasons), (2, reasons));
    }
}
