//! The repaint mask from the label maps: CatVTON's `AutoMasker.cloth_agnostic_mask`
//! (`model/cloth_masker.py`), reproduced pixel for pixel with the OpenCV operations of
//! [`crate::imaging::cv`] (checked against the official function by
//! `scripts/fixtures/automasker.py`).
//!
//! For a part, with `d` the dilation kernel (`max(w, h) / 250`, made odd) and `b` the blur
//! kernel (`max(w, h) / 25`, made odd):
//! 1. strong protection: DensePose's hands and feet, dilated by `d` and kept where either parser
//!    sees an arm or a leg, plus LIP's face;
//! 2. weak protection: the strong one, both parsers' hair and accessories (hat, glove,
//!    sunglasses, bag, shoes, scarf, socks), and the part's protected body parts and garments;
//! 3. the candidate area: every pixel that is neither weakly protected nor background to both
//!    parsers, plus the part's DensePose body regions dilated twice by `d` at a quarter of the
//!    size;
//! 4. the filled convex hull of each outer region of that area, less the weak protection;
//! 5. a Gaussian blur by `b` of that (0/255), kept where it reaches 25;
//! 6. plus the part's garments from either parser, less the strong protection, dilated by `d`.
//!
//! Sizes that are not multiples of 4 make the official function fail (its quarter-size map
//! comes back at another size). Here the quarter-size map is brought back to the exact size
//! with the same nearest-neighbour rule (`cv2.resize` to the photo's size), which is what the
//! official function does whenever the size is a multiple of 4. The parity fixtures check
//! that case against the official function with that single resize call redirected.

use anyhow::{ensure, Result};
use image::GrayImage;

use super::labels::{LabelMap, MaskPart};
use crate::imaging::cv;

/// ATR's labels (SCHP trained on ATR, 18 classes).
mod atr {
    pub const BACKGROUND: u8 = 0;
    pub const HAT: u8 = 1;
    pub const HAIR: u8 = 2;
    pub const SUNGLASSES: u8 = 3;
    pub const UPPER_CLOTHES: u8 = 4;
    pub const SKIRT: u8 = 5;
    pub const PANTS: u8 = 6;
    pub const DRESS: u8 = 7;
    pub const LEFT_SHOE: u8 = 9;
    pub const RIGHT_SHOE: u8 = 10;
    pub const FACE: u8 = 11;
    pub const LEFT_LEG: u8 = 12;
    pub const RIGHT_LEG: u8 = 13;
    pub const LEFT_ARM: u8 = 14;
    pub const RIGHT_ARM: u8 = 15;
    pub const BAG: u8 = 16;
    pub const SCARF: u8 = 17;
}

/// LIP's labels (SCHP trained on LIP, 20 classes).
mod lip {
    pub const BACKGROUND: u8 = 0;
    pub const HAT: u8 = 1;
    pub const HAIR: u8 = 2;
    pub const GLOVE: u8 = 3;
    pub const SUNGLASSES: u8 = 4;
    pub const UPPER_CLOTHES: u8 = 5;
    pub const DRESS: u8 = 6;
    pub const COAT: u8 = 7;
    pub const SOCKS: u8 = 8;
    pub const PANTS: u8 = 9;
    pub const JUMPSUITS: u8 = 10;
    pub const SCARF: u8 = 11;
    pub const SKIRT: u8 = 12;
    pub const FACE: u8 = 13;
    pub const LEFT_ARM: u8 = 14;
    pub const RIGHT_ARM: u8 = 15;
    pub const LEFT_LEG: u8 = 16;
    pub const RIGHT_LEG: u8 = 17;
    pub const LEFT_SHOE: u8 = 18;
    pub const RIGHT_SHOE: u8 = 19;
}

/// DensePose's part indices (0 is background).
mod dense {
    pub const TORSO: &[u8] = &[1, 2];
    pub const HANDS_AND_FEET: &[u8] = &[3, 4, 5, 6];
    pub const THIGHS: &[u8] = &[7, 8, 9, 10];
    pub const LEGS: &[u8] = &[11, 12, 13, 14];
    pub const BIG_ARMS: &[u8] = &[15, 16, 17, 18];
    pub const FOREARMS: &[u8] = &[19, 20, 21, 22];
}

/// Labels of both parsers for one purpose.
struct Labels {
    atr: &'static [u8],
    lip: &'static [u8],
}

const ARMS_AND_LEGS: Labels = Labels {
    atr: &[atr::LEFT_ARM, atr::RIGHT_ARM, atr::LEFT_LEG, atr::RIGHT_LEG],
    lip: &[lip::LEFT_ARM, lip::RIGHT_ARM, lip::LEFT_LEG, lip::RIGHT_LEG],
};

const HAIR: Labels = Labels {
    atr: &[atr::HAIR],
    lip: &[lip::HAIR],
};

const ACCESSORIES: Labels = Labels {
    atr: &[
        atr::HAT,
        atr::SUNGLASSES,
        atr::BAG,
        atr::LEFT_SHOE,
        atr::RIGHT_SHOE,
        atr::SCARF,
    ],
    lip: &[
        lip::HAT,
        lip::GLOVE,
        lip::SUNGLASSES,
        lip::LEFT_SHOE,
        lip::RIGHT_SHOE,
        lip::SCARF,
        lip::SOCKS,
    ],
};

/// Body parts the new garment must not cover.
fn protected_body(part: MaskPart) -> Labels {
    match part {
        MaskPart::Upper | MaskPart::Inner | MaskPart::Outer => Labels {
            atr: &[atr::LEFT_LEG, atr::RIGHT_LEG],
            lip: &[lip::LEFT_LEG, lip::RIGHT_LEG],
        },
        MaskPart::Lower => Labels {
            atr: &[atr::RIGHT_ARM, atr::LEFT_ARM, atr::FACE],
            lip: &[lip::RIGHT_ARM, lip::LEFT_ARM, lip::FACE],
        },
        MaskPart::Overall => Labels { atr: &[], lip: &[] },
    }
}

/// Garments that stay.
fn protected_clothes(part: MaskPart) -> Labels {
    match part {
        MaskPart::Upper => Labels {
            atr: &[atr::SKIRT, atr::PANTS],
            lip: &[lip::SKIRT, lip::PANTS],
        },
        MaskPart::Lower => Labels {
            atr: &[atr::UPPER_CLOTHES],
            lip: &[lip::UPPER_CLOTHES, lip::COAT],
        },
        MaskPart::Overall => Labels { atr: &[], lip: &[] },
        MaskPart::Inner => Labels {
            atr: &[atr::DRESS, atr::SKIRT, atr::PANTS],
            lip: &[
                lip::DRESS,
                lip::COAT,
                lip::SKIRT,
                lip::PANTS,
                lip::JUMPSUITS,
            ],
        },
        MaskPart::Outer => Labels {
            atr: &[atr::DRESS, atr::PANTS, atr::SKIRT],
            lip: &[
                lip::UPPER_CLOTHES,
                lip::DRESS,
                lip::PANTS,
                lip::SKIRT,
                lip::JUMPSUITS,
            ],
        },
    }
}

/// Garments that are repainted whatever the hull and blur made of them.
fn masked_clothes(part: MaskPart) -> Labels {
    match part {
        MaskPart::Upper => Labels {
            atr: &[atr::UPPER_CLOTHES, atr::DRESS],
            lip: &[lip::UPPER_CLOTHES, lip::COAT, lip::DRESS, lip::JUMPSUITS],
        },
        MaskPart::Lower => Labels {
            atr: &[atr::PANTS, atr::SKIRT, atr::DRESS],
            lip: &[lip::PANTS, lip::SKIRT, lip::DRESS, lip::JUMPSUITS],
        },
        MaskPart::Overall => Labels {
            atr: &[atr::UPPER_CLOTHES, atr::DRESS, atr::PANTS, atr::SKIRT],
            lip: &[
                lip::UPPER_CLOTHES,
                lip::DRESS,
                lip::PANTS,
                lip::SKIRT,
                lip::COAT,
                lip::JUMPSUITS,
            ],
        },
        MaskPart::Inner => Labels {
            atr: &[atr::UPPER_CLOTHES],
            lip: &[lip::UPPER_CLOTHES],
        },
        MaskPart::Outer => Labels {
            atr: &[],
            lip: &[lip::COAT],
        },
    }
}

/// DensePose regions the garment may cover.
fn masked_body(part: MaskPart) -> Vec<u8> {
    let regions: &[&[u8]] = match part {
        MaskPart::Upper | MaskPart::Outer => &[dense::TORSO, dense::BIG_ARMS, dense::FOREARMS],
        MaskPart::Lower => &[dense::THIGHS, dense::LEGS],
        MaskPart::Overall => &[
            dense::TORSO,
            dense::THIGHS,
            dense::LEGS,
            dense::BIG_ARMS,
            dense::FOREARMS,
        ],
        MaskPart::Inner => &[dense::TORSO],
    };
    regions.concat()
}

/// The official dilation kernel side for a photo: `max(w, h) / 250`, made odd.
pub fn dilation_kernel_size(width: usize, height: usize) -> u32 {
    odd(width.max(height) / 250)
}

/// The official blur kernel side for a photo: `max(w, h) / 25`, made odd.
pub fn blur_kernel_size(width: usize, height: usize) -> u32 {
    odd(width.max(height) / 25)
}

fn odd(n: usize) -> u32 {
    (n | 1) as u32
}

/// The repaint mask (255 repaints, 0 keeps) for `part` from a DensePose map and the LIP and ATR
/// label maps of one photo, all of the photo's size; `cloth_agnostic_mask(densepose, lip, atr,
/// part)` of the official code. An all-background DensePose map (what the server passes, as it
/// has no DensePose model) leaves out the hand and foot protection and the body regions under
/// the garment; the parsers' labels then decide alone.
///
/// # Errors
/// If the maps differ in size or are empty.
pub fn cloth_agnostic_mask(
    densepose: &LabelMap,
    lip: &LabelMap,
    atr: &LabelMap,
    part: MaskPart,
) -> Result<GrayImage> {
    let (width, height) = (densepose.width, densepose.height);
    for (name, map) in [("LIP", lip), ("ATR", atr)] {
        ensure!(
            (map.width, map.height) == (width, height),
            "the {name} map is {}×{}, the DensePose map {width}×{height}",
            map.width,
            map.height
        );
    }
    for map in [densepose, lip, atr] {
        ensure!(
            map.labels.len() == width * height,
            "a label map holds {} labels for {width}×{height}",
            map.labels.len()
        );
    }
    ensure!(width > 0 && height > 0, "the label maps are empty");
    let dilation = dilation_kernel_size(width, height);
    let blur = blur_kernel_size(width, height);

    let in_parsers = |labels: &Labels| -> Vec<bool> {
        lip.labels
            .iter()
            .zip(&atr.labels)
            .map(|(l, a)| labels.lip.contains(l) || labels.atr.contains(a))
            .collect()
    };
    let in_densepose = |regions: &[u8]| -> GrayImage {
        let pixels = densepose
            .labels
            .iter()
            .map(|d| u8::from(regions.contains(d)))
            .collect();
        gray(width, height, pixels)
    };

    // Strong protection: hands and feet where the parsers see limbs, and the face.
    let hands = cv::dilate(&in_densepose(dense::HANDS_AND_FEET), dilation, 1);
    let limbs = in_parsers(&ARMS_AND_LEGS);
    let strong_protect: Vec<bool> = hands
        .as_raw()
        .iter()
        .zip(&limbs)
        .zip(&lip.labels)
        .map(|((&h, &limb), &l)| (h != 0 && limb) || l == lip::FACE)
        .collect();

    // Weak protection: also hair, accessories and the part's protected body and garments.
    let body = in_parsers(&protected_body(part));
    let clothes = in_parsers(&protected_clothes(part));
    let hair = in_parsers(&HAIR);
    let accessories = in_parsers(&ACCESSORIES);
    let weak_protect: Vec<bool> = (0..width * height)
        .map(|i| body[i] || clothes[i] || hair[i] || strong_protect[i] || accessories[i])
        .collect();

    let strong_mask = in_parsers(&masked_clothes(part));
    let background: Vec<bool> = lip
        .labels
        .iter()
        .zip(&atr.labels)
        .map(|(&l, &a)| l == lip::BACKGROUND && a == atr::BACKGROUND)
        .collect();
    let quarter = cv::resize_nearest_by(&in_densepose(&masked_body(part)), 0.25, 0.25);
    let dense_area = cv::resize_nearest(
        &cv::dilate(&quarter, dilation, 2),
        width as u32,
        height as u32,
    );

    let area: Vec<u8> = (0..width * height)
        .map(|i| {
            let candidate = (!weak_protect[i] && !background[i]) || dense_area.as_raw()[i] != 0;
            255 * u8::from(candidate)
        })
        .collect();
    let hulls = cv::fill_external_hulls(&gray(width, height, area));
    let unprotected: Vec<u8> = hulls
        .as_raw()
        .iter()
        .zip(&weak_protect)
        .map(|(&h, &weak)| 255 * u8::from(h != 0 && !weak))
        .collect();
    let blurred = cv::gaussian_blur(&gray(width, height, unprotected), blur);
    let kept: Vec<u8> = blurred
        .as_raw()
        .iter()
        .zip(&strong_mask)
        .zip(&strong_protect)
        .map(|((&b, &garment), &protect)| 255 * u8::from((b >= 25 || garment) && !protect))
        .collect();
    Ok(cv::dilate(&gray(width, height, kept), dilation, 1))
}

fn gray(width: usize, height: usize, pixels: Vec<u8>) -> GrayImage {
    GrayImage::from_raw(width as u32, height as u32, pixels)
        .expect("the buffer holds width × height pixels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sizes_follow_the_photo_size() {
        let sizes = |side| {
            (
                dilation_kernel_size(side, side / 2),
                blur_kernel_size(side / 2, side),
            )
        };
        assert_eq!(sizes(256), (1, 11));
        assert_eq!(sizes(500), (3, 21));
        assert_eq!(sizes(596), (3, 23));
        assert_eq!(sizes(1024), (5, 41));
        assert_eq!(sizes(10), (1, 1));
        assert_eq!(dilation_kernel_size(750, 10), 3); // 3, odd already
        assert_eq!(dilation_kernel_size(192, 256), 1);
    }

    #[test]
    fn maps_of_different_sizes_are_refused() {
        let dense = LabelMap::filled(8, 8, 0);
        let lip = LabelMap::filled(8, 8, lip::UPPER_CLOTHES);
        let atr = LabelMap::filled(8, 4, atr::UPPER_CLOTHES);
        let err = cloth_agnostic_mask(&dense, &lip, &atr, MaskPart::Upper).unwrap_err();
        assert!(err.to_string().contains("ATR"), "{err}");
        let empty = LabelMap::filled(0, 0, 0);
        assert!(cloth_agnostic_mask(&empty, &empty, &empty, MaskPart::Upper).is_err());
    }

    #[test]
    fn sizes_not_divisible_by_four_give_a_mask_of_the_photo_size() {
        for (width, height) in [(1, 1), (3, 2), (37, 53), (383, 511)] {
            let mut dense = LabelMap::filled(width, height, 0);
            dense.labels[..width].fill(dense::TORSO[0]);
            let lip = LabelMap::filled(width, height, lip::UPPER_CLOTHES);
            let atr = LabelMap::filled(width, height, atr::UPPER_CLOTHES);
            for part in MaskPart::ALL {
                let mask = cloth_agnostic_mask(&dense, &lip, &atr, part).expect("mask");
                assert_eq!(mask.dimensions(), (width as u32, height as u32));
            }
        }
    }
}
