//! What the launcher API asks of the store: the key a worker registered, whether the run
//! stage attempt a request is signed for is the one the worker holds now, the stage's job
//! input, and what the stage hands back (its workspace, its result).

use launcher_api::{Artifact, Claims, StageResult};
use rusqlite::{OptionalExtension as _, params};

use super::{Store, db, event, now, run_state};
use crate::backend::BackendError;
use crate::backend::blobs::BlobRef;
use crate::backend::stages::{StageInput, kind_from_name};

/// A registered worker's public key, and whether it deregistered since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerKey {
    pub public_key: String,
    pub deregistered_at: Option<String>,
}

/// The run stage attempt a verified request may act for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageAccess {
    pub pool_id: String,
    pub run_id: String,
    pub stage: String,
    pub attempt: u32,
    pub worker_id: String,
    /// The stack, for a stack run.
    pub stack: Option<String>,
    pub kind: Option<launcher_api::RunKind>,
    pub source: Option<Artifact>,
    pub workspace: Option<Artifact>,
}

/// Why a verified worker may not act for the run stage attempt it signed for.
#[derive(Debug, thiserror::Error)]
pub enum StageDenied {
    #[error("worker {worker} is not registered in pool {pool}")]
    Unregistered { pool: String, worker: String },
    #[error("worker {worker} deregistered at {at}: a deregistered worker runs nothing")]
    Deregistered { worker: String, at: String },
    #[error("pool {pool} has no run {run}")]
    NoRun { pool: String, run: String },
    #[error(
        "run {run} stage {stage} attempt {attempt} is {held}, not to worker {worker}: a worker acts only for its own run"
    )]
    OtherWorker {
        run: String,
        stage: String,
        attempt: u32,
        held: String,
        worker: String,
    },
    #[error(
        "run {run} is at stage {stage} attempt {attempt}, but the request is signed for stage {claimed_stage} attempt {claimed_attempt}"
    )]
    OtherStage {
        run: String,
        stage: String,
        attempt: u32,
        claimed_stage: String,
        claimed_attempt: u32,
    },
    #[error(
        "run {run} stage {stage} attempt {attempt} has ended (the run is {state}): a launcher acts only for a stage that is running"
    )]
    Ended {
        run: String,
        stage: String,
        attempt: u32,
        state: String,
    },
    #[error(transparent)]
    Store(#[from] BackendError),
}

fn artifact(sha256: Option<String>, size: Option<i64>) -> Option<Artifact> {
    Some(Artifact {
        sha256: sha256?,
        size: size?.try_into().ok()?,
    })
}

impl Store {
    /// The public key `worker` of `pool` registered, if it ever did.
    pub fn worker_key(&self, pool: &str, worker: &str) -> Result<Option<WorkerKey>, BackendError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT public_key, deregistered_at FROM workers WHERE pool_id = ?1 AND id = ?2",
                params![pool, worker],
                |r| {
                    Ok(WorkerKey {
                        public_key: r.get(0)?,
                        deregistered_at: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db)
        })
    }

    /// Whether the signer of `claims` holds that run stage attempt now: registered, not
    /// deregistered, the attempt dispatched to it and not ended.
    pub fn stage_access(&self, claims: &Claims) -> Result<StageAccess, StageDenied> {
        let worker = self
            .worker_key(&claims.pool, &claims.worker)?
            .ok_or_else(|| StageDenied::Unregistered {
                pool: claims.pool.clone(),
                worker: claims.worker.clone(),
            })?;
        if let Some(at) = worker.deregistered_at {
            return Err(StageDenied::Deregistered {
                worker: claims.worker.clone(),
                at,
            });
        }
        type Row = (
            String,
            u32,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<i64>,
        );
        let row: Option<Row> = self.with(|conn| {
            conn.query_row(
                "SELECT stage, attempt, state, worker_id, stack, kind, source_sha256, source_size,
                        workspace_sha256, workspace_size
                 FROM runs WHERE id = ?1 AND pool_id = ?2",
                params![claims.run, claims.pool],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                    ))
                },
            )
            .optional()
            .map_err(db)
        })?;
        let Some((stage, attempt, state, holder, stack, kind, src, src_size, ws, ws_size)) = row
        else {
            return Err(StageDenied::NoRun {
                pool: claims.pool.clone(),
                run: claims.run.clone(),
            });
        };
        if holder.as_deref() != Some(claims.worker.as_str()) {
            return Err(StageDenied::OtherWorker {
                run: claims.run.clone(),
                stage,
                attempt,
                held: match holder {
                    Some(other) => format!("dispatched to worker {other}"),
                    None => format!("{state}, dispatched to no worker"),
                },
                worker: claims.worker.clone(),
            });
        }
        if stage != claims.stage || attempt != claims.attempt {
            return Err(StageDenied::OtherStage {
                run: claims.run.clone(),
                stage,
                attempt,
                claimed_stage: claims.stage.clone(),
                claimed_attempt: claims.attempt,
            });
        }
        if !run_state::ACTIVE.contains(&state.as_str()) {
            return Err(StageDenied::Ended {
                run: claims.run.clone(),
                stage,
                attempt,
                state,
            });
        }
        Ok(StageAccess {
            pool_id: claims.pool.clone(),
            run_id: claims.run.clone(),
            stage,
            attempt,
            worker_id: claims.worker.clone(),
            stack,
            kind: kind.as_deref().and_then(kind_from_name),
            source: artifact(src, src_size),
            workspace: artifact(ws, ws_size),
        })
    }

    /// What the job of a stack run's stage is built from.
    pub fn stage_input(&self, access: &StageAccess) -> Result<StageInput, BackendError> {
        let (Some(stack_name), Some(kind), Some(source)) =
            (&access.stack, access.kind, access.source.clone())
        else {
            return Err(BackendError::NotFound(format!(
                "run {} is a bare run (run submit) with no stack, so it has no job: trigger \
                 a stack run with `workerpool-backend run trigger --stack NAME`",
                access.run_id
            )));
        };
        let stack = self
            .stack(stack_name)?
            .ok_or_else(|| BackendError::NotFound(format!("no stack named {stack_name:?}")))?;
        let tool = self
            .tool(&stack.tool, &stack.tool_version)?
            .ok_or_else(|| {
                BackendError::Conflict(format!(
                    "stack {stack_name} uses tool {} {}, which this backend does not have: add it \
                     with `workerpool-backend tool add`",
                    stack.tool, stack.tool_version
                ))
            })?;
        Ok(StageInput {
            run_id: access.run_id.clone(),
            stage: access.stage.clone(),
            attempt: access.attempt,
            kind,
            stack: stack.name,
            tool: launcher_api::Tool {
                name: tool.name,
                version: tool.version,
                sha256: tool.sha256,
                size: tool.size,
            },
            environment: stack.environment,
            managed_state: stack.managed_state,
            source,
            workspace: access.workspace.clone(),
        })
    }

    /// Records the workspace a stage uploaded: the next stage's starting point.
    pub fn record_workspace(
        &self,
        access: &StageAccess,
        blob: &BlobRef,
    ) -> Result<(), BackendError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "UPDATE runs SET workspace_sha256 = ?2, workspace_size = ?3, updated_at = ?4
                 WHERE id = ?1",
                params![access.run_id, blob.sha256, blob.size as i64, now()],
            )
            .map_err(db)?;
            event(
                &tx,
                Some(&access.pool_id),
                Some(&access.run_id),
                Some(&access.worker_id),
                "workspace.uploaded",
                &serde_json::json!({"stage": access.stage, "attempt": access.attempt,
                    "sha256": blob.sha256, "size": blob.size}),
            )?;
            tx.commit().map_err(db)
        })
    }

    /// Records the launcher's detail of how the stage ended, as a run event. The run's outcome
    /// stays the operator's `run.finished`.
    pub fn record_result(
        &self,
        access: &StageAccess,
        result: &StageResult,
    ) -> Result<(), BackendError> {
        let mut detail = serde_json::to_value(result).unwrap_or_default();
        if let Some(object) = detail.as_object_mut() {
            object.insert("stage".into(), access.stage.clone().into());
            object.insert("attempt".into(), access.attempt.into());
        }
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            event(
                &tx,
                Some(&access.pool_id),
                Some(&access.run_id),
                Some(&access.worker_id),
                "stage.result",
                &detail,
            )?;
            tx.commit().map_err(db)
        })
    }
}
