//! The HTTP API against a real server on 127.0.0.1:0 with the sample photos (assets/samples): the happy
//! path, every row of the contract's error table, batching, admission and metrics.

use crate::common;

use std::time::Duration;

use common::*;
use reqwest::multipart::Form;
use reqwest::StatusCode;

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let ct = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        ct.starts_with("application/json"),
        "JSON error body, got {ct}"
    );
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(!message.is_empty(), "a human sentence");
    body
}

use common::post_tryon as post;

#[tokio::test]
async fn happy_path_in_jpeg_and_png() {
    let (_server, base) = start(&[]).await;
    for (format, mime) in [("jpeg", "image/jpeg"), ("png", "image/png")] {
        let r = client()
            .post(format!("{base}/tryon?format={format}&quality=80"))
            .multipart(pair_form(1))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], mime);
        assert_eq!(h["x-model"], "overlay");
        assert!(!h["x-request-id"].is_empty());
        let batch: usize = h["x-batch-size"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("number");
        assert!(batch >= 1);
        for name in ["x-queue-time-ms", "x-inference-time-ms"] {
            let v: f64 = h[name].to_str().expect("ascii").parse().expect("number");
            assert!(v >= 0.0, "{name}");
        }
        let img = image::load_from_memory(&r.bytes().await.expect("body")).expect("an image");
        assert_eq!((img.width(), img.height()), (192, 256));
    }
}

#[tokio::test]
async fn other_aspect_ratios_are_padded_and_cropped_back() {
    let (_server, base) = start(&["--output-format", "png"]).await;
    let person = image::load_from_memory(&fixture("person/000066_0.jpg")).expect("jpeg");
    let wide = image::imageops::resize(
        &person.to_rgb8(),
        384,
        256,
        image::imageops::FilterType::Triangle,
    );
    let png = virtualfit::imaging::encode(&wide, virtualfit::imaging::OutputFormat::Png, 90)
        .expect("png");
    let form = Form::new()
        .part("person_image", image_part(png, "image/png"))
        .part(
            "cloth_image",
            image_part(fixture("cloth/017575_1.jpg"), "image/jpeg"),
        )
        .part(
            "cloth_mask",
            image_part(fixture("cloth-mask/017575_1.jpg"), "image/jpeg"),
        );
    let r = post(&base, form).await;
    assert_eq!(r.status(), 200);
    let img = image::load_from_memory(&r.bytes().await.expect("body")).expect("png");
    assert_eq!(
        (img.width(), img.height()),
        (192, 128),
        "the padding is cropped off"
    );
}

#[tokio::test]
async fn request_id_is_echoed() {
    let (_server, base) = start(&[]).await;
    let r = client()
        .post(format!("{base}/tryon"))
        .header("x-request-id", "trace-me-42")
        .multipart(pair_form(2))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn missing_or_duplicated_part_is_bad_request() {
    let (_server, base) = start(&[]).await;
    let person = || image_part(fixture("person/000066_0.jpg"), "image/jpeg");
    let cases = [
        (Form::new().part("person_image", person()), "cloth_image"),
        (
            pair_form(0).part("person_image", person()),
            "more than once",
        ),
    ];
    for (form, says) in cases {
        let body = expect_error(post(&base, form).await, 400, "bad_request").await;
        let message = body["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{message}");
    }
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn malformed_multipart_is_bad_request() {
    let (_server, base) = start(&[]).await;
    let r = client()
        .post(format!("{base}/tryon"))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"person_image\"\r\n\r\nabc")
        .send()
        .await
        .expect("answer");
    expect_error(r, 400, "bad_request").await;
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn garbage_bytes_are_an_invalid_image() {
    let (_server, base) = start(&[]).await;
    let form = Form::new()
        .part(
            "person_image",
            image_part(b"this is not an image at all".to_vec(), "image/jpeg"),
        )
        .part(
            "cloth_image",
            image_part(fixture("cloth/017575_1.jpg"), "image/jpeg"),
        );
    expect_error(post(&base, form).await, 422, "invalid_image").await;
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn truncated_jpeg_is_an_invalid_image() {
    let (_server, base) = start(&[]).await;
    let jpeg = fixture("person/000066_0.jpg");
    let form = Form::new()
        .part(
            "person_image",
            image_part(jpeg[..jpeg.len() / 2].to_vec(), "image/jpeg"),
        )
        .part(
            "cloth_image",
            image_part(fixture("cloth/017575_1.jpg"), "image/jpeg"),
        );
    expect_error(post(&base, form).await, 422, "invalid_image").await;
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn png_bomb_is_refused_from_its_header() {
    let (_server, base) = start(&[]).await;
    let form = Form::new()
        .part(
            "person_image",
            image_part(png_header_only(50_000, 50_000), "image/png"),
        )
        .part(
            "cloth_image",
            image_part(fixture("cloth/017575_1.jpg"), "image/jpeg"),
        );
    let body = expect_error(post(&base, form).await, 422, "invalid_image").await;
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.contains("50000x50000"), "{message}");
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn body_over_the_limit_is_payload_too_large() {
    let (_server, base) = start(&["--max-body-bytes", "100000"]).await;
    let form = pair_form(0).part("padding", image_part(vec![0u8; 200_000], "image/png"));
    expect_error(post(&base, form).await, 413, "payload_too_large").await;
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn non_multipart_body_is_bad_request() {
    let (_server, base) = start(&[]).await;
    let r = client()
        .post(format!("{base}/tryon"))
        .header("content-type", "application/json")
        .body("{\"person_image\": \"x\"}")
        .send()
        .await
        .expect("answer");
    let body = expect_error(r, 400, "bad_request").await;
    assert!(body["message"].as_str().unwrap_or("").contains("multipart"));
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn wrong_part_content_type_is_unsupported_media_type() {
    let (_server, base) = start(&[]).await;
    let form = Form::new()
        .part("person_image", image_part(b"hello".to_vec(), "text/plain"))
        .part(
            "cloth_image",
            image_part(fixture("cloth/017575_1.jpg"), "image/jpeg"),
        );
    expect_error(post(&base, form).await, 415, "unsupported_media_type").await;
    // A GIF sent as an image is a format we do not take.
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec();
    let form = Form::new()
        .part("person_image", image_part(gif, "image/gif"))
        .part(
            "cloth_image",
            image_part(fixture("cloth/017575_1.jpg"), "image/jpeg"),
        );
    expect_error(post(&base, form).await, 415, "unsupported_media_type").await;
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn api_key_guards_tryon_only() {
    let (_server, base) = start(&["--api-key", "s3cret"]).await;
    let r = post(&base, pair_form(0)).await;
    expect_error(r, 401, "unauthorized").await;
    let r = client()
        .post(format!("{base}/tryon"))
        .bearer_auth("wrong")
        .multipart(pair_form(0))
        .send()
        .await
        .expect("answer");
    expect_error(r, 401, "unauthorized").await;
    for path in [
        "/livez",
        "/readyz",
        "/metrics",
        "/v1/models",
        "/openapi.json",
    ] {
        let r = client()
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200, "{path} needs no key");
    }
    let r = client()
        .post(format!("{base}/tryon"))
        .bearer_auth("s3cret")
        .multipart(pair_form(0))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200, "the right key passes");
}

#[tokio::test]
async fn bad_query_is_bad_request() {
    let (_server, base) = start(&[]).await;
    for q in ["format=gif", "quality=0", "quality=abc"] {
        let r = client()
            .post(format!("{base}/tryon?{q}"))
            .multipart(pair_form(0))
            .send()
            .await
            .expect("answer");
        expect_error(r, 400, "bad_request").await;
    }
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn concurrent_requests_are_batched() {
    let (_server, base) = start(&["--max-batch-delay-ms", "100"]).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let base = base.clone();
            tokio::spawn(async move { post(&base, pair_form(i)).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    let text = metrics_text(&base).await;
    let batches = metric(&text, "virtualfit_batch_size_count", "");
    let items = metric(&text, "virtualfit_batch_size_sum", "");
    let singles = metric(&text, "virtualfit_batch_size_bucket", "le=\"1\"");
    // The warm-up batch is not counted: only served batches are.
    assert_eq!(items, 16.0, "every request ran once");
    assert!(batches < 16.0, "{batches} batches for 16 requests");
    assert!(singles < batches, "some batch held more than one request");
    println!("16 concurrent requests ran in {batches} batches");
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after() {
    // The first request waits up to 3 s for its batch to fill and holds the only queue slot.
    let (_server, base) = start(&["--queue-capacity", "1", "--max-batch-delay-ms", "3000"]).await;
    let first = {
        let base = base.clone();
        tokio::spawn(async move { post(&base, pair_form(0)).await.status() })
    };
    let mut refused = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = metrics_text(&base).await;
        if metric(&text, "virtualfit_queue_length", "") >= 1.0 {
            refused = Some(post(&base, pair_form(1)).await);
            break;
        }
    }
    let r = refused.expect("the first request was admitted");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    expect_error(r, 429, "overloaded").await;
    assert_eq!(
        first.await.expect("task"),
        StatusCode::OK,
        "the admitted one is served"
    );
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(&text, "virtualfit_rejected_requests_total", "queue_full"),
        1.0
    );
}

#[tokio::test]
async fn request_past_its_deadline_gets_504_and_never_runs() {
    let (_server, base) =
        start(&["--request-timeout-s", "0.2", "--max-batch-delay-ms", "1000"]).await;
    expect_error(post(&base, pair_form(0)).await, 504, "deadline_exceeded").await;
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(&text, "virtualfit_rejected_requests_total", "deadline"),
        1.0
    );
    assert_eq!(
        metric(&text, "virtualfit_batch_size_count", ""),
        0.0,
        "no batch ran"
    );
    assert_eq!(
        metric(&text, "virtualfit_requests_total", "code=\"504\""),
        1.0
    );
}

#[tokio::test]
async fn disconnected_client_is_counted_as_cancelled() {
    let (_server, base) = start(&["--max-batch-delay-ms", "1000"]).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let r = impatient
        .post(format!("{base}/tryon"))
        .multipart(pair_form(0))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    let mut cancelled = 0.0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let text = metrics_text(&base).await;
        cancelled = metric(&text, "virtualfit_rejected_requests_total", "cancelled");
        if cancelled > 0.0 {
            assert_eq!(metric(&text, "virtualfit_active_requests", ""), 0.0);
            assert_eq!(
                metric(&text, "virtualfit_batch_size_count", ""),
                0.0,
                "it never ran"
            );
            break;
        }
    }
    assert_eq!(cancelled, 1.0);
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn health_models_and_openapi() {
    let (server, base) = start(&["--max-batch-size", "4"]).await;
    let c = client();
    assert_eq!(
        c.get(format!("{base}/livez"))
            .send()
            .await
            .expect("livez")
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    let models: serde_json::Value = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    let m = &models["models"][0];
    assert_eq!(m["name"], "overlay");
    assert_eq!(m["device"], "cpu");
    assert_eq!(m["resolution"]["height"], 256);
    assert_eq!(m["resolution"]["width"], 192);
    assert_eq!(m["max_batch_size"], 4);
    assert_eq!(
        m["licences"],
        serde_json::json!([]),
        "the overlay has no weights"
    );
    let doc: serde_json::Value = c
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
    for path in [
        "/tryon",
        "/livez",
        "/readyz",
        "/metrics",
        "/v1/models",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    let licence = &doc["components"]["schemas"]["Licence"];
    for field in ["part", "source", "licence"] {
        assert!(
            licence["properties"].get(field).is_some(),
            "Licence.{field}"
        );
    }
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(&text, "virtualfit_model_info", "model=\"overlay\""),
        1.0
    );
    drop(server);
}

#[tokio::test]
async fn metrics_follow_the_contract_and_pass_promtool() {
    let (server, base) = start(&["--metrics-bind", "127.0.0.1:0", "--gpu-hour-price", "2.5"]).await;
    assert_still_serves(&base).await;
    let _ = post(&base, Form::new()).await;
    let metrics_base = format!("http://{}", server.metrics_addr.expect("metrics port"));
    let text = metrics_text(&metrics_base).await;
    // The cost inputs: the configured price, and forward time no longer than the batches'.
    assert_eq!(metric(&text, "virtualfit_price_per_gpu_hour_usd", ""), 2.5);
    let busy = metric(&text, "virtualfit_model_busy_seconds_total", "");
    let batches = metric(&text, "virtualfit_batch_duration_seconds_sum", "");
    assert!(
        busy > 0.0 && busy >= batches * 0.999,
        "busy {busy} s, batches {batches} s"
    );
    // Every /tryon is interactive work: the interactive share is the whole busy time, and
    // nothing is left active or queued.
    let interactive = metric(
        &text,
        "virtualfit_model_busy_share_seconds_total",
        "interactive",
    );
    assert!(
        (interactive - busy).abs() <= busy * 1e-6,
        "interactive {interactive} s of {busy} s"
    );
    assert_eq!(
        metric(&text, "virtualfit_model_busy_share_seconds_total", "batch"),
        0.0
    );
    for p in ["interactive", "batch"] {
        assert_eq!(metric(&text, "virtualfit_active_items", p), 0.0, "{p}");
        assert_eq!(metric(&text, "virtualfit_queued_seconds", p), 0.0, "{p}");
    }
    for (name, kind) in [
        ("virtualfit_model_busy_seconds_total", "counter"),
        ("virtualfit_price_per_gpu_hour_usd", "gauge"),
        ("virtualfit_queued_items", "gauge"),
        ("virtualfit_active_items", "gauge"),
        ("virtualfit_queued_seconds", "gauge"),
        ("virtualfit_model_busy_share_seconds_total", "counter"),
        ("virtualfit_jobs_finished_total", "counter"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
    }
    let types = [
        ("virtualfit_queue_length", "gauge"),
        ("virtualfit_active_requests", "gauge"),
        ("virtualfit_request_duration_seconds", "histogram"),
        ("virtualfit_requests_total", "counter"),
        ("virtualfit_queue_duration_seconds", "histogram"),
        ("virtualfit_batch_size", "histogram"),
        ("virtualfit_batch_duration_seconds", "histogram"),
        ("virtualfit_rejected_requests_total", "counter"),
        ("virtualfit_backlog_seconds", "gauge"),
        ("virtualfit_model_info", "gauge"),
    ];
    assert_eq!(types.len(), virtualfit::metrics::CONTRACT_NAMES.len());
    for (name, kind) in types {
        assert!(virtualfit::metrics::CONTRACT_NAMES.contains(&name));
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is a {kind}"
        );
    }
    assert!(text.contains("virtualfit_request_duration_seconds_bucket{code=\"200\",le=\"5\"}"));
    for reason in [
        "queue_full",
        "draining",
        "deadline",
        "cancelled",
        "invalid",
        "body_timeout",
    ] {
        assert!(text.contains(&format!(
            "virtualfit_rejected_requests_total{{reason=\"{reason}\"}}"
        )));
    }
    assert_eq!(
        metric(&text, "virtualfit_rejected_requests_total", "invalid"),
        1.0
    );
    assert!(
        !text.contains("virtualfit_gpu_"),
        "no GPU gauges on the CPU"
    );

    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; .ci/run installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

#[tokio::test]
async fn metrics_bind_serves_metrics_on_its_own_port() {
    let (server, _base) = start(&["--metrics-bind", "127.0.0.1:0"]).await;
    let addr = server.metrics_addr.expect("metrics address");
    let c = client();
    let r = c
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .expect("text")
        .contains("virtualfit_queue_length"));
    let r = c
        .get(format!("http://{addr}/tryon"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404, "no API there");
    for probe in ["livez", "readyz"] {
        let r = c
            .get(format!("http://{addr}/{probe}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200, "/{probe} on the metrics port");
    }
    let r = c
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404, "/metrics is not on the API port");
}

#[tokio::test]
async fn a_slow_upload_does_not_hold_the_queue() {
    use tokio::io::AsyncWriteExt;
    let (server, base) = start(&["--queue-capacity", "1"]).await;
    // A client that announces a body and sends only part of it holds no decoding slot: only
    // the bytes it sent count against the budget of bodies in memory.
    let mut slow = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /tryon HTTP/1.1\r\nhost: {}\r\ncontent-type: multipart/form-data; boundary=XYZ\r\ncontent-length: 100000\r\n\r\n--XYZ\r\n",
        server.addr
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    slow.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        assert_eq!(post(&base, pair_form(i)).await.status(), 200, "request {i}");
    }
    drop(slow);
}

#[tokio::test]
async fn lowercase_bearer_is_accepted() {
    let (_server, base) = start(&["--api-key", "s3cret"]).await;
    let r = client()
        .post(format!("{base}/tryon"))
        .header("authorization", "bearer s3cret")
        .multipart(pair_form(0))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
}
