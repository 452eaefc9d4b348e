//! The model interface end to end with `identity_steps`, a test-only step model registered with
//! one line and written only under `src/models/`: it runs through `/tryon`, `/v1/jobs`, the CLI,
//! `/v1/models` and the OpenAPI document, with its options parsed, bounded and stored from its
//! own declaration. Its answer is the person photo at its 64×48 frame, so every path can be
//! compared with the expected image.

use crate::common;

use std::time::Duration;

use common::{client, fixture, pair_form, pairs, start};
use image::imageops::{self, FilterType};

const MODEL: &str = "identity_steps";

/// What the model answers for sample pair 0: the person photo, decoded as the pipeline decodes
/// it, resized to 48×64.
fn expected() -> image::RgbImage {
    let (person, _) = &pairs()[0];
    let bytes = fixture(&format!("person/{person}"));
    let probe = virtualfit::imaging::probe(&bytes, u64::MAX).expect("a sample");
    // Large JPEGs decode scaled down to the smallest size that still covers the frame.
    let photo = virtualfit::imaging::decode_probed_for(&bytes, &probe, (64, 48)).expect("decodes");
    imageops::resize(&photo, 48, 64, FilterType::Triangle)
}

fn png(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).expect("a PNG").to_rgb8()
}

#[tokio::test]
async fn a_step_model_serves_tryon_and_jobs_with_its_own_options() {
    let (_server, base) = start(&["--model", MODEL, "--max-steps", "5"]).await;
    let c = client();

    // /tryon: the options are the model's (steps bounded by --max-steps), the answer its image.
    let r = c
        .post(format!("{base}/tryon?format=png"))
        .multipart(pair_form(0).text("steps", "4"))
        .send()
        .await
        .expect("tryon");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-model"], MODEL);
    assert!(r.headers().get("x-seed").is_none(), "the model has no seed");
    assert_eq!(png(&r.bytes().await.expect("body")), expected());
    for bad in ["0", "6", "many"] {
        let r = c
            .post(format!("{base}/tryon"))
            .multipart(pair_form(0).text("steps", bad))
            .send()
            .await
            .expect("tryon");
        assert_eq!(r.status(), 400, "steps={bad}");
        let body: serde_json::Value = r.json().await.expect("JSON");
        assert_eq!(
            body["message"], "steps must be a whole number in 1..5",
            "{body}"
        );
    }

    // /v1/jobs: the options are stored with the job and read back by the model.
    let r = c
        .post(format!("{base}/v1/jobs"))
        .multipart(pair_form(0).text("steps", "2").text("format", "png"))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value = c
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        match status["status"].as_str() {
            Some("succeeded") => break,
            Some("queued" | "running") => {}
            other => panic!("job ended {other:?}: {status}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = c
        .get(format!("{base}/v1/jobs/{id}/result"))
        .send()
        .await
        .expect("result")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(png(&result), expected());

    // /v1/models lists the options with their bounds; the served OpenAPI forms document them.
    let models: serde_json::Value = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("JSON");
    let m = &models["models"][0];
    assert_eq!(m["name"], MODEL);
    assert_eq!(
        m["resolution"],
        serde_json::json!({"height": 64, "width": 48})
    );
    assert_eq!(m["options"][0]["name"], "steps");
    assert_eq!(m["options"][0]["values"], "1..5");
    assert_eq!(m["options"][0]["default"], 3);
    // The bounds as numbers too, for a form (the try-on page builds its own from them).
    assert_eq!(
        (&m["options"][0]["minimum"], &m["options"][0]["maximum"]),
        (&serde_json::json!(1.0), &serde_json::json!(5.0))
    );
    assert!(m["options"][0].get("choices").is_none());
    assert!(
        !models["available"].to_string().contains(MODEL),
        "a test model is not listed: {models}"
    );
    let doc: serde_json::Value = c
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("JSON");
    for form in ["TryOnForm", "JobForm"] {
        let steps = &doc["components"]["schemas"][form]["properties"]["steps"];
        assert_eq!(steps["type"], "integer", "{form}: {steps}");
        assert_eq!(steps["maximum"], 5.0, "{form}: {steps}");
        assert_eq!(steps["default"], 3, "{form}: {steps}");
    }
}

#[tokio::test]
async fn another_model_declares_other_options() {
    // The whole-batch default model takes no options: the same field is ignored, as any
    // unknown part is, and its documents list none.
    let (_server, base) = start(&[]).await;
    let c = client();
    let r = c
        .post(format!("{base}/tryon"))
        .multipart(pair_form(0).text("steps", "many"))
        .send()
        .await
        .expect("tryon");
    assert_eq!(r.status(), 200);
    let models: serde_json::Value = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("JSON");
    assert_eq!(models["models"][0]["options"], serde_json::json!([]));
    let doc: serde_json::Value = c
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("JSON");
    assert!(doc["components"]["schemas"]["TryOnForm"]["properties"]
        .get("steps")
        .is_none());
}

#[test]
fn the_cli_runs_a_step_model_with_its_option_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let samples = common::demo_dir();
    let (p, c) = &pairs()[0];
    let out = dir.path().join("out.png");
    let run = |steps: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
            .args(["tryon", "--model", MODEL, "--steps", steps, "--output"])
            .arg(&out)
            .arg("--person")
            .arg(samples.join("person").join(p))
            .arg("--cloth")
            .arg(samples.join("cloth").join(c))
            .output()
            .expect("the binary runs")
    };
    let o = run("2");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(png(&std::fs::read(&out).expect("written")), expected());
    // Bounded by the model's declaration and --max-steps (50 by default).
    let o = run("51");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("steps must be a whole number in 1..50"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An option another model declares is refused for this one.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(["tryon", "--model", MODEL, "--guidance", "2", "--output"])
        .arg(&out)
        .arg("--person")
        .arg(samples.join("person").join(p))
        .arg("--cloth")
        .arg(samples.join("cloth").join(c))
        .output()
        .expect("the binary runs");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--guidance is not an option of model"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
