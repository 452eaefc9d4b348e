//! `GET /v1/jobs/{id}/events`: a job's status and progress as Server-Sent Events.
//!
//! The stream reads the job's record from the store every [`POLL`], so that any replica
//! reports any job (with Redis, whichever replica runs it: the runner writes the progress to
//! the store at a bounded rate, `jobs::runner::PROGRESS_EVERY`). It sends
//! - `status`: the job's status document (as `GET /v1/jobs/{id}`), first and at every change
//!   of status, the last one final;
//! - `progress`: `{"done", "total", "stage"}` at every other change;
//! - `idle`: nothing changed for `--event-idle-timeout`; the stream ends (reconnect to go on);
//! - a `:heartbeat` comment every `--event-heartbeat`, so that proxies keep it open.
//!
//! Streams are bounded in all and per API key ([`StreamSlots`]), and end when the client
//! goes, the job ends, or the server drains.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::readiness::Phase;
use super::AppState;
use crate::error::ApiError;
use crate::jobs::{now_ms, JobRecord, JobView};
use crate::metrics::Metrics;

/// How often an open stream reads its job's record.
pub const POLL: Duration = Duration::from_millis(250);
/// Events a stream buffers for a slow client before it waits.
const BUFFERED_EVENTS: usize = 16;
/// `Retry-After` when no stream slot is free.
const FULL_RETRY_AFTER_S: u64 = 5;

/// The event names of the stream.
pub const STATUS_EVENT: &str = "status";
pub const PROGRESS_EVENT: &str = "progress";
pub const IDLE_EVENT: &str = "idle";
/// The text of the heartbeat comment.
pub const HEARTBEAT: &str = "heartbeat";

/// The bounds of the event streams.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Streams open at once, in all.
    pub max_streams: usize,
    /// Streams one API key may have open (without keys, every client is the same key).
    pub max_streams_per_key: usize,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// A stream whose job has not changed for this long ends.
    pub idle_timeout: Duration,
}

/// The open streams, in all and per key.
pub struct StreamSlots {
    settings: EventSettings,
    open: Mutex<HashMap<String, usize>>,
    metrics: Metrics,
}

/// One open stream's place: given back when dropped.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: String,
}

impl StreamSlots {
    pub fn new(settings: EventSettings, metrics: Metrics) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            settings,
            open: Mutex::default(),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for the key's new stream, or 429 when the key or the server has its most.
    fn take(self: &Arc<Self>, key: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self.lock();
        let total: usize = open.values().sum();
        let mine = open.get(key).copied().unwrap_or(0);
        let s = &self.settings;
        if total >= s.max_streams {
            return Err(ApiError::RateLimited {
                reason: format!(
                    "{total} event streams are open, the most this server keeps (--max-event-streams)"
                ),
                retry_after_s: FULL_RETRY_AFTER_S,
            });
        }
        if mine >= s.max_streams_per_key {
            return Err(ApiError::RateLimited {
                reason: format!(
                    "this key has {mine} event streams open, the most one key may have (--max-event-streams-per-key)"
                ),
                retry_after_s: FULL_RETRY_AFTER_S,
            });
        }
        *open.entry(key.to_string()).or_default() += 1;
        self.metrics.event_streams.set((total + 1) as i64);
        Ok(StreamSlot {
            slots: self.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
        let total: usize = open.values().sum();
        self.slots.metrics.event_streams.set(total as i64);
    }
}

/// A job's status and progress as Server-Sent Events, until it ends.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id.")),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "A `text/event-stream` (Server-Sent Events, which OpenAPI 3.1 has no words for: the schema below is the `data` of one event, and the event names are in this description). `event: status` carries the status document (first, and at each change of status or of `cancel_requested`; the last one is final and the stream ends); `event: progress` carries `{done, total, stage}` at each other change; `event: idle` (data `{}`) ends a stream whose job has not changed for --event-idle-timeout. A `:heartbeat` comment comes every --event-heartbeat.", content_type = "text/event-stream", body = JobView),
        (status = 401, description = "Wrong or missing bearer token (`unauthorized`).", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown id, or another API key's job (`not_found`).", body = crate::error::ErrorBody),
        (status = 429, description = "--max-event-streams are open, or this API key has --max-event-streams-per-key open, or it is past --key-requests-per-s; see Retry-After (`rate_limited`).", body = crate::error::ErrorBody),
    )
)]
pub async fn events_handler(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match open(&state, &headers, &id).await {
        Ok(r) => r,
        Err(e) => super::error_response(e, false),
    }
}

async fn open(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Response, ApiError> {
    let record = super::jobs::find(state, headers, id).await?;
    let slot = state
        .inner
        .event_streams
        .take(record.owner.as_deref().unwrap_or(""))?;
    let settings = state.inner.event_streams.settings.clone();
    let (tx, rx) = mpsc::channel::<Event>(BUFFERED_EVENTS);
    let state = state.clone();
    tokio::spawn(async move {
        follow(&state, record, &tx).await;
        // The place is free before the client sees the end.
        drop(slot);
        drop(tx);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(settings.heartbeat)
                .text(HEARTBEAT),
        )
        .into_response())
}

/// Whether two views of a job have the same status (a cancel asked of a running job is a
/// change of status).
fn same_status(a: &JobView, b: &JobView) -> bool {
    a.status == b.status && a.cancel_requested == b.cancel_requested
}

/// Sends the job's changes until it ends, goes idle, the client leaves or the server drains.
async fn follow(state: &AppState, mut record: JobRecord, tx: &mpsc::Sender<Event>) {
    let inner = &state.inner;
    let idle_timeout = inner.event_streams.settings.idle_timeout;
    let mut last: Option<JobView> = None;
    let mut changed_at = Instant::now();
    loop {
        let view = JobView::from(&record);
        let event = match &last {
            Some(l) if same_status(l, &view) && l.progress == view.progress => None,
            Some(l) if same_status(l, &view) => Some(
                Event::default()
                    .event(PROGRESS_EVENT)
                    .json_data(view.progress),
            ),
            _ => Some(Event::default().event(STATUS_EVENT).json_data(&view)),
        };
        if let Some(event) = event {
            let Ok(event) = event else { return };
            if tx.send(event).await.is_err() {
                return;
            }
            changed_at = Instant::now();
        }
        if view.status.is_final() {
            return;
        }
        last = Some(view);
        if changed_at.elapsed() >= idle_timeout {
            let _ = tx.send(Event::default().event(IDLE_EVENT).data("{}")).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
        if inner.readiness.phase() == Phase::Draining {
            // The client reconnects, to another replica.
            return;
        }
        let store = inner.jobs.clone();
        let id = record.id.clone();
        match tokio::task::spawn_blocking(move || store.get(&id, now_ms())).await {
            Ok(Ok(Some(r))) => record = r,
            // Deleted meanwhile: nothing more will change.
            Ok(Ok(None)) => return,
            Ok(Err(e)) => tracing::debug!(job = %record.id, error = %e, "cannot read the job"),
            Err(e) => tracing::warn!(job = %record.id, error = %e, "a job store call failed"),
        }
    }
}
