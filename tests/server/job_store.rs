//! One suite for both job stores: the embedded SQLite file and a real `redis-server`. Each
//! check runs against each store; what only one store does (reopening a SQLite file, a Redis
//! lease running out) has its own test below.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::redis_server::RedisServer;
use virtualfit::batcher::{Priority, Progress, Stage};
use virtualfit::jobs::{
    new_id, now_ms, JobInputs, JobRecord, JobStatus, JobStore, JobView, NewJob, Outcome,
    RedisStore, SqliteStore, StoreError,
};

const RETENTION: Duration = Duration::from_secs(3600);
const LEASE: Duration = Duration::from_secs(60);

fn record(priority: Priority, created_ms: i64, webhook: Option<&str>) -> JobRecord {
    JobRecord {
        id: new_id(),
        status: JobStatus::Queued,
        priority,
        created_ms,
        started_ms: None,
        finished_ms: None,
        expires_ms: None,
        error: None,
        metadata: Some("sku-1".into()),
        webhook_url: webhook.map(str::to_string),
        format: "jpeg".into(),
        quality: 90,
        attempts: 0,
        cancel_requested: false,
        lease: None,
        options: None,
        owner: None,
        fingerprint: None,
        progress: None,
    }
}

fn new_job(record: JobRecord, key: Option<&str>, max_queued: usize) -> NewJob {
    NewJob {
        record,
        inputs: JobInputs {
            person: Bytes::from_static(b"person-bytes"),
            cloth: Bytes::from_static(b"cloth-bytes"),
            garment_mask: None,
            person_mask: None,
        },
        idempotency_key: key.map(str::to_string),
        max_queued,
        retention: RETENTION,
        max_owner_jobs: usize::MAX,
        max_store_bytes: u64::MAX,
    }
}

fn submit(store: &dyn JobStore, priority: Priority, created_ms: i64) -> JobRecord {
    store
        .submit(new_job(record(priority, created_ms, None), None, 1000))
        .expect("submitted")
        .record
}

fn succeeded() -> Outcome {
    Outcome::Succeeded {
        image: vec![1, 2, 3],
        content_type: "image/jpeg".into(),
    }
}

/// The checks every store passes.
fn contract(store: &dyn JobStore) {
    let now = now_ms();
    // Submission, reading back, and the inputs handed to the worker.
    let a = submit(store, Priority::Batch, now);
    let got = store.get(&a.id, now).expect("get").expect("known");
    assert_eq!(got, a);
    assert!(
        store.get(&new_id(), now).expect("get").is_none(),
        "unknown id"
    );
    assert_eq!(store.queued().expect("queued"), 1);

    // Interactive work is claimed before older batch work; then the oldest first.
    let b = submit(store, Priority::Batch, now + 1);
    let i = submit(store, Priority::Interactive, now + 2);
    let claimed = store.claim("w1", 2, now + 10).expect("claim");
    let ids: Vec<&str> = claimed.iter().map(|c| c.record.id.as_str()).collect();
    assert_eq!(ids, [i.id.as_str(), a.id.as_str()]);
    assert_eq!(claimed[1].inputs.person.as_ref(), b"person-bytes");
    assert_eq!(claimed[1].record.status, JobStatus::Running);
    assert_eq!(claimed[1].record.attempts, 1);
    assert_eq!(store.queued().expect("queued"), 1, "b is still queued");
    store
        .renew("w1", &[claimed[0].lease.clone()])
        .expect("renew");

    // A final status is set once: a second finish (another worker) changes nothing.
    let first = store
        .finish(&a.id, &claimed[1].lease, succeeded(), now + 20, RETENTION)
        .expect("finish")
        .expect("set");
    assert_eq!(first.status, JobStatus::Succeeded);
    assert_eq!(
        first.expires_ms,
        Some(now + 20 + RETENTION.as_millis() as i64)
    );
    let again = store
        .finish(
            &a.id,
            &claimed[1].lease,
            Outcome::Failed(virtualfit::jobs::JobFailure {
                code: "internal".into(),
                message: "late".into(),
            }),
            now + 30,
            RETENTION,
        )
        .expect("finish");
    assert!(again.is_none(), "already final");
    let (image, kind) = store.result(&a.id).expect("result").expect("kept");
    assert_eq!(
        (image.as_slice(), kind.as_str()),
        (&[1u8, 2, 3][..], "image/jpeg")
    );
    assert_eq!(
        store
            .get(&a.id, now + 40)
            .expect("get")
            .expect("known")
            .status,
        JobStatus::Succeeded
    );

    // Cancelling: a queued job ends at once; a running one is marked and ends cancelled,
    // without a result.
    let (before, cancelled) = store
        .cancel(&b.id, now + 50, RETENTION)
        .expect("cancel")
        .expect("known");
    assert_eq!(
        (before, cancelled.status),
        (JobStatus::Queued, JobStatus::Cancelled)
    );
    let (before, again) = store
        .cancel(&b.id, now + 51, RETENTION)
        .expect("cancel")
        .expect("known");
    assert_eq!(
        (before, again.status),
        (JobStatus::Cancelled, JobStatus::Cancelled),
        "once"
    );
    let (_, marked) = store
        .cancel(&i.id, now + 50, RETENTION)
        .expect("cancel")
        .expect("known");
    assert_eq!(
        (marked.status, marked.cancel_requested),
        (JobStatus::Running, true)
    );
    let ended = store
        .finish(&i.id, &claimed[0].lease, succeeded(), now + 60, RETENTION)
        .expect("finish")
        .expect("set");
    assert_eq!(ended.status, JobStatus::Cancelled);
    assert!(store.result(&i.id).expect("result").is_none(), "dropped");
    assert!(
        store.claim("w1", 10, now + 70).expect("claim").is_empty(),
        "b is not run"
    );
    assert_eq!(store.queued().expect("queued"), 0);

    // A released job is queued again and claimed by the next worker.
    let c = submit(store, Priority::Batch, now + 80);
    let taken = store.claim("w1", 1, now + 81).expect("claim");
    store
        .release(&c.id, &taken[0].lease, now + 81, RETENTION)
        .expect("release");
    assert_eq!(
        store
            .get(&c.id, now + 82)
            .expect("get")
            .expect("known")
            .status,
        JobStatus::Queued
    );
    let retaken = store.claim("w2", 1, now + 83).expect("claim");
    assert_eq!(retaken[0].record.id, c.id);
    assert_eq!(retaken[0].record.attempts, 2);
    store
        .finish(&c.id, &retaken[0].lease, succeeded(), now + 84, RETENTION)
        .expect("finish");

    // The idempotency key returns the first job; the bound refuses beyond it.
    let first = store
        .submit(new_job(
            record(Priority::Batch, now, None),
            Some("k-1"),
            1000,
        ))
        .expect("submit");
    let second = store
        .submit(new_job(
            record(Priority::Batch, now, None),
            Some("k-1"),
            1000,
        ))
        .expect("submit");
    assert!(first.created && !second.created);
    assert_eq!(first.record.id, second.record.id);
    submit(store, Priority::Batch, now);
    match store.submit(new_job(record(Priority::Batch, now, None), None, 2)) {
        Err(StoreError::QueueFull { queued }) => assert_eq!(queued, 2),
        other => panic!("expected the bound, got {other:?}"),
    }

    // Webhooks: one delivery is owed for each final status with a URL, taken by one worker
    // at a time, retried when due, and forgotten when done.
    let w = store
        .submit(new_job(
            record(Priority::Interactive, now, Some("https://hooks.example/x")),
            None,
            1000,
        ))
        .expect("submit")
        .record;
    let taken = store.claim("w1", 1, now + 90).expect("claim");
    assert_eq!(taken[0].record.id, w.id);
    store
        .finish(&w.id, &taken[0].lease, succeeded(), now + 100, RETENTION)
        .expect("finish");
    let lease = Duration::from_secs(60);
    let due = store.due_deliveries(now + 100, 10, lease).expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].job_id.as_str(), due[0].attempts),
        (w.id.as_str(), 0)
    );
    let body: serde_json::Value = serde_json::from_str(&due[0].body).expect("json");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["metadata"], "sku-1");
    assert!(
        store
            .due_deliveries(now + 100, 10, lease)
            .expect("due")
            .is_empty(),
        "held by the first worker"
    );
    store.delivery_retry(&w.id, 1, now + 200).expect("retry");
    assert!(store
        .due_deliveries(now + 150, 10, lease)
        .expect("due")
        .is_empty());
    let due = store.due_deliveries(now + 200, 10, lease).expect("due");
    assert_eq!(due[0].attempts, 1);
    store.delivery_done(&w.id).expect("done");
    assert!(store
        .due_deliveries(now + 1_000_000, 10, lease)
        .expect("due")
        .is_empty());

    // A job cancelled while it ran and then put back (its server drains) ends cancelled
    // instead of running again.
    let d = submit(store, Priority::Interactive, now + 300);
    let taken = store.claim("w1", 1, now + 301).expect("claim");
    assert_eq!(taken[0].record.id, d.id);
    store.cancel(&d.id, now + 302, RETENTION).expect("cancel");
    store
        .release(&d.id, &taken[0].lease, now + 303, RETENTION)
        .expect("release");
    let got = store.get(&d.id, now + 304).expect("get").expect("known");
    assert_eq!(got.status, JobStatus::Cancelled);
    assert!(store
        .claim("w2", 5, now + 305)
        .expect("claim")
        .iter()
        .all(|c| c.record.id != d.id));

    // Too many runs that never ended: the runner fails the job; the store counts the runs.
    let e = submit(store, Priority::Interactive, now + 400);
    for run in 1..=3u32 {
        let taken = store.claim("w1", 1, now + 400 + run as i64).expect("claim");
        assert_eq!(
            (taken[0].record.id.as_str(), taken[0].record.attempts),
            (e.id.as_str(), run)
        );
        store
            .release(&e.id, &taken[0].lease, now + 401, RETENTION)
            .expect("release");
    }
}

/// Past the retention a job reads `expired` and its result is gone.
fn expiry(store: &dyn JobStore) {
    let retention = Duration::from_millis(300);
    let now = now_ms();
    let job = submit(store, Priority::Interactive, now);
    let taken = store.claim("w1", 1, now).expect("claim");
    assert_eq!(taken[0].record.id, job.id);
    store
        .finish(&job.id, &taken[0].lease, succeeded(), now_ms(), retention)
        .expect("finish");
    assert!(store.result(&job.id).expect("result").is_some());
    std::thread::sleep(Duration::from_millis(500));
    store.expire(now_ms()).expect("sweep");
    let got = store.get(&job.id, now_ms()).expect("get").expect("known");
    assert_eq!(got.status, JobStatus::Expired);
    assert!(store.result(&job.id).expect("result").is_none());
}

#[test]
fn sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("dir");
    contract(&SqliteStore::open(dir.path(), LEASE).expect("open"));
    let dir = tempfile::tempdir().expect("dir");
    expiry(&SqliteStore::open(dir.path(), LEASE).expect("open"));
}

#[test]
fn redis_store_keeps_the_contract() {
    let redis = RedisServer::start();
    contract(&RedisStore::open(&redis.url(), Duration::from_secs(60)).expect("open"));
    let redis = RedisServer::start();
    expiry(&RedisStore::open(&redis.url(), Duration::from_secs(60)).expect("open"));
}

#[test]
fn sqlite_queues_again_what_was_running_and_keeps_owed_webhooks_across_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let now = now_ms();
    let (running, hooked) = {
        let store = SqliteStore::open(dir.path(), LEASE).expect("open");
        assert!(
            SqliteStore::open(dir.path(), LEASE).is_err(),
            "a second server on the same folder is refused"
        );
        let running = submit(&store, Priority::Batch, now);
        let hooked = store
            .submit(new_job(
                record(Priority::Interactive, now, Some("https://hooks.example/x")),
                None,
                10,
            ))
            .expect("submit")
            .record;
        let taken = store.claim("w1", 2, now).expect("claim");
        let lease = taken
            .iter()
            .find(|t| t.record.id == hooked.id)
            .expect("taken")
            .lease
            .clone();
        store
            .finish(&hooked.id, &lease, succeeded(), now, RETENTION)
            .expect("finish");
        (running, hooked)
    };
    let store = SqliteStore::open(dir.path(), LEASE).expect("reopen");
    let got = store.get(&running.id, now).expect("get").expect("known");
    assert_eq!(
        got.status,
        JobStatus::Queued,
        "running at the crash: queued again"
    );
    let taken = store.claim("w2", 5, now).expect("claim");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].record.attempts, 2);
    let due = store
        .due_deliveries(now, 10, Duration::from_secs(60))
        .expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].job_id, hooked.id);
    let journal: String = rusqlite::Connection::open(store.path())
        .and_then(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
        .expect("journal mode");
    assert_eq!(journal, "wal");
}

#[test]
fn a_redis_job_whose_worker_went_silent_is_taken_over_after_the_lease() {
    let redis = RedisServer::start();
    let lease = Duration::from_millis(400);
    let a = RedisStore::open(&redis.url(), lease).expect("open");
    let b = RedisStore::open(&redis.url(), lease).expect("open");
    let now = now_ms();
    let job = submit(&a, Priority::Batch, now);
    let held = a.claim("replica-a", 5, now).expect("claim");
    assert_eq!(held.len(), 1);
    assert!(
        b.claim("replica-b", 5, now).expect("claim").is_empty(),
        "leased"
    );
    // A renewal keeps it; silence past the lease hands it over.
    std::thread::sleep(Duration::from_millis(250));
    a.renew("replica-a", &[held[0].lease.clone()])
        .expect("renew");
    std::thread::sleep(Duration::from_millis(250));
    assert!(
        b.claim("replica-b", 5, now).expect("claim").is_empty(),
        "renewed"
    );
    std::thread::sleep(Duration::from_millis(500));
    let taken = b.claim("replica-b", 5, now_ms()).expect("claim");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].record.id, job.id);
    assert_eq!(taken[0].record.attempts, 2);
    b.finish(&job.id, &taken[0].lease, succeeded(), now_ms(), RETENTION)
        .expect("finish")
        .expect("set");
    // The silent worker wakes up and finishes too late: the status stays as it was.
    assert!(a
        .finish(&job.id, &held[0].lease, succeeded(), now_ms(), RETENTION)
        .expect("finish")
        .is_none());
    // Nor can it put back a job that another replica has taken over.
    let again = submit(&a, Priority::Batch, now_ms());
    let first = a.claim("replica-a", 1, now_ms()).expect("claim");
    std::thread::sleep(Duration::from_millis(500));
    let second = b.claim("replica-b", 1, now_ms()).expect("claim");
    assert_eq!(second[0].record.id, again.id);
    a.release(&again.id, &first[0].lease, now_ms(), RETENTION)
        .expect("release");
    let got = b.get(&again.id, now_ms()).expect("get").expect("known");
    assert_eq!(
        (got.status, got.lease.as_deref()),
        (JobStatus::Running, Some(second[0].lease.as_str())),
        "still B's"
    );
    assert!(
        a.claim("replica-a", 5, now_ms()).expect("claim").is_empty(),
        "not queued twice"
    );
    // B's claim stays pending: were B silent now, its lease would still run out.
    b.renew("replica-b", &[second[0].lease.clone()])
        .expect("renew");
    let pending: redis::streams::StreamPendingReply = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| {
            redis::Commands::xpending(
                &mut c,
                virtualfit::jobs::redis_store::BATCH_STREAM,
                "workers",
            )
        })
        .expect("xpending");
    assert_eq!(pending.count(), 1, "B's entry is still pending");
    b.finish(
        &again.id,
        &second[0].lease,
        succeeded(),
        now_ms(),
        RETENTION,
    )
    .expect("finish")
    .expect("set");
    assert_eq!(a.queued().expect("queued"), 0);
}

/// `--job-priorities`: a replica that takes interactive jobs only leaves batch jobs in the
/// store for the others (the worker pool), and takes them in the usual order.
fn claims_only_the_priorities_asked_for(store: &dyn JobStore) {
    let now = now_ms();
    let batch = submit(store, Priority::Batch, now);
    let interactive = submit(store, Priority::Interactive, now + 1);
    let taken = store
        .claim_from("inference", 10, now + 2, &[Priority::Interactive])
        .expect("claim");
    let ids: Vec<&str> = taken.iter().map(|j| j.record.id.as_str()).collect();
    assert_eq!(ids, [interactive.id.as_str()]);
    assert!(
        store
            .claim_from("inference", 10, now + 3, &[Priority::Interactive])
            .expect("claim")
            .is_empty(),
        "the batch job stays for a replica that takes it"
    );
    assert_eq!(
        store
            .get(&batch.id, now + 3)
            .expect("get")
            .map(|r| r.status),
        Some(JobStatus::Queued)
    );
    let taken = store.claim("worker", 10, now + 4).expect("claim");
    let ids: Vec<&str> = taken.iter().map(|j| j.record.id.as_str()).collect();
    assert_eq!(ids, [batch.id.as_str()]);
}

#[test]
fn sqlite_claims_only_the_priorities_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    claims_only_the_priorities_asked_for(&SqliteStore::open(dir.path(), LEASE).expect("open"));
}

#[test]
fn redis_claims_only_the_priorities_asked_for() {
    let redis = RedisServer::start();
    claims_only_the_priorities_asked_for(
        &RedisStore::open(&redis.url(), Duration::from_secs(60)).expect("open"),
    );
}

/// Progress is kept for the run that holds the job, cleared when the job is taken again, and
/// kept once it has ended; a queued job reports `queued` whatever its last run reached.
fn progress(store: &dyn JobStore) {
    let now = now_ms();
    let job = submit(store, Priority::Batch, now);
    let sampling = |done| Progress {
        done,
        total: 4,
        stage: Stage::Sampling,
    };
    let first = store.claim("w1", 1, now + 1).expect("claim").remove(0);
    store
        .set_progress(&job.id, &first.lease, sampling(2))
        .expect("set");
    let got = store.get(&job.id, now + 2).expect("get").expect("known");
    assert_eq!(got.progress, Some(sampling(2)));
    assert_eq!(JobView::from(&got).progress, sampling(2));
    // Another lease (a run that lost the job) changes nothing.
    store
        .set_progress(&job.id, "w9/other", sampling(3))
        .expect("set");
    assert_eq!(
        store
            .get(&job.id, now + 2)
            .expect("get")
            .expect("known")
            .progress,
        Some(sampling(2))
    );
    // Put back (a drain): it reads queued; taken again, its old run's steps are gone.
    store
        .release(&job.id, &first.lease, now + 3, RETENTION)
        .expect("release");
    let queued = store.get(&job.id, now + 3).expect("get").expect("known");
    assert_eq!(JobView::from(&queued).progress, Progress::QUEUED);
    let second = store.claim("w2", 1, now + 4).expect("claim").remove(0);
    let taken = store.get(&job.id, now + 4).expect("get").expect("known");
    assert_eq!(taken.progress, None);
    assert_eq!(JobView::from(&taken).progress, Progress::QUEUED);
    store
        .set_progress(&job.id, &second.lease, sampling(4))
        .expect("set");
    store
        .finish(&job.id, &second.lease, succeeded(), now + 5, RETENTION)
        .expect("finish")
        .expect("set");
    // Ended: no more writes, and the status reads complete.
    store
        .set_progress(&job.id, &second.lease, sampling(1))
        .expect("set");
    let done = store.get(&job.id, now + 6).expect("get").expect("known");
    assert_eq!(done.progress, Some(sampling(4)));
    assert_eq!(
        JobView::from(&done).progress,
        Progress {
            done: 4,
            total: 4,
            stage: Stage::EncodeOutput
        }
    );
}

#[test]
fn sqlite_keeps_the_progress_of_the_run_that_holds_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    progress(&SqliteStore::open(dir.path(), LEASE).expect("open"));
}

#[test]
fn redis_keeps_the_progress_of_the_run_that_holds_the_job() {
    let redis = RedisServer::start();
    progress(&RedisStore::open(&redis.url(), Duration::from_secs(60)).expect("open"));
}

/// A job of `owner`'s with an idempotency key (already scoped) and a request fingerprint.
fn keyed_job(owner: Option<&str>, key: Option<&str>, fingerprint: &str) -> NewJob {
    let mut r = record(Priority::Batch, now_ms(), None);
    r.owner = owner.map(str::to_string);
    r.fingerprint = Some(fingerprint.to_string());
    new_job(r, key, 1000)
}

/// Idempotency keys answer only the same request; each owner has its own bound; the bytes of
/// inputs and results are bounded and counted.
fn scoping_and_bounds(store: &dyn JobStore) {
    use virtualfit::jobs::scoped_idempotency_key;
    let alice_key = scoped_idempotency_key(Some("alice"), "order-17-line-2");
    let bob_key = scoped_idempotency_key(Some("bob"), "order-17-line-2");
    assert_ne!(alice_key, bob_key);
    let first = store
        .submit(keyed_job(Some("alice"), Some(&alice_key), "fp-a"))
        .expect("submit");
    let replay = store
        .submit(keyed_job(Some("alice"), Some(&alice_key), "fp-a"))
        .expect("replay");
    assert!(first.created && !replay.created);
    assert_eq!(first.record.id, replay.record.id);
    match store.submit(keyed_job(Some("alice"), Some(&alice_key), "fp-b")) {
        Err(StoreError::KeyReused) => {}
        other => panic!("a different request under the same key: {other:?}"),
    }
    let bobs = store
        .submit(keyed_job(Some("bob"), Some(&bob_key), "fp-b"))
        .expect("bob's own key");
    assert!(bobs.created, "bob's key names no job of alice's");
    assert_ne!(bobs.record.id, first.record.id);

    // alice has one job; a bound of two admits one more, then refuses; bob is not held up.
    let mut bounded = keyed_job(Some("alice"), None, "x");
    bounded.max_owner_jobs = 2;
    store.submit(bounded.clone()).expect("second of alice's");
    let mut third = keyed_job(Some("alice"), None, "y");
    third.max_owner_jobs = 2;
    match store.submit(third.clone()) {
        Err(StoreError::OwnerFull { jobs }) => assert_eq!(jobs, 2),
        other => panic!("expected alice's bound, got {other:?}"),
    }
    let mut bob_more = keyed_job(Some("bob"), None, "z");
    bob_more.max_owner_jobs = 2;
    store.submit(bob_more).expect("bob has one job");
    // Once one of alice's jobs has ended, she may submit again.
    let now = now_ms();
    let taken = store.claim("w1", 10, now).expect("claim");
    let alices = taken
        .iter()
        .find(|t| t.record.owner.as_deref() == Some("alice"))
        .expect("one of alice's");
    store
        .finish(
            &alices.record.id,
            &alices.lease,
            succeeded(),
            now,
            RETENTION,
        )
        .expect("finish")
        .expect("ended");
    store.submit(third).expect("alice is under her bound again");

    // Bytes: each job holds its inputs (23 bytes here) until it ends, then its result (3):
    // four of the five jobs still hold inputs.
    let held = store.bytes_held().expect("bytes");
    assert_eq!(held, 23 * 4 + 3);
    let mut over = keyed_job(None, None, "big");
    over.max_store_bytes = held + 22;
    match store.submit(over.clone()) {
        Err(StoreError::StoreFull { held: h, more, .. }) => assert_eq!((h, more), (held, 23)),
        other => panic!("expected the byte bound, got {other:?}"),
    }
    over.max_store_bytes = held + 23;
    store.submit(over).expect("fits exactly");
    assert_eq!(store.bytes_held().expect("bytes"), held + 23);
}

#[test]
fn sqlite_scopes_idempotency_keys_and_bounds_owners_and_bytes() {
    let dir = tempfile::tempdir().expect("dir");
    scoping_and_bounds(&SqliteStore::open(dir.path(), LEASE).expect("open"));
}

#[test]
fn redis_scopes_idempotency_keys_and_bounds_owners_and_bytes() {
    let redis = RedisServer::start();
    scoping_and_bounds(&RedisStore::open(&redis.url(), LEASE).expect("open"));
}

/// A run whose end could not be stored (nor the job put back) left the job running for good.
/// Now its claim lapses unless renewed, and the job is taken again; the stale run's end is
/// ignored.
#[test]
fn sqlite_takes_again_a_running_job_whose_claim_lapsed() {
    let dir = tempfile::tempdir().expect("dir");
    let lease = Duration::from_millis(400);
    let store = SqliteStore::open(dir.path(), lease).expect("open");
    let job = submit(&store, Priority::Batch, now_ms());
    let first = store.claim("w1", 5, now_ms()).expect("claim");
    assert_eq!(first.len(), 1);
    assert!(store.claim("w1", 5, now_ms()).expect("claim").is_empty());
    // Renewed, it stays with its run.
    std::thread::sleep(Duration::from_millis(250));
    store.renew("w1", &[first[0].lease.clone()]).expect("renew");
    std::thread::sleep(Duration::from_millis(250));
    assert!(store.claim("w1", 5, now_ms()).expect("claim").is_empty());
    // Not renewed: taken again after the lease.
    std::thread::sleep(Duration::from_millis(500));
    let again = store.claim("w1", 5, now_ms()).expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].record.id, job.id);
    assert_eq!(again[0].record.attempts, 2);
    assert_ne!(again[0].lease, first[0].lease);
    assert!(
        store
            .finish(&job.id, &first[0].lease, succeeded(), now_ms(), RETENTION)
            .expect("finish")
            .is_none(),
        "the lapsed run's end is ignored"
    );
    let done = store
        .finish(&job.id, &again[0].lease, succeeded(), now_ms(), RETENTION)
        .expect("finish")
        .expect("ended");
    assert_eq!(done.status, JobStatus::Succeeded);
}

/// The store notices that its folder was deleted (writes would go to unlinked files).
#[test]
fn sqlite_reports_a_deleted_data_folder() {
    let parent = tempfile::tempdir().expect("dir");
    let dir = parent.path().join("data");
    let store = SqliteStore::open(&dir, LEASE).expect("open");
    store.health().expect("healthy");
    submit(&store, Priority::Batch, now_ms());
    std::fs::remove_dir_all(&dir).expect("rm -rf");
    let e = store.health().expect_err("deleted");
    assert!(e.to_string().contains("deleted"), "{e}");
    match store.submit(new_job(record(Priority::Batch, now_ms(), None), None, 10)) {
        Err(StoreError::Backend(m)) => assert!(m.contains("deleted"), "{m}"),
        other => panic!("a submission to a deleted store: {other:?}"),
    }
    // A new folder at the same path is another file: still refused.
    std::fs::create_dir_all(&dir).expect("mkdir");
    let other = SqliteStore::open(&dir, LEASE).expect("another store");
    drop(other);
    assert!(store.health().is_err(), "replaced");
}
