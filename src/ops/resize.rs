//! Bilinear resize with the semantics of PyTorch's
//! `F.interpolate(mode="bilinear", align_corners=False)` (half-pixel centres, edge clamped).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Resizes `input` (`N×C×H×W`) to `N×C×out_h×out_w`. The source scale is `H / out_h`, which is
/// what PyTorch uses for `size=` and, for exact factors, for `scale_factor=`.
pub fn resize_bilinear(input: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    if super::half_on_cpu(input) {
        return super::in_f32(&[input], |t| resize_bilinear(&t[0], out_h, out_w));
    }
    let _span = super::profile::op("resize", input.device());
    let (_n, _c, h, w) = input.dims4()?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        candle_core::bail!(
            "resize_bilinear: empty size {:?} -> {out_h}×{out_w}",
            input.dims()
        );
    }
    input
        .contiguous()?
        .apply_op1_no_bwd(&ResizeBilinear { out_h, out_w })
}

/// The custom op behind [`resize_bilinear`].
#[derive(Debug, Clone, Copy)]
pub struct ResizeBilinear {
    pub out_h: usize,
    pub out_w: usize,
}

/// Source index pair and the weight of the second one, per output index along one axis.
fn axis_taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// The CPU kernel on a contiguous slice.
pub fn resize_bilinear_cpu(
    input: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let ty = axis_taps(h, out_h);
    let tx = axis_taps(w, out_w);
    let mut out = vec![0f32; n * c * out_h * out_w];
    out.par_chunks_mut(out_h * out_w)
        .enumerate()
        .for_each(|(p, dst)| {
            let src = &input[p * h * w..(p + 1) * h * w];
            for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
                let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
                let row = &mut dst[oy * out_w..(oy + 1) * out_w];
                for (o, &(x0, x1, lx)) in row.iter_mut().zip(&tx) {
                    *o = (1.0 - ly) * ((1.0 - lx) * r0[x0] + lx * r0[x1])
                        + ly * ((1.0 - lx) * r1[x0] + lx * r1[x1]);
                }
            }
        });
    out
}

impl CustomOp1 for ResizeBilinear {
    fn name(&self) -> &'static str {
        "resize_bilinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let input = contiguous_f32(s, l, "resize_bilinear")?;
        let out = resize_bilinear_cpu(input, (n, c, h, w), (self.out_h, self.out_w));
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, c, self.out_h, self.out_w)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{launch_typed, Scalar::I32, RESIZE};
        let (n, c, h, w) = l.shape().dims4()?;
        let (out_h, out_w) = (self.out_h, self.out_w);
        let total = n * c * out_h * out_w;
        // SAFETY: the arguments of `resize_bilinear_*` (each precision), in its order; one thread
        // per output
        // element.
        let out = unsafe {
            launch_typed(
                "resize_bilinear",
                &RESIZE,
                &[(s, l)],
                total,
                total,
                &[n * c, h, w, out_h, out_w].map(|v| I32(v as i32)),
            )
        }?;
        Ok((out, Shape::from((n, c, self.out_h, self.out_w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// PyTorch's `upsample_bilinear2d` (align_corners=False) written out per output pixel.
    fn naive(
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> Vec<f32> {
        let src = |d: usize, i: usize, o: usize| -> f64 {
            let s = (i as f64 / o as f64) * (d as f64 + 0.5) - 0.5;
            s.max(0.0)
        };
        let mut out = vec![0f32; n * c * oh * ow];
        for p in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (sy, sx) = (src(oy, h, oh), src(ox, w, ow));
                    let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
                    let (y0, x0) = (y0.min(h - 1), x0.min(w - 1));
                    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                    let (ly, lx) = (sy - y0 as f64, sx - x0 as f64);
                    let at = |y: usize, xx: usize| x[p * h * w + y * w + xx] as f64;
                    let v = (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
                        + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1));
                    out[p * oh * ow + oy * ow + ox] = v as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_reference() -> Result<()> {
        let dev = Device::Cpu;
        for &(dims, out) in &[
            ((2, 3, 4, 3), (8, 6)),
            ((1, 2, 1, 1), (8, 6)),
            ((1, 1, 5, 7), (10, 14)),
            ((1, 2, 6, 4), (3, 2)),
            ((1, 1, 3, 3), (7, 5)),
        ] {
            let x = Tensor::randn(0f32, 1.0, dims, &dev)?;
            let got = resize_bilinear(&x, out.0, out.1)?;
            assert_eq!(got.dims(), &[dims.0, dims.1, out.0, out.1]);
            let want = naive(&x.flatten_all()?.to_vec1()?, dims, out);
            let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
            for (g, r) in got.iter().zip(&want) {
                assert!((g - r).abs() <= 1e-5 * (1.0 + r.abs()), "{g} vs {r}");
            }
        }
        Ok(())
    }

    #[test]
    fn upsampling_a_single_pixel_broadcasts_it() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[2.5f32]]], [[[-1.0]]]], &dev)?;
        let got = resize_bilinear(&x, 8, 6)?;
        let want = x.broadcast_as((2, 1, 8, 6))?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
