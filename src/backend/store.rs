//! The durable state of the reference backend, in SQLite: pools, workers, runs, every event,
//! an outbox of messages to publish and an inbox of message ids already applied.
//!
//! Every change happens in one transaction together with the messages it causes (the outbox)
//! and the event that records it, so a crash at any point leaves a consistent queue: a run is
//! dispatched at most once, and a dispatched schedule is published at least once (re-sent
//! after a restart, under the same message id, until the worker accepts it).

mod apply;
mod launcher;
mod logs;
mod outbox;
mod runs;
mod stacks;
mod tfstate;
mod views;

pub use apply::Applied;
pub use launcher::{StageAccess, StageDenied, WorkerKey};
pub use logs::{LogEntry, LogPage, StoredBatch};
pub use stacks::{CreateStack, StackView, ToolView, UpdateStack, check_tool};
pub use tfstate::{Holder, LockOutcome, StateVersionView, StateWrite};
pub use views::{
    EventView, OutboxEntry, PoolGauges, PoolView, RunView, SubmitRun, TriggerRun, WorkerView,
    run_state,
};

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use ulid::Ulid;

use super::BackendError;
use crate::protocol::Message;

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
CREATE TABLE IF NOT EXISTS stacks (
    name TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    source_size INTEGER NOT NULL,
    tool_name TEXT NOT NULL,
    tool_version TEXT NOT NULL,
    environment TEXT NOT NULL DEFAULT '{}',
    runner_image TEXT,
    managed_state INTEGER NOT NULL DEFAULT 1,
    state_version INTEGER,
    lock_id TEXT,
    lock_info TEXT,
    lock_run TEXT,
    lock_stage TEXT,
    lock_attempt INTEGER,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state_versions (
    stack TEXT NOT NULL,
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    serial INTEGER,
    lineage TEXT,
    run_id TEXT,
    stage TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (stack, version)
);
CREATE TABLE IF NOT EXISTS tools (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    added_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    part TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    stream TEXT NOT NULL,
    text TEXT NOT NULL,
    UNIQUE (run_id, stage, attempt, part, seq)
);
"#;

/// Columns added to `runs` after its first version (stack runs, stops, workspaces): added to
/// an existing database when it is opened.
const RUN_COLUMNS: [(&str, &str); 8] = [
    ("stack", "TEXT"),
    ("kind", "TEXT"),
    ("source_sha256", "TEXT"),
    ("source_size", "INTEGER"),
    ("workspace_sha256", "TEXT"),
    ("workspace_size", "INTEGER"),
    ("stop_requested_at", "TEXT"),
    ("stop_reason", "TEXT NOT NULL DEFAULT ''"),
];

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
        migrate_runs(&conn)?;
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

    /// A pool by name or ULID that must exist: refused as not found, naming it and where the
    /// pools are listed.
    pub fn pool(&self, name_or_id: &str) -> Result<PoolView, BackendError> {
        self.find_pool(name_or_id)?.ok_or_else(|| {
            BackendError::NotFound(format!(
                "no pool named {name_or_id:?}: `workerpool-backend pool list` shows the pools, `pool create` makes one"
            ))
        })
    }

    /// A pool by name or ULID.
    pub fn find_pool(&self, name_or_id: &str) -> Result<Option<PoolView>, BackendError> {
        Ok(self
            .pools()?
            .into_iter()
            .find(|p| p.name == name_or_id || p.id.eq_ignore_ascii_case(name_or_id)))
    }

    /// Workers (of one pool, by name or ULID), including deregistered ones.
    pub fn workers(&self, pool: Option<&str>) -> Result<Vec<WorkerView>, BackendError> {
        let pool_id = pool.map(|pool| self.pool(pool)).transpose()?.map(|p| p.id);
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

    /// Numbers for `/metrics`, per pool.
    pub fn gauges(&self) -> Result<Vec<PoolGauges>, BackendError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT p.id, p.name,
                       (SELECT COUNT(*) FROM runs r WHERE r.pool_id = p.id AND r.state = 'queued'),
                       (SELECT COUNT(*) FROM runs r WHERE r.pool_id = p.id
                          AND r.state = 'unconfirmed'),
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
            let mut pools = stmt
                .query_map([], |r| {
                    Ok(PoolGauges {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        pending: r.get(2)?,
                        awaiting_confirmation: r.get(3)?,
                        workers: r.get(4)?,
                        busy: r.get(5)?,
                        dispatched: Vec::new(),
                    })
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            let mut dispatched = conn
                .prepare(
                    "SELECT pool_id, worker_id FROM runs
                     WHERE state = 'dispatched' AND worker_id IS NOT NULL
                     ORDER BY pool_id, worker_id",
                )
                .map_err(db)?;
            let rows = dispatched
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(db)?;
            for row in rows {
                let (pool, worker) = row.map_err(db)?;
                if let Some(gauges) = pools.iter_mut().find(|g| g.id == pool) {
                    gauges.dispatched.push(worker);
                }
            }
            Ok(pools)
        })
    }
}

fn migrate_runs(conn: &Connection) -> Result<(), BackendError> {
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('runs')")
        .map_err(db)?
        .query_map([], |r| r.get(0))
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    for (name, kind) in RUN_COLUMNS {
        if !existing.iter().any(|e| e == name) {
            conn.execute_batch(&format!("ALTER TABLE runs ADD COLUMN {name} {kind}"))
                .map_err(db)?;
        }
    }
    Ok(())
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
    // A state lock cannot outlive the stage that took it: a Pod killed mid-apply would
    // otherwise leave the stack locked for every later run.
    if !run_state::ACTIVE.contains(&state) {
        tfstate::release_locks_of(tx, run_id)?;
    }
    Ok(())
}
