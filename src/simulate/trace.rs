//! The load trace: CSV `seconds,requests_per_second`, the rate piecewise constant from each
//! row to the next (the last row's rate holds to the end of the simulation).

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{file}: the header must be `seconds,requests_per_second`, found `{found}`")]
    Header { file: String, found: String },
    #[error("{file}:{line}: {what}")]
    Row {
        file: String,
        line: usize,
        what: String,
    },
    #[error("{file}: no rows")]
    Empty { file: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// (start second, requests per second), strictly increasing in time, the first at 0.
    rows: Vec<(f64, f64)>,
}

impl Trace {
    pub fn from_rows(rows: Vec<(f64, f64)>) -> Option<Trace> {
        let ok = !rows.is_empty()
            && rows.windows(2).all(|w| w[1].0 > w[0].0)
            && rows
                .iter()
                .all(|r| r.0 >= 0.0 && r.1 >= 0.0 && r.1.is_finite());
        ok.then_some(Trace { rows })
    }

    pub fn parse(file: &str, text: &str) -> Result<Trace, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let Some((_, header)) = lines.next() else {
            return Err(TraceError::Empty {
                file: file.to_string(),
            });
        };
        let cols: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
        if cols != ["seconds", "requests_per_second"] {
            return Err(TraceError::Header {
                file: file.to_string(),
                found: header.to_string(),
            });
        }
        let mut rows: Vec<(f64, f64)> = Vec::new();
        for (i, line) in lines {
            let row_err = |what: String| TraceError::Row {
                file: file.to_string(),
                line: i + 1,
                what,
            };
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [s, r] = fields.as_slice() else {
                return Err(row_err(format!(
                    "expected 2 fields, found {}",
                    fields.len()
                )));
            };
            let s: f64 = s
                .parse()
                .map_err(|_| row_err(format!("`{s}` is not a number of seconds")))?;
            let r: f64 = r
                .parse()
                .map_err(|_| row_err(format!("`{r}` is not a rate")))?;
            if !(s.is_finite() && s >= 0.0 && r.is_finite() && r >= 0.0) {
                return Err(row_err("seconds and rate must be finite and >= 0".into()));
            }
            if let Some(&(prev, _)) = rows.last() {
                if s <= prev {
                    return Err(row_err(format!("seconds {s} do not increase after {prev}")));
                }
            }
            rows.push((s, r));
        }
        if rows.is_empty() {
            return Err(TraceError::Empty {
                file: file.to_string(),
            });
        }
        // Before the first row there is no load.
        if rows[0].0 > 0.0 {
            rows.insert(0, (0.0, 0.0));
        }
        Ok(Trace { rows })
    }

    /// The rate at time `t`.
    pub fn rate_at(&self, t: f64) -> f64 {
        let i = self.rows.partition_point(|r| r.0 <= t);
        if i == 0 {
            0.0
        } else {
            self.rows[i - 1].1
        }
    }

    /// The next row boundary after `t`, if any.
    pub fn next_change(&self, t: f64) -> Option<f64> {
        let i = self.rows.partition_point(|r| r.0 <= t);
        self.rows.get(i).map(|r| r.0)
    }

    /// The time of the last row.
    pub fn last_row_s(&self) -> f64 {
        self.rows.last().map_or(0.0, |r| r.0)
    }

    /// The peak rate.
    pub fn peak_rps(&self) -> f64 {
        self.rows.iter().map(|r| r.1).fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piecewise_constant() {
        let t = Trace::parse("t.csv", "seconds,requests_per_second\n10,5\n20,0\n").expect("parses");
        assert_eq!(t.rate_at(0.0), 0.0);
        assert_eq!(t.rate_at(10.0), 5.0);
        assert_eq!(t.rate_at(19.9), 5.0);
        assert_eq!(t.rate_at(25.0), 0.0);
        assert_eq!(t.next_change(12.0), Some(20.0));
        assert_eq!(t.next_change(20.0), None);
        assert_eq!(t.last_row_s(), 20.0);
    }

    #[test]
    fn bad_traces() {
        assert!(matches!(
            Trace::parse("t.csv", "time,rps\n0,1\n"),
            Err(TraceError::Header { .. })
        ));
        assert!(matches!(
            Trace::parse("t.csv", "seconds,requests_per_second\n5,1\n5,2\n"),
            Err(TraceError::Row { line: 3, .. })
        ));
        assert!(matches!(
            Trace::parse("t.csv", "seconds,requests_per_second\n0,-1\n"),
            Err(TraceError::Row { .. })
        ));
    }
}
