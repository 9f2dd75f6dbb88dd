//! The documents of the launcher API. JSON, camelCase, unknown fields refused (a change is a
//! new API version, as in the MQTT protocol).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one run stage attempt has to do: `GET .../job`. Written by `init` to
/// `<workspace>/job.json` for the worker (without anything secret: the worker's key never
/// leaves the launcher containers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Job {
    /// [`crate::API_VERSION`].
    pub api_version: u32,
    /// The run's ULID.
    pub run_id: String,
    /// The stage this Pod processes, e.g. `planning`.
    pub stage: String,
    /// The attempt of this stage, from 1.
    pub attempt: u32,
    /// Tracked (plan, confirm, apply) or proposed (plan only).
    pub kind: RunKind,
    /// The stack's name.
    pub stack: String,
    /// The IaC tool and version the stage runs with.
    pub tool: Tool,
    /// The stack's source as a gzipped tarball: `GET .../source`. Absent when the stage starts
    /// from a workspace that already holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Artifact>,
    /// The workspace an earlier stage of this run uploaded (`GET .../workspace`), laid out
    /// before the stage starts; the applying stage starts from what planning left, saved plan
    /// included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Artifact>,
    /// The stage's commands, run one after the other in [`Job::working_directory`]; the first
    /// that fails ends the stage.
    pub commands: Vec<Command>,
    /// Environment for the commands (the stack's variables), on top of the worker container's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// The directory, relative to the workspace, the commands run in.
    pub working_directory: String,
    /// Whether the stage ends by uploading the workspace for the next stage.
    pub upload_workspace: bool,
    /// Whether the stack keeps its state with the backend (OpenTofu's `http` backend, reached
    /// through the launcher's local state proxy): `init` then writes a backend override file.
    pub managed_state: bool,
}

/// A tracked run plans, waits for confirmation, then applies; a proposed run only plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Tracked,
    Proposed,
}

/// A tool binary: `GET .../tools/<name>/<version>`, installed by `init` into the binaries
/// cache under `<cache>/<name>/<version>/<name>` unless a file with this digest is there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tool {
    /// The binary's name, e.g. `tofu`.
    pub name: String,
    /// Its version, e.g. `1.12.6`.
    pub version: String,
    /// Hex SHA-256 of the binary.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A blob the launcher downloads, checked against its digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    /// Hex SHA-256 of the blob.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One command of a stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Command {
    /// A short name for logs and errors, e.g. `plan`.
    pub name: String,
    /// The program and its arguments; no shell is involved.
    pub argv: Vec<String>,
}

/// Which program wrote a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogPart {
    /// `spacelift-launcher init` (workspace, tool installation).
    Init,
    /// `spacelift-worker` and the commands it runs.
    Worker,
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The launcher's own lines (`$ tofu plan ...`, `command plan exited with code 1`).
    System,
}

/// One line of a stage's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogLine {
    /// Position in its part, from 0 and without gaps: the backend stores a line once per
    /// `(part, seq)`, so a batch sent twice changes nothing.
    pub seq: u64,
    /// RFC 3339 time the line was read.
    pub at: String,
    pub stream: LogStream,
    /// The text, without its line ending.
    pub text: String,
}

/// `POST .../logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogBatch {
    pub part: LogPart,
    pub lines: Vec<LogLine>,
}

/// How the worker ended the stage, as it saw it. The run's outcome is what the operator reads
/// from the Pod (`run.finished`); this adds the detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageOutcome {
    Succeeded,
    Failed,
    Stopped,
}

/// Whether `init` found the tool in the binaries cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCache {
    Hit,
    Miss,
}

/// `POST .../result`: the stage's detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageResult {
    pub outcome: StageOutcome,
    /// The command that failed (its [`Command::name`]), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_command: Option<String>,
    /// That command's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Whether the tool came from the binaries cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_cache: Option<ToolCache>,
    /// Digest of the workspace the stage uploaded, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Artifact>,
}

/// `GET .../stop`: whether someone asked the run to stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StopStatus {
    pub stop_requested: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_and_refuses_unknown_fields() {
        let job = Job {
            api_version: 1,
            run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
            stage: "planning".into(),
            attempt: 1,
            kind: RunKind::Tracked,
            stack: "demo".into(),
            tool: Tool {
                name: "tofu".into(),
                version: "1.12.6".into(),
                sha256: "ab".repeat(32),
                size: 10,
            },
            source: Some(Artifact {
                sha256: "cd".repeat(32),
                size: 20,
            }),
            workspace: None,
            commands: vec![Command {
                name: "init".into(),
                argv: vec!["tofu".into(), "init".into()],
            }],
            environment: BTreeMap::from([("TF_VAR_x".into(), "1".into())]),
            working_directory: "source".into(),
            upload_workspace: true,
            managed_state: true,
        };
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["kind"], "tracked");
        assert_eq!(json["workingDirectory"], "source");
        let back: Job = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, job);
        let mut extra = json;
        extra["secret"] = "x".into();
        let err = serde_json::from_value::<Job>(extra).unwrap_err();
        assert!(err.to_string().contains("unknown field `secret`"), "{err}");
    }
}
