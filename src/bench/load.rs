//! What a `bench http` run is asked to do and what it records, shared by the load generator
//! ([`super::http`]) and the report ([`super::report`]): the load shape, when a phase stops, and
//! one sample per request.

use std::time::Duration;

use super::{Arrival, BenchError};

/// When a phase stops sending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    Duration(Duration),
    Requests(u64),
}

/// The load shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate: f64, arrival: Arrival },
}

impl Load {
    /// An open loop at `rate` requests per second.
    pub fn open(rate: f64, arrival: Arrival) -> Result<Load, BenchError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(BenchError::Usage(format!(
                "--rate must be a positive number of requests per second, not {rate}"
            )));
        }
        Ok(Load::Open { rate, arrival })
    }
}

/// What a run was asked to do.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: String,
    pub load: Load,
    pub warmup: Duration,
    pub stop: Stop,
    pub max_in_flight: u64,
    pub pairs: usize,
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this HTTP status.
    Status(u16),
    /// No answer: a timeout, a refused connection or a broken transfer.
    Error(ErrorKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Connect,
    Body,
    Other,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Body => "body",
            ErrorKind::Other => "other",
        }
    }
}

/// One request, with times as offsets from the start of its phase.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was meant to be sent (closed loop: when it was sent).
    pub scheduled: Duration,
    /// When it was actually sent.
    pub sent: Duration,
    /// When its answer (or error) was complete.
    pub done: Duration,
    pub outcome: Outcome,
}

impl Sample {
    /// Latency from the scheduled send time.
    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.scheduled)
    }

    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Status(s) if (200..300).contains(&s))
    }
}

/// The samples of one phase and its wall time (start to last answer).
#[derive(Debug, Clone)]
pub struct Phase {
    pub samples: Vec<Sample>,
    pub elapsed: Duration,
}
