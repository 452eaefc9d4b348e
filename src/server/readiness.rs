//! Where the server is in its life, as one watched phase: warming up, ready, failed (with the
//! reason) or draining. `/readyz`, `/tryon` and `Server::ready` all read the same value.

use std::sync::Arc;

use tokio::sync::watch;

use crate::batcher::MIN_RETRY_AFTER_S;
use crate::error::ApiError;

/// The server's phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The model is loaded and runs its warm-up batch.
    WarmingUp,
    /// Serving.
    Ready,
    /// The warm-up failed; the reason is the model's error.
    Failed(String),
    /// SIGTERM or SIGINT arrived: new work is refused, admitted work finishes.
    Draining,
}

/// How long a client should wait before retrying a server whose warm-up failed.
const FAILED_RETRY_AFTER_S: u64 = 30;

/// The shared phase; cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Readiness {
            phase: Arc::new(watch::Sender::new(Phase::WarmingUp)),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() == Phase::Draining
    }

    /// Records the warm-up's outcome, unless the server is already draining.
    pub fn warmed_up(&self, outcome: Result<(), String>) {
        self.phase.send_if_modified(|phase| {
            if *phase != Phase::WarmingUp {
                return false;
            }
            *phase = match outcome {
                Ok(()) => Phase::Ready,
                Err(reason) => Phase::Failed(reason),
            };
            true
        });
    }

    pub fn start_draining(&self) {
        self.phase.send_replace(Phase::Draining);
    }

    /// Waits until the warm-up is over: `Err` with the reason if it failed.
    pub async fn warm(&self) -> Result<(), String> {
        let mut rx = self.phase.subscribe();
        let phase = rx
            .wait_for(|p| *p != Phase::WarmingUp)
            .await
            .map_err(|_| "the server stopped before warming up".to_string())?
            .clone();
        match phase {
            Phase::Failed(reason) => Err(reason),
            _ => Ok(()),
        }
    }

    /// Why `/readyz` and `/tryon` refuse now, if they do. `retry_after_s` is the backlog
    /// estimate a draining server gives.
    pub fn refusal(&self, retry_after_s: impl FnOnce() -> u64) -> Option<ApiError> {
        match self.phase() {
            Phase::Ready => None,
            Phase::WarmingUp => Some(ApiError::Unavailable {
                reason: "the model is warming up".into(),
                retry_after_s: MIN_RETRY_AFTER_S,
            }),
            Phase::Failed(reason) => Some(ApiError::Unavailable {
                reason: format!("the model failed to warm up: {reason}"),
                retry_after_s: FAILED_RETRY_AFTER_S,
            }),
            Phase::Draining => Some(ApiError::Draining {
                retry_after_s: retry_after_s(),
            }),
        }
    }
}

/// The job runner takes work only while the server is ready, and stops once it drains or its
/// warm-up failed.
impl crate::jobs::runner::Gate for Readiness {
    fn accepting(&self) -> bool {
        self.phase() == Phase::Ready
    }

    fn stopping(&self) -> bool {
        matches!(self.phase(), Phase::Draining | Phase::Failed(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn warm_up_outcome_is_seen_once_and_draining_wins() {
        let r = Readiness::new();
        assert!(r.refusal(|| 1).is_some());
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.warm().await })
        };
        r.warmed_up(Ok(()));
        assert_eq!(waiter.await.expect("joined"), Ok(()));
        assert!(r.refusal(|| 1).is_none());
        r.start_draining();
        r.warmed_up(Err("late".into()));
        assert_eq!(r.phase(), Phase::Draining);

        let failed = Readiness::new();
        failed.warmed_up(Err("no weights".into()));
        assert_eq!(failed.warm().await, Err("no weights".to_string()));
        let refusal = failed.refusal(|| 1).expect("refuses");
        assert!(refusal.to_string().contains("no weights"));
    }
}
