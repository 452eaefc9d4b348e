//! KEDA's side: the ScaledObject (triggers, thresholds, behavior, min/max) and the activation
//! loop that owns 0 <-> 1 replicas when `minReplicaCount` is 0.

use serde::Deserialize;
use serde_yaml::Value as Yaml;

use super::hpa::{Behavior, MetricReading, MetricTarget, Policy, ScalingRules, SelectPolicy};
use super::promql::{PromqlError, Query, Value};
use super::tsdb::Tsdb;

#[derive(Debug, thiserror::Error)]
pub enum KedaError {
    #[error("{file}: not YAML: {source}")]
    Yaml {
        file: String,
        source: serde_yaml::Error,
    },
    #[error("{file}: no document of kind ScaledObject")]
    NoScaledObject { file: String },
    #[error("{file}: trigger {index} ({kind}): {what}")]
    Trigger {
        file: String,
        index: usize,
        kind: String,
        what: String,
    },
    #[error("{file}: trigger {index}: {source}")]
    Query {
        file: String,
        index: usize,
        source: PromqlError,
    },
    #[error("{file}: {what}")]
    Spec { file: String, what: String },
}

#[derive(Debug, Deserialize)]
struct Document {
    kind: Option<String>,
    metadata: Option<Metadata>,
    spec: Option<Spec>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    polling_interval: Option<i64>,
    cooldown_period: Option<i64>,
    min_replica_count: Option<i64>,
    max_replica_count: Option<i64>,
    advanced: Option<Advanced>,
    fallback: Option<RawFallback>,
    #[serde(default)]
    triggers: Vec<RawTrigger>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFallback {
    failure_threshold: i64,
    replicas: i64,
    behavior: Option<String>,
}

/// `spec.fallback.behavior`: which replica count a failing trigger stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackBehavior {
    /// `replicas`.
    Static,
    /// The current replica count.
    CurrentReplicas,
    /// The current count when it is higher than `replicas`, else `replicas`.
    CurrentReplicasIfHigher,
    /// The current count when it is lower than `replicas`, else `replicas`.
    CurrentReplicasIfLower,
}

/// KEDA's `spec.fallback`: once a trigger has failed more than `failure_threshold` reads in a
/// row, it reads as the metric value that asks for the behaviour's replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    pub failure_threshold: i64,
    pub replicas: i64,
    pub behavior: FallbackBehavior,
}

impl Fallback {
    /// The replica count a failing trigger stands for, with `current` replicas now.
    pub fn replicas(&self, current: i64) -> i64 {
        match self.behavior {
            FallbackBehavior::Static => self.replicas,
            FallbackBehavior::CurrentReplicas => current,
            FallbackBehavior::CurrentReplicasIfHigher => current.max(self.replicas),
            FallbackBehavior::CurrentReplicasIfLower => current.min(self.replicas),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Advanced {
    horizontal_pod_autoscaler_config: Option<HpaConfig>,
    scaling_modifiers: Option<Yaml>,
}

#[derive(Debug, Deserialize)]
struct HpaConfig {
    behavior: Option<RawBehavior>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBehavior {
    scale_up: Option<RawRules>,
    scale_down: Option<RawRules>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRules {
    stabilization_window_seconds: Option<i64>,
    select_policy: Option<String>,
    policies: Option<Vec<RawPolicy>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPolicy {
    #[serde(rename = "type")]
    kind: String,
    value: i64,
    period_seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTrigger {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    metric_type: Option<String>,
    #[serde(default)]
    metadata: serde_yaml::Mapping,
}

/// A cron schedule limited to what a simulation needs: minute and hour fields with `*`,
/// `*/n`, lists and ranges; day-of-month and month `*`; day-of-week as lists and ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    minutes: Vec<u32>,
    hours: Vec<u32>,
    weekdays: Vec<u32>,
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("cron `{text}` needs 5 fields"));
        }
        if fields[2] != "*" || fields[3] != "*" {
            return Err(format!(
                "cron `{text}`: day-of-month and month must be `*` in a simulation"
            ));
        }
        Ok(Cron {
            minutes: cron_field(fields[0], 0, 59)?,
            hours: cron_field(fields[1], 0, 23)?,
            weekdays: cron_field(fields[4], 0, 7)?
                .into_iter()
                .map(|d| d % 7)
                .collect(),
        })
    }

    /// The latest firing at or before minute `m` of the simulated week (minute 0 is Monday
    /// 00:00), as an absolute minute, looking back at most two weeks.
    fn last_fire(&self, m: i64) -> Option<i64> {
        let mut t = m;
        while t >= m - 2 * 7 * 1440 {
            let day = t.div_euclid(1440);
            let minute = (t.rem_euclid(1440) % 60) as u32;
            let hour = (t.rem_euclid(1440) / 60) as u32;
            // Day 0 is a Monday: cron weekday 1.
            let weekday = ((day.rem_euclid(7) + 1) % 7) as u32;
            if self.minutes.contains(&minute)
                && self.hours.contains(&hour)
                && self.weekdays.contains(&weekday)
            {
                return Some(t);
            }
            t -= 1;
        }
        None
    }
}

fn cron_field(field: &str, lo: u32, hi: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>().map_err(|_| format!("bad step `{part}`"))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                a.parse().map_err(|_| format!("bad cron field `{part}`"))?,
                b.parse().map_err(|_| format!("bad cron field `{part}`"))?,
            )
        } else {
            let v: u32 = range
                .parse()
                .map_err(|_| format!("bad cron field `{part}`"))?;
            (v, if step > 1 { hi } else { v })
        };
        if a < lo || b > hi || step == 0 {
            return Err(format!("cron field `{part}` out of range {lo}-{hi}"));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    Ok(out)
}

/// Which count of a Redis stream KEDA's `redis-streams` scaler reads, chosen as KEDA does from
/// the metadata: `consumerGroup` with `lagCount`, `consumerGroup` alone, or no group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCount {
    /// XINFO GROUPS `lag`: entries not yet delivered to the group (Redis 7+).
    Lag,
    /// XPENDING: entries delivered to a consumer and not acknowledged.
    Pending,
    /// XLEN: the entries in the stream.
    Length,
}

/// The batch job stream in Redis at a poll, as the simulated replicas leave it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobStream {
    /// Jobs submitted and taken by no replica yet.
    pub waiting: u64,
    /// Jobs taken by a replica and not finished. The server acknowledges and deletes a job's
    /// entry when it ends, so the stream holds `waiting + taken` entries.
    pub taken: u64,
}

impl JobStream {
    pub fn count(&self, what: StreamCount) -> u64 {
        match what {
            StreamCount::Lag => self.waiting,
            StreamCount::Pending => self.taken,
            StreamCount::Length => self.waiting + self.taken,
        }
    }
}

/// What a trigger reads.
#[derive(Debug, Clone)]
pub enum TriggerKind {
    Prometheus {
        query: Query,
        activation_threshold: f64,
        ignore_null_values: bool,
    },
    /// KEDA's cron scaler: `desiredReplicas` between start and end, else 1, against an
    /// AverageValue target of 1.
    Cron {
        start: Cron,
        end: Cron,
        desired_replicas: i64,
    },
    /// KEDA's redis-streams scaler on the job stream: active while the count is above
    /// `activationLagCount` (for every count, as KEDA compares them).
    RedisStreams { count: StreamCount, activation: i64 },
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub name: String,
    pub target: MetricTarget,
    pub kind: TriggerKind,
}

/// The parts of a ScaledObject that decide scaling.
#[derive(Debug, Clone)]
pub struct ScaledObject {
    pub name: String,
    pub polling_interval_s: i64,
    pub cooldown_period_s: i64,
    pub min_replica_count: i64,
    pub max_replica_count: i64,
    pub behavior: Behavior,
    pub triggers: Vec<Trigger>,
    pub fallback: Option<Fallback>,
}

fn metadata_str<'a>(meta: &'a serde_yaml::Mapping, key: &str) -> Result<Option<&'a str>, String> {
    match meta.get(key) {
        None => Ok(None),
        Some(Yaml::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(format!(
            "metadata.{key} must be a quoted string (KEDA's metadata is a map of strings), found {other:?}"
        )),
    }
}

/// An integer of the metadata, as KEDA's typed config parses it (no fraction).
fn metadata_int(meta: &serde_yaml::Mapping, key: &str) -> Result<Option<i64>, String> {
    metadata_str(meta, key)?
        .map(|text| {
            text.trim()
                .parse::<i64>()
                .map_err(|_| format!("metadata.{key} `{text}` is not an integer"))
        })
        .transpose()
}

/// The HPA target of a trigger's `metricType`.
fn metric_target(metric_type: Option<&str>, threshold: f64) -> Result<MetricTarget, String> {
    match metric_type {
        None | Some("AverageValue") => Ok(MetricTarget::AverageValue(threshold)),
        Some("Value") => Ok(MetricTarget::Value(threshold)),
        Some(other) => Err(format!("metricType `{other}` is not AverageValue or Value")),
    }
}

fn parse_float(key: &str, text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .map_err(|_| format!("metadata.{key} `{text}` is not a number"))
}

fn rules(raw: Option<RawRules>, default: ScalingRules) -> Result<ScalingRules, String> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let select_policy = match raw.select_policy.as_deref() {
        None | Some("Max") => SelectPolicy::Max,
        Some("Min") => SelectPolicy::Min,
        Some("Disabled") => SelectPolicy::Disabled,
        Some(other) => {
            return Err(format!(
                "selectPolicy `{other}` is not Max, Min or Disabled"
            ))
        }
    };
    let policies = match raw.policies {
        None => default.policies,
        Some(list) => list
            .into_iter()
            .map(|p| {
                if p.period_seconds <= 0 || p.period_seconds > 1800 {
                    return Err(format!(
                        "periodSeconds {} not in 1..=1800",
                        p.period_seconds
                    ));
                }
                match p.kind.as_str() {
                    "Pods" => Ok(Policy::Pods {
                        value: p.value,
                        period_s: p.period_seconds,
                    }),
                    "Percent" => Ok(Policy::Percent {
                        value: p.value,
                        period_s: p.period_seconds,
                    }),
                    other => Err(format!("policy type `{other}` is not Pods or Percent")),
                }
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(ScalingRules {
        stabilization_window_s: raw
            .stabilization_window_seconds
            .unwrap_or(default.stabilization_window_s),
        select_policy,
        policies,
    })
}

impl ScaledObject {
    /// Reads the first ScaledObject of a (possibly multi-document) YAML file.
    pub fn from_yaml(file: &str, text: &str) -> Result<ScaledObject, KedaError> {
        let spec_err = |what: String| KedaError::Spec {
            file: file.to_string(),
            what,
        };
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = Yaml::deserialize(doc).map_err(|source| KedaError::Yaml {
                file: file.to_string(),
                source,
            })?;
            if value.get("kind").and_then(Yaml::as_str) != Some("ScaledObject") {
                continue;
            }
            let doc: Document =
                serde_yaml::from_value(value).map_err(|source| KedaError::Yaml {
                    file: file.to_string(),
                    source,
                })?;
            debug_assert_eq!(doc.kind.as_deref(), Some("ScaledObject"));
            let spec = doc
                .spec
                .ok_or_else(|| spec_err("ScaledObject without spec".into()))?;
            return Self::from_spec(
                file,
                doc.metadata
                    .and_then(|m| m.name)
                    .unwrap_or_else(|| "scaledobject".into()),
                spec,
            );
        }
        Err(KedaError::NoScaledObject {
            file: file.to_string(),
        })
    }

    fn from_spec(file: &str, name: String, spec: Spec) -> Result<ScaledObject, KedaError> {
        let spec_err = |what: String| KedaError::Spec {
            file: file.to_string(),
            what,
        };
        let min = spec.min_replica_count.unwrap_or(0);
        let max = spec.max_replica_count.unwrap_or(100);
        if min < 0 || max < 1 || min > max {
            return Err(spec_err(format!(
                "minReplicaCount {min} / maxReplicaCount {max} are not a valid range"
            )));
        }
        let mut behavior = Behavior::default();
        if let Some(adv) = spec.advanced {
            if adv.scaling_modifiers.is_some() {
                return Err(spec_err(
                    "advanced.scalingModifiers is not supported by the simulator".into(),
                ));
            }
            if let Some(raw) = adv
                .horizontal_pod_autoscaler_config
                .and_then(|c| c.behavior)
            {
                behavior = Behavior {
                    scale_up: rules(raw.scale_up, ScalingRules::default_up()).map_err(spec_err)?,
                    scale_down: rules(raw.scale_down, ScalingRules::default_down())
                        .map_err(spec_err)?,
                };
            }
        }
        if spec.triggers.is_empty() {
            return Err(spec_err("no triggers".into()));
        }
        let fallback = match spec.fallback {
            None => None,
            Some(raw) => {
                if raw.failure_threshold < 0 || raw.replicas < 0 {
                    return Err(spec_err(format!(
                        "fallback.failureThreshold {} and fallback.replicas {} must not be negative",
                        raw.failure_threshold, raw.replicas
                    )));
                }
                let behavior = match raw.behavior.as_deref() {
                    None | Some("static") => FallbackBehavior::Static,
                    Some("currentReplicas") => FallbackBehavior::CurrentReplicas,
                    Some("currentReplicasIfHigher") => FallbackBehavior::CurrentReplicasIfHigher,
                    Some("currentReplicasIfLower") => FallbackBehavior::CurrentReplicasIfLower,
                    Some(other) => {
                        return Err(spec_err(format!(
                        "fallback.behavior `{other}` is not simulated (static, currentReplicas, \
                             currentReplicasIfHigher and currentReplicasIfLower are)"
                    )))
                    }
                };
                Some(Fallback {
                    failure_threshold: raw.failure_threshold,
                    replicas: raw.replicas,
                    behavior,
                })
            }
        };
        let mut triggers = Vec::new();
        for (index, raw) in spec.triggers.into_iter().enumerate() {
            let terr = |what: String| KedaError::Trigger {
                file: file.to_string(),
                index,
                kind: raw.kind.clone(),
                what,
            };
            let meta = &raw.metadata;
            let name = raw
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{index}", raw.kind));
            let trigger = match raw.kind.as_str() {
                "prometheus" => {
                    let query_text = metadata_str(meta, "query")
                        .map_err(terr)?
                        .ok_or_else(|| terr("metadata.query is required".into()))?;
                    let threshold_text = metadata_str(meta, "threshold")
                        .map_err(terr)?
                        .ok_or_else(|| terr("metadata.threshold is required".into()))?;
                    let threshold = parse_float("threshold", threshold_text).map_err(terr)?;
                    let activation_threshold = metadata_str(meta, "activationThreshold")
                        .map_err(terr)?
                        .map(|t| parse_float("activationThreshold", t))
                        .transpose()
                        .map_err(terr)?
                        .unwrap_or(0.0);
                    let ignore_null_values =
                        match metadata_str(meta, "ignoreNullValues").map_err(terr)? {
                            None => true,
                            Some(v) => v.trim().parse::<bool>().map_err(|_| {
                                terr(format!("metadata.ignoreNullValues `{v}` is not true/false"))
                            })?,
                        };
                    let target =
                        metric_target(raw.metric_type.as_deref(), threshold).map_err(terr)?;
                    let query = Query::parse(query_text).map_err(|source| KedaError::Query {
                        file: file.to_string(),
                        index,
                        source,
                    })?;
                    Trigger {
                        name,
                        target,
                        kind: TriggerKind::Prometheus {
                            query,
                            activation_threshold,
                            ignore_null_values,
                        },
                    }
                }
                "cron" => {
                    let get = |key: &str| -> Result<&str, KedaError> {
                        metadata_str(meta, key)
                            .map_err(terr)?
                            .ok_or_else(|| terr(format!("metadata.{key} is required")))
                    };
                    let start = Cron::parse(get("start")?).map_err(terr)?;
                    let end = Cron::parse(get("end")?).map_err(terr)?;
                    let desired_text = get("desiredReplicas")?;
                    let desired_replicas = desired_text.trim().parse::<i64>().map_err(|_| {
                        terr(format!(
                            "desiredReplicas `{desired_text}` is not an integer"
                        ))
                    })?;
                    Trigger {
                        name,
                        target: MetricTarget::AverageValue(1.0),
                        kind: TriggerKind::Cron {
                            start,
                            end,
                            desired_replicas,
                        },
                    }
                }
                "redis-streams" => {
                    if metadata_str(meta, "stream").map_err(terr)?.is_none() {
                        return Err(terr("metadata.stream is required".into()));
                    }
                    let group = metadata_str(meta, "consumerGroup")
                        .map_err(terr)?
                        .is_some_and(|g| !g.is_empty());
                    // KEDA: a group with a non-zero lagCount reads the lag, a group without it
                    // the pending entries, no group the stream's length; 5 by default.
                    let lag = metadata_int(meta, "lagCount").map_err(terr)?;
                    let (count, target) = match (group, lag) {
                        (true, Some(lag)) if lag != 0 => (StreamCount::Lag, lag),
                        (true, _) => (
                            StreamCount::Pending,
                            metadata_int(meta, "pendingEntriesCount")
                                .map_err(terr)?
                                .unwrap_or(5),
                        ),
                        (false, _) => (
                            StreamCount::Length,
                            metadata_int(meta, "streamLength")
                                .map_err(terr)?
                                .unwrap_or(5),
                        ),
                    };
                    if target <= 0 {
                        return Err(terr(format!("target {target} must be positive")));
                    }
                    let activation = metadata_int(meta, "activationLagCount")
                        .map_err(terr)?
                        .unwrap_or(0);
                    let target = metric_target(raw.metric_type.as_deref(), target as f64)
                        .map_err(terr)?;
                    Trigger {
                        name,
                        target,
                        kind: TriggerKind::RedisStreams { count, activation },
                    }
                }
                other => {
                    return Err(terr(format!(
                        "trigger type `{other}` is not simulated (prometheus, cron and redis-streams are)"
                    )))
                }
            };
            triggers.push(trigger);
        }
        Ok(ScaledObject {
            name,
            polling_interval_s: spec.polling_interval.unwrap_or(30).max(1),
            cooldown_period_s: spec.cooldown_period.unwrap_or(300),
            min_replica_count: min,
            max_replica_count: max,
            behavior,
            triggers,
            fallback,
        })
    }

    /// The HPA's minReplicas: KEDA sets max(minReplicaCount, 1).
    pub fn hpa_min(&self) -> i64 {
        self.min_replica_count.max(1)
    }

    /// Whether a trigger reads the job stream: then the load is batch jobs, which wait in the
    /// stream until a replica takes them.
    pub fn reads_job_stream(&self) -> bool {
        self.triggers
            .iter()
            .any(|t| matches!(t.kind, TriggerKind::RedisStreams { .. }))
    }
}

/// One trigger read at time `t`: the metric value as the HPA receives it, and whether the
/// trigger is active (above its activation threshold).
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerReading {
    pub value: Result<f64, String>,
    pub active: bool,
}

impl Trigger {
    pub fn read(&self, db: &Tsdb, stream: &JobStream, t: f64) -> TriggerReading {
        match &self.kind {
            TriggerKind::Prometheus {
                query,
                activation_threshold,
                ignore_null_values,
            } => {
                let value = match query.eval(db, t) {
                    Err(e) => Err(e.to_string()),
                    Ok(Value::Scalar(v)) => Ok(v),
                    Ok(Value::Vector(v)) => match v.as_slice() {
                        [] if *ignore_null_values => Ok(0.0),
                        [] => Err(format!(
                            "query `{}` returned no series and ignoreNullValues is false",
                            query.text()
                        )),
                        [(_, v)] => Ok(*v),
                        _ => Err(format!(
                            "query `{}` returned {} series; KEDA needs exactly one",
                            query.text(),
                            v.len()
                        )),
                    },
                };
                let value = value.and_then(|v| {
                    if v.is_finite() {
                        // KEDA hands the HPA a milli-quantity: int64(value * 1000).
                        Ok((v * 1000.0).trunc() / 1000.0)
                    } else {
                        Err(format!("query `{}` returned {v}", query.text()))
                    }
                });
                let active = matches!(value, Ok(v) if v > *activation_threshold);
                TriggerReading { value, active }
            }
            TriggerKind::Cron {
                start,
                end,
                desired_replicas,
            } => {
                let minute = (t / 60.0).floor() as i64;
                let active = match (start.last_fire(minute), end.last_fire(minute)) {
                    (Some(s), Some(e)) => s > e,
                    (Some(_), None) => true,
                    _ => false,
                };
                TriggerReading {
                    value: Ok(if active {
                        *desired_replicas as f64
                    } else {
                        1.0
                    }),
                    active,
                }
            }
            TriggerKind::RedisStreams { count, activation } => {
                let n = stream.count(*count);
                TriggerReading {
                    value: Ok(n as f64),
                    active: i64::try_from(n).map_or(true, |n| n > *activation),
                }
            }
        }
    }

    pub fn reading(&self, r: &TriggerReading) -> MetricReading {
        MetricReading {
            target: self.target,
            value: r.value.clone(),
        }
    }

    /// What the HPA receives for this trigger: its reading, or KEDA's fallback value once it
    /// has failed more than `fallback.failureThreshold` reads in a row. `failures` is the
    /// trigger's count of failed reads in a row, updated here.
    pub fn reading_with_fallback(
        &self,
        r: &TriggerReading,
        fallback: Option<&Fallback>,
        failures: &mut i64,
        current: i64,
        ready: i64,
    ) -> MetricReading {
        if r.value.is_ok() {
            *failures = 0;
            return self.reading(r);
        }
        *failures += 1;
        let Some(fb) = fallback.filter(|fb| *failures > fb.failure_threshold) else {
            return self.reading(r);
        };
        let replicas = fb.replicas(current) as f64;
        // KEDA: the target times the replicas, over the ready pods for a Value target.
        let value = match self.target {
            MetricTarget::AverageValue(target) => Ok(target * replicas),
            MetricTarget::Value(_) if ready == 0 => {
                Err("fallback of a Value trigger with no ready pod".to_string())
            }
            MetricTarget::Value(target) => Ok(target * replicas / ready as f64),
        };
        MetricReading {
            target: self.target,
            value,
        }
    }
}

/// KEDA's scale loop for 0 <-> 1 (`scale_executor`): activate from zero when a trigger is
/// active, go to zero after `cooldownPeriod` without activity (only with minReplicaCount 0).
#[derive(Debug, Clone)]
pub struct Activation {
    last_active: f64,
}

impl Activation {
    pub fn new(start: f64) -> Self {
        Activation { last_active: start }
    }

    /// The replica count KEDA writes at this poll, if it writes one.
    pub fn poll(&mut self, so: &ScaledObject, now: f64, current: i64, active: bool) -> Option<i64> {
        if active {
            self.last_active = now;
        }
        if current == 0 && active {
            return Some(so.hpa_min());
        }
        if so.min_replica_count == 0
            && current > 0
            && !active
            && self.last_active + so.cooldown_period_s as f64 <= now
        {
            return Some(0);
        }
        if current < so.min_replica_count {
            return Some(so.min_replica_count);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: &str = include_str!("../../tests/data/keda-gpu-scaler.yaml");

    #[test]
    fn parses_the_test_scaledobject() {
        let so = ScaledObject::from_yaml("test", GUIDE).expect("parses");
        assert_eq!((so.min_replica_count, so.max_replica_count), (1, 10));
        assert_eq!(so.behavior.scale_down.stabilization_window_s, 300);
        assert_eq!(
            so.behavior.scale_down.policies,
            vec![Policy::Percent {
                value: 50,
                period_s: 60
            }]
        );
        assert_eq!(so.behavior.scale_up.policies.len(), 2);
        assert_eq!(so.triggers.len(), 5);
        assert_eq!(so.triggers[0].target, MetricTarget::AverageValue(70.0));
        assert!(so
            .triggers
            .iter()
            .any(|t| t.target == MetricTarget::Value(5.0)));
    }

    #[test]
    fn threshold_must_be_a_string() {
        let text = r#"
kind: ScaledObject
spec:
  triggers:
  - type: prometheus
    metadata:
      query: sum(x)
      threshold: 70
"#;
        let err = ScaledObject::from_yaml("f.yaml", text).expect_err("unquoted threshold");
        assert!(err.to_string().contains("quoted string"), "{err}");
    }

    #[test]
    fn unsupported_query_is_named() {
        let text = r#"
kind: ScaledObject
spec:
  triggers:
  - type: prometheus
    metadata:
      query: avg(DCGM_FI_DEV_GPU_UTIL)
      threshold: "70"
"#;
        let err = ScaledObject::from_yaml("f.yaml", text).expect_err("avg unsupported");
        let msg = err.to_string();
        assert!(
            msg.contains("avg(DCGM_FI_DEV_GPU_UTIL)") && msg.contains("f.yaml"),
            "{msg}"
        );
    }

    #[test]
    fn defaults_without_behavior() {
        let text = r#"
kind: ScaledObject
spec:
  triggers:
  - type: prometheus
    metricType: Value
    metadata:
      query: sum(x)
      threshold: "2.5"
"#;
        let so = ScaledObject::from_yaml("f.yaml", text).expect("parses");
        assert_eq!(so.behavior, Behavior::default());
        assert_eq!((so.min_replica_count, so.max_replica_count), (0, 100));
        assert_eq!((so.polling_interval_s, so.cooldown_period_s), (30, 300));
        assert_eq!(so.triggers[0].target, MetricTarget::Value(2.5));
    }

    #[test]
    fn activation_and_cooldown_from_zero() {
        let text = r#"
kind: ScaledObject
spec:
  minReplicaCount: 0
  cooldownPeriod: 120
  triggers:
  - type: prometheus
    metadata:
      query: sum(x)
      threshold: "1"
"#;
        let so = ScaledObject::from_yaml("f.yaml", text).expect("parses");
        let mut act = Activation::new(0.0);
        assert_eq!(act.poll(&so, 0.0, 0, false), None);
        assert_eq!(act.poll(&so, 30.0, 0, true), Some(1));
        // Inactive since 30: zero only once the cooldown has passed.
        assert_eq!(act.poll(&so, 60.0, 3, false), None);
        assert_eq!(act.poll(&so, 120.0, 1, false), None);
        assert_eq!(act.poll(&so, 150.0, 1, false), Some(0));
    }

    const STREAM: &str = r#"
kind: ScaledObject
spec:
  minReplicaCount: 0
  triggers:
  - type: redis-streams
    metadata:
      address: redis:6379
      stream: virtualfit:jobs:batch
"#;

    fn stream_trigger(extra: &str) -> Result<Trigger, KedaError> {
        let text = format!("{STREAM}{extra}");
        ScaledObject::from_yaml("f.yaml", &text).map(|so| so.triggers[0].clone())
    }

    #[test]
    fn redis_streams_counts_as_keda_chooses_them() {
        let count = |t: &Trigger| match t.kind {
            TriggerKind::RedisStreams { count, activation } => (count, activation),
            _ => panic!("a redis-streams trigger: {t:?}"),
        };
        // No group: XLEN; a group: the pending entries; a group and lagCount: the lag. 5 by
        // default.
        let t = stream_trigger("").expect("parses");
        assert_eq!(count(&t), (StreamCount::Length, 0));
        assert_eq!(t.target, MetricTarget::AverageValue(5.0));
        let t = stream_trigger("      streamLength: \"40\"\n").expect("parses");
        assert_eq!(t.target, MetricTarget::AverageValue(40.0));
        let t = stream_trigger("      consumerGroup: workers\n").expect("parses");
        assert_eq!(count(&t), (StreamCount::Pending, 0));
        assert_eq!(t.target, MetricTarget::AverageValue(5.0));
        let t = stream_trigger(
            "      consumerGroup: workers\n      lagCount: \"100\"\n      activationLagCount: \"3\"\n      pendingEntriesCount: \"7\"\n",
        )
        .expect("parses");
        assert_eq!(count(&t), (StreamCount::Lag, 3));
        assert_eq!(t.target, MetricTarget::AverageValue(100.0));
        // lagCount without a group is ignored, as by KEDA.
        let t = stream_trigger("      lagCount: \"100\"\n").expect("parses");
        assert_eq!(count(&t), (StreamCount::Length, 0));
        // The counts read the stream.
        let s = JobStream {
            waiting: 12,
            taken: 16,
        };
        assert_eq!(
            [StreamCount::Lag, StreamCount::Pending, StreamCount::Length].map(|c| s.count(c)),
            [12, 16, 28]
        );
        let db = Tsdb::new();
        let t = stream_trigger("      consumerGroup: workers\n      lagCount: \"10\"\n")
            .expect("parses");
        assert_eq!(t.read(&db, &s, 0.0).value, Ok(12.0));
    }

    #[test]
    fn redis_streams_errors_are_named() {
        let err = |text: &str| {
            ScaledObject::from_yaml("f.yaml", text)
                .expect_err("invalid")
                .to_string()
        };
        let no_stream = STREAM.replace("      stream: virtualfit:jobs:batch\n", "");
        assert!(err(&no_stream).contains("metadata.stream"), "{no_stream}");
        let msg = err(&format!(
            "{STREAM}      consumerGroup: workers\n      lagCount: \"2.5\"\n"
        ));
        assert!(msg.contains("lagCount") && msg.contains("integer"), "{msg}");
        let msg = err(&format!("{STREAM}      streamLength: 50\n"));
        assert!(msg.contains("quoted string"), "{msg}");
    }

    #[test]
    fn the_job_stream_wakes_a_pool_at_zero() {
        let so = ScaledObject::from_yaml(
            "scaledobject.yaml",
            include_str!("../../k8s/overlays/batch-pool/scaledobject.yaml"),
        )
        .expect("the shipped batch pool ScaledObject parses");
        assert!(so.reads_job_stream());
        assert_eq!(so.min_replica_count, 0);
        let trigger = &so.triggers[0];
        assert!(matches!(
            trigger.kind,
            TriggerKind::RedisStreams {
                count: StreamCount::Lag,
                ..
            }
        ));
        let db = Tsdb::new();
        let mut act = Activation::new(0.0);
        let poll = |act: &mut Activation, t: f64, current: i64, stream: JobStream| {
            let active = trigger.read(&db, &stream, t).active;
            act.poll(&so, t, current, active)
        };
        // Nothing waiting: the pool stays at zero.
        assert_eq!(poll(&mut act, 0.0, 0, JobStream::default()), None);
        // Jobs waiting in Redis with no pod running: KEDA activates the Deployment.
        let waiting = JobStream {
            waiting: 3,
            taken: 0,
        };
        assert_eq!(poll(&mut act, 15.0, 0, waiting), Some(1));
        // Taken and running: the lag is 0 and the cooldown runs from the last waiting job.
        let running = JobStream {
            waiting: 0,
            taken: 3,
        };
        assert_eq!(poll(&mut act, 30.0, 1, running), None);
        let last = 15.0 + so.cooldown_period_s as f64;
        assert_eq!(poll(&mut act, last - 15.0, 1, JobStream::default()), None);
        assert_eq!(poll(&mut act, last, 1, JobStream::default()), Some(0));
        // The pending entries could not have woken it: with no worker nothing is delivered.
        let pending = stream_trigger("      consumerGroup: workers\n").expect("parses");
        assert!(!pending.read(&db, &waiting, 0.0).active);
    }

    #[test]
    fn cron_window() {
        let text = r#"
kind: ScaledObject
spec:
  minReplicaCount: 1
  triggers:
  - type: cron
    metadata:
      timezone: UTC
      start: 30 * * * *
      end: 45 * * * *
      desiredReplicas: "4"
"#;
        let so = ScaledObject::from_yaml("f.yaml", text).expect("parses");
        let db = Tsdb::new();
        let at = |min: f64| so.triggers[0].read(&db, &JobStream::default(), min * 60.0);
        assert_eq!(at(10.0).value, Ok(1.0));
        assert!(!at(10.0).active);
        assert_eq!(at(31.0).value, Ok(4.0));
        assert!(at(44.0).active);
        assert!(!at(45.0).active);
        assert!(at(90.0).active);
    }
}
