//! The HorizontalPodAutoscaler's replica calculation for External metrics, as the Kubernetes
//! controller does it (`pkg/controller/podautoscaler/replica_calculator.go` and
//! `horizontal.go`): per-metric proposals with the 0.1 tolerance, the max over metrics, metric
//! errors that block a scale-down, stabilization windows, and the Pods/Percent rate policies.
//!
//! Pure: no I/O and no clock; the caller passes the time of each sync in seconds.

/// The HPA's default tolerance around a ratio of 1.
pub const TOLERANCE: f64 = 0.1;

/// How a metric's value is compared with its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricTarget {
    /// The value is a cluster-wide total; the target is what one replica should carry.
    AverageValue(f64),
    /// The value is compared as it is; the proposal scales the ready pods by the ratio.
    Value(f64),
}

/// A scaling policy: at most `value` pods, or `value` percent, per `period_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Pods { value: i64, period_s: i64 },
    Percent { value: i64, period_s: i64 },
}

impl Policy {
    fn period_s(&self) -> i64 {
        match self {
            Policy::Pods { period_s, .. } | Policy::Percent { period_s, .. } => *period_s,
        }
    }
}

/// How the policies of one direction combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy that allows the largest change (the default).
    Max,
    /// The policy that allows the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// `behavior.scaleUp` or `behavior.scaleDown`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    pub stabilization_window_s: i64,
    pub select_policy: SelectPolicy,
    pub policies: Vec<Policy>,
}

impl ScalingRules {
    /// The API server's default for `scaleUp`: no window, Pods 4 / 15 s and Percent 100 / 15 s.
    pub fn default_up() -> Self {
        ScalingRules {
            stabilization_window_s: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                Policy::Pods {
                    value: 4,
                    period_s: 15,
                },
                Policy::Percent {
                    value: 100,
                    period_s: 15,
                },
            ],
        }
    }

    /// The API server's default for `scaleDown`: a 300 s window, Percent 100 / 15 s.
    pub fn default_down() -> Self {
        ScalingRules {
            stabilization_window_s: 300,
            select_policy: SelectPolicy::Max,
            policies: vec![Policy::Percent {
                value: 100,
                period_s: 15,
            }],
        }
    }
}

/// The HPA's `behavior`.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules::default_up(),
            scale_down: ScalingRules::default_down(),
        }
    }
}

/// One metric as the HPA reads it in a sync: its target and its value, or why it could not be
/// read.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReading {
    pub target: MetricTarget,
    pub value: Result<f64, String>,
}

/// The proposal of one External metric (`GetExternalMetricReplicas` and
/// `GetExternalPerPodMetricReplicas`).
pub fn metric_proposal(target: MetricTarget, value: f64, current: i64, ready: i64) -> i64 {
    match target {
        MetricTarget::AverageValue(per_replica) => {
            let ratio = value / (per_replica * current as f64);
            if (ratio - 1.0).abs() <= TOLERANCE {
                current
            } else {
                (value / per_replica).ceil() as i64
            }
        }
        MetricTarget::Value(target) => {
            let ratio = value / target;
            if current == 0 {
                ratio.ceil() as i64
            } else if (ratio - 1.0).abs() <= TOLERANCE {
                current
            } else {
                (ratio * ready as f64).ceil() as i64
            }
        }
    }
}

/// What one sync decided.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncOutcome {
    /// The replica count the HPA writes to the scale target.
    pub desired: i64,
    /// The max over the metric proposals, before stabilization and policies (None when the
    /// metrics were not consulted or the sync was skipped).
    pub raw: Option<i64>,
    /// Why the sync changed nothing, when it was skipped for a metric error.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Stamped {
    value: i64,
    t: f64,
}

/// The controller's state for one HPA: its recommendations and scale events.
#[derive(Debug, Clone)]
pub struct Hpa {
    pub min_replicas: i64,
    pub max_replicas: i64,
    pub behavior: Behavior,
    recommendations: Vec<Stamped>,
    scale_up_events: Vec<Stamped>,
    scale_down_events: Vec<Stamped>,
}

impl Hpa {
    pub fn new(min_replicas: i64, max_replicas: i64, behavior: Behavior) -> Self {
        Hpa {
            min_replicas,
            max_replicas,
            behavior,
            recommendations: Vec::new(),
            scale_up_events: Vec::new(),
            scale_down_events: Vec::new(),
        }
    }

    /// One reconcile (`reconcileAutoscaler`) at time `now` with `current` = spec.replicas and
    /// `ready` pods.
    pub fn sync(
        &mut self,
        now: f64,
        current: i64,
        ready: i64,
        metrics: &[MetricReading],
    ) -> SyncOutcome {
        if current == 0 && self.min_replicas != 0 {
            // Scaling is disabled at zero; KEDA owns 0 <-> 1.
            return SyncOutcome {
                desired: 0,
                raw: None,
                skipped: None,
            };
        }
        let (desired, raw) = if current > self.max_replicas {
            (self.max_replicas, None)
        } else if current < self.min_replicas {
            (self.min_replicas, None)
        } else {
            let raw = match compute_replicas_for_metrics(current, ready, metrics) {
                Ok(raw) => raw,
                Err(reason) => {
                    return SyncOutcome {
                        desired: current,
                        raw: None,
                        skipped: Some(reason),
                    }
                }
            };
            let raw_clamped = raw.max(0);
            (
                self.normalize_with_behaviors(now, current, raw_clamped),
                Some(raw),
            )
        };
        if desired != current {
            self.store_scale_event(now, current, desired);
        }
        SyncOutcome {
            desired,
            raw,
            skipped: None,
        }
    }

    /// `normalizeDesiredReplicasWithBehaviors`: stabilize, then apply the rate policies.
    fn normalize_with_behaviors(&mut self, now: f64, current: i64, raw: i64) -> i64 {
        // maybeInitScaleDownStabilizationWindow
        if self.recommendations.is_empty() && self.behavior.scale_down.stabilization_window_s > 0 {
            self.recommendations.push(Stamped {
                value: current,
                t: now,
            });
        }
        let stabilized = self.stabilize(now, current, raw);
        self.limit_rate(now, current, stabilized)
    }

    /// `stabilizeRecommendationWithBehaviors`.
    fn stabilize(&mut self, now: f64, current: i64, raw: i64) -> i64 {
        let up_cutoff = now - self.behavior.scale_up.stabilization_window_s as f64;
        let down_cutoff = now - self.behavior.scale_down.stabilization_window_s as f64;
        let mut up_rec = raw;
        let mut down_rec = raw;
        let mut old_index = None;
        for (i, rec) in self.recommendations.iter().enumerate() {
            if rec.t > up_cutoff {
                up_rec = up_rec.min(rec.value);
            }
            if rec.t > down_cutoff {
                down_rec = down_rec.max(rec.value);
            }
            if rec.t < up_cutoff && rec.t < down_cutoff {
                old_index = Some(i);
            }
        }
        let stabilized = current.max(up_rec).min(down_rec);
        let stamped = Stamped { value: raw, t: now };
        match old_index {
            Some(i) => self.recommendations[i] = stamped,
            None => self.recommendations.push(stamped),
        }
        stabilized
    }

    /// `convertDesiredReplicasWithBehaviorRate`.
    fn limit_rate(&self, now: f64, current: i64, desired: i64) -> i64 {
        if desired > current {
            let limit = self
                .scale_limit(now, current, &self.behavior.scale_up, true)
                .max(current);
            desired.min(self.max_replicas.min(limit))
        } else if desired < current {
            let limit = self
                .scale_limit(now, current, &self.behavior.scale_down, false)
                .min(current);
            desired.max(self.min_replicas.max(limit))
        } else {
            desired
        }
    }

    /// `calculateScaleUpLimitWithScalingRules` / `calculateScaleDownLimitWithBehaviors`.
    fn scale_limit(&self, now: f64, current: i64, rules: &ScalingRules, up: bool) -> i64 {
        // "Max" selects the largest change: the highest limit up, the lowest limit down.
        let pick_high = match (rules.select_policy, up) {
            (SelectPolicy::Disabled, _) => return current,
            (SelectPolicy::Max, up) => up,
            (SelectPolicy::Min, up) => !up,
        };
        let mut result: Option<i64> = None;
        for policy in &rules.policies {
            let added = change_in_period(now, policy.period_s(), &self.scale_up_events);
            let removed = change_in_period(now, policy.period_s(), &self.scale_down_events);
            let start = current - added + removed;
            let proposed = match (*policy, up) {
                (Policy::Pods { value, .. }, true) => start + value,
                (Policy::Pods { value, .. }, false) => start - value,
                (Policy::Percent { value, .. }, true) => {
                    (start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i64
                }
                (Policy::Percent { value, .. }, false) => {
                    (start as f64 * (1.0 - value as f64 / 100.0)).trunc() as i64
                }
            };
            result = Some(match result {
                None => proposed,
                Some(r) if pick_high => r.max(proposed),
                Some(r) => r.min(proposed),
            });
        }
        // No policies: Kubernetes starts from MinInt32/MaxInt32, which the clamps then bound.
        result.unwrap_or(if pick_high { i64::MAX } else { i64::MIN })
    }

    fn store_scale_event(&mut self, now: f64, previous: i64, new: i64) {
        let (events, change) = if new > previous {
            (&mut self.scale_up_events, new - previous)
        } else {
            (&mut self.scale_down_events, previous - new)
        };
        events.push(Stamped {
            value: change,
            t: now,
        });
    }
}

fn change_in_period(now: f64, period_s: i64, events: &[Stamped]) -> i64 {
    let cutoff = now - period_s as f64;
    events
        .iter()
        .filter(|e| e.t > cutoff)
        .map(|e| e.value)
        .sum()
}

/// `computeReplicasForMetrics`: the max over valid proposals; an error when every metric
/// failed, or when some failed and the valid ones would scale down.
fn compute_replicas_for_metrics(
    current: i64,
    ready: i64,
    metrics: &[MetricReading],
) -> Result<i64, String> {
    let mut best: Option<i64> = None;
    let mut first_error: Option<String> = None;
    let mut invalid = 0usize;
    for m in metrics {
        match &m.value {
            Ok(v) => {
                let p = metric_proposal(m.target, *v, current, ready);
                best = Some(best.map_or(p, |b| b.max(p)));
            }
            Err(e) => {
                invalid += 1;
                first_error.get_or_insert_with(|| e.clone());
            }
        }
    }
    let replicas = best.unwrap_or(0);
    if invalid >= metrics.len() || (invalid > 0 && replicas < current) {
        let reason = first_error.unwrap_or_else(|| "no metrics".to_string());
        return Err(reason);
    }
    Ok(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avg(target: f64, value: f64) -> MetricReading {
        MetricReading {
            target: MetricTarget::AverageValue(target),
            value: Ok(value),
        }
    }

    fn failed(target: MetricTarget) -> MetricReading {
        MetricReading {
            target,
            value: Err("query failed".into()),
        }
    }

    fn guide_behavior() -> Behavior {
        Behavior {
            scale_up: ScalingRules {
                stabilization_window_s: 0,
                select_policy: SelectPolicy::Max,
                policies: vec![
                    Policy::Percent {
                        value: 100,
                        period_s: 30,
                    },
                    Policy::Pods {
                        value: 2,
                        period_s: 30,
                    },
                ],
            },
            scale_down: ScalingRules {
                stabilization_window_s: 300,
                select_policy: SelectPolicy::Max,
                policies: vec![Policy::Percent {
                    value: 50,
                    period_s: 60,
                }],
            },
        }
    }

    // replica_calculator_test.go, TestReplicaCalcToleranceCMExternal (and the other
    // TestReplicaCalcTolerance* cases): a usage ratio within 10 % of 1 keeps the count.
    #[test]
    fn tolerance_keeps_the_count() {
        // AverageValue: 3 replicas carrying 31.5 against 10 each: ratio 1.05.
        assert_eq!(
            metric_proposal(MetricTarget::AverageValue(10.0), 31.5, 3, 3),
            3
        );
        // Just outside: ratio 1.11 proposes ceil(33.3 / 10) = 4.
        assert_eq!(
            metric_proposal(MetricTarget::AverageValue(10.0), 33.3, 3, 3),
            4
        );
        // Value: 5.4 against 5 is ratio 1.08.
        assert_eq!(metric_proposal(MetricTarget::Value(5.0), 5.4, 4, 4), 4);
        assert_eq!(metric_proposal(MetricTarget::Value(5.0), 6.0, 4, 4), 5);
    }

    // replica_calculator_test.go, TestReplicaCalcScaleUpPerPodCMExternal: External
    // AverageValue proposes ceil(total / target) whatever the current count.
    #[test]
    fn average_value_gives_ceil_total_over_target() {
        // The Kubernetes case: 3 replicas, 8600 against 2150 per pod: 4.
        assert_eq!(
            metric_proposal(MetricTarget::AverageValue(2150.0), 8600.0, 3, 3),
            4
        );
        assert_eq!(
            metric_proposal(MetricTarget::AverageValue(10.0), 85.0, 1, 1),
            9
        );
        assert_eq!(
            metric_proposal(MetricTarget::AverageValue(70.0), 100.0, 8, 8),
            2
        );
        assert_eq!(
            metric_proposal(MetricTarget::AverageValue(5.0), 0.0, 3, 3),
            0
        );
    }

    // replica_calculator_test.go, TestReplicaCalcScaleUpCMExternal,
    // TestReplicaCalcScaleDownCMExternal and TestReplicaCalcScaleUpCMExternalIgnoresUnreadyPods:
    // Value scales the ready pods by the ratio.
    #[test]
    fn value_scales_ready_pods() {
        assert_eq!(
            metric_proposal(MetricTarget::Value(4400.0), 8600.0, 1, 1),
            2
        );
        assert_eq!(
            metric_proposal(MetricTarget::Value(14334.0), 8600.0, 5, 5),
            3
        );
        // 3 in spec, 1 ready: 2, not the 6 that counting unready pods would give.
        assert_eq!(
            metric_proposal(MetricTarget::Value(4400.0), 8600.0, 3, 1),
            2
        );
        // 6 in spec, 4 ready, P95 at twice the target: ceil(2 * 4) = 8.
        assert_eq!(metric_proposal(MetricTarget::Value(5.0), 10.0, 6, 4), 8);
    }

    // horizontal_test.go, TestScalingWithRules ("scaleUp with percent policy larger than pods
    // policy", selectPolicy Max): the step is the larger of Percent 100 and Pods 2 per period,
    // and the events of the period count against it.
    #[test]
    fn scale_up_policy_limits_the_step() {
        let mut hpa = Hpa::new(1, 10, guide_behavior());
        let readings = [avg(10.0, 1000.0)];
        // From 1: Percent 100 gives 2, Pods 2 gives 3; Max takes 3.
        assert_eq!(hpa.sync(0.0, 1, 1, &readings).desired, 3);
        // 15 s later the 2 added are inside the 30 s period: start is still 1, limit 3.
        assert_eq!(hpa.sync(15.0, 3, 1, &readings).desired, 3);
        // 30 s after the event it is outside the period (After(cutoff) is strict): from 3,
        // Percent gives 6, Pods gives 5.
        assert_eq!(hpa.sync(30.0, 3, 3, &readings).desired, 6);
        assert_eq!(hpa.sync(60.0, 6, 6, &readings).desired, 10);
    }

    // horizontal_test.go, TestCalculateScaleUpLimitWithScalingRules (selectPolicy Min): the
    // smaller change wins; Disabled keeps the count.
    #[test]
    fn select_policy_min_takes_the_smaller_step() {
        let mut behavior = guide_behavior();
        behavior.scale_up.select_policy = SelectPolicy::Min;
        let mut hpa = Hpa::new(1, 10, behavior);
        // From 4: Percent 100 gives 8, Pods 2 gives 6: Min takes 6.
        assert_eq!(hpa.sync(0.0, 4, 4, &[avg(10.0, 1000.0)]).desired, 6);
        let mut disabled = guide_behavior();
        disabled.scale_up.select_policy = SelectPolicy::Disabled;
        let mut hpa = Hpa::new(1, 10, disabled);
        assert_eq!(hpa.sync(0.0, 4, 4, &[avg(10.0, 1000.0)]).desired, 4);
    }

    // horizontal_test.go, TestNormalizeDesiredReplicasWithBehaviors (scale-down stabilization):
    // the highest recommendation of the last 300 s holds the count.
    #[test]
    fn scale_down_window_holds_the_highest_recommendation_for_300_s() {
        let mut hpa = Hpa::new(1, 10, guide_behavior());
        // A recommendation of 8 at t=0 while at 8.
        assert_eq!(hpa.sync(0.0, 8, 8, &[avg(10.0, 80.0)]).desired, 8);
        // Load gone: raw 1, but 8 is inside the window until t = 300 (exclusive).
        let mut t = 15.0;
        while t < 300.0 {
            let out = hpa.sync(t, 8, 8, &[avg(10.0, 0.0)]);
            assert_eq!(out.raw, Some(0), "t={t}");
            assert_eq!(out.desired, 8, "t={t}");
            t += 15.0;
        }
        // At t = 300 the recommendation at 0 is no longer after the cutoff: Percent 50 halves.
        assert_eq!(hpa.sync(300.0, 8, 8, &[avg(10.0, 0.0)]).desired, 4);
        // Within the 60 s period nothing more may go.
        assert_eq!(hpa.sync(315.0, 4, 4, &[avg(10.0, 0.0)]).desired, 4);
        assert_eq!(hpa.sync(360.0, 4, 4, &[avg(10.0, 0.0)]).desired, 2);
    }

    // horizontal_test.go, TestCalculateScaleDownLimitWithBehaviors and the percent
    // scale-down cases of TestScalingWithRules: int32(start * (1 - p/100)) truncates.
    #[test]
    fn percent_scale_down_truncates() {
        let mut behavior = guide_behavior();
        behavior.scale_down.stabilization_window_s = 0;
        let mut hpa = Hpa::new(1, 10, behavior);
        // 5 * 0.5 = 2.5 truncates to 2.
        assert_eq!(hpa.sync(0.0, 5, 5, &[avg(10.0, 0.0)]).desired, 2);
        let mut hpa = Hpa::new(1, 10, {
            let mut b = guide_behavior();
            b.scale_down.stabilization_window_s = 0;
            b
        });
        // 3 * 0.5 = 1.5 truncates to 1.
        assert_eq!(hpa.sync(0.0, 3, 3, &[avg(10.0, 0.0)]).desired, 1);
    }

    // horizontal_test.go, TestScalingWithRules ("maxReplicas is the limit because maxReplicas
    // < scaleUpLimit", "prenormalized desired replicas < minReplicas") and horizontal.go
    // reconcileAutoscaler: desired is clamped to [min, max], and a count outside the range
    // is brought back without reading metrics.
    #[test]
    fn clamping_to_min_and_max() {
        let mut hpa = Hpa::new(2, 10, guide_behavior());
        // Outside the range: clamp, metrics not read.
        let out = hpa.sync(0.0, 12, 12, &[avg(10.0, 0.0)]);
        assert_eq!((out.desired, out.raw), (10, None));
        let out = hpa.sync(15.0, 1, 1, &[avg(10.0, 1000.0)]);
        assert_eq!((out.desired, out.raw), (2, None));
        // A proposal of 100 from 8: Percent allows 16, max caps at 10.
        let mut hpa = Hpa::new(2, 10, guide_behavior());
        assert_eq!(hpa.sync(0.0, 8, 8, &[avg(10.0, 1000.0)]).desired, 10);
        // A proposal of 0 with no window: Percent 50 allows 2, min is 2.
        let mut b = guide_behavior();
        b.scale_down.stabilization_window_s = 0;
        b.scale_down.policies = vec![Policy::Percent {
            value: 100,
            period_s: 15,
        }];
        let mut hpa = Hpa::new(2, 10, b);
        assert_eq!(hpa.sync(0.0, 4, 4, &[avg(10.0, 0.0)]).desired, 2);
    }

    // horizontal_test.go, TestScaleUpOneMetricInvalid and TestScaleDownOneMetricInvalid: an
    // invalid metric blocks a scale-down, not a scale-up.
    #[test]
    fn a_metric_error_blocks_scale_down_but_not_scale_up() {
        let mut b = guide_behavior();
        b.scale_down.stabilization_window_s = 0;
        let mut hpa = Hpa::new(1, 10, b.clone());
        let down = hpa.sync(
            0.0,
            4,
            4,
            &[avg(10.0, 10.0), failed(MetricTarget::Value(5.0))],
        );
        assert_eq!(down.desired, 4);
        assert!(down.skipped.is_some());
        let mut hpa = Hpa::new(1, 10, b.clone());
        let up = hpa.sync(
            0.0,
            4,
            4,
            &[avg(10.0, 60.0), failed(MetricTarget::Value(5.0))],
        );
        assert_eq!(up.desired, 6);
        assert!(up.skipped.is_none());
        // All metrics invalid: skipped.
        let mut hpa = Hpa::new(1, 10, b);
        let all = hpa.sync(0.0, 4, 4, &[failed(MetricTarget::AverageValue(1.0))]);
        assert_eq!(all.desired, 4);
        assert!(all.skipped.is_some());
    }

    // horizontal.go, computeReplicasForMetrics: the max over the metrics.
    #[test]
    fn max_over_metrics() {
        let mut hpa = Hpa::new(1, 10, guide_behavior());
        let out = hpa.sync(
            0.0,
            2,
            2,
            &[
                avg(10.0, 25.0),
                MetricReading {
                    target: MetricTarget::Value(5.0),
                    value: Ok(10.0),
                },
            ],
        );
        // 3 from the first, ceil(2 * 2) = 4 from the second.
        assert_eq!(out.raw, Some(4));
        assert_eq!(out.desired, 4);
    }

    // horizontal.go, reconcileAutoscaler: spec.replicas 0 with minReplicas > 0 disables
    // scaling.
    #[test]
    fn zero_replicas_disable_the_hpa() {
        let mut hpa = Hpa::new(1, 10, Behavior::default());
        let out = hpa.sync(0.0, 0, 0, &[avg(1.0, 100.0)]);
        assert_eq!(out.desired, 0);
    }

    // horizontal_test.go, TestScalingWithRules ("scaleUp with default behavior"): Pods 4 and
    // Percent 100 per 15 s.
    #[test]
    fn default_behavior_scale_up() {
        let mut hpa = Hpa::new(1, 100, Behavior::default());
        // From 1: Pods 4 gives 5, Percent gives 2.
        assert_eq!(hpa.sync(0.0, 1, 1, &[avg(1.0, 100.0)]).desired, 5);
        // 15 s later, outside the period: from 5, Percent gives 10, Pods 9.
        assert_eq!(hpa.sync(15.0, 5, 5, &[avg(1.0, 100.0)]).desired, 10);
    }

    fn rules(pods: i64, percent: i64, period_s: i64, window_s: i64) -> ScalingRules {
        let mut policies = Vec::new();
        if pods != 0 {
            policies.push(Policy::Pods {
                value: pods,
                period_s,
            });
        }
        if percent != 0 {
            policies.push(Policy::Percent {
                value: percent,
                period_s,
            });
        }
        ScalingRules {
            stabilization_window_s: window_s,
            select_policy: SelectPolicy::Max,
            policies,
        }
    }

    fn one_sync(min: i64, max: i64, behavior: Behavior, current: i64, raw: i64) -> i64 {
        let mut hpa = Hpa::new(min, max, behavior);
        hpa.sync(0.0, current, current, &[avg(1.0, raw as f64)])
            .desired
    }

    // horizontal_test.go, TestScalingWithRules: the table's cases with no prior events.
    #[test]
    fn kubernetes_scaling_with_rules_cases() {
        let no_window = |up: ScalingRules, down: ScalingRules| Behavior {
            scale_up: up,
            scale_down: down,
        };
        let mut default_down_no_window = ScalingRules::default_down();
        default_down_no_window.stabilization_window_s = 0;
        // "scaleUp with default behavior": 10 -> 20.
        assert_eq!(
            one_sync(
                1,
                1000,
                no_window(ScalingRules::default_up(), default_down_no_window.clone()),
                10,
                50
            ),
            20
        );
        // "scaleUp with pods policy larger than percent policy": Pods 100 gives 110.
        assert_eq!(
            one_sync(
                1,
                1000,
                no_window(rules(100, 100, 60, 0), default_down_no_window.clone()),
                10,
                500
            ),
            110
        );
        // "scaleUp with percent policy larger than pods policy": Percent 100 gives 20.
        assert_eq!(
            one_sync(
                1,
                1000,
                no_window(rules(2, 100, 60, 0), default_down_no_window.clone()),
                10,
                500
            ),
            20
        );
        // "scaleDownLimit is the limit because scaleDownLimit > minReplicas with user defined
        // policies": Pods 20 per 60 s from 1000 gives 980.
        assert_eq!(
            one_sync(
                3,
                2000,
                no_window(ScalingRules::default_up(), rules(20, 0, 60, 0)),
                1000,
                3
            ),
            980
        );
        // "desired replica count is more than the maximum replica count": 150.
        assert_eq!(
            one_sync(
                100,
                150,
                no_window(ScalingRules::default_up(), default_down_no_window),
                100,
                1000
            ),
            150
        );
    }
}
