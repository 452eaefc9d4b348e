//! The 7×7 cost volume of optical-flow networks (FlowNet / PWC-Net "Correlation" with stride 1,
//! max displacement 3): for each displacement `(dy, dx)` in `−3..=3`, the channel mean of
//! `first[y, x] · second[y + dy, x + dx]`, zero where the displaced pixel falls outside.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Largest displacement in pixels along each axis.
pub const MAX_DISPLACEMENT: usize = 3;
/// Number of displacements, and output channels: `(2·3 + 1)²`.
pub const DISPLACEMENTS: usize = (2 * MAX_DISPLACEMENT + 1) * (2 * MAX_DISPLACEMENT + 1);

/// Correlates `first` and `second` (both `N×C×H×W`); answers `N×49×H×W` where channel
/// `(dy + 3)·7 + (dx + 3)` holds displacement `(dy, dx)`.
pub fn correlation(first: &Tensor, second: &Tensor) -> Result<Tensor> {
    if super::half_on_cpu(first) {
        return super::in_f32(&[first, second], |t| correlation(&t[0], &t[1]));
    }
    let _span = super::profile::op("correlation", first.device());
    if first.dims() != second.dims() || first.rank() != 4 {
        candle_core::bail!(
            "correlation: inputs {:?} and {:?} must be equal N×C×H×W",
            first.dims(),
            second.dims()
        );
    }
    let first = first.contiguous()?;
    let second = second.contiguous()?;
    first.apply_op2_no_bwd(&second, &Correlation)
}

/// The custom op behind [`correlation`].
#[derive(Debug, Clone, Copy)]
pub struct Correlation;

avx2_dispatch! {
    /// [`image_row`] compiled for AVX2 when the CPU has it.
    fn image_row_dispatch(
        first: &[f32],
        second: &[f32],
        chw: (usize, usize, usize),
        y: usize,
        rows: &mut [f32],
    ) => image_row
}

/// The 49 output rows of one image row `y`, as `49×W` in `rows`.
#[inline(always)]
fn image_row(
    first: &[f32],
    second: &[f32],
    (c, h, w): (usize, usize, usize),
    y: usize,
    rows: &mut [f32],
) {
    let r = MAX_DISPLACEMENT as isize;
    let plane = h * w;
    for ch in 0..c {
        let f = &first[ch * plane + y * w..ch * plane + (y + 1) * w];
        for dy in -r..=r {
            let sy = y as isize + dy;
            if sy < 0 || sy as usize >= h {
                continue;
            }
            let s = &second[ch * plane + sy as usize * w..ch * plane + (sy as usize + 1) * w];
            for dx in -r..=r {
                let d = ((dy + r) * (2 * r + 1) + (dx + r)) as usize;
                let out = &mut rows[d * w..(d + 1) * w];
                // Valid x: 0 <= x + dx < w.
                let x0 = (-dx).max(0) as usize;
                let x1 = (w as isize - dx.max(0)).max(0) as usize;
                if x0 >= x1 {
                    continue;
                }
                let sx0 = (x0 as isize + dx) as usize;
                let len = x1 - x0;
                for ((o, a), b) in out[x0..x1]
                    .iter_mut()
                    .zip(&f[x0..x1])
                    .zip(&s[sx0..sx0 + len])
                {
                    *o += a * b;
                }
            }
        }
    }
    let scale = 1.0 / c as f32;
    for v in rows.iter_mut() {
        *v *= scale;
    }
}

/// The CPU kernel on contiguous slices; answers `N×49×H×W`.
pub fn correlation_cpu(
    first: &[f32],
    second: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
) -> Vec<f32> {
    let image = c * h * w;
    let rows: Vec<Vec<f32>> = (0..n * h)
        .into_par_iter()
        .map(|by| {
            let (b, y) = (by / h, by % h);
            let mut rows = vec![0f32; DISPLACEMENTS * w];
            image_row_dispatch(
                &first[b * image..(b + 1) * image],
                &second[b * image..(b + 1) * image],
                (c, h, w),
                y,
                &mut rows,
            );
            rows
        })
        .collect();
    let mut out = vec![0f32; n * DISPLACEMENTS * h * w];
    for (by, rows) in rows.iter().enumerate() {
        let (b, y) = (by / h, by % h);
        for d in 0..DISPLACEMENTS {
            let at = ((b * DISPLACEMENTS + d) * h + y) * w;
            out[at..at + w].copy_from_slice(&rows[d * w..(d + 1) * w]);
        }
    }
    out
}

impl CustomOp2 for Correlation {
    fn name(&self) -> &'static str {
        "correlation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let first = contiguous_f32(s1, l1, "correlation")?;
        let second = contiguous_f32(s2, l2, "correlation")?;
        let out = correlation_cpu(first, second, (n, c, h, w));
        Ok((CpuStorage::F32(out), Shape::from((n, DISPLACEMENTS, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{launch_typed, Scalar::I32, CORRELATION};
        let (n, c, h, w) = l1.shape().dims4()?;
        // SAFETY: the arguments of `correlation7_*` (each precision), in its order; one thread per
        // pixel writes
        // its 49 displacements.
        let out = unsafe {
            launch_typed(
                "correlation",
                &CORRELATION,
                &[(s1, l1), (s2, l2)],
                n * DISPLACEMENTS * h * w,
                n * h * w,
                &[n, c, h, w].map(|v| I32(v as i32)),
            )
        }?;
        Ok((out, Shape::from((n, DISPLACEMENTS, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn naive(f: &[f32], s: &[f32], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<f32> {
        let mut out = vec![0f32; n * 49 * h * w];
        for b in 0..n {
            for dy in -3i64..=3 {
                for dx in -3i64..=3 {
                    let d = ((dy + 3) * 7 + dx + 3) as usize;
                    for y in 0..h as i64 {
                        for x in 0..w as i64 {
                            let (sy, sx) = (y + dy, x + dx);
                            let mut acc = 0f64;
                            if sy >= 0 && sx >= 0 && sy < h as i64 && sx < w as i64 {
                                for ch in 0..c {
                                    let fi = ((b * c + ch) * h + y as usize) * w + x as usize;
                                    let si = ((b * c + ch) * h + sy as usize) * w + sx as usize;
                                    acc += f[fi] as f64 * s[si] as f64;
                                }
                            }
                            out[((b * 49 + d) * h + y as usize) * w + x as usize] =
                                (acc / c as f64) as f32;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_reference() -> Result<()> {
        let dev = Device::Cpu;
        // Includes images smaller than the 7×7 window, where most displacements fall outside.
        for &dims in &[(2, 5, 8, 6), (1, 16, 3, 2), (1, 1, 1, 1), (2, 7, 11, 9)] {
            let f = Tensor::randn(0f32, 1.0, dims, &dev)?;
            let s = Tensor::randn(0f32, 1.0, dims, &dev)?;
            let got = correlation(&f, &s)?;
            assert_eq!(got.dims(), &[dims.0, 49, dims.2, dims.3]);
            let want = naive(
                &f.flatten_all()?.to_vec1()?,
                &s.flatten_all()?.to_vec1()?,
                dims,
            );
            let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                    "at {i}: {g} vs {r}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn centre_channel_is_the_channel_mean_of_products() -> Result<()> {
        let dev = Device::Cpu;
        let f = Tensor::randn(0f32, 1.0, (1, 4, 5, 5), &dev)?;
        let s = Tensor::randn(0f32, 1.0, (1, 4, 5, 5), &dev)?;
        let got = correlation(&f, &s)?.narrow(1, 24, 1)?;
        let want = (&f * &s)?.mean_keepdim(1)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }

    #[test]
    fn rejects_mismatched_inputs() -> Result<()> {
        let dev = Device::Cpu;
        let f = Tensor::zeros((1, 4, 5, 5), candle_core::DType::F32, &dev)?;
        let s = Tensor::zeros((1, 4, 5, 6), candle_core::DType::F32, &dev)?;
        assert!(correlation(&f, &s).is_err());
        Ok(())
    }
}
