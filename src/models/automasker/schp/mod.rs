//! SCHP (Self-Correction for Human Parsing, Li et al.), the human parser CatVTON's AutoMasker
//! runs twice: trained on ATR (18 labels, 512×512 input) and on LIP (20 labels, 473×473). Our
//! own candle port of the official network (`model/SCHP/networks/AugmentCE2P.py`): a dilated
//! ResNet-101 ([`resnet`]), a pyramid pooling module ([`psp`]), an edge branch ([`edge`]), a
//! parsing decoder ([`decoder`]) and a fusion head ([`fusion`]), BatchNorm folded into the
//! convolutions ([`layers`]). Variable paths are the checkpoints' keys after the official
//! renames ([`weights`]). Pre- and postprocessing follow the official code to OpenCV's rounding
//! ([`preprocess`]).
//!
//! [`SchpParsers`] runs both variants on a batch of photos and implements
//! [`super::HumanParsers`].

pub mod decoder;
pub mod edge;
pub mod fusion;
pub mod preprocess;
pub mod psp;
pub mod resnet;
pub mod weights;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::{HumanParsers, LabelMap, ParsedPerson};
use crate::models::ModelError;

/// One SCHP variant: what differs between the ATR and LIP checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchpConfig {
    /// `atr` or `lip`.
    pub name: &'static str,
    /// The official checkpoint's file name.
    pub file_name: &'static str,
    /// The side of the square input.
    pub input_size: usize,
    /// The label names, by index.
    pub labels: &'static [&'static str],
}

impl SchpConfig {
    /// SCHP trained on ATR.
    pub const ATR: SchpConfig = SchpConfig {
        name: "atr",
        file_name: "exp-schp-201908301523-atr.pth",
        input_size: 512,
        labels: &[
            "Background",
            "Hat",
            "Hair",
            "Sunglasses",
            "Upper-clothes",
            "Skirt",
            "Pants",
            "Dress",
            "Belt",
            "Left-shoe",
            "Right-shoe",
            "Face",
            "Left-leg",
            "Right-leg",
            "Left-arm",
            "Right-arm",
            "Bag",
            "Scarf",
        ],
    };

    /// SCHP trained on LIP.
    pub const LIP: SchpConfig = SchpConfig {
        name: "lip",
        file_name: "exp-schp-201908261155-lip.pth",
        input_size: 473,
        labels: &[
            "Background",
            "Hat",
            "Hair",
            "Glove",
            "Sunglasses",
            "Upper-clothes",
            "Dress",
            "Coat",
            "Socks",
            "Pants",
            "Jumpsuits",
            "Scarf",
            "Skirt",
            "Face",
            "Left-arm",
            "Right-arm",
            "Left-leg",
            "Right-leg",
            "Left-shoe",
            "Right-shoe",
        ],
    };

    /// The number of labels.
    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }
}

/// One photo's outputs: the logits at the input size and at the photo's size (both row-major,
/// channel-last) and the labels.
#[derive(Debug, Clone)]
pub struct SchpOutput {
    pub input_logits: Vec<f32>,
    pub photo_logits: Vec<f32>,
    pub labels: LabelMap,
}

/// An SCHP network of one variant on its device.
#[derive(Debug, Clone)]
pub struct Schp {
    config: SchpConfig,
    device: Device,
    backbone: resnet::ResNet,
    context: psp::Psp,
    edge: edge::Edge,
    decoder: decoder::Decoder,
    fusion: fusion::Fusion,
}

impl Schp {
    /// Builds the network from `vb` (float32), whose paths are the module paths.
    pub fn new(config: SchpConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let device = vb.device().clone();
        Ok(Self {
            config,
            device,
            backbone: resnet::ResNet::new(vb.clone())?,
            context: psp::Psp::new(vb.pp("context_encoding"), 2048, 512)?,
            edge: edge::Edge::new(vb.pp("edge"))?,
            decoder: decoder::Decoder::new(vb.pp("decoder"))?,
            fusion: fusion::Fusion::new(
                vb.pp("fushion"),
                decoder::DECODER_FEATURES + 3 * edge::EDGE_FEATURES,
                config.num_classes(),
            )?,
        })
    }

    /// Reads the official checkpoint at `path` (see [`weights::read_checkpoint`]).
    pub fn load(config: SchpConfig, path: &Path, device: &Device) -> Result<Self, ModelError> {
        let tensors = weights::read_checkpoint(path, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(config, vb).map_err(|e| ModelError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!(
                "not an SCHP {} checkpoint: {}",
                config.name,
                crate::models::candle_message(e)
            ),
        })
    }

    /// The network with seeded weights under `tag` ([`weights::FormulaWeights`]).
    pub fn random(config: SchpConfig, tag: &str, device: &Device) -> candle_core::Result<Self> {
        let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
            Box::new(weights::FormulaWeights::new(tag));
        Self::new(
            config,
            VarBuilder::from_backend(backend, DType::F32, device.clone()),
        )
    }

    pub fn config(&self) -> &SchpConfig {
        &self.config
    }

    /// The network on a normalised batch `N×3×S×S`: the logits `N×labels×S×S`, upsampled from
    /// 1/4 of the input (bilinear, `align_corners=True`).
    pub fn forward(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = input.dims4()?;
        let features = {
            let _span = tracing::debug_span!("schp.backbone").entered();
            self.backbone.forward(input)?
        };
        let _span = tracing::debug_span!("schp.heads").entered();
        let context = self.context.forward(&features.layer4)?;
        let parsing = self.decoder.forward(&context, &features.layer1)?;
        let edge = self
            .edge
            .forward(&features.layer1, &features.layer2, &features.layer3)?;
        let logits = self.fusion.forward(&Tensor::cat(&[parsing, edge], 1)?)?;
        super::layers::upsample(&logits, h, w)
    }

    /// The photos' logits and labels, the batch through the network at once.
    pub fn run(&self, photos: &[image::RgbImage]) -> candle_core::Result<Vec<SchpOutput>> {
        let span = tracing::info_span!("schp", variant = self.config.name, batch = photos.len());
        let _entered = span.enter();
        if photos.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.config.input_size;
        let input = {
            let _span = tracing::debug_span!("schp.preprocess").entered();
            let mut data = Vec::with_capacity(photos.len() * 3 * s * s);
            for photo in photos {
                if photo.width() == 0 || photo.height() == 0 {
                    candle_core::bail!("SCHP: empty photo");
                }
                data.extend(preprocess::normalise(&preprocess::warp_to_input(
                    photo, s, s,
                )));
            }
            Tensor::from_vec(data, (photos.len(), 3, s, s), &self.device)?
        };
        let logits = {
            let _span = tracing::debug_span!("schp.forward").entered();
            self.forward(&input)?
                .permute((0, 2, 3, 1))?
                .to_device(&Device::Cpu)?
                .contiguous()?
        };
        let _span = tracing::debug_span!("schp.postprocess").entered();
        let classes = self.config.num_classes();
        photos
            .iter()
            .enumerate()
            .map(|(i, photo)| {
                let input_logits = logits.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                let (w, h) = (photo.width() as usize, photo.height() as usize);
                let photo_logits = preprocess::transform_logits(&input_logits, classes, s, s, w, h);
                let labels = preprocess::argmax(&photo_logits, classes, w, h);
                Ok(SchpOutput {
                    input_logits,
                    photo_logits,
                    labels,
                })
            })
            .collect()
    }

    /// The photos' label maps, each at its photo's size.
    pub fn parse(&self, photos: &[image::RgbImage]) -> candle_core::Result<Vec<LabelMap>> {
        Ok(self.run(photos)?.into_iter().map(|o| o.labels).collect())
    }
}

/// CatVTON's two human parsers, SCHP on ATR and on LIP, on one device. Photos are RGB and go
/// in as they are, as the official app passes its PIL images (see [`preprocess`] on the
/// channel order); each photo's label maps come back at its own size. A batch runs through
/// each network at once.
///
/// ```no_run
/// use virtualfit::models::automasker::{schp::SchpParsers, HumanParsers};
/// # fn main() -> anyhow::Result<()> {
/// let device = candle_core::Device::Cpu;
/// // A folder with exp-schp-201908301523-atr.pth and exp-schp-201908261155-lip.pth.
/// let parsers = SchpParsers::load(std::path::Path::new("models/SCHP"), &device)?;
/// let photo = image::open("person.jpg")?.to_rgb8();
/// let parsed = parsers.parse(&[photo])?;
/// println!("{} ATR labels", parsed[0].atr.labels.len());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SchpParsers {
    pub atr: Schp,
    pub lip: Schp,
}

impl SchpParsers {
    /// The official checkpoints in `dir` (`exp-schp-201908301523-atr.pth`,
    /// `exp-schp-201908261155-lip.pth`, as in CatVTON's Hugging Face repository, folder
    /// `SCHP/`), on `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::load_files(
            &dir.join(SchpConfig::ATR.file_name),
            &dir.join(SchpConfig::LIP.file_name),
            device,
        )
    }

    /// The official checkpoints at their own paths (e.g. entries of the hub cache).
    pub fn load_files(atr: &Path, lip: &Path, device: &Device) -> Result<Self, ModelError> {
        Ok(Self {
            atr: Schp::load(SchpConfig::ATR, atr, device)?,
            lip: Schp::load(SchpConfig::LIP, lip, device)?,
        })
    }

    /// Parsers with seeded weights ([`weights::FormulaWeights`] with tags `"{seed}/atr"` and
    /// `"{seed}/lip"`; seed 0 uses the tags `atr` and `lip` of the parity fixtures). Their labels
    /// are meaningless but deterministic: for tests of the serving path without checkpoints.
    pub fn random(seed: u64, device: &Device) -> candle_core::Result<Self> {
        let tag = |name: &str| {
            if seed == 0 {
                name.to_string()
            } else {
                format!("{seed}/{name}")
            }
        };
        Ok(Self {
            atr: Schp::random(SchpConfig::ATR, &tag("atr"), device)?,
            lip: Schp::random(SchpConfig::LIP, &tag("lip"), device)?,
        })
    }
}

impl HumanParsers for SchpParsers {
    fn parse(&self, photos: &[image::RgbImage]) -> anyhow::Result<Vec<ParsedPerson>> {
        let atr = self.atr.parse(photos)?;
        let lip = self.lip.parse(photos)?;
        Ok(atr
            .into_iter()
            .zip(lip)
            .map(|(atr, lip)| ParsedPerson { atr, lip })
            .collect())
    }
}
