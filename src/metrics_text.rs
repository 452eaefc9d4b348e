//! Reads the Prometheus text exposition format (what `/metrics` serves) back into samples: the
//! one reader used by `bench http`'s server-side figures and by the integration tests.
//!
//! A sample line is `name`, an optional `{label="value",...}` set, the value and an optional
//! timestamp. `# HELP` / `# TYPE` comments and blank lines carry no sample; a line that does not
//! parse is skipped, so one odd line cannot hide the rest of a scrape. Histograms and summaries
//! are not regrouped: `x_bucket{le="1"}`, `x_sum` and `x_count` are samples like any other.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name as written (`virtualfit_batch_size_bucket`, not the family name).
    pub name: String,
    /// The labels in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line has one.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of a scrape, in order.
pub fn samples(text: &str) -> impl Iterator<Item = Sample> + '_ {
    text.lines().filter_map(parse_line)
}

/// One line: `None` for a comment, a blank line or a line that is not a sample.
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = line[name_end..].trim_start();
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    // Rust's float syntax covers the format's `NaN`, `+Inf` and `-Inf`.
    let value = fields.next()?.parse::<f64>().ok()?;
    let timestamp_ms = match fields.next() {
        Some(t) => Some(t.parse::<i64>().ok()?),
        None => None,
    };
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `k="v",...}` (after the `{`) into `out`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some(after);
        }
        let key_end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
        let key = &s[..key_end];
        if key.is_empty() {
            return None;
        }
        s = s[key_end..].trim_start().strip_prefix('=')?;
        s = s.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_values_and_timestamps() {
        let text = "# HELP x_total Requests.\n# TYPE x_total counter\n\
                    x_total{code=\"200\",path=\"/a,b\"} 7\n\
                    x_bucket{le=\"+Inf\"} 3 1700000000000\n\
                    x_sum 1.5e-3\n\
                    \n\
                    up NaN\n\
                    esc{v=\"a\\\"b\\\\c\\nd\",} -Inf\n";
        let s: Vec<Sample> = samples(text).collect();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("code"), Some("200"));
        assert_eq!(s[0].label("path"), Some("/a,b"));
        assert_eq!(s[0].value, 7.0);
        assert_eq!(s[1].label("le"), Some("+Inf"));
        assert_eq!(s[1].timestamp_ms, Some(1_700_000_000_000));
        assert_eq!((s[2].name.as_str(), s[2].value), ("x_sum", 1.5e-3));
        assert!(s[2].labels.is_empty());
        assert!(s[3].value.is_nan());
        assert_eq!(s[4].label("v"), Some("a\"b\\c\nd"));
        assert_eq!(s[4].value, f64::NEG_INFINITY);
    }

    #[test]
    fn skips_lines_that_are_not_samples() {
        for line in [
            "",
            "# TYPE x gauge",
            "x",
            "x{a=\"b\"}",
            "x{a=b} 1",
            "x{a=\"b\" 1",
            "x 1 2 3",
            "x one",
            "{a=\"b\"} 1",
            "1x 1",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
        assert_eq!(parse_line("  x   2  ").map(|s| s.value), Some(2.0));
    }
}
