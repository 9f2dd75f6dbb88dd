//! A schedule or a stop arrives: where it stands against the worker's records, and the records
//! that taking or refusing it writes.

use k8s_openapi::jiff::Timestamp;
use ulid::Ulid;

use super::{PodFacts, PodSeen, latest_schedule, newest, remember};
use crate::controller::outcome::{Ending, PodProgress};
use crate::controller::records::{finished_record, run_of};
use crate::crd::{CurrentRun, FinishedRun, WorkerState, WorkerStatus};
use crate::protocol::{Outcome, RunStop};

// ------------------------------------------------------------------------------------------
// A schedule arrives
// ------------------------------------------------------------------------------------------

/// What a schedule is to the worker it was sent to.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleFit {
    /// New: evaluate the hooks, then [`accept`] it.
    Take,
    /// The worker holds this run already (a redelivery): [`resume`] tells where it stands.
    Held,
    /// The worker finished this run: send the report it recorded again, create nothing.
    Answered(Box<FinishedRun>),
    /// Older than the newest schedule the worker took and not remembered: a copy of a run
    /// that ended long ago. Nothing is created and nothing is sent.
    Stale,
    /// The worker cannot take it.
    Refuse(Refusal),
}

/// Why a worker refuses a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It holds another run.
    Busy { run_id: String, pod_name: String },
    /// It is leaving the pool (scaled down or deleted).
    Leaving,
}

impl Refusal {
    /// What the backend is told, naming the worker.
    pub fn message(&self, worker: Ulid) -> String {
        match self {
            Refusal::Busy { run_id, pod_name } => {
                format!("worker {worker} is busy with run {run_id} ({pod_name})")
            }
            Refusal::Leaving => format!(
                "worker {worker} is leaving the pool (scaled down or deleted) and takes no new run"
            ),
        }
    }
}

/// Where a schedule stands against what the worker recorded. `leaving`: the Worker is being
/// deleted or is DRAINING.
pub fn fit_schedule(
    status: &WorkerStatus,
    leaving: bool,
    pod_name: &str,
    schedule_id: Ulid,
) -> ScheduleFit {
    if let Some(current) = &status.current_run
        && current.pod_name == pod_name
    {
        return ScheduleFit::Held;
    }
    if let Some(done) = status
        .finished_runs
        .iter()
        .rev()
        .find(|r| r.pod_name == pod_name)
    {
        return ScheduleFit::Answered(Box::new(done.clone()));
    }
    if latest_schedule(status).is_some_and(|latest| schedule_id <= latest) {
        return ScheduleFit::Stale;
    }
    if let Some(current) = &status.current_run {
        return ScheduleFit::Refuse(Refusal::Busy {
            run_id: current.run_id.clone(),
            pod_name: current.pod_name.clone(),
        });
    }
    if leaving {
        return ScheduleFit::Refuse(Refusal::Leaving);
    }
    ScheduleFit::Take
}

/// What a redelivered schedule of the run the worker holds still has to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// This process took the run and its Pod does not exist yet: create it.
    CreatePod,
    /// The Pod exists but its creation was never recorded: record it and report it.
    RecordCreated,
    /// The Pod was created: report that again.
    ReportCreated,
    /// Nothing here: the run's end is decided, or its Pod is gone after it was created (or
    /// another process took it, and may have created it): [`step`] settles it.
    Settle,
}

/// Where a held run stands, for a redelivery of its schedule.
pub fn resume(current: &CurrentRun, pod: &PodSeen, instance: &str) -> Resume {
    if current.ending.is_some() {
        return Resume::Settle;
    }
    match pod {
        PodSeen::Present(_) if current.pod_created => Resume::ReportCreated,
        PodSeen::Present(_) => Resume::RecordCreated,
        PodSeen::Gone { last: None }
            if !current.pod_created && current.creator.as_deref() == Some(instance) =>
        {
            Resume::CreatePod
        }
        // Created and gone (deleted while nobody watched, or watched going): never again.
        PodSeen::Gone { .. } => Resume::Settle,
    }
}

/// The status of a worker that takes `run`: BUSY, holding it. `None` when it holds a run.
pub fn accept(status: &WorkerStatus, run: CurrentRun, schedule_id: Ulid) -> Option<WorkerStatus> {
    if status.current_run.is_some() {
        return None;
    }
    Some(WorkerStatus {
        state: Some(WorkerState::Busy),
        replicas: Some(1),
        current_run_id: Some(run.run_id.clone()),
        current_run: Some(run),
        latest_schedule_id: Some(newest(status, schedule_id)),
        ..status.clone()
    })
}

/// The status once the held run's Pod is known to exist.
pub fn record_created(status: &WorkerStatus, pod_name: &str) -> Option<WorkerStatus> {
    let current = status.current_run.as_ref()?;
    if current.pod_name != pod_name || current.pod_created {
        return None;
    }
    Some(WorkerStatus {
        current_run: Some(CurrentRun {
            pod_created: true,
            ..current.clone()
        }),
        ..status.clone()
    })
}

/// The status with a refused schedule remembered, so that a copy is answered the same way.
/// The worker's own run, if it holds one, is untouched.
pub fn record_denial(
    status: &WorkerStatus,
    record: FinishedRun,
    schedule_id: Ulid,
) -> WorkerStatus {
    WorkerStatus {
        finished_runs: remember(&status.finished_runs, record),
        latest_schedule_id: Some(newest(status, schedule_id)),
        ..status.clone()
    }
}

// ------------------------------------------------------------------------------------------
// A stop arrives
// ------------------------------------------------------------------------------------------

/// What a `run.stop` asks of the worker.
#[derive(Clone, Debug, PartialEq)]
pub enum StopFit {
    /// The worker does not hold that run. When it remembers it, the report is sent again (the
    /// backend asks because it has not heard the end).
    NotHeld(Option<Box<FinishedRun>>),
    /// The run's end is decided already (or its Pod ended by itself): nothing new.
    Settling,
    /// Record the stop ([`record_ending`]); the Pod is deleted next, and `stopped` is reported
    /// once it is gone.
    Record(Box<FinishedRun>),
}

/// The run a stop is for, if the worker holds it.
pub fn stopped_run<'a>(status: &'a WorkerStatus, stop: &RunStop) -> Option<&'a CurrentRun> {
    status
        .current_run
        .as_ref()
        .filter(|r| r.run_id == stop.run_id && stop.stage.as_ref().is_none_or(|s| *s == r.stage))
}

/// What `stop` means for the worker; `pod` is the stopped run's Pod, when the worker holds it.
pub fn fit_stop(
    status: &WorkerStatus,
    stop: &RunStop,
    pod: Option<&PodSeen>,
    now: Timestamp,
) -> StopFit {
    let Some(current) = stopped_run(status, stop) else {
        let done =
            status.finished_runs.iter().rev().find(|r| {
                r.run_id == stop.run_id && stop.stage.as_ref().is_none_or(|s| *s == r.stage)
            });
        return StopFit::NotHeld(done.map(|r| Box::new(r.clone())));
    };
    if current.ending.is_some() {
        return StopFit::Settling;
    }
    if let Some(PodSeen::Present(PodFacts {
        progress: PodProgress::Ended(ending),
        deleting_since: None,
        ..
    })) = pod
        && !ending.abandon
    {
        return StopFit::Settling;
    }
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
    StopFit::Record(Box::new(finished_record(
        &run_of(current),
        &current.pod_name,
        &ending,
        now,
    )))
}
