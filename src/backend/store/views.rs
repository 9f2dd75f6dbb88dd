//! What the store returns and accepts: run states, the API's views, and outbox entries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::protocol::Message;

/// Run states; the last four are final.
pub mod run_state {
    /// A tracked stack run planned and waits for `run confirm` (no worker holds it).
    pub const UNCONFIRMED: &str = "unconfirmed";
    /// Waiting for an IDLE worker.
    pub const QUEUED: &str = "queued";
    /// Assigned to a worker; the schedule is in the outbox or on its way.
    pub const DISPATCHED: &str = "dispatched";
    /// The worker accepted the schedule.
    pub const ACCEPTED: &str = "accepted";
    /// The run Pod exists.
    pub const RUNNING: &str = "running";
    /// Finished successfully.
    pub const SUCCEEDED: &str = "succeeded";
    /// Finished unsuccessfully (see `cause`).
    pub const FAILED: &str = "failed";
    /// Stopped on request.
    pub const STOPPED: &str = "stopped";
    /// A hook refused the run Pod.
    pub const DENIED: &str = "denied";
    /// States in which a run occupies its worker.
    pub const ACTIVE: [&str; 3] = [DISPATCHED, ACCEPTED, RUNNING];
    /// Final states.
    pub const FINAL: [&str; 4] = [SUCCEEDED, FAILED, STOPPED, DENIED];
}

/// A pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// The pool ULID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When `pool create` made it.
    pub created_at: String,
}

/// A worker as the backend sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    /// The pool ULID.
    pub pool_id: String,
    /// The worker ULID.
    pub id: String,
    /// The Kubernetes Worker name.
    pub name: String,
    /// The last reported state: IDLE, BUSY or DRAINING.
    pub state: String,
    /// The run it reported, if any.
    pub current_run: Option<String>,
    /// First registration.
    pub registered_at: String,
    /// Last message from it.
    pub last_seen: String,
    /// Set once it deregistered.
    pub deregistered_at: Option<String>,
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// When.
    pub at: String,
    /// What, e.g. `queued`, `dispatched`, `run.accepted`.
    pub kind: String,
    /// The worker involved.
    pub worker_id: Option<String>,
    /// Details (the message body for inbound messages).
    pub detail: serde_json::Value,
}

/// A run and its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// The run ULID.
    pub id: String,
    /// The pool ULID.
    pub pool_id: String,
    /// Stage to run.
    pub stage: String,
    /// Attempt of that stage.
    pub attempt: u32,
    /// Runner image, if set.
    pub runner_image: Option<String>,
    /// Launcher image.
    pub launcher_image: String,
    /// See [`run_state`].
    pub state: String,
    /// The worker it was dispatched to.
    pub worker_id: Option<String>,
    /// The run Pod's name, once created.
    pub pod_name: Option<String>,
    /// Failure cause, e.g. `OOMKilled`.
    pub cause: Option<String>,
    /// Detail of the outcome.
    pub message: String,
    /// Submission time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// The stack, for a stack run (`run trigger`); none for a bare run (`run submit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// `tracked` or `proposed`, for a stack run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The source the run started with (a snapshot of the stack's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// The workspace planning uploaded, which applying starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_sha256: Option<String>,
    /// Whether someone asked the run to stop (the launcher reads it from `GET .../stop`).
    #[serde(default)]
    pub stop_requested: bool,
    /// Every event of this run, oldest first.
    pub events: Vec<EventView>,
}

/// `POST /api/stacks/{name}/runs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerRun {
    /// A proposed run only plans; a tracked one (the default) plans, waits for confirmation
    /// and applies.
    #[serde(default)]
    pub proposed: bool,
}

/// `POST /api/runs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitRun {
    /// Pool name or ULID.
    pub pool: String,
    /// Runner image; the pool's `defaultRunnerImage` applies when absent.
    #[serde(default)]
    pub runner_image: Option<String>,
    /// Stage; `preparing` when absent.
    #[serde(default)]
    pub stage: Option<String>,
    /// Launcher image; the backend's default when absent.
    #[serde(default)]
    pub launcher_image: Option<String>,
    /// Run timeout in seconds.
    #[serde(default)]
    pub run_timeout_seconds: Option<u64>,
    /// Free-form metadata passed to the worker.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Numbers for `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolGauges {
    /// Pool ULID.
    pub id: String,
    /// Pool name.
    pub name: String,
    /// Queued runs.
    pub pending: i64,
    /// Runs that wait on a person: tracked runs whose plan awaits confirmation.
    pub awaiting_confirmation: i64,
    /// Registered workers.
    pub workers: i64,
    /// Registered workers with a run (or reporting BUSY/DRAINING).
    pub busy: i64,
    /// The workers holding a run dispatched to them and not accepted yet (ULIDs, sorted).
    pub dispatched: Vec<String>,
}

/// A message waiting to be published.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    /// Its position.
    pub seq: i64,
    /// Target pool.
    pub pool_id: Ulid,
    /// The message.
    pub message: Message,
}
