//! What one replica costs: the batch time t(n) = a·n + b and the CPU time around it, from the
//! default figures (DM-VTON on one H100) or from `virtualfit bench` JSON.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}: not JSON: {source}")]
    Json {
        file: String,
        source: serde_json::Error,
    },
    #[error("{file}: {what}")]
    Invalid { file: String, what: String },
}

/// The timing and memory of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub model: String,
    pub device: String,
    /// Seconds per image in a batch.
    pub a_s: f64,
    /// Fixed seconds per batch.
    pub b_s: f64,
    /// CPU seconds before admission (decode, resize, mask) and after the batch (encode).
    pub pre_s: f64,
    pub post_s: f64,
    pub fb_used_mib: f64,
    pub fb_total_mib: f64,
    /// Where the figures came from.
    pub source: String,
}

impl Default for Profile {
    /// Assumed figures for one DM-VTON replica on an NVIDIA H100 80GB (256×192, f32):
    /// t(n) = 6 ms·n + 12 ms (a batch of 8 in 60 ms, 133 images/s), 8 ms of decoding and
    /// preparing before admission, 4 ms of encoding after, 6 GiB of the 81559 MiB
    /// framebuffer held.
    fn default() -> Self {
        Profile {
            model: "default".into(),
            device: "NVIDIA H100 80GB HBM3".into(),
            a_s: 0.006,
            b_s: 0.012,
            pre_s: 0.008,
            post_s: 0.004,
            fb_used_mib: 6144.0,
            fb_total_mib: 81559.0,
            source: "default (assumed: DM-VTON on an H100)".into(),
        }
    }
}

/// One measurement, as `virtualfit bench model --json` prints it.
#[derive(Debug, Clone, Deserialize)]
struct BenchPoint {
    model: Option<String>,
    device: Option<String>,
    batch_size: usize,
    median_batch_s: f64,
}

/// Least squares t = a·n + b over the points; with a single batch size, t = a·n (b = 0).
/// A negative intercept is refitted through the origin.
pub fn fit(points: &[(usize, f64)]) -> Option<(f64, f64)> {
    if points.is_empty() {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mean_x).powi(2)).sum();
    let through_origin = || {
        let sxy: f64 = points.iter().map(|p| p.0 as f64 * p.1).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 as f64).powi(2)).sum();
        (sxx > 0.0).then(|| (sxy / sxx, 0.0))
    };
    if sxx == 0.0 {
        return through_origin();
    }
    let sxy: f64 = points
        .iter()
        .map(|p| (p.0 as f64 - mean_x) * (p.1 - mean_y))
        .sum();
    let a = sxy / sxx;
    let b = mean_y - a * mean_x;
    if b < 0.0 {
        through_origin()
    } else {
        Some((a, b))
    }
}

fn number(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

impl Profile {
    /// Reads a profile: our own form (`a_s`, `b_s`, optional `pre_s`, `post_s`,
    /// `fb_used_mib`, `fb_total_mib`, `model`, `device`), one `bench model --json` object,
    /// an array of them, or a sweep `{"model", "device", "points": [...]}` (`results` is
    /// accepted for `points`).
    pub fn from_json(file: &str, text: &str) -> Result<Profile, ProfileError> {
        let invalid = |what: String| ProfileError::Invalid {
            file: file.to_string(),
            what,
        };
        let value: Value = serde_json::from_str(text).map_err(|source| ProfileError::Json {
            file: file.to_string(),
            source,
        })?;
        let base = Profile::default();
        let mut profile = if let (Some(a), Some(b)) = (number(&value, "a_s"), number(&value, "b_s"))
        {
            Profile {
                a_s: a,
                b_s: b,
                source: format!("{file} (a, b given)"),
                ..base
            }
        } else {
            let (list, outer) = match &value {
                Value::Array(items) => (items.clone(), None),
                Value::Object(o) => match o.get("points").or_else(|| o.get("results")) {
                    Some(Value::Array(items)) => (items.clone(), Some(&value)),
                    _ => (vec![value.clone()], None),
                },
                _ => return Err(invalid("expected a JSON object or array".into())),
            };
            let mut points = Vec::new();
            let mut model = outer
                .and_then(|o| o.get("model"))
                .and_then(Value::as_str)
                .map(String::from);
            let mut device = outer
                .and_then(|o| o.get("device"))
                .and_then(Value::as_str)
                .map(String::from);
            for item in list {
                let p: BenchPoint = serde_json::from_value(item).map_err(|e| {
                    invalid(format!(
                        "each measurement needs batch_size and median_batch_s: {e}"
                    ))
                })?;
                if p.batch_size == 0 || p.median_batch_s.is_nan() || p.median_batch_s <= 0.0 {
                    return Err(invalid(format!(
                        "batch_size {} / median_batch_s {} must be positive",
                        p.batch_size, p.median_batch_s
                    )));
                }
                model = model.or(p.model);
                device = device.or(p.device);
                points.push((p.batch_size, p.median_batch_s));
            }
            let (a, b) =
                fit(&points).ok_or_else(|| invalid("no measurements to fit".to_string()))?;
            let sizes: std::collections::BTreeSet<usize> = points.iter().map(|p| p.0).collect();
            let how = if sizes.len() < 2 {
                "one batch size, fitted through the origin"
            } else {
                "least squares over batch sizes"
            };
            Profile {
                model: model.unwrap_or(base.model.clone()),
                device: device.unwrap_or(base.device.clone()),
                a_s: a,
                b_s: b,
                source: format!("{file} ({} measurements, {how})", points.len()),
                ..base
            }
        };
        for (key, field) in [
            ("pre_s", &mut profile.pre_s),
            ("post_s", &mut profile.post_s),
            ("fb_used_mib", &mut profile.fb_used_mib),
            ("fb_total_mib", &mut profile.fb_total_mib),
        ] {
            if let Some(v) = number(&value, key) {
                *field = v;
            }
        }
        if let Some(m) = value.get("model").and_then(Value::as_str) {
            profile.model = m.to_string();
        }
        if let Some(d) = value.get("device").and_then(Value::as_str) {
            profile.device = d.to_string();
        }
        if profile.a_s.is_nan()
            || profile.a_s <= 0.0
            || profile.b_s < 0.0
            || profile.fb_total_mib <= profile.fb_used_mib
        {
            return Err(invalid(format!(
                "unusable figures: a = {} s, b = {} s, memory {} of {} MiB",
                profile.a_s, profile.b_s, profile.fb_used_mib, profile.fb_total_mib
            )));
        }
        Ok(profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_a_line_through_bench_points() {
        let (a, b) = fit(&[(1, 0.018), (4, 0.036), (8, 0.060)]).expect("fit");
        assert!(
            (a - 0.006).abs() < 1e-9 && (b - 0.012).abs() < 1e-9,
            "{a} {b}"
        );
    }

    #[test]
    fn reads_bench_model_forms() {
        let one = r#"{"model":"m1","device":"cuda:0","batch_size":8,"median_batch_s":0.08,"per_image_ms":10.0}"#;
        let p = Profile::from_json("one.json", one).expect("one object");
        assert!((p.a_s - 0.01).abs() < 1e-12 && p.b_s == 0.0);
        assert_eq!(p.device, "cuda:0");
        let many = r#"[{"model":"m1","device":"cuda:0","batch_size":1,"median_batch_s":0.02,"per_image_ms":20.0},
                       {"model":"m1","device":"cuda:0","batch_size":8,"median_batch_s":0.09,"per_image_ms":11.25}]"#;
        let p = Profile::from_json("many.json", many).expect("array");
        assert!((p.a_s - 0.01).abs() < 1e-12 && (p.b_s - 0.01).abs() < 1e-12);
        let sweep = r#"{"model":"m2","device":"cpu","points":[{"batch_size":2,"median_batch_s":0.5},{"batch_size":4,"median_batch_s":0.9}]}"#;
        let p = Profile::from_json("sweep.json", sweep).expect("sweep");
        assert!((p.a_s - 0.2).abs() < 1e-12 && (p.b_s - 0.1).abs() < 1e-12);
        assert_eq!(p.model, "m2");
        let own = r#"{"a_s":0.004,"b_s":0.01,"fb_used_mib":10000}"#;
        let p = Profile::from_json("own.json", own).expect("own form");
        assert_eq!((p.a_s, p.b_s, p.fb_used_mib), (0.004, 0.01, 10000.0));
    }

    #[test]
    fn rejects_bad_profiles() {
        assert!(Profile::from_json("x", r#"{"batch_size":0,"median_batch_s":1}"#).is_err());
        assert!(Profile::from_json("x", r#"{"model":"m"}"#).is_err());
        assert!(Profile::from_json("x", "not json").is_err());
    }
}
