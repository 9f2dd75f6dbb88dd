//! Runs as users see them: submitting a bare run, triggering a stack run, confirming a
//! tracked run's plan, stopping, and reading runs back with their events.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension as _, params};
use ulid::Ulid;

use super::{
    EventView, RunView, Store, SubmitRun, TriggerRun, db, enqueue, event, now, run_state,
    set_run_state,
};
use crate::backend::BackendError;
use crate::backend::stages::{self, APPLYING, PLANNING};
use crate::protocol::{Body, Message, RunSchedule, RunStop};

/// A run row about to be inserted.
struct NewRun<'a> {
    pool_id: &'a str,
    stage: &'a str,
    schedule: RunSchedule,
    stack: Option<(&'a str, &'static str, String, i64)>,
    queued_detail: serde_json::Value,
}

impl Store {
    /// Queues a bare run (`run submit`): one stage, no stack, no job for the launcher.
    pub fn submit_run(
        &self,
        request: &SubmitRun,
        default_launcher_image: &str,
    ) -> Result<RunView, BackendError> {
        let pool = self.pool(&request.pool)?;
        let stage = request.stage.as_deref().unwrap_or("preparing");
        let schedule = RunSchedule {
            run_id: Ulid::generate().to_string(),
            stage: stage.to_string(),
            attempt: 1,
            runner_image: request.runner_image.clone(),
            launcher_image: request
                .launcher_image
                .clone()
                .unwrap_or_else(|| default_launcher_image.to_string()),
            run_timeout_seconds: request.run_timeout_seconds,
            metadata: request.metadata.clone(),
            ..RunSchedule::default()
        };
        self.insert_run(NewRun {
            pool_id: &pool.id,
            stage,
            schedule,
            stack: None,
            queued_detail: serde_json::to_value(request).unwrap_or_default(),
        })
    }

    /// Queues a stack run (`run trigger`): its planning stage, with a snapshot of the stack's
    /// current source.
    pub fn trigger_run(
        &self,
        stack_name: &str,
        request: &TriggerRun,
        default_launcher_image: &str,
    ) -> Result<RunView, BackendError> {
        let stack = self
            .stack(stack_name)?
            .ok_or_else(|| BackendError::NotFound(format!("no stack named {stack_name:?}")))?;
        if self.tool(&stack.tool, &stack.tool_version)?.is_none() {
            return Err(BackendError::Conflict(format!(
                "stack {stack_name} uses tool {} {}, which this backend does not have: add it with \
                 `workerpool-backend tool add --name {} --version {} --file PATH`",
                stack.tool, stack.tool_version, stack.tool, stack.tool_version
            )));
        }
        let kind = if request.proposed {
            launcher_api::RunKind::Proposed
        } else {
            launcher_api::RunKind::Tracked
        };
        let kind_name = stages::kind_name(kind);
        let metadata = BTreeMap::from([
            ("stack".to_string(), stack.name.clone()),
            ("runKind".to_string(), kind_name.to_string()),
        ]);
        let schedule = RunSchedule {
            run_id: Ulid::generate().to_string(),
            stage: PLANNING.to_string(),
            attempt: 1,
            runner_image: stack.runner_image.clone(),
            launcher_image: default_launcher_image.to_string(),
            metadata,
            ..RunSchedule::default()
        };
        let source = stack.source.clone();
        self.insert_run(NewRun {
            pool_id: &stack.pool_id,
            stage: PLANNING,
            schedule,
            stack: Some((
                &stack.name,
                kind_name,
                source.sha256.clone(),
                source.size as i64,
            )),
            queued_detail: serde_json::json!({
                "stack": stack.name, "kind": kind_name, "source": source.sha256,
            }),
        })
    }

    fn insert_run(&self, new: NewRun<'_>) -> Result<RunView, BackendError> {
        let schedule = &new.schedule;
        // The same checks a worker will apply, so a bad run is refused here, not dropped there.
        Body::RunSchedule(schedule.clone())
            .validate()
            .map_err(|(field, reason)| BackendError::Input(format!("{field}: {reason}")))?;
        let metadata = serde_json::to_string(&schedule.metadata)
            .map_err(|err| BackendError::Input(err.to_string()))?;
        let id = schedule.run_id.clone();
        let (stack, kind, source_sha256, source_size) = match &new.stack {
            Some((stack, kind, sha, size)) => (Some(*stack), Some(*kind), Some(sha), Some(*size)),
            None => (None, None, None, None),
        };
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO runs (id, pool_id, stage, attempt, runner_image, launcher_image,
                   run_timeout_seconds, metadata, state, created_at, updated_at,
                   stack, kind, source_sha256, source_size)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13)",
                params![
                    id,
                    new.pool_id,
                    new.stage,
                    schedule.runner_image,
                    schedule.launcher_image,
                    schedule.run_timeout_seconds.map(|s| s as i64),
                    metadata,
                    run_state::QUEUED,
                    now(),
                    stack,
                    kind,
                    source_sha256,
                    source_size,
                ],
            )
            .map_err(db)?;
            event(
                &tx,
                Some(new.pool_id),
                Some(&id),
                None,
                "queued",
                &new.queued_detail,
            )?;
            tx.commit().map_err(db)
        })?;
        self.run(&id)?
            .ok_or_else(|| BackendError::Store(format!("run {id} vanished")))
    }

    /// Confirms a tracked run's plan: its applying stage is queued, for any worker of the
    /// pool, and starts from the workspace planning uploaded.
    pub fn confirm_run(&self, run_id: &str) -> Result<RunView, BackendError> {
        let run = self
            .run(run_id)?
            .ok_or_else(|| BackendError::NotFound(format!("no run {run_id}")))?;
        if run.state != run_state::UNCONFIRMED {
            return Err(BackendError::Conflict(format!(
                "run {run_id} is {} at stage {}: only an unconfirmed run (a tracked run whose \
                 plan succeeded) can be confirmed",
                run.state, run.stage
            )));
        }
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "UPDATE runs SET stage = ?2, attempt = 1, state = ?3, worker_id = NULL,
                   pod_name = NULL, message = '', updated_at = ?4
                 WHERE id = ?1 AND state = ?5",
                params![
                    run_id,
                    APPLYING,
                    run_state::QUEUED,
                    now(),
                    run_state::UNCONFIRMED
                ],
            )
            .map_err(db)?;
            event(
                &tx,
                Some(&run.pool_id),
                Some(run_id),
                None,
                "confirmed",
                &serde_json::json!({"workspace": run.workspace_sha256}),
            )?;
            tx.commit().map_err(db)
        })?;
        self.run(run_id)?
            .ok_or_else(|| BackendError::Store(format!("run {run_id} vanished")))
    }

    /// One run with its events.
    pub fn run(&self, id: &str) -> Result<Option<RunView>, BackendError> {
        Ok(self.query_runs(Some(id), None)?.into_iter().next())
    }

    /// Runs (of one pool, by name or ULID), newest first, with their events.
    pub fn runs(&self, pool: Option<&str>) -> Result<Vec<RunView>, BackendError> {
        let pool_id = pool.map(|pool| self.pool(pool)).transpose()?.map(|p| p.id);
        self.query_runs(None, pool_id.as_deref())
    }

    fn query_runs(
        &self,
        id: Option<&str>,
        pool_id: Option<&str>,
    ) -> Result<Vec<RunView>, BackendError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, pool_id, stage, attempt, runner_image, launcher_image, state,
                            worker_id, pod_name, cause, message, created_at, updated_at,
                            stack, kind, source_sha256, workspace_sha256, stop_requested_at
                     FROM runs
                     WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR pool_id = ?2)
                     ORDER BY seq DESC",
                )
                .map_err(db)?;
            let runs = stmt
                .query_map(params![id, pool_id], |r| {
                    Ok(RunView {
                        id: r.get(0)?,
                        pool_id: r.get(1)?,
                        stage: r.get(2)?,
                        attempt: r.get(3)?,
                        runner_image: r.get(4)?,
                        launcher_image: r.get(5)?,
                        state: r.get(6)?,
                        worker_id: r.get(7)?,
                        pod_name: r.get(8)?,
                        cause: r.get(9)?,
                        message: r.get(10)?,
                        created_at: r.get(11)?,
                        updated_at: r.get(12)?,
                        stack: r.get(13)?,
                        kind: r.get(14)?,
                        source_sha256: r.get(15)?,
                        workspace_sha256: r.get(16)?,
                        stop_requested: r.get::<_, Option<String>>(17)?.is_some(),
                        events: Vec::new(),
                    })
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            let mut events = conn
                .prepare(
                    "SELECT at, kind, worker_id, detail FROM events WHERE run_id = ?1 ORDER BY seq",
                )
                .map_err(db)?;
            runs.into_iter()
                .map(|mut run| {
                    run.events = events
                        .query_map([&run.id], |r| {
                            let detail: String = r.get(3)?;
                            Ok(EventView {
                                at: r.get(0)?,
                                kind: r.get(1)?,
                                worker_id: r.get(2)?,
                                detail: serde_json::from_str(&detail)
                                    .unwrap_or(serde_json::Value::String(detail)),
                            })
                        })
                        .map_err(db)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(db)?;
                    Ok(run)
                })
                .collect()
        })
    }

    /// Asks for a run to stop: a run no worker holds (queued, or unconfirmed) stops at once;
    /// a dispatched or running one gets a `run.stop` message to its worker, its launcher sees
    /// the request at `GET .../stop`, and it stops when the worker reports it.
    pub fn request_stop(&self, run_id: &str, reason: &str) -> Result<RunView, BackendError> {
        let run = self
            .run(run_id)?
            .ok_or_else(|| BackendError::NotFound(format!("no run {run_id}")))?;
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let detail = serde_json::json!({"reason": reason});
            if [run_state::QUEUED, run_state::UNCONFIRMED].contains(&run.state.as_str()) {
                set_run_state(&tx, run_id, run_state::STOPPED, None, reason)?;
                event(
                    &tx,
                    Some(&run.pool_id),
                    Some(run_id),
                    None,
                    "stopped",
                    &detail,
                )?;
            } else if run_state::ACTIVE.contains(&run.state.as_str()) {
                let (Ok(pool), Some(Ok(worker))) = (
                    Ulid::from_string(&run.pool_id),
                    run.worker_id.as_deref().map(Ulid::from_string),
                ) else {
                    return Err(BackendError::Store(format!(
                        "run {run_id} has no valid worker"
                    )));
                };
                let stop = Message::for_worker(
                    worker,
                    Body::RunStop(RunStop {
                        run_id: run_id.to_string(),
                        stage: Some(run.stage.clone()),
                        reason: reason.to_string(),
                    }),
                );
                enqueue(&tx, pool, &stop, Some(run_id))?;
                event(
                    &tx,
                    Some(&run.pool_id),
                    Some(run_id),
                    run.worker_id.as_deref(),
                    "stop.requested",
                    &detail,
                )?;
            } else {
                return Err(BackendError::Conflict(format!(
                    "run {run_id} is already {}",
                    run.state
                )));
            }
            tx.execute(
                "UPDATE runs SET stop_requested_at = COALESCE(stop_requested_at, ?2),
                   stop_reason = ?3 WHERE id = ?1",
                params![run_id, now(), reason],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })?;
        self.run(run_id)?
            .ok_or_else(|| BackendError::Store(format!("run {run_id} vanished")))
    }

    /// Whether someone asked the run to stop, and why.
    pub fn stop_status(&self, run_id: &str) -> Result<launcher_api::StopStatus, BackendError> {
        self.with(|conn| {
            let row: Option<(Option<String>, String)> = conn
                .query_row(
                    "SELECT stop_requested_at, stop_reason FROM runs WHERE id = ?1",
                    [run_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            let (at, reason) =
                row.ok_or_else(|| BackendError::NotFound(format!("no run {run_id}")))?;
            Ok(launcher_api::StopStatus {
                stop_requested: at.is_some(),
                reason: if at.is_some() { reason } else { String::new() },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CreateStack, StageAccess};
    use super::*;
    use crate::backend::blobs::BlobRef;
    use crate::protocol::{Outcome, RunFinished, RunRef, WorkerRegister};

    #[test]
    fn after_a_restart_only_the_current_stages_schedule_is_sent_again() {
        let store = Store::open_in_memory().unwrap();
        let (pool, worker) = (Ulid::generate(), Ulid::generate());
        store.insert_pool(pool, "p").unwrap();
        let register = Body::WorkerRegister(WorkerRegister {
            name: "p-w".into(),
            public_key: "key".into(),
            metadata: Default::default(),
        });
        store
            .apply_inbound(pool, &Message::for_worker(worker, register))
            .unwrap();
        let blob = |n: &str| BlobRef {
            sha256: n.repeat(64),
            size: 1,
        };
        store.add_tool("tofu", "1.12.6", &blob("a")).unwrap();
        let stack = CreateStack {
            name: "demo".into(),
            pool: "p".into(),
            source: blob("b").sha256,
            tool: "tofu".into(),
            tool_version: "1.12.6".into(),
            ..CreateStack::default()
        };
        store.create_stack(&stack, &blob("b")).unwrap();
        let send_all = || {
            for entry in store.unsent(100).unwrap() {
                store.mark_sent(entry.seq).unwrap();
            }
        };
        let run = store
            .trigger_run("demo", &TriggerRun::default(), "launcher")
            .unwrap();
        assert_eq!(store.dispatch(Some("https://10.0.0.1:8443")).unwrap(), 1);
        let schedule = store.unsent(100).unwrap().pop().unwrap().message;
        let Body::RunSchedule(schedule) = schedule.body else {
            panic!("a schedule");
        };
        assert_eq!(
            schedule.launcher_endpoint.as_deref(),
            Some("https://10.0.0.1:8443")
        );
        send_all();
        let planning = RunRef::new(&run.id, PLANNING, 1);
        let report = |body| {
            store
                .apply_inbound(pool, &Message::for_worker(worker, body))
                .unwrap()
        };
        report(Body::RunAccepted(planning.clone()));
        let access = StageAccess {
            pool_id: pool.to_string(),
            run_id: run.id.clone(),
            stage: PLANNING.into(),
            attempt: 1,
            worker_id: worker.to_string(),
            stack: Some("demo".into()),
            kind: Some(launcher_api::RunKind::Tracked),
            source: None,
            workspace: None,
        };
        store.record_workspace(&access, &blob("c")).unwrap();
        report(Body::RunFinished(RunFinished {
            run_id: run.id.clone(),
            stage: PLANNING.into(),
            attempt: 1,
            outcome: Outcome::Succeeded,
            cause: None,
            message: String::new(),
            exit_code: Some(0),
        }));
        assert_eq!(
            store.run(&run.id).unwrap().unwrap().state,
            run_state::UNCONFIRMED
        );
        // A plan waiting for its confirmation waits on a person: pending, not schedulable.
        let demand = || {
            let gauges = store.gauges().unwrap();
            let of_pool = gauges.iter().find(|g| g.id == pool.to_string()).unwrap();
            crate::backend::serve::demand_of(of_pool)
        };
        assert_eq!(
            demand(),
            crate::protocol::PoolDemand {
                pending_runs: 1,
                schedulable_runs: 0,
                ..Default::default()
            }
        );
        store.confirm_run(&run.id).unwrap();
        assert_eq!(
            demand(),
            crate::protocol::PoolDemand {
                pending_runs: 1,
                schedulable_runs: 1,
                ..Default::default()
            },
            "confirmed, its applying stage can start now"
        );
        assert_eq!(store.dispatch(None).unwrap(), 1);
        assert_eq!(
            demand(),
            crate::protocol::PoolDemand {
                pending_runs: 0,
                schedulable_runs: 0,
                dispatched_workers: vec![worker.to_string()],
            },
            "dispatched and not accepted yet: its worker is named, so the operator counts it busy"
        );
        send_all();
        // The worker had not accepted applying when the backend restarted: applying's schedule
        // goes again, planning's (long settled) does not.
        assert_eq!(store.resend_unsettled().unwrap(), 1);
        let again = store.unsent(100).unwrap();
        assert!(
            matches!(&again[0].message.body, Body::RunSchedule(s) if s.stage == APPLYING),
            "{:?}",
            again[0].message.body
        );
    }
}
