//! DensePose, the official AutoMasker's third network (detectron2's `densepose_rcnn_R_50_FPN_s1x`).
//! So far its checkpoint reader: detectron2 publishes its weights as a pickle of numpy arrays
//! ([`checkpoint`]), its input, resized and normalised bit for bit as the reference does
//! ([`preprocess`]), and the box and region operations between its networks ([`boxes`],
//! [`roi_align`]).

/// Box regression, clipping, top-k and NMS as detectron2 and torchvision compute them.
pub mod boxes;
pub mod checkpoint;
pub mod preprocess;
/// ROIAlign and the FPN ROIPooler, as torchvision's CPU kernel computes them.
pub mod roi_align;

pub use checkpoint::read_detectron2_pkl;
