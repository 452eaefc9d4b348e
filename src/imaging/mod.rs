//! Images in and out of the models: decoding uploads under limits ([`decode`]), fitting them
//! into the model frame ([`fit`]), tensors ([`tensor`]), encoding answers ([`encode`]), the
//! garment mask of a product photo ([`garment_mask`]), and the backdrop estimate
//! ([`backdrop`]) and binary-mask operations ([`morphology`]) it shares with the masks a model
//! draws, OpenCV's affine warp ([`warp_affine`]) the human parsers use, and OpenCV's mask
//! operations reproduced bit for bit ([`cv`]). The way from a request's bytes to a model's
//! input is `crate::pipeline`'s.

pub mod backdrop;
pub mod cv;
pub mod decode;
pub mod encode;
pub mod fit;
pub mod garment_mask;
pub mod morphology;
pub mod tensor;
pub mod warp_affine;

pub use crate::models::input::{PreparedPair, Rect};
pub use decode::{
    decode, decode_mask, decode_probed, decode_probed_for, probe, sniff_format, ImageError, Probe,
    MAX_ASPECT_RATIO, MAX_SIDE, MODEL_FRAME,
};
pub use encode::{encode, OutputFormat};
pub use fit::{crop, crop_to, fit, fit_mask, fit_rect};
pub use garment_mask::cloth_mask;
pub use tensor::{mask_to_tensor, rgb_to_tensor, tensor_to_rgb};
