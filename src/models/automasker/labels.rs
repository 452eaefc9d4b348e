//! Label maps (one class per pixel, as a parser's argmax gives it) and the garment parts a mask
//! is drawn for.

use std::str::FromStr;

/// One label per pixel, row-major, `width × height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u8>,
}

impl LabelMap {
    /// A map of `width × height` filled with `label`.
    pub fn filled(width: usize, height: usize, label: u8) -> Self {
        Self {
            width,
            height,
            labels: vec![label; width * height],
        }
    }

    /// The label at column `x`, row `y`.
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.labels[y * self.width + x]
    }
}

/// The part of the outfit a mask frees for the new garment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskPart {
    Upper,
    Lower,
    Overall,
    Inner,
    Outer,
}

impl MaskPart {
    pub const ALL: [MaskPart; 5] = [
        MaskPart::Upper,
        MaskPart::Lower,
        MaskPart::Overall,
        MaskPart::Inner,
        MaskPart::Outer,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MaskPart::Upper => "upper",
            MaskPart::Lower => "lower",
            MaskPart::Overall => "overall",
            MaskPart::Inner => "inner",
            MaskPart::Outer => "outer",
        }
    }
}

impl FromStr for MaskPart {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MaskPart::ALL
            .into_iter()
            .find(|part| part.as_str() == s)
            .ok_or_else(|| {
                "the part is `upper`, `lower`, `overall`, `inner` or `outer`".to_string()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_read_back_their_wire_names_and_refuse_others() {
        for part in MaskPart::ALL {
            assert_eq!(part.as_str().parse::<MaskPart>(), Ok(part));
        }
        assert!("hat".parse::<MaskPart>().is_err());
    }
}
