//! Asynchronous try-on jobs: their records, the one [`JobStore`] trait with its two stores
//! (embedded SQLite, and Redis shared across replicas), and webhook delivery.
//!
//! A store keeps each job's inputs until it has run, its result for the retention, and every
//! webhook delivery still owed, so that a restart loses none of them. Every job ends with
//! exactly one final status: the stores set it only on a job that has none yet.

pub mod redis_store;
pub mod runner;
pub mod sqlite;
pub mod webhook;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::batcher::{Priority, Progress, Stage};

pub use redis_store::RedisStore;
pub use sqlite::SqliteStore;

/// Longest `metadata` string a client may attach, in bytes.
pub const MAX_METADATA_BYTES: usize = 512;
/// Longest `Idempotency-Key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Attempts to deliver a webhook before giving up.
pub const WEBHOOK_ATTEMPTS: u32 = 6;

/// Milliseconds since the Unix epoch, the stores' clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Succeeded, failed or cancelled, then kept past the retention: its data is gone.
    Expired,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job has ended (no store changes it again, but for expiry).
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// Why a job failed, with the same codes as the synchronous API's errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobFailure {
    pub code: String,
    pub message: String,
}

/// Everything a store keeps about a job but its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub status: JobStatus,
    pub priority: Priority,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// When the result and inputs are deleted (set once the job is final).
    pub expires_ms: Option<i64>,
    pub error: Option<JobFailure>,
    pub metadata: Option<String>,
    pub webhook_url: Option<String>,
    /// `jpeg` or `png`.
    pub format: String,
    pub quality: u8,
    /// How many times a worker has taken the job (more than one after a crash or a drain).
    pub attempts: u32,
    /// DELETE arrived while the job ran: its result is dropped and it ends `cancelled`.
    pub cancel_requested: bool,
    /// The claim it runs under, while it runs (Redis: its stream entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The model's request options, opaque here, with any seed drawn at submission when the
    /// client gave none, so that a job run twice gives the same image. Records of older
    /// versions named them `diffusion`, with the sampling numbers under `params`.
    #[serde(
        default,
        alias = "diffusion",
        deserialize_with = "flat_options",
        skip_serializing_if = "Option::is_none"
    )]
    pub options: Option<serde_json::Value>,
    /// The name of the API key that submitted the job (none without keys): only it may see
    /// or cancel the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The hash of the request that made the job, compared when its idempotency key comes
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// How far the run has got, as last published ([`JobStore::set_progress`]). Kept beside
    /// the record, never in it, so that a progress write never races a cancel's rewrite of
    /// the record; cleared each time the job is taken.
    #[serde(skip)]
    pub progress: Option<Progress>,
}

/// Reads stored options as one flat object: an older record's nested `params` object is
/// lifted to the top level.
fn flat_options<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    let value: Option<serde_json::Value> = Option::deserialize(d)?;
    Ok(value.map(|mut v| {
        if let Some(object) = v.as_object_mut() {
            if let Some(serde_json::Value::Object(nested)) = object.remove("params") {
                object.extend(nested);
            }
        }
        v
    }))
}

/// The jobs' settings: their store, bounds and webhooks.
#[derive(Debug, Clone)]
pub struct JobsSettings {
    pub store: StoreSettings,
    /// How long results are kept after a job ends.
    pub retention: Duration,
    /// Most jobs waiting in the store.
    pub max_queued: usize,
    /// Most jobs one API key may have queued or running.
    pub max_per_owner: usize,
    /// Most bytes of job inputs and results the store keeps.
    pub max_store_bytes: u64,
    /// The priorities this replica takes from the store.
    pub priorities: Vec<crate::batcher::Priority>,
    pub webhooks: webhook::WebhookConfig,
}

/// Which store holds the jobs.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The embedded store's folder (a SQLite file), used without `redis`.
    pub data_dir: std::path::PathBuf,
    /// `redis://…`: jobs in Redis, shared by every replica.
    pub redis: Option<String>,
    /// How long a running job's claim holds without renewal.
    pub lease: Duration,
}

/// Opens the store the settings name.
pub fn open_store(settings: &StoreSettings) -> anyhow::Result<std::sync::Arc<dyn JobStore>> {
    Ok(match &settings.redis {
        Some(url) => std::sync::Arc::new(RedisStore::open(url, settings.lease)?),
        None => std::sync::Arc::new(SqliteStore::open(&settings.data_dir, settings.lease)?),
    })
}

impl JobRecord {
    /// How long the job has existed, at `now_ms`.
    pub fn age(&self, now_ms: i64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.created_ms).max(0) as u64)
    }
}

/// The uploaded images of a job, kept until it has run.
#[derive(Debug, Clone)]
pub struct JobInputs {
    pub person: Bytes,
    pub cloth: Bytes,
    /// White = garment.
    pub garment_mask: Option<Bytes>,
    /// The area of the person photo to repaint, white = repaint.
    pub person_mask: Option<Bytes>,
}

/// A job to store, with the bounds it is admitted under.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub record: JobRecord,
    pub inputs: JobInputs,
    pub idempotency_key: Option<String>,
    /// Refuse the job when this many are queued already.
    pub max_queued: usize,
    /// How long the idempotency key, and later the result, are kept.
    pub retention: Duration,
    /// Refuse the job when its owner has this many jobs queued or running already.
    pub max_owner_jobs: usize,
    /// Refuse the job when the inputs and results kept would pass this many bytes.
    pub max_store_bytes: u64,
}

impl NewJob {
    /// The bytes of the job's inputs, as counted against `--max-store-bytes`.
    pub fn input_bytes(&self) -> u64 {
        (self.inputs.person.len()
            + self.inputs.cloth.len()
            + self.inputs.garment_mask.as_ref().map_or(0, |m| m.len())
            + self.inputs.person_mask.as_ref().map_or(0, |m| m.len())) as u64
    }
}

/// The idempotency key as stored: scoped to its owner, so that two clients using the same
/// key never meet. Key names hold no `:`, so the scope cannot be forged.
pub fn scoped_idempotency_key(owner: Option<&str>, key: &str) -> String {
    format!("{}:{key}", owner.unwrap_or(""))
}

/// Whether a stored job answers a resubmission with this fingerprint: the same request, or
/// a job stored before fingerprints were kept.
pub fn same_request(existing: &JobRecord, fingerprint: Option<&str>) -> bool {
    match (existing.fingerprint.as_deref(), fingerprint) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// What [`JobStore::submit`] did.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub record: JobRecord,
    /// False when the idempotency key named an existing job, which is returned instead.
    pub created: bool,
}

/// A job a worker has taken, with its inputs.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub record: JobRecord,
    pub inputs: JobInputs,
    /// The store's handle on this claim (the stream entry, for Redis).
    pub lease: String,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        image: Vec<u8>,
        content_type: String,
    },
    Failed(JobFailure),
}

/// A webhook delivery owed for a job's final status.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub job_id: String,
    pub url: String,
    /// The status JSON, as it was when the job ended.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{queued} jobs are queued, the most this server keeps")]
    QueueFull { queued: usize },
    #[error("this key has {jobs} jobs queued or running, the most one key may have")]
    OwnerFull { jobs: usize },
    #[error("the Idempotency-Key was used before with a different request")]
    KeyReused,
    #[error("the job store holds {held} bytes; this job's {more} would pass its bound of {limit}")]
    StoreFull { held: u64, more: u64, limit: u64 },
    #[error("the job store failed: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A durable job store. Calls block; the server makes them on the blocking pool.
pub trait JobStore: Send + Sync {
    /// Stores a queued job, or returns the job its idempotency key already names.
    fn submit(&self, job: NewJob) -> StoreResult<Submitted>;
    /// The job's record (`expired` once its retention has passed), or `None` if unknown.
    fn get(&self, id: &str, now_ms: i64) -> StoreResult<Option<JobRecord>>;
    /// The result image and its content type, while it is kept.
    fn result(&self, id: &str) -> StoreResult<Option<(Vec<u8>, String)>>;
    /// Cancels a queued job (final at once) or marks a running one (its result will be
    /// dropped); returns the status before and the record after, or `None` if unknown.
    fn cancel(
        &self,
        id: &str,
        now_ms: i64,
        retention: Duration,
    ) -> StoreResult<Option<(JobStatus, JobRecord)>>;
    /// Takes up to `max` queued jobs for `worker`, interactive first, then oldest first, and
    /// marks them running. Jobs whose worker has been silent past the lease are taken too.
    fn claim(&self, worker: &str, max: usize, now_ms: i64) -> StoreResult<Vec<ClaimedJob>> {
        self.claim_from(worker, max, now_ms, &Priority::ALL)
    }
    /// [`JobStore::claim`] limited to jobs of the given priorities (`--job-priorities`: an
    /// inference replica beside a worker pool leaves batch jobs to the pool).
    fn claim_from(
        &self,
        worker: &str,
        max: usize,
        now_ms: i64,
        priorities: &[Priority],
    ) -> StoreResult<Vec<ClaimedJob>>;
    /// Tells the store that `worker` still runs these claims.
    fn renew(&self, worker: &str, leases: &[String]) -> StoreResult<()>;
    /// Puts a claimed job back in the queue (the worker stops before running it), or ends it
    /// `cancelled` if a cancel was asked meanwhile. Only the claim's holder can.
    fn release(&self, id: &str, lease: &str, now_ms: i64, retention: Duration) -> StoreResult<()>;
    /// Sets the final status of a running job. `None` if it already had one (another worker
    /// finished it first); else the final record. A webhook delivery is recorded with it.
    fn finish(
        &self,
        id: &str,
        lease: &str,
        outcome: Outcome,
        now_ms: i64,
        retention: Duration,
    ) -> StoreResult<Option<JobRecord>>;
    /// Records how far a running job has got, if `lease` still holds it (a job that has ended
    /// or been taken over keeps what it had).
    fn set_progress(&self, id: &str, lease: &str, progress: Progress) -> StoreResult<()>;
    /// Deletes the data of jobs past their retention; returns how many expired.
    fn expire(&self, now_ms: i64) -> StoreResult<usize>;
    /// Jobs waiting to be claimed.
    fn queued(&self) -> StoreResult<usize>;
    /// Webhook deliveries due at `now_ms`, each claimed for `lease` so that no other worker
    /// sends it meanwhile.
    fn due_deliveries(
        &self,
        now_ms: i64,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<Delivery>>;
    /// A delivery succeeded, or was given up: forget it.
    fn delivery_done(&self, job_id: &str) -> StoreResult<()>;
    /// A delivery failed: try again at `due_ms`.
    fn delivery_retry(&self, job_id: &str, attempts: u32, due_ms: i64) -> StoreResult<()>;
    /// Whether the store can record jobs now: an error says why not.
    fn health(&self) -> StoreResult<()> {
        Ok(())
    }
    /// The bytes of inputs and results held, as counted against `--max-store-bytes`.
    fn bytes_held(&self) -> StoreResult<u64> {
        Ok(0)
    }
}

/// RFC 3339 time of a store timestamp.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The status document of a job, as `GET /v1/jobs/{id}` answers it and webhooks send it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    pub status: JobStatus,
    pub priority: Priority,
    /// RFC 3339.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When the result is deleted (once the job has ended).
    pub expires_at: Option<String>,
    pub error: Option<JobFailure>,
    /// The client's string, echoed back.
    pub metadata: Option<String>,
    /// Where the image is, once the job has succeeded.
    pub result_url: Option<String>,
    /// A running job was asked to cancel: it ends `cancelled`.
    pub cancel_requested: bool,
    /// How far the job has got. A queued job reads `queued` (also after a restart put it
    /// back), a succeeded one `done` = `total`.
    pub progress: Progress,
}

/// The progress a status reports: a queued job's is `queued` whatever its last run reached
/// (a restart or a drain put it back); a succeeded job's is complete.
pub fn reported_progress(record: &JobRecord) -> Progress {
    let last = record.progress.unwrap_or(Progress::QUEUED);
    match record.status {
        JobStatus::Queued => Progress::QUEUED,
        JobStatus::Succeeded => Progress {
            done: last.total,
            total: last.total,
            stage: Stage::EncodeOutput,
        },
        _ => last,
    }
}

impl From<&JobRecord> for JobView {
    fn from(r: &JobRecord) -> Self {
        JobView {
            id: r.id.clone(),
            status: r.status,
            priority: r.priority,
            created_at: rfc3339(r.created_ms),
            started_at: r.started_ms.map(rfc3339),
            finished_at: r.finished_ms.map(rfc3339),
            expires_at: r.expires_ms.map(rfc3339),
            error: r.error.clone(),
            metadata: r.metadata.clone(),
            result_url: (r.status == JobStatus::Succeeded)
                .then(|| format!("/v1/jobs/{}/result", r.id)),
            cancel_requested: r.cancel_requested,
            progress: reported_progress(r),
        }
    }
}

/// The webhook body of a final record.
pub fn webhook_body(record: &JobRecord) -> String {
    serde_json::to_string(&JobView::from(record)).unwrap_or_default()
}

/// Whether `id` looks like an id this server makes (32 hex digits): anything else is unknown
/// without asking the store.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fresh job id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The final record of a job that ends now with `outcome`, or `cancelled` if a cancel was
/// asked meanwhile.
pub fn finished_record(
    mut record: JobRecord,
    outcome: &Outcome,
    now_ms: i64,
    retention: Duration,
) -> JobRecord {
    record.status = match outcome {
        _ if record.cancel_requested => JobStatus::Cancelled,
        Outcome::Succeeded { .. } => JobStatus::Succeeded,
        Outcome::Failed(f) => {
            record.error = Some(f.clone());
            JobStatus::Failed
        }
    };
    ended(record, now_ms, retention)
}

/// The image to keep for a record that has just ended: only a success keeps one (a job
/// cancelled while it ran drops its result).
pub fn kept_result<'a>(record: &JobRecord, outcome: &'a Outcome) -> Option<(&'a [u8], &'a str)> {
    match (record.status, outcome) {
        (
            JobStatus::Succeeded,
            Outcome::Succeeded {
                image,
                content_type,
            },
        ) => Some((image.as_slice(), content_type.as_str())),
        _ => None,
    }
}

/// The final record of a queued job cancelled now.
pub fn cancelled_record(mut record: JobRecord, now_ms: i64, retention: Duration) -> JobRecord {
    record.cancel_requested = true;
    record.status = JobStatus::Cancelled;
    ended(record, now_ms, retention)
}

fn ended(mut record: JobRecord, now_ms: i64, retention: Duration) -> JobRecord {
    record.finished_ms = Some(now_ms);
    record.expires_ms = Some(now_ms + retention.as_millis() as i64);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_older_versions_keep_their_options() {
        let old = serde_json::json!({
            "id": "j1", "status": "queued", "priority": "batch", "created_ms": 1,
            "started_ms": null, "finished_ms": null, "expires_ms": null, "error": null,
            "metadata": null, "webhook_url": null, "format": "png", "quality": 90,
            "attempts": 0, "cancel_requested": false,
            "diffusion": {"category": "lower", "resolution": "512x384",
                          "params": {"steps": 2, "guidance": 1.5, "seed": 5}}
        });
        let record: JobRecord = serde_json::from_value(old).expect("an older record reads");
        assert_eq!(
            record.options,
            Some(serde_json::json!({
                "category": "lower", "resolution": "512x384",
                "steps": 2, "guidance": 1.5, "seed": 5
            }))
        );
        // Written back under the new name, flat.
        let again = serde_json::to_value(&record).expect("JSON");
        assert!(again.get("diffusion").is_none());
        assert_eq!(again["options"]["seed"], 5);
    }

    #[test]
    fn ids_statuses_and_views_round_trip() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert!(!valid_id("../../etc/passwd"));
        assert!(!valid_id(&"g".repeat(32)));
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert!(JobStatus::Expired.is_final() && !JobStatus::Running.is_final());
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
