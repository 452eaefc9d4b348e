//! Bilinear `grid_sample`, with the semantics of PyTorch's `F.grid_sample(mode="bilinear")`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// What a sample outside the input reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridPadding {
    /// Zero outside the input.
    Zeros,
    /// The nearest edge value (coordinates clamped into the input).
    Border,
}

/// Samples `input` (`N×C×H×W`) at the normalised coordinates of `grid` (`N×Ho×Wo×2`, x then y,
/// -1..1) with bilinear interpolation; answers `N×C×Ho×Wo`.
pub fn grid_sample(
    input: &Tensor,
    grid: &Tensor,
    padding: GridPadding,
    align_corners: bool,
) -> Result<Tensor> {
    if super::half_on_cpu(input) {
        return super::in_f32(&[input, grid], |t| {
            grid_sample(&t[0], &t[1], padding, align_corners)
        });
    }
    let _span = super::profile::op("grid_sample", input.device());
    let (n, _c, _h, _w) = input.dims4()?;
    let (gn, _ho, _wo, two) = grid.dims4()?;
    if gn != n || two != 2 {
        candle_core::bail!(
            "grid_sample: grid {:?} does not match input {:?}",
            grid.dims(),
            input.dims()
        );
    }
    // The CPU computes in f32; a GPU runs the input's own precision. The grid is f32 in every
    // precision (`kernels/grid_sample.cu` says why).
    let input = if input.device().is_cpu() {
        input.to_dtype(candle_core::DType::F32)?
    } else {
        input.clone()
    }
    .contiguous()?;
    let grid = grid.to_dtype(candle_core::DType::F32)?.contiguous()?;
    input.apply_op2_no_bwd(
        &grid,
        &GridSample {
            padding,
            align_corners,
        },
    )
}

/// The custom op behind [`grid_sample`].
#[derive(Debug, Clone, Copy)]
pub struct GridSample {
    pub padding: GridPadding,
    pub align_corners: bool,
}

/// Maps a normalised coordinate to a pixel coordinate along an axis of `size` pixels.
#[inline]
fn unnormalize(coord: f32, size: usize, align_corners: bool) -> f32 {
    if align_corners {
        (coord + 1.0) * 0.5 * (size as f32 - 1.0)
    } else {
        ((coord + 1.0) * size as f32 - 1.0) * 0.5
    }
}

/// One bilinear tap set: four flat indices (or `None` outside) and their weights.
#[derive(Clone, Copy)]
struct Taps {
    index: [Option<usize>; 4],
    weight: [f32; 4],
}

#[inline]
fn taps(gx: f32, gy: f32, h: usize, w: usize, padding: GridPadding, align: bool) -> Taps {
    let mut x = unnormalize(gx, w, align);
    let mut y = unnormalize(gy, h, align);
    if padding == GridPadding::Border {
        x = x.clamp(0.0, (w - 1) as f32);
        y = y.clamp(0.0, (h - 1) as f32);
    }
    let x0 = x.floor();
    let y0 = y.floor();
    let fx = x - x0;
    let fy = y - y0;
    let (x0, y0) = (x0 as i64, y0 as i64);
    let at = |xx: i64, yy: i64| -> Option<usize> {
        (xx >= 0 && yy >= 0 && (xx as usize) < w && (yy as usize) < h)
            .then(|| yy as usize * w + xx as usize)
    };
    Taps {
        index: [
            at(x0, y0),
            at(x0 + 1, y0),
            at(x0, y0 + 1),
            at(x0 + 1, y0 + 1),
        ],
        weight: [
            (1.0 - fx) * (1.0 - fy),
            fx * (1.0 - fy),
            (1.0 - fx) * fy,
            fx * fy,
        ],
    }
}

/// The CPU kernel on contiguous slices; `out` is `N×C×Ho×Wo`.
pub fn grid_sample_cpu(
    input: &[f32],
    grid: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    (ho, wo): (usize, usize),
    padding: GridPadding,
    align_corners: bool,
) -> Vec<f32> {
    let plane_out = ho * wo;
    let mut out = vec![0f32; n * c * plane_out];
    out.par_chunks_mut(c * plane_out)
        .enumerate()
        .for_each(|(b, out_b)| {
            let grid_b = &grid[b * plane_out * 2..(b + 1) * plane_out * 2];
            let taps: Vec<Taps> = grid_b
                .chunks_exact(2)
                .map(|g| taps(g[0], g[1], h, w, padding, align_corners))
                .collect();
            for ch in 0..c {
                let src = &input[(b * c + ch) * h * w..(b * c + ch + 1) * h * w];
                let dst = &mut out_b[ch * plane_out..(ch + 1) * plane_out];
                for (d, t) in dst.iter_mut().zip(&taps) {
                    let mut acc = 0f32;
                    for k in 0..4 {
                        if let Some(i) = t.index[k] {
                            acc += src[i] * t.weight[k];
                        }
                    }
                    *d = acc;
                }
            }
        });
    out
}

impl CustomOp2 for GridSample {
    fn name(&self) -> &'static str {
        "grid_sample"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (_, ho, wo, _) = l2.shape().dims4()?;
        let input = contiguous_f32(s1, l1, "grid_sample")?;
        let grid = contiguous_f32(s2, l2, "grid_sample")?;
        let out = grid_sample_cpu(
            input,
            grid,
            (n, c, h, w),
            (ho, wo),
            self.padding,
            self.align_corners,
        );
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{launch_typed, Scalar::I32, GRID_SAMPLE};
        let (n, c, h, w) = l1.shape().dims4()?;
        let (_, ho, wo, _) = l2.shape().dims4()?;
        let border = self.padding == GridPadding::Border;
        let scalars = [n, c, h, w, ho, wo, border.into(), self.align_corners.into()];
        // SAFETY: the arguments of `grid_sample_bilinear_*` (each precision), in its order; one
        // thread per output
        // pixel writes its `C` channels.
        let out = unsafe {
            launch_typed(
                "grid_sample",
                &GRID_SAMPLE,
                &[(s1, l1), (s2, l2)],
                n * c * ho * wo,
                n * ho * wo,
                &scalars.map(|v| I32(v as i32)),
            )
        }?;
        Ok((out, Shape::from((n, c, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// PyTorch's bilinear `grid_sampler_2d` written out per output pixel, in f64.
    fn naive(
        x: &[f32],
        g: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        (ho, wo): (usize, usize),
        padding: GridPadding,
        align: bool,
    ) -> Vec<f32> {
        let unnorm = |v: f64, size: usize| -> f64 {
            if align {
                (v + 1.0) / 2.0 * (size as f64 - 1.0)
            } else {
                ((v + 1.0) * size as f64 - 1.0) / 2.0
            }
        };
        let mut out = vec![0f32; n * c * ho * wo];
        for b in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let gi = ((b * ho + oy) * wo + ox) * 2;
                    let mut px = unnorm(g[gi] as f64, w);
                    let mut py = unnorm(g[gi + 1] as f64, h);
                    if padding == GridPadding::Border {
                        px = px.clamp(0.0, w as f64 - 1.0);
                        py = py.clamp(0.0, h as f64 - 1.0);
                    }
                    let (x0, y0) = (px.floor(), py.floor());
                    let (fx, fy) = (px - x0, py - y0);
                    for ch in 0..c {
                        let at = |yy: f64, xx: f64| -> f64 {
                            if yy < 0.0 || xx < 0.0 || yy >= h as f64 || xx >= w as f64 {
                                0.0
                            } else {
                                x[((b * c + ch) * h + yy as usize) * w + xx as usize] as f64
                            }
                        };
                        let v = at(y0, x0) * (1.0 - fx) * (1.0 - fy)
                            + at(y0, x0 + 1.0) * fx * (1.0 - fy)
                            + at(y0 + 1.0, x0) * (1.0 - fx) * fy
                            + at(y0 + 1.0, x0 + 1.0) * fx * fy;
                        out[((b * c + ch) * ho + oy) * wo + ox] = v as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_reference_for_both_paddings() -> Result<()> {
        let dev = Device::Cpu;
        for &(dims, out) in &[
            ((2, 3, 7, 5), (6, 4)),
            ((1, 2, 1, 1), (3, 3)),
            ((1, 4, 16, 12), (16, 12)),
        ] {
            let x = Tensor::randn(0f32, 1.0, dims, &dev)?;
            // Coordinates well outside [-1, 1] exercise the padding; exact edges are added below.
            let mut grid: Vec<f32> = Tensor::randn(0f32, 0.9, (dims.0, out.0, out.1, 2), &dev)?
                .flatten_all()?
                .to_vec1()?;
            for (i, edge) in [-1.0f32, 1.0, -1.5, 1.5, 0.0, 1.0].iter().enumerate() {
                if i < grid.len() {
                    grid[i] = *edge;
                }
            }
            let grid_t = Tensor::from_vec(grid.clone(), (dims.0, out.0, out.1, 2), &dev)?;
            for padding in [GridPadding::Zeros, GridPadding::Border] {
                for align in [true, false] {
                    let got: Vec<f32> = grid_sample(&x, &grid_t, padding, align)?
                        .flatten_all()?
                        .to_vec1()?;
                    let want = naive(
                        &x.flatten_all()?.to_vec1()?,
                        &grid,
                        dims,
                        out,
                        padding,
                        align,
                    );
                    for (g, r) in got.iter().zip(&want) {
                        assert!(
                            (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                            "{padding:?} {align}: {g} vs {r}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn identity_grid_with_aligned_corners_reproduces_the_input() -> Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (5usize, 4usize);
        let x = Tensor::randn(0f32, 1.0, (1, 2, h, w), &dev)?;
        let mut grid = Vec::new();
        for y in 0..h {
            for xx in 0..w {
                grid.push(xx as f32 / (w - 1) as f32 * 2.0 - 1.0);
                grid.push(y as f32 / (h - 1) as f32 * 2.0 - 1.0);
            }
        }
        let grid = Tensor::from_vec(grid, (1, h, w, 2), &dev)?;
        for padding in [GridPadding::Zeros, GridPadding::Border] {
            let got = grid_sample(&x, &grid, padding, true)?;
            let diff = (got - &x)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{padding:?}: {diff}");
        }
        Ok(())
    }
}
