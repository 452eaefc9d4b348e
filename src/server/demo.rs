//! The try-on page at `/` (`--demo on`, the default): one HTML page with its script and style
//! sheet, embedded at build time, loading nothing from elsewhere. It speaks only the public
//! API (`/v1/models`, `/v1/jobs`, `/v1/masks`), so it holds no secret and needs no key of
//! its own; the API key a user types stays in the page's session storage.
//!
//! The sample photos carry research-only terms, so they are never embedded: they are served
//! from `--samples-dir` when that folder exists (a clone), with its NOTICE, and only the files
//! its `pairs.txt` lists. Without it the page offers upload only.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;
use crate::api::echo;
use crate::error::ApiError;

const PAGE: &str = include_str!("demo/index.html");
const SCRIPT: &str = include_str!("demo/page.js");
const STYLE: &str = include_str!("demo/page.css");
/// The page loads only its own files and talks only to this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";
/// Longest sample photo served, in bytes.
const MAX_SAMPLE_BYTES: u64 = 8 << 20;

/// The sample pairs found in `--samples-dir`.
#[derive(Debug, Clone, Serialize)]
pub struct Samples {
    #[serde(skip)]
    dir: PathBuf,
    /// The folder's NOTICE: where the photos come from and their terms.
    notice: String,
    pairs: Vec<SamplePair>,
}

#[derive(Debug, Clone, Serialize)]
struct SamplePair {
    person: String,
    cloth: String,
}

impl Samples {
    /// The samples of `dir`, or `None` when it has no `pairs.txt` (upload only).
    pub fn load(dir: &Path) -> Option<Samples> {
        let list = std::fs::read_to_string(dir.join("pairs.txt")).ok()?;
        let notice = std::fs::read_to_string(dir.join("NOTICE")).unwrap_or_default();
        let pairs = list
            .lines()
            .filter_map(|line| {
                let mut names = line.split_whitespace();
                Some(SamplePair {
                    person: names.next()?.to_string(),
                    cloth: names.next()?.to_string(),
                })
            })
            .filter(|p| plain_name(&p.person) && plain_name(&p.cloth))
            .collect::<Vec<_>>();
        (!pairs.is_empty()).then(|| Samples {
            dir: dir.to_path_buf(),
            notice,
            pairs,
        })
    }

    /// The file of a listed photo: `kind` is `person` or `cloth`.
    fn file(&self, kind: &str, name: &str) -> Option<PathBuf> {
        let listed = self.pairs.iter().any(|p| match kind {
            "person" => p.person == name,
            "cloth" => p.cloth == name,
            _ => false,
        });
        listed.then(|| self.dir.join(kind).join(name))
    }
}

/// A file name with no path in it.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The page's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(script))
        .route("/page.css", get(style))
        .route("/samples", get(samples))
        .route("/samples/{kind}/{name}", get(sample_file))
}

fn embedded(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn page() -> Response {
    embedded(PAGE, "text/html; charset=utf-8")
}

async fn script() -> Response {
    embedded(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    embedded(STYLE, "text/css; charset=utf-8")
}

fn no_samples() -> ApiError {
    ApiError::NotFound("this server has no sample photos; upload your own".into())
}

/// The sample pairs and their NOTICE, or 404 without the folder.
async fn samples(State(state): State<AppState>) -> Response {
    match &state.inner.samples {
        Some(s) => Json(s).into_response(),
        None => super::error_response(no_samples(), false),
    }
}

async fn sample_file(
    State(state): State<AppState>,
    UrlPath((kind, name)): UrlPath<(String, String)>,
) -> Response {
    let found = state
        .inner
        .samples
        .as_ref()
        .ok_or_else(no_samples)
        .and_then(|s| {
            s.file(&kind, &name).ok_or_else(|| {
                ApiError::NotFound(format!("no sample `{}/{}`", echo(&kind), echo(&name)))
            })
        });
    let path = match found {
        Ok(p) => p,
        Err(e) => return super::error_response(e, false),
    };
    let read = async {
        let size = tokio::fs::metadata(&path).await?.len();
        if size > MAX_SAMPLE_BYTES {
            return Err(std::io::Error::other("sample photo too large"));
        }
        tokio::fs::read(&path).await
    };
    match read.await {
        Ok(bytes) => {
            let content_type = match path.extension().and_then(|e| e.to_str()) {
                Some("png") => "image/png",
                Some("webp") => "image/webp",
                _ => "image/jpeg",
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
                bytes,
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read a sample photo");
            super::error_response(
                ApiError::NotFound(format!("sample `{}` cannot be read", echo(&name))),
                false,
            )
        }
    }
}
