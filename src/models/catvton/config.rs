//! The three diffusers configuration files CatVTON reads: the UNet's and the VAE's
//! `config.json` and the scheduler's `scheduler_config.json`. Only the options Stable Diffusion
//! 1.5 (inpainting) and `sd-vae-ft-mse` use are supported; anything else is refused by name
//! rather than silently computed differently.

use std::path::Path;

use serde::Deserialize;

/// An integer option diffusers accepts either once or per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for block `i` of `n`.
    pub fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v.get(i).copied().unwrap_or(0),
        }
    }

    fn fits(&self, n: usize) -> bool {
        match self {
            PerBlock::One(v) => *v > 0,
            PerBlock::Each(v) => v.len() == n && v.iter().all(|x| *x > 0),
        }
    }
}

fn one() -> PerBlock {
    PerBlock::One(1)
}
fn default_eps() -> f64 {
    1e-5
}
fn default_groups() -> usize {
    32
}
fn default_true() -> bool {
    true
}
fn default_act() -> String {
    "silu".into()
}
fn default_scaling() -> f64 {
    0.18215
}
fn default_resnet_norm() -> String {
    "default".into()
}

/// `UNet2DConditionModel`'s configuration (the fields SD 1.5 sets).
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub layers_per_block: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    /// diffusers reads this as the number of heads when `num_attention_heads` is unset.
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_act")]
    pub act_fn: String,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "default_resnet_norm")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub center_input_sample: bool,
}

/// `AutoencoderKL`'s configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    pub latent_channels: usize,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default = "default_act")]
    pub act_fn: String,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

fn default_prediction() -> String {
    "epsilon".into()
}

/// The scheduler values CatVTON's `DDIMScheduler.from_pretrained` takes from the base model
/// (whose file names a `PNDMScheduler`; the values are what counts).
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    /// Absent, each sampler takes diffusers' default for its class (DDIM "leading",
    /// DPM-Solver "linspace").
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    #[serde(default)]
    pub clip_sample: bool,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

/// Reads and parses a JSON configuration file of diffusers class `class` (when the file names
/// one); the error says why.
pub fn read<T: serde::de::DeserializeOwned>(path: &Path, class: &str) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse(&text, class)
}

/// Parses the text of a JSON configuration of diffusers class `class`, as [`read`] does.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str, class: &str) -> Result<T, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let found = value
        .get("_class_name")
        .and_then(|c| c.as_str())
        .map(|c| c.chars().take(64).collect::<String>());
    expect_class(&found, class)?;
    serde_json::from_value(value).map_err(|e| format!("not a valid configuration: {e}"))
}

fn expect_class(found: &Option<String>, expected: &str) -> Result<(), String> {
    match found.as_deref() {
        // Schedulers are read for their values whatever class they name.
        _ if expected.is_empty() => Ok(()),
        Some(c) if c != expected => Err(format!(
            "is a `{c}` configuration, not `{expected}` (are the UNet and VAE folders swapped?)"
        )),
        _ => Ok(()),
    }
}

fn expect(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(format!("unsupported configuration: {}", what()))
    }
}

/// The down block kinds the UNet supports.
pub const UNET_DOWN: [&str; 2] = ["CrossAttnDownBlock2D", "DownBlock2D"];
/// The up block kinds the UNet supports.
pub const UNET_UP: [&str; 2] = ["CrossAttnUpBlock2D", "UpBlock2D"];

/// One block kind per entry of `block_out_channels`, each down and up kind a supported one,
/// and channel counts that split into the normalisation groups.
fn expect_blocks(
    channels: &[usize],
    groups: usize,
    (down, down_kinds): (&[String], &[&str]),
    (up, up_kinds): (&[String], &[&str]),
) -> Result<(), String> {
    let n = channels.len();
    expect(n > 0, || "no blocks".into())?;
    expect(down.len() == n && up.len() == n, || {
        "block type lists must match block_out_channels".into()
    })?;
    for t in down {
        expect(down_kinds.contains(&t.as_str()), || {
            format!("down block `{t}`")
        })?;
    }
    for t in up {
        expect(up_kinds.contains(&t.as_str()), || format!("up block `{t}`"))?;
    }
    expect(
        groups > 0 && channels.iter().all(|c| *c > 0 && c % groups == 0),
        || "channels must be multiples of norm_num_groups".into(),
    )
}

impl UNetConfig {
    /// Checks that the configuration is one this implementation computes exactly.
    pub fn validate(&self) -> Result<(), String> {
        expect_class(&self.class_name, "UNet2DConditionModel")?;
        expect_blocks(
            &self.block_out_channels,
            self.norm_num_groups,
            (&self.down_block_types, &UNET_DOWN),
            (&self.up_block_types, &UNET_UP),
        )?;
        if let Some(mid) = &self.mid_block_type {
            expect(mid == "UNetMidBlock2DCrossAttn", || {
                format!("mid block `{mid}`")
            })?;
        }
        expect(self.layers_per_block > 0, || "layers_per_block 0".into())?;
        let heads = self.heads();
        expect(heads.fits(self.block_out_channels.len()), || {
            "attention heads per block".into()
        })?;
        for (i, c) in self.block_out_channels.iter().enumerate() {
            expect(c % heads.get(i) == 0, || {
                format!("{c} channels do not split into {} heads", heads.get(i))
            })?;
        }
        expect(
            self.transformer_layers_per_block == PerBlock::One(1),
            || "transformer_layers_per_block other than 1".into(),
        )?;
        expect(self.act_fn == "silu", || {
            format!("act_fn `{}`", self.act_fn)
        })?;
        expect(self.resnet_time_scale_shift == "default", || {
            format!("resnet_time_scale_shift `{}`", self.resnet_time_scale_shift)
        })?;
        expect(!self.upcast_attention, || "upcast_attention".into())?;
        expect(!self.dual_cross_attention, || "dual_cross_attention".into())?;
        expect(self.class_embed_type.is_none(), || {
            "class_embed_type".into()
        })?;
        expect(self.addition_embed_type.is_none(), || {
            "addition_embed_type".into()
        })?;
        expect(!self.center_input_sample, || "center_input_sample".into())?;
        Ok(())
    }

    /// Attention heads per block (diffusers' reading of `attention_head_dim`).
    pub fn heads(&self) -> PerBlock {
        self.num_attention_heads
            .clone()
            .unwrap_or_else(|| self.attention_head_dim.clone())
    }

    /// How many times the UNet halves the latent's height and width.
    pub fn downsamplings(&self) -> usize {
        self.block_out_channels.len().saturating_sub(1)
    }

    /// Width of the timestep embedding.
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }
}

impl VaeConfig {
    /// Checks that the configuration is one this implementation computes exactly.
    pub fn validate(&self) -> Result<(), String> {
        expect_class(&self.class_name, "AutoencoderKL")?;
        expect_blocks(
            &self.block_out_channels,
            self.norm_num_groups,
            (&self.down_block_types, &["DownEncoderBlock2D"]),
            (&self.up_block_types, &["UpDecoderBlock2D"]),
        )?;
        expect(self.in_channels == 3 && self.out_channels == 3, || {
            "images of other than 3 channels".into()
        })?;
        expect(self.act_fn == "silu", || {
            format!("act_fn `{}`", self.act_fn)
        })?;
        expect(self.mid_block_add_attention, || {
            "a mid block without attention".into()
        })?;
        Ok(())
    }

    /// The factor between image and latent sizes.
    pub fn downscale(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

impl SchedulerConfig {
    /// Checks that the configuration is one every sampler here computes exactly.
    pub fn validate(&self) -> Result<(), String> {
        expect(self.num_train_timesteps > 0, || {
            "num_train_timesteps 0".into()
        })?;
        expect(
            matches!(self.beta_schedule.as_str(), "linear" | "scaled_linear")
                || self.trained_betas.is_some(),
            || format!("beta_schedule `{}`", self.beta_schedule),
        )?;
        if let Some(spacing) = &self.timestep_spacing {
            expect(super::scheduler::Spacing::parse(spacing).is_some(), || {
                format!("timestep_spacing `{spacing}`")
            })?;
        }
        expect(self.prediction_type == "epsilon", || {
            format!("prediction_type `{}`", self.prediction_type)
        })?;
        expect(!self.clip_sample, || "clip_sample".into())?;
        expect(!self.thresholding, || "thresholding".into())?;
        expect(!self.rescale_betas_zero_snr, || {
            "rescale_betas_zero_snr".into()
        })?;
        Ok(())
    }
}
