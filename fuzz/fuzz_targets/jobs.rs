//! The `POST /v1/jobs` form: the fuzz input is the request body, a multipart/form-data body
//! with the boundary [`BOUNDARY`], carrying the image parts and the job's text fields. It is
//! read (`upload::read` with the jobs form's fields), turned into a job record
//! (`server::jobs::job_record`, with a webhook allow list), fingerprinted, and its image
//! headers checked, as the handler does before storing the job. Errors are expected answers; a
//! panic, an abort, an internal error, a record outside the form's bounds (metadata, quality,
//! format, a webhook URL the allow list does not permit) or a fingerprint that depends on
//! anything but the request are findings.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;
use clap::Parser;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tokio::time::Instant;
use virtualfit::cli::Cli;
use virtualfit::config::Settings;
use virtualfit::error::ApiError;
use virtualfit::jobs::{JobStatus, MAX_METADATA_BYTES};
use virtualfit::metrics::Metrics;
use virtualfit::pipeline::{DecodeBudget, Pipeline};
use virtualfit::server::jobs::{fingerprint, job_record, text_fields};
use virtualfit::server::upload::{self, BodyBudget};

/// The boundary the corpus (`fuzz/make_corpus.py`) uses.
const BOUNDARY: &str = "vfFuzzBoundary7MA4YWxkTrZu0gW";
const BODY_LIMIT: usize = 1 << 20;
const MAX_PIXELS: u64 = 4_000_000;
const BODY_BUDGET: u64 = 4 << 30;
const DECODE_BUDGET: u64 = 256 << 20;
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// The only webhook host the allow list names.
const ALLOWED: &str = "hooks.example.com";

struct State {
    runtime: Runtime,
    budget: BodyBudget,
    pipeline: Pipeline,
    headers: HeaderMap,
    settings: Settings,
    trace: bool,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime");
        let budget = BodyBudget::new(BODY_BUDGET);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&format!("multipart/form-data; boundary={BOUNDARY}")).unwrap(),
        );
        let cli = Cli::try_parse_from([
            "virtualfit",
            "--webhook-secret",
            "fuzz",
            "--webhook-allow-hosts",
            &format!("{ALLOWED},http://127.0.0.1:9000"),
        ])
        .expect("flags");
        let settings = cli.serve.settings().expect("settings");
        let pipeline = Pipeline::new(
            settings.model.family().expect("the default model"),
            settings.option_limits,
            MAX_PIXELS,
            DecodeBudget::new(DECODE_BUDGET, Metrics::new()),
        );
        State {
            runtime,
            budget,
            pipeline,
            headers,
            settings,
            trace: std::env::var_os("FUZZ_TRACE").is_some_and(|v| v == "1"),
        }
    })
}

fn body(data: &[u8]) -> Body {
    // Two chunks split at a point the input picks, so delimiters also fall across an edge.
    let at = data
        .first()
        .map_or(0, |&b| usize::from(b) * data.len() / 256);
    let (a, b) = data.split_at(at.min(data.len()));
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        vec![Ok(Bytes::copy_from_slice(a)), Ok(Bytes::copy_from_slice(b))];
    Body::from_stream(futures_util::stream::iter(chunks))
}

fuzz_target!(|data: &[u8]| {
    let s = state();
    let mut headers = s.headers.clone();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    let fields = text_fields(&s.pipeline.option_names());
    let webhooks = s.settings.jobs.webhooks.clone();
    let result = s.runtime.block_on(async {
        let deadline = Instant::now() + BODY_TIMEOUT;
        let upload = upload::read(
            &headers,
            body(data),
            BODY_LIMIT,
            &s.budget,
            deadline,
            BODY_TIMEOUT,
            &fields,
            true,
        )
        .await?;
        let record = job_record(s.settings.upload.output, &webhooks, &upload)?;
        let print = fingerprint(&upload);
        let frame = s.pipeline.default_input().frame;
        s.pipeline.check_headers(&upload.parts(), frame)?;
        Ok::<_, ApiError>((record, print, upload))
    });
    if s.trace {
        match &result {
            Ok(_) => eprintln!("jobs: {} bytes: accepted", data.len()),
            Err(e) => eprintln!("jobs: {} bytes: {} {e}", data.len(), e.status()),
        }
    }
    match result {
        Ok((record, print, upload)) => {
            assert_eq!(record.status, JobStatus::Queued);
            assert!(record
                .metadata
                .as_ref()
                .is_none_or(|m| m.len() <= MAX_METADATA_BYTES));
            assert!((1..=100).contains(&record.quality), "{}", record.quality);
            assert!(
                matches!(record.format.as_str(), "jpeg" | "png"),
                "{}",
                record.format
            );
            if let Some(url) = &record.webhook_url {
                let host = reqwest_free_host(url);
                assert!(
                    host == ALLOWED || host == "127.0.0.1",
                    "a webhook to {url} passed the allow list"
                );
            }
            assert_eq!(print.len(), 64);
            assert_eq!(
                print,
                fingerprint(&upload),
                "the fingerprint is not a function of the request"
            );
        }
        Err(ApiError::Internal(message)) => panic!("internal error: {message}"),
        Err(ApiError::Overloaded { .. }) => panic!("one request alone found the server overloaded"),
        Err(_) => {}
    }
});

/// The host of an accepted webhook URL (already parsed once by the allow list), lower case.
fn reqwest_free_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host.to_ascii_lowercase()
}
