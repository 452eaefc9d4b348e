//! A try-on request's sampling options, as form fields (`POST /tryon`, `POST /v1/jobs`) or
//! command-line flags (`virtualfit tryon`), checked against the server's bounds.

use super::{Category, Resolution, SamplingParams, DEFAULT_GUIDANCE, DEFAULT_STEPS};

/// The form fields a diffusion request may carry.
pub const FIELDS: [&str; 5] = ["category", "steps", "guidance", "seed", "resolution"];

/// The largest guidance scale accepted: far past any useful value, it only bounds the input.
pub const MAX_GUIDANCE: f64 = 30.0;

/// What a diffusion request asks for.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiffusionRequest {
    pub category: Category,
    pub resolution: Resolution,
    pub params: SamplingParams,
}

impl std::str::FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "upper" => Ok(Category::Upper),
            "lower" => Ok(Category::Lower),
            "overall" => Ok(Category::Overall),
            _ => Err("the category is `upper`, `lower` or `overall`".into()),
        }
    }
}

impl Category {
    /// As requests spell it.
    pub fn label(self) -> &'static str {
        match self {
            Category::Upper => "upper",
            Category::Lower => "lower",
            Category::Overall => "overall",
        }
    }
}

/// Checks a step count against `1..=max_steps`.
pub fn check_steps(steps: usize, max_steps: usize) -> Result<usize, String> {
    if (1..=max_steps).contains(&steps) {
        Ok(steps)
    } else {
        Err(format!("steps must be 1..{max_steps}, got {steps}"))
    }
}

/// Checks a guidance scale against `0..=MAX_GUIDANCE`.
pub fn check_guidance(guidance: f64) -> Result<f64, String> {
    if guidance.is_finite() && (0.0..=MAX_GUIDANCE).contains(&guidance) {
        Ok(guidance)
    } else {
        Err(format!("guidance must be a number in 0..{MAX_GUIDANCE}"))
    }
}

/// Reads the request from its fields (`field(name)` answers a field's text); a missing field
/// takes its default, and a missing seed is `default_seed`. Errors never echo the input.
pub fn parse<'a>(
    field: impl Fn(&str) -> Option<&'a str>,
    max_steps: usize,
    default_seed: u64,
) -> Result<DiffusionRequest, String> {
    let category = match field("category") {
        Some(c) => c.trim().parse()?,
        None => Category::Upper,
    };
    let resolution = match field("resolution") {
        Some(r) => r.trim().parse()?,
        None => Resolution::Full,
    };
    let steps = match field("steps") {
        Some(s) => {
            let n: usize = s
                .trim()
                .parse()
                .map_err(|_| format!("steps must be a whole number 1..{max_steps}"))?;
            check_steps(n, max_steps)?
        }
        None => DEFAULT_STEPS.min(max_steps),
    };
    let guidance = match field("guidance") {
        Some(g) => check_guidance(
            g.trim()
                .parse()
                .map_err(|_| format!("guidance must be a number in 0..{MAX_GUIDANCE}"))?,
        )?,
        None => DEFAULT_GUIDANCE,
    };
    let seed = match field("seed") {
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| "seed must be a whole number 0..2^64-1".to_string())?,
        None => default_seed,
    };
    Ok(DiffusionRequest {
        category,
        resolution,
        params: SamplingParams {
            steps,
            guidance,
            seed,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_map(pairs: &[(&'static str, &'static str)]) -> Result<DiffusionRequest, String> {
        parse(
            |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            50,
            7,
        )
    }

    #[test]
    fn defaults_are_the_reference_settings() {
        let r = parse_map(&[]).expect("defaults");
        assert_eq!(r.category, Category::Upper);
        assert_eq!(r.resolution, Resolution::Full);
        assert_eq!(
            r.params,
            SamplingParams {
                steps: 50,
                guidance: 2.5,
                seed: 7
            }
        );
    }

    #[test]
    fn fields_are_read_and_bounded() {
        let r = parse_map(&[
            ("category", "lower"),
            ("resolution", "512x384"),
            ("steps", "20"),
            ("guidance", "1.0"),
            ("seed", "18446744073709551615"),
        ])
        .expect("valid");
        assert_eq!(r.category, Category::Lower);
        assert_eq!(r.resolution, Resolution::Half);
        assert_eq!(
            r.params,
            SamplingParams {
                steps: 20,
                guidance: 1.0,
                seed: u64::MAX
            }
        );
        for bad in [
            ("steps", "0"),
            ("steps", "51"),
            ("steps", "-1"),
            ("guidance", "NaN"),
            ("guidance", "inf"),
            ("guidance", "31"),
            ("seed", "-3"),
            ("category", "hat"),
            ("resolution", "2048x1536"),
        ] {
            let e = parse_map(&[bad]).expect_err("refused");
            assert!(e.len() < 80, "a short message: {e}");
        }
    }
}
