//! The run Pod changes: its end reported once, after whatever must go is gone.

use http::Method;
use kube::runtime::watcher;

use super::{creates, reported, reports};
use crate::controller::fixtures::{
    Harness, exited, held, image_pull_back_off, pod_name, run_pod, running, set_status, worker,
};
use crate::controller::runner::remember_last_state;
use crate::crd::{FinishedOutcome, WorkerState};
use crate::protocol::Outcome;

/// A worker holding attempt 1, whose Pod exists with `status`.
async fn with_pod(status: serde_json::Value) -> Harness {
    let h = Harness::new().await;
    h.api
        .put(&worker().holding(held(1, &h.ctx.instance, true)).build());
    h.api.put(&run_pod(1));
    set_status(&h.api, &pod_name(1), status);
    h
}

#[tokio::test]
async fn an_abandoned_pod_is_deleted_before_its_worker_is_freed() {
    let h = with_pod(image_pull_back_off()).await;
    h.api
        .fail(Method::DELETE, &format!("/pods/{}", pod_name(1)), 500, 1);
    assert!(h.reconcile(&pod_name(1)).await.is_err());
    assert!(h.pod(&pod_name(1)).is_some());
    let status = h.status();
    assert_eq!(
        status.state,
        Some(WorkerState::Busy),
        "not freed while its Pod may still start"
    );
    let ending = status.current_run.unwrap().ending.unwrap();
    assert_eq!(ending.cause.as_deref(), Some("ImagePullBackOff"));
    assert!(h.sent().is_empty());

    h.reconcile(&pod_name(1)).await.unwrap();
    assert!(
        h.pod(&pod_name(1)).is_none(),
        "gone, so it cannot start after the backend moved on"
    );
    assert_eq!(
        reported(&h),
        (Outcome::Failed, Some("ImagePullBackOff".into()))
    );
    assert_eq!(h.status().state, Some(WorkerState::Idle));
}

#[tokio::test]
async fn a_pod_ended_by_itself_frees_the_worker_is_reported_and_marked() {
    let h = with_pod(exited(3)).await;
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(reported(&h), (Outcome::Failed, Some("Error".into())));
    assert_eq!(h.sent_kinds(), ["run.finished", "worker.state"]);
    let pod = h.pod(&pod_name(1)).expect("failed Pods are kept");
    assert_eq!(
        pod.metadata.annotations.unwrap()["workers.spacelift.io/outcome"],
        "failed"
    );
    assert_eq!(h.status().finished_runs[0].outcome, FinishedOutcome::Failed);
}

#[tokio::test]
async fn a_report_lost_before_its_pod_was_marked_is_sent_again_under_its_id() {
    let h = with_pod(exited(0)).await;
    h.api
        .fail(Method::PATCH, &format!("/pods/{}", pod_name(1)), 500, 1);
    assert!(h.reconcile(&pod_name(1)).await.is_err());
    let next = h.restart();
    next.reconcile(&pod_name(1)).await.unwrap();
    let mut all = h.sent();
    all.extend(next.sent());
    assert_eq!(
        reports(&all).len(),
        1,
        "one report, sent again under its id"
    );
    assert_eq!(next.sent_kinds(), ["run.finished"]);
    assert!(
        next.pod(&pod_name(1)).is_none(),
        "then marked, and removed by retention"
    );
}

#[tokio::test]
async fn a_pod_no_run_stands_for_is_deleted_unreported() {
    let h = Harness::new().await;
    h.api.put(&run_pod(1));
    set_status(&h.api, &pod_name(1), running());
    h.reconcile(&pod_name(1)).await.unwrap();
    assert!(h.pod(&pod_name(1)).is_none());
    assert!(h.sent().is_empty());
    assert_eq!(creates(&h), 0);
}

#[tokio::test]
async fn a_pod_deleted_by_someone_else_is_gone_before_its_run_is_reported() {
    let h = with_pod(running()).await;
    h.api.pods_linger();
    h.api.edit("pods", &pod_name(1), |pod| {
        pod["metadata"]["deletionTimestamp"] = serde_json::json!("2030-01-01T00:00:00Z");
    });
    h.reconcile(&pod_name(1)).await.unwrap();
    assert!(
        h.sent().is_empty(),
        "terminating: its containers may still run"
    );
    assert_eq!(
        h.status()
            .current_run
            .unwrap()
            .ending
            .unwrap()
            .cause
            .as_deref(),
        Some("PodDeleted")
    );
    h.api.kubelet_confirms(&pod_name(1));
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(reported(&h), (Outcome::Failed, Some("PodDeleted".into())));
}

#[tokio::test]
async fn a_pod_that_vanished_with_its_node_fails_its_run_as_node_lost() {
    let h = with_pod(serde_json::json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget",
        "status": "True", "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists"}]}))
    .await;
    // The watch saw its last state as it went.
    h.ctx.vanished.remember(&h.pod(&pod_name(1)).unwrap());
    h.api.remove("pods", &pod_name(1));
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(reported(&h), (Outcome::Failed, Some("NodeLost".into())));
    assert_eq!(h.status().state, Some(WorkerState::Idle));
}

#[tokio::test]
async fn a_pod_removed_right_after_it_failed_with_its_node_is_reported_node_lost() {
    let h = with_pod(serde_json::json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget",
        "status": "True", "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists"}]}))
    .await;
    // The watch saw it fail; it was removed before its deletion reached the watch.
    let (nudges, _) = futures::channel::mpsc::unbounded();
    let failed = watcher::Event::Apply(h.pod(&pod_name(1)).unwrap());
    remember_last_state(&h.ctx, &nudges, &failed);
    h.api.remove("pods", &pod_name(1));
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(reported(&h), (Outcome::Failed, Some("NodeLost".into())));
    assert_eq!(h.status().state, Some(WorkerState::Idle));
}
