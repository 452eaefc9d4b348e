//! DensePose, the official AutoMasker's third network (detectron2's `densepose_rcnn_R_50_FPN_s1x`).
//! So far its checkpoint reader: detectron2 publishes its weights as a pickle of numpy arrays
//! ([`checkpoint`]), and its input, resized and normalised bit for bit as the reference does
//! ([`preprocess`]).

pub mod checkpoint;
pub mod preprocess;

pub use checkpoint::read_detectron2_pkl;
