//! Request errors and the one place they become HTTP answers
//! (`{"error": code, "message": sentence}`, as in the contract): the `From` conversions from the
//! lower layers' errors, the status and code of each, and the rejection reason it counts as.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::batcher::{AdmitError, JobError, MIN_RETRY_AFTER_S};
use crate::imaging::ImageError;
use crate::jobs::StoreError;
use crate::metrics::RejectReason;

/// Every way a request can fail, each with its status and contract code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("the request body did not arrive within {timeout_s} s")]
    BodyTimeout { timeout_s: f64 },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidImage(String),
    #[error("the server is busy; retry in {retry_after_s} s")]
    Overloaded { retry_after_s: u64 },
    /// A key past its own bounds (requests a second, jobs not yet ended).
    #[error("{reason}; retry in {retry_after_s} s")]
    RateLimited { reason: String, retry_after_s: u64 },
    #[error("this Idempotency-Key was used before with a different request; use a new key")]
    IdempotencyKeyReused,
    #[error("{reason}")]
    InsufficientStorage { reason: String, retry_after_s: u64 },
    #[error("the server is draining before shutdown")]
    Draining { retry_after_s: u64 },
    #[error("{reason}")]
    Unavailable { reason: String, retry_after_s: u64 },
    #[error("the request waited {waited_ms} ms, past the {timeout_ms} ms deadline, before its batch ran")]
    DeadlineExceeded { waited_ms: u64, timeout_ms: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Internal(String),
    /// `/livez` only: work is pending and the model worker has made no progress.
    #[error("{0}")]
    Stalled(String),
}

/// `Retry-After` when the job queue is full, or a key has its most jobs.
pub const JOB_QUEUE_RETRY_AFTER_S: u64 = 30;
/// `Retry-After` when the job store holds its most bytes: results expire with the retention.
pub const STORE_FULL_RETRY_AFTER_S: u64 = 60;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The machine-readable code.
    #[schema(example = "invalid_image")]
    pub error: String,
    /// A sentence for people.
    pub message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidImage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Overloaded { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InsufficientStorage { .. } => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Draining { .. } | ApiError::Unavailable { .. } | ApiError::Stalled(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotReady(_) | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BodyTimeout { .. } => "request_timeout",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::InvalidImage(_) => "invalid_image",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::InsufficientStorage { .. } => "insufficient_storage",
            ApiError::Draining { .. } | ApiError::Unavailable { .. } => "unavailable",
            ApiError::DeadlineExceeded { .. } => "deadline_exceeded",
            ApiError::NotFound(_) => "not_found",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Conflict(_) => "conflict",
            ApiError::Expired(_) => "expired",
            ApiError::Internal(_) => "internal",
            ApiError::Stalled(_) => "worker_stalled",
        }
    }

    /// Every code [`ApiError::code`] can answer, for the OpenAPI document.
    pub const CODES: &'static [&'static str] = &[
        "bad_request",
        "unauthorized",
        "request_timeout",
        "payload_too_large",
        "unsupported_media_type",
        "invalid_image",
        "overloaded",
        "rate_limited",
        "idempotency_key_reused",
        "insufficient_storage",
        "unavailable",
        "deadline_exceeded",
        "not_found",
        "not_ready",
        "conflict",
        "expired",
        "internal",
        "worker_stalled",
    ];

    /// How `virtualfit_rejected_requests_total` counts this answer, if it counts it at all.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            ApiError::BadRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnsupportedMediaType(_)
            | ApiError::InvalidImage(_) => Some(RejectReason::Invalid),
            ApiError::BodyTimeout { .. } => Some(RejectReason::BodyTimeout),
            ApiError::Overloaded { .. } => Some(RejectReason::QueueFull),
            ApiError::RateLimited { .. } => Some(RejectReason::RateLimited),
            ApiError::InsufficientStorage { .. } => Some(RejectReason::StoreFull),
            ApiError::Draining { .. } => Some(RejectReason::Draining),
            ApiError::DeadlineExceeded { .. } => Some(RejectReason::Deadline),
            ApiError::Unauthorized
            | ApiError::IdempotencyKeyReused
            | ApiError::Unavailable { .. }
            | ApiError::NotFound(_)
            | ApiError::NotReady(_)
            | ApiError::Conflict(_)
            | ApiError::Expired(_)
            | ApiError::Internal(_)
            | ApiError::Stalled(_) => None,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded { retry_after_s }
            | ApiError::Draining { retry_after_s }
            | ApiError::RateLimited { retry_after_s, .. }
            | ApiError::InsufficientStorage { retry_after_s, .. }
            | ApiError::Unavailable { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        }
    }

    /// Whether the connection should close after this answer: the request's body may be
    /// left partly unread, and a client that is still sending it must not meet a reset.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            ApiError::BodyTimeout { .. } | ApiError::PayloadTooLarge { .. }
        )
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Unsupported(m) => ApiError::UnsupportedMediaType(m),
            ImageError::Invalid(m) => ApiError::InvalidImage(m),
        }
    }
}

impl From<crate::pipeline::PrepareError> for ApiError {
    fn from(e: crate::pipeline::PrepareError) -> Self {
        use crate::pipeline::PrepareError;
        match e {
            PrepareError::Image(e) => e.into(),
            PrepareError::Busy => ApiError::Overloaded {
                retry_after_s: crate::batcher::MIN_RETRY_AFTER_S,
            },
            e @ PrepareError::Internal(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::QueueFull { retry_after_s } => ApiError::Overloaded { retry_after_s },
            AdmitError::Draining { retry_after_s } => ApiError::Draining { retry_after_s },
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Deadline { waited, timeout } => ApiError::DeadlineExceeded {
                waited_ms: waited.as_millis() as u64,
                timeout_ms: timeout.as_millis() as u64,
            },
            JobError::ShutDown => ApiError::Draining {
                retry_after_s: MIN_RETRY_AFTER_S,
            },
            JobError::Model(m) => ApiError::Internal(format!("model failure: {m}")),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A full job queue drains at the model's pace: come back in a while.
            StoreError::QueueFull { .. } => ApiError::Overloaded {
                retry_after_s: JOB_QUEUE_RETRY_AFTER_S,
            },
            e @ StoreError::OwnerFull { .. } => ApiError::RateLimited {
                reason: e.to_string(),
                retry_after_s: JOB_QUEUE_RETRY_AFTER_S,
            },
            StoreError::KeyReused => ApiError::IdempotencyKeyReused,
            e @ StoreError::StoreFull { .. } => ApiError::InsufficientStorage {
                reason: e.to_string(),
                retry_after_s: STORE_FULL_RETRY_AFTER_S,
            },
            StoreError::Backend(m) => ApiError::Unavailable {
                reason: format!("the job store is unavailable: {m}"),
                retry_after_s: MIN_RETRY_AFTER_S,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(secs.max(MIN_RETRY_AFTER_S)),
            );
        }
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once() {
        let errors = [
            ApiError::BadRequest(String::new()),
            ApiError::Unauthorized,
            ApiError::BodyTimeout { timeout_s: 1.0 },
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::InvalidImage(String::new()),
            ApiError::Overloaded { retry_after_s: 1 },
            ApiError::RateLimited {
                reason: String::new(),
                retry_after_s: 1,
            },
            ApiError::IdempotencyKeyReused,
            ApiError::InsufficientStorage {
                reason: String::new(),
                retry_after_s: 1,
            },
            ApiError::Draining { retry_after_s: 1 },
            ApiError::DeadlineExceeded {
                waited_ms: 1,
                timeout_ms: 1,
            },
            ApiError::NotFound(String::new()),
            ApiError::NotReady(String::new()),
            ApiError::Conflict(String::new()),
            ApiError::Expired(String::new()),
            ApiError::Internal(String::new()),
            ApiError::Stalled(String::new()),
        ];
        for e in &errors {
            assert!(ApiError::CODES.contains(&e.code()), "{}", e.code());
        }
        let mut codes: Vec<_> = errors.iter().map(ApiError::code).collect();
        codes.dedup();
        assert_eq!(codes.len(), ApiError::CODES.len());
    }

    #[test]
    fn admission_and_job_errors_keep_their_meaning() {
        let e: ApiError = AdmitError::QueueFull { retry_after_s: 7 }.into();
        assert_eq!(
            (e.status(), e.retry_after()),
            (StatusCode::TOO_MANY_REQUESTS, Some(7))
        );
        assert_eq!(e.reject_reason(), Some(RejectReason::QueueFull));
        let e: ApiError = JobError::ShutDown.into();
        assert_eq!(e.reject_reason(), Some(RejectReason::Draining));
        let e: ApiError = ImageError::Unsupported("gif".into()).into();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
