//! Drain: a child server process under load gets SIGTERM; every admitted request is answered,
//! new work is refused with 503 and the process exits 0.

use crate::common;

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

/// A multipart body with the first sample pair, as a client would send it.
fn pair_body(boundary: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file) in [
        ("person_image", "person/000066_0.jpg"),
        ("cloth_image", "cloth/017575_1.jpg"),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; filename=\"{name}.jpg\"\r\ncontent-type: image/jpeg\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&fixture(file));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// Sends a request's headers and the first `sent` bytes of its body.
async fn start_upload(addr: &str, path: &str, body: &[u8], sent: usize) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=XYZ\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(&body[..sent]).await.expect("write");
    s
}

/// The status line of the answer.
async fn status_line(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Uploads whose handlers started before SIGTERM finish a second later, well within the
/// drain: they are run and answered 200 (`/tryon`) and 202 (`/v1/jobs`), not 503.
#[tokio::test]
async fn uploads_in_progress_at_sigterm_are_run_within_the_drain() {
    let mut child = ChildServer::start(&["--drain-timeout-s", "15"]);
    child.wait_ready().await;
    let addr = child.addr().to_string();
    let body = pair_body("XYZ");
    let half = body.len() / 2;
    let mut uploads = Vec::new();
    for path in [
        "/tryon", "/tryon", "/tryon", "/v1/jobs", "/v1/jobs", "/v1/jobs",
    ] {
        uploads.push((path, start_upload(&addr, path, &body, half).await));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.sigterm();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (_, s) in &mut uploads {
        s.write_all(&body[half..])
            .await
            .expect("the rest of the body");
    }
    for (path, s) in &mut uploads {
        let line = status_line(s).await;
        let wanted = if *path == "/tryon" { "200" } else { "202" };
        assert!(
            line.starts_with(&format!("HTTP/1.1 {wanted}")),
            "{path}: {line}"
        );
    }
    let exit = child
        .wait_exit(Duration::from_secs(20))
        .expect("the process exits");
    assert!(exit.success());
}

/// A request refused during the drain (503) whose body is still arriving when the drain's
/// time runs short is read to its end and answered, on /tryon as on /v1/jobs, not cut off.
#[tokio::test]
async fn a_refused_upload_is_answered_cleanly_when_the_drain_deadline_passes() {
    // Soft deadline 4 s after SIGTERM (5 s less a 1 s reserve), held open by an upload that
    // never finishes.
    let mut child = ChildServer::start(&["--drain-timeout-s", "5"]);
    child.wait_ready().await;
    let addr = child.addr().to_string();
    let body = pair_body("XYZ");
    let _held = start_upload(&addr, "/tryon", &body, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    child.sigterm();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let mut refused = Vec::new();
    for path in ["/tryon", "/v1/jobs"] {
        refused.push((path, start_upload(&addr, path, &body, 100).await));
    }
    // The rest arrives in pieces until 4.4 s after the signal, past the soft deadline.
    let pieces = 7;
    let step = (body.len() - 100).div_ceil(pieces);
    for chunk in body[100..].chunks(step) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (_, s) in &mut refused {
            s.write_all(chunk).await.expect("the server reads the body");
        }
    }
    assert!(signalled.elapsed() > Duration::from_millis(4000));
    for (path, s) in &mut refused {
        let line = status_line(s).await;
        assert!(line.starts_with("HTTP/1.1 503"), "{path}: {line}");
    }
    let exit = child
        .wait_exit(Duration::from_secs(20))
        .expect("the process exits");
    assert!(exit.success());
}
