//! A stop arrives: recorded, then the Pod goes, then `stopped` is reported; never the other
//! way round, whatever fails in between.

use http::Method;

use super::{reported, reports};
use crate::controller::fixtures::{
    Harness, RUN_ULID, held, pod_name, run_pod, running, set_status, worker, worker_id,
};
use crate::crd::{FinishedOutcome, WorkerState};
use crate::protocol::{Body, Message, Outcome, RunStop};

fn stop() -> Message {
    Message::for_worker(
        worker_id(),
        Body::RunStop(RunStop {
            run_id: RUN_ULID.into(),
            stage: None,
            reason: "stopped by user".into(),
        }),
    )
}

/// A worker running attempt 1 in its Pod.
async fn running_run() -> Harness {
    let h = Harness::new().await;
    h.api
        .put(&worker().holding(held(1, &h.ctx.instance, true)).build());
    h.api.put(&run_pod(1));
    set_status(&h.api, &pod_name(1), running());
    h
}

#[tokio::test]
async fn a_stop_whose_pod_delete_fails_keeps_the_worker_busy_until_the_pod_is_gone() {
    let h = running_run().await;
    h.api
        .fail(Method::DELETE, &format!("/pods/{}", pod_name(1)), 500, 1);
    h.deliver(&stop()).await.unwrap();
    assert!(h.pod(&pod_name(1)).is_some(), "the delete failed");
    let status = h.status();
    assert_eq!(
        status.state,
        Some(WorkerState::Busy),
        "not freed while its Pod runs"
    );
    let ending = status.current_run.unwrap().ending.unwrap();
    assert_eq!(ending.outcome, FinishedOutcome::Stopped);
    assert!(
        h.sent().is_empty(),
        "not reported stopped while its Pod runs"
    );

    // The Pod's own reconciler (or the Worker's) tries again.
    h.reconcile(&pod_name(1)).await.unwrap();
    assert!(h.pod(&pod_name(1)).is_none());
    assert_eq!(reported(&h), (Outcome::Stopped, None));
    assert_eq!(h.status().state, Some(WorkerState::Idle));
}

#[tokio::test]
async fn a_stop_is_done_only_when_the_pod_is_gone_after_its_grace_period() {
    let h = running_run().await;
    h.api.pods_linger();
    h.deliver(&stop()).await.unwrap();
    let pod = h.pod(&pod_name(1)).expect("terminating");
    assert!(pod.metadata.deletion_timestamp.is_some());
    h.reconcile(&pod_name(1)).await.unwrap();
    assert!(h.sent().is_empty(), "still terminating: not stopped yet");
    h.api.kubelet_confirms(&pod_name(1));
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(reported(&h), (Outcome::Stopped, None));
}

#[tokio::test]
async fn a_crash_after_the_stop_was_recorded_still_deletes_the_pod_before_reporting() {
    let h = running_run().await;
    h.api
        .fail(Method::DELETE, &format!("/pods/{}", pod_name(1)), 500, 1);
    h.deliver(&stop()).await.unwrap();
    let next = h.restart();
    next.reconcile(&pod_name(1)).await.unwrap();
    assert!(next.pod(&pod_name(1)).is_none());
    assert_eq!(next.sent_kinds(), ["run.finished", "worker.state"]);
    assert_eq!(reported(&next), (Outcome::Stopped, None));
}

#[tokio::test]
async fn a_stop_for_a_run_the_worker_finished_re_sends_its_report() {
    let h = running_run().await;
    set_status(&h.api, &pod_name(1), crate::controller::fixtures::exited(0));
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(reported(&h), (Outcome::Succeeded, None));
    h.deliver(&stop()).await.unwrap();
    assert_eq!(h.sent_kinds().last(), Some(&"run.finished"));
    assert_eq!(
        reports(&h.sent()).len(),
        1,
        "the same report again, not a stop"
    );
}
