//! Drain: a child server process under load gets SIGTERM; every admitted request is answered,
//! new work is refused with 503 and the process exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts `virtualfit serve` on a free port and answers the child and its base URL.
fn spawn_server(extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(["serve", "--bind", "127.0.0.1:0", "--log-format", "text"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening addr=").nth(1) {
                let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server logs its address");
    (child, format!("http://{addr}"))
}

async fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client().get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server never became ready");
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_answers_every_admitted_request_and_exits_zero() {
    // Batches wait up to 1.5 s to fill, so admitted requests are still queued at SIGTERM.
    let (mut child, base) =
        spawn_server(&["--max-batch-size", "16", "--max-batch-delay-ms", "1500"]);
    wait_ready(&base).await;
    let load: Vec<_> = (0..8)
        .map(|i| {
            let base = base.clone();
            tokio::spawn(async move {
                client()
                    .post(format!("{base}/tryon"))
                    .multipart(pair_form(i))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
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
    sigterm(&child);

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
    let r = client()
        .post(format!("{base}/tryon"))
        .multipart(pair_form(0))
        .send()
        .await
        .expect("still up while draining");
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn drain_timeout_answers_the_rest_and_exits_zero() {
    // The batch would wait 20 s, longer than the 0.5 s drain timeout.
    let (mut child, base) = spawn_server(&[
        "--max-batch-size",
        "16",
        "--max-batch-delay-ms",
        "20000",
        "--drain-timeout-s",
        "0.5",
    ]);
    wait_ready(&base).await;
    let pending = {
        let base = base.clone();
        tokio::spawn(async move {
            client()
                .post(format!("{base}/tryon"))
                .multipart(pair_form(0))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&metrics_text(&base).await, "virtualfit_active_requests", "") < 1.0 {
        assert!(Instant::now() < deadline, "not admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    sigterm(&child);
    let status = pending.await.expect("task").expect("answered, not dropped");
    assert_eq!(status, 503, "what could not run in time is answered 503");
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the process did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success());
}
