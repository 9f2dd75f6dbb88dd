//! Applying inbound messages (a burst in one transaction) and dispatching queued runs.

use rusqlite::{OptionalExtension, Transaction, params};
use ulid::Ulid;

use super::{Store, db, enqueue, event, now, run_state, set_run_state};
use crate::backend::BackendError;
use crate::backend::stages::{self, Next};
use crate::protocol::{
    Body, FailureCause, Message, RunRef, RunSchedule, RunStop, WorkerDeregistered,
    WorkerRegistered, WorkerStatus,
};

/// What applying a message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It changed (or recorded) something; a worker may have become free.
    Applied,
    /// Its id was applied before: nothing changed.
    Duplicate,
    /// From a pool this backend does not know: recorded and ignored.
    UnknownPool,
}

struct RunRow {
    state: String,
    worker_id: Option<String>,
    stage: String,
    attempt: u32,
    kind: Option<String>,
    has_workspace: bool,
}

impl Store {
    /// Applies one inbound message from `pool` exactly once (by message id), recording it as
    /// an event and queueing any reply in the outbox.
    pub fn apply_inbound(&self, pool: Ulid, message: &Message) -> Result<Applied, BackendError> {
        let mut results = self.apply_inbound_all(&[(pool, message)])?;
        results.pop().expect("one result per message")
    }

    /// [`Store::apply_inbound`] for a burst of messages, in one transaction (one commit, one
    /// fsync, for all of them). Each message is applied under a savepoint of its own: one
    /// that fails is rolled back alone and answered with its error, in order, while the others
    /// commit. Only a failure of the transaction itself fails them all.
    pub fn apply_inbound_all(
        &self,
        messages: &[(Ulid, &Message)],
    ) -> Result<Vec<Result<Applied, BackendError>>, BackendError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let mut results = Vec::with_capacity(messages.len());
            for (pool, message) in messages {
                tx.execute_batch("SAVEPOINT inbound").map_err(db)?;
                let result = apply_once(&tx, *pool, message);
                let end = if result.is_ok() {
                    "RELEASE inbound"
                } else {
                    "ROLLBACK TO inbound; RELEASE inbound"
                };
                tx.execute_batch(end).map_err(db)?;
                results.push(result);
            }
            tx.commit().map_err(db)?;
            Ok(results)
        })
    }

    /// Assigns queued runs, oldest first, to registered IDLE workers that hold no run, and
    /// queues their schedules, which name `launcher_endpoint` when the launcher API is on.
    /// Returns how many runs were dispatched.
    pub fn dispatch(&self, launcher_endpoint: Option<&str>) -> Result<usize, BackendError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let queued: Vec<(String, String)> = {
                let mut stmt = tx
                    .prepare("SELECT id, pool_id FROM runs WHERE state = 'queued' ORDER BY seq")
                    .map_err(db)?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(db)?
                    .collect::<Result<_, _>>()
                    .map_err(db)?
            };
            let mut dispatched = 0;
            for (run_id, pool_id) in queued {
                let worker: Option<String> = tx
                    .query_row(
                        "SELECT w.id FROM workers w
                         WHERE w.pool_id = ?1 AND w.deregistered_at IS NULL AND w.state = 'IDLE'
                           AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.pool_id = w.pool_id
                               AND r.worker_id = w.id
                               AND r.state IN ('dispatched', 'accepted', 'running'))
                         ORDER BY COALESCE(w.last_assigned_at, ''), w.registered_at
                         LIMIT 1",
                        [&pool_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db)?;
                let Some(worker_id) = worker else { continue };
                let mut schedule = load_schedule(&tx, &run_id)?;
                schedule.launcher_endpoint = launcher_endpoint.map(str::to_string);
                let (Ok(pool), Ok(worker)) =
                    (Ulid::from_string(&pool_id), Ulid::from_string(&worker_id))
                else {
                    continue;
                };
                let message = Message::for_worker(worker, Body::RunSchedule(schedule));
                enqueue(&tx, pool, &message, Some(&run_id))?;
                tx.execute(
                    "UPDATE runs SET state = ?2, worker_id = ?3, updated_at = ?4 WHERE id = ?1",
                    params![run_id, run_state::DISPATCHED, worker_id, now()],
                )
                .map_err(db)?;
                tx.execute(
                    "UPDATE workers SET last_assigned_at = ?3 WHERE pool_id = ?1 AND id = ?2",
                    params![pool_id, worker_id, now()],
                )
                .map_err(db)?;
                event(
                    &tx,
                    Some(&pool_id),
                    Some(&run_id),
                    Some(&worker_id),
                    "dispatched",
                    &serde_json::json!({"messageId": message.id.to_string()}),
                )?;
                dispatched += 1;
            }
            tx.commit().map_err(db)?;
            Ok(dispatched)
        })
    }
}

/// Applies `message` unless its id was applied before; inside the caller's transaction.
fn apply_once(
    tx: &Transaction<'_>,
    pool: Ulid,
    message: &Message,
) -> Result<Applied, BackendError> {
    let pool_id = pool.to_string();
    let known: Option<String> = tx
        .query_row("SELECT id FROM pools WHERE id = ?1", [&pool_id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db)?;
    if known.is_none() {
        return Ok(Applied::UnknownPool);
    }
    let inserted = tx
        .execute(
            "INSERT OR IGNORE INTO inbox (message_id, received_at) VALUES (?1, ?2)",
            params![message.id.to_string(), now()],
        )
        .map_err(db)?;
    if inserted == 0 {
        return Ok(Applied::Duplicate);
    }
    apply(tx, pool, message)?;
    Ok(Applied::Applied)
}

fn load_schedule(tx: &Transaction<'_>, run_id: &str) -> Result<RunSchedule, BackendError> {
    tx.query_row(
        "SELECT stage, attempt, runner_image, launcher_image, run_timeout_seconds, metadata
         FROM runs WHERE id = ?1",
        [run_id],
        |r| {
            let metadata: String = r.get(5)?;
            let timeout: Option<i64> = r.get(4)?;
            Ok(RunSchedule {
                run_id: run_id.to_string(),
                stage: r.get(0)?,
                attempt: r.get(1)?,
                runner_image: r.get(2)?,
                launcher_image: r.get(3)?,
                launcher_endpoint: None,
                run_timeout_seconds: timeout.and_then(|t| u64::try_from(t).ok()),
                logs_timeout_seconds: None,
                metadata: serde_json::from_str(&metadata).unwrap_or_default(),
            })
        },
    )
    .map_err(db)
}

fn load_run(
    tx: &Transaction<'_>,
    pool_id: &str,
    run_id: &str,
) -> Result<Option<RunRow>, BackendError> {
    tx.query_row(
        "SELECT state, worker_id, stage, attempt, kind, workspace_sha256 IS NOT NULL
         FROM runs WHERE id = ?1 AND pool_id = ?2",
        params![run_id, pool_id],
        |r| {
            Ok(RunRow {
                state: r.get(0)?,
                worker_id: r.get(1)?,
                stage: r.get(2)?,
                attempt: r.get(3)?,
                kind: r.get(4)?,
                has_workspace: r.get(5)?,
            })
        },
    )
    .optional()
    .map_err(db)
}

fn apply(tx: &Transaction<'_>, pool: Ulid, message: &Message) -> Result<(), BackendError> {
    let pool_id = pool.to_string();
    let worker_id = message.worker.map(|w| w.to_string());
    let worker = worker_id.as_deref();
    let body = serde_json::to_value(&message.body).unwrap_or_default();
    let detail = body.get("body").cloned().unwrap_or_default();
    let kind = message.body.kind();
    let run_id = message.body.run().map(|r| r.run_id);
    let at = now();

    match &message.body {
        Body::WorkerRegister(register) => {
            if let Some(worker_id) = worker {
                tx.execute(
                    "INSERT INTO workers (pool_id, id, name, public_key, state, registered_at, last_seen)
                     VALUES (?1, ?2, ?3, ?4, 'IDLE', ?5, ?5)
                     ON CONFLICT (pool_id, id) DO UPDATE SET
                       name = excluded.name, public_key = excluded.public_key,
                       last_seen = excluded.last_seen, deregistered_at = NULL",
                    params![pool_id, worker_id, register.name, register.public_key, at],
                )
                .map_err(db)?;
            }
            if let Some(w) = message.worker {
                enqueue(
                    tx,
                    pool,
                    &Message::for_worker(w, Body::WorkerRegistered(WorkerRegistered {})),
                    None,
                )?;
            }
            let detail = serde_json::json!({"name": register.name});
            event(tx, Some(&pool_id), None, worker, kind, &detail)?;
        }
        Body::WorkerDeregister(_) => {
            tx.execute(
                "UPDATE workers SET deregistered_at = ?3, last_seen = ?3 WHERE pool_id = ?1 AND id = ?2",
                params![pool_id, worker, at],
            )
            .map_err(db)?;
            fail_active_runs(
                tx,
                &pool_id,
                worker,
                None,
                "the worker deregistered before reporting the run's end",
            )?;
            if let Some(w) = message.worker {
                enqueue(
                    tx,
                    pool,
                    &Message::for_worker(w, Body::WorkerDeregistered(WorkerDeregistered {})),
                    None,
                )?;
            }
            event(tx, Some(&pool_id), None, worker, kind, &detail)?;
        }
        Body::WorkerState(state) => {
            let current = state.current_run.as_ref().map(|r| r.run_id.clone());
            let previous: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT state, current_run FROM workers WHERE pool_id = ?1 AND id = ?2",
                    params![pool_id, worker],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            let Some(previous) = previous else {
                event(
                    tx,
                    Some(&pool_id),
                    None,
                    worker,
                    "worker.state.unregistered",
                    &detail,
                )?;
                return Ok(());
            };
            tx.execute(
                "UPDATE workers SET state = ?3, current_run = ?4, last_seen = ?5 WHERE pool_id = ?1 AND id = ?2",
                params![pool_id, worker, state.state.as_str(), current, at],
            )
            .map_err(db)?;
            if previous != (state.state.as_str().to_string(), current.clone()) {
                event(
                    tx,
                    Some(&pool_id),
                    current.as_deref(),
                    worker,
                    kind,
                    &detail,
                )?;
            }
            reconcile_worker(
                tx,
                pool,
                &pool_id,
                message,
                state.state,
                state.current_run.as_ref(),
            )?;
        }
        Body::RunAccepted(_) | Body::PodCreated(_) | Body::RunDenied(_) | Body::RunFinished(_) => {
            let Some(run) = message.body.run() else {
                return Ok(());
            };
            let row = load_run(tx, &pool_id, &run.run_id)?;
            let current = row.as_ref().is_some_and(|row| {
                row.worker_id.as_deref() == worker
                    && row.stage == run.stage
                    && row.attempt == run.attempt
                    && run_state::ACTIVE.contains(&row.state.as_str())
            });
            if !current {
                // A late or foreign report: keep it in the history, change nothing.
                event(
                    tx,
                    Some(&pool_id),
                    run_id.as_deref(),
                    worker,
                    &format!("{kind}.ignored"),
                    &detail,
                )?;
                return Ok(());
            }
            match &message.body {
                Body::RunAccepted(_) => {
                    set_run_state(tx, &run.run_id, run_state::ACCEPTED, None, "")?;
                }
                Body::PodCreated(created) => {
                    tx.execute(
                        "UPDATE runs SET state = ?2, pod_name = ?3, updated_at = ?4 WHERE id = ?1",
                        params![run.run_id, run_state::RUNNING, created.pod_name, at],
                    )
                    .map_err(db)?;
                }
                Body::RunDenied(denied) => {
                    let reasons: Vec<String> = denied
                        .reasons
                        .iter()
                        .map(|r| format!("{}: {}", r.hook, r.message))
                        .collect();
                    set_run_state(
                        tx,
                        &run.run_id,
                        run_state::DENIED,
                        None,
                        &reasons.join("; "),
                    )?;
                }
                Body::RunFinished(finished) => {
                    let row = row.as_ref().ok_or_else(|| {
                        BackendError::Store(format!("run {} vanished", run.run_id))
                    })?;
                    let kind = row.kind.as_deref().and_then(stages::kind_from_name);
                    match stages::after_stage(kind, &row.stage, finished.outcome, row.has_workspace)
                    {
                        Next::AwaitConfirmation => set_run_state(
                            tx,
                            &run.run_id,
                            run_state::UNCONFIRMED,
                            None,
                            "planned: confirm the run to apply the plan",
                        )?,
                        Next::End {
                            state,
                            cause,
                            message,
                        } => {
                            let cause = finished.cause.map(cause_name).or(cause.map(String::from));
                            let message = message.unwrap_or_else(|| finished.message.clone());
                            set_run_state(tx, &run.run_id, state, cause.as_deref(), &message)?;
                        }
                    }
                }
                _ => {}
            }
            event(tx, Some(&pool_id), run_id.as_deref(), worker, kind, &detail)?;
        }
        Body::PoolStatus(_) => {
            event(tx, Some(&pool_id), None, None, kind, &detail)?;
        }
        // Backend-to-pool messages never reach here: the codec refuses them on writeonly
        // topics.
        Body::WorkerRegistered(_)
        | Body::WorkerDeregistered(_)
        | Body::RunSchedule(_)
        | Body::RunStop(_)
        | Body::PoolDemand(_) => {
            event(
                tx,
                Some(&pool_id),
                run_id.as_deref(),
                worker,
                &format!("{kind}.ignored"),
                &detail,
            )?;
        }
    }
    if let Some(worker) = worker {
        tx.execute(
            "UPDATE workers SET last_seen = ?3 WHERE pool_id = ?1 AND id = ?2",
            params![pool_id, worker, at],
        )
        .map_err(db)?;
    }
    Ok(())
}

/// A worker's report disagrees with the queue: no lost and no phantom runs.
/// - it reports no run (or another run) while a run it *accepted* is still open here: that
///   run is lost; fail it;
/// - it reports a run this backend considers finished or does not know: ask it to stop.
///
/// A run merely *dispatched* is left alone: its schedule may still be on its way (messages
/// on one topic arrive in order, but the schedule travels on the other topic).
fn reconcile_worker(
    tx: &Transaction<'_>,
    pool: Ulid,
    pool_id: &str,
    message: &Message,
    state: WorkerStatus,
    reported: Option<&RunRef>,
) -> Result<(), BackendError> {
    let worker = message.worker.map(|w| w.to_string());
    let reason = format!(
        "the worker reported {} without reporting the end of this run",
        match reported {
            Some(run) => format!("{} with run {}", state.as_str(), run.run_id),
            None => state.as_str().to_string(),
        }
    );
    fail_active_runs(tx, pool_id, worker.as_deref(), reported, &reason)?;
    if let (Some(run), Some(w)) = (reported, message.worker) {
        let row = load_run(tx, pool_id, &run.run_id)?;
        let ours = row.as_ref().is_some_and(|row| {
            run_state::ACTIVE.contains(&row.state.as_str())
                && row.worker_id.as_deref() == worker.as_deref()
        });
        if !ours {
            let stop = Message::for_worker(
                w,
                Body::RunStop(RunStop {
                    run_id: run.run_id.clone(),
                    stage: Some(run.stage.clone()),
                    reason: "the backend has no open run by that id on this worker".into(),
                }),
            );
            enqueue(tx, pool, &stop, Some(&run.run_id))?;
            event(
                tx,
                Some(pool_id),
                Some(&run.run_id),
                worker.as_deref(),
                "phantom.stop.requested",
                &serde_json::json!({"state": row.map(|r| r.state)}),
            )?;
        }
    }
    Ok(())
}

/// Fails the accepted or running runs of `worker` other than `keep`.
fn fail_active_runs(
    tx: &Transaction<'_>,
    pool_id: &str,
    worker: Option<&str>,
    keep: Option<&RunRef>,
    reason: &str,
) -> Result<(), BackendError> {
    let open: Vec<String> = {
        let mut stmt = tx
            .prepare(
                "SELECT id FROM runs WHERE pool_id = ?1 AND worker_id = ?2
                   AND state IN ('accepted', 'running')",
            )
            .map_err(db)?;
        stmt.query_map(params![pool_id, worker], |r| r.get(0))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
    };
    for run_id in open {
        if keep.is_some_and(|k| k.run_id == run_id) {
            continue;
        }
        set_run_state(tx, &run_id, run_state::FAILED, Some("WorkerLost"), reason)?;
        event(
            tx,
            Some(pool_id),
            Some(&run_id),
            worker,
            "lost",
            &serde_json::json!({"reason": reason}),
        )?;
    }
    Ok(())
}

fn cause_name(cause: FailureCause) -> String {
    serde_json::to_value(cause)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{cause:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WorkerRegister;

    fn register(worker: Ulid) -> Message {
        Message::for_worker(
            worker,
            Body::WorkerRegister(WorkerRegister {
                name: format!("p-{}", worker.to_string().to_lowercase()),
                public_key: "key".into(),
                metadata: Default::default(),
            }),
        )
    }

    #[test]
    fn a_burst_is_applied_in_order_and_a_failing_message_is_rolled_back_alone() {
        let store = Store::open_in_memory().unwrap();
        let pool = Ulid::generate();
        store.insert_pool(pool, "p").unwrap();
        let [w1, w2, w3] = [Ulid::generate(), Ulid::generate(), Ulid::generate()];
        // The second worker's event cannot be written: its message fails half-way through,
        // after its worker row and its reply were written.
        store
            .with(|conn| {
                conn.execute_batch(&format!(
                    "CREATE TRIGGER refuse BEFORE INSERT ON events
                     WHEN NEW.worker_id = '{w2}' BEGIN SELECT RAISE(ABORT, 'injected'); END"
                ))
                .map_err(db)
            })
            .unwrap();
        let (first, second, third) = (register(w1), register(w2), register(w3));
        let burst = [
            (pool, &first),
            (pool, &second),
            (pool, &third),
            (pool, &first),
            (Ulid::generate(), &third),
        ];
        let results = store.apply_inbound_all(&burst).unwrap();
        let outcome: Vec<_> = results.iter().map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(
            outcome,
            [
                Some(Applied::Applied),
                None,
                Some(Applied::Applied),
                Some(Applied::Duplicate),
                Some(Applied::UnknownPool),
            ]
        );
        let workers: Vec<String> = store
            .workers(None)
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(workers.len(), 2, "{workers:?}");
        assert!(!workers.contains(&w2.to_string()), "{workers:?}");
        let replies = store.unsent(100).unwrap();
        assert_eq!(replies.len(), 2, "only the applied messages were answered");

        // Nothing of the failed message stayed, not even its id: its redelivery applies it.
        store
            .with(|conn| conn.execute_batch("DROP TRIGGER refuse").map_err(db))
            .unwrap();
        assert_eq!(
            store.apply_inbound(pool, &second).unwrap(),
            Applied::Applied
        );
        assert_eq!(store.workers(None).unwrap().len(), 3);
    }
}
