//! A Worker deleted: its run ends first, then it deregisters within a deadline.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::since;
use crate::crd::{WorkerState, WorkerStatus};

// ------------------------------------------------------------------------------------------
// A Worker leaves
// ------------------------------------------------------------------------------------------

/// What a deleted Worker does before its finalizer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// It holds a run, which runs to its end first (a deletion kills no run); it is marked
    /// DRAINING (`drain`) so that the backend sends it nothing new.
    WaitForRun { drain: bool },
    /// Ask the backend to forget it, and look again after `retry_in`.
    Deregister { retry_in: Duration },
    /// The backend did not confirm in time: drop the finalizer anyway.
    DropFinalizer,
}

/// The next step of a Worker deleted at `deleted_at`. The deregistration deadline (`timeout`)
/// runs from when it was free to go: its deletion, or the end of the run it held then.
pub fn leave(
    status: &WorkerStatus,
    deleted_at: Timestamp,
    now: Timestamp,
    timeout: Duration,
) -> Leave {
    if status.current_run.is_some() {
        return Leave::WaitForRun {
            drain: status.state != Some(WorkerState::Draining),
        };
    }
    let free_since = status
        .finished_runs
        .iter()
        .map(|r| r.finished_at.0)
        .fold(deleted_at, Timestamp::max);
    let waited = since(free_since, now);
    if waited >= timeout {
        Leave::DropFinalizer
    } else {
        Leave::Deregister {
            retry_in: (timeout - waited).min(Duration::from_secs(5)) + Duration::from_millis(100),
        }
    }
}
