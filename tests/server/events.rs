//! Job progress and `GET /v1/jobs/{id}/events` against real servers: the order of a step
//! model's events, a cancel mid-stream, heartbeats, the stream limits, an idle stream, a
//! client that leaves, a stream on one replica for a job another runs (a real
//! `redis-server`), and progress after a kill -9 and restart.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::redis_server::RedisServer;
use common::*;
use reqwest::multipart::Form;
use serde_json::Value;
use sha2::{Digest, Sha256};

const STEP_MODEL: &[&str] = &["--model", "identity_steps", "--max-steps", "40"];
const STAGES: [&str; 5] = ["queued", "encode", "sampling", "decode", "encode_output"];

/// One thing read from an event stream.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Event(String, Value),
    Comment(String),
}

/// An open event stream, read frame by frame.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    async fn open(base: &str, id: &str, token: Option<&str>) -> Result<EventStream, (u16, Value)> {
        let mut request = client().get(format!("{base}/v1/jobs/{id}/events"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.expect("an answer");
        if response.status() != 200 {
            let status = response.status().as_u16();
            return Err((status, response.json().await.expect("a JSON error")));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Ok(EventStream {
            response,
            buffer: String::new(),
        })
    }

    /// The next frame, `None` once the stream has ended; the test fails past `within`.
    async fn next(&mut self, within: Duration) -> Option<Frame> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(frame) = parse(&block) {
                    return Some(frame);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("a frame in time")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8")),
                None => return None,
            }
        }
    }

    /// Every frame until the stream ends.
    async fn rest(&mut self, within: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        while let Some(f) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            frames.push(f);
        }
        frames
    }
}

fn parse(block: &str) -> Option<Frame> {
    let (mut event, mut data) = (None, String::new());
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            return Some(Frame::Comment(c.trim().to_string()));
        } else if let Some(e) = line.strip_prefix("event:") {
            event = Some(e.trim().to_string());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
        }
    }
    let event = event?;
    Some(Frame::Event(
        event,
        serde_json::from_str(&data).expect("JSON data"),
    ))
}

fn events(frames: &[Frame]) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Event(n, d) => Some((n.clone(), d.clone())),
            Frame::Comment(_) => None,
        })
        .collect()
}

/// A job's progress from a `status` or a `progress` event.
fn progress_of(name: &str, data: &Value) -> Value {
    if name == "status" {
        data["progress"].clone()
    } else {
        data.clone()
    }
}

fn stage_rank(p: &Value) -> usize {
    let stage = p["stage"].as_str().expect("a stage");
    STAGES
        .iter()
        .position(|s| *s == stage)
        .unwrap_or_else(|| panic!("unknown stage {stage}"))
}

async fn submit(base: &str, token: Option<&str>, form: Form) -> String {
    let mut request = client().post(format!("{base}/v1/jobs")).multipart(form);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let r = request.send().await.expect("an answer");
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["progress"],
        serde_json::json!({"done": 0, "total": 1, "stage": "queued"})
    );
    body["id"].as_str().expect("id").to_string()
}

fn steps_form(steps: u32, step_ms: u32, priority: &str) -> Form {
    pair_form(0)
        .text("steps", steps.to_string())
        .text("step_ms", step_ms.to_string())
        .text("priority", priority.to_string())
}

async fn status(base: &str, id: &str) -> Value {
    client()
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json")
}

/// Checks a finished stream: stages and steps never go back, the first event is a status,
/// and the last is the final status `last`, complete when it succeeded. Answers the steps
/// seen while sampling.
fn check_order(frames: &[Frame], last: &str, total: u64) -> Vec<u64> {
    let events = events(frames);
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("status"));
    let (name, final_status) = events.last().expect("events");
    assert_eq!(
        (name.as_str(), &final_status["status"]),
        ("status", &Value::from(last))
    );
    let mut previous = (0, 0);
    let mut sampled = Vec::new();
    for (name, data) in &events {
        let p = progress_of(name, data);
        let now = (stage_rank(&p), p["done"].as_u64().expect("done"));
        assert!(now >= previous, "progress went back: {events:?}");
        previous = now;
        if p["stage"] == "sampling" {
            assert_eq!(p["total"], total);
            sampled.push(now.1);
        }
    }
    if last == "succeeded" {
        assert_eq!(
            final_status["progress"],
            serde_json::json!({"done": total, "total": total, "stage": "encode_output"})
        );
    }
    sampled
}

#[tokio::test]
async fn a_step_job_streams_its_steps_in_order_and_a_cancel_ends_its_stream() {
    let (_server, base) = start(STEP_MODEL).await;
    let id = submit(&base, None, steps_form(8, 150, "interactive")).await;
    let mut stream = EventStream::open(&base, &id, None).await.expect("a stream");
    let frames = stream.rest(Duration::from_secs(30)).await;
    let sampled = check_order(&frames, "succeeded", 8);
    // Published at most every 200 ms over 1.2 s of steps: several steps, not every one.
    let mid: Vec<_> = sampled.iter().filter(|d| **d > 0 && **d < 8).collect();
    assert!(mid.len() >= 2, "steps seen while sampling: {sampled:?}");
    assert_eq!(
        status(&base, &id).await["progress"],
        serde_json::json!({"done": 8, "total": 8, "stage": "encode_output"})
    );

    // Cancelled while it runs: the stream reports the request, then ends `cancelled`.
    let id = submit(&base, None, steps_form(30, 100, "interactive")).await;
    let mut stream = EventStream::open(&base, &id, None).await.expect("a stream");
    loop {
        match stream.next(Duration::from_secs(10)).await {
            Some(Frame::Event(name, data)) if progress_of(&name, &data)["stage"] == "sampling" => {
                break
            }
            Some(_) => {}
            None => panic!("the stream ended before sampling"),
        }
    }
    let r = client()
        .delete(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 202);
    let events = events(&stream.rest(Duration::from_secs(20)).await);
    assert!(
        events.iter().any(|(n, d)| n == "status"
            && d["status"] == "running"
            && d["cancel_requested"] == true),
        "the cancel request is reported: {events:?}"
    );
    let (name, last) = events.last().expect("events");
    assert_eq!(
        (name.as_str(), last["status"].as_str()),
        ("status", Some("cancelled"))
    );
    let text = metrics_text(&base).await;
    assert_eq!(metric(&text, "virtualfit_open_event_streams", ""), 0.0);
}

fn key_line(name: &str, token: &str) -> String {
    format!("{name}:{}\n", hex::encode(Sha256::digest(token.as_bytes())))
}

fn keys_file(lines: &str) -> PathBuf {
    let path = fresh_data_dir().with_extension("keys");
    std::fs::write(&path, lines).expect("write keys");
    path
}

async fn open_streams(base: &str) -> f64 {
    metric(
        &metrics_text(base).await,
        "virtualfit_open_event_streams",
        "",
    )
}

#[tokio::test]
async fn streams_send_heartbeats_are_bounded_end_when_idle_and_free_their_place_when_the_client_leaves(
) {
    let redis = RedisServer::start();
    let url = redis.url();
    let keys = keys_file(&(key_line("alice", "tok-a") + &key_line("bob", "tok-b")));
    // This replica takes interactive jobs only, and no other runs: batch jobs stay queued, and
    // their streams see nothing but heartbeats.
    let (_server, base) = start(&[
        "--jobs-redis",
        &url,
        "--job-priorities",
        "interactive",
        "--api-keys-file",
        keys.to_str().expect("utf-8"),
        "--event-heartbeat",
        "200ms",
        "--event-idle-timeout",
        "3s",
        "--max-event-streams",
        "3",
        "--max-event-streams-per-key",
        "2",
    ])
    .await;
    let alices = submit(&base, Some("tok-a"), pair_form(0)).await;
    let bobs = submit(&base, Some("tok-b"), pair_form(1)).await;

    // Only the owner's key may follow a job.
    let (code, body) = EventStream::open(&base, &alices, Some("tok-b"))
        .await
        .err()
        .expect("refused");
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let (code, _) = EventStream::open(&base, &alices, None)
        .await
        .err()
        .expect("refused");
    assert_eq!(code, 401);

    let mut first = EventStream::open(&base, &alices, Some("tok-a"))
        .await
        .expect("1st");
    let mut second = EventStream::open(&base, &alices, Some("tok-a"))
        .await
        .expect("2nd");
    let (code, body) = EventStream::open(&base, &alices, Some("tok-a"))
        .await
        .err()
        .expect("alice's third");
    assert_eq!((code, body["error"].as_str()), (429, Some("rate_limited")));
    assert!(
        body["message"].as_str().unwrap_or("").contains("this key"),
        "{body}"
    );
    let bobs_stream = EventStream::open(&base, &bobs, Some("tok-b"))
        .await
        .expect("bob's");
    let (code, body) = EventStream::open(&base, &bobs, Some("tok-b"))
        .await
        .err()
        .expect("the server's fourth");
    assert_eq!(code, 429);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("--max-event-streams"),
        "{body}"
    );
    assert_eq!(open_streams(&base).await, 3.0);

    // The first event is the status, then heartbeats only while nothing changes.
    match first.next(Duration::from_secs(5)).await {
        Some(Frame::Event(name, data)) => {
            assert_eq!(
                (name.as_str(), &data["status"]),
                ("status", &Value::from("queued"))
            )
        }
        other => panic!("first frame {other:?}"),
    }
    let mut heartbeats = 0;
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        match first.next(Duration::from_secs(2)).await {
            Some(Frame::Comment(c)) => {
                assert_eq!(c, "heartbeat");
                heartbeats += 1;
            }
            other => panic!("only heartbeats while queued, got {other:?}"),
        }
    }
    assert!(
        heartbeats >= 3,
        "{heartbeats} heartbeats in 0.9 s at 200 ms"
    );

    // Cancelled while queued: both of alice's streams end with the final status.
    let r = client()
        .delete(format!("{base}/v1/jobs/{alices}"))
        .bearer_auth("tok-a")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    for stream in [&mut first, &mut second] {
        let events = events(&stream.rest(Duration::from_secs(10)).await);
        let (name, last) = events.last().expect("events");
        assert_eq!(
            (name.as_str(), last["status"].as_str()),
            ("status", Some("cancelled"))
        );
    }

    // Bob leaves without a word: his place is given back.
    drop(bobs_stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_streams(&base).await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the streams' places were not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A stream whose job does not change ends after the idle timeout.
    let started = Instant::now();
    let mut again = EventStream::open(&base, &bobs, Some("tok-b"))
        .await
        .expect("again");
    let events = events(&again.rest(Duration::from_secs(15)).await);
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("idle"),
        "{events:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[tokio::test]
async fn a_replica_streams_the_progress_of_a_job_that_another_replica_runs() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut front = STEP_MODEL.to_vec();
    front.extend(["--jobs-redis", &url, "--job-priorities", "interactive"]);
    let (_front, front_base) = start(&front).await;
    let id = submit(&front_base, None, steps_form(8, 150, "batch")).await;
    let mut stream = EventStream::open(&front_base, &id, None)
        .await
        .expect("a stream");
    // The worker replica starts after the stream: only it runs batch jobs.
    let mut worker = STEP_MODEL.to_vec();
    worker.extend(["--jobs-redis", &url]);
    let (_worker, _) = start(&worker).await;
    let frames = stream.rest(Duration::from_secs(30)).await;
    let sampled = check_order(&frames, "succeeded", 8);
    assert!(
        sampled.iter().any(|d| *d > 0 && *d < 8),
        "the front replica saw the steps the worker ran: {sampled:?}"
    );
}

#[tokio::test]
async fn progress_after_a_kill_and_restart_starts_again_from_queued() {
    let data = fresh_data_dir();
    let data_flag = data.to_str().expect("utf-8").to_string();
    let mut args = STEP_MODEL.to_vec();
    args.extend(["--data-dir", &data_flag]);
    let mut server = ChildServer::start(&args);
    server.wait_ready().await;
    let id = submit(&server.base, None, steps_form(30, 200, "interactive")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let p = status(&server.base, &id).await["progress"].clone();
        if p["stage"] == "sampling" && p["done"].as_u64().unwrap_or(0) >= 6 {
            break p["done"].as_u64().unwrap_or(0);
        }
        assert!(
            Instant::now() < deadline,
            "the job never got to step 6: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    server.kill();
    server.wait_exit(Duration::from_secs(10));

    let server = ChildServer::start(&args);
    // Before and just after the restart takes it again, the job reads queued, or early steps
    // of its new run: never the old run's steps.
    let s = status(&server.base, &id).await;
    let p = &s["progress"];
    assert!(
        p["stage"] == "queued" || p["done"].as_u64().unwrap_or(u64::MAX) < before,
        "after the restart: {s}"
    );
    let mut stream = EventStream::open(&server.base, &id, None)
        .await
        .expect("a stream");
    let frames = stream.rest(Duration::from_secs(60)).await;
    check_order(&frames, "succeeded", 30);
}
