//! Hostile clients against a real server on 127.0.0.1: images shaped to blow up decoding, memory
//! bombs, stalled uploads, connection floods, clients that send their body slowly, and echoed
//! strings. Each attack is bounded in count and time, and each test ends with the server
//! still serving. Run with `--nocapture` for the figures.

use crate::common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::*;
use reqwest::multipart::Form;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A valid PNG of `h` copies of one row of raw samples.
fn png_of(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, row: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(color);
    encoder.set_depth(depth);
    encoder.set_compression(png::Compression::High);
    let mut writer = encoder.write_header().expect("header");
    let mut stream = writer.stream_writer().expect("stream");
    for _ in 0..h {
        stream.write_all(row).expect("row");
    }
    stream.finish().expect("finish");
    drop(writer);
    out
}

/// A valid 1-bit grayscale PNG of `w×h` pixels, all black: a few KB for millions of pixels.
fn one_bit_png(w: u32, h: u32) -> Vec<u8> {
    let row = vec![0u8; (w as usize).div_ceil(8)];
    png_of(w, h, png::ColorType::Grayscale, png::BitDepth::One, &row)
}

/// A valid 16-bit RGBA PNG of `w×h` pixels of one colour: about 0.4 MB at 5900×5900, and
/// 278 MB once decoded.
fn rgba16_png(w: u32, h: u32) -> Vec<u8> {
    let row = [0x80u8, 0x00, 0x40, 0x00, 0x20, 0x00, 0xFF, 0xFF].repeat(w as usize);
    png_of(w, h, png::ColorType::Rgba, png::BitDepth::Sixteen, &row)
}

fn form_with(person: Vec<u8>, person_mime: &str, mask: Option<Vec<u8>>) -> Form {
    let c = &pairs()[0].1;
    let mut form = Form::new()
        .part("person_image", image_part(person, person_mime))
        .part(
            "cloth_image",
            image_part(fixture(&format!("cloth/{c}")), "image/jpeg"),
        );
    if let Some(m) = mask {
        form = form.part("cloth_mask", image_part(m, "image/png"));
    }
    form
}

fn person_jpeg() -> Vec<u8> {
    fixture(&format!("person/{}", pairs()[0].0))
}

use common::post_tryon as post_form;

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_string())
}

// ---- 1. images shaped to blow up decoding ----

#[tokio::test]
async fn elongated_images_are_refused_from_their_header() {
    let (_server, base) = start(&[]).await;
    let long_mask = one_bit_png(36_000_000, 1);
    println!("36,000,000×1 1-bit mask: {} bytes", long_mask.len());
    assert!(long_mask.len() < 64 << 10, "the bomb is small");
    let cases = [
        ("36M×1 mask", person_jpeg(), "image/jpeg", Some(long_mask)),
        (
            "1M×36 mask",
            person_jpeg(),
            "image/jpeg",
            Some(one_bit_png(1_000_000, 36)),
        ),
        (
            "36M×1 person",
            one_bit_png(36_000_000, 1),
            "image/png",
            None,
        ),
        (
            "20000×20000 person",
            one_bit_png(20_000, 20_000),
            "image/png",
            None,
        ),
    ];
    for (what, person, mime, mask) in cases {
        let r = post_form(&base, form_with(person, mime, mask)).await;
        let (status, code) = error_code(r).await;
        assert_eq!((status, code.as_str()), (422, "invalid_image"), "{what}");
    }
    assert_still_serves(&base).await;
}

#[tokio::test]
async fn a_large_mask_of_the_right_shape_is_fitted_without_resizing_to_the_garment() {
    let (_server, base) = start(&[]).await;
    // A 4000×5000 mask for a 192×256 garment: fitted straight into the frame.
    let mask = one_bit_png(4_000, 5_000);
    let r = post_form(&base, form_with(person_jpeg(), "image/jpeg", Some(mask))).await;
    assert_eq!(r.status(), 200);
}

// ---- 2. decoding memory bounded by --max-decode-memory ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decode_bombs_stay_within_the_decode_budget() {
    const BUDGET_MIB: u64 = 1024;
    const MARGIN_MIB: u64 = 320;
    const REQUESTS: usize = 32;
    let budget = format!("{BUDGET_MIB}MiB");
    let server = ChildServer::start(&["--max-decode-memory", &budget, "--device", "cpu"]);
    server.wait_ready().await;
    assert_still_serves(&server.base).await;
    let baseline = server.rss_bytes();
    let bomb = rgba16_png(5_900, 5_900);
    println!("5900×5900 16-bit RGBA PNG: {} bytes", bomb.len());
    let one = Instant::now();
    let r = post_form(&server.base, form_with(bomb.clone(), "image/png", None)).await;
    println!(
        "one bomb alone: {} in {:.2} s",
        r.status(),
        one.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        let base = server.base.clone();
        let bomb = bomb.clone();
        tasks.push(tokio::spawn(async move {
            let form = form_with(bomb, "image/png", None);
            let r = post_form(&base, form).await;
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            (status, body)
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, body) = t.await.expect("joined");
        if status != 200 {
            println!("{status}: {body}");
        }
        statuses.push(status);
    }
    let peak = server.peak_rss_bytes();
    println!(
        "{REQUESTS} bombs in {:.1} s: statuses {:?}; RSS before {} MiB, peak {} MiB (budget {BUDGET_MIB} MiB)",
        started.elapsed().as_secs_f64(),
        statuses,
        baseline >> 20,
        peak >> 20
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "only answers or refusals: {statuses:?}"
    );
    assert!(statuses.contains(&200), "the bombs are decoded, in turn");
    assert!(
        peak <= baseline + ((BUDGET_MIB + MARGIN_MIB) << 20),
        "peak RSS {} MiB over the baseline {} MiB + budget {BUDGET_MIB} MiB + margin {MARGIN_MIB} MiB",
        peak >> 20,
        baseline >> 20
    );
    assert_still_serves(&server.base).await;
}

#[tokio::test]
async fn an_image_needing_more_than_the_whole_budget_is_refused() {
    let (_server, base) = start(&["--max-decode-memory", "64MiB"]).await;
    let r = post_form(
        &base,
        form_with(rgba16_png(3_000, 3_000), "image/png", None),
    )
    .await;
    let (status, code) = error_code(r).await;
    assert_eq!((status, code.as_str()), (422, "invalid_image"));
    assert_still_serves(&base).await;
}

// ---- 3. stalled uploads ----

/// Opens a connection and sends a request head announcing a body it never finishes.
async fn stalled_upload(addr: &str, chunked: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let framing = if chunked {
        "transfer-encoding: chunked\r\n\r\n5\r\n--XYZ\r\n".to_string()
    } else {
        "content-length: 100000\r\n\r\n--XYZ\r\n".to_string()
    };
    let head = format!(
        "POST /tryon HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=XYZ\r\n{framing}"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

async fn read_status(s: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_do_not_block_real_requests_and_time_out() {
    let server = ChildServer::start(&["--body-timeout-s", "3", "--device", "cpu"]);
    server.wait_ready().await;
    let mut stalled = Vec::new();
    for i in 0..264 {
        stalled.push(stalled_upload(server.addr(), i >= 200).await);
    }
    // Real requests are served while every stalled upload waits for its deadline.
    let mut served = 0;
    for i in 0..12 {
        let r = post_form(&server.base, pair_form(i)).await;
        assert_eq!(r.status(), 200, "real request {i} during the attack");
        served += 1;
    }
    println!("/tryon during 264 stalled uploads: {served}/12 served");
    // Past the body timeout each stalled upload is answered 408 and closed.
    let mut timed_out = 0;
    for s in &mut stalled {
        if read_status(s, Duration::from_secs(10)).await == Some(408) {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, stalled.len(), "every stalled upload got 408");
    let text = metrics_text(&server.base).await;
    assert_eq!(
        metric(&text, "virtualfit_rejected_requests_total", "body_timeout"),
        stalled.len() as f64
    );
    assert_still_serves(&server.base).await;
}

// ---- 4. connection floods and silent connections ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_and_liveness_stays_answerable() {
    // The child runs under a 1,024 open-files limit, as the attack found it.
    let server = ChildServer::start_with_open_files(
        &[
            "--header-timeout-s",
            "2",
            "--metrics-bind",
            "127.0.0.1:0",
            "--device",
            "cpu",
        ],
        Some(1024),
    );
    server.wait_ready().await;
    let metrics_base = server.metrics_base.clone().expect("metrics port");
    let mut flood = Vec::new();
    for i in 0..3_000 {
        let Ok(mut s) = TcpStream::connect(server.addr()).await else {
            continue;
        };
        // Half never finish their headers, half send nothing at all.
        if i % 2 == 0 {
            let _ = s.write_all(b"POST /tryon HTTP/1.1\r\nhost: x\r\n").await;
        }
        flood.push(s);
    }
    let c = client();
    let live = c
        .get(format!("{metrics_base}/livez"))
        .send()
        .await
        .expect("liveness answers during the flood");
    assert_eq!(live.status(), 200);
    // Within the header timeout the stalled connections are closed, and the API serves again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served = false;
    while Instant::now() < deadline {
        if let Ok(r) = c
            .post(format!("{}/tryon", server.base))
            .multipart(pair_form(0))
            .send()
            .await
        {
            if r.status() == 200 {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        served,
        "the API serves again once the stalled connections are closed"
    );
    // The API serves again as soon as the first stalled connections close; the others, accepted
    // later in the flood, reach their own header timeout shortly after.
    let (mut capped, mut timed_out) = (0.0, 0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = metrics_text(&metrics_base).await;
        capped = metric(
            &text,
            "virtualfit_connections_closed_total",
            "max_connections",
        );
        timed_out = metric(
            &text,
            "virtualfit_connections_closed_total",
            "header_timeout",
        );
        if timed_out >= 500.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("3000 connections: {capped} closed past the cap, {timed_out} at the header timeout");
    assert!(capped > 0.0, "connections past the cap were closed");
    assert!(
        timed_out >= 500.0,
        "silent and half-sent connections timed out"
    );
    drop(flood);
}

// ---- 5. early refusals reach a client that sends its body slowly ----

#[tokio::test]
async fn an_early_refusal_reaches_a_client_still_sending_its_body() {
    let (server, _base) = start(&["--api-key", "s3cret"]).await;
    let addr = server.addr.to_string();
    let body = {
        let mut b = b"--XYZ\r\ncontent-disposition: form-data; name=\"person_image\"; filename=\"p\"\r\ncontent-type: image/jpeg\r\n\r\n".to_vec();
        b.extend(std::iter::repeat_n(b'x', 300_000));
        b.extend_from_slice(b"\r\n--XYZ--\r\n");
        b
    };
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /tryon HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=XYZ\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    for chunk in body.chunks(16 << 10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.write_all(chunk)
            .await
            .expect("the server reads the body it refuses: no reset while sending");
    }
    assert_eq!(read_status(&mut s, Duration::from_secs(5)).await, Some(401));
}

// ---- 7. reflected and amplified strings ----

#[tokio::test]
async fn request_ids_and_echoed_strings_are_bounded() {
    let (_server, base) = start(&[]).await;
    let c = client();
    let kept = c
        .get(format!("{base}/livez"))
        .header("x-request-id", "order-42_a.b")
        .send()
        .await
        .expect("answer");
    assert_eq!(kept.headers()["x-request-id"], "order-42_a.b");
    assert_eq!(kept.headers()["x-content-type-options"], "nosniff");
    for bad in [
        "x".repeat(200_000),
        "has space".to_string(),
        "x".repeat(129),
    ] {
        let r = c
            .get(format!("{base}/livez"))
            .header("x-request-id", bad.as_str())
            .send()
            .await
            .expect("answer");
        let id = r.headers()["x-request-id"].to_str().expect("ascii");
        assert!(
            id != bad && id.len() <= 128,
            "a fresh id replaces {} bytes",
            bad.len()
        );
    }
    let junk = "y".repeat(60_000);
    let echoing = [
        (
            "content type",
            c.post(format!("{base}/tryon"))
                .header("content-type", format!("text/plain; {junk}"))
                .body("hello"),
        ),
        (
            "format",
            c.post(format!("{base}/tryon?format={junk}"))
                .multipart(pair_form(0)),
        ),
    ];
    for (what, request) in echoing {
        let r = request.send().await.expect("answer");
        assert_eq!(r.status(), 400, "{what}");
        let body = r.text().await.expect("body");
        assert!(
            body.len() < 600,
            "{what} echoed in full: {} bytes",
            body.len()
        );
    }
}
