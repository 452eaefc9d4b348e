//! The asynchronous jobs API against real stores: every endpoint and error, expiry, a kill -9
//! and restart over SQLite, two replicas sharing a real `redis-server`, and signed webhooks
//! with retries.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::redis_server::RedisServer;
use common::*;
use hmac::{Hmac, Mac};
use reqwest::multipart::Form;
use serde_json::Value;
use sha2::Sha256;

async fn submit(base: &str, form: Form) -> reqwest::Response {
    post_form(base, "/v1/jobs", form).await
}

/// Submits a job and answers its id (the test fails unless it is accepted).
async fn submit_ok(base: &str, form: Form) -> String {
    let r = submit(base, form).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let location = r.headers()["location"].to_str().expect("ascii").to_string();
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["status"], "queued");
    assert!(body["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    id
}

async fn status(base: &str, id: &str) -> Value {
    let r = client()
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

/// Polls until the job's status is one of `wanted`.
async fn wait_status(base: &str, id: &str, wanted: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = status(base, id).await;
        if wanted.iter().any(|w| s["status"] == *w) {
            return s;
        }
        assert!(Instant::now() < deadline, "job {id} stayed {}", s["status"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(url: String) -> reqwest::Response {
    client().get(url).send().await.expect("answer")
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("json error");
    (status, body["error"].as_str().unwrap_or("").to_string())
}

/// A result image that decodes.
async fn assert_result_image(base: &str, id: &str) {
    let r = get(format!("{base}/v1/jobs/{id}/result")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let bytes = r.bytes().await.expect("bytes");
    let image = image::load_from_memory(&bytes).expect("a decodable image");
    assert!(image.width() > 0 && image.height() > 0);
}

#[tokio::test]
async fn every_endpoint_and_error() {
    // One job at a time reaches the batcher, and waits 4 s for a batch of two: the next jobs
    // stay queued in the store meanwhile.
    let (_server, base) = start(&[
        "--max-batch-size",
        "2",
        "--max-batch-delay-ms",
        "4000",
        "--queue-capacity",
        "1",
        "--max-queued-jobs",
        "2",
    ])
    .await;
    let running = submit_ok(&base, pair_form(0).text("metadata", "sku 42")).await;
    let s = wait_status(&base, &running, &["running"], Duration::from_secs(10)).await;
    assert_eq!(s["metadata"], "sku 42");
    assert_eq!(s["priority"], "batch");
    assert!(s["started_at"].is_string() && s["result_url"].is_null());
    let queued = submit_ok(&base, pair_form(1)).await;
    let later = submit_ok(&base, pair_form(2).text("format", "png")).await;

    // The bound: two queued, the third is refused with Retry-After.
    let r = submit(&base, pair_form(3)).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, (429, "overloaded".into()));

    // Unknown and malformed ids, and a result that is not ready.
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        error_code(get(format!("{base}/v1/jobs/{unknown}")).await).await,
        (404, "not_found".into())
    );
    assert_eq!(
        error_code(get(format!("{base}/v1/jobs/..%2F..%2Fetc")).await).await,
        (404, "not_found".into())
    );
    assert_eq!(
        error_code(get(format!("{base}/v1/jobs/{unknown}/result")).await).await,
        (404, "not_found".into())
    );
    assert_eq!(
        error_code(get(format!("{base}/v1/jobs/{queued}/result")).await).await,
        (409, "not_ready".into())
    );

    // Cancelling a queued job ends it at once; once ended, it cannot be cancelled again.
    let delete = |id: &str| client().delete(format!("{base}/v1/jobs/{id}")).send();
    let r = delete(&queued).await.expect("answer");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(status(&base, &queued).await["status"], "cancelled");
    assert_eq!(
        error_code(get(format!("{base}/v1/jobs/{queued}/result")).await).await,
        (409, "conflict".into())
    );
    assert_eq!(
        error_code(delete(&queued).await.expect("answer")).await,
        (409, "conflict".into())
    );
    assert_eq!(
        error_code(delete(unknown).await.expect("answer")).await,
        (404, "not_found".into())
    );

    // Cancelling a running job: it finishes, its result is dropped, it ends cancelled.
    let r = delete(&running).await.expect("answer");
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (body["status"].clone(), body["cancel_requested"].clone()),
        ("running".into(), true.into())
    );
    let s = wait_status(
        &base,
        &running,
        &["cancelled", "succeeded", "failed"],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(s["status"], "cancelled");
    assert!(s["finished_at"].is_string());

    // The other queued job runs and its result is there, in the format it asked for.
    let s = wait_status(
        &base,
        &later,
        &["succeeded", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(s["status"], "succeeded", "{s}");
    assert_eq!(s["result_url"], format!("/v1/jobs/{later}/result"));
    let r = get(format!("{base}/v1/jobs/{later}/result")).await;
    assert_eq!(r.headers()["content-type"], "image/png");
    image::load_from_memory(&r.bytes().await.expect("bytes")).expect("decodes");

    // The same Idempotency-Key returns the same job.
    let keyed = |key: &'static str| {
        client()
            .post(format!("{base}/v1/jobs"))
            .header("idempotency-key", key)
            .multipart(pair_form(4))
            .send()
    };
    let first = keyed("order-17-line-2").await.expect("answer");
    assert_eq!(first.status(), 202);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await.expect("json");
    let again = keyed("order-17-line-2").await.expect("answer");
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(first["id"], again["id"]);

    // Bad fields and bad images are refused at submission with the contract's codes.
    let cases: Vec<(Form, u16, &str)> = vec![
        (pair_form(0).text("priority", "urgent"), 400, "bad_request"),
        (pair_form(0).text("quality", "0"), 400, "bad_request"),
        (
            pair_form(0).text("metadata", "x".repeat(513)),
            400,
            "bad_request",
        ),
        (
            pair_form(0).text("webhook_url", "https://example.com/hook"),
            400,
            "bad_request",
        ),
        (
            Form::new().part(
                "person_image",
                image_part(fixture("person/000066_0.jpg"), "image/jpeg"),
            ),
            400,
            "bad_request",
        ),
        (
            Form::new()
                .part(
                    "person_image",
                    image_part(b"not an image".to_vec(), "text/plain"),
                )
                .part(
                    "cloth_image",
                    image_part(fixture("cloth/003434_1.jpg"), "image/jpeg"),
                ),
            415,
            "unsupported_media_type",
        ),
        (
            Form::new()
                .part(
                    "person_image",
                    image_part(png_header_only(200_000, 200_000), "image/png"),
                )
                .part(
                    "cloth_image",
                    image_part(fixture("cloth/003434_1.jpg"), "image/jpeg"),
                ),
            422,
            "invalid_image",
        ),
    ];
    for (form, code, name) in cases {
        assert_eq!(
            error_code(submit(&base, form).await).await,
            (code, name.into())
        );
    }
    let r = client()
        .post(format!("{base}/v1/jobs"))
        .header("idempotency-key", "bad key with spaces")
        .multipart(pair_form(0))
        .send()
        .await
        .expect("answer");
    assert_eq!(error_code(r).await, (400, "bad_request".into()));
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(
            &text,
            "virtualfit_jobs_finished_total",
            "status=\"cancelled\""
        ),
        2.0
    );
    assert_eq!(metric(&text, "virtualfit_jobs_submitted_total", ""), 4.0);
}

#[tokio::test]
async fn results_expire_after_the_retention_and_the_api_key_guards_jobs() {
    let (_server, base) = start(&["--job-retention", "1s", "--api-key", "k3y"]).await;
    let r = submit(&base, pair_form(0)).await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let authed = |rb: reqwest::RequestBuilder| rb.bearer_auth("k3y").send();
    let r = authed(
        client()
            .post(format!("{base}/v1/jobs"))
            .multipart(pair_form(0)),
    )
    .await
    .expect("answer");
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        error_code(get(format!("{base}/v1/jobs/{id}")).await).await,
        (401, "unauthorized".into())
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let finished = loop {
        let s: Value = authed(client().get(format!("{base}/v1/jobs/{id}")))
            .await
            .expect("answer")
            .json()
            .await
            .expect("json");
        if s["status"] == "succeeded" {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(finished["expires_at"].is_string());
    let r = authed(client().get(format!("{base}/v1/jobs/{id}/result")))
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let s: Value = authed(client().get(format!("{base}/v1/jobs/{id}")))
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(s["status"], "expired");
    let r = authed(client().get(format!("{base}/v1/jobs/{id}/result")))
        .await
        .expect("answer");
    assert_eq!(error_code(r).await, (410, "expired".into()));
}

/// Statuses of many jobs, counted.
async fn census(base: &str, ids: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        let s = status(base, id).await;
        *counts
            .entry(s["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    counts
}

/// Polls until `n` of the jobs read `status` (through `base`), at most `within`.
async fn wait_census(base: &str, ids: &[String], status: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let c = census(base, ids).await;
        if c.get(status) == Some(&n) {
            return;
        }
        assert!(Instant::now() < deadline, "{c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server whose batches wait a minute to fill (a batch of 64): the `holds` jobs it takes
/// stay running, and the rest stay queued.
fn holding_server(holds: &str, extra: &[&str]) -> ChildServer {
    let mut args = vec![
        "--max-batch-size",
        "64",
        "--max-batch-delay-ms",
        "60000",
        "--queue-capacity",
        holds,
    ];
    args.extend_from_slice(extra);
    ChildServer::start(&args)
}

/// Restarts on `data_flag`'s store and waits until every job has succeeded with a result.
async fn restart_and_finish(data_flag: &str, ids: &[String], within: Duration) -> ChildServer {
    let server = ChildServer::start(&["--data-dir", data_flag]);
    server.wait_ready().await;
    wait_census(&server.base, ids, "succeeded", ids.len(), within).await;
    for id in ids {
        assert_result_image(&server.base, id).await;
    }
    server
}

#[tokio::test]
async fn kill_9_with_50_queued_and_running_jobs_then_restart_finishes_each_once() {
    let data = fresh_data_dir();
    let data_flag = data.display().to_string();
    // Twenty jobs reach the batcher and wait a minute for a batch of 64; thirty stay queued.
    let mut first = holding_server("20", &["--data-dir", &data_flag]);
    first.wait_ready().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(submit_ok(&first.base, pair_form(i)).await);
    }
    wait_census(&first.base, &ids, "running", 20, Duration::from_secs(20)).await;
    assert_eq!(census(&first.base, &ids).await.get("queued"), Some(&30));
    first.kill();
    first.wait_exit(Duration::from_secs(10)).expect("killed");

    let second = restart_and_finish(&data_flag, &ids, Duration::from_secs(60)).await;
    // Each job ended once, on the second server, and the store holds exactly the fifty.
    let text = metrics_text(&second.base).await;
    assert_eq!(
        metric(
            &text,
            "virtualfit_jobs_finished_total",
            "status=\"succeeded\""
        ),
        50.0
    );
    assert!(second
        .logs()
        .iter()
        .any(|l| l.contains("queued again the jobs that were running")));
    drop(second);
    let db = rusqlite::Connection::open(data.join("jobs.sqlite3")).expect("db");
    let rows: Vec<(String, String)> = db
        .prepare("SELECT id, status FROM jobs")
        .and_then(|mut q| {
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()
        })
        .expect("rows");
    assert_eq!(rows.len(), 50);
    let stored: HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
    assert_eq!(stored, ids.iter().collect::<HashSet<_>>());
    assert!(rows.iter().all(|(_, s)| s == "succeeded"));
}

#[tokio::test]
async fn two_replicas_share_jobs_through_redis_and_one_finishes_what_the_killed_one_held() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Replica A takes jobs and holds them (its batches wait a minute to fill); B runs at once.
    let mut a = holding_server("10", &["--jobs-redis", &url, "--job-lease", "2s"]);
    let b = ChildServer::start(&["--jobs-redis", &url, "--job-lease", "2s"]);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let via = if i % 2 == 0 { &a.base } else { &b.base };
        ids.push(submit_ok(via, pair_form(i)).await);
    }
    // Every job is either done by B or held by A (at most its capacity), and stays so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = BTreeMap::new();
    let held = loop {
        let c = census(&b.base, &ids).await;
        let count = |s: &str| c.get(s).copied().unwrap_or(0);
        let (done, running) = (count("succeeded"), count("running"));
        if done + running == 50 && (1..=10).contains(&running) && c == last {
            break running;
        }
        assert!(Instant::now() < deadline, "{c:?}");
        last = c;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Any replica answers for any id.
    for id in &ids {
        assert_eq!(status(&a.base, id).await, status(&b.base, id).await);
    }
    a.kill();
    a.wait_exit(Duration::from_secs(10)).expect("killed");
    wait_census(&b.base, &ids, "succeeded", 50, Duration::from_secs(60)).await;
    let c = ChildServer::start(&["--jobs-redis", &url]);
    c.wait_ready().await;
    let mut taken_over = 0;
    for id in &ids {
        assert_result_image(&c.base, id).await;
        let s = status(&c.base, id).await;
        assert_eq!(s, status(&b.base, id).await);
        taken_over += usize::from(
            s["status"] == "succeeded"
                && b.logs()
                    .iter()
                    .any(|l| l.contains("took over") && l.contains(id.as_str())),
        );
    }
    assert_eq!(taken_over, held, "B took over every job A held");
    let text = metrics_text(&b.base).await;
    assert_eq!(
        metric(
            &text,
            "virtualfit_jobs_finished_total",
            "status=\"succeeded\""
        ),
        50.0,
        "each job ended once, on B"
    );
}

type Hits = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver on 127.0.0.1 that answers 500 to the first `failures` calls.
async fn receiver(failures: usize) -> (String, Hits) {
    use axum::http::{HeaderMap, StatusCode};
    let hits: Hits = Arc::default();
    let kept = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let kept = kept.clone();
            async move {
                let signature = headers
                    .get("x-virtualfit-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let mut hits = kept.lock().expect("lock");
                hits.push((signature, body));
                if hits.len() <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("127.0.0.1:{}", addr.port()), hits)
}

/// Checks `t=…,v1=…` the way the README tells receivers to.
fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x),
            Some(("v1", x)) => v1 = Some(x),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    mac.verify_slice(&expected).is_ok()
}

#[tokio::test]
async fn webhooks_are_signed_retried_until_delivered_and_refused_outside_the_allow_list() {
    let (host, hits) = receiver(2).await;
    let (_server, base) = start(&[
        "--webhook-secret",
        "s3cret",
        "--webhook-allow-hosts",
        &format!("http://{host},hooks.example.com"),
        "--webhook-retry-base",
        "200ms",
    ])
    .await;
    let id = submit_ok(
        &base,
        pair_form(0)
            .text("webhook_url", format!("http://{host}/hook"))
            .text("metadata", "batch-7"),
    )
    .await;
    wait_status(&base, &id, &["succeeded"], Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while hits.lock().expect("lock").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the third attempt did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more comes after the delivery.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits = hits.lock().expect("lock").clone();
    assert_eq!(hits.len(), 3, "two failures, then one delivery");
    for (signature, body) in &hits {
        assert!(verify("s3cret", signature, body), "signed: {signature}");
        assert!(!verify("wrong", signature, body));
        let v: Value = serde_json::from_str(body).expect("json");
        assert_eq!(
            (v["id"].as_str(), v["status"].as_str()),
            (Some(id.as_str()), Some("succeeded"))
        );
        assert_eq!(v["metadata"], "batch-7");
    }
    assert!(!verify(
        "s3cret",
        &hits[0].0,
        &hits[0].1.replace("succeeded", "failed")
    ));
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(
            &text,
            "virtualfit_webhook_deliveries_total",
            "outcome=\"retried\""
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "virtualfit_webhook_deliveries_total",
            "outcome=\"delivered\""
        ),
        1.0
    );

    for (url, why) in [
        ("https://evil.example.net/hook", "allow-hosts"),
        ("http://hooks.example.com/hook", "https"),
        ("http://localhost/hook", "https"),
        ("gopher://hooks.example.com/", "https"),
    ] {
        let r = submit(&base, pair_form(0).text("webhook_url", url.to_string())).await;
        assert_eq!(r.status(), 400, "{url}");
        let body: Value = r.json().await.expect("json");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(why)),
            "{url}: {body}"
        );
    }
}

#[tokio::test]
async fn sigterm_puts_back_the_jobs_it_could_not_run_and_a_restart_runs_them() {
    let data = fresh_data_dir();
    let data_flag = data.display().to_string();
    // Ten jobs wait in batches that would take a minute to fill, past the 2 s drain.
    let mut first = holding_server("10", &["--data-dir", &data_flag, "--drain-timeout-s", "2"]);
    first.wait_ready().await;
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(submit_ok(&first.base, pair_form(i)).await);
    }
    wait_census(&first.base, &ids, "running", 10, Duration::from_secs(20)).await;
    first.sigterm();
    let exit = first.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(exit.success(), "{exit:?}");
    let put_back = first
        .logs()
        .iter()
        .filter(|l| l.contains("job put back in the queue"))
        .count();
    assert_eq!(put_back, 10);

    restart_and_finish(&data_flag, &ids, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn an_inference_replica_beside_a_pool_leaves_batch_jobs_to_the_workers() {
    let redis = RedisServer::start();
    let url = redis.url();
    // The inference replica of k8s/overlays/batch-pool: it takes interactive jobs only.
    let inference = ChildServer::start(&["--jobs-redis", &url, "--job-priorities", "interactive"]);
    inference.wait_ready().await;
    let mut batch = Vec::new();
    for i in 0..4 {
        batch.push(submit_ok(&inference.base, pair_form(i).text("priority", "batch")).await);
    }
    let interactive = submit_ok(
        &inference.base,
        pair_form(9).text("priority", "interactive"),
    )
    .await;
    wait_status(
        &inference.base,
        &interactive,
        &["succeeded"],
        Duration::from_secs(30),
    )
    .await;
    // The batch jobs stay in the store for a replica that takes them; this one never counts
    // them as its work.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &batch {
        assert_eq!(status(&inference.base, id).await["status"], "queued");
    }
    let text = metrics_text(&inference.base).await;
    assert_eq!(
        metric(&text, "virtualfit_batch_items_total", "batch"),
        0.0,
        "no batch item ran on the inference replica"
    );
    assert_eq!(
        metric(&text, "virtualfit_model_busy_share_seconds_total", "batch"),
        0.0
    );
    // A worker of the pool (every priority, the default) runs them.
    let worker = ChildServer::start(&["--jobs-redis", &url]);
    worker.wait_ready().await;
    wait_census(
        &worker.base,
        &batch,
        "succeeded",
        4,
        Duration::from_secs(60),
    )
    .await;
    for id in &batch {
        assert_result_image(&inference.base, id).await;
    }
    let text = metrics_text(&worker.base).await;
    assert_eq!(metric(&text, "virtualfit_batch_items_total", "batch"), 4.0);
    let text = metrics_text(&inference.base).await;
    assert_eq!(
        metric(
            &text,
            "virtualfit_jobs_finished_total",
            "status=\"succeeded\""
        ),
        1.0,
        "the inference replica ended the interactive job only"
    );
}
