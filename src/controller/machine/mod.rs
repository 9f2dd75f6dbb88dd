//! A run stage attempt's life on its worker, as one state machine. Pure: the async code reads
//! the Worker and the run Pod, asks this module what comes next, does that one thing and asks
//! again, so a crash between two steps resumes from what the records say.
//!
//! ```text
//!  run.schedule ──hooks allow──▶ Accepted ──Pod created──▶ Created ──Pod ends by itself──▶ Finished
//!       │                      (BUSY, creator)          (podCreated)                       ▲
//!       │                              └──── stop, Pod stuck or deleted ──▶ Ending ── Pod gone
//!       │                                                           (currentRun.ending)
//!       └──hooks or the API server refuse──▶ Denied
//! ```
//!
//! Each arrow has one durable record on the Worker, written before the arrow's side effect:
//! - **Accepted**: `currentRun` with its `creator` (the operator process), before the Pod is
//!   created and `run.accepted` is sent ([`accept`]);
//! - **Created**: `podCreated`, before `run.podCreated` is sent ([`record_created`]);
//! - **Ending**: `currentRun.ending`, the report to send, before the Pod is deleted
//!   ([`record_ending`]); a stop is done only when the Pod is gone;
//! - **Finished**: the report in `finishedRuns`, written in the same update that frees the
//!   worker ([`release`]), before it is sent; a Pod that must go is gone first;
//! - **Denied**: the denial in `finishedRuns`, before `run.denied` is sent ([`record_denial`]).
//!
//! Every side effect is idempotent (the deterministic Pod name, deletes for which NotFound is
//! success, reports under fixed message ids) and is retried until its record says it is done.
//!
//! A schedule is known by the run stage attempt it names, on the worker it was sent to
//! ([`fit_schedule`]): the run the worker holds, one it remembers in `finishedRuns`, or, when
//! it is older than the newest schedule the worker took (`latestScheduleID`), one that ended
//! long ago. No count of remembered runs bounds that.

mod arrive;
mod held;
mod leave;
#[cfg(test)]
mod tests;

pub use arrive::{
    Refusal, Resume, ScheduleFit, StopFit, accept, fit_schedule, fit_stop, record_created,
    record_denial, resume, stopped_run,
};
pub use held::{Leftover, Step, leftover, record_ending, release, step};
pub use leave::{Leave, leave};

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use ulid::Ulid;

use super::outcome::{Ending, PodProgress};
use crate::crd::{FINISHED_RUNS_KEPT, FinishedRun, WorkerStatus};
use crate::protocol::{FailureCause, Outcome};

/// How long a run this process took may wait for its Pod to be created (the schedule's
/// handler retries through an API outage) before the run fails as never created.
pub const CREATE_PATIENCE: Duration = Duration::from_secs(600);
/// How long past the end of its grace period a deleted run Pod may linger (its node does not
/// answer) before it is removed by force.
pub const FORCE_DELETE_AFTER: Duration = Duration::from_secs(60);

/// What is known of a run Pod now.
#[derive(Clone, Debug, PartialEq)]
pub enum PodSeen {
    /// It does not exist. `last` is how it had ended when this process watched it go.
    Gone { last: Option<Ending> },
    /// It exists.
    Present(PodFacts),
}

/// What a run Pod that exists says.
#[derive(Clone, Debug, PartialEq)]
pub struct PodFacts {
    /// Its status, read by [`super::outcome::classify`].
    pub progress: PodProgress,
    /// When its deletion's grace period ends (`deletionTimestamp`), if it is being deleted.
    pub deleting_since: Option<Timestamp>,
    /// It carries the outcome annotation (its report was sent).
    pub reported: bool,
}

pub(super) fn failed(cause: FailureCause, message: String) -> Ending {
    Ending {
        outcome: Outcome::Failed,
        cause: Some(cause),
        message,
        exit_code: None,
        abandon: false,
    }
}

/// How long after `then` `now` is (zero when `then` is later).
pub(super) fn since(then: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or(Duration::ZERO)
}

pub(super) fn latest_schedule(status: &WorkerStatus) -> Option<Ulid> {
    status.latest_schedule_id.as_deref()?.parse().ok()
}

pub(super) fn newest(status: &WorkerStatus, schedule_id: Ulid) -> String {
    latest_schedule(status)
        .map_or(schedule_id, |latest| latest.max(schedule_id))
        .to_string()
}

/// `finished` appended to `runs` (replacing an older record of the same Pod), the oldest
/// forgotten beyond [`FINISHED_RUNS_KEPT`].
pub(super) fn remember(runs: &[FinishedRun], finished: FinishedRun) -> Vec<FinishedRun> {
    let pod_name = finished.pod_name.clone();
    let mut runs: Vec<FinishedRun> = runs
        .iter()
        .filter(|r| r.pod_name != pod_name)
        .cloned()
        .chain([finished])
        .collect();
    let excess = runs.len().saturating_sub(FINISHED_RUNS_KEPT);
    runs.drain(..excess);
    runs
}
