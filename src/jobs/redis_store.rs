//! The job store shared by replicas: Redis, with the work handed out through Redis Streams and
//! a consumer group.
//!
//! - `virtualfit:job:{id}` is a hash: the record (JSON), its status, and the inputs until the
//!   job has run. `virtualfit:result:{id}` holds the image, with the retention as its TTL.
//! - `virtualfit:jobs:interactive` and `virtualfit:jobs:batch` are streams of job ids, read by
//!   the group `workers`: one consumer per replica. An entry stays pending while its job runs;
//!   a replica silent for the lease (`--job-lease`) has its entries claimed by another.
//! - `virtualfit:deliveries` is a sorted set of owed webhooks by due time, with each
//!   delivery's body in `virtualfit:delivery:{id}`.
//! - `virtualfit:owner:{name}` is the set of a key's jobs that have not ended, for the
//!   per-key bound.
//! - `virtualfit:bytes` counts the bytes of inputs and results held; `virtualfit:results` is
//!   a sorted set of kept results by expiry, and a result's size is taken off the count once
//!   it has expired.
//!
//! Every change of a record is a WATCH/MULTI transaction, so a status that is final stays final
//! even when two replicas finish the same job.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{Commands, Connection, RedisResult};

use super::{
    cancelled_record, finished_record, kept_result, webhook_body, ClaimedJob, Delivery, JobInputs,
    JobRecord, JobStatus, JobStore, NewJob, Outcome, StoreError, StoreResult, Submitted,
};
use crate::batcher::{Priority, Progress};

const PREFIX: &str = "virtualfit";
/// The consumer group every replica reads the job streams with.
pub const GROUP: &str = "workers";
/// The stream of batch jobs: the KEDA `redis-streams` trigger reads its backlog.
pub const BATCH_STREAM: &str = "virtualfit:jobs:batch";
pub const INTERACTIVE_STREAM: &str = "virtualfit:jobs:interactive";
const DELIVERIES: &str = "virtualfit:deliveries";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn job_key(id: &str) -> String {
    format!("{PREFIX}:job:{id}")
}

fn result_key(id: &str) -> String {
    format!("{PREFIX}:result:{id}")
}

fn idempotency_key(key: &str) -> String {
    format!("{PREFIX}:idempotency:{key}")
}

fn delivery_key(id: &str) -> String {
    format!("{PREFIX}:delivery:{id}")
}

fn owner_key(owner: &str) -> String {
    format!("{PREFIX}:owner:{owner}")
}

const BYTES: &str = "virtualfit:bytes";
const RESULTS: &str = "virtualfit:results";

fn stream_of(p: Priority) -> &'static str {
    match p {
        Priority::Interactive => INTERACTIVE_STREAM,
        Priority::Batch => BATCH_STREAM,
    }
}

/// How long an ended job's record is kept: the retention, then as long again (at least a
/// day) to answer `expired`.
fn record_ttl_ms(retention: Duration) -> i64 {
    (ms(retention) + ms(retention).max(86_400_000)) as i64
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn to_json(record: &JobRecord) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

fn from_json(text: &str) -> StoreResult<JobRecord> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("a stored job: {e}")))
}

/// Pages of XAUTOCLAIM per claim (each scans at most ten times its count of pending entries).
const AUTOCLAIM_PAGES: usize = 10;
const SUBMIT_CREATED: i64 = 0;
const SUBMIT_EXISTS: i64 = 1;
const SUBMIT_QUEUE_FULL: i64 = 2;
const SUBMIT_OWNER_FULL: i64 = 3;
/// KEYS: the job's hash, its stream, the interactive and the batch stream, the owner's set
/// (a placeholder without owner), the byte count, the kept results. ARGV: record, status,
/// person, cloth, mask, has mask (0/1), id, the bound, retention in ms, the idempotency key
/// ('' for none), the group, has owner (0/1), the owner's bound, the input bytes, the byte
/// bound, now in ms, the person mask, has person mask (0/1). Answers {0, id} when it stored the job, {1, id} when the key (or the id)
/// names a job already, {2, queued} when the bound refuses it, {3, jobs} when the owner's
/// bound does, {4, held} when the byte bound does.
const SUBMIT_SCRIPT: &str = r"
if ARGV[10] ~= '' then
  local existing = redis.call('GET', ARGV[10])
  if existing then return {1, existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, ARGV[7]} end
local queued = 0
for i = 3, 4 do
  local pending = redis.call('XPENDING', KEYS[i], ARGV[11])[1]
  queued = queued + redis.call('XLEN', KEYS[i]) - pending
end
if queued >= tonumber(ARGV[8]) then return {2, tostring(queued)} end
if ARGV[12] == '1' then
  local open = redis.call('SCARD', KEYS[5])
  if open >= tonumber(ARGV[13]) then return {3, tostring(open)} end
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', ARGV[16], 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #gone, 2 do
  local size = tonumber(string.match(gone[i], '^[^|]*|(%d+)$') or '0')
  redis.call('DECRBY', KEYS[6], size)
  redis.call('ZREM', KEYS[7], gone[i])
end
local held = tonumber(redis.call('GET', KEYS[6]) or '0')
if held + tonumber(ARGV[14]) > tonumber(ARGV[15]) then return {4, tostring(held)} end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', ARGV[2], 'person', ARGV[3], 'cloth', ARGV[4], 'bytes', ARGV[14])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'mask', ARGV[5]) end
if ARGV[18] == '1' then redis.call('HSET', KEYS[1], 'person_mask', ARGV[17]) end
redis.call('INCRBY', KEYS[6], ARGV[14])
if ARGV[12] == '1' then redis.call('SADD', KEYS[5], ARGV[7]) end
redis.call('XADD', KEYS[2], '*', 'id', ARGV[7])
if ARGV[10] ~= '' then redis.call('SET', ARGV[10], ARGV[7], 'PX', ARGV[9]) end
return {0, ARGV[7]}
";

/// KEYS: the job's hash. ARGV: the progress (JSON), the lease. Sets the hash's `progress`
/// while the record is running under that lease; answers 1 when it did.
const PROGRESS_SCRIPT: &str = r"
local text = redis.call('HGET', KEYS[1], 'record')
if not text then return 0 end
local record = cjson.decode(text)
if record.status ~= 'running' or record.lease ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
return 1
";

/// A job hash's record and inputs, as HMGET answers them.
type StoredJob = (
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

pub struct RedisStore {
    client: redis::Client,
    conn: Mutex<Option<Connection>>,
    lease: Duration,
}

/// A claim's lease names its stream entry and its worker: `STREAM|ENTRY-ID|WORKER`. A job
/// taken over after a silent lease keeps its entry but changes worker.
fn lease_of(stream: &str, entry: &str, worker: &str) -> String {
    format!("{stream}|{entry}|{worker}")
}

/// The stream and entry of a lease.
fn split_lease(lease: &str) -> Option<(&str, &str)> {
    let mut parts = lease.splitn(3, '|');
    let stream = parts.next()?;
    let entry = parts.next()?;
    (stream == BATCH_STREAM || stream == INTERACTIVE_STREAM).then_some((stream, entry))
}

impl RedisStore {
    /// Connects, and creates the consumer groups if they are missing.
    pub fn open(url: &str, lease: Duration) -> anyhow::Result<RedisStore> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("--jobs-redis is not a usable Redis URL: {e}"))?;
        let store = RedisStore {
            client,
            conn: Mutex::new(None),
            lease,
        };
        store
            .with_conn(|con| {
                for stream in [INTERACTIVE_STREAM, BATCH_STREAM] {
                    let made: RedisResult<()> = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(stream)
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query(con);
                    match made {
                        Ok(()) => {}
                        Err(e) if e.code() == Some("BUSYGROUP") => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("cannot reach the job store at --jobs-redis: {e}"))?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection, connecting (again) when there is none or it broke.
    fn with_conn<T>(&self, mut f: impl FnMut(&mut Connection) -> RedisResult<T>) -> StoreResult<T> {
        let mut slot = self.lock();
        for attempt in 0..2 {
            if slot.is_none() {
                let con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                con.set_read_timeout(Some(IO_TIMEOUT))?;
                con.set_write_timeout(Some(IO_TIMEOUT))?;
                *slot = Some(con);
            }
            let Some(con) = slot.as_mut() else { break };
            match f(con) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    *slot = None;
                }
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() {
                        *slot = None;
                    }
                    return Err(e.into());
                }
            }
        }
        Err(StoreError::Backend("no connection to Redis".into()))
    }

    fn load(con: &mut Connection, id: &str) -> RedisResult<Option<String>> {
        con.hget(job_key(id), "record")
    }

    /// The record and its progress (JSON each).
    fn load_with_progress(
        con: &mut Connection,
        id: &str,
    ) -> RedisResult<(Option<String>, Option<String>)> {
        redis::cmd("HMGET")
            .arg(job_key(id))
            .arg(&["record", "progress"])
            .query(con)
    }

    /// The bytes of a job's inputs while they are kept.
    fn input_bytes(con: &mut Connection, id: &str) -> RedisResult<u64> {
        let bytes: Option<u64> = con.hget(job_key(id), "bytes")?;
        Ok(bytes.unwrap_or(0))
    }

    /// Queued entries of a stream: its length less what the group has handed out.
    fn backlog(con: &mut Connection, stream: &str) -> RedisResult<usize> {
        let len: usize = con.xlen(stream)?;
        let pending: redis::streams::StreamPendingReply = con.xpending(stream, GROUP)?;
        Ok(len.saturating_sub(pending.count()))
    }

    /// Marks one delivered stream entry's job running, or acknowledges an entry whose job has
    /// ended (cancelled while queued) or vanished.
    fn take_entry(
        con: &mut Connection,
        stream: &str,
        entry: &StreamId,
        worker: &str,
        now_ms: i64,
    ) -> RedisResult<Option<ClaimedJob>> {
        let Some(id) = entry.get::<String>("id") else {
            Self::ack(con, stream, &entry.id)?;
            return Ok(None);
        };
        let key = job_key(&id);
        let lease = lease_of(stream, &entry.id, worker);
        let taken: Option<(JobRecord, JobInputs)> =
            redis::transaction(con, &[&key], |con, pipe| {
                let (text, person, cloth, garment_mask, person_mask): StoredJob =
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg(&["record", "person", "cloth", "mask", "person_mask"])
                        .query(con)?;
                let record = text.as_deref().and_then(|t| from_json(t).ok());
                let (Some(mut record), Some(person), Some(cloth)) = (record, person, cloth) else {
                    return Ok(Some(None));
                };
                // An ended job, or one that runs under another entry (it was put back and
                // taken again): this entry has nothing left to do.
                let stale = record.status == JobStatus::Running
                    && record.lease.as_deref().and_then(split_lease)
                        != Some((stream, entry.id.as_str()));
                if record.status.is_final() || stale {
                    return Ok(Some(None));
                }
                record.status = JobStatus::Running;
                record.started_ms = Some(now_ms);
                record.attempts += 1;
                record.lease = Some(lease.clone());
                pipe.hset(&key, "record", to_json(&record))
                    .ignore()
                    .hset(&key, "status", record.status.as_str())
                    .ignore()
                    .hdel(&key, "progress")
                    .ignore();
                let inputs = JobInputs {
                    person: person.into(),
                    cloth: cloth.into(),
                    garment_mask: garment_mask.map(Into::into),
                    person_mask: person_mask.map(Into::into),
                };
                let done: Option<()> = pipe.query(con)?;
                Ok(done.map(|()| Some((record.clone(), inputs.clone()))))
            })?;
        match taken {
            Some((record, inputs)) => Ok(Some(ClaimedJob {
                record,
                inputs,
                lease,
            })),
            None => {
                Self::ack(con, stream, &entry.id)?;
                Ok(None)
            }
        }
    }

    fn ack(con: &mut Connection, stream: &str, entry: &str) -> RedisResult<()> {
        redis::pipe()
            .xack(stream, GROUP, &[entry])
            .ignore()
            .xdel(stream, &[entry])
            .ignore()
            .query(con)
    }
}

impl JobStore for RedisStore {
    fn submit(&self, job: NewJob) -> StoreResult<Submitted> {
        // One script: the idempotency key, the bound, the record and the stream entry change
        // together or not at all, and running it again (after a lost reply) adds nothing.
        let script = redis::Script::new(SUBMIT_SCRIPT);
        let record = job.record.clone();
        let input_bytes = job.input_bytes();
        let (created, answer): (i64, String) = self.with_conn(|con| {
            let mut call = script.prepare_invoke();
            call.key(job_key(&record.id))
                .key(stream_of(record.priority))
                .key(INTERACTIVE_STREAM)
                .key(BATCH_STREAM)
                .key(owner_key(record.owner.as_deref().unwrap_or("")))
                .key(BYTES)
                .key(RESULTS)
                .arg(to_json(&record))
                .arg(record.status.as_str())
                .arg(job.inputs.person.as_ref())
                .arg(job.inputs.cloth.as_ref())
                .arg(job.inputs.garment_mask.as_deref().unwrap_or_default())
                .arg(u8::from(job.inputs.garment_mask.is_some()))
                .arg(&record.id)
                .arg(job.max_queued)
                .arg(ms(job.retention).max(1))
                .arg(
                    job.idempotency_key
                        .as_deref()
                        .map(idempotency_key)
                        .unwrap_or_default(),
                )
                .arg(GROUP)
                .arg(u8::from(record.owner.is_some()))
                .arg(job.max_owner_jobs)
                .arg(input_bytes)
                .arg(job.max_store_bytes)
                .arg(super::now_ms())
                .arg(job.inputs.person_mask.as_deref().unwrap_or_default())
                .arg(u8::from(job.inputs.person_mask.is_some()));
            call.invoke(con)
        })?;
        match created {
            SUBMIT_CREATED => Ok(Submitted {
                record,
                created: true,
            }),
            SUBMIT_EXISTS => {
                let text = self
                    .with_conn(|con| Self::load(con, &answer))?
                    .ok_or_else(|| StoreError::Backend(format!("job {answer} vanished")))?;
                let existing = from_json(&text)?;
                if !super::same_request(&existing, record.fingerprint.as_deref()) {
                    return Err(StoreError::KeyReused);
                }
                Ok(Submitted {
                    record: existing,
                    created: false,
                })
            }
            SUBMIT_QUEUE_FULL => Err(StoreError::QueueFull {
                queued: answer.parse().unwrap_or(job.max_queued),
            }),
            SUBMIT_OWNER_FULL => Err(StoreError::OwnerFull {
                jobs: answer.parse().unwrap_or(job.max_owner_jobs),
            }),
            _ => Err(StoreError::StoreFull {
                held: answer.parse().unwrap_or(0),
                more: input_bytes,
                limit: job.max_store_bytes,
            }),
        }
    }

    fn get(&self, id: &str, now_ms: i64) -> StoreResult<Option<JobRecord>> {
        let (text, progress) = self.with_conn(|con| Self::load_with_progress(con, id))?;
        let Some(text) = text else { return Ok(None) };
        let mut record = from_json(&text)?;
        // A malformed progress is only a progress lost.
        record.progress = progress.and_then(|p| serde_json::from_str(&p).ok());
        if record.status.is_final() && record.expires_ms.is_some_and(|t| t <= now_ms) {
            record.status = JobStatus::Expired;
        }
        Ok(Some(record))
    }

    fn result(&self, id: &str) -> StoreResult<Option<(Vec<u8>, String)>> {
        let (image, kind): (Option<Vec<u8>>, Option<String>) = self.with_conn(|con| {
            let key = result_key(id);
            redis::cmd("HMGET")
                .arg(&key)
                .arg(&["image", "content_type"])
                .query(con)
        })?;
        Ok(image.zip(kind))
    }

    fn cancel(
        &self,
        id: &str,
        now_ms: i64,
        retention: Duration,
    ) -> StoreResult<Option<(JobStatus, JobRecord)>> {
        let key = job_key(id);
        let changed = self.with_conn(|con| {
            redis::transaction(con, &[&key], |con, pipe| {
                let Some(mut record) = Self::load(con, id)?.and_then(|t| from_json(&t).ok()) else {
                    return Ok(Some(None));
                };
                let before = record.status;
                match before {
                    JobStatus::Queued => {
                        record = cancelled_record(record, now_ms, retention);
                        let bytes = Self::input_bytes(con, id)?;
                        write_final(pipe, &record, bytes, now_ms, retention);
                    }
                    JobStatus::Running => {
                        record.cancel_requested = true;
                        pipe.hset(&key, "record", to_json(&record)).ignore();
                    }
                    _ => return Ok(Some(Some((before, record)))),
                }
                let done: Option<()> = pipe.query(con)?;
                Ok(done.map(|()| Some((before, record.clone()))))
            })
        })?;
        Ok(changed)
    }

    fn claim_from(
        &self,
        worker: &str,
        max: usize,
        now_ms: i64,
        priorities: &[Priority],
    ) -> StoreResult<Vec<ClaimedJob>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let lease = ms(self.lease);
        let mut claimed = Vec::new();
        // Jobs already marked running are handed back even when a later call fails: dropping
        // them would leave them to wait out a lease.
        let outcome = self.with_conn(|con| {
            let streams = Priority::ALL
                .into_iter()
                .filter(|p| priorities.contains(p))
                .map(stream_of);
            for stream in streams {
                // First what silent workers left behind, page by page, then new entries.
                let mut cursor = "0-0".to_string();
                for _ in 0..AUTOCLAIM_PAGES {
                    let left = max - claimed.len();
                    if left == 0 {
                        break;
                    }
                    let orphans: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                        .arg(stream)
                        .arg(GROUP)
                        .arg(worker)
                        .arg(lease)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(left)
                        .query(con)?;
                    for entry in &orphans.claimed {
                        if let Some(job) = Self::take_entry(con, stream, entry, worker, now_ms)? {
                            tracing::info!(job = %job.record.id, "took over a job whose worker went silent");
                            claimed.push(job);
                        }
                    }
                    cursor = orphans.next_stream_id;
                    if cursor == "0-0" {
                        break;
                    }
                }
                let left = max - claimed.len();
                if left == 0 {
                    break;
                }
                let fresh: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(worker)
                    .arg("COUNT")
                    .arg(left)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">")
                    .query(con)?;
                for key in fresh.map(|r| r.keys).unwrap_or_default() {
                    for entry in &key.ids {
                        if let Some(job) = Self::take_entry(con, stream, entry, worker, now_ms)? {
                            claimed.push(job);
                        }
                    }
                }
            }
            Ok(())
        });
        match outcome {
            Err(e) if !claimed.is_empty() => {
                tracing::warn!(error = %e, taken = claimed.len(), "taking jobs stopped early");
                Ok(claimed)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(claimed),
        }
    }

    fn renew(&self, worker: &str, leases: &[String]) -> StoreResult<()> {
        self.with_conn(|con| {
            for (stream, entry) in leases.iter().filter_map(|l| split_lease(l)) {
                // Claiming its own entry again resets its idle time: the lease starts over.
                let _: redis::Value = redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(worker)
                    .arg(0)
                    .arg(entry)
                    .arg("JUSTID")
                    .query(con)?;
            }
            Ok(())
        })
    }

    fn release(&self, id: &str, lease: &str, now_ms: i64, retention: Duration) -> StoreResult<()> {
        let key = job_key(id);
        self.with_conn(|con| {
            redis::transaction(con, &[&key], |con, pipe| {
                let Some(mut record) = Self::load(con, id)?.and_then(|t| from_json(&t).ok()) else {
                    return Ok(Some(()));
                };
                let holds =
                    record.status == JobStatus::Running && record.lease.as_deref() == Some(lease);
                if !held_by_another(&record, lease) {
                    drop_entry(pipe, lease);
                }
                if holds && record.cancel_requested {
                    // Cancelled while it ran: it ends here instead of running again.
                    let record = cancelled_record(record, now_ms, retention);
                    let bytes = Self::input_bytes(con, id)?;
                    write_final(pipe, &record, bytes, now_ms, retention);
                } else if holds {
                    record.status = JobStatus::Queued;
                    record.lease = None;
                    pipe.hset(&key, "record", to_json(&record))
                        .ignore()
                        .hset(&key, "status", record.status.as_str())
                        .ignore()
                        .xadd(stream_of(record.priority), "*", &[("id", id)])
                        .ignore();
                }
                let done: Option<()> = pipe.query(con)?;
                Ok(done)
            })
        })
    }

    fn finish(
        &self,
        id: &str,
        lease: &str,
        outcome: Outcome,
        now_ms: i64,
        retention: Duration,
    ) -> StoreResult<Option<JobRecord>> {
        let key = job_key(id);
        let keep = ms(retention).max(1);
        let text = self.with_conn(|con| {
            redis::transaction(con, &[&key], |con, pipe| {
                let record = Self::load(con, id)?.and_then(|t| from_json(&t).ok());
                if !record.as_ref().is_some_and(|r| held_by_another(r, lease)) {
                    drop_entry(pipe, lease);
                }
                let holds = |r: &JobRecord| {
                    r.status == JobStatus::Running && r.lease.as_deref() == Some(lease)
                };
                let Some(mut record) = record.filter(holds) else {
                    // Another worker ended it, or runs it now; only the stream entry is left
                    // to drop.
                    let done: Option<()> = pipe.query(con)?;
                    return Ok(done.map(|()| None));
                };
                record.lease = None;
                let record = finished_record(record, &outcome, now_ms, retention);
                let bytes = Self::input_bytes(con, id)?;
                write_final(pipe, &record, bytes, now_ms, retention);
                if let Some((image, content_type)) = kept_result(&record, &outcome) {
                    let rkey = result_key(id);
                    pipe.hset(&rkey, "image", image)
                        .ignore()
                        .hset(&rkey, "content_type", content_type)
                        .ignore()
                        .pexpire(&rkey, keep as i64)
                        .ignore()
                        .incr(BYTES, image.len())
                        .ignore()
                        .zadd(
                            RESULTS,
                            format!("{id}|{}", image.len()),
                            now_ms + keep as i64,
                        )
                        .ignore();
                }
                let json = to_json(&record);
                let done: Option<()> = pipe.query(con)?;
                Ok(done.map(|()| Some(json.clone())))
            })
        })?;
        text.as_deref().map(from_json).transpose()
    }

    fn set_progress(&self, id: &str, lease: &str, progress: Progress) -> StoreResult<()> {
        let text =
            serde_json::to_string(&progress).map_err(|e| StoreError::Backend(e.to_string()))?;
        let script = redis::Script::new(PROGRESS_SCRIPT);
        self.with_conn(|con| {
            let _set: i64 = script.key(job_key(id)).arg(&text).arg(lease).invoke(con)?;
            Ok(())
        })
    }

    fn expire(&self, _now_ms: i64) -> StoreResult<usize> {
        // Redis expires results and records by their TTL.
        Ok(0)
    }

    fn queued(&self) -> StoreResult<usize> {
        self.with_conn(|con| {
            Ok(Self::backlog(con, INTERACTIVE_STREAM)? + Self::backlog(con, BATCH_STREAM)?)
        })
    }

    fn due_deliveries(
        &self,
        now_ms: i64,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<Delivery>> {
        // Taking a delivery pushes its due time past the lease, atomically, so one replica
        // sends it; if that replica dies, the delivery is due again after the lease.
        let script = redis::Script::new(
            r"
            local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
            for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
            return ids
            ",
        );
        let until = now_ms + lease.as_millis() as i64;
        self.with_conn(|con| {
            let ids: Vec<String> = script
                .key(DELIVERIES)
                .arg(now_ms)
                .arg(max)
                .arg(until)
                .invoke(con)?;
            let mut due = Vec::with_capacity(ids.len());
            for id in ids {
                let (url, body, attempts): (Option<String>, Option<String>, Option<u32>) =
                    redis::cmd("HMGET")
                        .arg(delivery_key(&id))
                        .arg(&["url", "body", "attempts"])
                        .query(con)?;
                match (url, body) {
                    (Some(url), Some(body)) => due.push(Delivery {
                        job_id: id,
                        url,
                        body,
                        attempts: attempts.unwrap_or(0),
                    }),
                    _ => {
                        let _: () = con.zrem(DELIVERIES, &id)?;
                    }
                }
            }
            Ok(due)
        })
    }

    fn delivery_done(&self, job_id: &str) -> StoreResult<()> {
        self.with_conn(|con| {
            redis::pipe()
                .atomic()
                .zrem(DELIVERIES, job_id)
                .ignore()
                .del(delivery_key(job_id))
                .ignore()
                .query(con)
        })
    }

    fn delivery_retry(&self, job_id: &str, attempts: u32, due_ms: i64) -> StoreResult<()> {
        self.with_conn(|con| {
            redis::pipe()
                .atomic()
                .hset(delivery_key(job_id), "attempts", attempts)
                .ignore()
                .zadd(DELIVERIES, job_id, due_ms)
                .ignore()
                .query(con)
        })
    }

    fn health(&self) -> StoreResult<()> {
        self.with_conn(|con| redis::cmd("PING").query::<String>(con))?;
        Ok(())
    }

    fn bytes_held(&self) -> StoreResult<u64> {
        let held: Option<i64> = self.with_conn(|con| con.get(BYTES))?;
        Ok(held.unwrap_or(0).max(0) as u64)
    }
}

/// Whether another worker runs the job now under the same stream entry (it took the entry
/// over): then the entry is its to acknowledge, not the caller's.
fn held_by_another(record: &JobRecord, lease: &str) -> bool {
    record.status == JobStatus::Running
        && record.lease.as_deref() != Some(lease)
        && record.lease.as_deref().and_then(split_lease) == split_lease(lease)
}

/// Adds to a transaction the acknowledgement and deletion of a lease's stream entry.
fn drop_entry(pipe: &mut redis::Pipeline, lease: &str) {
    if let Some((stream, entry)) = split_lease(lease) {
        pipe.xack(stream, GROUP, &[entry])
            .ignore()
            .xdel(stream, &[entry])
            .ignore();
    }
}

/// Adds to a transaction the writes of a record that has just become final: the record, its
/// inputs dropped (`input_bytes` of them, taken off the count), its time to live, and the
/// webhook it owes.
fn write_final(
    pipe: &mut redis::Pipeline,
    record: &JobRecord,
    input_bytes: u64,
    now_ms: i64,
    retention: Duration,
) {
    let key = job_key(&record.id);
    if let Some(owner) = &record.owner {
        pipe.srem(owner_key(owner), &record.id).ignore();
    }
    pipe.decr(BYTES, input_bytes).ignore();
    pipe.hset(&key, "record", to_json(record))
        .ignore()
        .hset(&key, "status", record.status.as_str())
        .ignore()
        .hdel(&key, &["person", "cloth", "mask", "person_mask", "bytes"])
        .ignore()
        .pexpire(&key, record_ttl_ms(retention))
        .ignore();
    owe_delivery(pipe, record, now_ms);
}

/// Adds the webhook owed for a record that has just become final to a transaction.
fn owe_delivery(pipe: &mut redis::Pipeline, record: &JobRecord, now_ms: i64) {
    if let Some(url) = &record.webhook_url {
        let key = delivery_key(&record.id);
        pipe.hset(&key, "url", url)
            .ignore()
            .hset(&key, "body", webhook_body(record))
            .ignore()
            .hset(&key, "attempts", 0)
            .ignore()
            .zadd(DELIVERIES, &record.id, now_ms)
            .ignore();
    }
}
