//! A schedule arrives: taken, redelivered, remembered, refused, and interrupted between steps.

use http::Method;
use ulid::Ulid;

use super::{creates, reported, reports};
use crate::controller::fixtures::{
    Harness, POOL, held, pod_name, schedule, schedule_message, worker,
};
use crate::controller::machine::CREATE_PATIENCE;
use crate::controller::outcome::Ending;
use crate::controller::records::finished_record;
use crate::crd::{FinishedOutcome, WorkerState};
use crate::protocol::{Body, Outcome, RunRef};

fn id(ms: u64) -> Ulid {
    Ulid::from_parts(1_700_000_000_000 + ms, 1)
}

#[tokio::test]
async fn a_schedule_makes_the_worker_busy_then_creates_its_pod_and_reports_both() {
    let h = Harness::new().await;
    h.deliver(&schedule_message(schedule(1), id(1)))
        .await
        .unwrap();
    let status = h.status();
    assert_eq!(status.state, Some(WorkerState::Busy));
    let current = status.current_run.unwrap();
    assert_eq!(current.creator.as_deref(), Some(h.ctx.instance.as_str()));
    assert!(current.pod_created);
    assert_eq!(status.latest_schedule_id, Some(id(1).to_string()));
    assert!(h.pod(&pod_name(1)).is_some());
    assert_eq!(h.sent_kinds(), ["run.accepted", "run.podCreated"]);
}

#[tokio::test]
async fn a_redelivered_schedule_creates_no_second_pod_and_reports_under_the_same_ids() {
    let h = Harness::new().await;
    let message = schedule_message(schedule(1), id(1));
    h.deliver(&message).await.unwrap();
    // Delivered again, after a restart (the link's duplicate filter is gone with the process).
    let after = h.restart();
    after.deliver(&message).await.unwrap();
    assert_eq!(creates(&h), 1);
    let ids = |h: &Harness| h.sent().iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(after.sent_kinds(), ["run.accepted", "run.podCreated"]);
    assert_eq!(ids(&after), ids(&h), "the backend applies each report once");
}

#[tokio::test]
async fn a_schedule_redelivered_more_than_ten_runs_later_creates_nothing() {
    let h = Harness::new().await;
    // Eleven runs later: this worker remembers ten, none of them the first.
    let later: Vec<_> = (2..=11)
        .map(|attempt| {
            let ending = Ending {
                outcome: Outcome::Succeeded,
                cause: None,
                message: String::new(),
                exit_code: Some(0),
                abandon: false,
            };
            let run = RunRef::new(crate::controller::fixtures::RUN_ULID, "preparing", attempt);
            finished_record(
                &run,
                &pod_name(attempt),
                &ending,
                k8s_openapi::jiff::Timestamp::now(),
            )
        })
        .collect();
    let mut status = worker().finished(later).build();
    status.status.as_mut().unwrap().latest_schedule_id = Some(id(11).to_string());
    h.api.put(&status);
    // The first schedule again, under its original id.
    h.deliver(&schedule_message(schedule(1), id(1)))
        .await
        .unwrap();
    assert_eq!(creates(&h), 0, "no Pod for a run that ended long ago");
    assert!(h.sent().is_empty(), "and nothing to say about it");
    assert_eq!(h.status().state, Some(WorkerState::Idle));
}

#[tokio::test]
async fn a_denial_is_recorded_before_it_is_sent_so_a_retry_gives_the_same_answer() {
    let h = Harness::new().await;
    // The pool is gone: the run cannot be built, and recording the refusal fails once.
    h.api.remove("workerpools", POOL);
    h.api.fail(Method::PATCH, "/status", 500, 1);
    let message = schedule_message(schedule(1), id(1));
    assert!(h.deliver(&message).await.is_err());
    assert!(h.sent().is_empty(), "nothing is sent before it is recorded");
    h.deliver(&message).await.unwrap();
    h.api.put(&crate::controller::fixtures::pool());
    h.deliver(&message).await.unwrap();
    assert_eq!(creates(&h), 0, "denied, then never created");
    assert_eq!(h.sent_kinds(), ["run.denied", "run.denied"]);
    assert_eq!(reports(&h.sent()).len(), 1, "one answer, sent twice");
    let remembered = &h.status().finished_runs[0];
    assert_eq!(remembered.outcome, FinishedOutcome::Denied);
}

#[tokio::test]
async fn a_pod_the_api_server_refuses_denies_the_run_and_frees_the_worker() {
    let h = Harness::new().await;
    h.api.fail(Method::POST, "/pods", 403, 1);
    h.deliver(&schedule_message(schedule(1), id(1)))
        .await
        .unwrap();
    assert_eq!(
        h.sent_kinds(),
        ["run.accepted", "run.denied", "worker.state"]
    );
    let Body::RunDenied(denied) = &h.sent()[1].body else {
        panic!()
    };
    assert_eq!(denied.reasons[0].hook, "kubernetes");
    let status = h.status();
    assert_eq!(
        (status.state, status.current_run),
        (Some(WorkerState::Idle), None)
    );
}

#[tokio::test]
async fn a_busy_worker_refuses_another_run_and_answers_a_copy_the_same() {
    let h = Harness::new().await;
    h.deliver(&schedule_message(schedule(1), id(1)))
        .await
        .unwrap();
    let other = schedule_message(schedule(2), id(2));
    h.deliver(&other).await.unwrap();
    h.deliver(&other).await.unwrap();
    assert_eq!(creates(&h), 1);
    let status = h.status();
    assert_eq!(
        status.current_run.unwrap().attempt,
        1,
        "its own run goes on"
    );
    assert_eq!(status.finished_runs[0].pod_name, pod_name(2));
    let kinds = h.sent_kinds();
    assert_eq!(kinds[2..], ["run.denied", "run.denied"]);
    assert_eq!(reports(&h.sent()).len(), 1);
}

#[tokio::test]
async fn a_pod_creation_that_failed_is_retried_by_the_process_that_took_the_run() {
    let h = Harness::new().await;
    h.api.fail(Method::POST, "/pods", 500, 1);
    let message = schedule_message(schedule(1), id(1));
    assert!(h.deliver(&message).await.is_err());
    assert!(h.pod(&pod_name(1)).is_none());
    h.deliver(&message).await.unwrap();
    assert_eq!(creates(&h), 1);
    assert!(h.status().current_run.unwrap().pod_created);
}

#[tokio::test]
async fn after_a_crash_between_taking_a_run_and_seeing_its_pod_created_no_pod_is_created() {
    let h = Harness::new().await;
    h.api.fail(Method::POST, "/pods", 500, 1);
    let message = schedule_message(schedule(1), id(1));
    assert!(h.deliver(&message).await.is_err());
    // Another process: it cannot tell a Pod never created from one created and deleted.
    let next = h.restart();
    next.deliver(&message).await.unwrap();
    assert_eq!(creates(&h), 0);
    assert_eq!(reported(&next), (Outcome::Failed, Some("Unknown".into())));
    assert_eq!(h.status().state, Some(WorkerState::Idle));
    // The schedule once more: the recorded report, nothing else.
    next.deliver(&message).await.unwrap();
    assert_eq!(creates(&h), 0);
    assert_eq!(reports(&next.sent()).len(), 1);
}

#[tokio::test]
async fn a_schedule_redelivered_after_its_pod_was_deleted_while_down_creates_nothing() {
    let h = Harness::new().await;
    h.api.put(
        &worker()
            .holding(held(1, "a process long gone", true))
            .build(),
    );
    h.deliver(&schedule_message(schedule(1), id(1)))
        .await
        .unwrap();
    assert_eq!(creates(&h), 0);
    assert_eq!(reported(&h), (Outcome::Failed, Some("PodDeleted".into())));
}

#[tokio::test]
async fn a_run_this_process_took_waits_for_its_pod_then_fails_as_never_created() {
    let h = Harness::new().await;
    let mut taken = held(1, &h.ctx.instance, false);
    h.api.put(&worker().holding(taken.clone()).build());
    h.reconcile(&pod_name(1)).await.unwrap();
    assert!(h.sent().is_empty(), "its schedule's handler is still at it");
    let long_ago = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(CREATE_PATIENCE + std::time::Duration::from_secs(1))
        .unwrap();
    taken.scheduled_at = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(long_ago);
    h.api.put(&worker().holding(taken).build());
    h.reconcile(&pod_name(1)).await.unwrap();
    assert_eq!(reported(&h), (Outcome::Failed, Some("Unknown".into())));
}
