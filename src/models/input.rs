//! What the models take: the frame size, and one request's inputs fitted into it. Imaging
//! produces these and the batcher stacks them; neither needs the other.

use candle_core::Tensor;

/// Model input height in pixels (the networks' native resolution).
pub const MODEL_HEIGHT: usize = 256;
/// Model input width in pixels.
pub const MODEL_WIDTH: usize = 192;

/// The part of a fitted image that holds the original picture (the rest is padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// One request's inputs, fitted to the model frame, as 8-bit `H×W×C` CPU tensors.
#[derive(Debug, Clone)]
pub struct PreparedPair {
    /// `H×W×3`.
    pub person: Tensor,
    /// `H×W×3`.
    pub cloth: Tensor,
    /// `H×W×1`, white = garment.
    pub cloth_mask: Tensor,
    /// Where the person picture lies in the frame; the answer is cropped to it.
    pub content: Rect,
}
