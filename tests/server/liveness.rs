//! Liveness against a stalled model worker: a child server whose worker blocks for ever inside
//! a model call (the hidden test hook `--debug-stall-model-after`) answers `/livez` 503 once
//! work has been pending past `--liveness-stall-s` without a finished call (a whole batch, or a
//! diffusion model's UNet step), and stays 200 while idle, however long since its last call; a
//! drain still ends with the worker hung. The kubelet reads `/livez` on the metrics port.

use crate::common;

use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::*;

/// The short bound the tests run with, in seconds.
const STALL_S: f64 = 1.0;

async fn livez(metrics_base: &str) -> reqwest::Response {
    client()
        .get(format!("{metrics_base}/livez"))
        .send()
        .await
        .expect("/livez answers")
}

/// Polls `/livez` for `span`, asserting 200 every time.
async fn stays_live(metrics_base: &str, span: Duration, what: &str) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        let r = livez(metrics_base).await;
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(r.text().await.expect("body"), "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn livez_fails_once_work_waits_on_a_stalled_worker_and_an_idle_server_stays_live() {
    let stall = STALL_S.to_string();
    // The first request after the warm-up runs; the worker stalls inside the second call.
    let mut child = ChildServer::start(&[
        "--model",
        "overlay",
        "--metrics-bind",
        "127.0.0.1:0",
        "--liveness-stall-s",
        &stall,
        "--debug-stall-model-after",
        "1",
        "--request-timeout-s",
        "2",
        "--drain-timeout-s",
        "2",
    ]);
    child.wait_ready().await;
    let base = child.base.clone();
    let metrics_base = child.metrics_base.clone().expect("metrics port");
    let bound = Duration::from_secs_f64(STALL_S);

    // Idle since the warm-up, then idle after answering a request: live, for three bounds each.
    stays_live(&metrics_base, bound * 3, "idle after the warm-up").await;
    assert_still_serves(&base).await;
    stays_live(&metrics_base, bound * 3, "idle after a request").await;

    // Work on a stalled worker: /livez turns 503, not before the bound has passed.
    let submitted = Instant::now();
    let stuck = spawn_tryon(&base, pair_form(1));
    let failed = loop {
        let r = livez(&metrics_base).await;
        if r.status() == 503 {
            break r;
        }
        assert_eq!(r.status(), 200);
        assert!(
            submitted.elapsed() < Duration::from_secs(30),
            "/livez never failed with work pending on a stalled worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        submitted.elapsed() >= bound,
        "/livez failed {:?} after the work arrived, before the {bound:?} bound",
        submitted.elapsed()
    );
    let body: serde_json::Value = failed.json().await.expect("a JSON body");
    assert_eq!(body["error"], "worker_stalled", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("1 admitted"), "{message}");
    assert!(
        metric(
            &metrics_text(&metrics_base).await,
            "virtualfit_active_requests",
            ""
        ) >= 1.0
    );

    // The client's own stall bound answers it (2 × 2 s + 10 s); the worker still holds its
    // item, so liveness keeps failing: a hung device is not waited out.
    let status = stuck.await.expect("task").expect("answered");
    assert_eq!(status, 504);
    assert_eq!(livez(&metrics_base).await.status(), 503);
    // The API port answers the same.
    assert_eq!(
        client()
            .get(format!("{base}/livez"))
            .send()
            .await
            .expect("livez")
            .status(),
        503
    );

    // One log line says why, once, however often the probe asks.
    let said: Vec<String> = child
        .logs()
        .into_iter()
        .filter(|l| l.contains("liveness fails"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    let line: serde_json::Value = serde_json::from_str(&said[0]).expect("a JSON log line");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["pending"], 1, "{line}");

    // Draining a stalled server: the process exits within the drain timeout, without waiting
    // for the hung call.
    child.sigterm();
    let status = child
        .wait_exit(Duration::from_secs(15))
        .expect("the process exits though its worker hangs");
    assert!(status.success(), "{status:?}");
    assert!(
        child
            .logs()
            .iter()
            .any(|l| l.contains("the model worker is still running a batch")),
        "the drain says it left the worker"
    );
}

#[tokio::test]
async fn a_diffusion_worker_stalled_mid_sampling_fails_liveness() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/catvton/model");
    let stall = STALL_S.to_string();
    // Calls after the warm-up: the request's VAE encode, then two UNet steps; the worker
    // stalls inside the third step.
    let child = ChildServer::start(&[
        "--model",
        "catvton",
        "--model-dir",
        dir,
        "--max-steps",
        "8",
        "--metrics-bind",
        "127.0.0.1:0",
        "--liveness-stall-s",
        &stall,
        "--debug-stall-model-after",
        "3",
    ]);
    child.wait_ready().await;
    let base = child.base.clone();
    let metrics_base = child.metrics_base.clone().expect("metrics port");
    stays_live(
        &metrics_base,
        Duration::from_secs(2),
        "idle after the warm-up",
    )
    .await;

    let form = pair_form(0)
        .text("resolution", "512x384")
        .text("steps", "6")
        .text("seed", "1");
    let _stuck = spawn_tryon(&base, form);
    // A call on this CPU may itself take longer than the short bound, so the verdict is read
    // once the worker has reached the hook.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !child.logs().iter().any(|l| l.contains("test hook")) {
        assert!(
            Instant::now() < deadline,
            "the worker never reached the hook"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = loop {
        let r = livez(&metrics_base).await;
        if r.status() == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "/livez never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body: serde_json::Value = failed.json().await.expect("a JSON body");
    assert_eq!(body["error"], "worker_stalled", "{body}");
    // It sampled until the hook: the encode and two steps, then nothing.
    let text = metrics_text(&metrics_base).await;
    assert_eq!(metric(&text, "virtualfit_unet_steps_total", ""), 2.0);
    assert_eq!(metric(&text, "virtualfit_active_requests", ""), 1.0);
}

#[tokio::test]
async fn an_idle_server_with_the_stall_hook_and_a_short_bound_stays_live() {
    let stall = STALL_S.to_string();
    let child = ChildServer::start(&[
        "--model",
        "overlay",
        "--metrics-bind",
        "127.0.0.1:0",
        "--liveness-stall-s",
        &stall,
        "--debug-stall-model-after",
        "0",
    ]);
    child.wait_ready().await;
    let metrics_base = child.metrics_base.clone().expect("metrics port");
    // Nothing is ever submitted: live for five bounds, though any call would stall.
    stays_live(
        &metrics_base,
        Duration::from_secs_f64(STALL_S * 5.0),
        "idle server",
    )
    .await;
}

#[tokio::test]
async fn the_stall_hook_is_hidden_from_help_and_the_bound_flag_is_shown() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(["serve", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--liveness-stall-s"), "{help}");
    assert!(help.contains("VIRTUALFIT_LIVENESS_STALL_S"), "{help}");
    assert!(!help.contains("debug-stall"), "{help}");
}
