//! The table of run Pod statuses and what they say.

use super::*;
use serde_json::json;

const NOW: &str = "2024-02-16T15:30:00Z";

fn pod(status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "01hps6xb76j1jb3ehsk4awe5ab-preparing-2", "creationTimestamp": "2024-02-16T15:27:00Z"},
        "spec": {"containers": [], "activeDeadlineSeconds": 4200},
        "status": status,
    }))
    .unwrap()
}

fn verdict(status: serde_json::Value) -> PodProgress {
    classify(&pod(status), NOW.parse().unwrap(), &Waits::default())
}

fn ended(status: serde_json::Value) -> Ending {
    match verdict(status) {
        PodProgress::Ended(e) => e,
        other => panic!("not ended: {other:?}"),
    }
}

/// The Pod is in progress under the default waits, and ended under these shorter ones.
fn tolerated_then_abandoned(status: serde_json::Value, waits: Waits) -> Ending {
    assert!(matches!(
        verdict(status.clone()),
        PodProgress::InProgress { recheck: Some(_) }
    ));
    match classify(&pod(status), NOW.parse().unwrap(), &waits) {
        PodProgress::Ended(e) => e,
        other => panic!("not ended under {waits:?}: {other:?}"),
    }
}

fn terminated(name: &str, code: i32, reason: &str) -> serde_json::Value {
    json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
           "state": {"terminated": {"exitCode": code, "reason": reason}}})
}

fn waiting(name: &str, reason: &str) -> serde_json::Value {
    json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
           "state": {"waiting": {"reason": reason, "message": "Back-off pulling image \"someone/non-existent-image:1234\""}}})
}

#[test]
fn a_worker_that_exits_zero_succeeds_even_while_sidecars_run() {
    let e = ended(json!({"phase": "Running", "containerStatuses": [
        terminated("worker", 0, "Completed"),
        {"name": "launcher-grpc", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}},
    ]}));
    assert_eq!(
        (e.outcome, e.cause, e.exit_code),
        (Outcome::Succeeded, None, Some(0))
    );
}

#[test]
fn a_worker_that_exits_non_zero_fails_with_its_code() {
    let e =
        ended(json!({"phase": "Failed", "containerStatuses": [terminated("worker", 1, "Error")]}));
    assert_eq!(
        (e.outcome, e.cause, e.exit_code, e.message.as_str()),
        (
            Outcome::Failed,
            Some(FailureCause::Error),
            Some(1),
            "the worker container exited with code 1"
        )
    );
}

#[test]
fn an_oom_killed_init_container_fails_the_run_as_the_seed_shows() {
    let e = ended(
        json!({"phase": "Failed", "initContainerStatuses": [terminated("init", 137, "OOMKilled")]}),
    );
    assert_eq!(e.cause, Some(FailureCause::OomKilled));
    assert_eq!(
        e.message,
        "container init was killed for exceeding its memory limit (OOMKilled, exit code 137)"
    );
}

#[test]
fn evictions_and_deadlines_are_named() {
    let e = ended(
        json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: ephemeral-storage."}),
    );
    assert_eq!(
        (e.cause, e.message.as_str()),
        (
            Some(FailureCause::Evicted),
            "The node was low on resource: ephemeral-storage."
        )
    );
    let e = ended(
        json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active on the node longer than the specified deadline"}),
    );
    assert_eq!(e.cause, Some(FailureCause::DeadlineExceeded));
    assert_eq!(
        e.message,
        "the run exceeded its deadline (activeDeadlineSeconds 4200)"
    );
}

#[test]
fn a_failing_init_container_fails_the_run() {
    let e = ended(
        json!({"phase": "Failed", "initContainerStatuses": [terminated("init", 2, "Error")]}),
    );
    assert_eq!(
        (e.cause, e.message.as_str()),
        (
            Some(FailureCause::Error),
            "the init container exited with code 2"
        )
    );
}

#[test]
fn image_pull_back_off_is_tolerated_then_abandoned() {
    // Created 3 minutes before NOW: within the 5-minute wait.
    let status =
        json!({"phase": "Pending", "containerStatuses": [waiting("worker", "ImagePullBackOff")]});
    assert_eq!(
        verdict(status.clone()),
        PodProgress::InProgress {
            recheck: Some(Duration::from_secs(121))
        }
    );
    let waits = Waits {
        image_pull: Duration::from_secs(60),
        ..Waits::default()
    };
    let PodProgress::Ended(e) = classify(&pod(status), NOW.parse().unwrap(), &waits) else {
        panic!()
    };
    assert_eq!(
        (e.cause, e.abandon),
        (Some(FailureCause::ImagePullBackOff), true)
    );
    assert_eq!(
        e.message,
        "container worker is stuck in ImagePullBackOff after 180s: Back-off pulling image \"someone/non-existent-image:1234\""
    );
}

#[test]
fn an_image_the_node_may_never_pull_is_tolerated_then_abandoned() {
    // What a real kubelet reports for `imagePullPolicy: Never` and an image not on the node.
    let status = json!({"phase": "Pending", "containerStatuses": [
        {"name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": "ErrImageNeverPull",
                               "message": "Container image \"runner:1\" is not present with pull policy of Never"}}}]});
    let e = tolerated_then_abandoned(
        status,
        Waits {
            image_pull: Duration::from_secs(60),
            ..Waits::default()
        },
    );
    assert_eq!(
        (e.cause, e.abandon, e.message.as_str()),
        (
            Some(FailureCause::ImagePullBackOff),
            true,
            "container worker is stuck in ErrImageNeverPull after 180s: Container image \"runner:1\" is not present with pull policy of Never"
        )
    );
}

#[test]
fn an_unschedulable_pod_is_abandoned_after_its_wait() {
    let status = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]});
    assert!(matches!(
        verdict(status.clone()),
        PodProgress::InProgress { recheck: Some(_) }
    ));
    let waits = Waits {
        unschedulable: Duration::from_secs(120),
        ..Waits::default()
    };
    let PodProgress::Ended(e) = classify(&pod(status), NOW.parse().unwrap(), &waits) else {
        panic!()
    };
    assert_eq!(e.cause, Some(FailureCause::Unschedulable));
    assert!(
        e.message
            .ends_with("1 node(s) didn't match Pod's node affinity/selector."),
        "{}",
        e.message
    );
}

#[test]
fn a_lost_node_fails_the_run() {
    // The node controller marks the Pod Failed with reason NodeLost ...
    let e = ended(json!({"phase": "Failed", "reason": "NodeLost",
        "message": "Node kwok-node-0 which was running pod is unresponsive"}));
    assert_eq!(
        (e.cause, e.abandon, e.message.as_str()),
        (
            Some(FailureCause::NodeLost),
            false,
            "Node kwok-node-0 which was running pod is unresponsive"
        )
    );
    // ... or leaves it Unknown: tolerated for the node-lost wait, then abandoned.
    let unknown = json!({"phase": "Unknown"});
    assert!(matches!(
        verdict(unknown.clone()),
        PodProgress::InProgress { recheck: Some(_) }
    ));
    let waits = Waits {
        node_lost: Duration::from_secs(60),
        ..Waits::default()
    };
    let PodProgress::Ended(e) = classify(&pod(unknown), NOW.parse().unwrap(), &waits) else {
        panic!()
    };
    assert_eq!((e.cause, e.abandon), (Some(FailureCause::NodeLost), true));
}

#[test]
fn a_pod_removed_with_its_deleted_node_fails_as_node_lost() {
    // What the pod garbage collector writes before it removes the Pod.
    let mut p = pod(
        json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget",
        "status": "True", "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists"}]}),
    );
    let PodProgress::Ended(e) = classify(&p, NOW.parse().unwrap(), &Waits::default()) else {
        panic!()
    };
    assert_eq!((e.cause, e.abandon), (Some(FailureCause::NodeLost), false));
    // Its last state, as its deletion was watched.
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        NOW.parse().unwrap(),
    ));
    let PodProgress::Ended(e) = classify(&p, NOW.parse().unwrap(), &Waits::default()) else {
        panic!()
    };
    assert_eq!(e.cause, Some(FailureCause::NodeLost));
}

#[test]
fn a_container_that_cannot_be_created_is_abandoned_after_its_wait() {
    // A missing Secret in envFrom: the kubelet reports CreateContainerConfigError.
    let status = json!({"phase": "Pending", "initContainerStatuses": [
        {"name": "init", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"vcs\" not found"}}}]});
    let e = tolerated_then_abandoned(
        status,
        Waits {
            create_container: Duration::from_secs(60),
            ..Waits::default()
        },
    );
    assert_eq!(
        (e.cause, e.abandon),
        (Some(FailureCause::CreateContainerError), true)
    );
    assert_eq!(
        e.message,
        "container init is stuck in CreateContainerConfigError after 180s: secret \"vcs\" not found"
    );
}

#[test]
fn a_deleted_pod_ends_the_run() {
    let mut p = pod(json!({"phase": "Running"}));
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        NOW.parse().unwrap(),
    ));
    let PodProgress::Ended(e) = classify(&p, NOW.parse().unwrap(), &Waits::default()) else {
        panic!()
    };
    assert_eq!(e.cause, Some(FailureCause::PodDeleted));
}

#[test]
fn a_running_pod_is_in_progress_with_nothing_to_wait_for() {
    assert_eq!(
        verdict(json!({"phase": "Running", "containerStatuses": [
            {"name": "worker", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]})),
        PodProgress::InProgress { recheck: None }
    );
}
