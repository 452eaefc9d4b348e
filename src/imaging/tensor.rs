//! Images as 8-bit `H×W×C` tensors on the CPU and back: the batcher converts whole batches to
//! the model's layout on the device.

use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage};

/// An RGB image as an 8-bit `H×W×3` tensor (the batcher converts batches on the device).
pub fn rgb_to_tensor(img: RgbImage) -> candle_core::Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    Tensor::from_vec(img.into_raw(), (h, w, 3), &Device::Cpu)
}

/// A mask as an 8-bit `H×W×1` tensor (white = garment).
pub fn mask_to_tensor(mask: GrayImage) -> candle_core::Result<Tensor> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    Tensor::from_vec(mask.into_raw(), (h, w, 1), &Device::Cpu)
}

/// An 8-bit `H×W×3` tensor (as the models' answers come back) as an RGB image.
pub fn tensor_to_rgb(t: &Tensor) -> candle_core::Result<RgbImage> {
    let (h, w, c) = t.dims3()?;
    if c != 3 || t.dtype() != candle_core::DType::U8 {
        candle_core::bail!(
            "expected an H×W×3 u8 image, got {:?} {:?}",
            t.dtype(),
            t.dims()
        );
    }
    let data = t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u8>()?;
    RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| candle_core::Error::Msg("image buffer size mismatch".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn tensor_round_trip_is_lossless() {
        let img = RgbImage::from_fn(7, 5, |x, y| Rgb([(x * 30) as u8, (y * 50) as u8, 200]));
        let t = rgb_to_tensor(img.clone()).expect("tensor");
        assert_eq!(t.dims(), &[5, 7, 3]);
        assert_eq!(tensor_to_rgb(&t).expect("image"), img);
    }
}
