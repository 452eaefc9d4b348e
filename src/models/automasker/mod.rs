//! The automatic person mask from human parsers: SCHP trained on ATR and on LIP ([`schp`]),
//! whose label maps [`labels`] describes, combined per garment part into the region to repaint
//! as CatVTON's `AutoMasker` does ([`combine`]).

pub mod combine;
pub mod densepose;
pub mod labels;
pub mod layers;
pub mod schp;

pub use combine::cloth_agnostic_mask;
pub use labels::{LabelMap, MaskPart};

/// The two parsers' label maps for one person photo, each at the photo's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPerson {
    /// SCHP trained on ATR: 18 labels.
    pub atr: LabelMap,
    /// SCHP trained on LIP: 20 labels.
    pub lip: LabelMap,
}

/// Human parsers that label a batch of person photos on their device.
pub trait HumanParsers: Send + Sync {
    /// Label maps for each photo, in order. Photos may differ in size.
    fn parse(&self, photos: &[image::RgbImage]) -> anyhow::Result<Vec<ParsedPerson>>;
}
