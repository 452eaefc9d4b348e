//! The part of PromQL that our ScaledObject uses, evaluated over the simulated scrapes the way
//! Prometheus does: instant selectors with the 5-minute lookback and staleness, `rate` with
//! Prometheus' extrapolation, `sum` / `sum by`, `histogram_quantile`, arithmetic, comparison
//! filters, `or` and `vector`. Queries are parsed by the `promql-parser` crate and evaluated on
//! its syntax tree; anything outside that subset is refused with an error that names the query.
//! [`query_form`] says which of the two trigger shapes the manifests may use a query has.

use std::collections::BTreeMap;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    self as ast, AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, VectorMatchCardinality,
    VectorSelector,
};

use super::tsdb::{Labels, Tsdb};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromqlError {
    #[error("unsupported PromQL in query `{query}`: {what} (supported: sum, sum by (...), rate(sel[d]), histogram_quantile, vector, + - * /, comparisons, or; label matchers = and !=)")]
    Unsupported { query: String, what: String },
    #[error("cannot parse query `{query}`: {what}")]
    Syntax { query: String, what: String },
    #[error("query `{query}`: {what}")]
    Eval { query: String, what: String },
}

/// A parsed query, ready to evaluate at any time.
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<(Labels, f64)>),
}

impl Query {
    /// Parses `text`, or says why it is not a supported form.
    pub fn parse(text: &str) -> Result<Query, PromqlError> {
        let expr = ast::parse(text).map_err(|what| PromqlError::Syntax {
            query: text.to_string(),
            what,
        })?;
        supported(&expr).map_err(|what| PromqlError::Unsupported {
            query: text.to_string(),
            what,
        })?;
        Ok(Query {
            text: text.to_string(),
            expr,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the query as an instant query at time `t`.
    pub fn eval(&self, db: &Tsdb, t: f64) -> Result<Value, PromqlError> {
        eval(&self.expr, db, t).map_err(|what| PromqlError::Eval {
            query: self.text.clone(),
            what,
        })
    }
}

/// The shape of a KEDA trigger query, as the manifests' checks classify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryForm {
    /// `sum(metric{labels})` or `sum(rate(metric{labels}[range]))`: a cluster-wide total, for
    /// AverageValue.
    Sum,
    /// `(histogram_quantile(Q, sum by (le) (rate(m_bucket{labels}[W]))) >= 0) or vector(0)`
    /// with `0 < Q < 1`: a percentile over every replica, NaN and no traffic read as 0.
    Quantile,
}

/// Which trigger shape `query` has, if it is one the simulator evaluates. Redundant
/// parentheses do not matter; a selector must name its metric and have label matchers.
pub fn query_form(query: &str) -> Option<QueryForm> {
    let expr = Query::parse(query).ok()?.expr;
    if let Expr::Aggregate(sum) = unparen(&expr) {
        let inner = unparen(&sum.expr);
        let summed = labelled(inner) || rate_of_labelled(inner);
        return (is_sum(sum, None) && summed).then_some(QueryForm::Sum);
    }
    let or = binary(&expr, "or")?;
    let [fallback] = call(&or.rhs, "vector")? else {
        return None;
    };
    let at_least_zero = binary(&or.lhs, ">=")?;
    let [q, inner] = call(&at_least_zero.lhs, "histogram_quantile")? else {
        return None;
    };
    let (Expr::NumberLiteral(q), Expr::Aggregate(sum)) = (unparen(q), unparen(inner)) else {
        return None;
    };
    let [range] = call(&sum.expr, "rate")? else {
        return None;
    };
    let Expr::MatrixSelector(m) = unparen(range) else {
        return None;
    };
    let bucket = m.vs.name.as_deref().is_some_and(|n| n.ends_with("_bucket"));
    (is_zero(fallback)
        && is_zero(&at_least_zero.rhs)
        && q.val > 0.0
        && q.val < 1.0
        && is_sum(sum, Some(&["le"][..]))
        && bucket
        && !m.vs.matchers.matchers.is_empty()
        && !m.range.is_zero())
    .then_some(QueryForm::Quantile)
}

fn is_zero(e: &Expr) -> bool {
    matches!(unparen(e), Expr::NumberLiteral(n) if n.val == 0.0)
}

fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// `sum(...)`, or `sum by (labels) (...)` when `by` is given.
fn is_sum(a: &AggregateExpr, by: Option<&[&str]>) -> bool {
    let grouping = match (&a.modifier, by) {
        (None, None) => true,
        (Some(LabelModifier::Include(l)), Some(by)) => {
            l.labels.iter().map(String::as_str).eq(by.iter().copied())
        }
        _ => false,
    };
    a.op.to_string() == "sum" && a.param.is_none() && grouping
}

/// A named instant selector with label matchers.
fn labelled(e: &Expr) -> bool {
    matches!(e, Expr::VectorSelector(vs) if vs.name.is_some() && !vs.matchers.matchers.is_empty())
}

/// `rate(metric{labels}[range])`: a per-second rate, summed like a gauge.
fn rate_of_labelled(e: &Expr) -> bool {
    let Some([range]) = call(e, "rate") else {
        return false;
    };
    matches!(unparen(range), Expr::MatrixSelector(m)
        if m.vs.name.is_some() && !m.vs.matchers.matchers.is_empty() && !m.range.is_zero())
}

fn binary<'a>(e: &'a Expr, op: &str) -> Option<&'a BinaryExpr> {
    match unparen(e) {
        Expr::Binary(b) if b.op.to_string() == op => Some(b),
        _ => None,
    }
}

fn call<'a>(e: &'a Expr, name: &str) -> Option<&'a [Box<Expr>]> {
    match unparen(e) {
        Expr::Call(c) if c.func.name == name => Some(&c.args.args),
        _ => None,
    }
}

/// Whether the evaluator below handles `expr`; if not, what it does not handle.
fn supported(expr: &Expr) -> Result<(), String> {
    match expr {
        Expr::NumberLiteral(_) => Ok(()),
        Expr::Paren(p) => supported(&p.expr),
        Expr::Unary(u) => supported(&u.expr),
        Expr::VectorSelector(vs) => selector_supported(vs),
        Expr::MatrixSelector(_) => Err("a range selector outside rate()".into()),
        Expr::Subquery(_) => Err("a subquery".into()),
        Expr::StringLiteral(_) => Err("a string".into()),
        Expr::Extension(_) => Err("an extension expression".into()),
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if op != "sum" || a.param.is_some() {
                return Err(format!("function or aggregation `{op}`"));
            }
            if let Some(LabelModifier::Exclude(_)) = a.modifier {
                return Err("`sum without`".into());
            }
            supported(&a.expr)
        }
        Expr::Call(c) => match (c.func.name, c.args.args.as_slice()) {
            ("rate", [arg]) => match arg.as_ref() {
                Expr::MatrixSelector(m) => selector_supported(&m.vs),
                _ => Err("rate() of anything but a range selector".into()),
            },
            ("histogram_quantile" | "vector", args) => args.iter().try_for_each(|a| supported(a)),
            (name, _) => Err(format!("function or aggregation `{name}`")),
        },
        Expr::Binary(b) => {
            let op = b.op.to_string();
            if !matches!(
                op.as_str(),
                "+" | "-" | "*" | "/" | ">=" | "<=" | ">" | "<" | "==" | "!=" | "or"
            ) {
                return Err(format!("operator `{op}`"));
            }
            if let Some(m) = &b.modifier {
                if m.return_bool {
                    return Err("the `bool` modifier".into());
                }
                match &m.matching {
                    Some(LabelModifier::Include(_)) => return Err("vector matching `on`".into()),
                    Some(LabelModifier::Exclude(_)) => {
                        return Err("vector matching `ignoring`".into())
                    }
                    None => {}
                }
                if matches!(
                    m.card,
                    VectorMatchCardinality::ManyToOne(_) | VectorMatchCardinality::OneToMany(_)
                ) {
                    return Err("`group_left` / `group_right`".into());
                }
                if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                    return Err("`fill` modifiers".into());
                }
            }
            supported(&b.lhs)?;
            supported(&b.rhs)
        }
    }
}

fn selector_supported(vs: &VectorSelector) -> Result<(), String> {
    if vs.name.is_none() {
        return Err("a selector without a metric name".into());
    }
    if vs.offset.is_some() {
        return Err("`offset`".into());
    }
    if vs.at.is_some() {
        return Err("the `@` modifier".into());
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err("`or` between label matchers".into());
    }
    match vs
        .matchers
        .matchers
        .iter()
        .find(|m| !matches!(m.op, MatchOp::Equal | MatchOp::NotEqual))
    {
        Some(m) => Err(format!("regex matcher `{}`", m.op)),
        None => Ok(()),
    }
}

/// A missing label reads as the empty string, as in Prometheus.
fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers
        .iter()
        .all(|m| m.is_match(labels.get(&m.name).map(String::as_str).unwrap_or("")))
}

fn metric_name(vs: &VectorSelector) -> Result<&str, String> {
    vs.name
        .as_deref()
        .ok_or_else(|| "a selector without a metric name".to_string())
}

fn eval(expr: &Expr, db: &Tsdb, t: f64) -> Result<Value, String> {
    Ok(match expr {
        Expr::NumberLiteral(n) => Value::Scalar(n.val),
        Expr::Paren(p) => eval(&p.expr, db, t)?,
        Expr::VectorSelector(vs) => Value::Vector(
            db.select(metric_name(vs)?, |l| matches_all(&vs.matchers.matchers, l))
                .filter_map(|(l, s)| s.instant(t).map(|v| (l.clone(), v)))
                .collect(),
        ),
        Expr::Aggregate(a) => {
            let v = as_vector(eval(&a.expr, db, t)?, "sum")?;
            let mut groups: BTreeMap<Labels, f64> = BTreeMap::new();
            for (labels, value) in v {
                let key: Labels = match &a.modifier {
                    Some(LabelModifier::Include(keep)) => labels
                        .into_iter()
                        .filter(|(k, _)| keep.labels.contains(k))
                        .collect(),
                    _ => Labels::new(),
                };
                *groups.entry(key).or_insert(0.0) += value;
            }
            Value::Vector(groups.into_iter().collect())
        }
        Expr::Call(c) => eval_call(c, db, t)?,
        Expr::Unary(u) => match eval(&u.expr, db, t)? {
            Value::Scalar(v) => Value::Scalar(-v),
            Value::Vector(v) => Value::Vector(v.into_iter().map(|(l, x)| (l, -x)).collect()),
        },
        Expr::Binary(b) => binary_op(
            &b.op.to_string(),
            eval(&b.lhs, db, t)?,
            eval(&b.rhs, db, t)?,
        )?,
        other => return Err(format!("cannot evaluate `{other}`")),
    })
}

fn eval_call(c: &Call, db: &Tsdb, t: f64) -> Result<Value, String> {
    let args = c.args.args.as_slice();
    Ok(match (c.func.name, args) {
        ("rate", [arg]) => {
            let Expr::MatrixSelector(m) = arg.as_ref() else {
                return Err("rate() needs a range selector".into());
            };
            let range_s = m.range.as_secs_f64();
            Value::Vector(
                db.select(metric_name(&m.vs)?, |l| {
                    matches_all(&m.vs.matchers.matchers, l)
                })
                .filter_map(|(l, s)| {
                    extrapolated_rate(s.range(t - range_s, t), t - range_s, t, range_s)
                        .map(|v| (l.clone(), v))
                })
                .collect(),
            )
        }
        ("histogram_quantile", [q, inner]) => {
            let Value::Scalar(q) = eval(q, db, t)? else {
                return Err("histogram_quantile needs a scalar quantile".into());
            };
            let v = as_vector(eval(inner, db, t)?, "histogram_quantile")?;
            let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for (mut labels, value) in v {
                let Some(le) = labels.remove("le") else {
                    continue;
                };
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse::<f64>()
                        .map_err(|_| format!("bad le label `{le}`"))?
                };
                groups.entry(labels).or_default().push((bound, value));
            }
            Value::Vector(
                groups
                    .into_iter()
                    .map(|(l, b)| (l, bucket_quantile(q, b)))
                    .collect(),
            )
        }
        ("vector", [inner]) => match eval(inner, db, t)? {
            Value::Scalar(v) => Value::Vector(vec![(Labels::new(), v)]),
            Value::Vector(_) => return Err("vector() needs a scalar".into()),
        },
        (name, _) => return Err(format!("cannot evaluate {name}()")),
    })
}

fn as_vector(v: Value, what: &str) -> Result<Vec<(Labels, f64)>, String> {
    match v {
        Value::Vector(v) => Ok(v),
        Value::Scalar(_) => Err(format!("{what}() needs an instant vector")),
    }
}

fn arith(op: &str, a: f64, b: f64) -> f64 {
    match op {
        "+" => a + b,
        "-" => a - b,
        "*" => a * b,
        _ => a / b,
    }
}

fn compare(op: &str, a: f64, b: f64) -> bool {
    match op {
        ">=" => a >= b,
        "<=" => a <= b,
        ">" => a > b,
        "<" => a < b,
        "==" => a == b,
        _ => a != b,
    }
}

fn binary_op(op: &str, lhs: Value, rhs: Value) -> Result<Value, String> {
    let is_cmp = matches!(op, ">=" | "<=" | ">" | "<" | "==" | "!=");
    Ok(match (lhs, rhs) {
        (Value::Scalar(a), Value::Scalar(b)) => {
            if is_cmp || op == "or" {
                return Err(format!("`{op}` between two scalars needs `bool`"));
            }
            Value::Scalar(arith(op, a, b))
        }
        (Value::Vector(v), Value::Scalar(s)) => {
            if op == "or" {
                return Err("`or` needs two vectors".into());
            }
            Value::Vector(if is_cmp {
                v.into_iter().filter(|(_, x)| compare(op, *x, s)).collect()
            } else {
                v.into_iter().map(|(l, x)| (l, arith(op, x, s))).collect()
            })
        }
        (Value::Scalar(s), Value::Vector(v)) => {
            if op == "or" {
                return Err("`or` needs two vectors".into());
            }
            Value::Vector(if is_cmp {
                v.into_iter().filter(|(_, x)| compare(op, s, *x)).collect()
            } else {
                v.into_iter().map(|(l, x)| (l, arith(op, s, x))).collect()
            })
        }
        (Value::Vector(a), Value::Vector(b)) => {
            if op == "or" {
                let mut out = a;
                for (l, x) in b {
                    if !out.iter().any(|(la, _)| *la == l) {
                        out.push((l, x));
                    }
                }
                return Ok(Value::Vector(out));
            }
            // One-to-one matching on the full label set.
            let mut out = Vec::new();
            for (la, x) in &a {
                if let Some((_, y)) = b.iter().find(|(lb, _)| lb == la) {
                    if is_cmp {
                        if compare(op, *x, *y) {
                            out.push((la.clone(), *x));
                        }
                    } else {
                        out.push((la.clone(), arith(op, *x, *y)));
                    }
                }
            }
            Value::Vector(out)
        }
    })
}

/// Prometheus' `extrapolatedRate` for a counter with `isRate` (promql/functions.go).
pub fn extrapolated_rate(
    samples: &[(f64, f64)],
    start: f64,
    end: f64,
    range_s: f64,
) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let (first_t, first_v) = samples[0];
    let (last_t, last_v) = samples[samples.len() - 1];
    let mut result = last_v - first_v;
    let mut prev = first_v;
    for &(_, v) in &samples[1..] {
        if v < prev {
            result += prev;
        }
        prev = v;
    }
    let mut to_start = first_t - start;
    let mut to_end = end - last_t;
    let sampled = last_t - first_t;
    let avg = sampled / (samples.len() - 1) as f64;
    let threshold = avg * 1.1;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    let mut to_zero = to_start;
    if result > 0.0 && first_v >= 0.0 {
        to_zero = sampled * (first_v / result);
    }
    if to_zero < to_start {
        to_start = to_zero;
    }
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    let factor = (sampled + to_start + to_end) / sampled / range_s;
    Some(result * factor)
}

/// Prometheus' `bucketQuantile` (promql/quantile.go) for classic buckets (upper bound,
/// cumulative count).
pub fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // coalesceBuckets: the same bound twice (from several series) adds up.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (le, c) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    // ensureMonotonic.
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let last = merged.len() - 1;
    let b = merged[..last].partition_point(|x| x.1 < rank);
    if b == last {
        return merged[last - 1].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let end = merged[b].0;
    let mut count = merged[b].1;
    let mut start = 0.0;
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn scalar_of(v: Value) -> Vec<f64> {
        match v {
            Value::Vector(v) => v.into_iter().map(|(_, x)| x).collect(),
            Value::Scalar(x) => vec![x],
        }
    }

    #[test]
    fn sum_with_label_matchers() {
        let mut db = Tsdb::new();
        db.push(
            "q",
            labels(&[("namespace", "virtualfit"), ("pod", "a")]),
            15.0,
            3.0,
        );
        db.push(
            "q",
            labels(&[("namespace", "virtualfit"), ("pod", "b")]),
            15.0,
            4.0,
        );
        db.push(
            "q",
            labels(&[("namespace", "other"), ("pod", "c")]),
            15.0,
            100.0,
        );
        let q = Query::parse(r#"sum(q{namespace="virtualfit"})"#).expect("parses");
        assert_eq!(scalar_of(q.eval(&db, 20.0).expect("evaluates")), vec![7.0]);
        let q = Query::parse(r#"sum(q{namespace!="virtualfit"})"#).expect("parses");
        assert_eq!(
            scalar_of(q.eval(&db, 20.0).expect("evaluates")),
            vec![100.0]
        );
        // No match: sum of nothing is an empty vector.
        let q = Query::parse(r#"sum(q{namespace="none"})"#).expect("parses");
        assert_eq!(q.eval(&db, 20.0).expect("evaluates"), Value::Vector(vec![]));
    }

    #[test]
    fn memory_ratio() {
        let mut db = Tsdb::new();
        for pod in ["a", "b"] {
            let l = labels(&[("exported_namespace", "virtualfit"), ("pod", pod)]);
            db.push("used", l.clone(), 15.0, 20.0);
            db.push("free", l, 15.0, 60.0);
        }
        let q = Query::parse(
            r#"sum(used{exported_namespace="virtualfit"}) / (sum(used{exported_namespace="virtualfit"}) + sum(free{exported_namespace="virtualfit"})) * 100"#,
        )
        .expect("parses");
        assert_eq!(scalar_of(q.eval(&db, 15.0).expect("evaluates")), vec![25.0]);
    }

    #[test]
    fn rate_extrapolates_like_prometheus() {
        // A counter rising 10 per 15 s scrape, sampled at 15..120 within a 2m window ending at
        // 120: 8 samples cover 105 s; the 15 s gap to the window's start is under 1.1 times the
        // average interval, so the rate extrapolates over all of it.
        let samples: Vec<(f64, f64)> = (1..=8)
            .map(|i| (15.0 * i as f64, 100.0 + 10.0 * i as f64))
            .collect();
        let r = extrapolated_rate(&samples, 0.0, 120.0, 120.0).expect("two samples or more");
        let expected = 70.0 * (105.0 + 15.0) / 105.0 / 120.0;
        // A window starting 30 s before the first sample extrapolates only half an interval.
        let r2 = extrapolated_rate(&samples, -15.0, 120.0, 135.0).expect("rate");
        let expected2 = 70.0 * (105.0 + 7.5) / 105.0 / 135.0;
        assert!((r2 - expected2).abs() < 1e-12, "{r2} vs {expected2}");
        assert!((r - expected).abs() < 1e-12, "{r} vs {expected}");
        // A counter starting near zero extrapolates no further back than zero.
        let fresh = [(60.0, 1.0), (75.0, 11.0), (90.0, 21.0)];
        let r = extrapolated_rate(&fresh, 0.0, 120.0, 120.0).expect("rate");
        // to_start = min(7.5, 30 * 1/20 = 1.5); to_end = 30 >= 16.5 so 7.5.
        let expected = 20.0 * (30.0 + 1.5 + 7.5) / 30.0 / 120.0;
        assert!((r - expected).abs() < 1e-12);
        assert_eq!(extrapolated_rate(&fresh[..1], 0.0, 120.0, 120.0), None);
    }

    #[test]
    fn bucket_quantile_interpolates() {
        // 100 observations: 50 under 1, 90 under 2.5, all under 5.
        let b = vec![
            (1.0, 50.0),
            (2.5, 90.0),
            (5.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // rank 95 in (2.5, 5]: 2.5 + 2.5 * (5 / 10) = 3.75.
        assert!((bucket_quantile(0.95, b.clone()) - 3.75).abs() < 1e-12);
        // rank in +Inf: the largest finite bound.
        let over = vec![(1.0, 0.0), (5.0, 10.0), (f64::INFINITY, 100.0)];
        assert_eq!(bucket_quantile(0.95, over), 5.0);
        assert!(bucket_quantile(0.95, vec![(1.0, 0.0), (f64::INFINITY, 0.0)]).is_nan());
    }

    #[test]
    fn p95_query_with_fallback() {
        let text = r#"(histogram_quantile(0.95, sum by (le) (rate(h_bucket{namespace="virtualfit"}[2m]))) >= 0) or vector(0)"#;
        let q = Query::parse(text).expect("parses");
        let mut db = Tsdb::new();
        // No series at all: vector(0).
        assert_eq!(scalar_of(q.eval(&db, 120.0).expect("evaluates")), vec![0.0]);
        // Two pods, counters that do not move: NaN filtered out, vector(0).
        for pod in ["a", "b"] {
            for (le, _) in [("1", 0), ("+Inf", 0)] {
                let l = labels(&[("namespace", "virtualfit"), ("pod", pod), ("le", le)]);
                db.push("h_bucket", l.clone(), 15.0, 5.0);
                db.push("h_bucket", l, 30.0, 5.0);
            }
        }
        assert_eq!(scalar_of(q.eval(&db, 30.0).expect("evaluates")), vec![0.0]);
        // Traffic on both pods, all slower than 1 s: the quantile is the largest finite bound.
        for pod in ["a", "b"] {
            let inf = labels(&[("namespace", "virtualfit"), ("pod", pod), ("le", "+Inf")]);
            db.push("h_bucket", inf, 45.0, 50.0);
            let one = labels(&[("namespace", "virtualfit"), ("pod", pod), ("le", "1")]);
            db.push("h_bucket", one, 45.0, 5.0);
        }
        assert_eq!(scalar_of(q.eval(&db, 45.0).expect("evaluates")), vec![1.0]);
    }

    #[test]
    fn unsupported_forms_name_the_query() {
        for text in [
            r#"avg(DCGM_FI_DEV_GPU_UTIL{namespace="virtualfit"})"#,
            r#"sum(irate(x[1m]))"#,
            r#"sum(x{a=~"b.*"})"#,
            r#"sum(rate(x[5m] offset 1m))"#,
            r#"x % 2"#,
        ] {
            let err = Query::parse(text).expect_err("unsupported");
            let msg = err.to_string();
            assert!(msg.contains(text), "{msg}");
            assert!(matches!(err, PromqlError::Unsupported { .. }), "{msg}");
        }
        assert!(matches!(
            Query::parse("sum(x"),
            Err(PromqlError::Syntax { .. })
        ));
    }

    #[test]
    fn arithmetic_follows_promql_precedence() {
        let db = Tsdb::new();
        for (text, want) in [
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("-2 * 3 + 10 / 4", -3.5),
            ("8 - 2 - 1", 5.0),
        ] {
            let q = Query::parse(text).expect("parses");
            assert_eq!(q.eval(&db, 0.0), Ok(Value::Scalar(want)), "{text}");
        }
    }

    #[test]
    fn query_forms_of_the_triggers() {
        let sum = r#"sum(virtualfit_queue_length{namespace="virtualfit"})"#;
        assert_eq!(query_form(sum), Some(QueryForm::Sum));
        assert_eq!(query_form(&format!("({sum})")), Some(QueryForm::Sum));
        let busy = r#"sum(rate(virtualfit_model_busy_share_seconds_total{namespace="virtualfit",priority="interactive"}[2m]))"#;
        assert_eq!(query_form(busy), Some(QueryForm::Sum));
        assert_eq!(query_form("sum(rate(m[2m]))"), None);
        let p95 = r#"(histogram_quantile(0.95, sum by (le) (rate(virtualfit_request_duration_seconds_bucket{namespace="virtualfit"}[2m]))) >= 0) or vector(0)"#;
        assert_eq!(query_form(p95), Some(QueryForm::Quantile));
        for other in [
            "sum(m)",
            r#"sum by (pod) (m{a="b"})"#,
            r#"sum(m{a="b"}) + 1"#,
            r#"sum(m{a=~"b"})"#,
            r#"(histogram_quantile(1.5, sum by (le) (rate(m_bucket{a="b"}[2m]))) >= 0) or vector(0)"#,
            r#"(histogram_quantile(0.95, sum by (le) (rate(m{a="b"}[2m]))) >= 0) or vector(0)"#,
            r#"(histogram_quantile(0.95, sum by (le, pod) (rate(m_bucket{a="b"}[2m]))) >= 0) or vector(0)"#,
            r#"(histogram_quantile(0.95, sum by (le) (rate(m_bucket{a="b"}[2m]))) >= 0) or vector(1)"#,
            r#"histogram_quantile(0.95, sum by (le) (rate(m_bucket{a="b"}[2m]))) or vector(0)"#,
            "not promql (",
        ] {
            assert_eq!(query_form(other), None, "{other}");
        }
    }
}
