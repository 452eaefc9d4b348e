//! CatVTON behind the model interface: its request options, the inputs it needs, its loader
//! (a folder or the hub), and step-by-step sampling as a [`StepModel`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};

use super::deep_cache::{self, DeepCache, UnetCall};
use super::mask::{auto_mask, Category};
use super::preprocess::{resize_and_crop, resize_and_padding};
use super::sources::DensePoseSource;
use super::{
    sources, CatVton, DiffusionInput, Noise, Resolution, Sample, SamplingParams, SchedulerKind,
    DEFAULT_GUIDANCE, DEFAULT_STEPS,
};
use crate::hub::{Hub, Reporter};
use crate::models::automasker::densepose::{self, DensePose};
use crate::models::automasker::schp::SchpParsers;
use crate::models::automasker::{
    cloth_agnostic_mask, HumanParsers, LabelMap, MaskPart, ParsedPerson,
};
use crate::models::registry::{required_dir, Downloaded};
use crate::models::{
    InputSpec, Licence, LoadRequest, LoadedModel, MaskQuery, MaskerRequest, ModelError,
    ModelFamily, ModelFlags, ModelInput, OptionKind, OptionLimits, OptionSpec, PersonMaskSpec,
    PersonMasker, Preset, RequestOptions, StepGroup, StepModel, StepState, WarmUp, WeightSource,
};

/// The largest guidance scale accepted: far past any useful value, it only bounds the input.
pub const MAX_GUIDANCE: f64 = 30.0;

/// What a request asks for, read back from its checked options.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct CatvtonOptions {
    pub category: MaskPart,
    pub steps: usize,
    pub scheduler: SchedulerKind,
    pub guidance: f64,
    pub seed: u64,
    pub resolution: Resolution,
    pub cache_interval: usize,
    pub cache_branch: usize,
}

impl CatvtonOptions {
    pub fn read(options: &RequestOptions) -> Result<Self, ModelError> {
        options.read().map_err(ModelError::Options)
    }

    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            steps: self.steps,
            scheduler: self.scheduler,
            guidance: self.guidance,
            seed: self.seed,
            cache: DeepCache {
                interval: self.cache_interval,
                branch: self.cache_branch,
            },
        }
    }
}

/// The speed modes: what `mode` sets when the request leaves the option out. `quality` is the
/// reference pipeline; the others trade UNet calls for time (50, 25 and 20 calls per image,
/// the last with two of every three shallow).
pub const MODES: [Preset; 3] = [
    Preset {
        name: "quality",
        sets: &[
            ("scheduler", "ddim"),
            ("steps", "50"),
            ("cache_interval", "1"),
        ],
    },
    Preset {
        name: "balanced",
        sets: &[
            ("scheduler", "dpmpp_2m"),
            ("steps", "25"),
            ("cache_interval", "1"),
        ],
    },
    Preset {
        name: "fast",
        sets: &[
            ("scheduler", "dpmpp_2m"),
            ("steps", "20"),
            ("cache_interval", "3"),
        ],
    },
];

/// The registry entry.
pub struct Family;

impl ModelFamily for Family {
    fn name(&self) -> &'static str {
        "catvton"
    }

    fn about(&self) -> &'static str {
        "CatVTON, a diffusion try-on; needs --model-source DIR with its four parts, or \
         --model-source hub"
    }

    fn options(&self, limits: &OptionLimits) -> Vec<OptionSpec> {
        let max_steps = limits.max_steps.max(1);
        vec![
            OptionSpec {
                name: "category",
                kind: OptionKind::Choice {
                    values: &["upper", "lower", "overall", "inner", "outer"],
                    default: "upper",
                },
                help: "The garment replaced; the automatic person mask follows it. `inner` and \
                       `outer` (the layers of an upper outfit) need the human parsers \
                       (--masker-source); the drawn mask knows `upper`, `lower` and `overall`.",
            },
            OptionSpec {
                name: "mode",
                kind: OptionKind::Preset {
                    presets: &MODES,
                    default: "quality",
                },
                help: "Speed mode, the defaults of `scheduler`, `steps` and `cache_interval`: \
                       `quality` = DDIM 50 (the reference), `balanced` = DPM-Solver++ 25, \
                       `fast` = DPM-Solver++ 20 with DeepCache every 3 steps. Options sent \
                       with it win.",
            },
            OptionSpec {
                name: "steps",
                kind: OptionKind::Integer {
                    min: 1,
                    max: max_steps as u64,
                    default: DEFAULT_STEPS.min(max_steps) as u64,
                },
                help: "Denoising steps (at most --max-steps; default: the mode's).",
            },
            OptionSpec {
                name: "scheduler",
                kind: OptionKind::Choice {
                    values: &SchedulerKind::LABELS,
                    default: "ddim",
                },
                help: "Sampler: `ddim` (the reference's), or `dpmpp_2m` (DPM-Solver++ 2M) or \
                       `unipc` (UniPC), both made for 10 to 25 steps (default: the mode's).",
            },
            OptionSpec {
                name: "guidance",
                kind: OptionKind::Number {
                    min: 0.0,
                    max: MAX_GUIDANCE,
                    default: DEFAULT_GUIDANCE,
                },
                help: "Classifier-free guidance scale (at 1 or below, no unconditional pass).",
            },
            OptionSpec {
                name: "seed",
                kind: OptionKind::Seed,
                help: "Noise seed; drawn when absent, and returned in `x-seed`.",
            },
            OptionSpec {
                name: "resolution",
                kind: OptionKind::Choice {
                    values: &["1024x768", "512x384"],
                    default: "1024x768",
                },
                help: "Output size, height x width.",
            },
            OptionSpec {
                name: "cache_interval",
                kind: OptionKind::Integer {
                    min: 1,
                    max: deep_cache::MAX_INTERVAL as u64,
                    default: 1,
                },
                help: "DeepCache: a full UNet pass every this many steps, shallow passes from \
                       cached deep features between (1: off; default: the mode's).",
            },
            OptionSpec {
                name: "cache_branch",
                kind: OptionKind::Integer {
                    min: 0,
                    max: deep_cache::MAX_BRANCH as u64,
                    default: 0,
                },
                help: "DeepCache's skip branch (`cache_branch_id`): the higher, the more a \
                       shallow pass recomputes.",
            },
        ]
    }

    fn input(&self, options: &RequestOptions) -> InputSpec {
        let (h, w) = CatvtonOptions::read(options)
            .map(|o| o.resolution)
            .unwrap_or(Resolution::Full)
            .size();
        InputSpec {
            frame: (h as u32, w as u32),
            fit_person: |img, (h, w)| (resize_and_crop(img, w, h), None),
            fit_cloth: |img, (h, w)| resize_and_padding(img, w, h),
            garment_mask: None,
            person_mask: Some(PersonMaskSpec {
                fit: |mask, (h, w)| resize_and_crop(mask, w, h),
                draw: draw_mask,
            }),
        }
    }

    fn licences(&self, flags: &ModelFlags) -> Vec<Licence> {
        sources::licences(&flags.catvton)
    }

    fn load(&self, request: &LoadRequest<'_>) -> Result<LoadedModel, ModelError> {
        let model = match &request.source {
            WeightSource::Hub { hub, reporter } => {
                let files = fetch(hub, reporter, request)?;
                CatVton::load_files(&files, request.dtype, request.device)?
            }
            source => CatVton::load(
                required_dir(source, self.name())?,
                request.dtype,
                request.device,
            )?,
        };
        Ok(LoadedModel::Steps(Box::new(model)))
    }

    fn random(&self, request: &LoadRequest<'_>) -> Option<Result<LoadedModel, ModelError>> {
        Some(
            CatVton::random(request.dtype, request.device).map(|m| LoadedModel::Steps(Box::new(m))),
        )
    }

    fn offers_random(&self) -> bool {
        true
    }

    fn masker(
        &self,
        request: &MaskerRequest<'_>,
    ) -> Result<Option<Arc<dyn PersonMasker>>, ModelError> {
        let device = request.device;
        let Some(source) = request.flags.catvton.masker_source.as_deref() else {
            return Ok(None);
        };
        let parsers = if source == MASKER_FROM_HUB {
            let files = fetch_masker(&(request.hub)()?, request.reporter, request.flags)?;
            SchpParsers::load_files(&files.atr, &files.lip, device)?
        } else if let Some(seed) = source.strip_prefix("random:") {
            // Test-only: seeded random weights, meaningless labels.
            let seed = seed.parse().map_err(|_| {
                ModelError::checkpoint(
                    Path::new(source),
                    "--masker-source random:SEED takes a whole number",
                )
            })?;
            SchpParsers::random(seed, device)?
        } else {
            // A folder literally named `hub` is `./hub`.
            SchpParsers::load(Path::new(source), device)?
        };
        let densepose = load_densepose(request)?;
        Ok(Some(Arc::new(ParserMasker { parsers, densepose })))
    }

    fn check_masker_options(
        &self,
        options: &RequestOptions,
        has_masker: bool,
    ) -> Result<(), String> {
        let part = CatvtonOptions::read(options)
            .map_err(|e| e.to_string())?
            .category;
        match drawn_category(part) {
            None if !has_masker => Err(format!(
                "category `{}` needs the human parsers (--masker-source); the drawn mask knows \
                 `upper`, `lower` and `overall`",
                part.as_str()
            )),
            _ => Ok(()),
        }
    }

    fn download(
        &self,
        hub: &Hub,
        reporter: &Reporter,
        request: &LoadRequest<'_>,
        to: Option<&Path>,
    ) -> Result<Downloaded, ModelError> {
        let files = fetch(hub, reporter, request)?;
        let masker = match request.flags.catvton.masker_source.as_deref() {
            Some(MASKER_FROM_HUB) => Some(fetch_masker(hub, reporter, request.flags)?),
            _ => None,
        };
        let densepose = match request.flags.catvton.densepose_source() {
            Some(DensePoseSource::Hub) => Some(fetch_densepose(hub, reporter, request.flags)?),
            _ => None,
        };
        let lay_out_error = |dir: &Path, e: std::io::Error| {
            ModelError::checkpoint(dir, format!("cannot lay the weights out: {e}"))
        };
        let mut written = Vec::new();
        if let Some(dir) = to {
            written = sources::write_local(&files, dir).map_err(|e| lay_out_error(dir, e))?;
            if let Some(masker) = &masker {
                written.extend(
                    sources::write_local_masker(masker, dir).map_err(|e| lay_out_error(dir, e))?,
                );
            }
            if let Some(densepose) = &densepose {
                written.extend(
                    sources::write_local_densepose(densepose, dir)
                        .map_err(|e| lay_out_error(dir, e))?,
                );
            }
        }
        let mut files = vec![
            files.unet_config,
            files.unet_weights,
            files.scheduler_config,
            files.vae_config,
            files.vae_weights,
            files.attention,
        ];
        if let Some(masker) = masker {
            files.extend([masker.atr, masker.lip]);
        }
        if let Some(densepose) = densepose {
            files.extend([densepose.config, densepose.base, densepose.weights]);
        }
        Ok(Downloaded { files, written })
    }
}

/// Resolves the model's files on the hub: from the cache when every one is there and verified,
/// else downloaded and verified (offline: an error listing what is missing).
fn fetch(
    hub: &Hub,
    reporter: &Reporter,
    request: &LoadRequest<'_>,
) -> Result<super::weights::ModelFiles, ModelError> {
    let requests = sources::hub_requests(&request.flags.catvton, request.dtype);
    tracing::info!(cache = %hub.cache_dir().display(), "resolving the weights on the hub");
    let resolved = crate::hub::block_on(hub.resolve(&requests, reporter))?;
    for r in &resolved {
        tracing::info!(repo = %r.repo, commit = %r.commit, "weights verified");
    }
    sources::model_files(&resolved)
}

/// `--masker-source hub`: the parsers from the attention weights' repository.
const MASKER_FROM_HUB: &str = "hub";

/// Resolves the human parsers' checkpoints on the hub, as [`fetch`] does the model's.
fn fetch_masker(
    hub: &Hub,
    reporter: &Reporter,
    flags: &ModelFlags,
) -> Result<sources::MaskerFiles, ModelError> {
    let request = sources::masker_request(&flags.catvton);
    let resolved = crate::hub::block_on(hub.resolve(std::slice::from_ref(&request), reporter))?;
    let resolved = resolved.first().ok_or_else(|| {
        ModelError::Candle(candle_core::Error::Msg(
            "the hub resolved no repository for the human parsers".into(),
        ))
    })?;
    tracing::info!(repo = %resolved.repo, commit = %resolved.commit, "human parsers verified");
    sources::masker_files(resolved)
}

/// Resolves DensePose's files on the hub, as [`fetch_masker`] does the parsers'.
fn fetch_densepose(
    hub: &Hub,
    reporter: &Reporter,
    flags: &ModelFlags,
) -> Result<sources::DensePoseFiles, ModelError> {
    let request = sources::densepose_request(&flags.catvton);
    let resolved = crate::hub::block_on(hub.resolve(std::slice::from_ref(&request), reporter))?;
    let resolved = resolved.first().ok_or_else(|| {
        ModelError::Candle(candle_core::Error::Msg(
            "the hub resolved no repository for DensePose".into(),
        ))
    })?;
    tracing::info!(repo = %resolved.repo, commit = %resolved.commit, "DensePose verified");
    sources::densepose_files(resolved)
}

/// DensePose as `--masker-densepose` asks, beside the parsers.
fn load_densepose(request: &MaskerRequest<'_>) -> Result<Option<DensePose>, ModelError> {
    let device = request.device;
    let densepose = match request.flags.catvton.densepose_source() {
        None | Some(DensePoseSource::Off) => return Ok(None),
        Some(DensePoseSource::Random) => DensePose::random(device)?,
        Some(DensePoseSource::Hub) => {
            let files = fetch_densepose(&(request.hub)()?, request.reporter, request.flags)?;
            DensePose::load_files(&files.config, &files.weights, device)?
        }
        Some(DensePoseSource::Folder(dir)) => {
            if !dir.is_dir() {
                return Err(ModelError::checkpoint(
                    &dir,
                    format!(
                        "no DensePose folder here (it holds {}, {} and {}); pass \
                         --masker-densepose DIR to read another, or --masker-densepose off to \
                         mask without DensePose",
                        densepose::CONFIG_FILE,
                        densepose::BASE_CONFIG_FILE,
                        densepose::CHECKPOINT_FILE
                    ),
                ));
            }
            DensePose::load(&dir, device)?
        }
    };
    tracing::info!("DensePose loaded for the automatic person mask");
    Ok(Some(densepose))
}

/// The area to repaint when the request sends none and no parsers are loaded: drawn from the
/// fitted person photo and the category.
fn draw_mask(person: &RgbImage, options: &RequestOptions) -> Result<GrayImage, String> {
    let part = CatvtonOptions::read(options)
        .map_err(|e| e.to_string())?
        .category;
    let category = drawn_category(part)
        .ok_or_else(|| format!("the drawn mask has no category `{}`", part.as_str()))?;
    Ok(auto_mask(person, category))
}

/// The drawn mask's category for a part; `inner` and `outer` have none.
fn drawn_category(part: MaskPart) -> Option<Category> {
    match part {
        MaskPart::Upper => Some(Category::Upper),
        MaskPart::Lower => Some(Category::Lower),
        MaskPart::Overall => Some(Category::Overall),
        MaskPart::Inner | MaskPart::Outer => None,
    }
}

/// The official AutoMasker's way: both SCHP parsers and DensePose label the fitted person photo
/// (at the model's frame, as the official app masks at 768×1024), and [`cloth_agnostic_mask`]
/// combines their maps. With `--masker-densepose off` the DensePose map is all background.
struct ParserMasker {
    parsers: SchpParsers,
    densepose: Option<DensePose>,
}

/// Whether answering `labels` (None: the mask) reads DensePose's map.
fn reads_densepose(labels: Option<&str>) -> bool {
    matches!(labels, None | Some("densepose"))
}

/// The label maps answered by name, without and with DensePose.
const PARSER_MAPS: [&str; 2] = ["atr", "lip"];
const PARSER_AND_DENSEPOSE_MAPS: [&str; 3] = ["atr", "lip", "densepose"];

impl ParserMasker {
    /// Both parsers over the photos, and DensePose over those `needs_densepose` picks, as one
    /// batch each; the others get an all-background DensePose map (an `atr` or `lip` label map
    /// does not read it).
    fn parse(
        &self,
        people: &[RgbImage],
        needs_densepose: impl Fn(usize) -> bool,
    ) -> Result<Vec<(ParsedPerson, LabelMap)>, String> {
        let parsed = self
            .parsers
            .parse(people)
            .map_err(|e| format!("the human parsers failed: {e:#}"))?;
        if parsed.len() != people.len() {
            return Err("the human parsers answered another number of label maps".into());
        }
        let mut dense: Vec<LabelMap> = people
            .iter()
            .map(|p| LabelMap::filled(p.width() as usize, p.height() as usize, 0))
            .collect();
        if let Some(densepose) = &self.densepose {
            let wanted: Vec<usize> = (0..people.len()).filter(|&i| needs_densepose(i)).collect();
            let photos: Vec<RgbImage> = wanted.iter().map(|&i| people[i].clone()).collect();
            let maps = densepose
                .label_maps(&photos)
                .map_err(|e| format!("DensePose failed: {e}"))?;
            if maps.len() != wanted.len() {
                return Err("DensePose answered another number of label maps".into());
            }
            for (i, map) in wanted.into_iter().zip(maps) {
                dense[i] = map;
            }
        }
        Ok(parsed.into_iter().zip(dense).collect())
    }

    /// The mask for `options`, or the label map `labels`, from a photo's parsed maps.
    fn answer(
        &self,
        (parsed, densepose): (ParsedPerson, LabelMap),
        options: &RequestOptions,
        labels: Option<&str>,
    ) -> Result<GrayImage, String> {
        let map = match labels {
            None => {
                let part = CatvtonOptions::read(options)
                    .map_err(|e| e.to_string())?
                    .category;
                return cloth_agnostic_mask(&densepose, &parsed.lip, &parsed.atr, part)
                    .map_err(|e| format!("cannot combine the label maps: {e:#}"));
            }
            Some("atr") => parsed.atr,
            Some("lip") => parsed.lip,
            Some("densepose") if self.densepose.is_some() => densepose,
            Some(name) => return Err(format!("no label map `{name}`")),
        };
        GrayImage::from_raw(map.width as u32, map.height as u32, map.labels)
            .ok_or_else(|| "a label map of the wrong length".to_string())
    }
}

impl PersonMasker for ParserMasker {
    fn name(&self) -> &'static str {
        if self.densepose.is_some() {
            "parsers+densepose"
        } else {
            "parsers"
        }
    }

    fn mask(&self, person: &RgbImage, options: &RequestOptions) -> Result<GrayImage, String> {
        let parsed = self.parse(std::slice::from_ref(person), |_| true)?;
        let parsed = parsed.into_iter().next().ok_or("no label map")?;
        self.answer(parsed, options, None)
    }

    fn label_maps(&self) -> &'static [&'static str] {
        if self.densepose.is_some() {
            &PARSER_AND_DENSEPOSE_MAPS
        } else {
            &PARSER_MAPS
        }
    }

    fn label_map(&self, person: &RgbImage, name: &str) -> Result<Option<GrayImage>, String> {
        if !self.label_maps().contains(&name) {
            return Ok(None);
        }
        let parsed = self.parse(std::slice::from_ref(person), |_| {
            reads_densepose(Some(name))
        })?;
        let parsed = parsed.into_iter().next().ok_or("no label map")?;
        self.answer(parsed, &RequestOptions::default(), Some(name))
            .map(Some)
    }

    fn masks(&self, queries: &[MaskQuery]) -> Vec<Result<GrayImage, String>> {
        let people: Vec<RgbImage> = queries.iter().map(|q| q.person.clone()).collect();
        match self.parse(&people, |i| reads_densepose(queries[i].labels.as_deref())) {
            Ok(parsed) => parsed
                .into_iter()
                .zip(queries)
                .map(|(parsed, q)| self.answer(parsed, &q.options, q.labels.as_deref()))
                .collect(),
            Err(e) => queries.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}

impl StepState for Sample {
    fn rows(&self) -> usize {
        Sample::rows(self)
    }

    fn group(&self) -> StepGroup {
        StepGroup {
            size: self.latent_size(),
            variant: match self.unet_call() {
                UnetCall::Full => None,
                UnetCall::Shallow(point) => Some((point.level, point.layer)),
            },
        }
    }

    fn is_done(&self) -> bool {
        Sample::is_done(self)
    }

    fn progress(&self) -> (usize, usize) {
        Sample::progress(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn not_ours() -> ModelError {
    ModelError::WrongInput("a sample of this model".into())
}

/// A request's inputs as the sampler takes them.
fn diffusion_input(input: &ModelInput) -> Result<DiffusionInput, ModelError> {
    let options = CatvtonOptions::read(&input.options)?;
    let mask = input
        .person_mask
        .clone()
        .ok_or_else(|| ModelError::WrongInput("the area to repaint".into()))?;
    Ok(DiffusionInput {
        person: input.person.clone(),
        cloth: input.cloth.clone(),
        mask,
        params: options.params(),
    })
}

impl StepModel for CatVton {
    fn name(&self) -> &str {
        "catvton"
    }

    fn rows(&self, input: &ModelInput) -> Result<usize, ModelError> {
        Ok(super::rows_for(
            CatvtonOptions::read(&input.options)?.guidance,
        ))
    }

    fn begin(&self, input: &ModelInput) -> Result<Box<dyn StepState>, ModelError> {
        let input = diffusion_input(input)?;
        let sample = CatVton::begin(self, &input, Noise::seeded(input.params.seed))?;
        Ok(Box::new(sample))
    }

    fn step(&self, states: &mut [&mut Box<dyn StepState>]) -> Result<(), ModelError> {
        let mut samples = states
            .iter_mut()
            .map(|s| s.as_any_mut().downcast_mut::<Sample>().ok_or_else(not_ours))
            .collect::<Result<Vec<&mut Sample>, ModelError>>()?;
        CatVton::step(self, &mut samples)
    }

    fn finish(&self, state: &dyn StepState) -> Result<Tensor, ModelError> {
        let sample = state
            .as_any()
            .downcast_ref::<Sample>()
            .ok_or_else(not_ours)?;
        CatVton::finish(self, sample)
    }

    /// Encodes and samples one step of a small request, and estimates a full-size request's
    /// device time for `Retry-After`.
    fn warm_up(&self, row_cap: usize) -> Result<WarmUp, ModelError> {
        let (h, w) = Resolution::Half.size();
        let blank = |c: usize| Tensor::zeros((h, w, c), DType::U8, &Device::Cpu);
        let input = DiffusionInput {
            person: blank(3)?,
            cloth: blank(3)?,
            mask: blank(1)?,
            params: SamplingParams {
                steps: 1,
                scheduler: SchedulerKind::Ddim,
                guidance: 2.0,
                seed: 0,
                cache: DeepCache::OFF,
            },
        };
        let start = Instant::now();
        let mut sample = CatVton::begin(self, &input, Noise::seeded(0))?;
        let encoded = start.elapsed();
        CatVton::step(self, &mut [&mut sample])?;
        let stepped = start.elapsed() - encoded;
        CatVton::finish(self, &sample)?;
        let coded = start.elapsed() - stepped;
        let decoded = coded.saturating_sub(encoded);
        Ok(WarmUp {
            seconds_per_request: coded.as_secs_f64() + stepped.as_secs_f64() * DEFAULT_STEPS as f64,
            longest_call: encoded.max(stepped).max(decoded),
            longest_call_estimate: longest_call_estimate(
                encoded,
                stepped,
                decoded,
                sample.rows(),
                row_cap,
            ),
        })
    }
}

/// The longest call to expect from a warm-up at half size with `warm_rows` UNet rows: a step
/// of a full row cap (a request wider than the cap runs alone), or a VAE pass, at full size.
/// Both are scaled by the square of the area ratio, the pessimistic end (attention's cost grows
/// with the square of the tokens), and a step by its rows.
fn longest_call_estimate(
    encoded: Duration,
    stepped: Duration,
    decoded: Duration,
    warm_rows: usize,
    cap: usize,
) -> Duration {
    let area = |r: Resolution| {
        let (h, w) = r.size();
        (h * w) as f64
    };
    let size_factor = (area(Resolution::Full) / area(Resolution::Half)).powi(2);
    let row_factor = cap.max(warm_rows) as f64 / warm_rows.max(1) as f64;
    let step = stepped.as_secs_f64() * row_factor;
    let vae = encoded.max(decoded).as_secs_f64();
    Duration::from_secs_f64(step.max(vae) * size_factor)
}

impl std::str::FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "upper" => Ok(Category::Upper),
            "lower" => Ok(Category::Lower),
            "overall" => Ok(Category::Overall),
            _ => Err("the category is `upper`, `lower` or `overall`".into()),
        }
    }
}

impl Category {
    /// As requests spell it.
    pub fn label(self) -> &'static str {
        match self {
            Category::Upper => "upper",
            Category::Lower => "lower",
            Category::Overall => "overall",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<CatvtonOptions, String> {
        let specs = Family.options(&OptionLimits { max_steps: 50 });
        let options = RequestOptions::parse(
            &specs,
            |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            || 7,
        )?;
        CatvtonOptions::read(&options).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_reference_settings() {
        let r = parse(&[]).expect("defaults");
        assert_eq!(r.category, MaskPart::Upper);
        assert_eq!(r.resolution, Resolution::Full);
        assert_eq!(
            r.params(),
            SamplingParams {
                steps: 50,
                scheduler: SchedulerKind::Ddim,
                guidance: 2.5,
                seed: 7,
                cache: DeepCache::OFF,
            }
        );
    }

    #[test]
    fn fields_are_read_and_bounded() {
        let r = parse(&[
            ("category", "lower"),
            ("resolution", "512x384"),
            ("steps", "20"),
            ("scheduler", "dpmpp_2m"),
            ("guidance", "1.0"),
            ("seed", "18446744073709551615"),
            ("cache_interval", "3"),
            ("cache_branch", "11"),
        ])
        .expect("valid");
        assert_eq!(r.category, MaskPart::Lower);
        assert_eq!(r.resolution, Resolution::Half);
        assert_eq!(
            r.params(),
            SamplingParams {
                steps: 20,
                scheduler: SchedulerKind::DpmPp2m,
                guidance: 1.0,
                seed: u64::MAX,
                cache: DeepCache {
                    interval: 3,
                    branch: 11
                },
            }
        );
        for bad in [
            ("steps", "0"),
            ("steps", "51"),
            ("steps", "-1"),
            ("guidance", "NaN"),
            ("guidance", "inf"),
            ("guidance", "31"),
            ("seed", "-3"),
            ("category", "hat"),
            ("resolution", "2048x1536"),
            ("scheduler", "unipc2"),
            ("scheduler", "DDIM"),
            ("scheduler", ""),
            ("cache_interval", "0"),
            ("cache_interval", "11"),
            ("cache_interval", "2.5"),
            ("cache_interval", "-1"),
            ("cache_interval", ""),
            ("cache_branch", "12"),
            ("cache_branch", "-1"),
            ("cache_branch", "1e1"),
            ("cache_branch", "99999999999999999999999"),
        ] {
            let e = parse(&[bad]).expect_err("refused");
            assert!(e.len() < 80, "a short message: {e}");
        }
    }

    #[test]
    fn modes_set_the_sampler_steps_and_cache_and_sent_options_win() {
        let sampler = |r: CatvtonOptions| (r.scheduler, r.steps, r.cache_interval);
        let quality = parse(&[("mode", "quality")]).expect("quality");
        assert_eq!(quality, parse(&[]).expect("defaults"));
        assert_eq!(sampler(quality), (SchedulerKind::Ddim, 50, 1));
        let balanced = parse(&[("mode", "balanced")]).expect("balanced");
        assert_eq!(sampler(balanced), (SchedulerKind::DpmPp2m, 25, 1));
        let fast = parse(&[("mode", "fast")]).expect("fast");
        assert_eq!(sampler(fast), (SchedulerKind::DpmPp2m, 20, 3));
        let fast_unipc =
            parse(&[("mode", "fast"), ("scheduler", "unipc"), ("steps", "12")]).expect("valid");
        assert_eq!(sampler(fast_unipc), (SchedulerKind::UniPc, 12, 3));
        for bad in ["turbo", "", "Fast"] {
            let e = parse(&[("mode", bad)]).expect_err("refused");
            assert!(e.starts_with("mode is `quality`"), "{e}");
        }
        let specs = Family.options(&OptionLimits::default());
        for (name, value) in MODES.iter().flat_map(|m| m.sets.iter()) {
            let spec = specs
                .iter()
                .find(|s| s.name == *name)
                .expect("a declared option");
            spec.parse(value).expect("a valid value");
        }
        // A server with --max-steps 10 runs `balanced` at 10 steps rather than refusing it.
        let specs = Family.options(&OptionLimits { max_steps: 10 });
        let capped = RequestOptions::parse(&specs, |n| (n == "mode").then_some("balanced"), || 1)
            .expect("capped");
        assert_eq!(capped.get("steps"), Some(&serde_json::Value::from(10)));
    }

    #[test]
    fn the_frame_follows_the_resolution() {
        let specs = Family.options(&OptionLimits::default());
        let half =
            RequestOptions::parse(&specs, |n| (n == "resolution").then_some("512x384"), || 1)
                .expect("valid");
        assert_eq!(Family.input(&half).frame, (512, 384));
        let full = RequestOptions::parse(&specs, |_| None, || 1).expect("valid");
        assert_eq!(Family.input(&full).frame, (1024, 768));
    }

    #[test]
    fn the_longest_call_estimate_scales_a_half_size_warm_up_to_a_full_row_cap_at_full_size() {
        let ms = Duration::from_millis;
        // 2 rows warmed up, a cap of 8: a step of 4 times the rows at 4 times the area,
        // counted as 16 times the cost: 100 ms x 4 x 16.
        assert_eq!(
            longest_call_estimate(ms(10), ms(100), ms(20), 2, 8),
            ms(6400)
        );
        // A cap under a request's rows: the request runs alone, at its own rows.
        assert_eq!(
            longest_call_estimate(ms(10), ms(100), ms(20), 2, 1),
            ms(1600)
        );
        // A VAE pass longer than the scaled step sets it.
        assert_eq!(
            longest_call_estimate(ms(500), ms(10), ms(300), 2, 2),
            ms(8000)
        );
    }
}
