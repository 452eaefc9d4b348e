//! The `/tryon` upload path: the fuzz input is the request body, a multipart/form-data body
//! with the boundary [`BOUNDARY`]; it is read (`upload::read`) and its images prepared
//! through the pipeline (`Pipeline::prepare`, for the default model) under small limits. Errors are expected answers; a panic (also one on
//! the blocking pool, which libFuzzer's panic hook turns into an abort), an abort, running out
//! of memory or time, an internal error, a leaked decode gauge or inputs of the wrong shape
//! are findings.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tokio::time::Instant;
use virtualfit::error::ApiError;
use virtualfit::metrics::Metrics;
use virtualfit::models::registry::{family, DEFAULT_MODEL};
use virtualfit::models::{OptionLimits, RequestOptions, MODEL_HEIGHT, MODEL_WIDTH};
use virtualfit::pipeline::cpu::Cpu;
use virtualfit::pipeline::{DecodeBudget, Pipeline};
use virtualfit::server::upload::{self, BodyBudget};

/// The boundary the corpus (`fuzz/make_corpus.py`) uses.
const BOUNDARY: &str = "vfFuzzBoundary7MA4YWxkTrZu0gW";
const BODY_LIMIT: usize = 1 << 20;
const MAX_PIXELS: u64 = 4_000_000;
const DECODE_BUDGET: u64 = 256 << 20;
/// The budget of bodies in memory counts each chunk rounded up to a KiB; a large budget keeps
/// the 1-byte chunks below from running it out, since only one request runs here.
const BODY_BUDGET: u64 = 4 << 30;
/// The body deadline; under libFuzzer's `-timeout=10`.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunk sizes the body arrives in, picked by a hash of the input, so that multipart
/// delimiters also fall across chunk edges.
const CHUNKS: [usize; 6] = [usize::MAX, 1, 7, 100, 4096, 65536];

struct State {
    runtime: Runtime,
    budget: BodyBudget,
    pipeline: Pipeline,
    metrics: Metrics,
    headers: HeaderMap,
    /// `FUZZ_TRACE=1` prints each input's answer, to check what the seeds reach.
    trace: bool,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .max_blocking_threads(2)
            .build()
            .expect("tokio runtime");
        let metrics = Metrics::new();
        let budget = BodyBudget::new(BODY_BUDGET);
        let pipeline = Pipeline::new(
            family(DEFAULT_MODEL).expect("the default model"),
            OptionLimits::default(),
            MAX_PIXELS,
            DecodeBudget::new(DECODE_BUDGET, metrics.clone()),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&format!("multipart/form-data; boundary={BOUNDARY}")).unwrap(),
        );
        State {
            runtime,
            budget,
            pipeline,
            metrics,
            headers,
            trace: std::env::var_os("FUZZ_TRACE").is_some_and(|v| v == "1"),
        }
    })
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn body(data: &[u8]) -> Body {
    let chunk = CHUNKS[(fnv1a(data) % CHUNKS.len() as u64) as usize];
    if chunk >= data.len() {
        return Body::from(Bytes::copy_from_slice(data));
    }
    // Very small chunks only for small bodies, so that one run stays fast.
    let chunk = chunk.max(data.len() / 4096);
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures_util::stream::iter(chunks))
}

fuzz_target!(|data: &[u8]| {
    let s = state();
    let mut headers = s.headers.clone();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    let result = s.runtime.block_on(async {
        let deadline = Instant::now() + BODY_TIMEOUT;
        let upload = upload::read(
            &headers,
            body(data),
            BODY_LIMIT,
            &s.budget,
            deadline,
            BODY_TIMEOUT,
            &[],
            true,
        )
        .await?;
        s.pipeline
            .prepare(upload.parts(), RequestOptions::default(), deadline, &Cpu::Blocking)
            .await
            .map_err(ApiError::from)
    });
    if s.trace {
        match &result {
            Ok(_) => eprintln!("upload: {} bytes: prepared", data.len()),
            Err(e) => eprintln!("upload: {} bytes: {} {e}", data.len(), e.status()),
        }
    }
    assert_eq!(
        s.metrics.decode_memory.get(),
        0,
        "the decode-memory gauge is not back to 0"
    );
    match result {
        Ok(input) => {
            let (h, w) = (MODEL_HEIGHT, MODEL_WIDTH);
            assert_eq!(input.person.dims(), &[h, w, 3]);
            assert_eq!(input.cloth.dims(), &[h, w, 3]);
            let mask = input.garment_mask.expect("the default model reads a garment mask");
            assert_eq!(mask.dims(), &[h, w, 1]);
            assert!(input.person_mask.is_none(), "a mask the model does not read");
            let c = input.content.expect("the answer is cropped to the person photo");
            assert!(c.width >= 1 && c.height >= 1, "empty content {c:?}");
            assert!(
                (c.x + c.width) as usize <= w && (c.y + c.height) as usize <= h,
                "content {c:?} outside the frame"
            );
        }
        Err(ApiError::Internal(message)) => panic!("internal error: {message}"),
        Err(ApiError::Overloaded { .. }) => panic!("one request alone found the server overloaded"),
        Err(_) => {}
    }
});
