//! Liveness: `/livez` fails when work is pending (queued, or taken by the worker and not
//! answered) and the model worker has finished no model call for the stall bound, so that the
//! kubelet restarts a pod whose device hung instead of letting its full queue sit in the
//! autoscaler's sums for ever. An idle server is live however long since its last call.
//!
//! The bound, unless `--liveness-stall-s` sets it: max([`STALL_FLOOR`], [`LONGEST_CALL_FACTOR`]
//! × the longest model call to expect) + `--max-batch-delay-ms`. The longest call to expect is
//! the longest one seen (the warm-up's full batch included) or, for a diffusion model, the
//! warm-up's estimate for a full-size UNet step of a full row cap or VAE pass, whichever is
//! longer; the batch delay is the time queued work may wait with no call running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::batcher::WorkerProgress;
use crate::error::ApiError;

/// The least stall bound: shorter calls than this are too short to tell a hung device from a
/// slow one, and a false restart drops every request the pod holds.
pub const STALL_FLOOR: Duration = Duration::from_secs(60);
/// How many times the longest model call a worker may go without finishing one.
pub const LONGEST_CALL_FACTOR: u32 = 4;

/// The stall bound: `configured` (`--liveness-stall-s`) when set, else derived from the
/// worker's progress (see the module's comment).
pub fn stall_bound(configured: Option<Duration>, progress: &WorkerProgress) -> Duration {
    configured.unwrap_or_else(|| {
        progress
            .longest_call
            .saturating_mul(LONGEST_CALL_FACTOR)
            .max(STALL_FLOOR)
            .saturating_add(progress.max_batch_delay)
    })
}

/// Judges liveness and logs each change of verdict once.
pub struct Liveness {
    configured: Option<Duration>,
    stalled: AtomicBool,
}

impl Liveness {
    pub fn new(configured: Option<Duration>) -> Self {
        Liveness {
            configured,
            stalled: AtomicBool::new(false),
        }
    }

    /// `Err` when work is pending and the worker has made no progress within the bound.
    pub fn check(&self, progress: &WorkerProgress) -> Result<(), ApiError> {
        let bound = stall_bound(self.configured, progress);
        let stalled = progress.pending > 0 && progress.since_progress > bound;
        let was_stalled = self.stalled.swap(stalled, Ordering::Relaxed);
        if !stalled {
            if was_stalled {
                tracing::info!("the model worker made progress again; live");
            }
            return Ok(());
        }
        let message = format!(
            "the model worker has finished no model call for {:.0} s with {} admitted requests \
             unanswered (bound {:.0} s)",
            progress.since_progress.as_secs_f64(),
            progress.pending,
            bound.as_secs_f64()
        );
        if !was_stalled {
            tracing::error!(
                pending = progress.pending,
                stalled_s = progress.since_progress.as_secs_f64(),
                bound_s = bound.as_secs_f64(),
                "liveness fails: {message}"
            );
        }
        Err(ApiError::Stalled(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(pending: usize, since_s: u64, longest_ms: u64, delay_ms: u64) -> WorkerProgress {
        WorkerProgress {
            pending,
            since_progress: Duration::from_secs(since_s),
            longest_call: Duration::from_millis(longest_ms),
            max_batch_delay: Duration::from_millis(delay_ms),
        }
    }

    #[test]
    fn the_bound_is_the_floor_or_a_multiple_of_the_longest_call_plus_the_batch_delay() {
        // Short calls: the floor, plus the time a batch may wait to fill.
        assert_eq!(
            stall_bound(None, &progress(1, 0, 700, 2)),
            Duration::from_millis(60_002)
        );
        // A call of 20 s: 4 × 20 s.
        assert_eq!(
            stall_bound(None, &progress(1, 0, 20_000, 1500)),
            Duration::from_millis(81_500)
        );
        // Exactly at the floor.
        assert_eq!(
            stall_bound(None, &progress(1, 0, 15_000, 0)),
            Duration::from_secs(60)
        );
        // The flag replaces the derivation, however long the calls.
        let set = Some(Duration::from_secs(2));
        assert_eq!(
            stall_bound(set, &progress(1, 0, 20_000, 1500)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn only_pending_work_without_progress_past_the_bound_fails() {
        let live = Liveness::new(None);
        // Idle for a day: live.
        assert!(live.check(&progress(0, 86_400, 700, 2)).is_ok());
        // Work pending, progress within the bound: live.
        assert!(live.check(&progress(3, 59, 700, 2)).is_ok());
        // Past it: not live, and the answer says why.
        match live.check(&progress(3, 61, 700, 2)) {
            Err(e @ ApiError::Stalled(_)) => {
                assert_eq!(e.status(), 503);
                let text = e.to_string();
                assert!(
                    text.contains("3 admitted") && text.contains("bound 60 s"),
                    "{text}"
                );
            }
            other => panic!("expected a stall, got {other:?}"),
        }
        // A long call seen raises the bound: 4 × 20 s.
        assert!(live.check(&progress(3, 61, 20_000, 2)).is_ok());
        assert!(live.check(&progress(3, 81, 20_000, 2)).is_err());
    }
}
