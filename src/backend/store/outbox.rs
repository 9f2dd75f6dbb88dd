//! The outbox: messages committed with the change that causes them, published while the
//! broker link is up, and sent again after a restart when they may have died unsent.

use rusqlite::params;
use ulid::Ulid;

use super::{OutboxEntry, Store, db, now, run_state};
use crate::backend::BackendError;

impl Store {
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
        self.mark_sent_all(&[seq])
    }

    /// Marks outbox entries as handed to the broker, in one transaction.
    pub fn mark_sent_all(&self, seqs: &[i64]) -> Result<(), BackendError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            {
                let mut update = tx
                    .prepare_cached("UPDATE outbox SET sent_at = ?2 WHERE seq = ?1")
                    .map_err(db)?;
                let at = now();
                for seq in seqs {
                    update.execute(params![seq, at]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
    }

    /// After a restart, what may have died in the broker client's memory with the previous
    /// process is sent again, with its original message id (a worker that got the first copy
    /// de-duplicates it): schedules whose run the worker has not accepted yet, and stop
    /// requests whose run has not ended yet. Only those of the run's current stage: a stack
    /// run's earlier stage is settled even though the run is not.
    pub fn resend_unsettled(&self) -> Result<usize, BackendError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET sent_at = NULL
                 WHERE sent_at IS NOT NULL AND (
                   (kind = 'run.schedule' AND EXISTS (SELECT 1 FROM runs r
                     WHERE r.id = outbox.run_id AND r.state = ?1
                       AND r.stage = json_extract(outbox.payload, '$.body.stage')))
                   OR (kind = 'run.stop' AND EXISTS (SELECT 1 FROM runs r
                     WHERE r.id = outbox.run_id AND r.state IN (?1, ?2, ?3)
                       AND r.stage = COALESCE(json_extract(outbox.payload, '$.body.stage'),
                                              r.stage))))",
                run_state::ACTIVE,
            )
            .map_err(db)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::SubmitRun;
    use super::*;
    use crate::protocol::{Body, Message, RunRef, WorkerRegister};

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
        assert_eq!(store.dispatch(None).unwrap(), 1);
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
