//! What a stack run's stages do and how one leads to the next. Pure: the store feeds it rows
//! and applies what it decides.
//!
//! ```text
//! tracked:  planning --succeeded--> unconfirmed --run confirm--> applying --succeeded--> succeeded
//! proposed: planning --succeeded--> succeeded
//! any stage --failed | stopped--> failed | stopped (the run ends)
//! ```
//!
//! Each stage is its own dispatch (`run.schedule` with that stage, attempt 1), possibly to
//! another worker of the pool; its outcome is the operator's `run.finished`.

use std::collections::BTreeMap;

use launcher_api::layout::{PLAN_FILE, SOURCE_DIR};
use launcher_api::{Artifact, Command, Job, RunKind, Tool};

use super::store::run_state;
use crate::protocol::Outcome;

/// The stage that plans (and, for a tracked run, uploads the workspace with the saved plan).
pub const PLANNING: &str = "planning";
/// The stage that applies the saved plan, starting from planning's workspace.
pub const APPLYING: &str = "applying";

/// The name a run kind has in the store and the API.
pub fn kind_name(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Tracked => "tracked",
        RunKind::Proposed => "proposed",
    }
}

/// The run kind a stored name stands for.
pub fn kind_from_name(name: &str) -> Option<RunKind> {
    match name {
        "tracked" => Some(RunKind::Tracked),
        "proposed" => Some(RunKind::Proposed),
        _ => None,
    }
}

/// What follows a stage's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// The run ends in this state.
    End {
        state: &'static str,
        cause: Option<&'static str>,
        message: Option<String>,
    },
    /// A tracked run's plan waits for `run confirm`.
    AwaitConfirmation,
}

/// What follows the end of `stage` of a run of `kind` (`None`: a bare run, which has one
/// stage) with `outcome`; `has_workspace` says whether the stage uploaded one.
pub fn after_stage(
    kind: Option<RunKind>,
    stage: &str,
    outcome: Outcome,
    has_workspace: bool,
) -> Next {
    let end = |state| Next::End {
        state,
        cause: None,
        message: None,
    };
    match (outcome, kind, stage) {
        (Outcome::Failed, ..) => end(run_state::FAILED),
        (Outcome::Stopped, ..) => end(run_state::STOPPED),
        (Outcome::Succeeded, Some(RunKind::Tracked), PLANNING) if has_workspace => {
            Next::AwaitConfirmation
        }
        (Outcome::Succeeded, Some(RunKind::Tracked), PLANNING) => Next::End {
            state: run_state::FAILED,
            cause: Some("WorkspaceMissing"),
            message: Some(
                "planning succeeded but uploaded no workspace, so there is no plan to apply: \
                 the launcher's worker uploads it at the end of the stage (see its log)"
                    .into(),
            ),
        },
        (Outcome::Succeeded, ..) => end(run_state::SUCCEEDED),
    }
}

/// What the store knows about one stage attempt of a stack run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageInput {
    pub run_id: String,
    pub stage: String,
    pub attempt: u32,
    pub kind: RunKind,
    pub stack: String,
    pub tool: Tool,
    pub environment: BTreeMap<String, String>,
    pub managed_state: bool,
    /// The source the run snapshotted when it was triggered.
    pub source: Artifact,
    /// The workspace planning uploaded, if it did.
    pub workspace: Option<Artifact>,
}

/// Why there is no job for a stage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("run {run} has no stage {stage:?}: stack runs have {PLANNING} and {APPLYING}")]
    UnknownStage { run: String, stage: String },
    #[error("run {run} is proposed: it only plans, so it has no {APPLYING} stage")]
    ProposedApply { run: String },
    #[error("run {run} has no workspace from {PLANNING} to apply")]
    NoWorkspace { run: String },
}

fn command(name: &str, tool: &str, args: &[&str]) -> Command {
    Command {
        name: name.to_string(),
        argv: std::iter::once(tool)
            .chain(args.iter().copied())
            .map(str::to_string)
            .collect(),
    }
}

/// The job of one stage attempt.
pub fn build_job(input: &StageInput) -> Result<Job, JobError> {
    let tool = input.tool.name.as_str();
    let (commands, source, workspace, upload) = match input.stage.as_str() {
        PLANNING => (
            vec![
                command("init", tool, &["init", "-input=false", "-no-color"]),
                command(
                    "plan",
                    tool,
                    &[
                        "plan",
                        "-input=false",
                        "-no-color",
                        &format!("-out={PLAN_FILE}"),
                    ],
                ),
            ],
            Some(input.source.clone()),
            None,
            input.kind == RunKind::Tracked,
        ),
        APPLYING if input.kind == RunKind::Proposed => {
            return Err(JobError::ProposedApply {
                run: input.run_id.clone(),
            });
        }
        APPLYING => {
            let workspace = input
                .workspace
                .clone()
                .ok_or_else(|| JobError::NoWorkspace {
                    run: input.run_id.clone(),
                })?;
            (
                vec![command(
                    "apply",
                    tool,
                    &["apply", "-input=false", "-no-color", PLAN_FILE],
                )],
                None,
                Some(workspace),
                false,
            )
        }
        other => {
            return Err(JobError::UnknownStage {
                run: input.run_id.clone(),
                stage: other.to_string(),
            });
        }
    };
    Ok(Job {
        api_version: launcher_api::API_VERSION,
        run_id: input.run_id.clone(),
        stage: input.stage.clone(),
        attempt: input.attempt,
        kind: input.kind,
        stack: input.stack.clone(),
        tool: input.tool.clone(),
        source,
        workspace,
        commands,
        environment: input.environment.clone(),
        working_directory: SOURCE_DIR.to_string(),
        upload_workspace: upload,
        managed_state: input.managed_state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(stage: &str, kind: RunKind) -> StageInput {
        StageInput {
            run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
            stage: stage.into(),
            attempt: 1,
            kind,
            stack: "demo".into(),
            tool: Tool {
                name: "tofu".into(),
                version: "1.12.6".into(),
                sha256: "ab".repeat(32),
                size: 1,
            },
            environment: BTreeMap::from([("TF_VAR_x".into(), "1".into())]),
            managed_state: true,
            source: Artifact {
                sha256: "cd".repeat(32),
                size: 2,
            },
            workspace: Some(Artifact {
                sha256: "ef".repeat(32),
                size: 3,
            }),
        }
    }

    fn argv(job: &Job) -> Vec<String> {
        job.commands.iter().map(|c| c.argv.join(" ")).collect()
    }

    #[test]
    fn planning_plans_into_the_saved_plan_and_uploads_only_when_tracked() {
        let job = build_job(&input(PLANNING, RunKind::Tracked)).unwrap();
        assert_eq!(
            argv(&job),
            [
                "tofu init -input=false -no-color",
                "tofu plan -input=false -no-color -out=spacelift.plan"
            ]
        );
        assert!(job.upload_workspace);
        assert_eq!(job.source.as_ref().map(|s| s.size), Some(2));
        assert_eq!(job.workspace, None, "planning starts from the source");
        assert_eq!(job.working_directory, "source");
        assert!(job.managed_state);
        let proposed = build_job(&input(PLANNING, RunKind::Proposed)).unwrap();
        assert!(!proposed.upload_workspace);
    }

    #[test]
    fn applying_applies_the_saved_plan_from_plannings_workspace() {
        let job = build_job(&input(APPLYING, RunKind::Tracked)).unwrap();
        assert_eq!(
            argv(&job),
            ["tofu apply -input=false -no-color spacelift.plan"]
        );
        assert_eq!(job.source, None);
        assert_eq!(job.workspace.as_ref().map(|w| w.size), Some(3));
        assert!(!job.upload_workspace);
        let mut without = input(APPLYING, RunKind::Tracked);
        without.workspace = None;
        assert!(matches!(
            build_job(&without),
            Err(JobError::NoWorkspace { .. })
        ));
        assert!(matches!(
            build_job(&input(APPLYING, RunKind::Proposed)),
            Err(JobError::ProposedApply { .. })
        ));
        assert!(matches!(
            build_job(&input("preparing", RunKind::Tracked)),
            Err(JobError::UnknownStage { .. })
        ));
    }

    #[test]
    fn a_stage_leads_to_the_next_or_ends_the_run() {
        use Outcome::*;
        let tracked = Some(RunKind::Tracked);
        let proposed = Some(RunKind::Proposed);
        let ended = |state| Next::End {
            state,
            cause: None,
            message: None,
        };
        let cases = [
            (tracked, PLANNING, Succeeded, true, Next::AwaitConfirmation),
            (
                proposed,
                PLANNING,
                Succeeded,
                false,
                ended(run_state::SUCCEEDED),
            ),
            (tracked, PLANNING, Failed, true, ended(run_state::FAILED)),
            (tracked, PLANNING, Stopped, true, ended(run_state::STOPPED)),
            (
                tracked,
                APPLYING,
                Succeeded,
                false,
                ended(run_state::SUCCEEDED),
            ),
            (tracked, APPLYING, Failed, false, ended(run_state::FAILED)),
            (
                None,
                "preparing",
                Succeeded,
                false,
                ended(run_state::SUCCEEDED),
            ),
            (
                None,
                PLANNING,
                Succeeded,
                false,
                ended(run_state::SUCCEEDED),
            ),
        ];
        for (kind, stage, outcome, workspace, expected) in cases {
            assert_eq!(
                after_stage(kind, stage, outcome, workspace),
                expected,
                "{kind:?} {stage} {outcome:?}"
            );
        }
        assert!(matches!(
            after_stage(tracked, PLANNING, Succeeded, false),
            Next::End {
                state: "failed",
                cause: Some("WorkspaceMissing"),
                ..
            }
        ));
    }
}
