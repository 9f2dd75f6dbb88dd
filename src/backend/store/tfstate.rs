//! A stack's state, kept between runs with every version, and its lock, with the semantics
//! of OpenTofu's `http` backend:
//!
//! - `LOCK` takes the lock with OpenTofu's lock info (a JSON object with its `ID`); while
//!   another holds it the answer is the holder's lock info (HTTP 423);
//! - a write (`POST`, `DELETE`) while the state is locked must name the lock (`?ID=`);
//!   a write that names a lock nobody holds is refused (the lock was lost);
//! - `UNLOCK` with the holder's lock info releases it.
//!
//! A lock belongs to the run stage attempt that took it and is released when that stage ends
//! (see [`release_locks_of`]), so a killed Pod never leaves a stack locked.

use rusqlite::{OptionalExtension as _, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Store, db, event, now};
use crate::backend::BackendError;
use crate::backend::blobs::BlobRef;

/// What a lock or a write met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// Done.
    Done,
    /// Another lock holds the state: its lock info JSON.
    HeldBy(String),
    /// The request names lock `id`, but the state is not locked.
    NotLocked { id: String },
}

/// A state written: its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    pub outcome: LockOutcome,
    pub version: Option<i64>,
}

/// One stored version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateVersionView {
    pub version: i64,
    pub sha256: String,
    pub size: u64,
    /// OpenTofu's `serial` and `lineage`, when the state has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    /// The run stage that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub created_at: String,
}

/// Who takes a lock or writes: a stage attempt of one of the stack's runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder<'a> {
    pub run_id: &'a str,
    pub stage: &'a str,
    pub attempt: u32,
}

struct Lock {
    id: Option<String>,
    info: Option<String>,
    pool_id: String,
}

fn lock_of(tx: &Transaction<'_>, stack: &str) -> Result<Lock, BackendError> {
    tx.query_row(
        "SELECT lock_id, lock_info, pool_id FROM stacks WHERE name = ?1",
        [stack],
        |r| {
            Ok(Lock {
                id: r.get(0)?,
                info: r.get(1)?,
                pool_id: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(db)?
    .ok_or_else(|| BackendError::NotFound(format!("no stack named {stack:?}")))
}

/// Whether a write naming `id` (or none) may go ahead under `lock`.
fn write_allowed(lock: &Lock, id: Option<&str>) -> LockOutcome {
    match (&lock.id, id) {
        (Some(held), Some(id)) if held == id => LockOutcome::Done,
        (Some(_), _) => LockOutcome::HeldBy(lock.info.clone().unwrap_or_default()),
        (None, Some(id)) => LockOutcome::NotLocked { id: id.to_string() },
        (None, None) => LockOutcome::Done,
    }
}

/// Releases every lock held by a stage of `run_id`: called when the run leaves a running
/// stage, in the same transaction.
pub(super) fn release_locks_of(tx: &Transaction<'_>, run_id: &str) -> Result<(), BackendError> {
    let held: Vec<(String, String, Option<String>)> = {
        let mut stmt = tx
            .prepare("SELECT name, pool_id, lock_id FROM stacks WHERE lock_run = ?1")
            .map_err(db)?;
        stmt.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
    };
    for (stack, pool_id, lock_id) in held {
        clear_lock(tx, &stack)?;
        event(
            tx,
            Some(&pool_id),
            Some(run_id),
            None,
            "state.unlocked",
            &serde_json::json!({"stack": stack, "lockId": lock_id,
                "reason": "the stage holding the lock ended"}),
        )?;
    }
    Ok(())
}

/// Records a change of the lock or the state as an event of the holder's run and commits it.
fn changed(
    tx: Transaction<'_>,
    lock: &Lock,
    holder: &Holder<'_>,
    kind: &str,
    detail: serde_json::Value,
) -> Result<LockOutcome, BackendError> {
    event(
        &tx,
        Some(&lock.pool_id),
        Some(holder.run_id),
        None,
        kind,
        &detail,
    )?;
    tx.commit().map_err(db)?;
    Ok(LockOutcome::Done)
}

fn clear_lock(tx: &Transaction<'_>, stack: &str) -> Result<(), BackendError> {
    tx.execute(
        "UPDATE stacks SET lock_id = NULL, lock_info = NULL, lock_run = NULL, lock_stage = NULL,
           lock_attempt = NULL WHERE name = ?1",
        [stack],
    )
    .map_err(db)?;
    Ok(())
}

impl Store {
    /// Takes the lock for `holder`, with OpenTofu's lock `info` (whose `ID` is `id`).
    pub fn lock_state(
        &self,
        stack: &str,
        id: &str,
        info: &str,
        holder: &Holder<'_>,
    ) -> Result<LockOutcome, BackendError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let lock = lock_of(&tx, stack)?;
            match &lock.id {
                Some(held) if held == id => return Ok(LockOutcome::Done),
                Some(_) => return Ok(LockOutcome::HeldBy(lock.info.unwrap_or_default())),
                None => {}
            }
            tx.execute(
                "UPDATE stacks SET lock_id = ?2, lock_info = ?3, lock_run = ?4, lock_stage = ?5,
                   lock_attempt = ?6 WHERE name = ?1",
                params![stack, id, info, holder.run_id, holder.stage, holder.attempt],
            )
            .map_err(db)?;
            changed(
                tx,
                &lock,
                holder,
                "state.locked",
                serde_json::json!({"stack": stack, "stage": holder.stage, "lockId": id}),
            )
        })
    }

    /// Releases the lock `id` (`None`: the request gave no lock info). Releasing an unlocked
    /// state changes nothing.
    pub fn unlock_state(
        &self,
        stack: &str,
        id: Option<&str>,
        holder: &Holder<'_>,
    ) -> Result<LockOutcome, BackendError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let lock = lock_of(&tx, stack)?;
            match (&lock.id, id) {
                (None, _) => return Ok(LockOutcome::Done),
                (Some(held), Some(id)) if held == id => {}
                (Some(_), _) => return Ok(LockOutcome::HeldBy(lock.info.unwrap_or_default())),
            }
            clear_lock(&tx, stack)?;
            changed(
                tx,
                &lock,
                holder,
                "state.unlocked",
                serde_json::json!({"stack": stack, "stage": holder.stage, "lockId": id}),
            )
        })
    }

    /// Records `blob` as the stack's new current state, if the lock allows it.
    pub fn write_state(
        &self,
        stack: &str,
        id: Option<&str>,
        blob: &BlobRef,
        (serial, lineage): (Option<i64>, Option<String>),
        holder: &Holder<'_>,
    ) -> Result<StateWrite, BackendError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let lock = lock_of(&tx, stack)?;
            let outcome = write_allowed(&lock, id);
            if outcome != LockOutcome::Done {
                return Ok(StateWrite {
                    outcome,
                    version: None,
                });
            }
            let version: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM state_versions WHERE stack = ?1",
                    [stack],
                    |r| r.get(0),
                )
                .map_err(db)?;
            tx.execute(
                "INSERT INTO state_versions (stack, version, sha256, size, serial, lineage, run_id,
                   stage, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    stack,
                    version,
                    blob.sha256,
                    blob.size as i64,
                    serial,
                    lineage,
                    holder.run_id,
                    holder.stage,
                    now()
                ],
            )
            .map_err(db)?;
            tx.execute(
                "UPDATE stacks SET state_version = ?2 WHERE name = ?1",
                params![stack, version],
            )
            .map_err(db)?;
            event(
                &tx,
                Some(&lock.pool_id),
                Some(holder.run_id),
                None,
                "state.written",
                &serde_json::json!({"stack": stack, "stage": holder.stage, "version": version,
                    "serial": serial}),
            )?;
            tx.commit().map_err(db)?;
            Ok(StateWrite {
                outcome,
                version: Some(version),
            })
        })
    }

    /// Forgets the current state (`DELETE`); the versions stay.
    pub fn delete_state(
        &self,
        stack: &str,
        id: Option<&str>,
        holder: &Holder<'_>,
    ) -> Result<LockOutcome, BackendError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let lock = lock_of(&tx, stack)?;
            let outcome = write_allowed(&lock, id);
            if outcome != LockOutcome::Done {
                return Ok(outcome);
            }
            tx.execute(
                "UPDATE stacks SET state_version = NULL WHERE name = ?1",
                [stack],
            )
            .map_err(db)?;
            changed(
                tx,
                &lock,
                holder,
                "state.deleted",
                serde_json::json!({"stack": stack, "stage": holder.stage}),
            )
        })
    }

    /// The stack's state versions, oldest first.
    pub fn state_versions(&self, stack: &str) -> Result<Vec<StateVersionView>, BackendError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT version, sha256, size, serial, lineage, run_id, stage, created_at
                     FROM state_versions WHERE stack = ?1 ORDER BY version",
                )
                .map_err(db)?;
            stmt.query_map([stack], |r| {
                Ok(StateVersionView {
                    version: r.get(0)?,
                    sha256: r.get(1)?,
                    size: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                    serial: r.get(3)?,
                    lineage: r.get(4)?,
                    run_id: r.get(5)?,
                    stage: r.get(6)?,
                    created_at: r.get(7)?,
                })
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
        })
    }

    /// One version (`None`: the current one), if there is one.
    pub fn state_version(
        &self,
        stack: &str,
        version: Option<i64>,
    ) -> Result<Option<StateVersionView>, BackendError> {
        let stack_view = self
            .stack(stack)?
            .ok_or_else(|| BackendError::NotFound(format!("no stack named {stack:?}")))?;
        let Some(wanted) = version.or(stack_view.state_version) else {
            return Ok(None);
        };
        Ok(self
            .state_versions(stack)?
            .into_iter()
            .find(|v| v.version == wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::store::CreateStack;

    fn stack_store() -> Store {
        let store = Store::open_in_memory().unwrap();
        store.insert_pool(ulid::Ulid::generate(), "p").unwrap();
        let source = BlobRef {
            sha256: "ab".repeat(32),
            size: 1,
        };
        let request = CreateStack {
            name: "demo".into(),
            pool: "p".into(),
            source: source.sha256.clone(),
            tool: "tofu".into(),
            tool_version: "1.12.6".into(),
            ..CreateStack::default()
        };
        store.create_stack(&request, &source).unwrap();
        store
    }

    fn blob(n: u8) -> BlobRef {
        BlobRef {
            sha256: format!("{n:02x}").repeat(32),
            size: n as u64,
        }
    }

    const PLAN: Holder<'static> = Holder {
        run_id: "01HN37WC3MCNE3CY9HAHWRF06K",
        stage: "planning",
        attempt: 1,
    };
    const OTHER: Holder<'static> = Holder {
        run_id: "01HN37WC3MCNE3CY9HAHWRF06M",
        stage: "planning",
        attempt: 1,
    };

    #[test]
    fn a_lock_keeps_others_out_until_its_holder_releases_it() {
        let store = stack_store();
        let info = r#"{"ID":"a","Operation":"OperationTypePlan"}"#;
        assert_eq!(
            store.lock_state("demo", "a", info, &PLAN).unwrap(),
            LockOutcome::Done
        );
        assert_eq!(
            store.lock_state("demo", "a", info, &PLAN).unwrap(),
            LockOutcome::Done,
            "taking one's own lock again is fine (a retried LOCK)"
        );
        assert_eq!(
            store
                .lock_state("demo", "b", r#"{"ID":"b"}"#, &OTHER)
                .unwrap(),
            LockOutcome::HeldBy(info.into()),
            "the holder's lock info comes back"
        );
        let write = |id: Option<&str>, n| {
            store
                .write_state("demo", id, &blob(n), (Some(n as i64), None), &PLAN)
                .unwrap()
        };
        assert_eq!(write(None, 1).outcome, LockOutcome::HeldBy(info.into()));
        assert_eq!(
            write(Some("b"), 1).outcome,
            LockOutcome::HeldBy(info.into())
        );
        assert_eq!(write(Some("a"), 1).version, Some(1));
        assert_eq!(write(Some("a"), 2).version, Some(2));
        assert_eq!(
            store.unlock_state("demo", Some("b"), &OTHER).unwrap(),
            LockOutcome::HeldBy(info.into())
        );
        assert_eq!(
            store.unlock_state("demo", Some("a"), &PLAN).unwrap(),
            LockOutcome::Done
        );
        assert_eq!(
            write(Some("a"), 3).outcome,
            LockOutcome::NotLocked { id: "a".into() },
            "a write under a lock that is gone is refused"
        );
        assert_eq!(
            write(None, 3).version,
            Some(3),
            "unlocked writes are allowed"
        );

        let versions = store.state_versions("demo").unwrap();
        assert_eq!(
            versions.iter().map(|v| v.serial).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(3)]
        );
        assert_eq!(
            store.state_version("demo", None).unwrap().unwrap().version,
            3
        );
        assert_eq!(
            store
                .state_version("demo", Some(1))
                .unwrap()
                .unwrap()
                .sha256,
            blob(1).sha256
        );
        assert_eq!(
            store.delete_state("demo", None, &PLAN).unwrap(),
            LockOutcome::Done
        );
        assert_eq!(store.state_version("demo", None).unwrap(), None, "deleted");
        assert_eq!(
            store.state_versions("demo").unwrap().len(),
            3,
            "versions are kept"
        );
    }

    #[test]
    fn a_lock_is_released_when_its_stage_ends() {
        let store = stack_store();
        store
            .lock_state("demo", "a", r#"{"ID":"a"}"#, &PLAN)
            .unwrap();
        store
            .with(|conn| {
                let tx = conn.transaction().map_err(db)?;
                release_locks_of(&tx, PLAN.run_id)?;
                tx.commit().map_err(db)
            })
            .unwrap();
        assert_eq!(store.stack("demo").unwrap().unwrap().lock, None);
        assert_eq!(
            store
                .lock_state("demo", "b", r#"{"ID":"b"}"#, &OTHER)
                .unwrap(),
            LockOutcome::Done
        );
    }
}
