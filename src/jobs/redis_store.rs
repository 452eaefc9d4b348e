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
//!
//! Every change of a record is a WATCH/MULTI transaction, so a status that is final stays final
//! even when two replicas finish the same job.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{Commands, Connection, RedisResult};

use super::{
    cancelled_record, finished_record, webhook_body, ClaimedJob, Delivery, JobInputs, JobRecord,
    JobStatus, JobStore, NewJob, Outcome, StoreError, StoreResult, Submitted,
};
use crate::batcher::Priority;

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

/// A job hash's record and inputs, as HMGET answers them.
type StoredJob = (
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

pub struct RedisStore {
    client: redis::Client,
    conn: Mutex<Option<Connection>>,
    lease: Duration,
}

/// A claim's lease names its stream entry: `STREAM|ENTRY-ID`.
fn lease_of(stream: &str, entry: &str) -> String {
    format!("{stream}|{entry}")
}

fn split_lease(lease: &str) -> Option<(&str, &str)> {
    lease
        .split_once('|')
        .filter(|(s, _)| *s == BATCH_STREAM || *s == INTERACTIVE_STREAM)
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
        now_ms: i64,
    ) -> RedisResult<Option<ClaimedJob>> {
        let Some(id) = entry.get::<String>("id") else {
            Self::ack(con, stream, &entry.id)?;
            return Ok(None);
        };
        let key = job_key(&id);
        let taken: Option<(JobRecord, JobInputs)> =
            redis::transaction(con, &[&key], |con, pipe| {
                let (text, person, cloth, mask): StoredJob = redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&["record", "person", "cloth", "mask"])
                    .query(con)?;
                let record = text.as_deref().and_then(|t| from_json(t).ok());
                let (Some(mut record), Some(person), Some(cloth)) = (record, person, cloth) else {
                    return Ok(Some(None));
                };
                if record.status.is_final() {
                    return Ok(Some(None));
                }
                record.status = JobStatus::Running;
                record.started_ms = Some(now_ms);
                record.attempts += 1;
                pipe.hset(&key, "record", to_json(&record))
                    .ignore()
                    .hset(&key, "status", record.status.as_str())
                    .ignore();
                let inputs = JobInputs {
                    person: person.into(),
                    cloth: cloth.into(),
                    mask: mask.map(Into::into),
                };
                let done: Option<()> = pipe.query(con)?;
                Ok(done.map(|()| Some((record.clone(), inputs.clone()))))
            })?;
        match taken {
            Some((record, inputs)) => Ok(Some(ClaimedJob {
                record,
                inputs,
                lease: lease_of(stream, &entry.id),
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
        let record = job.record.clone();
        let retention = ms(job.retention);
        let outcome = self.with_conn(|con| {
            if let Some(key) = &job.idempotency_key {
                let set: Option<String> = redis::cmd("SET")
                    .arg(idempotency_key(key))
                    .arg(&record.id)
                    .arg("NX")
                    .arg("PX")
                    .arg(retention.max(1))
                    .query(con)?;
                if set.is_none() {
                    let existing: Option<String> = con.get(idempotency_key(key))?;
                    if let Some(text) = existing.and_then(|id| Self::load(con, &id).transpose()) {
                        return Ok(Err(text?));
                    }
                }
            }
            let queued =
                Self::backlog(con, INTERACTIVE_STREAM)? + Self::backlog(con, BATCH_STREAM)?;
            if queued >= job.max_queued {
                if let Some(key) = &job.idempotency_key {
                    let _: () = con.del(idempotency_key(key))?;
                }
                return Ok(Ok(Some(queued)));
            }
            let key = job_key(&record.id);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .hset(&key, "record", to_json(&record))
                .ignore()
                .hset(&key, "status", record.status.as_str())
                .ignore()
                .hset(&key, "person", job.inputs.person.as_ref())
                .ignore()
                .hset(&key, "cloth", job.inputs.cloth.as_ref())
                .ignore();
            if let Some(mask) = &job.inputs.mask {
                pipe.hset(&key, "mask", mask.as_ref()).ignore();
            }
            pipe.xadd(stream_of(record.priority), "*", &[("id", &record.id)])
                .ignore();
            pipe.query::<()>(con)?;
            Ok(Ok(None))
        })?;
        match outcome {
            Err(existing) => Ok(Submitted {
                record: from_json(&existing)?,
                created: false,
            }),
            Ok(Some(queued)) => Err(StoreError::QueueFull { queued }),
            Ok(None) => Ok(Submitted {
                record,
                created: true,
            }),
        }
    }

    fn get(&self, id: &str, now_ms: i64) -> StoreResult<Option<JobRecord>> {
        let text = self.with_conn(|con| Self::load(con, id))?;
        let Some(text) = text else { return Ok(None) };
        let mut record = from_json(&text)?;
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

    fn cancel(&self, id: &str, now_ms: i64, retention: Duration) -> StoreResult<Option<JobRecord>> {
        let key = job_key(id);
        let text = self.with_conn(|con| {
            redis::transaction(con, &[&key], |con, pipe| {
                let Some(text) = Self::load(con, id)? else {
                    return Ok(Some(None));
                };
                let Ok(mut record) = from_json(&text) else {
                    return Ok(Some(None));
                };
                match record.status {
                    JobStatus::Queued => {
                        record = cancelled_record(record, now_ms, retention);
                        write_final(pipe, &record, now_ms, retention);
                    }
                    JobStatus::Running => {
                        record.cancel_requested = true;
                        pipe.hset(&key, "record", to_json(&record)).ignore();
                    }
                    _ => return Ok(Some(Some(text))),
                }
                let json = to_json(&record);
                let done: Option<()> = pipe.query(con)?;
                Ok(done.map(|()| Some(json.clone())))
            })
        })?;
        text.as_deref().map(from_json).transpose()
    }

    fn claim(&self, worker: &str, max: usize, now_ms: i64) -> StoreResult<Vec<ClaimedJob>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let lease = ms(self.lease);
        self.with_conn(|con| {
            let mut claimed = Vec::new();
            for stream in [INTERACTIVE_STREAM, BATCH_STREAM] {
                // First what silent workers left behind, then new entries.
                let left = max - claimed.len();
                if left == 0 {
                    break;
                }
                let orphans: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(worker)
                    .arg(lease)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(left)
                    .query(con)?;
                for entry in &orphans.claimed {
                    if let Some(job) = Self::take_entry(con, stream, entry, now_ms)? {
                        tracing::info!(job = %job.record.id, "took over a job whose worker went silent");
                        claimed.push(job);
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
                        if let Some(job) = Self::take_entry(con, stream, entry, now_ms)? {
                            claimed.push(job);
                        }
                    }
                }
            }
            Ok(claimed)
        })
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

    fn release(&self, id: &str, lease: &str) -> StoreResult<()> {
        let key = job_key(id);
        self.with_conn(|con| {
            redis::transaction(con, &[&key], |con, pipe| {
                let Some(mut record) = Self::load(con, id)?.and_then(|t| from_json(&t).ok()) else {
                    return Ok(Some(()));
                };
                if record.status == JobStatus::Running {
                    record.status = JobStatus::Queued;
                    pipe.hset(&key, "record", to_json(&record))
                        .ignore()
                        .hset(&key, "status", record.status.as_str())
                        .ignore()
                        .xadd(stream_of(record.priority), "*", &[("id", id)])
                        .ignore();
                }
                if let Some((stream, entry)) = split_lease(lease) {
                    pipe.xack(stream, GROUP, &[entry])
                        .ignore()
                        .xdel(stream, &[entry])
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
                if let Some((stream, entry)) = split_lease(lease) {
                    pipe.xack(stream, GROUP, &[entry])
                        .ignore()
                        .xdel(stream, &[entry])
                        .ignore();
                }
                let Some(record) = record.filter(|r| r.status == JobStatus::Running) else {
                    // Another worker ended it first; only the stream entry is left to drop.
                    pipe.query::<()>(con)?;
                    return Ok(Some(None));
                };
                let record = finished_record(record, &outcome, now_ms, retention);
                write_final(pipe, &record, now_ms, retention);
                if let (
                    JobStatus::Succeeded,
                    Outcome::Succeeded {
                        image,
                        content_type,
                    },
                ) = (record.status, &outcome)
                {
                    let rkey = result_key(id);
                    pipe.hset(&rkey, "image", image.as_slice())
                        .ignore()
                        .hset(&rkey, "content_type", content_type)
                        .ignore()
                        .pexpire(&rkey, keep as i64)
                        .ignore();
                }
                let json = to_json(&record);
                let done: Option<()> = pipe.query(con)?;
                Ok(done.map(|()| Some(json.clone())))
            })
        })?;
        text.as_deref().map(from_json).transpose()
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
}

/// Adds to a transaction the writes of a record that has just become final: the record, its
/// inputs dropped, its time to live, and the webhook it owes.
fn write_final(pipe: &mut redis::Pipeline, record: &JobRecord, now_ms: i64, retention: Duration) {
    let key = job_key(&record.id);
    pipe.hset(&key, "record", to_json(record))
        .ignore()
        .hset(&key, "status", record.status.as_str())
        .ignore()
        .hdel(&key, &["person", "cloth", "mask"])
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
