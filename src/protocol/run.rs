use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The backend asks a worker to process one stage of a run.
///
/// `(run_id, stage, attempt)` identifies the run Pod: the Pod is named
/// `<lowercase run ULID>-<stage>-<attempt>`, so a redelivered schedule maps to the same Pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunSchedule {
    /// The run's ULID, e.g. `01HN37WC3MCNE3CY9HAHWRF06K`.
    pub run_id: String,
    /// The run stage this Pod processes, e.g. `preparing`, `planning`, `applying`.
    pub stage: String,
    /// Which attempt of this stage this is; starts at 1.
    pub attempt: u32,
    /// The stack's runner image; the pool's `defaultRunnerImage` is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_image: Option<String>,
    /// The launcher image for the `init` and `launcher-grpc` containers, pinned by the backend.
    pub launcher_image: String,
    /// Where the launcher reaches the backend's launcher API (`https://host:port`), passed to
    /// `init` and `launcher-grpc` as `SPACELIFT_LAUNCHER_ENDPOINT`. Without it the launcher has
    /// no job to fetch and the stage fails in `init`, saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_endpoint: Option<String>,
    /// Run timeout in seconds, passed to the launcher as `SPACELIFT_LAUNCHER_RUN_TIMEOUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_seconds: Option<u64>,
    /// Log-silence timeout in seconds, passed as `SPACELIFT_LAUNCHER_LOGS_TIMEOUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_timeout_seconds: Option<u64>,
    /// Free-form metadata from the backend (stack, commit, triggered-by ...), visible to hooks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}
