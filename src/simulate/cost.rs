//! What a run costs: GPU-hours at a price per GPU-hour, on demand and on spot, per day, per
//! month and per 1,000 try-ons, and how much of the paid GPU time did work.

use serde::Serialize;

use super::engine::Summary;

/// The on-demand price used when none is given: an assumed USD price of one H100 GPU-hour on
/// demand, for a replica that owns one GPU. Set your provider's with `--gpu-hour-price`.
pub const DEFAULT_GPU_HOUR_PRICE_USD: f64 = 4.0;

const SECONDS_PER_DAY: f64 = 86_400.0;
/// A month, for the monthly figure: 30 days.
const DAYS_PER_MONTH: f64 = 30.0;

/// Prices of one GPU-hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    pub on_demand_usd: f64,
    pub spot_usd: Option<f64>,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            on_demand_usd: DEFAULT_GPU_HOUR_PRICE_USD,
            spot_usd: None,
        }
    }
}

/// The cost of one run, at one price.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    /// GPU-hours of the run, and scaled to a day of the same traffic.
    pub gpu_hours: f64,
    pub gpu_hours_per_day: f64,
    pub usd: f64,
    pub usd_per_day: f64,
    pub usd_per_month: f64,
    /// `None` when nothing was served.
    pub usd_per_1000_tryons: Option<f64>,
    /// Busy (forward) seconds over paid GPU seconds.
    pub utilisation: Option<f64>,
}

impl Cost {
    pub fn of(summary: &Summary, usd_per_gpu_hour: f64) -> Cost {
        let gpu_hours = summary.gpu_seconds / 3600.0;
        let day_share = summary.duration_s.max(1) as f64 / SECONDS_PER_DAY;
        let gpu_hours_per_day = gpu_hours / day_share;
        let usd = gpu_hours * usd_per_gpu_hour;
        let usd_per_day = gpu_hours_per_day * usd_per_gpu_hour;
        Cost {
            gpu_hours,
            gpu_hours_per_day,
            usd,
            usd_per_day,
            usd_per_month: usd_per_day * DAYS_PER_MONTH,
            usd_per_1000_tryons: (summary.served > 0).then(|| usd / summary.served as f64 * 1000.0),
            utilisation: (summary.gpu_seconds > 0.0)
                .then(|| summary.busy_seconds / summary.gpu_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_replicas_for_an_hour_at_four_dollars() {
        let summary = Summary {
            scaledobject: "so".into(),
            duration_s: 3600,
            requests: 100_000,
            served: 100_000,
            rejected: 0,
            rejected_queue_full: 0,
            rejected_deadline: 0,
            rejected_unavailable: 0,
            lost_in_drain: 0,
            in_flight_at_end: 0,
            slo_p95_s: 5.0,
            slo_violation_s: 0,
            p95_s: Some(0.1),
            gpu_seconds: 7200.0,
            busy_seconds: 3600.0,
            max_replicas: 2,
            scale_events: 0,
        };
        let c = Cost::of(&summary, 4.0);
        assert_eq!(c.gpu_hours, 2.0);
        assert_eq!(c.gpu_hours_per_day, 48.0);
        assert_eq!(c.usd, 8.0);
        assert_eq!(c.usd_per_day, 192.0);
        assert_eq!(c.usd_per_month, 5760.0);
        assert_eq!(c.usd_per_1000_tryons, Some(0.08));
        assert_eq!(c.utilisation, Some(0.5));
    }
}
