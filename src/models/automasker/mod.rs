//! The automatic person mask from human parsers: SCHP trained on ATR and on LIP, whose label
//! maps [`labels`] describes, combined per garment part into the region to repaint.

pub mod labels;
