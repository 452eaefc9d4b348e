//! A tiny step model for tests: it answers the person photo, resized to its frame, after the
//! number of steps the request asks for. It needs no weights and no device work, so tests can
//! drive step-level batching, the options and every entry point through the model interface.
//! Hidden from listings.

use std::time::{Duration, Instant};

use candle_core::Tensor;
use image::imageops::{self, FilterType};

use super::{
    InputSpec, LoadRequest, LoadedModel, ModelError, ModelFamily, ModelInput, OptionKind,
    OptionLimits, OptionSpec, RequestOptions, StepGroup, StepModel, StepState, WarmUp,
};

/// Its frame, `(height, width)`.
pub const FRAME: (u32, u32) = (64, 48);

/// The registry entry.
pub struct Family;

#[derive(serde::Deserialize)]
struct Options {
    steps: usize,
    step_ms: u64,
}

/// The longest pause a step may take, in milliseconds.
const MAX_STEP_MS: u64 = 1000;

impl ModelFamily for Family {
    fn name(&self) -> &'static str {
        "identity_steps"
    }

    fn about(&self) -> &'static str {
        "test model: answers the person photo after the steps asked for"
    }

    fn hidden(&self) -> bool {
        true
    }

    fn options(&self, limits: &OptionLimits) -> Vec<OptionSpec> {
        vec![
            OptionSpec {
                name: "steps",
                kind: OptionKind::Integer {
                    min: 1,
                    max: limits.max_steps.max(1) as u64,
                    default: 3.min(limits.max_steps.max(1)) as u64,
                },
                help: "Steps before the answer (at most --max-steps).",
            },
            OptionSpec {
                name: "step_ms",
                kind: OptionKind::Integer {
                    min: 0,
                    max: MAX_STEP_MS,
                    default: 0,
                },
                help: "Milliseconds each step takes, so that tests can watch a job's progress.",
            },
        ]
    }

    fn input(&self, _options: &RequestOptions) -> InputSpec {
        InputSpec {
            frame: FRAME,
            fit_person: |img, (h, w)| (imageops::resize(img, w, h, FilterType::Triangle), None),
            fit_cloth: |img, (h, w)| imageops::resize(img, w, h, FilterType::Triangle),
            garment_mask: None,
            person_mask: None,
        }
    }

    fn load(&self, _request: &LoadRequest<'_>) -> Result<LoadedModel, ModelError> {
        Ok(LoadedModel::Steps(Box::new(IdentitySteps)))
    }
}

/// The model.
pub struct IdentitySteps;

/// One request: its answer, and its steps.
struct Walk {
    image: Tensor,
    done: usize,
    total: usize,
    step_ms: u64,
}

impl StepState for Walk {
    fn rows(&self) -> usize {
        1
    }

    fn group(&self) -> StepGroup {
        let d = self.image.dims();
        StepGroup {
            size: (d[0], d[1]),
            variant: None,
        }
    }

    fn is_done(&self) -> bool {
        self.done >= self.total
    }

    fn progress(&self) -> (usize, usize) {
        (self.done, self.total)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn not_ours() -> ModelError {
    ModelError::WrongInput("a request of this model".into())
}

impl StepModel for IdentitySteps {
    fn name(&self) -> &str {
        "identity_steps"
    }

    fn rows(&self, _input: &ModelInput) -> Result<usize, ModelError> {
        Ok(1)
    }

    fn begin(&self, input: &ModelInput) -> Result<Box<dyn StepState>, ModelError> {
        let options: Options = input.options.read().map_err(ModelError::Options)?;
        Ok(Box::new(Walk {
            image: input.person.clone(),
            done: 0,
            total: options.steps,
            step_ms: options.step_ms,
        }))
    }

    fn step(&self, states: &mut [&mut Box<dyn StepState>]) -> Result<(), ModelError> {
        let mut pause = 0;
        for state in states.iter_mut() {
            let walk = state
                .as_any_mut()
                .downcast_mut::<Walk>()
                .ok_or_else(not_ours)?;
            if walk.is_done() {
                return Err(ModelError::WrongInput("a request with steps left".into()));
            }
            walk.done += 1;
            pause = pause.max(walk.step_ms);
        }
        std::thread::sleep(Duration::from_millis(pause));
        Ok(())
    }

    fn finish(&self, state: &dyn StepState) -> Result<Tensor, ModelError> {
        let walk = state.as_any().downcast_ref::<Walk>().ok_or_else(not_ours)?;
        Ok(walk.image.clone())
    }

    fn warm_up(&self, _row_cap: usize) -> Result<WarmUp, ModelError> {
        let started = Instant::now();
        let took = started.elapsed().max(Duration::from_micros(1));
        Ok(WarmUp {
            seconds_per_request: took.as_secs_f64(),
            longest_call: took,
            longest_call_estimate: took,
        })
    }
}
