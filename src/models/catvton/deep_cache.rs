//! DeepCache (Ma et al., "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024) per
//! request, as the `DeepCache` package's `DeepCacheSDHelper` runs it with its "uniform"
//! schedule: step `i` is a full UNet pass when `i % interval == 0` and keeps the deep features
//! at the chosen skip branch; every other step recomputes only the levels above that branch
//! and reuses the features of the last full step ([`super::UNet::forward_shallow`]).

use candle_core::Tensor;

use super::unet::{SplitPoint, BRANCHES_PER_LEVEL};

/// The longest interval a request may ask for.
pub const MAX_INTERVAL: usize = 10;

/// The deepest branch id: the SD 1.5 UNet's four levels of three branches, numbered as
/// DeepCache's `cache_branch_id`.
pub const MAX_BRANCH: usize = 4 * BRANCHES_PER_LEVEL - 1;

/// A request's DeepCache settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeepCache {
    /// A full pass every `interval` steps; 1 turns caching off.
    pub interval: usize,
    /// DeepCache's `cache_branch_id` (0 = the helper's default: only the outermost up layer
    /// and the convolutions recomputed).
    pub branch: usize,
}

impl DeepCache {
    /// No caching: every step is a full pass.
    pub const OFF: DeepCache = DeepCache {
        interval: 1,
        branch: 0,
    };

    pub fn is_on(&self) -> bool {
        self.interval > 1
    }
}

/// What one request's step asks of the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnetCall {
    /// The whole network.
    Full,
    /// DeepCache's shallow pass from the deep features cached at a split point.
    Shallow(SplitPoint),
}

/// A request's cache: where it splits the UNet, and the deep features of its last full step.
#[derive(Debug, Clone)]
pub struct StepCache {
    pub interval: usize,
    pub point: SplitPoint,
    /// `rows×C×h'×w'` in the UNet's dtype, from the last full step.
    pub deep: Option<Tensor>,
}

impl StepCache {
    /// The pass step `step` takes: full on the interval (and whenever nothing is cached).
    pub fn call(&self, step: usize) -> UnetCall {
        match &self.deep {
            Some(_) if !step.is_multiple_of(self.interval.max(1)) => UnetCall::Shallow(self.point),
            _ => UnetCall::Full,
        }
    }
}
