//! Helpers shared by the integration tests: a real server on 127.0.0.1:0, fixture images and
//! multipart requests.
#![allow(dead_code)]

pub mod child;
pub mod detectron2_checkpoint;
pub mod fake_hub;
pub mod redis_server;
pub mod schp_checkpoint;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use reqwest::multipart::{Form, Part};
use virtualfit::config::ServeArgs;
use virtualfit::metrics_text;
use virtualfit::server::Server;

/// `virtualfit serve` flags, parsed the way the binary parses them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
}

/// A gzip-compressed file's bytes (the parity fixtures are `.safetensors.gz`).
pub fn gunzip(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(f), &mut bytes))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    bytes
}

/// The tensors of a gzip-compressed safetensors fixture, on the CPU.
pub fn gz_tensors(path: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load_buffer(&gunzip(path), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// ‖a − b‖ / ‖b‖, in f64: how the parity tests compare a network's outputs.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    (num / den).sqrt()
}

/// A fresh folder under the build's temporary directory, for a server's job store.
pub fn fresh_data_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "data-{}-{}-{n}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A fresh folder under the build's temporary directory that is removed when dropped, for what a
/// test fills with hundreds of megabytes (a hub cache): the runs must not pile them up on disk.
/// A `tempfile::TempDir` that reads as a `Path` and passes as a command argument.
pub struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    pub fn new(suffix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .suffix(&format!(".{suffix}"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("scratch folder");
        ScratchDir(dir)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for ScratchDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

pub fn serve_args(extra: &[&str]) -> ServeArgs {
    let mut argv: Vec<String> = ["virtualfit", "--bind", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    // Each server keeps its jobs in its own folder, unless the test names one.
    if !extra.contains(&"--data-dir") {
        argv.push("--data-dir".into());
        argv.push(fresh_data_dir().display().to_string());
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    Flags::try_parse_from(argv).expect("valid flags").serve
}

/// Starts a server with the given extra flags and waits until it is ready.
pub async fn start(extra: &[&str]) -> (Server, String) {
    let mut server = Server::start(serve_args(extra))
        .await
        .expect("server starts");
    server.ready().await.expect("warm-up");
    let base = format!("http://{}", server.addr);
    (server, base)
}

pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples")
}

pub fn fixture(rel: &str) -> Vec<u8> {
    let path = demo_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The sample pairs as (person, cloth) file names.
pub fn pairs() -> Vec<(String, String)> {
    String::from_utf8(fixture("pairs.txt"))
        .expect("utf-8")
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

pub fn image_part(bytes: Vec<u8>, mime: &str) -> Part {
    Part::bytes(bytes)
        .file_name("image")
        .mime_str(mime)
        .expect("mime")
}

/// A form with the first sample pair.
pub fn pair_form(index: usize) -> Form {
    let pairs = pairs();
    let (p, c) = &pairs[index % pairs.len()];
    Form::new()
        .part(
            "person_image",
            image_part(fixture(&format!("person/{p}")), "image/jpeg"),
        )
        .part(
            "cloth_image",
            image_part(fixture(&format!("cloth/{c}")), "image/jpeg"),
        )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// The sum of the samples of series `name` in a /metrics text that carry a label matching
/// `label`, a fragment of one `key="value"` pair (`""` matches every sample).
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    metrics_text::samples(text)
        .filter(|s| s.name == name)
        .filter(|s| {
            label.is_empty()
                || s.labels
                    .iter()
                    .any(|(k, v)| format!("{k}=\"{v}\"").contains(label))
        })
        .map(|s| s.value)
        .sum()
}

pub async fn metrics_text(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Posts a form to `/tryon` and answers the response (the test fails if none comes).
pub async fn post_tryon(base: &str, form: Form) -> reqwest::Response {
    post_form(base, "/tryon", form).await
}

/// Posts a multipart form to `path` and answers the response (the test fails if none comes).
pub async fn post_form(base: &str, path: &str, form: Form) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .multipart(form)
        .send()
        .await
        .expect("the server answers")
}

/// Posts a form to `/tryon` in a task; the task answers the status, or the transport error.
pub fn spawn_tryon(base: &str, form: Form) -> tokio::task::JoinHandle<Result<u16, reqwest::Error>> {
    let url = format!("{base}/tryon");
    tokio::spawn(async move {
        client()
            .post(url)
            .multipart(form)
            .send()
            .await
            .map(|r| r.status().as_u16())
    })
}

/// A successful /tryon proves the server is still up and serving.
pub async fn assert_still_serves(base: &str) {
    let r = post_tryon(base, pair_form(0)).await;
    assert_eq!(r.status(), 200, "the server still serves /tryon");
}

/// A PNG header claiming `w×h` pixels, with no image data: decoding it would need w·h·3 bytes.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    out
}

pub mod k8s;
