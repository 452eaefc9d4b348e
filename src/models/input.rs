//! What the models take: the inputs a model asks for ([`InputSpec`]), and one request's inputs
//! fitted as asked ([`ModelInput`]). The pipeline produces these and the batcher queues them;
//! neither needs the other.

use candle_core::Tensor;
use image::{GrayImage, RgbImage};

use super::RequestOptions;

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

/// One request's inputs as a model reads them: its images fitted as the model's [`InputSpec`]
/// asks, as 8-bit `H×W×C` CPU tensors, and its checked options.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// `H×W×3`.
    pub person: Tensor,
    /// `H×W×3`.
    pub cloth: Tensor,
    /// `H×W×1`, white = garment, when the model reads one.
    pub garment_mask: Option<Tensor>,
    /// `H×W×1`, white = repaint, when the model reads one.
    pub person_mask: Option<Tensor>,
    /// Where the person picture lies in the answer, which is cropped to it; `None`: the whole
    /// answer.
    pub content: Option<Rect>,
    pub options: RequestOptions,
}

impl From<PreparedPair> for ModelInput {
    fn from(p: PreparedPair) -> Self {
        ModelInput {
            person: p.person,
            cloth: p.cloth,
            garment_mask: Some(p.cloth_mask),
            person_mask: None,
            content: Some(p.content),
            options: RequestOptions::default(),
        }
    }
}

/// `(height, width)` in pixels.
pub type Frame = (u32, u32);

/// What a model needs from a request's images: the frame they are fitted to, how each is
/// fitted, and which masks it reads. The pipeline provides exactly this.
#[derive(Clone, Copy)]
pub struct InputSpec {
    /// Large JPEGs are decoded at a reduced scale that still covers the frame.
    pub frame: Frame,
    /// Fits the person photo into the frame; answers where the picture lies in it when the
    /// answer is to be cropped back to it.
    pub fit_person: fn(&RgbImage, Frame) -> (RgbImage, Option<Rect>),
    /// Fits the garment photo into the frame.
    pub fit_cloth: fn(&RgbImage, Frame) -> RgbImage,
    pub garment_mask: Option<GarmentMaskSpec>,
    pub person_mask: Option<PersonMaskSpec>,
}

/// How a model reads a garment mask (white = garment).
#[derive(Clone, Copy)]
pub struct GarmentMaskSpec {
    /// Fits an uploaded mask where its garment photo, decoded at `garment_size` (`w, h`), lies
    /// in the frame.
    pub fit: fn(&GrayImage, (u32, u32), Frame) -> GrayImage,
    /// The mask of a fitted garment photo, for a request that sends none.
    pub derive: fn(&RgbImage) -> GrayImage,
}

/// How a model reads the area of the person photo to repaint (white = repaint). An uploaded
/// one must have the person photo's size.
#[derive(Clone, Copy)]
pub struct PersonMaskSpec {
    /// Fits an uploaded mask as the person photo was fitted.
    pub fit: fn(&GrayImage, Frame) -> GrayImage,
    /// Draws the area from the fitted person photo and the request's options, for a request
    /// that sends none.
    pub draw: fn(&RgbImage, &RequestOptions) -> Result<GrayImage, String>,
}

impl InputSpec {
    /// The networks' native frame, [`MODEL_HEIGHT`]×[`MODEL_WIDTH`]: both photos letterboxed
    /// on white (the answer is cropped back to the person photo), and a garment mask fitted
    /// where its garment lies, or derived from the garment photo on its backdrop.
    pub fn letterboxed() -> InputSpec {
        InputSpec {
            frame: (MODEL_HEIGHT as u32, MODEL_WIDTH as u32),
            fit_person: |img, _| {
                let (fitted, content) = crate::imaging::fit(img);
                (fitted, Some(content))
            },
            fit_cloth: |img, _| crate::imaging::fit(img).0,
            garment_mask: Some(GarmentMaskSpec {
                fit: |mask, garment_size, _| crate::imaging::fit_mask(mask, garment_size),
                derive: crate::imaging::cloth_mask,
            }),
            person_mask: None,
        }
    }
}
