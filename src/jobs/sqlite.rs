//! The embedded job store: one SQLite file in `--data-dir`, in WAL mode, owned by one process
//! (a lock file refuses a second). A job that was running when the process died is queued again
//! when the store opens.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    cancelled_record, finished_record, kept_result, webhook_body, ClaimedJob, Delivery, JobInputs,
    JobRecord, JobStatus, JobStore, NewJob, Outcome, StoreError, StoreResult, Submitted,
};
use crate::batcher::Priority;

/// The database's file name inside `--data-dir`.
pub const DB_FILE: &str = "jobs.sqlite3";
/// How long a job cancelled while the server was down is kept (the store does not know
/// `--job-retention` when it opens).
const CANCELLED_AT_START_RETENTION: Duration = Duration::from_secs(86_400);
const LOCK_FILE: &str = "jobs.lock";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    record TEXT NOT NULL,
    person BLOB,
    cloth BLOB,
    mask BLOB,
    result BLOB,
    result_type TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority, created_ms);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_ms);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    due_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (due_ms);
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Held for the store's life: a second process on the same folder is refused.
    _lock: File,
}

fn priority_rank(p: Priority) -> i64 {
    match p {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

fn to_json(record: &JobRecord) -> StoreResult<String> {
    serde_json::to_string(record).map_err(|e| StoreError::Backend(e.to_string()))
}

fn from_json(text: &str) -> StoreResult<JobRecord> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("a stored job: {e}")))
}

/// Rewrites a job's record and the columns queries use.
fn write_record(tx: &Transaction<'_>, record: &JobRecord) -> StoreResult<()> {
    tx.execute(
        "UPDATE jobs SET status = ?2, priority = ?3, expires_ms = ?4, record = ?5 WHERE id = ?1",
        params![
            record.id,
            record.status.as_str(),
            priority_rank(record.priority),
            record.expires_ms,
            to_json(record)?
        ],
    )?;
    Ok(())
}

fn load_record(tx: &Transaction<'_>, id: &str) -> StoreResult<Option<JobRecord>> {
    let text: Option<String> = tx
        .query_row("SELECT record FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    text.as_deref().map(from_json).transpose()
}

/// Writes a record that has just become final: the record, its inputs dropped, and the webhook
/// it owes.
fn write_final(tx: &Transaction<'_>, record: &JobRecord, now_ms: i64) -> StoreResult<()> {
    write_record(tx, record)?;
    tx.execute(
        "UPDATE jobs SET person = NULL, cloth = NULL, mask = NULL WHERE id = ?1",
        [&record.id],
    )?;
    owe_delivery(tx, record, now_ms)
}

/// Records the webhook owed for a record that has just become final.
fn owe_delivery(tx: &Transaction<'_>, record: &JobRecord, now_ms: i64) -> StoreResult<()> {
    if let Some(url) = &record.webhook_url {
        tx.execute(
            "INSERT OR REPLACE INTO deliveries (job_id, url, body, attempts, due_ms)
             VALUES (?1, ?2, ?3, 0, ?4)",
            params![record.id, url, webhook_body(record), now_ms],
        )?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (or creates) the store in `dir`, and queues again what was running.
    pub fn open(dir: &Path) -> anyhow::Result<SqliteStore> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "{} is in use by another server; give each replica its own --data-dir, or share jobs with --jobs-redis",
                dir.display()
            )
        })?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the job database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "{} cannot use WAL mode (got {mode})",
            path.display()
        );
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        conn.execute_batch(SCHEMA)?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
            path,
            _lock: lock,
        };
        let requeued = store.requeue_running()?;
        if requeued > 0 {
            tracing::info!(
                jobs = requeued,
                "queued again the jobs that were running when the server stopped"
            );
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn requeue_running(&self) -> StoreResult<usize> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let records: Vec<String> = {
            let mut q = tx.prepare("SELECT record FROM jobs WHERE status = 'running'")?;
            let rows = q.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let now_ms = super::now_ms();
        for text in &records {
            let mut record = from_json(text)?;
            if record.cancel_requested {
                // Cancelled while it ran: it ends now instead of running again. The retention
                // of a cancelled job's record is its idempotency key's, one day.
                let record = cancelled_record(record, now_ms, CANCELLED_AT_START_RETENTION);
                write_final(&tx, &record, now_ms)?;
                continue;
            }
            record.status = JobStatus::Queued;
            record.lease = None;
            write_record(&tx, &record)?;
        }
        tx.commit()?;
        Ok(records.len())
    }
}

impl JobStore for SqliteStore {
    fn submit(&self, job: NewJob) -> StoreResult<Submitted> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(key) = &job.idempotency_key {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT record FROM jobs WHERE idempotency_key = ?1",
                    [key],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(text) = existing {
                return Ok(Submitted {
                    record: from_json(&text)?,
                    created: false,
                });
            }
        }
        let queued: i64 = tx.query_row(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?;
        if queued as usize >= job.max_queued {
            return Err(StoreError::QueueFull {
                queued: queued as usize,
            });
        }
        let r = &job.record;
        tx.execute(
            "INSERT INTO jobs (id, idempotency_key, status, priority, created_ms, record, person, cloth, mask)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                r.id,
                job.idempotency_key,
                r.status.as_str(),
                priority_rank(r.priority),
                r.created_ms,
                to_json(r)?,
                job.inputs.person.as_ref(),
                job.inputs.cloth.as_ref(),
                job.inputs.mask.as_deref(),
            ],
        )?;
        tx.commit()?;
        Ok(Submitted {
            record: job.record,
            created: true,
        })
    }

    fn get(&self, id: &str, now_ms: i64) -> StoreResult<Option<JobRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut record = load_record(&tx, id)?;
        // Past its retention but not yet swept: already reported as expired.
        if let Some(r) = record.as_mut() {
            if r.status.is_final() && r.expires_ms.is_some_and(|t| t <= now_ms) {
                r.status = JobStatus::Expired;
            }
        }
        Ok(record)
    }

    fn result(&self, id: &str) -> StoreResult<Option<(Vec<u8>, String)>> {
        let conn = self.lock();
        let row: Option<(Option<Vec<u8>>, Option<String>)> = conn
            .query_row(
                "SELECT result, result_type FROM jobs WHERE id = ?1 AND status = 'succeeded'",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((Some(image), Some(kind))) => Some((image, kind)),
            _ => None,
        })
    }

    fn cancel(
        &self,
        id: &str,
        now_ms: i64,
        retention: Duration,
    ) -> StoreResult<Option<(JobStatus, JobRecord)>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(mut record) = load_record(&tx, id)? else {
            return Ok(None);
        };
        let before = record.status;
        match record.status {
            JobStatus::Queued => {
                record = cancelled_record(record, now_ms, retention);
                write_final(&tx, &record, now_ms)?;
            }
            JobStatus::Running => {
                record.cancel_requested = true;
                write_record(&tx, &record)?;
            }
            _ => {}
        }
        tx.commit()?;
        Ok(Some((before, record)))
    }

    fn claim_from(
        &self,
        worker: &str,
        max: usize,
        now_ms: i64,
        priorities: &[Priority],
    ) -> StoreResult<Vec<ClaimedJob>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let ids: Vec<String> = {
            // The ranks are this module's integers, never client input.
            let ranks: Vec<String> = priorities
                .iter()
                .map(|&p| priority_rank(p).to_string())
                .collect();
            let mut q = tx.prepare(&format!(
                "SELECT id FROM jobs WHERE status = 'queued' AND priority IN ({})
                 ORDER BY priority, created_ms LIMIT ?1",
                if ranks.is_empty() {
                    "NULL".to_string()
                } else {
                    ranks.join(",")
                }
            ))?;
            let rows = q.query_map([max as i64], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let (text, person, cloth, mask): (String, Vec<u8>, Vec<u8>, Option<Vec<u8>>) = tx
                .query_row(
                    "SELECT record, person, cloth, mask FROM jobs WHERE id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
            let mut record = from_json(&text)?;
            record.status = JobStatus::Running;
            record.started_ms = Some(now_ms);
            record.attempts += 1;
            record.lease = Some(worker.to_string());
            write_record(&tx, &record)?;
            claimed.push(ClaimedJob {
                record,
                inputs: JobInputs {
                    person: person.into(),
                    cloth: cloth.into(),
                    mask: mask.map(Into::into),
                },
                lease: worker.to_string(),
            });
        }
        tx.commit()?;
        Ok(claimed)
    }

    fn renew(&self, _worker: &str, _leases: &[String]) -> StoreResult<()> {
        // One process owns the file: its claims last until it releases them or restarts.
        Ok(())
    }

    fn release(&self, id: &str, _lease: &str, now_ms: i64, retention: Duration) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        match load_record(&tx, id)? {
            // Cancelled while it ran: it ends here instead of running again.
            Some(record) if record.status == JobStatus::Running && record.cancel_requested => {
                let record = cancelled_record(record, now_ms, retention);
                write_final(&tx, &record, now_ms)?;
            }
            Some(mut record) if record.status == JobStatus::Running => {
                record.status = JobStatus::Queued;
                record.lease = None;
                write_record(&tx, &record)?;
            }
            _ => {}
        }
        tx.commit()?;
        Ok(())
    }

    fn finish(
        &self,
        id: &str,
        _lease: &str,
        outcome: Outcome,
        now_ms: i64,
        retention: Duration,
    ) -> StoreResult<Option<JobRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(record) = load_record(&tx, id)? else {
            return Ok(None);
        };
        if record.status != JobStatus::Running {
            return Ok(None);
        }
        let mut record = finished_record(record, &outcome, now_ms, retention);
        record.lease = None;
        write_final(&tx, &record, now_ms)?;
        if let Some((image, content_type)) = kept_result(&record, &outcome) {
            tx.execute(
                "UPDATE jobs SET result = ?2, result_type = ?3 WHERE id = ?1",
                params![id, image, content_type],
            )?;
        }
        tx.commit()?;
        Ok(Some(record))
    }

    fn expire(&self, now_ms: i64) -> StoreResult<usize> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let due: Vec<String> = {
            let mut q = tx.prepare(
                "SELECT record FROM jobs WHERE expires_ms <= ?1
                 AND status IN ('succeeded', 'failed', 'cancelled')",
            )?;
            let rows = q.query_map([now_ms], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for text in &due {
            let mut record = from_json(text)?;
            record.status = JobStatus::Expired;
            write_record(&tx, &record)?;
            tx.execute(
                "UPDATE jobs SET result = NULL, result_type = NULL, person = NULL, cloth = NULL,
                 mask = NULL, idempotency_key = NULL WHERE id = ?1",
                [&record.id],
            )?;
        }
        // An expired job is reported as such for one more retention, then forgotten.
        tx.execute(
            "DELETE FROM jobs WHERE status = 'expired'
             AND expires_ms + (expires_ms - json_extract(record, '$.finished_ms')) <= ?1",
            [now_ms],
        )?;
        tx.commit()?;
        Ok(due.len())
    }

    fn queued(&self) -> StoreResult<usize> {
        let conn = self.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    fn due_deliveries(
        &self,
        now_ms: i64,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<Delivery>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let due: Vec<Delivery> = {
            let mut q = tx.prepare(
                "SELECT job_id, url, body, attempts FROM deliveries WHERE due_ms <= ?1
                 ORDER BY due_ms LIMIT ?2",
            )?;
            let rows = q.query_map(params![now_ms, max as i64], |r| {
                Ok(Delivery {
                    job_id: r.get(0)?,
                    url: r.get(1)?,
                    body: r.get(2)?,
                    attempts: r.get(3)?,
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let until = now_ms + lease.as_millis() as i64;
        for d in &due {
            tx.execute(
                "UPDATE deliveries SET due_ms = ?2 WHERE job_id = ?1",
                params![d.job_id, until],
            )?;
        }
        tx.commit()?;
        Ok(due)
    }

    fn delivery_done(&self, job_id: &str) -> StoreResult<()> {
        self.lock()
            .execute("DELETE FROM deliveries WHERE job_id = ?1", [job_id])?;
        Ok(())
    }

    fn delivery_retry(&self, job_id: &str, attempts: u32, due_ms: i64) -> StoreResult<()> {
        self.lock().execute(
            "UPDATE deliveries SET attempts = ?2, due_ms = ?3 WHERE job_id = ?1",
            params![job_id, attempts, due_ms],
        )?;
        Ok(())
    }
}
