//! The DDIM sampler (η = 1, ε-prediction), as diffusers' `DDIMScheduler` computes it, with the
//! variance noise supplied by the caller so that each request draws its own.

use candle_core::{Result, Tensor};

use super::config::SchedulerConfig;

/// The noise schedule of the trained model.
#[derive(Debug, Clone)]
pub struct Ddim {
    /// ᾱ_t for t = 0..num_train_timesteps, in f32 as diffusers keeps them.
    alphas_cumprod: Vec<f32>,
    /// ᾱ used past the last step (`set_alpha_to_one` false: ᾱ_0).
    final_alpha_cumprod: f32,
    steps_offset: usize,
    spacing: Spacing,
}

/// How the sampling timesteps are spread over the training ones (diffusers'
/// `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Multiples of `train / steps` (integer division), shifted by `steps_offset`.
    Leading,
    /// Down from the last training timestep in strides of `train / steps` (real division).
    Trailing,
    /// `steps` evenly spaced values from 0 to the last training timestep, rounded.
    Linspace,
}

impl Spacing {
    /// From the config's spelling; `None` for spacings we do not implement.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "leading" => Some(Spacing::Leading),
            "trailing" => Some(Spacing::Trailing),
            "linspace" => Some(Spacing::Linspace),
            _ => None,
        }
    }
}

/// The scalar factors of one DDIM update `x_t → x_{t-Δ}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepFactors {
    /// Multiplies `x_t` in `x̂₀ = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t`.
    pub sqrt_alpha_prod: f64,
    pub sqrt_beta_prod: f64,
    /// √ᾱ_prev, multiplying x̂₀.
    pub sqrt_alpha_prev: f64,
    /// √(1 − ᾱ_prev − σ²), multiplying ε.
    pub direction: f64,
    /// σ_t = η·√variance, multiplying the variance noise.
    pub sigma: f64,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig) -> Self {
        let n = config.num_train_timesteps;
        let betas: Vec<f64> = match &config.trained_betas {
            Some(b) => b.clone(),
            None if config.beta_schedule == "scaled_linear" => {
                let (a, b) = (config.beta_start.sqrt(), config.beta_end.sqrt());
                linspace(a, b, n).into_iter().map(|x| x * x).collect()
            }
            None => linspace(config.beta_start, config.beta_end, n),
        };
        let mut product = 1f32;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|beta| {
                product *= 1.0 - *beta as f32;
                product
            })
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod.first().copied().unwrap_or(1.0)
        };
        Self {
            alphas_cumprod,
            final_alpha_cumprod,
            steps_offset: config.steps_offset,
            // `SchedulerConfig::validate` rejects other spellings before a model is built.
            spacing: Spacing::parse(&config.timestep_spacing).unwrap_or(Spacing::Leading),
        }
    }

    /// Number of training timesteps.
    pub fn train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// The timesteps of a `steps`-step sampling, from the noisiest down, exactly as diffusers'
    /// `set_timesteps` computes them with numpy: real values are rounded half to even, and
    /// `arange` steps by the difference of its first two values. `steps` is clamped to between
    /// 1 and the training timesteps.
    pub fn timesteps(&self, steps: usize) -> Vec<usize> {
        let n = self.train_timesteps();
        let steps = steps.clamp(1, n);
        let last = n - 1;
        match self.spacing {
            Spacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset).min(last))
                    .collect()
            }
            Spacing::Trailing => {
                // np.arange(n, 0, -n / steps) is start + i·delta. For 61, 103, 121 and 122
                // steps its float length is one more and diffusers appends a timestep of −1
                // (which indexes ᾱ from the end); we stop at `steps`.
                let start = n as f64;
                let ratio = start / steps as f64;
                let delta = (start - ratio) - start;
                (0..steps)
                    .map(|i| (start + i as f64 * delta).round_ties_even() as usize)
                    .map(|t| t.saturating_sub(1).min(last))
                    .collect()
            }
            Spacing::Linspace => {
                // np.linspace(0, n - 1, steps): i·step, the last value exactly n − 1.
                let step = last as f64 / (steps - 1).max(1) as f64;
                (0..steps)
                    .rev()
                    .map(|i| {
                        if i + 1 == steps && steps > 1 {
                            last
                        } else {
                            ((i as f64 * step).round_ties_even() as usize).min(last)
                        }
                    })
                    .collect()
            }
        }
    }

    fn alpha(&self, t: Option<usize>) -> f64 {
        match t {
            Some(t) => self
                .alphas_cumprod
                .get(t)
                .copied()
                .unwrap_or(self.final_alpha_cumprod) as f64,
            None => self.final_alpha_cumprod as f64,
        }
    }

    /// The factors of the step from timestep `t` in a `steps`-step sampling (η = 1).
    pub fn factors(&self, t: usize, steps: usize) -> StepFactors {
        let delta = self.train_timesteps() / steps.max(1);
        let prev = t.checked_sub(delta);
        let alpha_prod = self.alpha(Some(t));
        let alpha_prev = self.alpha(prev);
        let beta_prod = 1.0 - alpha_prod;
        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta_prod) * (1.0 - alpha_prod / alpha_prev);
        let sigma = variance.max(0.0).sqrt();
        StepFactors {
            sqrt_alpha_prod: alpha_prod.sqrt(),
            sqrt_beta_prod: beta_prod.sqrt(),
            sqrt_alpha_prev: alpha_prev.sqrt(),
            direction: (1.0 - alpha_prev - sigma * sigma).max(0.0).sqrt(),
            sigma,
        }
    }

    /// One update: `x_{t-Δ}` from `x_t`, the predicted noise `eps` and fresh `noise`.
    pub fn step(&self, f: StepFactors, x: &Tensor, eps: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let x0 = ((x - (eps * f.sqrt_beta_prod)?)? / f.sqrt_alpha_prod)?;
        let prev = ((x0 * f.sqrt_alpha_prev)? + (eps * f.direction)?)?;
        prev + (noise * f.sigma)?
    }
}

/// `n` evenly spaced values from `a` to `b` inclusive.
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![a; n];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n).map(|i| a + step * i as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> SchedulerConfig {
        serde_json::from_str(
            r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
                "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#,
        )
        .expect("parses")
    }

    #[test]
    fn leading_timesteps_follow_diffusers() {
        let ddim = Ddim::new(&sd15());
        assert_eq!(ddim.timesteps(4), vec![751, 501, 251, 1]);
        let fifty = ddim.timesteps(50);
        assert_eq!(fifty.len(), 50);
        assert_eq!((fifty[0], fifty[1], fifty[49]), (981, 961, 1));
    }

    #[test]
    fn the_last_step_lands_on_the_final_alpha_and_the_schedule_decreases() {
        let ddim = Ddim::new(&sd15());
        // ᾱ_0 = 1 − β_0 = 1 − 0.00085.
        let last = ddim.factors(1, 4);
        assert!((last.sqrt_alpha_prev - (1.0f64 - 0.00085).sqrt()).abs() < 1e-6);
        let first = ddim.factors(751, 4);
        assert!(first.sqrt_alpha_prod < last.sqrt_alpha_prod);
        assert!(first.sigma > 0.0 && first.direction > 0.0);
    }
}
