//! The server-side figures of `bench http`: `/metrics` scraped before and after the measured
//! phase, and the difference of the two.

use std::collections::BTreeMap;
use std::time::Duration;

use super::report::ServerStats;
use crate::{metrics, metrics_text};

/// The counters of one /metrics scrape that the report needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerSnapshot {
    pub batch_size_sum: f64,
    pub batch_size_count: f64,
    pub queue_sum: f64,
    pub queue_count: f64,
    pub batch_duration_sum: f64,
    pub batch_duration_count: f64,
    pub rejected: BTreeMap<String, f64>,
    pub answers: BTreeMap<String, f64>,
}

impl ServerSnapshot {
    /// Reads `/metrics`.
    pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<ServerSnapshot, String> {
        let resp = client
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok(ServerSnapshot::parse(&text))
    }

    /// Picks the report's counters out of a scrape in the Prometheus text format.
    pub fn parse(text: &str) -> ServerSnapshot {
        let mut snap = ServerSnapshot::default();
        let sum = |s: &str| format!("{s}_sum");
        let count = |s: &str| format!("{s}_count");
        for sample in metrics_text::samples(text) {
            let value = sample.value;
            let target = match sample.name.as_str() {
                n if n == sum(metrics::BATCH_SIZE) => &mut snap.batch_size_sum,
                n if n == count(metrics::BATCH_SIZE) => &mut snap.batch_size_count,
                n if n == sum(metrics::QUEUE_DURATION) => &mut snap.queue_sum,
                n if n == count(metrics::QUEUE_DURATION) => &mut snap.queue_count,
                n if n == sum(metrics::BATCH_DURATION) => &mut snap.batch_duration_sum,
                n if n == count(metrics::BATCH_DURATION) => &mut snap.batch_duration_count,
                n if n == metrics::REJECTED_TOTAL => {
                    if let Some(reason) = sample.label("reason") {
                        *snap.rejected.entry(reason.to_string()).or_insert(0.0) += value;
                    }
                    continue;
                }
                n if n == metrics::REQUESTS_TOTAL => {
                    if let Some(code) = sample.label("code") {
                        *snap.answers.entry(code.to_string()).or_insert(0.0) += value;
                    }
                    continue;
                }
                _ => continue,
            };
            *target += value;
        }
        snap
    }

    /// What happened between `before` and this scrape.
    pub fn since(&self, before: &ServerSnapshot) -> ServerStats {
        let mean = |sum: f64, count: f64, scale: f64| (count > 0.0).then(|| sum / count * scale);
        let batches = self.batch_size_count - before.batch_size_count;
        let diff = |now: &BTreeMap<String, f64>, then: &BTreeMap<String, f64>| {
            now.iter()
                .map(|(k, v)| {
                    let d = v - then.get(k).copied().unwrap_or(0.0);
                    (k.clone(), d.max(0.0).round() as u64)
                })
                .collect::<BTreeMap<_, _>>()
        };
        ServerStats {
            batches: batches.max(0.0).round() as u64,
            mean_batch_size: mean(self.batch_size_sum - before.batch_size_sum, batches, 1.0),
            mean_queue_ms: mean(
                self.queue_sum - before.queue_sum,
                self.queue_count - before.queue_count,
                1e3,
            ),
            mean_batch_ms: mean(
                self.batch_duration_sum - before.batch_duration_sum,
                self.batch_duration_count - before.batch_duration_count,
                1e3,
            ),
            busy_s: (self.batch_duration_sum - before.batch_duration_sum).max(0.0),
            busy_ratio: None,
            rejections: diff(&self.rejected, &before.rejected),
            answers_by_code: diff(&self.answers, &before.answers)
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_difference_gives_means_and_rejections() {
        let before = ServerSnapshot::parse(&format!(
            "# HELP x\n{b}_sum 10\n{b}_count 5\n{q}_sum 1\n{q}_count 10\n{r}{{reason=\"queue_full\"}} 2\n{r}{{reason=\"deadline\"}} 0\n",
            b = metrics::BATCH_SIZE,
            q = metrics::QUEUE_DURATION,
            r = metrics::REJECTED_TOTAL
        ));
        let after = ServerSnapshot::parse(&format!(
            "{b}_sum 40\n{b}_count 10\n{b}_bucket{{le=\"1\"}} 3\n{q}_sum 3\n{q}_count 30\n{r}{{reason=\"queue_full\"}} 7\n{r}{{reason=\"deadline\"}} 0\n{t}{{code=\"200\"}} 30\n",
            b = metrics::BATCH_SIZE,
            q = metrics::QUEUE_DURATION,
            r = metrics::REJECTED_TOTAL,
            t = metrics::REQUESTS_TOTAL
        ));
        let s = after.since(&before);
        assert_eq!(s.batches, 5);
        assert_eq!(s.mean_batch_size, Some(6.0));
        assert!((s.mean_queue_ms.unwrap_or(0.0) - 100.0).abs() < 1e-9);
        assert_eq!(s.mean_batch_ms, None);
        assert_eq!((s.busy_s, s.busy_ratio), (0.0, None));
        assert_eq!(s.rejections.get("queue_full"), Some(&5));
        assert_eq!(s.rejections.get("deadline"), Some(&0));
        assert_eq!(s.answers_by_code.get("200"), Some(&30));
    }
}
