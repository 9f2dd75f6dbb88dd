//! The run's state machine, case by case: every transition and every crash window.

mod arrive;
mod held;

pub(super) use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub(super) use super::*;
pub(super) use crate::controller::outcome::{Ending, PodProgress};
pub(super) use crate::controller::records::denied_record;
pub(super) use crate::controller::records::finished_record;
pub(super) use crate::crd::{
    CurrentRun, FINISHED_RUNS_KEPT, FinishedRun, WorkerState, WorkerStatus,
};
pub(super) use crate::protocol::{DenyReason, RunRef};
pub(super) use crate::protocol::{FailureCause, Outcome, RunStop};
pub(super) use k8s_openapi::jiff::Timestamp;
pub(super) use std::time::Duration;
pub(super) use ulid::Ulid;

pub(super) const ME: &str = "01J9Z8Q3M5V6W7X8Y9Z0ME0000";
pub(super) const OTHER: &str = "01J9Z8Q3M5V6W7X8Y9Z0OTHER0";
pub(super) const POD: &str = "01hn37wc3mcne3cy9hahwrf06k-preparing-1";

pub(super) fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + second).unwrap()
}

pub(super) fn schedule_id(second: i64) -> Ulid {
    Ulid::from_parts(at(second).as_millisecond() as u64, 7)
}

pub(super) fn held(creator: &str, pod_created: bool) -> CurrentRun {
    CurrentRun {
        run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
        stage: "preparing".into(),
        attempt: 1,
        pod_name: POD.into(),
        scheduled_at: Time(at(0)),
        pod_created,
        creator: Some(creator.into()),
        ending: None,
    }
}

pub(super) fn busy(current: CurrentRun) -> WorkerStatus {
    WorkerStatus {
        state: Some(WorkerState::Busy),
        current_run_id: Some(current.run_id.clone()),
        replicas: Some(1),
        current_run: Some(current),
        latest_schedule_id: Some(schedule_id(0).to_string()),
        ..WorkerStatus::default()
    }
}

pub(super) fn ended(outcome: Outcome, cause: Option<FailureCause>, abandon: bool) -> Ending {
    Ending {
        outcome,
        cause,
        message: "m".into(),
        exit_code: None,
        abandon,
    }
}

pub(super) fn present(progress: PodProgress, deleting_since: Option<Timestamp>) -> PodSeen {
    PodSeen::Present(PodFacts {
        progress,
        deleting_since,
        reported: false,
    })
}

pub(super) fn running() -> PodSeen {
    present(PodProgress::InProgress { recheck: None }, None)
}

pub(super) fn gone() -> PodSeen {
    PodSeen::Gone { last: None }
}

pub(super) fn record(pod_name: &str, outcome: Outcome) -> FinishedRun {
    let run = RunRef::new("01HN37WC3MCNE3CY9HAHWRF06K", "preparing", 1);
    finished_record(&run, pod_name, &ended(outcome, None, false), at(5))
}

/// The (outcome, cause) a step reports, or what it does instead.
pub(super) fn what(step: &Step) -> String {
    match step {
        Step::Wait(recheck) => format!("wait {:?}", recheck.map(|d| d.as_secs())),
        Step::RecordEnding(r) => format!("record {:?} {:?}", r.outcome, r.cause),
        Step::DeletePod { force } => format!("delete force={force}"),
        Step::Release(r) => format!("release {:?} {:?}", r.outcome, r.cause),
    }
}
