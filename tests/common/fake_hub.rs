//! A Hugging Face Hub on 127.0.0.1 for the hub tests: `resolve/{revision}/{path}` with the
//! headers clients read (`ETag`, `X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`,
//! `X-Error-Code`), range requests, and LFS files redirected to a second listener (the CDN, on
//! another port, as the real hub's is on another host). It serves CatVTON's tiny fixture
//! weights laid out as the published repositories are, counts every request, and can require
//! a token, cut a transfer short or corrupt a file once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::Digest;

/// One file of a repository.
#[derive(Clone)]
pub struct HubFile {
    pub bytes: Arc<Vec<u8>>,
    /// Stored with LFS: redirected to the CDN, its etag the sha256.
    pub lfs: bool,
    pub sha256: String,
    /// git's blob sha1, the etag of a small file.
    pub git_sha1: String,
}

impl HubFile {
    fn new(bytes: Vec<u8>, lfs: bool) -> Self {
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let mut git = sha1::Sha1::new();
        git.update(format!("blob {}\0", bytes.len()).as_bytes());
        git.update(&bytes);
        let git_sha1 = hex::encode(git.finalize());
        Self {
            bytes: Arc::new(bytes),
            lfs,
            sha256,
            git_sha1,
        }
    }
}

/// A request the hub or its CDN received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `resolve` or `cdn`.
    pub route: &'static str,
    /// The repository's file (`resolve`) or the blob's sha256 (`cdn`).
    pub what: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

impl Seen {
    /// Whether it asked for file bytes, not only the one-byte metadata probe.
    pub fn is_transfer(&self) -> bool {
        self.range.as_deref() != Some("bytes=0-0")
    }

    /// The first byte a ranged request asked for.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }
}

#[derive(Default)]
struct Knobs {
    /// A token every request must carry.
    token: Option<String>,
    /// Blob sha256 → the byte at which the next transfer that reaches it is cut.
    cut_at: HashMap<String, u64>,
    /// Blob sha256s whose next transfer is served with a byte flipped.
    corrupt_once: HashSet<String>,
}

struct Inner {
    /// Repository id → (commit, path → file).
    repos: BTreeMap<String, (String, BTreeMap<String, HubFile>)>,
    seen: Mutex<Vec<Seen>>,
    knobs: Mutex<Knobs>,
    cdn_base: String,
}

#[derive(Clone)]
pub struct FakeHub {
    inner: Arc<Inner>,
    /// `http://127.0.0.1:PORT`, what `HF_ENDPOINT` is set to.
    pub endpoint: String,
}

/// The commit every fixture repository answers.
pub fn commit_of(repo: &str) -> String {
    hex::encode(&sha2::Sha256::digest(repo.as_bytes())[..20])
}

/// The tiny CatVTON fixture laid out as the three published repositories.
pub fn catvton_repos() -> Vec<(&'static str, Vec<(String, HubFile)>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/catvton/model");
    let file = |rel: &str| {
        let bytes = std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        HubFile::new(bytes, rel.ends_with(".safetensors"))
    };
    vec![
        (
            "booksforcharlie/stable-diffusion-inpainting",
            vec![
                ("unet/config.json".into(), file("base/unet/config.json")),
                (
                    "unet/diffusion_pytorch_model.safetensors".into(),
                    file("base/unet/diffusion_pytorch_model.safetensors"),
                ),
                (
                    "scheduler/scheduler_config.json".into(),
                    file("base/scheduler/scheduler_config.json"),
                ),
                // Files a whole-repository download would fetch, and the model never reads.
                (
                    "text_encoder/model.safetensors".into(),
                    HubFile::new(vec![7; 4096], true),
                ),
                (
                    "model_index.json".into(),
                    HubFile::new(b"{}".to_vec(), false),
                ),
            ],
        ),
        (
            "stabilityai/sd-vae-ft-mse",
            vec![
                ("config.json".into(), file("vae/config.json")),
                (
                    "diffusion_pytorch_model.safetensors".into(),
                    file("vae/diffusion_pytorch_model.safetensors"),
                ),
            ],
        ),
        (
            "zhengchong/CatVTON",
            vec![(
                "mix-48k-1024/attention/model.safetensors".into(),
                file("attention/model.safetensors"),
            )],
        ),
    ]
}

impl FakeHub {
    /// Starts the hub and its CDN with the CatVTON fixture repositories.
    pub async fn start() -> FakeHub {
        Self::start_with(Vec::new()).await
    }

    /// The same, with `extra` files added: (repository, path, bytes).
    pub async fn start_with(extra: Vec<(&str, &str, Vec<u8>)>) -> FakeHub {
        let hub_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let cdn_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", hub_listener.local_addr().expect("addr"));
        let cdn_base = format!("http://{}", cdn_listener.local_addr().expect("addr"));
        let mut repos: BTreeMap<String, (String, BTreeMap<String, HubFile>)> = catvton_repos()
            .into_iter()
            .map(|(id, files)| (id.to_string(), (commit_of(id), files.into_iter().collect())))
            .collect();
        for (repo, path, bytes) in extra {
            let lfs = path.ends_with(".safetensors") || path.ends_with(".pth");
            let files = &mut repos.get_mut(repo).expect("a fixture repository").1;
            files.insert(path.to_string(), HubFile::new(bytes, lfs));
        }
        let inner = Arc::new(Inner {
            repos,
            seen: Mutex::default(),
            knobs: Mutex::default(),
            cdn_base,
        });
        let hub = Router::new()
            .route("/{org}/{name}/resolve/{revision}/{*path}", get(resolve))
            .with_state(inner.clone());
        let cdn = Router::new()
            .route("/blobs/{sha256}", get(cdn))
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(hub_listener, hub).await });
        tokio::spawn(async move { axum::serve(cdn_listener, cdn).await });
        FakeHub { inner, endpoint }
    }

    /// The file `path` of repository `repo`.
    pub fn file(&self, repo: &str, path: &str) -> HubFile {
        self.inner.repos[repo].1[path].clone()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().expect("lock").clone()
    }

    pub fn clear_seen(&self) {
        self.inner.seen.lock().expect("lock").clear();
    }

    /// Requests that transferred file bytes (not the one-byte metadata probes).
    pub fn transfers(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(Seen::is_transfer).collect()
    }

    pub fn require_token(&self, token: Option<&str>) {
        self.inner.knobs.lock().expect("lock").token = token.map(str::to_string);
    }

    /// Cuts the next transfer of `file` that reaches byte `at`.
    pub fn cut_at(&self, file: &HubFile, at: u64) {
        let mut knobs = self.inner.knobs.lock().expect("lock");
        knobs.cut_at.insert(file.sha256.clone(), at);
    }

    /// Serves the next transfer of `file` with one byte changed.
    pub fn corrupt_once(&self, file: &HubFile) {
        let mut knobs = self.inner.knobs.lock().expect("lock");
        knobs.corrupt_once.insert(file.sha256.clone());
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn refused(code: &'static str, status: StatusCode) -> Response {
    let mut r = (status, code).into_response();
    r.headers_mut()
        .insert("x-error-code", HeaderValue::from_static(code));
    r
}

async fn resolve(
    State(inner): State<Arc<Inner>>,
    UrlPath((org, name, revision, path)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let authorization = header_text(&headers, header::AUTHORIZATION);
    inner.seen.lock().expect("lock").push(Seen {
        route: "resolve",
        what: path.clone(),
        range: header_text(&headers, header::RANGE),
        authorization: authorization.clone(),
    });
    let token = inner.knobs.lock().expect("lock").token.clone();
    if let Some(token) = token {
        if authorization.as_deref() != Some(&format!("Bearer {token}")) {
            return refused("GatedRepo", StatusCode::UNAUTHORIZED);
        }
    }
    let Some((commit, files)) = inner.repos.get(&format!("{org}/{name}")) else {
        return refused("RepoNotFound", StatusCode::NOT_FOUND);
    };
    if revision != "main" && &revision != commit {
        return refused("RevisionNotFound", StatusCode::NOT_FOUND);
    }
    let Some(file) = files.get(&path) else {
        return refused("EntryNotFound", StatusCode::NOT_FOUND);
    };
    let commit = HeaderValue::from_str(commit).expect("header");
    if file.lfs {
        let location = format!("{}/blobs/{}", inner.cdn_base, file.sha256);
        let mut r = StatusCode::FOUND.into_response();
        let h = r.headers_mut();
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("header"),
        );
        h.insert("x-repo-commit", commit);
        // The pointer file's etag, as the real hub sends, and the blob's in X-Linked-Etag.
        h.insert(header::ETAG, HeaderValue::from_static("\"pointer\""));
        h.insert(
            "x-linked-etag",
            HeaderValue::from_str(&format!("\"{}\"", file.sha256)).expect("header"),
        );
        h.insert("x-linked-size", HeaderValue::from(file.bytes.len()));
        return r;
    }
    let mut r = ranged(&headers, file.bytes.clone(), None);
    let h = r.headers_mut();
    h.insert("x-repo-commit", commit);
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", file.git_sha1)).expect("header"),
    );
    r
}

async fn cdn(
    State(inner): State<Arc<Inner>>,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range = header_text(&headers, header::RANGE);
    inner.seen.lock().expect("lock").push(Seen {
        route: "cdn",
        what: sha256.clone(),
        range: range.clone(),
        authorization: header_text(&headers, header::AUTHORIZATION),
    });
    let Some(file) = inner
        .repos
        .values()
        .flat_map(|(_, files)| files.values())
        .find(|f| f.sha256 == sha256)
        .cloned()
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let transfer = range.as_deref() != Some("bytes=0-0");
    let (cut, corrupt) = {
        let mut knobs = inner.knobs.lock().expect("lock");
        let (start, end) = parse_range(range.as_deref(), file.bytes.len());
        let cut = match knobs.cut_at.get(&sha256) {
            Some(&at) if transfer && (start as u64) <= at && at < end as u64 => {
                knobs.cut_at.remove(&sha256);
                Some(at as usize - start)
            }
            _ => None,
        };
        let corrupt = transfer && knobs.corrupt_once.remove(&sha256);
        (cut, corrupt)
    };
    let bytes = if corrupt {
        let mut b = file.bytes.as_ref().clone();
        let middle = b.len() / 2;
        b[middle] ^= 0xff;
        Arc::new(b)
    } else {
        file.bytes.clone()
    };
    ranged(&headers, bytes, cut)
}

/// `[start, end)` of a `bytes=a-b` range over `len` bytes (the whole file without one).
fn parse_range(range: Option<&str>, len: usize) -> (usize, usize) {
    let parsed = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| {
            let a: usize = a.parse().ok()?;
            let b: usize = if b.is_empty() {
                len - 1
            } else {
                b.parse().ok()?
            };
            Some((a, b.min(len - 1) + 1))
        });
    parsed.unwrap_or((0, len))
}

/// The bytes asked for, 206 with `Content-Range` for a range; with `cut`, the connection fails
/// after that many bytes of the body.
fn ranged(headers: &HeaderMap, bytes: Arc<Vec<u8>>, cut: Option<usize>) -> Response {
    let range = header_text(headers, header::RANGE);
    let (start, end) = parse_range(range.as_deref(), bytes.len());
    if start >= end {
        return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    }
    let body = bytes[start..end].to_vec();
    let length = body.len();
    let body = match cut {
        Some(n) => {
            let first = bytes::Bytes::from(body[..n].to_vec());
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
                Ok(first),
                Err(std::io::Error::other("connection cut by the test")),
            ];
            Body::from_stream(futures_util::stream::iter(chunks))
        }
        None => Body::from(body),
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, bytes.len()))
                .expect("header"),
        );
    }
    r
}
