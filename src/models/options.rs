//! A model's request options, declared once by the model: name, type, bounds, default and help.
//! The one declaration drives the form fields of `/tryon` and `/v1/jobs`, the flags of
//! `virtualfit tryon`, the OpenAPI forms, `GET /v1/models` and the README's table. Parsed
//! options travel as opaque JSON ([`RequestOptions`]) that only the model reads back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The server's bounds that a model's options may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionLimits {
    /// `--max-steps`: the most sampling steps a request may ask for.
    pub max_steps: usize,
}

impl Default for OptionLimits {
    fn default() -> Self {
        OptionLimits { max_steps: 50 }
    }
}

/// What values an option takes, and its default.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionKind {
    /// A whole number in `min..=max`.
    Integer { min: u64, max: u64, default: u64 },
    /// A finite number in `min..=max`.
    Number { min: f64, max: f64, default: f64 },
    /// One of the listed words.
    Choice {
        values: &'static [&'static str],
        default: &'static str,
    },
    /// A noise seed, `0..=2^64-1`: drawn when the request has none, and reported back (the
    /// `x-seed` header, the CLI's output) so that the image can be made again.
    Seed,
    /// One of the listed presets, each a set of other options' values: a request's options
    /// that it leaves out take the chosen preset's value before their own default.
    Preset {
        presets: &'static [Preset],
        default: &'static str,
    },
}

/// A named set of other options' values (a speed mode, say).
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    /// `(option, value)` pairs, the values as a request would write them. An integer past
    /// its option's bounds (a preset's steps above `--max-steps`) is brought within them.
    pub sets: &'static [(&'static str, &'static str)],
}

/// One request option of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionSpec {
    /// The form field and flag name (`steps`).
    pub name: &'static str,
    pub kind: OptionKind,
    /// One line for the OpenAPI document, `--help` and `/v1/models`.
    pub help: &'static str,
}

impl OptionSpec {
    /// The type as `/v1/models` and the README name it.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            OptionKind::Integer { .. } => "integer",
            OptionKind::Number { .. } => "number",
            OptionKind::Choice { .. } | OptionKind::Preset { .. } => "string",
            OptionKind::Seed => "seed",
        }
    }

    /// The default, as JSON (`null` for a drawn seed).
    pub fn default_value(&self) -> Value {
        match &self.kind {
            OptionKind::Integer { default, .. } => Value::from(*default),
            OptionKind::Number { default, .. } => Value::from(*default),
            OptionKind::Choice { default, .. } | OptionKind::Preset { default, .. } => {
                Value::from(*default)
            }
            OptionKind::Seed => Value::Null,
        }
    }

    /// The words a choice or preset takes (empty for other kinds).
    pub fn words(&self) -> Vec<&'static str> {
        match &self.kind {
            OptionKind::Choice { values, .. } => values.to_vec(),
            OptionKind::Preset { presets, .. } => presets.iter().map(|p| p.name).collect(),
            _ => Vec::new(),
        }
    }

    /// The bounds or values in words (`1..50`, `upper | lower | overall`).
    pub fn bounds(&self) -> String {
        match &self.kind {
            OptionKind::Integer { min, max, .. } => format!("{min}..{max}"),
            OptionKind::Number { min, max, .. } => format!("{min}..{max}"),
            OptionKind::Choice { .. } | OptionKind::Preset { .. } => self.words().join(" | "),
            OptionKind::Seed => "0..2^64-1, drawn when absent".into(),
        }
    }

    /// Reads one value from text. The message names the option and its bounds, never the
    /// input.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let text = text.trim();
        let name = self.name;
        match &self.kind {
            OptionKind::Integer { min, max, .. } => match text.parse::<u64>() {
                Ok(n) if (*min..=*max).contains(&n) => Ok(Value::from(n)),
                _ => Err(format!("{name} must be a whole number in {min}..{max}")),
            },
            OptionKind::Number { min, max, .. } => match text.parse::<f64>() {
                Ok(x) if x.is_finite() && (*min..=*max).contains(&x) => Ok(Value::from(x)),
                _ => Err(format!("{name} must be a number in {min}..{max}")),
            },
            OptionKind::Choice { .. } | OptionKind::Preset { .. } => {
                let words = self.words();
                match words.iter().find(|v| **v == text) {
                    Some(v) => Ok(Value::from(*v)),
                    None => Err(format!(
                        "{name} is {}",
                        words
                            .iter()
                            .map(|v| format!("`{v}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
            OptionKind::Seed => text
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| format!("{name} must be a whole number 0..2^64-1")),
        }
    }

    /// A preset's value brought within this option's integer bounds (others unchanged).
    fn within_bounds(&self, text: &str) -> String {
        match (&self.kind, text.parse::<u64>()) {
            (OptionKind::Integer { min, max, .. }, Ok(n)) => n.clamp(*min, *max).to_string(),
            _ => text.to_string(),
        }
    }

    /// Its entry in an OpenAPI form schema.
    pub fn openapi_schema(&self) -> utoipa::openapi::schema::Object {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let builder = ObjectBuilder::new().description(Some(self.help));
        match &self.kind {
            OptionKind::Integer { min, max, default } => builder
                .schema_type(Type::Integer)
                .minimum(Some(*min as f64))
                .maximum(Some(*max as f64))
                .default(Some(Value::from(*default))),
            OptionKind::Number { min, max, default } => builder
                .schema_type(Type::Number)
                .minimum(Some(*min))
                .maximum(Some(*max))
                .default(Some(Value::from(*default))),
            OptionKind::Choice { default, .. } | OptionKind::Preset { default, .. } => builder
                .schema_type(Type::String)
                .enum_values(Some(self.words()))
                .default(Some(Value::from(*default))),
            OptionKind::Seed => builder
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int64,
                )))
                .minimum(Some(0.0)),
        }
        .build()
    }
}

/// A request's options, checked against the model's declaration, every one present (defaults
/// filled in, seeds drawn). Stored as JSON with a job; the model reads its own back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestOptions(Map<String, Value>);

impl RequestOptions {
    /// Reads every declared option from `field` (a field's text by name): absent options take
    /// the chosen preset's value, else their default, and absent seeds `draw_seed()`.
    pub fn parse<'a>(
        specs: &[OptionSpec],
        field: impl Fn(&str) -> Option<&'a str>,
        mut draw_seed: impl FnMut() -> u64,
    ) -> Result<RequestOptions, String> {
        let mut preset_values: &[(&str, &str)] = &[];
        for spec in specs {
            if let OptionKind::Preset { presets, default } = &spec.kind {
                let chosen = match field(spec.name) {
                    Some(text) => spec.parse(text)?,
                    None => Value::from(*default),
                };
                if let Some(preset) = presets.iter().find(|p| Some(p.name) == chosen.as_str()) {
                    preset_values = preset.sets;
                }
            }
        }
        let mut values = Map::new();
        for spec in specs {
            let from_preset = preset_values.iter().find(|(name, _)| *name == spec.name);
            let value = match (field(spec.name), from_preset) {
                (Some(text), _) => spec.parse(text)?,
                (None, Some((_, text))) => spec.parse(&spec.within_bounds(text))?,
                (None, None) if spec.kind == OptionKind::Seed => Value::from(draw_seed()),
                (None, None) => spec.default_value(),
            };
            values.insert(spec.name.to_string(), value);
        }
        Ok(RequestOptions(values))
    }

    /// Options stored earlier, checked again against the declaration (a stored job may come
    /// from another version): unknown names are dropped, and missing ones take their default.
    pub fn from_stored(specs: &[OptionSpec], stored: &Value) -> Result<RequestOptions, String> {
        let stored = stored.as_object().cloned().unwrap_or_default();
        let mut values = Map::new();
        for spec in specs {
            let value = match stored.get(spec.name) {
                Some(Value::String(s)) => spec.parse(s)?,
                Some(v @ Value::Number(_)) => spec.parse(&v.to_string())?,
                Some(_) => return Err(format!("the stored option {} is malformed", spec.name)),
                None if spec.kind == OptionKind::Seed => {
                    return Err(format!("the stored job has no {}", spec.name))
                }
                None => spec.default_value(),
            };
            values.insert(spec.name.to_string(), value);
        }
        Ok(RequestOptions(values))
    }

    /// The options as one JSON object.
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// Reads them into the model's own type.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.to_value()).map_err(|e| format!("options: {e}"))
    }

    /// One option's value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The seeds the request runs with, by option name, for the answer's headers.
    pub fn seeds<'a>(&'a self, specs: &'a [OptionSpec]) -> impl Iterator<Item = u64> + 'a {
        specs
            .iter()
            .filter(|s| s.kind == OptionKind::Seed)
            .filter_map(|s| self.0.get(s.name).and_then(Value::as_u64))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<OptionSpec> {
        vec![
            OptionSpec {
                name: "steps",
                kind: OptionKind::Integer {
                    min: 1,
                    max: 50,
                    default: 30,
                },
                help: "steps",
            },
            OptionSpec {
                name: "scale",
                kind: OptionKind::Number {
                    min: 0.0,
                    max: 30.0,
                    default: 2.5,
                },
                help: "scale",
            },
            OptionSpec {
                name: "size",
                kind: OptionKind::Choice {
                    values: &["big", "small"],
                    default: "big",
                },
                help: "size",
            },
            OptionSpec {
                name: "seed",
                kind: OptionKind::Seed,
                help: "seed",
            },
        ]
    }

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<RequestOptions, String> {
        RequestOptions::parse(
            &specs(),
            |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            || 7,
        )
    }

    #[test]
    fn absent_options_take_their_defaults_and_seeds_are_drawn() {
        let o = parse(&[]).expect("defaults");
        assert_eq!(
            o.to_value(),
            serde_json::json!({"steps": 30, "scale": 2.5, "size": "big", "seed": 7})
        );
        assert_eq!(o.seeds(&specs()).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn values_are_read_and_bounded_without_echoing_the_input() {
        let o = parse(&[
            ("steps", " 50 "),
            ("scale", "0"),
            ("size", "small"),
            ("seed", "18446744073709551615"),
        ])
        .expect("valid");
        assert_eq!(
            o.to_value(),
            serde_json::json!({"steps": 50, "scale": 0.0, "size": "small", "seed": u64::MAX})
        );
        for bad in [
            ("steps", "0"),
            ("steps", "51"),
            ("steps", "-1"),
            ("steps", "2.5"),
            ("steps", "9999999"),
            ("scale", "NaN"),
            ("scale", "inf"),
            ("scale", "31"),
            ("size", "huge-size"),
            ("seed", "-3"),
        ] {
            let e = parse(&[bad]).expect_err("refused");
            assert!(e.starts_with(bad.0), "{e}");
            if bad.1.len() > 4 {
                assert!(!e.contains(bad.1), "the input is not echoed: {e}");
            }
        }
    }

    #[test]
    fn stored_options_are_checked_again_and_completed() {
        let stored = serde_json::json!({"steps": 12, "seed": 99, "gone": true});
        let o = RequestOptions::from_stored(&specs(), &stored).expect("valid");
        assert_eq!(
            o.to_value(),
            serde_json::json!({"steps": 12, "scale": 2.5, "size": "big", "seed": 99})
        );
        let too_many = serde_json::json!({"steps": 80, "seed": 1});
        assert!(RequestOptions::from_stored(&specs(), &too_many).is_err());
        let no_seed = serde_json::json!({"steps": 8});
        assert!(RequestOptions::from_stored(&specs(), &no_seed).is_err());
    }

    #[test]
    fn the_schema_states_type_bounds_and_default() {
        let schema = serde_json::to_value(specs()[0].openapi_schema()).expect("json");
        assert_eq!(schema["type"], "integer");
        assert_eq!(schema["minimum"], 1.0);
        assert_eq!(schema["maximum"], 50.0);
        assert_eq!(schema["default"], 30);
        let choice = serde_json::to_value(specs()[2].openapi_schema()).expect("json");
        assert_eq!(choice["enum"], serde_json::json!(["big", "small"]));
    }
}
