//! The jobs API shared by clients that do not trust each other, and a store whose disk fails:
//! idempotency keys scoped to their owner and bound to their request, named keys read again
//! on SIGHUP, job ownership, per-key limits, the webhook allow list's address entries, a full
//! disk (a real tmpfs, when running as root), a deleted `--data-dir`, and the byte bound.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::*;
use reqwest::multipart::Form;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A keys file line for `token`.
fn key_line(name: &str, token: &str) -> String {
    format!("{name}:{}\n", hex::encode(Sha256::digest(token.as_bytes())))
}

fn keys_file(lines: &str) -> PathBuf {
    let path = fresh_data_dir().with_extension("keys");
    std::fs::write(&path, lines).expect("write keys");
    path
}

async fn post_job(
    base: &str,
    token: Option<&str>,
    key: Option<&str>,
    form: Form,
) -> reqwest::Response {
    let mut rb = client().post(format!("{base}/v1/jobs")).multipart(form);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(k) = key {
        rb = rb.header("idempotency-key", k);
    }
    rb.send().await.expect("answer")
}

async fn call(method: reqwest::Method, url: String, token: &str) -> reqwest::Response {
    client()
        .request(method, url)
        .bearer_auth(token)
        .send()
        .await
        .expect("answer")
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("json error");
    (status, body["error"].as_str().unwrap_or("").to_string())
}

async fn accepted(r: reqwest::Response) -> (String, bool) {
    assert_eq!(r.status(), 202);
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let body: Value = r.json().await.expect("json");
    (body["id"].as_str().expect("id").to_string(), replayed)
}

#[tokio::test]
async fn idempotency_keys_and_jobs_belong_to_the_key_that_submitted_them() {
    let file = keys_file(&(key_line("alice", "tok-a") + &key_line("bob", "tok-b")));
    let (_server, base) = start(&["--api-keys-file", file.to_str().expect("utf-8")]).await;
    let key = Some("order-17-line-2");

    let (alices, replayed) =
        accepted(post_job(&base, Some("tok-a"), key, pair_form(0)).await).await;
    assert!(!replayed);
    let (again, replayed) = accepted(post_job(&base, Some("tok-a"), key, pair_form(0)).await).await;
    assert!(
        replayed && again == alices,
        "the same request replays the first job"
    );
    // The same key with other images is refused, and names no job.
    let r = post_job(&base, Some("tok-a"), key, pair_form(1)).await;
    assert_eq!(error_code(r).await, (422, "idempotency_key_reused".into()));
    let r = post_job(
        &base,
        Some("tok-a"),
        key,
        pair_form(0).text("metadata", "other"),
    )
    .await;
    assert_eq!(error_code(r).await, (422, "idempotency_key_reused".into()));
    // Another key's client using the same Idempotency-Key gets its own job, not alice's.
    let (bobs, replayed) = accepted(post_job(&base, Some("tok-b"), key, pair_form(1)).await).await;
    assert!(!replayed && bobs != alices);

    // A duplicated header is refused rather than read as its first value.
    let r = client()
        .post(format!("{base}/v1/jobs"))
        .bearer_auth("tok-a")
        .header("idempotency-key", "order-17-line-2")
        .header("idempotency-key", "order-18")
        .multipart(pair_form(0))
        .send()
        .await
        .expect("answer");
    assert_eq!(error_code(r).await, (400, "bad_request".into()));

    // bob cannot read, fetch or cancel alice's job: it is unknown to him.
    let job = format!("{base}/v1/jobs/{alices}");
    for (method, url) in [
        (reqwest::Method::GET, job.clone()),
        (reqwest::Method::GET, format!("{job}/result")),
        (reqwest::Method::DELETE, job.clone()),
    ] {
        let r = call(method.clone(), url.clone(), "tok-b").await;
        assert_eq!(
            error_code(r).await,
            (404, "not_found".into()),
            "{method} {url}"
        );
    }
    let r = call(reqwest::Method::GET, job.clone(), "tok-a").await;
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.expect("json");
    assert!(!s["cancel_requested"].as_bool().unwrap_or(true) && s["status"] != "cancelled");
    let r = call(reqwest::Method::GET, job, "tok-nobody").await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
}

fn sighup(server: &ChildServer) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok);
}

async fn wait_log(server: &ChildServer, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !server.logs().iter().any(|l| l.contains(needle)) {
        assert!(Instant::now() < deadline, "no log line with `{needle}`");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn named_keys_are_read_again_on_sighup_and_each_key_has_its_limits() {
    let file = keys_file(&key_line("alice", "tok-a"));
    // Jobs wait a minute for a batch of 64: alice's stay queued or running.
    let server = ChildServer::start(&[
        "--api-keys-file",
        file.to_str().expect("utf-8"),
        "--max-jobs-per-key",
        "2",
        "--key-requests-per-s",
        "5",
        "--max-batch-size",
        "64",
        "--max-batch-delay-ms",
        "60000",
    ]);
    server.wait_ready().await;
    let base = &server.base;
    for i in 0..2 {
        accepted(post_job(base, Some("tok-a"), None, pair_form(i)).await).await;
    }
    let r = post_job(base, Some("tok-a"), None, pair_form(2)).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, (429, "rate_limited".into()));
    let r = post_job(base, Some("tok-b"), None, pair_form(0)).await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));

    // bob's key is added to the file; SIGHUP makes it valid.
    std::fs::write(
        &file,
        key_line("alice", "tok-a") + &key_line("bob", "tok-b"),
    )
    .expect("write");
    sighup(&server);
    wait_log(&server, "API keys read again", Duration::from_secs(10)).await;
    let (bobs, _) = accepted(post_job(base, Some("tok-b"), None, pair_form(0)).await).await;
    // A file that does not parse leaves the keys as they were.
    std::fs::write(&file, "bob tok-b\n").expect("write");
    sighup(&server);
    wait_log(&server, "API keys file is refused", Duration::from_secs(10)).await;
    let r = call(
        reqwest::Method::GET,
        format!("{base}/v1/jobs/{bobs}"),
        "tok-b",
    )
    .await;
    assert_eq!(r.status(), 200);

    // bob past his request rate: 429 with Retry-After, while alice is still served.
    let mut limited = 0;
    for _ in 0..30 {
        let r = call(
            reqwest::Method::GET,
            format!("{base}/v1/jobs/{bobs}"),
            "tok-b",
        )
        .await;
        if r.status() == 429 {
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .expect("Retry-After");
            assert!(after >= 1);
            assert_eq!(error_code(r).await, (429, "rate_limited".into()));
            limited += 1;
        }
    }
    assert!(limited >= 20, "{limited} of 30 refused at 5 a second");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = call(
        reqwest::Method::GET,
        format!("{base}/v1/jobs/{bobs}"),
        "tok-a",
    )
    .await;
    assert_eq!(
        error_code(r).await,
        (404, "not_found".into()),
        "alice is served"
    );
}

type Hits = Arc<Mutex<usize>>;

/// A webhook receiver on 127.0.0.1 that counts its calls and answers 204.
async fn receiver() -> (u16, Hits) {
    receiver_on("127.0.0.1").await
}

/// The same on another loopback address: another host to the sender.
async fn receiver_on(ip: &str) -> (u16, Hits) {
    let hits: Hits = Arc::default();
    let kept = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let kept = kept.clone();
            async move {
                *kept.lock().expect("lock") += 1;
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, hits)
}

#[tokio::test]
async fn an_address_on_the_allow_list_lets_no_hostname_reach_it() {
    let (by_name, name_hits) = receiver().await;
    let (by_address, address_hits) = receiver().await;
    // As in the report: a name with a port, a name on any port, and an address.
    let allow =
        format!("http://localhost:{by_name},http://localhost,http://127.0.0.1:{by_address}");
    let (_server, base) = start(&[
        "--webhook-secret",
        "s3cret",
        "--webhook-allow-hosts",
        &allow,
        "--webhook-retry-base",
        "100ms",
    ])
    .await;
    // Accepted at submission (the names are listed), refused at delivery: localhost is
    // loopback, and only a URL naming 127.0.0.1 on its port may go there.
    for url in [
        format!("http://localhost:{by_name}/hook"),
        format!("http://localhost:{by_address}/hook"),
    ] {
        let r = post_form(
            &base,
            "/v1/jobs",
            pair_form(0).text("webhook_url", url.clone()),
        )
        .await;
        assert_eq!(r.status(), 202, "{url}");
    }
    let r = post_form(
        &base,
        "/v1/jobs",
        pair_form(0).text(
            "webhook_url",
            format!("http://127.0.0.1:{}/hook", by_address + 1),
        ),
    )
    .await;
    assert_eq!(
        error_code(r).await,
        (400, "bad_request".into()),
        "another port"
    );
    let r = post_form(
        &base,
        "/v1/jobs",
        pair_form(0).text("webhook_url", format!("http://127.0.0.1:{by_address}/hook")),
    )
    .await;
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while *address_hits.lock().expect("lock") < 1 {
        assert!(
            Instant::now() < deadline,
            "the address entry's webhook was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused ones have been tried (and retried) meanwhile, never delivered.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics_text(&base).await;
        let retried = metric(
            &text,
            "virtualfit_webhook_deliveries_total",
            "outcome=\"retried\"",
        );
        if retried >= 4.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{retried} retries");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*name_hits.lock().expect("lock"), 0);
    assert_eq!(*address_hits.lock().expect("lock"), 1);
}

/// A tmpfs of `mib` MiB mounted under the build's temporary folder, unmounted on drop; `None`
/// when this process may not mount (not root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = fresh_data_dir().with_extension("tmpfs");
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a file until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![7u8; 1 << 16];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

async fn readyz(base: &str) -> (u16, String) {
    let r = client()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("answer");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn wait_readyz(base: &str, status: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (s, body) = readyz(base).await;
        if s == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {s}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn job_status(base: &str, id: &str) -> String {
    let v: Value = client()
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    v["status"].as_str().unwrap_or("?").to_string()
}

async fn wait_job(base: &str, id: &str, wanted: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = job_status(base, id).await;
        if s == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} stayed {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_full_disk_makes_the_server_unready_and_a_job_whose_end_was_lost_runs_again() {
    let Some(tmpfs) = Tmpfs::mount(16) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = tmpfs.0.join("data");
    // A job waits 3 s for a batch of two: long enough to fill the disk under it.
    let server = ChildServer::start(&[
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--job-lease",
        "2s",
        "--max-batch-size",
        "2",
        "--max-batch-delay-ms",
        "3000",
    ]);
    server.wait_ready().await;
    let base = &server.base;
    let (id, _) = accepted(post_job(base, None, None, pair_form(0)).await).await;
    wait_job(base, &id, "running", Duration::from_secs(10)).await;
    let filler = tmpfs.0.join("filler");
    fill(&filler);

    let why = wait_readyz(base, 503, Duration::from_secs(5)).await;
    assert!(why.contains("job store"), "{why}");
    let r = post_job(base, None, None, pair_form(1)).await;
    assert_eq!(error_code(r).await, (503, "unavailable".into()));
    // The run ends, but neither its end nor a put-back can be stored.
    wait_log(&server, "cannot put the job back", Duration::from_secs(20)).await;
    assert_eq!(job_status(base, &id).await, "running");

    std::fs::remove_file(&filler).expect("free the disk");
    wait_readyz(base, 200, Duration::from_secs(5)).await;
    // Taken again once its claim has lapsed (2 s), and run to its end.
    wait_job(base, &id, "succeeded", Duration::from_secs(30)).await;
    let r = client()
        .get(format!("{base}/v1/jobs/{id}/result"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    image::load_from_memory(&r.bytes().await.expect("bytes")).expect("decodes");
    assert!(server
        .logs()
        .iter()
        .any(|l| l.contains("took over a job whose run could not record its end")));
    drop(server);
}

#[tokio::test]
async fn a_deleted_data_dir_turns_readiness_and_submissions_to_503() {
    let data = fresh_data_dir();
    let server = ChildServer::start(&["--data-dir", data.to_str().expect("utf-8")]);
    server.wait_ready().await;
    let base = &server.base;
    accepted(post_job(base, None, None, pair_form(0)).await).await;
    std::fs::remove_dir_all(&data).expect("rm -rf --data-dir");
    let why = wait_readyz(base, 503, Duration::from_secs(5)).await;
    assert!(why.contains("deleted"), "{why}");
    let r = post_job(base, None, None, pair_form(1)).await;
    assert_eq!(error_code(r).await, (503, "unavailable".into()));
    wait_log(
        &server,
        "the job store cannot record jobs",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn the_store_keeps_at_most_max_store_bytes_and_shows_what_it_holds() {
    let pair = (fixture("person/000066_0.jpg").len() + fixture("cloth/017575_1.jpg").len()) as u64;
    let limit = pair * 5 / 2;
    // Jobs wait a minute for a batch of 64: their inputs stay in the store.
    let (_server, base) = start(&[
        "--max-store-bytes",
        &limit.to_string(),
        "--max-batch-size",
        "64",
        "--max-batch-delay-ms",
        "60000",
    ])
    .await;
    for _ in 0..2 {
        accepted(post_job(&base, None, None, pair_form(0)).await).await;
    }
    let r = post_job(&base, None, None, pair_form(0)).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, (507, "insufficient_storage".into()));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics_text(&base).await;
        let held = metric(&text, "virtualfit_job_store_bytes", "");
        if held == (2 * pair) as f64 {
            assert_eq!(
                metric(
                    &text,
                    "virtualfit_rejected_requests_total",
                    "reason=\"store_full\""
                ),
                1.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "the gauge shows {held}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The default byte bound fits the Deployment's data volume, with room for SQLite's journal.
#[test]
fn the_default_store_bound_fits_the_deployments_data_volume() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/base/deployment.yaml"),
    )
    .expect("deployment.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let volume = doc["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "data")
        .expect("the data volume");
    let limit = volume["emptyDir"]["sizeLimit"].as_str().expect("sizeLimit");
    let gib: u64 = limit
        .strip_suffix("Gi")
        .and_then(|n| n.parse().ok())
        .expect("a size in Gi");
    let default = serve_args(&[]).jobs.max_store_bytes;
    assert!(
        default * 5 <= (gib << 30) * 4,
        "--max-store-bytes {default} leaves under a fifth of {limit} for the journal"
    );
}

/// 200 deliveries to a receiver that accepts connections and never answers: another
/// receiver's webhook still arrives within a second (the bound; it is usually one
/// poll, 250 ms), and the tarpit holds only its own host's slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_delay_another() {
    use virtualfit::batcher::Priority;
    use virtualfit::jobs::webhook::{run_deliveries, WebhookConfig, PER_HOST};
    use virtualfit::jobs::{
        new_id, now_ms, JobInputs, JobRecord, JobStatus, JobStore, NewJob, Outcome, SqliteStore,
    };

    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tarpit_port = tarpit.local_addr().expect("addr").port();
    let accepted = Arc::new(Mutex::new(0usize));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = tarpit.accept().await {
            *counted.lock().expect("lock") += 1;
            held.push(socket);
        }
    });
    // Another host: slots are counted per host, whatever the port.
    let (good_port, hits) = receiver_on("127.0.0.2").await;

    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn JobStore> =
        Arc::new(SqliteStore::open(dir.path(), Duration::from_secs(60)).expect("open"));
    // Ends a job whose webhook goes to `host:port`.
    let end_job = |host: &str, port: u16| {
        let record = JobRecord {
            id: new_id(),
            status: JobStatus::Queued,
            priority: Priority::Batch,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            expires_ms: None,
            error: None,
            metadata: None,
            webhook_url: Some(format!("http://{host}:{port}/hook")),
            format: "jpeg".into(),
            quality: 90,
            attempts: 0,
            cancel_requested: false,
            lease: None,
            options: None,
            owner: None,
            fingerprint: None,
            progress: None,
        };
        let id = record.id.clone();
        store
            .submit(NewJob {
                record,
                inputs: JobInputs {
                    person: bytes::Bytes::from_static(b"p"),
                    cloth: bytes::Bytes::from_static(b"c"),
                    garment_mask: None,
                    person_mask: None,
                },
                idempotency_key: None,
                max_queued: 10_000,
                retention: Duration::from_secs(3600),
                max_owner_jobs: usize::MAX,
                max_store_bytes: u64::MAX,
            })
            .expect("submit");
        let taken = store.claim("w", 1, now_ms()).expect("claim");
        assert_eq!(taken[0].record.id, id);
        store
            .finish(
                &id,
                &taken[0].lease,
                Outcome::Failed(virtualfit::jobs::JobFailure {
                    code: "internal".into(),
                    message: "test".into(),
                }),
                now_ms(),
                Duration::from_secs(3600),
            )
            .expect("finish")
            .expect("ended");
    };
    for _ in 0..200 {
        end_job("127.0.0.1", tarpit_port);
    }
    let config = WebhookConfig {
        secret: Some("k".into()),
        allow: [
            format!("http://127.0.0.1:{tarpit_port}"),
            format!("http://127.0.0.2:{good_port}"),
        ]
        .iter()
        .map(|a| a.parse().expect("entry"))
        .collect(),
        retry_base: Duration::from_secs(20),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn(run_deliveries(
        store.clone(),
        config,
        virtualfit::metrics::Metrics::new(),
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while *accepted.lock().expect("lock") < PER_HOST {
        assert!(Instant::now() < deadline, "the tarpit is not called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the loop go round the tarpit's deferred deliveries a few times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ended = Instant::now();
    end_job("127.0.0.2", good_port);
    loop {
        if *hits.lock().expect("lock") == 1 {
            break;
        }
        assert!(
            ended.elapsed() < Duration::from_secs(1),
            "the other receiver's webhook waited past 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delay = ended.elapsed();
    eprintln!("the other receiver's webhook arrived {delay:?} after its job ended");
    assert_eq!(
        *accepted.lock().expect("lock"),
        PER_HOST,
        "the tarpit holds only its host's slots"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .expect("the sender stops")
        .expect("joined");
}

/// A job upload that stalls past --body-timeout-s is answered 408 and counted, as on /tryon.
#[tokio::test]
async fn a_job_upload_past_the_body_timeout_is_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, base) = start(&["--body-timeout-s", "0.5"]).await;
    let addr = server.addr.to_string();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=XYZ\r\ncontent-length: 100000\r\n\r\n--XYZ\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(
            &text,
            "virtualfit_rejected_requests_total",
            "reason=\"body_timeout\""
        ),
        1.0
    );
}
