//! One uploaded image on its own: the fuzz input is the image's bytes, which go through
//! `imaging::probe`, then `decode_probed`, `fit` and `cloth_mask`, and `fit_mask` as the mask
//! of a garment of the image's own decoded size, as the pipeline chains them. Errors are expected; a panic, an abort,
//! running out of memory or time, a decoded size the probe did not announce, or fitted images
//! of the wrong size are findings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtualfit::imaging;
use virtualfit::models::{MODEL_HEIGHT, MODEL_WIDTH};

const MAX_PIXELS: u64 = 4_000_000;
/// The decode budget of the `upload` target: larger bounds are refused before decoding there.
const DECODE_BUDGET: u64 = 256 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(probe) = imaging::probe(data, MAX_PIXELS) else {
        return;
    };
    if probe.decode_bytes() > DECODE_BUDGET {
        return;
    }
    let frame = (MODEL_WIDTH as u32, MODEL_HEIGHT as u32);
    let Ok(decoded) = imaging::decode_probed(data, &probe) else {
        return;
    };
    let size = decoded.dimensions();
    let (fitted, rect) = imaging::fit(&decoded);
    assert_eq!(fitted.dimensions(), frame);
    assert!(
        rect.width >= 1 && rect.height >= 1,
        "empty content {rect:?}"
    );
    assert!(rect.x + rect.width <= frame.0 && rect.y + rect.height <= frame.1);
    // The decoded size is the probe's (a JPEG scaled down by its DCT), or the stored size where
    // the scaled JPEG decoder gives way to the full one; EXIF orientation may swap the sides.
    let (dw, dh) = probe.decoded_size();
    let (sw, sh) = (probe.width, probe.height);
    assert!(
        [(dw, dh), (dh, dw), (sw, sh), (sh, sw)].contains(&size),
        "decoded {size:?}; the probe said {:?}, stored {:?}",
        (dw, dh),
        (sw, sh)
    );
    let mask = imaging::cloth_mask(&fitted);
    assert_eq!(mask.dimensions(), frame);
    if let Ok(mask) = imaging::decode_mask(data, MAX_PIXELS) {
        assert_eq!(imaging::fit_mask(&mask, size).dimensions(), frame);
    }
});
