//! The run a worker holds: what comes next from what its Pod says, and the records of its end;
//! and what becomes of a Pod its worker does not hold.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{CREATE_PATIENCE, FORCE_DELETE_AFTER, PodFacts, PodSeen, failed, remember, since};
use crate::controller::outcome::{Ending, PodProgress};
use crate::controller::records::{finished_record, run_of};
use crate::crd::{CurrentRun, FinishedRun, WorkerState, WorkerStatus};
use crate::protocol::FailureCause;

// ------------------------------------------------------------------------------------------
// The run the worker holds
// ------------------------------------------------------------------------------------------

/// The next thing to do for the run a worker holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing until the Pod changes, or until `recheck` passes.
    Wait(Option<Duration>),
    /// Write down how the run ends ([`record_ending`]); its Pod is deleted next.
    RecordEnding(Box<FinishedRun>),
    /// Delete the run Pod: with its grace period, or at once when it outlived that.
    DeletePod { force: bool },
    /// Free the worker with this report ([`release`]), then send it.
    Release(Box<FinishedRun>),
}

/// What comes next for `current`, given its Pod, at `now`; `instance` is this process.
pub fn step(current: &CurrentRun, pod: &PodSeen, now: Timestamp, instance: &str) -> Step {
    let record = |ending: &Ending| {
        Box::new(finished_record(
            &run_of(current),
            &current.pod_name,
            ending,
            now,
        ))
    };
    if let Some(ending) = &current.ending {
        return match pod {
            PodSeen::Gone { .. } => Step::Release(Box::new(ending.clone())),
            PodSeen::Present(PodFacts {
                deleting_since: None,
                ..
            }) => Step::DeletePod { force: false },
            PodSeen::Present(PodFacts {
                deleting_since: Some(grace_ends),
                ..
            }) => {
                let past = since(*grace_ends, now);
                if past >= FORCE_DELETE_AFTER {
                    Step::DeletePod { force: true }
                } else {
                    Step::Wait(Some(FORCE_DELETE_AFTER - past + Duration::from_secs(1)))
                }
            }
        };
    }
    match pod {
        PodSeen::Present(facts) => match &facts.progress {
            PodProgress::InProgress { recheck } => Step::Wait(*recheck),
            // It must be gone before the worker is freed: no abandoned attempt may start later.
            PodProgress::Ended(ending) if ending.abandon || facts.deleting_since.is_some() => {
                Step::RecordEnding(record(ending))
            }
            PodProgress::Ended(ending) => Step::Release(record(ending)),
        },
        PodSeen::Gone { last: Some(ending) } => Step::Release(record(ending)),
        PodSeen::Gone { last: None } if current.pod_created => Step::Release(record(&failed(
            FailureCause::PodDeleted,
            format!(
                "the run Pod {} was deleted before its outcome was seen",
                current.pod_name
            ),
        ))),
        PodSeen::Gone { last: None } if current.creator.as_deref() == Some(instance) => {
            let waited = since(current.scheduled_at.0, now);
            if waited < CREATE_PATIENCE {
                Step::Wait(Some(CREATE_PATIENCE - waited + Duration::from_secs(1)))
            } else {
                Step::Release(record(&failed(
                    FailureCause::Unknown,
                    format!("the run Pod {} was never created", current.pod_name),
                )))
            }
        }
        PodSeen::Gone { last: None } => Step::Release(record(&failed(
            FailureCause::Unknown,
            format!(
                "the operator process that took the run stopped before it saw the run Pod {} created; it is not created now, because it may have been created and deleted since, and a run never runs twice",
                current.pod_name
            ),
        ))),
    }
}

/// The status with the held run's end decided, before its Pod is deleted.
pub fn record_ending(
    status: &WorkerStatus,
    pod_name: &str,
    record: FinishedRun,
) -> Option<WorkerStatus> {
    let current = status.current_run.as_ref()?;
    if current.pod_name != pod_name || current.ending.is_some() {
        return None;
    }
    Some(WorkerStatus {
        current_run: Some(CurrentRun {
            ending: Some(record),
            ..current.clone()
        }),
        ..status.clone()
    })
}

/// The status of a worker done with the run of `record.pod_name`: IDLE, or still DRAINING
/// (it is deleted next), with `record` last in its finished runs (the oldest forgotten beyond
/// [`FINISHED_RUNS_KEPT`]). `None` when it does not hold that run.
pub fn release(status: &WorkerStatus, record: &FinishedRun) -> Option<WorkerStatus> {
    let current = status.current_run.as_ref()?;
    if current.pod_name != record.pod_name {
        return None;
    }
    let state = match status.state {
        Some(WorkerState::Draining) => WorkerState::Draining,
        _ => WorkerState::Idle,
    };
    Some(WorkerStatus {
        state: Some(state),
        replicas: Some(0),
        current_run_id: None,
        current_run: None,
        finished_runs: remember(&status.finished_runs, record.clone()),
        ..status.clone()
    })
}

// ------------------------------------------------------------------------------------------
// A Pod its worker does not hold
// ------------------------------------------------------------------------------------------

/// What to do with a run Pod its worker does not hold (or no longer).
#[derive(Clone, Debug, PartialEq)]
pub enum Leftover {
    /// Reported and marked: only retention applies.
    Reported,
    /// Its run was released (the record is here) but the Pod was not marked yet: send the
    /// report again (the original may have died with a process) and mark the Pod.
    Mark(Box<FinishedRun>),
    /// No record stands for this Pod: it must not run. Delete it.
    Orphan,
}

/// The fate of run Pod `pod_name`, or `None` when the worker holds it (see [`step`]).
pub fn leftover(status: &WorkerStatus, pod_name: &str, reported: bool) -> Option<Leftover> {
    if status
        .current_run
        .as_ref()
        .is_some_and(|c| c.pod_name == pod_name)
    {
        return None;
    }
    if reported {
        return Some(Leftover::Reported);
    }
    Some(
        match status.finished_runs.iter().find(|r| r.pod_name == pod_name) {
            Some(record) => Leftover::Mark(Box::new(record.clone())),
            None => Leftover::Orphan,
        },
    )
}
