//! The log of every run stage attempt, in two parts (`init`, then `worker`), each line stored
//! once per `(part, seq)`.
//!
//! Lines are read back in the order a user reads a log: stage by stage (in the order they
//! ran), attempt, part, sequence. A follower pages with `after`, the arrival number of the
//! last line it has; each page is the next lines to arrive, sorted the same way. A line that
//! fills a gap after later lines arrived is therefore shown late to a follower, but in its
//! place to anyone who reads the log afresh.

use launcher_api::{LogBatch, LogPart, LogStream};
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use super::{Store, db, event, run_state};
use crate::backend::BackendError;

/// The most lines one page holds.
pub const PAGE_LINES: i64 = 5000;

/// What storing a batch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    /// Lines new to the store.
    pub stored: usize,
    /// Lines it had already (a resent batch).
    pub duplicates: usize,
    /// Sequence numbers skipped past the highest stored before: `(first, last)` missing.
    pub gaps: Vec<(u64, u64)>,
}

/// One stored line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Arrival number: what `after` refers to.
    pub id: i64,
    pub stage: String,
    pub attempt: u32,
    pub part: String,
    pub seq: u64,
    pub at: String,
    pub stream: String,
    pub text: String,
}

/// `GET /api/runs/{id}/logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogPage {
    pub lines: Vec<LogEntry>,
    /// The `after` of the next page.
    pub next: i64,
    /// The run's state when the page was read.
    pub state: String,
    /// The run had ended when the page was read, so no line can follow the ones up to `next`
    /// (the launcher API refuses lines for a stage that ended).
    pub ended: bool,
}

fn name<T: Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The name a log part has in the store.
pub fn part_name(part: LogPart) -> String {
    name(part)
}

fn stream_name(stream: LogStream) -> String {
    name(stream)
}

impl Store {
    /// Stores a batch of one stage attempt's lines; a line already stored is left as it is.
    /// A gap is accepted and recorded as a `logs.gap` event of the run.
    pub fn store_logs(
        &self,
        pool_id: &str,
        run_id: &str,
        stage: &str,
        attempt: u32,
        batch: &LogBatch,
    ) -> Result<StoredBatch, BackendError> {
        let part = part_name(batch.part);
        self.with(|conn| {
            let tx = conn.transaction().map_err(db)?;
            let highest: Option<i64> = tx
                .query_row(
                    "SELECT MAX(seq) FROM logs WHERE run_id = ?1 AND stage = ?2 AND attempt = ?3
                       AND part = ?4",
                    params![run_id, stage, attempt, part],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?
                .flatten();
            let mut expected = highest.map_or(0, |h| h as u64 + 1);
            let mut result = StoredBatch {
                stored: 0,
                duplicates: 0,
                gaps: Vec::new(),
            };
            let mut lines: Vec<_> = batch.lines.iter().collect();
            lines.sort_by_key(|l| l.seq);
            for line in lines {
                if line.seq > expected {
                    result.gaps.push((expected, line.seq - 1));
                }
                expected = expected.max(line.seq + 1);
                let inserted = tx
                    .execute(
                        "INSERT OR IGNORE INTO logs (run_id, stage, attempt, part, seq, at, stream, text)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        params![
                            run_id,
                            stage,
                            attempt,
                            part,
                            line.seq as i64,
                            line.at,
                            stream_name(line.stream),
                            line.text
                        ],
                    )
                    .map_err(db)?;
                if inserted == 0 {
                    result.duplicates += 1;
                } else {
                    result.stored += 1;
                }
            }
            for (first, last) in &result.gaps {
                event(
                    &tx,
                    Some(pool_id),
                    Some(run_id),
                    None,
                    "logs.gap",
                    &serde_json::json!({"stage": stage, "attempt": attempt, "part": part,
                        "missingFrom": first, "missingTo": last}),
                )?;
            }
            tx.commit().map_err(db)?;
            Ok(result)
        })
    }

    /// The lines of a run (of one stage) that arrived after `after`, in reading order.
    pub fn logs(
        &self,
        run_id: &str,
        stage: Option<&str>,
        after: i64,
    ) -> Result<LogPage, BackendError> {
        self.with(|conn| {
            // One transaction: `ended` and the lines are read from the same snapshot.
            let tx = conn.transaction().map_err(db)?;
            let state: String = tx
                .query_row("SELECT state FROM runs WHERE id = ?1", [run_id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db)?
                .ok_or_else(|| BackendError::NotFound(format!("no run {run_id}")))?;
            let lines = {
                let mut stmt = tx
                    .prepare(
                        "SELECT l.id, l.stage, l.attempt, l.part, l.seq, l.at, l.stream, l.text
                         FROM (SELECT * FROM logs WHERE run_id = ?1 AND id > ?2
                                 AND (?3 IS NULL OR stage = ?3)
                               ORDER BY id LIMIT ?4) l
                         ORDER BY (SELECT MIN(f.id) FROM logs f WHERE f.run_id = l.run_id
                                     AND f.stage = l.stage AND f.attempt = l.attempt),
                                  l.attempt, CASE l.part WHEN 'init' THEN 0 ELSE 1 END, l.seq",
                    )
                    .map_err(db)?;
                stmt.query_map(params![run_id, after, stage, PAGE_LINES], |r| {
                    Ok(LogEntry {
                        id: r.get(0)?,
                        stage: r.get(1)?,
                        attempt: r.get(2)?,
                        part: r.get(3)?,
                        seq: r.get::<_, i64>(4)?.try_into().unwrap_or(0),
                        at: r.get(5)?,
                        stream: r.get(6)?,
                        text: r.get(7)?,
                    })
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?
            };
            let next = lines.iter().map(|l| l.id).max().unwrap_or(after);
            let full_page = lines.len() as i64 == PAGE_LINES;
            Ok(LogPage {
                ended: run_state::FINAL.contains(&state.as_str()) && !full_page,
                state,
                lines,
                next,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use launcher_api::LogLine;

    fn batch(part: LogPart, seqs: &[u64]) -> LogBatch {
        LogBatch {
            part,
            lines: seqs
                .iter()
                .map(|seq| LogLine {
                    seq: *seq,
                    at: "2026-01-01T00:00:00Z".into(),
                    stream: LogStream::Stdout,
                    text: format!("{} {seq}", part_name(part)),
                })
                .collect(),
        }
    }

    fn texts(page: &LogPage) -> Vec<String> {
        page.lines
            .iter()
            .map(|l| format!("{} {}", l.stage, l.text))
            .collect()
    }

    #[test]
    fn lines_are_stored_once_read_in_order_and_gaps_are_recorded() {
        let store = Store::open_in_memory().unwrap();
        let pool = ulid::Ulid::generate();
        store.insert_pool(pool, "p").unwrap();
        let run = store
            .submit_run(
                &super::super::SubmitRun {
                    pool: "p".into(),
                    ..Default::default()
                },
                "launcher",
            )
            .unwrap();
        let pool = pool.to_string();
        let put =
            |stage: &str, b: LogBatch| store.store_logs(&pool, &run.id, stage, 1, &b).unwrap();
        // The worker part arrives first for once; init's is read first all the same.
        put("planning", batch(LogPart::Worker, &[0, 1]));
        put("planning", batch(LogPart::Init, &[0]));
        let again = put("planning", batch(LogPart::Worker, &[0, 1]));
        assert_eq!(
            (again.stored, again.duplicates),
            (0, 2),
            "a resent batch changes nothing"
        );
        let gap = put("planning", batch(LogPart::Worker, &[4]));
        assert_eq!(gap.gaps, [(2, 3)]);
        put("applying", batch(LogPart::Init, &[0]));

        let page = store.logs(&run.id, None, 0).unwrap();
        assert_eq!(
            texts(&page),
            [
                "planning init 0",
                "planning worker 0",
                "planning worker 1",
                "planning worker 4",
                "applying init 0"
            ]
        );
        assert!(!page.ended, "the run is still queued");
        let only = store.logs(&run.id, Some("applying"), 0).unwrap();
        assert_eq!(texts(&only), ["applying init 0"]);

        // A follower gets what arrived after its last line.
        put("planning", batch(LogPart::Worker, &[2, 3]));
        let later = store.logs(&run.id, None, page.next).unwrap();
        assert_eq!(texts(&later), ["planning worker 2", "planning worker 3"]);
        assert_eq!(store.logs(&run.id, None, later.next).unwrap().lines, []);

        let events = store.run(&run.id).unwrap().unwrap().events;
        let gaps: Vec<_> = events.iter().filter(|e| e.kind == "logs.gap").collect();
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].detail["missingFrom"], 2);
        assert_eq!(gaps[0].detail["missingTo"], 3);
    }
}
