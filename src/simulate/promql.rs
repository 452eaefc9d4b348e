//! The part of PromQL that our ScaledObject uses, evaluated over the simulated scrapes the way
//! Prometheus does: instant selectors with the 5-minute lookback and staleness, `rate` with
//! Prometheus' extrapolation, `sum` / `sum by`, `histogram_quantile`, arithmetic, comparison
//! filters, `or` and `vector`. Anything else is refused with an error that names the query.

use std::collections::BTreeMap;

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

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Str(String),
    Dur(f64),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Op(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub label: String,
    pub value: String,
    pub equal: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Number(f64),
    Selector {
        name: String,
        matchers: Vec<Matcher>,
    },
    Rate {
        name: String,
        matchers: Vec<Matcher>,
        range_s: f64,
    },
    Sum {
        by: Option<Vec<String>>,
        inner: Box<Expr>,
    },
    HistogramQuantile {
        q: Box<Expr>,
        inner: Box<Expr>,
    },
    Vector(Box<Expr>),
    Neg(Box<Expr>),
    Binary {
        op: &'static str,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
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

fn lex(query: &str) -> Result<Vec<Tok>, PromqlError> {
    let syntax = |what: String| PromqlError::Syntax {
        query: query.to_string(),
        what,
    };
    let chars: Vec<char> = query.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                toks.push(Tok::LParen);
                i += 1
            }
            ')' => {
                toks.push(Tok::RParen);
                i += 1
            }
            '{' => {
                toks.push(Tok::LBrace);
                i += 1
            }
            '}' => {
                toks.push(Tok::RBrace);
                i += 1
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1
            }
            '[' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == ']')
                    .ok_or_else(|| syntax("unclosed `[`".into()))?;
                let text: String = chars[i + 1..i + end].iter().collect();
                toks.push(Tok::Dur(parse_duration(text.trim()).ok_or_else(|| {
                    PromqlError::Unsupported {
                        query: query.to_string(),
                        what: format!(
                            "range `[{text}]` (a duration like 2m, 30s, 1h; no subqueries)"
                        ),
                    }
                })?));
                i += end + 1;
            }
            '"' | '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(syntax("unterminated string".into())),
                        Some('\\') => {
                            if let Some(&n) = chars.get(i + 1) {
                                s.push(n);
                            }
                            i += 2;
                        }
                        Some(&ch) if ch == c => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                toks.push(Tok::Str(s));
            }
            c if c.is_ascii_digit() || c == '.' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || ((chars[i] == '+' || chars[i] == '-')
                            && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                match (text.parse::<f64>(), parse_duration(&text)) {
                    (Ok(v), _) => toks.push(Tok::Num(v)),
                    (Err(_), Some(d)) => toks.push(Tok::Dur(d)),
                    _ => return Err(syntax(format!("bad number `{text}`"))),
                }
            }
            c if c.is_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                toks.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            _ => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let op = match two.as_str() {
                    ">=" => Some(">="),
                    "<=" => Some("<="),
                    "==" => Some("=="),
                    "!=" => Some("!="),
                    "=~" => Some("=~"),
                    "!~" => Some("!~"),
                    _ => None,
                };
                if let Some(op) = op {
                    toks.push(Tok::Op(op));
                    i += 2;
                    continue;
                }
                let op = match c {
                    '+' => "+",
                    '-' => "-",
                    '*' => "*",
                    '/' => "/",
                    '%' => "%",
                    '^' => "^",
                    '>' => ">",
                    '<' => "<",
                    '=' => "=",
                    _ => return Err(syntax(format!("unexpected character `{c}`"))),
                };
                toks.push(Tok::Op(op));
                i += 1;
            }
        }
    }
    Ok(toks)
}

/// A Prometheus duration such as `2m`, `30s`, `1h30m`, in seconds.
fn parse_duration(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut num = String::new();
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            0.001
        } else {
            match c {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                'd' => 86400.0,
                'w' => 604800.0,
                'y' => 31536000.0,
                _ => return None,
            }
        };
        let n: f64 = num.parse().ok()?;
        total += n * unit;
        num.clear();
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

struct Parser<'a> {
    query: &'a str,
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn syntax(&self, what: impl Into<String>) -> PromqlError {
        PromqlError::Syntax {
            query: self.query.to_string(),
            what: what.into(),
        }
    }

    fn unsupported(&self, what: impl Into<String>) -> PromqlError {
        PromqlError::Unsupported {
            query: self.query.to_string(),
            what: what.into(),
        }
    }

    fn expect(&mut self, tok: Tok) -> Result<(), PromqlError> {
        match self.next() {
            Some(t) if t == tok => Ok(()),
            other => Err(self.syntax(format!("expected {tok:?}, found {other:?}"))),
        }
    }

    fn expr(&mut self) -> Result<Expr, PromqlError> {
        let mut lhs = self.comparison()?;
        loop {
            match self.peek() {
                Some(Tok::Ident(w)) if w == "or" => {
                    self.next();
                    let rhs = self.comparison()?;
                    lhs = Expr::Binary {
                        op: "or",
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    };
                }
                Some(Tok::Ident(w)) if w == "and" || w == "unless" => {
                    return Err(self.unsupported(format!("operator `{w}`")))
                }
                _ => return Ok(lhs),
            }
        }
    }

    fn comparison(&mut self) -> Result<Expr, PromqlError> {
        let lhs = self.additive()?;
        let op = match self.peek() {
            Some(Tok::Op(op)) if matches!(*op, ">=" | "<=" | ">" | "<" | "==" | "!=") => *op,
            _ => return Ok(lhs),
        };
        self.next();
        if matches!(self.peek(), Some(Tok::Ident(w)) if w == "bool") {
            return Err(self.unsupported("the `bool` modifier"));
        }
        let rhs = self.additive()?;
        Ok(Expr::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        })
    }

    fn additive(&mut self) -> Result<Expr, PromqlError> {
        let mut lhs = self.multiplicative()?;
        while let Some(Tok::Op(op @ ("+" | "-"))) = self.peek() {
            let op = *op;
            self.next();
            let rhs = self.multiplicative()?;
            lhs = Expr::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
        }
        Ok(lhs)
    }

    fn multiplicative(&mut self) -> Result<Expr, PromqlError> {
        let mut lhs = self.unary()?;
        loop {
            match self.peek() {
                Some(Tok::Op(op @ ("*" | "/"))) => {
                    let op = *op;
                    self.next();
                    let rhs = self.unary()?;
                    lhs = Expr::Binary {
                        op,
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    };
                }
                Some(Tok::Op(op @ ("%" | "^"))) => {
                    return Err(self.unsupported(format!("operator `{op}`")))
                }
                Some(Tok::Ident(w)) if matches!(w.as_str(), "on" | "ignoring") => {
                    return Err(self.unsupported(format!("vector matching `{w}`")))
                }
                _ => return Ok(lhs),
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, PromqlError> {
        match self.peek() {
            Some(Tok::Op("-")) => {
                self.next();
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            Some(Tok::Op("+")) => {
                self.next();
                self.unary()
            }
            _ => self.primary(),
        }
    }

    fn by_clause(&mut self) -> Result<Vec<String>, PromqlError> {
        self.expect(Tok::LParen)?;
        let mut labels = Vec::new();
        loop {
            match self.next() {
                Some(Tok::RParen) => return Ok(labels),
                Some(Tok::Ident(l)) => labels.push(l),
                Some(Tok::Comma) => {}
                other => return Err(self.syntax(format!("bad label list near {other:?}"))),
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, PromqlError> {
        match self.next() {
            Some(Tok::Num(v)) => Ok(Expr::Number(v)),
            Some(Tok::LParen) => {
                let e = self.expr()?;
                self.expect(Tok::RParen)?;
                Ok(e)
            }
            Some(Tok::Ident(name)) => self.after_ident(name),
            Some(Tok::LBrace) => Err(self.unsupported("a selector without a metric name")),
            other => Err(self.syntax(format!("unexpected {other:?}"))),
        }
    }

    fn after_ident(&mut self, name: String) -> Result<Expr, PromqlError> {
        match name.as_str() {
            "sum" => {
                let mut by = None;
                match self.peek() {
                    Some(Tok::Ident(w)) if w == "by" => {
                        self.next();
                        by = Some(self.by_clause()?);
                    }
                    Some(Tok::Ident(w)) if w == "without" => {
                        return Err(self.unsupported("`sum without`"))
                    }
                    _ => {}
                }
                self.expect(Tok::LParen)?;
                let inner = self.expr()?;
                self.expect(Tok::RParen)?;
                if matches!(self.peek(), Some(Tok::Ident(w)) if w == "by") {
                    self.next();
                    by = Some(self.by_clause()?);
                }
                Ok(Expr::Sum {
                    by,
                    inner: Box::new(inner),
                })
            }
            "rate" => {
                self.expect(Tok::LParen)?;
                let Some(Tok::Ident(metric)) = self.next() else {
                    return Err(self.unsupported("rate() of anything but a range selector"));
                };
                let matchers = self.matchers()?;
                let Some(Tok::Dur(range_s)) = self.next() else {
                    return Err(self.unsupported("rate() without a range `[d]`"));
                };
                if matches!(self.peek(), Some(Tok::Ident(w)) if w == "offset") {
                    return Err(self.unsupported("`offset`"));
                }
                self.expect(Tok::RParen)?;
                Ok(Expr::Rate {
                    name: metric,
                    matchers,
                    range_s,
                })
            }
            "histogram_quantile" => {
                self.expect(Tok::LParen)?;
                let q = self.expr()?;
                self.expect(Tok::Comma)?;
                let inner = self.expr()?;
                self.expect(Tok::RParen)?;
                Ok(Expr::HistogramQuantile {
                    q: Box::new(q),
                    inner: Box::new(inner),
                })
            }
            "vector" => {
                self.expect(Tok::LParen)?;
                let inner = self.expr()?;
                self.expect(Tok::RParen)?;
                Ok(Expr::Vector(Box::new(inner)))
            }
            _ if matches!(self.peek(), Some(Tok::LParen)) => {
                Err(self.unsupported(format!("function or aggregation `{name}`")))
            }
            _ => {
                let matchers = self.matchers()?;
                match self.peek() {
                    Some(Tok::Dur(_)) => Err(self.unsupported("a range selector outside rate()")),
                    Some(Tok::Ident(w)) if w == "offset" => Err(self.unsupported("`offset`")),
                    _ => Ok(Expr::Selector { name, matchers }),
                }
            }
        }
    }

    fn matchers(&mut self) -> Result<Vec<Matcher>, PromqlError> {
        let mut out = Vec::new();
        if !matches!(self.peek(), Some(Tok::LBrace)) {
            return Ok(out);
        }
        self.next();
        loop {
            match self.next() {
                Some(Tok::RBrace) => return Ok(out),
                Some(Tok::Comma) => {}
                Some(Tok::Ident(label)) => {
                    let equal = match self.next() {
                        Some(Tok::Op("=")) => true,
                        Some(Tok::Op("!=")) => false,
                        Some(Tok::Op(op @ ("=~" | "!~"))) => {
                            return Err(self.unsupported(format!("regex matcher `{op}`")))
                        }
                        other => {
                            return Err(self.syntax(format!("bad label matcher near {other:?}")))
                        }
                    };
                    let Some(Tok::Str(value)) = self.next() else {
                        return Err(self.syntax("label value must be a quoted string"));
                    };
                    out.push(Matcher {
                        label,
                        value,
                        equal,
                    });
                }
                other => return Err(self.syntax(format!("bad label matcher near {other:?}"))),
            }
        }
    }
}

impl Query {
    /// Parses `text`, or says why it is not a supported form.
    pub fn parse(text: &str) -> Result<Query, PromqlError> {
        let toks = lex(text)?;
        let mut p = Parser {
            query: text,
            toks,
            pos: 0,
        };
        let expr = p.expr()?;
        if let Some(t) = p.peek() {
            return Err(p.syntax(format!("unexpected {t:?} after the expression")));
        }
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

fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| {
        let v = labels.get(&m.label).map(String::as_str).unwrap_or("");
        (v == m.value) == m.equal
    })
}

fn eval(expr: &Expr, db: &Tsdb, t: f64) -> Result<Value, String> {
    Ok(match expr {
        Expr::Number(v) => Value::Scalar(*v),
        Expr::Selector { name, matchers } => Value::Vector(
            db.select(name, |l| matches_all(matchers, l))
                .filter_map(|(l, s)| s.instant(t).map(|v| (l.clone(), v)))
                .collect(),
        ),
        Expr::Rate {
            name,
            matchers,
            range_s,
        } => Value::Vector(
            db.select(name, |l| matches_all(matchers, l))
                .filter_map(|(l, s)| {
                    extrapolated_rate(s.range(t - range_s, t), t - range_s, t, *range_s)
                        .map(|v| (l.clone(), v))
                })
                .collect(),
        ),
        Expr::Sum { by, inner } => {
            let v = as_vector(eval(inner, db, t)?, "sum")?;
            let mut groups: BTreeMap<Labels, f64> = BTreeMap::new();
            for (labels, value) in v {
                let key: Labels = match by {
                    Some(keep) => labels
                        .into_iter()
                        .filter(|(k, _)| keep.contains(k))
                        .collect(),
                    None => Labels::new(),
                };
                *groups.entry(key).or_insert(0.0) += value;
            }
            Value::Vector(groups.into_iter().collect())
        }
        Expr::HistogramQuantile { q, inner } => {
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
        Expr::Vector(inner) => match eval(inner, db, t)? {
            Value::Scalar(v) => Value::Vector(vec![(Labels::new(), v)]),
            Value::Vector(_) => return Err("vector() needs a scalar".into()),
        },
        Expr::Neg(inner) => match eval(inner, db, t)? {
            Value::Scalar(v) => Value::Scalar(-v),
            Value::Vector(v) => Value::Vector(v.into_iter().map(|(l, x)| (l, -x)).collect()),
        },
        Expr::Binary { op, lhs, rhs } => binary(op, eval(lhs, db, t)?, eval(rhs, db, t)?)?,
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

fn binary(op: &str, lhs: Value, rhs: Value) -> Result<Value, String> {
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
}
