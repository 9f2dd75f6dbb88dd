//! The durable state of the reference backend, in SQLite: pools, workers, runs, every event,
//! an outbox of messages to publish and an inbox of message ids already applied.
//!
//! Every change happens in one transaction together with the messages it causes (the outbox)
//! and the event that records it, so a crash at any point leaves a consistent queue: a run is
//! dispatched at most once, and a dispatched schedule is published at least once (re-sent
//! after a restart, under the same message id, until the worker accepts it).

mod apply;
mod views;

pub use apply::Applied;
pub use views::{
    EventView, OutboxEntry, PoolGauges, PoolView, RunView, SubmitRun, WorkerView, run_state,
};

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use ulid::Ulid;

use super::BackendError;
use crate::protocol::{Body, Message, RunStop};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    pool_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    public_key TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    current_run TEXT,
    registered_at TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    last_assigned_at TEXT,
    deregistered_at TEXT,
    PRIMARY KEY (pool_id, id)
);
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    pool_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    runner_image TEXT,
    launcher_image TEXT NOT NULL,
    run_timeout_seconds INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    worker_id TEXT,
    pod_name TEXT,
    cause TEXT,
    message TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, pool_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    pool_id TEXT,
    run_id TEXT,
    worker_id TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pool_id TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    run_id TEXT,
    payload TEXT NOT NULL,
    sent_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent_at);
CREATE TABLE IF NOT EXISTS inbox (
    message_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL
);
"#;

/// The SQLite store. All methods are blocking; call them from `spawn_blocking`.
pub struct Store {
    conn: Mutex<Connection>,
}

pub(crate) fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn db(err: rusqlite::Error) -> BackendError {
    BackendError::Store(err.to_string())
}

impl Store {
    /// Opens the database at `path`, creating and migrating it.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        let conn = Connection::open(path).map_err(db)?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, BackendError> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(conn: Connection) -> Result<Self, BackendError> {
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        // WAL lets `pool create` and `serve` share the file; FULL sync makes a committed
        // dispatch survive a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    /// Records a new pool.
    pub fn insert_pool(&self, id: Ulid, name: &str) -> Result<(), BackendError> {
        self.with(|conn| {
            let exists: Option<String> = conn
                .query_row("SELECT id FROM pools WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(db)?;
            if let Some(existing) = exists {
                return Err(BackendError::Input(format!(
                    "a pool named {name:?} already exists ({existing})"
                )));
            }
            let tx = conn.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO pools (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![id.to_string(), name, now()],
            )
            .map_err(db)?;
            event(
                &tx,
                Some(&id.to_string()),
                None,
                None,
                "pool.created",
                &serde_json::json!({"name": name}),
            )?;
            tx.commit().map_err(db)
        })
    }

    /// All pools.
    pub fn pools(&self) -> Result<Vec<PoolView>, BackendError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT id, name, created_at FROM pools ORDER BY created_at")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(PoolView {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    /// A pool by name or ULID.
    pub fn find_pool(&self, name_or_id: &str) -> Result<Option<PoolView>, BackendError> {
        Ok(self
            .pools()?
            .into_iter()
            .find(|p| p.name == name_or_id || p.id.eq_ignore_ascii_case(name_or_id)))
    }

    /// Queues a run.
    pub fn submit_run(
        &self,
        request: &SubmitRun,
        default_launcher_image: &str,
    ) -> Result<RunView, BackendError> {
        let pool = self
            .find_pool(&request.pool)?
            .ok_or_else(|| BackendError::NotFound(format!("no pool named {:?}", request.pool)))?;
        let stage = request
            .stage
            .clone()
            .unwrap_or_else(|| "preparing".to_string());
        let id = Ulid::generate().to_string();
        let schedule = crate::protocol::RunSchedule {
            run_id: id.clone(),
            stage: stage.clone(),
            attempt: 1,
            runner_image: request.runner_image.clone(),
            launcher_image: request
                .launcher_image
                .clone()
                .unwrap_or_else(|| default_launcher_image.to_string()),
            run_timeout_seconds: request.run_timeout_seconds,
            logs_timeout_seconds: None,
            metadata: request.metadata.clone(),
        };
        // The same checks a worker will apply, so a bad run is refused here, not dropped there.
        Body::RunSchedule(schedule.clone())
            .validate()
            .map_err(|(field, reason)| BackendError::Input(format!("{field}: {reason}")))?;
        let metadata = serde_json::to_string(&schedule.metadata)
            .map_err(|err| BackendError::Input(err.to_string()))?;
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let at = now();
            tx.execute(
                "INSERT INTO runs (id, pool_id, stage, attempt, runner_image, launcher_image,
                   run_timeout_seconds, metadata, state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                params![
                    id,
                    pool.id,
                    stage,
                    schedule.runner_image,
                    schedule.launcher_image,
                    schedule.run_timeout_seconds.map(|s| s as i64),
                    metadata,
                    run_state::QUEUED,
                    at,
                ],
            )
            .map_err(db)?;
            event(
                &tx,
                Some(&pool.id),
                Some(&id),
                None,
                "queued",
                &serde_json::to_value(request).unwrap_or_default(),
            )?;
            tx.commit().map_err(db)
        })?;
        self.run(&id)?
            .ok_or_else(|| BackendError::Store(format!("run {id} vanished")))
    }

    /// One run with its events.
    pub fn run(&self, id: &str) -> Result<Option<RunView>, BackendError> {
        Ok(self.query_runs(Some(id), None)?.into_iter().next())
    }

    /// Runs (of one pool, by name or ULID), newest first, with their events.
    pub fn runs(&self, pool: Option<&str>) -> Result<Vec<RunView>, BackendError> {
        let pool_id = match pool {
            Some(pool) => Some(
                self.find_pool(pool)?
                    .ok_or_else(|| BackendError::NotFound(format!("no pool named {pool:?}")))?
                    .id,
            ),
            None => None,
        };
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
                            worker_id, pod_name, cause, message, created_at, updated_at
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

    /// Workers (of one pool, by name or ULID), including deregistered ones.
    pub fn workers(&self, pool: Option<&str>) -> Result<Vec<WorkerView>, BackendError> {
        let pool_id = match pool {
            Some(pool) => Some(
                self.find_pool(pool)?
                    .ok_or_else(|| BackendError::NotFound(format!("no pool named {pool:?}")))?
                    .id,
            ),
            None => None,
        };
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT pool_id, id, name, state, current_run, registered_at, last_seen,
                            deregistered_at
                     FROM workers WHERE (?1 IS NULL OR pool_id = ?1)
                     ORDER BY registered_at, id",
                )
                .map_err(db)?;
            stmt.query_map([pool_id], |r| {
                Ok(WorkerView {
                    pool_id: r.get(0)?,
                    id: r.get(1)?,
                    name: r.get(2)?,
                    state: r.get(3)?,
                    current_run: r.get(4)?,
                    registered_at: r.get(5)?,
                    last_seen: r.get(6)?,
                    deregistered_at: r.get(7)?,
                })
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
        })
    }

    /// Asks for a run to stop: a queued run stops at once; a dispatched or running one gets a
    /// `run.stop` message to its worker and stops when the worker reports it.
    pub fn request_stop(&self, run_id: &str, reason: &str) -> Result<RunView, BackendError> {
        let run = self
            .run(run_id)?
            .ok_or_else(|| BackendError::NotFound(format!("no run {run_id}")))?;
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let detail = serde_json::json!({"reason": reason});
            if run.state == run_state::QUEUED {
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
            tx.commit().map_err(db)
        })?;
        self.run(run_id)?
            .ok_or_else(|| BackendError::Store(format!("run {run_id} vanished")))
    }

    /// Messages not yet handed to the broker, oldest first.
    pub fn unsent(&self, limit: usize) -> Result<Vec<OutboxEntry>, BackendError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT seq, pool_id, payload FROM outbox WHERE sent_at IS NULL
                     ORDER BY seq LIMIT ?1",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            rows.into_iter()
                .map(|(seq, pool, payload)| {
                    let pool_id = Ulid::from_string(&pool)
                        .map_err(|err| BackendError::Store(format!("outbox {seq}: {err}")))?;
                    let message = serde_json::from_str(&payload)
                        .map_err(|err| BackendError::Store(format!("outbox {seq}: {err}")))?;
                    Ok(OutboxEntry {
                        seq,
                        pool_id,
                        message,
                    })
                })
                .collect()
        })
    }

    /// Marks an outbox entry as handed to the broker.
    pub fn mark_sent(&self, seq: i64) -> Result<(), BackendError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET sent_at = ?2 WHERE seq = ?1",
                params![seq, now()],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    /// After a restart, what may have died in the broker client's memory with the previous
    /// process is sent again, with its original message id (a worker that got the first copy
    /// de-duplicates it): schedules whose run the worker has not accepted yet, and stop
    /// requests whose run has not ended yet.
    pub fn resend_unsettled(&self) -> Result<usize, BackendError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET sent_at = NULL
                 WHERE sent_at IS NOT NULL AND (
                   (kind = 'run.schedule'
                     AND run_id IN (SELECT id FROM runs WHERE state = ?1))
                   OR (kind = 'run.stop'
                     AND run_id IN (SELECT id FROM runs WHERE state IN (?1, ?2, ?3))))",
                run_state::ACTIVE,
            )
            .map_err(db)
        })
    }

    /// Numbers for `/metrics`, per pool.
    pub fn gauges(&self) -> Result<Vec<PoolGauges>, BackendError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT p.id, p.name,
                       (SELECT COUNT(*) FROM runs r WHERE r.pool_id = p.id AND r.state = 'queued'),
                       (SELECT COUNT(*) FROM workers w WHERE w.pool_id = p.id
                          AND w.deregistered_at IS NULL),
                       (SELECT COUNT(*) FROM workers w WHERE w.pool_id = p.id
                          AND w.deregistered_at IS NULL
                          AND (w.state IN ('BUSY', 'DRAINING') OR EXISTS (
                               SELECT 1 FROM runs r WHERE r.pool_id = w.pool_id
                                 AND r.worker_id = w.id
                                 AND r.state IN ('dispatched', 'accepted', 'running'))))
                     FROM pools p ORDER BY p.name",
                )
                .map_err(db)?;
            stmt.query_map([], |r| {
                Ok(PoolGauges {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    pending: r.get(2)?,
                    workers: r.get(3)?,
                    busy: r.get(4)?,
                })
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
        })
    }
}

/// Records an event.
fn event(
    tx: &rusqlite::Transaction<'_>,
    pool_id: Option<&str>,
    run_id: Option<&str>,
    worker_id: Option<&str>,
    kind: &str,
    detail: &serde_json::Value,
) -> Result<(), BackendError> {
    tx.execute(
        "INSERT INTO events (at, pool_id, run_id, worker_id, kind, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![now(), pool_id, run_id, worker_id, kind, detail.to_string()],
    )
    .map_err(db)?;
    Ok(())
}

/// Puts a message into the outbox.
fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    pool: Ulid,
    message: &Message,
    run_id: Option<&str>,
) -> Result<(), BackendError> {
    let payload = String::from_utf8(crate::protocol::encode(message))
        .map_err(|err| BackendError::Store(err.to_string()))?;
    tx.execute(
        "INSERT INTO outbox (pool_id, message_id, kind, run_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            pool.to_string(),
            message.id.to_string(),
            message.body.kind(),
            run_id,
            payload
        ],
    )
    .map_err(db)?;
    Ok(())
}

fn set_run_state(
    tx: &rusqlite::Transaction<'_>,
    run_id: &str,
    state: &str,
    cause: Option<&str>,
    message: &str,
) -> Result<(), BackendError> {
    tx.execute(
        "UPDATE runs SET state = ?2, cause = COALESCE(?3, cause), message = ?4, updated_at = ?5
         WHERE id = ?1",
        params![run_id, state, cause, message, now()],
    )
    .map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RunRef, WorkerRegister};

    #[test]
    fn after_a_restart_unsettled_schedules_and_stops_are_sent_again() {
        let store = Store::open_in_memory().unwrap();
        let (pool, worker) = (Ulid::generate(), Ulid::generate());
        store.insert_pool(pool, "p").unwrap();
        let register = Body::WorkerRegister(WorkerRegister {
            name: format!("p-{}", worker.to_string().to_lowercase()),
            public_key: "key".into(),
            metadata: Default::default(),
        });
        store
            .apply_inbound(pool, &Message::for_worker(worker, register))
            .unwrap();
        let send_all = || {
            for entry in store.unsent(100).unwrap() {
                store.mark_sent(entry.seq).unwrap();
            }
        };
        send_all();
        let request = SubmitRun {
            pool: "p".into(),
            runner_image: Some("alpine".into()),
            ..SubmitRun::default()
        };
        let run = store.submit_run(&request, "launcher").unwrap();
        assert_eq!(store.dispatch().unwrap(), 1);
        send_all();
        // The schedule was handed to the broker client, which died with the process.
        assert_eq!(store.resend_unsettled().unwrap(), 1);
        let kinds = |store: &Store| -> Vec<&'static str> {
            store
                .unsent(100)
                .unwrap()
                .iter()
                .map(|e| e.message.body.kind())
                .collect()
        };
        assert_eq!(kinds(&store), ["run.schedule"]);
        send_all();

        let accepted = Body::RunAccepted(RunRef::new(&run.id, "preparing", 1));
        store
            .apply_inbound(pool, &Message::for_worker(worker, accepted))
            .unwrap();
        store.request_stop(&run.id, "by hand").unwrap();
        send_all();
        // Accepted: the schedule is settled; the stop is not until the run ends.
        assert_eq!(store.resend_unsettled().unwrap(), 1);
        assert_eq!(kinds(&store), ["run.stop"]);
    }
}
