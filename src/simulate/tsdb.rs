//! The scraped series, as Prometheus stores them: one sample per scrape, and a staleness
//! marker when a target stops being scraped.

use std::collections::{BTreeMap, HashMap};

/// A label set, without the metric name.
pub type Labels = BTreeMap<String, String>;

/// Prometheus' default lookback for instant selectors.
pub const LOOKBACK_S: f64 = 300.0;

#[derive(Debug, Clone, Default)]
pub struct Series {
    /// (time in seconds, value), in time order.
    pub samples: Vec<(f64, f64)>,
    /// When the target stopped being scraped (a staleness marker).
    pub stale_at: Option<f64>,
}

impl Series {
    /// The samples in the left-open window (start, end].
    pub fn range(&self, start: f64, end: f64) -> &[(f64, f64)] {
        let lo = self.samples.partition_point(|s| s.0 <= start);
        let hi = self.samples.partition_point(|s| s.0 <= end);
        &self.samples[lo..hi.max(lo)]
    }

    /// The value an instant selector sees at `t`: the newest sample within the lookback,
    /// unless a staleness marker came after it.
    pub fn instant(&self, t: f64) -> Option<f64> {
        let hi = self.samples.partition_point(|s| s.0 <= t);
        let (st, v) = *self.samples.get(hi.checked_sub(1)?)?;
        if t - st >= LOOKBACK_S {
            return None;
        }
        match self.stale_at {
            Some(stale) if stale > st && stale <= t => None,
            _ => Some(v),
        }
    }
}

/// All scraped series, keyed by metric name, then label set.
#[derive(Debug, Default)]
pub struct Tsdb {
    series: HashMap<String, BTreeMap<Labels, Series>>,
}

impl Tsdb {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a sample; a series that was marked stale comes back to life.
    pub fn push(&mut self, name: &str, labels: Labels, t: f64, v: f64) {
        let series = self
            .series
            .entry(name.to_string())
            .or_default()
            .entry(labels)
            .or_default();
        series.samples.push((t, v));
        series.stale_at = None;
    }

    /// Marks every series carrying `label=value` (one target) stale at `t`.
    pub fn mark_stale(&mut self, label: &str, value: &str, t: f64) {
        for by_labels in self.series.values_mut() {
            for (labels, series) in by_labels.iter_mut() {
                if labels.get(label).map(String::as_str) == Some(value) && series.stale_at.is_none()
                {
                    series.stale_at = Some(t);
                }
            }
        }
    }

    /// The series of `name` whose labels satisfy every matcher.
    pub fn select<'a>(
        &'a self,
        name: &str,
        matches: impl Fn(&Labels) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a Labels, &'a Series)> + 'a {
        self.series
            .get(name)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |(l, _)| matches(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_respects_staleness_and_lookback() {
        let mut db = Tsdb::new();
        let labels: Labels = [("pod".to_string(), "a".to_string())].into();
        db.push("m", labels.clone(), 15.0, 3.0);
        let s = db.select("m", |_| true).next().map(|(_, s)| s.clone());
        let s = s.expect("series stored");
        assert_eq!(s.instant(14.0), None);
        assert_eq!(s.instant(15.0), Some(3.0));
        assert_eq!(s.instant(314.0), Some(3.0));
        assert_eq!(s.instant(315.0), None);
        db.mark_stale("pod", "a", 30.0);
        let s = db.select("m", |_| true).next().map(|(_, s)| s.clone());
        let s = s.expect("series stored");
        assert_eq!(s.instant(29.0), Some(3.0));
        assert_eq!(s.instant(30.0), None);
        assert_eq!(s.range(0.0, 15.0).len(), 1);
        assert_eq!(s.range(15.0, 30.0).len(), 0);
    }
}
