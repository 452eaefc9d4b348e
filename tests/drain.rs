//! Drain: a child server process under load gets SIGTERM; every admitted request is answered,
//! new work is refused with 503 and the process exits 0.

mod common;

use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn sigterm_answers_every_admitted_request_and_exits_zero() {
    // Batches wait up to 1.5 s to fill, so admitted requests are still queued at SIGTERM.
    let mut child = ChildServer::start(&["--max-batch-size", "16", "--max-batch-delay-ms", "1500"]);
    child.wait_ready().await;
    let base = child.base.clone();
    let load: Vec<_> = (0..8).map(|i| spawn_tryon(&base, pair_form(i))).collect();
    // Wait until all eight are admitted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics_text(&base).await;
        if metric(&text, "virtualfit_active_requests", "") >= 8.0 {
            break;
        }
        assert!(Instant::now() < deadline, "requests were not admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.sigterm();

    // Readiness turns 503 at once, and new work is refused with 503 while the queue drains.
    let mut saw_unready = false;
    for _ in 0..50 {
        let r = client()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("still up");
        if r.status() == 503 {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_unready, "/readyz answers 503 after SIGTERM");
    let r = post_tryon(&base, pair_form(0)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "unavailable");

    for task in load {
        let status = task
            .await
            .expect("task")
            .expect("every admitted request is answered");
        assert_eq!(status, 200);
    }
    let status = child
        .wait_exit(Duration::from_secs(10))
        .expect("the process exits");
    assert!(status.success(), "exit status {status:?}");
    // Each refusal while draining is one line at INFO, not a warning or an error.
    let loud: Vec<String> = child
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .collect();
    assert!(
        loud.is_empty(),
        "warnings or errors while draining: {loud:?}"
    );
}

#[tokio::test]
async fn drain_timeout_answers_the_rest_and_exits_zero() {
    // The batch would wait 20 s, longer than the 0.5 s drain timeout.
    let mut child = ChildServer::start(&[
        "--max-batch-size",
        "16",
        "--max-batch-delay-ms",
        "20000",
        "--drain-timeout-s",
        "0.5",
    ]);
    child.wait_ready().await;
    let base = child.base.clone();
    let pending = spawn_tryon(&base, pair_form(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&metrics_text(&base).await, "virtualfit_active_requests", "") < 1.0 {
        assert!(Instant::now() < deadline, "not admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.sigterm();
    let status = pending.await.expect("task").expect("answered, not dropped");
    assert_eq!(status, 503, "what could not run in time is answered 503");
    let exit = child
        .wait_exit(Duration::from_secs(10))
        .expect("the process exits");
    assert!(exit.success());
}

#[tokio::test]
async fn a_request_still_uploading_at_sigterm_gets_an_answer() {
    let mut child = ChildServer::start(&["--drain-timeout-s", "2"]);
    child.wait_ready().await;
    let addr = child.addr().to_string();
    // Headers and the start of a body that never finishes.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /tryon HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=XYZ\r\ncontent-length: 100000\r\n\r\n--XYZ\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    // Let the handler start reading the body before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    child.sigterm();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answered before the drain ends")
        .expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "got {answer:?}");
    println!(
        "mid-upload request answered 503 after {:?}",
        started.elapsed()
    );
    let exit = child
        .wait_exit(Duration::from_secs(10))
        .expect("the process exits");
    assert!(exit.success());
}
