//! A Worker leaves: never while it holds a run, and only the backend's answer for a deleted
//! Worker drops its finalizer.

use super::reported;
use crate::controller::FINALIZER;
use crate::controller::fixtures::{
    Harness, exited, held, pod_name, run_pod, running, set_status, worker, worker_id,
};
use crate::crd::{Worker, WorkerState};
use crate::protocol::{Body, Message, Outcome, WorkerDeregistered};

fn deleting(h: &Harness) {
    h.api.edit(
        "workers",
        &crate::controller::fixtures::worker_name(),
        |w| {
            w["metadata"]["deletionTimestamp"] =
                serde_json::json!(k8s_openapi::jiff::Timestamp::now().to_string());
        },
    );
}

fn deregistered() -> Message {
    Message::for_worker(worker_id(), Body::WorkerDeregistered(WorkerDeregistered {}))
}

#[tokio::test]
async fn a_deleted_worker_drains_and_deregisters_only_after_its_run_ended() {
    let h = Harness::new().await;
    h.api
        .put(&worker().holding(held(1, &h.ctx.instance, true)).build());
    h.api.put(&run_pod(1));
    set_status(&h.api, &pod_name(1), running());
    deleting(&h);
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(h.status().state, Some(WorkerState::Draining));
    assert!(h.pod(&pod_name(1)).is_some(), "the run goes on");
    assert!(!h.sent_kinds().contains(&"worker.deregister"));

    set_status(&h.api, &pod_name(1), exited(0));
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(reported(&h), (Outcome::Succeeded, None));
    h.reconcile(&pod_name(1)).await.unwrap();
    assert!(h.sent_kinds().contains(&"worker.deregister"));
}

#[tokio::test]
async fn worker_deregistered_drops_the_finalizer_only_of_a_deleted_worker() {
    let h = Harness::new().await;
    h.deliver(&deregistered()).await.unwrap();
    let live = h.worker();
    assert_eq!(live.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    assert_eq!(
        live.status.unwrap().registered,
        Some(false),
        "it registers again"
    );

    deleting(&h);
    h.deliver(&deregistered()).await.unwrap();
    assert!(
        h.api
            .get::<Worker>("workers", &crate::controller::fixtures::worker_name())
            .is_none()
    );
}
