//! The embedded job store: one SQLite file in `--data-dir`, in WAL mode, owned by one process
//! (a lock file refuses a second). A job that was running when the process died is queued again
//! when the store opens; one whose end could not be recorded (a full disk) is taken again once
//! its lease (`--job-lease`) runs out without renewal.
//!
//! The store also answers whether it can write: the database file must still be the one it
//! opened (same device and inode: a deleted or replaced `--data-dir` is noticed), and a small
//! write must succeed.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    cancelled_record, finished_record, kept_result, webhook_body, ClaimedJob, Delivery, JobInputs,
    JobRecord, JobStatus, JobStore, NewJob, Outcome, StoreError, StoreResult, Submitted,
};
use crate::batcher::{Priority, Progress};

/// The database's file name inside `--data-dir`.
pub const DB_FILE: &str = "jobs.sqlite3";
/// How long a job cancelled while the server was down is kept (the store does not know
/// `--job-retention` when it opens).
const CANCELLED_AT_START_RETENTION: Duration = Duration::from_secs(86_400);
const LOCK_FILE: &str = "jobs.lock";
/// Free space under which the store reports that it cannot write: SQLite needs room for
/// its journal before any job fits.
const MIN_FREE_BYTES: u64 = 1 << 20;

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
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
";

/// Columns added after the first schema, with their types: added to an older file on open.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    // The submitting key's name, for the per-key bound.
    ("owner", "TEXT"),
    // When a running job's claim lapses unless renewed.
    ("lease_until_ms", "INTEGER"),
    // Bytes of inputs and result held, for --max-store-bytes.
    ("bytes", "INTEGER"),
    // The area of the person photo to repaint (the `mask` column is the garment mask).
    ("person_mask", "BLOB"),
    // How far a running job has got (JSON), apart from the record: see JobRecord::progress.
    ("progress", "TEXT"),
];

pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Held for the store's life: a second process on the same folder is refused.
    _lock: File,
    /// The database file's device and inode when it was opened.
    identity: (u64, u64),
    /// How long a claim lasts without renewal.
    lease: Duration,
}

/// Bytes free for this process on the file system holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs writes only into the struct it is given; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// A file's device and inode.
fn identity_of(path: &Path) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
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

/// The claim a job runs under: unique per run, so that renewing one run's lease never
/// renews another's.
fn lease_of(worker: &str, record: &JobRecord) -> String {
    format!("{worker}/{}/{}", record.id, record.attempts)
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
        "UPDATE jobs SET person = NULL, cloth = NULL, mask = NULL, person_mask = NULL, bytes = 0,
         lease_until_ms = NULL WHERE id = ?1",
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
    /// Opens (or creates) the store in `dir`, and queues again what was running. A claim
    /// lasts `lease` unless renewed.
    pub fn open(dir: &Path, lease: Duration) -> anyhow::Result<SqliteStore> {
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
        add_missing_columns(&conn)?;
        let identity =
            identity_of(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
            path,
            _lock: lock,
            identity,
            lease,
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

    /// An error unless the database file at the path is still the one this store writes:
    /// writes to a deleted file succeed and are lost.
    fn check_identity(&self) -> StoreResult<()> {
        match identity_of(&self.path) {
            Ok(id) if id == self.identity => Ok(()),
            Ok(_) => Err(StoreError::Backend(format!(
                "{} was replaced after the server opened it; jobs written now would be lost",
                self.path.display()
            ))),
            Err(e) => Err(StoreError::Backend(format!(
                "{} is gone ({e}): the data folder was deleted; jobs written now would be lost",
                self.path.display()
            ))),
        }
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

/// Adds the columns of [`ADDED_COLUMNS`] that a file made by an older version lacks.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let present: Vec<String> = {
        let mut q = conn.prepare("SELECT name FROM pragma_table_info('jobs')")?;
        let rows = q.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for (name, kind) in ADDED_COLUMNS {
        if !present.iter().any(|p| p == name) {
            conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {kind}"))?;
        }
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, status)")
}

impl JobStore for SqliteStore {
    fn submit(&self, job: NewJob) -> StoreResult<Submitted> {
        self.check_identity()?;
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
                let record = from_json(&text)?;
                if !super::same_request(&record, job.record.fingerprint.as_deref()) {
                    return Err(StoreError::KeyReused);
                }
                return Ok(Submitted {
                    record,
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
        if let Some(owner) = &job.record.owner {
            let open: i64 = tx.query_row(
                "SELECT COUNT(*) FROM jobs WHERE owner = ?1 AND status IN ('queued', 'running')",
                [owner],
                |r| r.get(0),
            )?;
            if open as usize >= job.max_owner_jobs {
                return Err(StoreError::OwnerFull {
                    jobs: open as usize,
                });
            }
        }
        let held: i64 =
            tx.query_row("SELECT COALESCE(SUM(bytes), 0) FROM jobs", [], |r| r.get(0))?;
        let more = job.input_bytes();
        if held.max(0) as u64 + more > job.max_store_bytes {
            return Err(StoreError::StoreFull {
                held: held.max(0) as u64,
                more,
                limit: job.max_store_bytes,
            });
        }
        let r = &job.record;
        tx.execute(
            "INSERT INTO jobs (id, idempotency_key, status, priority, created_ms, record, person,
             cloth, mask, owner, bytes, person_mask)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                r.id,
                job.idempotency_key,
                r.status.as_str(),
                priority_rank(r.priority),
                r.created_ms,
                to_json(r)?,
                job.inputs.person.as_ref(),
                job.inputs.cloth.as_ref(),
                job.inputs.garment_mask.as_deref(),
                r.owner,
                more as i64,
                job.inputs.person_mask.as_deref(),
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
        let row: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT record, progress FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let mut record = match row {
            None => None,
            Some((text, progress)) => {
                let mut record = from_json(&text)?;
                // A malformed progress is only a progress lost.
                record.progress = progress.and_then(|p| serde_json::from_str(&p).ok());
                Some(record)
            }
        };
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
        // Queued jobs, and running ones whose claim lapsed: their run could not record its
        // end (or put them back), so they run again.
        let ids: Vec<String> = {
            // The ranks are this module's integers, never client input.
            let ranks: Vec<String> = priorities
                .iter()
                .map(|&p| priority_rank(p).to_string())
                .collect();
            let mut q = tx.prepare(&format!(
                "SELECT id FROM jobs WHERE priority IN ({})
                 AND (status = 'queued' OR (status = 'running' AND lease_until_ms <= ?2))
                 ORDER BY priority, created_ms LIMIT ?1",
                if ranks.is_empty() {
                    "NULL".to_string()
                } else {
                    ranks.join(",")
                }
            ))?;
            let rows = q.query_map(params![max as i64, now_ms], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let until = now_ms + self.lease.as_millis() as i64;
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            type Row = (String, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);
            let (text, person, cloth, garment_mask, person_mask): Row = tx.query_row(
                "SELECT record, person, cloth, mask, person_mask FROM jobs WHERE id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?;
            let mut record = from_json(&text)?;
            if record.status == JobStatus::Running {
                tracing::info!(job = %record.id, "took over a job whose run could not record its end");
            }
            record.status = JobStatus::Running;
            record.started_ms = Some(now_ms);
            record.attempts += 1;
            let lease = lease_of(worker, &record);
            record.lease = Some(lease.clone());
            write_record(&tx, &record)?;
            tx.execute(
                "UPDATE jobs SET lease_until_ms = ?2, progress = NULL WHERE id = ?1",
                params![record.id, until],
            )?;
            claimed.push(ClaimedJob {
                record,
                inputs: JobInputs {
                    person: person.into(),
                    cloth: cloth.into(),
                    garment_mask: garment_mask.map(Into::into),
                    person_mask: person_mask.map(Into::into),
                },
                lease,
            });
        }
        tx.commit()?;
        Ok(claimed)
    }

    fn renew(&self, _worker: &str, leases: &[String]) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let until = super::now_ms() + self.lease.as_millis() as i64;
        for lease in leases {
            tx.execute(
                "UPDATE jobs SET lease_until_ms = ?1
                 WHERE status = 'running' AND json_extract(record, '$.lease') = ?2",
                params![until, lease],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn release(&self, id: &str, lease: &str, now_ms: i64, retention: Duration) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let holds =
            |r: &JobRecord| r.status == JobStatus::Running && r.lease.as_deref() == Some(lease);
        match load_record(&tx, id)? {
            // Cancelled while it ran: it ends here instead of running again.
            Some(record) if holds(&record) && record.cancel_requested => {
                let record = cancelled_record(record, now_ms, retention);
                write_final(&tx, &record, now_ms)?;
            }
            Some(mut record) if holds(&record) => {
                record.status = JobStatus::Queued;
                record.lease = None;
                write_record(&tx, &record)?;
                tx.execute("UPDATE jobs SET lease_until_ms = NULL WHERE id = ?1", [id])?;
            }
            _ => {}
        }
        tx.commit()?;
        Ok(())
    }

    fn finish(
        &self,
        id: &str,
        lease: &str,
        outcome: Outcome,
        now_ms: i64,
        retention: Duration,
    ) -> StoreResult<Option<JobRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(record) = load_record(&tx, id)? else {
            return Ok(None);
        };
        // Ended already, or taken again after this run's claim lapsed.
        if record.status != JobStatus::Running || record.lease.as_deref() != Some(lease) {
            return Ok(None);
        }
        let mut record = finished_record(record, &outcome, now_ms, retention);
        record.lease = None;
        write_final(&tx, &record, now_ms)?;
        if let Some((image, content_type)) = kept_result(&record, &outcome) {
            tx.execute(
                "UPDATE jobs SET result = ?2, result_type = ?3, bytes = ?4 WHERE id = ?1",
                params![id, image, content_type, image.len() as i64],
            )?;
        }
        tx.commit()?;
        Ok(Some(record))
    }

    fn set_progress(&self, id: &str, lease: &str, progress: Progress) -> StoreResult<()> {
        let text =
            serde_json::to_string(&progress).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let holds = load_record(&tx, id)?
            .is_some_and(|r| r.status == JobStatus::Running && r.lease.as_deref() == Some(lease));
        if holds {
            tx.execute(
                "UPDATE jobs SET progress = ?2 WHERE id = ?1",
                params![id, text],
            )?;
        }
        tx.commit()?;
        Ok(())
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
                 mask = NULL, person_mask = NULL, idempotency_key = NULL, bytes = 0 WHERE id = ?1",
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

    fn health(&self) -> StoreResult<()> {
        self.check_identity()?;
        let free = free_bytes(&self.path).map_err(|e| {
            StoreError::Backend(format!(
                "cannot read the free space of {}: {e}",
                self.path.display()
            ))
        })?;
        if free < MIN_FREE_BYTES {
            return Err(StoreError::Backend(format!(
                "the file system of {} has {free} bytes free",
                self.path.display()
            )));
        }
        // A write that reaches the file: a full disk or a read-only mount fails here.
        self.lock().execute(
            "INSERT OR REPLACE INTO probe (id, at_ms) VALUES (1, ?1)",
            [super::now_ms()],
        )?;
        Ok(())
    }

    fn bytes_held(&self) -> StoreResult<u64> {
        let held: i64 =
            self.lock()
                .query_row("SELECT COALESCE(SUM(bytes), 0) FROM jobs", [], |r| r.get(0))?;
        Ok(held.max(0) as u64)
    }
}
