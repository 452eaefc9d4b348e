//! The samplers a request can choose, as diffusers computes them from the model's scheduler
//! config: DDIM (η = 1, ε-prediction, `DDIMScheduler`), with the variance noise supplied by the
//! caller so that each request draws its own; DPM-Solver++ 2M (`DPMSolverMultistepScheduler`
//! with its defaults) and UniPC (`UniPCMultistepScheduler`, bh2, order 2), which draw none but
//! keep their previous steps' data predictions in the request's [`SolverState`].

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

/// The sampler a request asks for (the `scheduler` request option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SchedulerKind {
    /// DDIM, η = 1: the reference's sampler.
    #[default]
    #[serde(rename = "ddim")]
    Ddim,
    /// DPM-Solver++, second order, multistep.
    #[serde(rename = "dpmpp_2m")]
    DpmPp2m,
    /// UniPC: a second-order predictor with a corrector, bh2.
    #[serde(rename = "unipc")]
    UniPc,
}

impl SchedulerKind {
    /// Every sampler, as requests spell them, the default first.
    pub const LABELS: [&'static str; 3] = ["ddim", "dpmpp_2m", "unipc"];

    /// As requests spell it.
    pub fn label(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmPp2m => "dpmpp_2m",
            SchedulerKind::UniPc => "unipc",
        }
    }
}

/// What a request's sampler carries from one step to the next.
#[derive(Debug, Clone)]
pub enum SolverState {
    /// DDIM needs nothing but the step's fresh noise.
    Ddim,
    /// DPM-Solver++ 2M: σ of every step (the last one 0) and the previous step's data
    /// prediction x̂₀, which the second-order update extrapolates from.
    DpmPp2m {
        sigmas: Vec<f32>,
        previous_x0: Option<Tensor>,
    },
    /// UniPC: σ of every step and what its corrector and predictor look back on.
    UniPc {
        sigmas: Vec<f32>,
        memory: UniPcMemory,
    },
}

/// What UniPC carries from one step to the next.
#[derive(Debug, Clone, Default)]
pub struct UniPcMemory {
    /// x̂₀ of the last two steps, the latest last.
    x0s: Vec<Tensor>,
    /// The (corrected) latents the last predictor started from.
    last_sample: Option<Tensor>,
    /// The last predictor's order.
    last_order: usize,
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

/// ᾱ_t for t = 0..num_train_timesteps, in f32 as diffusers keeps them.
fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f32> {
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
    betas
        .iter()
        .map(|beta| {
            product *= 1.0 - *beta as f32;
            product
        })
        .collect()
}

/// The config's spacing, or `default` when it names none. `SchedulerConfig::validate` rejects
/// other spellings before a model is built.
fn spacing_of(config: &SchedulerConfig, default: Spacing) -> Spacing {
    config
        .timestep_spacing
        .as_deref()
        .and_then(Spacing::parse)
        .unwrap_or(default)
}

/// `np.arange(n, 0, -n / steps).round() - 1` for `steps` values: numpy's `arange` steps by the
/// difference of its first two values, and rounds half to even. For a few step counts (61,
/// 103, 121 and 122 of 1000) numpy makes one value more, a timestep of −1 that diffusers then
/// samples at; we stop at `steps`.
fn trailing(n: usize, steps: usize) -> Vec<usize> {
    let start = n as f64;
    let ratio = start / steps as f64;
    let delta = (start - ratio) - start;
    (0..steps)
        .map(|i| (start + i as f64 * delta).round_ties_even() as usize)
        .map(|t| t.saturating_sub(1).min(n - 1))
        .collect()
}

impl Ddim {
    pub fn new(config: &SchedulerConfig) -> Self {
        let alphas_cumprod = alphas_cumprod(config);
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod.first().copied().unwrap_or(1.0)
        };
        Self {
            alphas_cumprod,
            final_alpha_cumprod,
            steps_offset: config.steps_offset,
            spacing: spacing_of(config, Spacing::Leading),
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
            // (−1 indexes ᾱ from the end in DDIM.)
            Spacing::Trailing => trailing(n, steps),
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

/// The timesteps and σ table of the multistep solvers (diffusers computes them alike for
/// `DPMSolverMultistepScheduler` and `UniPCMultistepScheduler`), and DPM-Solver++ 2M as
/// diffusers' `DPMSolverMultistepScheduler` computes it with its defaults
/// (`algorithm_type` "dpmsolver++", `solver_order` 2, `solver_type` "midpoint",
/// `lower_order_final`, `final_sigmas_type` "zero", ε-prediction): the first step and the last
/// (down to σ = 0) are first order, every other one second order. The scalars are computed in
/// f32, as diffusers computes them on its f32 σ table.
#[derive(Debug, Clone)]
pub struct DpmSolver {
    /// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep.
    sigmas: Vec<f32>,
    steps_offset: usize,
    spacing: Spacing,
}

/// `α = 1/√(σ² + 1)` and `σ_t = σ·α` of a step, and its log-SNR `λ = ln α − ln σ_t`.
fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

impl DpmSolver {
    pub fn new(config: &SchedulerConfig) -> Self {
        Self {
            sigmas: alphas_cumprod(config)
                .into_iter()
                .map(|a| ((1.0 - a) / a).sqrt())
                .collect(),
            steps_offset: config.steps_offset,
            spacing: spacing_of(config, Spacing::Linspace),
        }
    }

    /// The timesteps of a `steps`-step sampling, from the noisiest down, as diffusers'
    /// `set_timesteps` computes them (no λ clipping: the last timestep is the last trained
    /// one). `steps` is clamped to between 1 and the training timesteps.
    pub fn timesteps(&self, steps: usize) -> Vec<usize> {
        let n = self.sigmas.len();
        let steps = steps.clamp(1, n);
        match self.spacing {
            // np.linspace(0, n − 1, steps + 1).round()[::-1][:-1]: i·step for i = steps..1,
            // the first exactly n − 1.
            Spacing::Linspace => {
                let step = (n - 1) as f64 / steps as f64;
                (1..=steps)
                    .rev()
                    .map(|i| {
                        if i == steps {
                            n - 1
                        } else {
                            ((i as f64 * step).round_ties_even() as usize).min(n - 1)
                        }
                    })
                    .collect()
            }
            Spacing::Leading => {
                let ratio = n / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset).min(n - 1))
                    .collect()
            }
            Spacing::Trailing => trailing(n, steps),
        }
    }

    /// σ at each of `timesteps`, then the final 0.
    pub fn sigmas(&self, timesteps: &[usize]) -> Vec<f32> {
        timesteps
            .iter()
            .map(|&t| self.sigmas.get(t).copied().unwrap_or(0.0))
            .chain([0.0])
            .collect()
    }

    /// The DPM-Solver++ state of a request about to take its first step.
    pub fn state(&self, timesteps: &[usize]) -> SolverState {
        SolverState::DpmPp2m {
            sigmas: self.sigmas(timesteps),
            previous_x0: None,
        }
    }

    /// The UniPC state of a request about to take its first step.
    pub fn unipc_state(&self, timesteps: &[usize]) -> SolverState {
        SolverState::UniPc {
            sigmas: self.sigmas(timesteps),
            memory: UniPcMemory::default(),
        }
    }

    /// Step `index` of a sampling with σ table `sigmas` (one more entry than steps): from `x`
    /// and the predicted noise `eps`, the next latents and this step's data prediction x̂₀
    /// (to pass back as `previous_x0` on the next step). Second order when the previous step's
    /// x̂₀ is given and this is not the last step.
    pub fn step(
        sigmas: &[f32],
        index: usize,
        x: &Tensor,
        eps: &Tensor,
        previous_x0: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let sigma = |i: usize| {
            sigmas.get(i).copied().ok_or_else(|| {
                candle_core::Error::Msg(format!("step {index} past the {} σ", sigmas.len()))
            })
        };
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(sigma(index)?);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(sigma(index + 1)?);
        let x0 = ((x - (eps * sigma_s0 as f64)?)? / alpha_s0 as f64)?;
        // At σ = 0 (the last step): α_t = 1, λ_t = ∞ and e^{−h} = 0, so x_t = x̂₀.
        let h = lambda_t - lambda_s0;
        let to_x0 = alpha_t * ((-h).exp() - 1.0);
        let keep = (sigma_t / sigma_s0) as f64;
        let last = index + 2 == sigmas.len();
        let first_order = (x * keep)? - (&x0 * to_x0 as f64)?;
        let next = match previous_x0 {
            Some(m1) if !last && index > 0 => {
                let (_, _, lambda_s1) = alpha_sigma_lambda(sigma(index - 1)?);
                let r0 = (lambda_s0 - lambda_s1) / h;
                // D1 = (x̂₀ − x̂₀_prev) / r0, weighted by ½·α_t·(e^{−h} − 1) (midpoint).
                let d1 = ((&x0 - m1)? * (1.0 / r0) as f64)?;
                (first_order? - (d1 * (0.5 * to_x0) as f64)?)?
            }
            _ => first_order?,
        };
        Ok((next, x0))
    }
}

/// UniPC as diffusers' `UniPCMultistepScheduler` computes it with its defaults (`solver_order`
/// 2, `solver_type` "bh2", `predict_x0`, `lower_order_final`, no step without the corrector,
/// `final_sigmas_type` "zero", ε-prediction). Each step first corrects the latents the UNet
/// was given with the new prediction (UniC, from the second step on), then predicts the next
/// ones from the corrected latents (UniP: first order at the first and last step, second order
/// between). Scalars in f32, as diffusers computes them.
pub struct UniPc;

/// The scalars of one UniPC update from step s0 to step t (diffusers' names).
struct UniPcStep {
    /// σ_t / σ_s0 (VP σ), multiplying the latents.
    keep: f32,
    /// α_t·(e^{−h} − 1), multiplying x̂₀.
    to_x0: f32,
    /// α_t·B(h), with bh2's B(h) = e^{−h} − 1, multiplying the higher-order terms.
    alpha_b: f32,
    lambda_s0: f32,
    /// λ_t − λ_s0.
    h: f32,
    /// −h, and e^{−h} − 1.
    hh: f32,
    h_phi_1: f32,
}

impl UniPcStep {
    fn new(sigma_s0: f32, sigma_t: f32) -> Self {
        let (_, sigma_s0, lambda_s0) = alpha_sigma_lambda(sigma_s0);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(sigma_t);
        let h = lambda_t - lambda_s0;
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        Self {
            keep: sigma_t / sigma_s0,
            to_x0: alpha_t * h_phi_1,
            alpha_b: alpha_t * h_phi_1,
            lambda_s0,
            h,
            hh,
            h_phi_1,
        }
    }

    /// `r_k = (λ_{s_k} − λ_{s0}) / h` of an earlier step's σ.
    fn r(&self, sigma: f32) -> f32 {
        (alpha_sigma_lambda(sigma).2 - self.lambda_s0) / self.h
    }

    /// The corrector's weights `ρ` for order 2 with `r` = r_1: the solution of
    /// `[[1, 1], [r, 1]]·ρ = b`, `b_1 = (φ/hh − 1)/B`, `b_2 = 2·((φ/hh − 1)/hh − ½)/B`.
    fn corrector_rhos(&self, r: f32) -> (f32, f32) {
        let b_h = self.h_phi_1;
        let phi_k = self.h_phi_1 / self.hh - 1.0;
        let b1 = phi_k / b_h;
        let b2 = (phi_k / self.hh - 0.5) * 2.0 / b_h;
        let rho0 = (b1 - b2) / (1.0 - r);
        (rho0, b1 - rho0)
    }
}

impl UniPc {
    /// Step `index` of a sampling with σ table `sigmas` (one more entry than steps): from the
    /// latents `x` the UNet was given and its predicted noise `eps`, the next latents.
    pub fn step(
        sigmas: &[f32],
        index: usize,
        x: &Tensor,
        eps: &Tensor,
        memory: &mut UniPcMemory,
    ) -> Result<Tensor> {
        let sigma = |i: usize| {
            sigmas.get(i).copied().ok_or_else(|| {
                candle_core::Error::Msg(format!("step {index} past the {} σ", sigmas.len()))
            })
        };
        let sigma_next = sigma(index + 1)?;
        let steps = sigmas.len() - 1;
        let (alpha_s, sigma_s, _) = alpha_sigma_lambda(sigma(index)?);
        let x0 = ((x - (eps * sigma_s as f64)?)? / alpha_s as f64)?;

        // UniC: correct x with this step's x̂₀, looking back from the previous step.
        let corrected = match (&memory.last_sample, memory.x0s.last()) {
            (Some(last), Some(m0)) if index > 0 => {
                let c = UniPcStep::new(sigma(index - 1)?, sigma(index)?);
                let base = ((last * c.keep as f64)? - (m0 * c.to_x0 as f64)?)?;
                let d1_t = (&x0 - m0)?;
                let correction = match memory.x0s.len() {
                    2 if memory.last_order == 2 && index >= 2 => {
                        let r = c.r(sigma(index - 2)?);
                        let d1 = ((&memory.x0s[0] - m0)? * (1.0 / r) as f64)?;
                        let (rho0, rho1) = c.corrector_rhos(r);
                        ((d1 * rho0 as f64)? + (d1_t * rho1 as f64)?)?
                    }
                    _ => (d1_t * 0.5)?,
                };
                (base - (correction * c.alpha_b as f64)?)?
            }
            _ => x.clone(),
        };

        // The predictor's order: 2 once a previous x̂₀ exists, 1 at the last step.
        let order = 2.min(steps - index).min(memory.x0s.len().min(2) + 1);
        if memory.x0s.len() == 2 {
            memory.x0s.remove(0);
        }
        memory.x0s.push(x0);
        memory.last_order = order;

        // UniP from the corrected latents.
        let p = UniPcStep::new(sigma(index)?, sigma_next);
        let m0 = &memory.x0s[memory.x0s.len() - 1];
        let mut next = ((&corrected * p.keep as f64)? - (m0 * p.to_x0 as f64)?)?;
        if order == 2 {
            let r = p.r(sigma(index - 1)?);
            let d1 = ((&memory.x0s[0] - m0)? * (1.0 / r) as f64)?;
            next = (next - (d1 * (0.5 * p.alpha_b) as f64)?)?;
        }
        memory.last_sample = Some(corrected);
        Ok(next)
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
    fn dpm_solver_follows_diffusers_on_a_three_step_run() {
        // DPMSolverMultistepScheduler.from_config(scheduler.json), set_timesteps(3), stepped
        // with these noise predictions (diffusers 0.29.2, torch 2.1.2): first order, second
        // order, then first order down to σ = 0.
        let dpm = DpmSolver::new(&sd15());
        let timesteps = dpm.timesteps(3);
        assert_eq!(timesteps, vec![999, 666, 333]);
        let sigmas = dpm.sigmas(&timesteps);
        let theirs = [14.614_647f32, 2.918_308_5, 0.932_358_4, 0.0];
        for (ours, theirs) in sigmas.iter().zip(theirs) {
            assert!(
                (ours - theirs).abs() <= 1e-6 * theirs,
                "σ {ours} against {theirs}"
            );
        }
        let dev = candle_core::Device::Cpu;
        let t = |v: [f32; 4]| Tensor::new(&v, &dev).expect("tensor");
        let eps = [
            t([0.3, -0.1, 0.8, 1.5]),
            t([-0.4, 0.2, 0.1, 0.9]),
            t([0.05, -0.6, 0.3, -1.2]),
        ];
        let expected = [
            [3.611_127_4, -9.118_004, -0.658_909_6, 8.558_484],
            [9.088_955, -21.017_958, -1.271_885_5, 18.312_023],
            [12.379_989, -28.176_77, -2.018_655_5, 26.155_407],
        ];
        let mut x = t([1.0, -2.0, 0.5, 3.0]);
        let mut previous = None;
        for (i, (eps, expected)) in eps.iter().zip(expected).enumerate() {
            let (next, x0) = DpmSolver::step(&sigmas, i, &x, eps, previous.as_ref()).expect("step");
            let ours: Vec<f32> = next.to_vec1().expect("values");
            for (a, b) in ours.iter().zip(expected) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs(),
                    "step {i}: {ours:?} against {expected:?}"
                );
            }
            x = next;
            previous = Some(x0);
        }
    }

    #[test]
    fn unipc_follows_diffusers_on_a_four_step_run() {
        // UniPCMultistepScheduler.from_config(scheduler.json), set_timesteps(4), stepped with
        // these noise predictions (diffusers 0.29.2, torch 2.1.2). The steps take, in turn: a
        // first-order predictor; a first-order corrector and a second-order predictor; both
        // second order; a second-order corrector and a first-order predictor down to σ = 0.
        let dpm = DpmSolver::new(&sd15());
        let timesteps = dpm.timesteps(4);
        assert_eq!(timesteps, vec![999, 749, 500, 250]);
        let sigmas = dpm.sigmas(&timesteps);
        let theirs = [14.614_647f32, 4.081_731, 1.618_279_7, 0.695_799_5, 0.0];
        for (ours, theirs) in sigmas.iter().zip(theirs) {
            assert!(
                (ours - theirs).abs() <= 1e-6 * theirs,
                "σ {ours} against {theirs}"
            );
        }
        let dev = candle_core::Device::Cpu;
        let t = |v: [f32; 4]| Tensor::new(&v, &dev).expect("tensor");
        let eps = [
            t([0.3, -0.1, 0.8, 1.5]),
            t([-0.4, 0.2, 0.1, 0.9]),
            t([0.05, -0.6, 0.3, -1.2]),
            t([0.7, 0.4, -0.2, 0.1]),
        ];
        let expected = [
            [2.733_872_7, -6.720_935, -0.262_210_16, 6.697_791],
            [7.100_751_4, -15.339_151, -0.165_417_25, 14.096_414],
            [10.958_023, -23.142_765, -0.447_495_1, 24.134_521],
            [12.862_569, -28.472_029, -0.406_001_7, 29.332_34],
        ];
        let mut x = t([1.0, -2.0, 0.5, 3.0]);
        let mut memory = UniPcMemory::default();
        for (i, (eps, expected)) in eps.iter().zip(expected).enumerate() {
            x = UniPc::step(&sigmas, i, &x, eps, &mut memory).expect("step");
            let ours: Vec<f32> = x.to_vec1().expect("values");
            for (a, b) in ours.iter().zip(expected) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs(),
                    "step {i}: {ours:?} against {expected:?}"
                );
            }
        }
        // Past the table: an error, not a panic.
        assert!(UniPc::step(&sigmas, 4, &x, &eps[0], &mut memory).is_err());
    }

    #[test]
    fn dpm_solver_first_order_is_deterministic_ddim_and_the_last_step_returns_x0() {
        // DPM-Solver++ of order 1 is DDIM with η = 0: √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev)·ε.
        let dpm = DpmSolver::new(&sd15());
        let dev = candle_core::Device::Cpu;
        let x = Tensor::new(&[0.7f32, -1.3, 2.0], &dev).expect("x");
        let eps = Tensor::new(&[0.2f32, 0.5, -0.9], &dev).expect("eps");
        let sigmas = dpm.sigmas(&[800, 400]);
        let (next, x0) = DpmSolver::step(&sigmas, 0, &x, &eps, None).expect("step");
        let alpha = |s: f32| 1.0 / (f64::from(s) * f64::from(s) + 1.0);
        let (a_t, a_prev) = (alpha(sigmas[0]), alpha(sigmas[1]));
        let x0_ddim = ((&x - (&eps * (1.0 - a_t).sqrt()).expect("mul")).expect("sub") / a_t.sqrt())
            .expect("div");
        let ddim = ((&x0_ddim * a_prev.sqrt()).expect("mul")
            + (&eps * (1.0 - a_prev).sqrt()).expect("mul"))
        .expect("add");
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .and_then(|d| d.abs())
                .and_then(|d| d.max_all())
                .and_then(|d| d.to_scalar::<f32>())
                .expect("difference")
        };
        assert!(diff(&next, &ddim) < 1e-5, "{next} against {ddim}");
        assert!(diff(&x0, &x0_ddim) < 1e-5);
        // The last step (to σ = 0) gives x̂₀, even with a previous x̂₀ at hand.
        let (last, x0) = DpmSolver::step(&sigmas, 1, &x, &eps, Some(&x0)).expect("last");
        assert!(diff(&last, &x0) < 1e-6);
        // Past the table: an error, not a panic.
        assert!(DpmSolver::step(&sigmas, 2, &x, &eps, None).is_err());
    }

    #[test]
    fn scheduler_kinds_read_as_requests_spell_them() {
        for label in SchedulerKind::LABELS {
            let kind: SchedulerKind =
                serde_json::from_value(serde_json::Value::from(label)).expect("reads");
            assert_eq!(kind.label(), label);
        }
        assert_eq!(SchedulerKind::default(), SchedulerKind::Ddim);
        assert!(serde_json::from_value::<SchedulerKind>(serde_json::Value::from("euler")).is_err());
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
