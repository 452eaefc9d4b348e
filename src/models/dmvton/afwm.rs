//! The warp module, `MobileAFWM`: two feature pyramids and `aflow_net`, which estimates the
//! garment-to-person appearance flow coarse to fine over five pyramid levels.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::fpn::{MobileFpn, FPN_DIM};
use super::layers::{Activation, Conv, ConvConfig};
use crate::ops::{correlation, grid_sample, profile, resize_bilinear, GridPadding};

/// Number of pyramid levels.
pub const LEVELS: usize = 5;
const LEAKY: Activation = Activation::LeakyRelu(0.1);

/// Four 3×3 convolutions (`c_in`→128→64→32→2) with LeakyReLU(0.1) between them: the flow head
/// of `netMain` and `netRefine`.
#[derive(Debug, Clone)]
pub struct FlowHead {
    convs: [Conv; 4],
}

impl FlowHead {
    fn new(vb: VarBuilder, c_in: usize) -> Result<Self> {
        let conv = |i: usize, ci: usize, co: usize, activation: Activation| {
            let cfg = ConvConfig {
                padding: 1,
                activation,
                ..Default::default()
            };
            Conv::new(vb.pp(i.to_string()), ci, co, 3, cfg)
        };
        Ok(Self {
            convs: [
                conv(0, c_in, 128, LEAKY)?,
                conv(2, 128, 64, LEAKY)?,
                conv(4, 64, 32, LEAKY)?,
                conv(6, 32, 2, Activation::None)?,
            ],
        })
    }
}

impl Module for FlowHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.convs.iter().try_fold(x.clone(), |h, c| c.forward(&h))
    }
}

/// Turns a pixel offset field (`N×2×H×W`, x then y) into a sampling grid (`N×H×W×2`, in
/// [-1, 1] with aligned corners): `(index + offset) / ((size − 1) / 2) − 1`. The grid is f32
/// whatever the offset's precision: pixel positions in half precision would be pixels off
/// (bf16 has half-pixel steps past 64), so the flow stays f32 in every precision.
pub fn apply_offset(offset: &Tensor) -> Result<Tensor> {
    let offset = offset.to_dtype(DType::F32)?;
    let (_n, _two, h, w) = offset.dims4()?;
    let dev = offset.device();
    let xs = Tensor::arange(0u32, w as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((1, 1, w))?;
    let ys = Tensor::arange(0u32, h as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((1, h, 1))?;
    let gx = offset.narrow(1, 0, 1)?.squeeze(1)?.broadcast_add(&xs)?;
    let gy = offset.narrow(1, 1, 1)?.squeeze(1)?.broadcast_add(&ys)?;
    let gx = ((gx / ((w as f64 - 1.0) / 2.0))? - 1.0)?;
    let gy = ((gy / ((h as f64 - 1.0) / 2.0))? - 1.0)?;
    Tensor::stack(&[gx, gy], 3)
}

/// `N×2×H×W` flow as an `N×H×W×2` grid.
fn as_grid(flow: &Tensor) -> Result<Tensor> {
    flow.permute((0, 2, 3, 1))
}

/// `aflow_net`: per level a correlation → `netMain` → flow composition → `netRefine`.
#[derive(Debug, Clone)]
pub struct AFlowNet {
    main: Vec<FlowHead>,
    refine: Vec<FlowHead>,
}

impl AFlowNet {
    fn new(vb: VarBuilder) -> Result<Self> {
        let main = (0..LEVELS)
            .map(|i| FlowHead::new(vb.pp(format!("netMain.{i}")), 49))
            .collect::<Result<Vec<_>>>()?;
        let refine = (0..LEVELS)
            .map(|i| FlowHead::new(vb.pp(format!("netRefine.{i}")), 2 * FPN_DIM))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { main, refine })
    }

    /// Estimates the flow from the garment pyramid `warps` to the person pyramid `conds` (both
    /// fine to coarse) and answers the final sampling grid as `N×2×2H×2W` (x then y).
    pub fn forward(&self, warps: &[Tensor], conds: &[Tensor]) -> Result<Tensor> {
        let border = GridPadding::Border;
        let mut last_flow: Option<Tensor> = None;
        for i in 0..warps.len() {
            let level = warps.len() - 1 - i;
            let (x_warp, x_cond) = (&warps[level], &conds[level]);
            let warped = match &last_flow {
                Some(f) => grid_sample(x_warp, &as_grid(f)?, border, true)?,
                None => x_warp.clone(),
            };
            let corr = candle_nn::ops::leaky_relu(&correlation(&warped, x_cond)?, 0.1)?;
            let grid = apply_offset(&self.main[i].forward(&corr)?)?;
            let flow = match &last_flow {
                Some(f) => grid_sample(f, &grid, border, true)?,
                None => grid.permute((0, 3, 1, 2))?.contiguous()?,
            };
            let warped = grid_sample(x_warp, &as_grid(&flow)?, border, true)?;
            let concat = Tensor::cat(&[&warped, x_cond], 1)?;
            let grid = apply_offset(&self.refine[i].forward(&concat)?)?;
            let flow = grid_sample(&flow, &grid, border, true)?;
            let (_, _, h, w) = flow.dims4()?;
            last_flow = Some(resize_bilinear(&flow, 2 * h, 2 * w)?);
        }
        last_flow.ok_or_else(|| candle_core::Error::Msg("aflow_net: empty pyramid".into()))
    }
}

/// What the warp module answers.
#[derive(Debug, Clone)]
pub struct WarpOutput {
    /// The garment warped onto the person, `N×3×H×W`.
    pub warped_cloth: Tensor,
    /// The final sampling grid, `N×2×H×W` (x then y, in [-1, 1]).
    pub flow: Tensor,
}

/// `MobileAFWM`.
#[derive(Debug, Clone)]
pub struct MobileAfwm {
    image_mobile: MobileFpn,
    cond_mobile: MobileFpn,
    aflow_net: AFlowNet,
}

impl MobileAfwm {
    /// Loads the module stored under `vb` (the root of the warp checkpoint).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            image_mobile: MobileFpn::new(vb.pp("image_mobile"), 3)?,
            cond_mobile: MobileFpn::new(vb.pp("cond_mobile"), 3)?,
            aflow_net: AFlowNet::new(vb.pp("aflow_net"))?,
        })
    }

    /// The person (`cond`) and garment (`image`) pyramids, fine to coarse.
    pub fn pyramids(&self, person: &Tensor, cloth: &Tensor) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        Ok((
            self.cond_mobile.forward(person)?,
            self.image_mobile.forward(cloth)?,
        ))
    }

    /// Warps `cloth` (`N×3×H×W`) onto `person`.
    pub fn forward(&self, person: &Tensor, cloth: &Tensor) -> Result<WarpOutput> {
        let (conds, warps) = {
            let _stage = profile::stage("warp: feature pyramids", person.device());
            self.pyramids(person, cloth)?
        };
        let flow = {
            let _stage = profile::stage("warp: flow", person.device());
            self.aflow_net.forward(&warps, &conds)?
        };
        let warped_cloth = grid_sample(cloth, &as_grid(&flow)?, GridPadding::Border, true)?;
        Ok(WarpOutput { warped_cloth, flow })
    }
}
