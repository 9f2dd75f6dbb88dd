//! How a run Pod ended, read from its status: pure, so every cause the seed's troubleshooting
//! section shows (OOMKilled, ImagePullBackOff, evictions, deadlines ...) is table-tested.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;

use crate::pod::{INIT_CONTAINER, WORKER_CONTAINER};
use crate::protocol::{FailureCause, Outcome};

/// How long a run Pod may wait on something that may still resolve itself before the run is
/// failed: an image pull (credentials may be fixed), scheduling (the autoscaler may add a
/// node), a missing Secret or ConfigMap, a node that stopped reporting.
#[derive(Clone, Copy, Debug)]
pub struct Waits {
    pub image_pull: Duration,
    pub unschedulable: Duration,
    pub create_container: Duration,
    pub node_lost: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            image_pull: Duration::from_secs(300),
            unschedulable: Duration::from_secs(600),
            create_container: Duration::from_secs(300),
            node_lost: Duration::from_secs(300),
        }
    }
}

/// The end of a run stage attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub outcome: Outcome,
    pub cause: Option<FailureCause>,
    pub message: String,
    /// The `worker` container's exit code, when it ran.
    pub exit_code: Option<i32>,
    /// The Pod will not end by itself (it waits on an image, a node ...): the controller
    /// deletes it after reporting.
    pub abandon: bool,
}

/// What a run Pod's status says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still starting or running; look again after `recheck` if set (a wait may run out).
    InProgress { recheck: Option<Duration> },
    /// The run stage attempt is over.
    Ended(Ending),
}

/// Reads a run Pod's status at `now`.
pub fn classify(pod: &Pod, now: Timestamp, waits: &Waits) -> Verdict {
    let status = pod.status.clone().unwrap_or_default();
    let init = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let main = status.container_statuses.as_deref().unwrap_or_default();
    let worker = main.iter().find(|c| c.name == WORKER_CONTAINER);
    let age = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| now.duration_since(t.0).unsigned_abs())
        .unwrap_or_default();

    if pod.metadata.deletion_timestamp.is_some() {
        return failed(
            FailureCause::PodDeleted,
            "the run Pod was deleted before the run ended".into(),
            exit_code(worker),
        );
    }
    // The seed shows `Init:OOMKilled`: an init container killed for memory fails the run.
    if let Some(c) = init
        .iter()
        .chain(main)
        .find(|c| terminated_reason(c) == Some("OOMKilled"))
    {
        return failed(
            FailureCause::OomKilled,
            format!(
                "container {} was killed for exceeding its memory limit (OOMKilled, exit code {})",
                c.name,
                exit_code(Some(c)).unwrap_or(137)
            ),
            exit_code(worker),
        );
    }
    match status.reason.as_deref() {
        Some("Evicted") => {
            return failed(
                FailureCause::Evicted,
                status
                    .message
                    .clone()
                    .unwrap_or_else(|| "the run Pod was evicted".into()),
                exit_code(worker),
            );
        }
        Some("DeadlineExceeded") => {
            return failed(
                FailureCause::DeadlineExceeded,
                format!(
                    "the run exceeded its deadline (activeDeadlineSeconds {})",
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.active_deadline_seconds)
                        .map_or("unset".to_string(), |s| s.to_string())
                ),
                exit_code(worker),
            );
        }
        Some("NodeLost") => {
            return failed(
                FailureCause::NodeLost,
                status
                    .message
                    .clone()
                    .unwrap_or_else(|| "the run Pod's node was lost".into()),
                exit_code(worker),
            );
        }
        _ => {}
    }
    if let Some(code) = exit_code(worker) {
        return if code == 0 {
            Verdict::Ended(Ending {
                outcome: Outcome::Succeeded,
                cause: None,
                message: String::new(),
                exit_code: Some(0),
                abandon: false,
            })
        } else {
            failed(
                FailureCause::Error,
                format!(
                    "the worker container exited with code {code}{}",
                    termination_message(worker)
                ),
                Some(code),
            )
        };
    }
    if let Some(c) = init
        .iter()
        .find(|c| exit_code(Some(c)).is_some_and(|code| code != 0))
    {
        let which = if c.name == INIT_CONTAINER {
            "the init container".to_string()
        } else {
            format!("init container {}", c.name)
        };
        return failed(
            FailureCause::Error,
            format!(
                "{which} exited with code {}{}",
                exit_code(Some(c)).unwrap_or_default(),
                termination_message(Some(c))
            ),
            None,
        );
    }
    match status.phase.as_deref() {
        Some("Succeeded") => {
            return Verdict::Ended(Ending {
                outcome: Outcome::Succeeded,
                cause: None,
                message: String::new(),
                exit_code: Some(0),
                abandon: false,
            });
        }
        Some("Failed") => {
            return failed(
                FailureCause::Unknown,
                status
                    .message
                    .clone()
                    .unwrap_or_else(|| "the run Pod failed".into()),
                None,
            );
        }
        _ => {}
    }
    waiting_too_long(pod, init, main, age, waits)
}

/// Pending Pods: give up on what has waited past its bound, else say when to look again.
fn waiting_too_long(
    pod: &Pod,
    init: &[ContainerStatus],
    main: &[ContainerStatus],
    age: Duration,
    waits: &Waits,
) -> Verdict {
    let mut recheck: Option<Duration> = None;
    let mut wait_for = |bound: Duration| {
        let left = bound.saturating_sub(age) + Duration::from_secs(1);
        recheck = Some(recheck.map_or(left, |r| r.min(left)));
        age >= bound
    };
    for c in init.iter().chain(main) {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let detail = waiting.message.clone().unwrap_or_default();
        let (cause, bound) = match reason {
            "InvalidImageName" => (FailureCause::ImagePullBackOff, Duration::ZERO),
            "ImagePullBackOff" | "ErrImagePull" => {
                (FailureCause::ImagePullBackOff, waits.image_pull)
            }
            "CreateContainerConfigError" | "CreateContainerError" => {
                (FailureCause::CreateContainerError, waits.create_container)
            }
            _ => continue,
        };
        if wait_for(bound) {
            return abandoned(
                cause,
                format!(
                    "container {} is stuck in {reason} after {}s: {detail}",
                    c.name,
                    age.as_secs()
                ),
            );
        }
    }
    let conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    if let Some(unschedulable) = conditions.iter().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) && wait_for(waits.unschedulable)
    {
        return abandoned(
            FailureCause::Unschedulable,
            format!(
                "the run Pod could not be scheduled for {}s: {}",
                age.as_secs(),
                unschedulable.message.clone().unwrap_or_default()
            ),
        );
    }
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Unknown")
        && wait_for(waits.node_lost)
    {
        return abandoned(
            FailureCause::NodeLost,
            "the run Pod's node stopped reporting its status".into(),
        );
    }
    Verdict::InProgress { recheck }
}

fn failed(cause: FailureCause, message: String, exit_code: Option<i32>) -> Verdict {
    Verdict::Ended(Ending {
        outcome: Outcome::Failed,
        cause: Some(cause),
        message,
        exit_code,
        abandon: false,
    })
}

fn abandoned(cause: FailureCause, message: String) -> Verdict {
    Verdict::Ended(Ending {
        outcome: Outcome::Failed,
        cause: Some(cause),
        message,
        exit_code: None,
        abandon: true,
    })
}

fn terminated_reason(c: &ContainerStatus) -> Option<&str> {
    c.state.as_ref()?.terminated.as_ref()?.reason.as_deref()
}

fn exit_code(c: Option<&ContainerStatus>) -> Option<i32> {
    Some(c?.state.as_ref()?.terminated.as_ref()?.exit_code)
}

fn termination_message(c: Option<&ContainerStatus>) -> String {
    c.and_then(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .filter(|m| !m.trim().is_empty())
        .map(|m| format!(": {}", m.trim()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
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

    fn verdict(status: serde_json::Value) -> Verdict {
        classify(&pod(status), NOW.parse().unwrap(), &Waits::default())
    }

    fn ended(status: serde_json::Value) -> Ending {
        match verdict(status) {
            Verdict::Ended(e) => e,
            other => panic!("not ended: {other:?}"),
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
        let e = ended(
            json!({"phase": "Failed", "containerStatuses": [terminated("worker", 1, "Error")]}),
        );
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
        let status = json!({"phase": "Pending", "containerStatuses": [waiting("worker", "ImagePullBackOff")]});
        assert_eq!(
            verdict(status.clone()),
            Verdict::InProgress {
                recheck: Some(Duration::from_secs(121))
            }
        );
        let waits = Waits {
            image_pull: Duration::from_secs(60),
            ..Waits::default()
        };
        let Verdict::Ended(e) = classify(&pod(status), NOW.parse().unwrap(), &waits) else {
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
    fn an_unschedulable_pod_is_abandoned_after_its_wait() {
        let status = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]});
        assert!(matches!(
            verdict(status.clone()),
            Verdict::InProgress { recheck: Some(_) }
        ));
        let waits = Waits {
            unschedulable: Duration::from_secs(120),
            ..Waits::default()
        };
        let Verdict::Ended(e) = classify(&pod(status), NOW.parse().unwrap(), &waits) else {
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
            Verdict::InProgress { recheck: Some(_) }
        ));
        let waits = Waits {
            node_lost: Duration::from_secs(60),
            ..Waits::default()
        };
        let Verdict::Ended(e) = classify(&pod(unknown), NOW.parse().unwrap(), &waits) else {
            panic!()
        };
        assert_eq!((e.cause, e.abandon), (Some(FailureCause::NodeLost), true));
    }

    #[test]
    fn a_container_that_cannot_be_created_is_abandoned_after_its_wait() {
        // A missing Secret in envFrom: the kubelet reports CreateContainerConfigError.
        let status = json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "init", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"vcs\" not found"}}}]});
        assert!(matches!(
            verdict(status.clone()),
            Verdict::InProgress { recheck: Some(_) }
        ));
        let waits = Waits {
            create_container: Duration::from_secs(60),
            ..Waits::default()
        };
        let Verdict::Ended(e) = classify(&pod(status), NOW.parse().unwrap(), &waits) else {
            panic!()
        };
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
        let Verdict::Ended(e) = classify(&p, NOW.parse().unwrap(), &Waits::default()) else {
            panic!()
        };
        assert_eq!(e.cause, Some(FailureCause::PodDeleted));
    }

    #[test]
    fn a_running_pod_is_in_progress_with_nothing_to_wait_for() {
        assert_eq!(
            verdict(json!({"phase": "Running", "containerStatuses": [
                {"name": "worker", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]})),
            Verdict::InProgress { recheck: None }
        );
    }
}
