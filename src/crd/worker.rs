use std::fmt;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One slot of a WorkerPool, registered with the backend. A Worker uses no cluster resources
/// while IDLE; a run Pod exists for it while it is BUSY.
// Several printer columns share `type_`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "workers.spacelift.io",
    version = "v1beta1",
    kind = "Worker",
    plural = "workers",
    namespaced,
    status = "WorkerStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A worker of a WorkerPool, registered with the backend.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".metadata.annotations.workers\\.spacelift\\.io/workerpool-name"
    ),
    printcolumn(
        name = "Registered",
        type_ = "boolean",
        json_path = ".status.registered"
    ),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Run ID", type_ = "string", json_path = ".status.currentRunID")
)]
pub struct WorkerSpec {
    /// How many run Pods the Worker has at a time: 1. It exists for the scale subresource,
    /// through which a PodDisruptionBudget over run Pods counts them.
    #[serde(default = "one_run_pod")]
    #[schemars(range(min = 0, max = 1))]
    pub replicas: i32,
}

fn one_run_pod() -> i32 {
    1
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            replicas: one_run_pod(),
        }
    }
}

/// What a worker is doing.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum WorkerState {
    /// Waiting for a run.
    #[default]
    Idle,
    /// Processing a run: its Pod exists.
    Busy,
    /// Removed from the pool by a scale-down while busy: deleted when its run ends.
    Draining,
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "IDLE",
            Self::Busy => "BUSY",
            Self::Draining => "DRAINING",
        })
    }
}

/// The state of a worker. It is the controller's memory: after a restart the controller rebuilds
/// everything from Worker statuses and run Pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// IDLE, BUSY or DRAINING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<WorkerState>,
    /// The run the worker is processing.
    #[serde(
        default,
        rename = "currentRunID",
        skip_serializing_if = "Option::is_none"
    )]
    pub current_run_id: Option<String>,
    /// Whether the backend has accepted the worker's registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<bool>,
    /// Run Pods the Worker has: 1 while it has a run, else 0 (the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The run stage being processed, and its Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run: Option<CurrentRun>,
    /// The run stages this worker finished last (oldest first, at most
    /// [`FINISHED_RUNS_KEPT`]) and what it reported about each, written in the same update that
    /// frees the worker. A schedule redelivered after its run ended is answered from here
    /// instead of running the stage again, and the reports are re-sent on every reconnection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub finished_runs: Vec<FinishedRun>,
    /// The message id of the newest `run.schedule` this worker took or refused. A backend
    /// sends a worker its schedules in the order of their ids (a new dispatch waits until the
    /// worker's previous run ended) and re-sends one under its original id, so an older copy
    /// that `finishedRuns` no longer remembers is a redelivery of a run that ended long ago:
    /// it creates nothing.
    #[serde(
        default,
        rename = "latestScheduleID",
        skip_serializing_if = "Option::is_none"
    )]
    pub latest_schedule_id: Option<String>,
}

/// How many finished run stages a Worker's status remembers.
pub const FINISHED_RUNS_KEPT: usize = 10;

/// The run stage a worker is processing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentRun {
    /// The run's ULID.
    pub run_id: String,
    /// The run stage, e.g. "preparing".
    pub stage: String,
    /// The attempt of this stage.
    // `uint32` is not a format the apiserver knows (it warns on apply): publish int32.
    #[schemars(range(min = 1), extend("format" = "int32"))]
    pub attempt: u32,
    /// The run Pod's name.
    pub pod_name: String,
    /// When the schedule was received.
    pub scheduled_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Whether the run Pod has been created (a missing Pod then means it was deleted).
    #[serde(default)]
    pub pod_created: bool,
    /// The operator process that took the run, written before it creates the run Pod. Only
    /// that process may still create a missing Pod: any other cannot tell a Pod that was never
    /// created from one that was created and deleted meanwhile, and fails the run instead of
    /// risking a second Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    /// How the run ends, decided before its Pod is deleted (a stop, a Pod stuck or deleted by
    /// someone else). Reported, and the worker freed, once the Pod is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<FinishedRun>,
}

/// A run stage a worker finished, and the report it sent about it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinishedRun {
    /// The run's ULID.
    pub run_id: String,
    /// The run stage, e.g. "preparing".
    pub stage: String,
    /// The attempt of this stage.
    #[schemars(range(min = 1), extend("format" = "int32"))]
    pub attempt: u32,
    /// The run Pod's name.
    pub pod_name: String,
    /// The id of the message that reported it; a re-sent report keeps it, so a backend that
    /// applied it already recognises the copy.
    pub message_id: String,
    /// When it was reported.
    pub finished_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// What was reported: `run.finished` with succeeded, failed or stopped, or `run.denied`.
    pub outcome: FinishedOutcome,
    /// Why it failed (the `cause` of `run.finished`), e.g. "OOMKilled".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The reported detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The `worker` container's exit code, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the run was denied: one entry per refusing hook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_by: Vec<DeniedBy>,
}

/// How a run stage ended, as reported to the backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FinishedOutcome {
    /// `run.finished`, outcome succeeded.
    Succeeded,
    /// `run.finished`, outcome failed.
    Failed,
    /// `run.finished`, outcome stopped.
    Stopped,
    /// `run.denied`: the Pod was refused before it existed.
    Denied,
}

/// One hook's refusal of a run Pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeniedBy {
    /// The hook, e.g. "policy/initialization".
    pub hook: String,
    /// What it said.
    pub message: String,
}
