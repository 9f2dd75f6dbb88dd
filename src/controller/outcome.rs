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
pub enum PodProgress {
    /// Still starting or running; look again after `recheck` if set (a wait may run out).
    InProgress { recheck: Option<Duration> },
    /// The run stage attempt is over.
    Ended(Ending),
}

/// Reads a run Pod's status at `now`.
pub fn classify(pod: &Pod, now: Timestamp, waits: &Waits) -> PodProgress {
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

    // The pod garbage collector fails and removes the Pods of a node that no longer exists.
    if deleted_with_its_node(pod) {
        return failed(
            FailureCause::NodeLost,
            "the run Pod's node no longer exists".into(),
            exit_code(worker),
        );
    }
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
            PodProgress::Ended(Ending {
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
            return PodProgress::Ended(Ending {
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
) -> PodProgress {
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
            // ErrImageNeverPull (pull policy Never, image not on the node) resolves only
            // when someone loads the image onto the node: the same wait as a pull.
            "ImagePullBackOff" | "ErrImagePull" | "ErrImageNeverPull" => {
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
    PodProgress::InProgress { recheck }
}

/// The condition the pod garbage collector sets on a Pod it removes because its node is gone.
fn deleted_with_its_node(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| {
            c.type_ == "DisruptionTarget"
                && c.status == "True"
                && c.reason.as_deref() == Some("DeletionByPodGC")
        })
}

fn failed(cause: FailureCause, message: String, exit_code: Option<i32>) -> PodProgress {
    PodProgress::Ended(Ending {
        outcome: Outcome::Failed,
        cause: Some(cause),
        message,
        exit_code,
        abandon: false,
    })
}

fn abandoned(cause: FailureCause, message: String) -> PodProgress {
    PodProgress::Ended(Ending {
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
mod tests;
