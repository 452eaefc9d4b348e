//! Where CatVTON's parts come from: their hub repositories and the files the model reads from
//! each (never a whole repository), their licences, and the local-folder layout that
//! `--model-source DIR` reads, which `virtualfit download --to DIR` writes.
//!
//! No commit is pinned by default (none could be checked when this was written): each default
//! reads `main`, and the manifest in the cache records the commit the hub answered, which later
//! starts load. Pin one with `--catvton-base org/name@COMMIT` and the like.

use std::path::{Path, PathBuf};

use candle_core::DType;
use clap::Args;

use super::weights::ModelFiles;
use crate::hub::{RepoRef, RepoRequest, Resolved, Wanted};
use crate::models::automasker::densepose::{BASE_CONFIG_FILE, CHECKPOINT_FILE, CONFIG_FILE};
use crate::models::automasker::schp::SchpConfig;
use crate::models::{Licence, ModelError};

/// Stable Diffusion 1.5 inpainting (a copy of the removed `runwayml/stable-diffusion-inpainting`,
/// which CatVTON's own scripts use): `unet/` and `scheduler/`.
pub const BASE_REPO: &str = "booksforcharlie/stable-diffusion-inpainting";
/// The fine-tuned VAE.
pub const VAE_REPO: &str = "stabilityai/sd-vae-ft-mse";
/// CatVTON's trained self-attention weights.
pub const ATTENTION_REPO: &str = "zhengchong/CatVTON";
/// The attention checkpoints of `zhengchong/CatVTON`: the 1024×768 one and the two 512×384 ones.
pub const VARIANTS: [&str; 3] = ["mix-48k-1024", "vitonhd-16k-512", "dresscode-16k-512"];

const UNET_CONFIG: &str = "unet/config.json";
const UNET_WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";
const UNET_WEIGHTS_FP16: &str = "unet/diffusion_pytorch_model.fp16.safetensors";
const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";
const VAE_CONFIG: &str = "config.json";
const VAE_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// The repositories `--model-source hub` reads CatVTON from.
#[derive(Debug, Clone, Args)]
pub struct CatvtonRepos {
    /// catvton from the hub: the base model's repository (its unet/ and scheduler/),
    /// `org/name[@revision]`.
    #[arg(long = "catvton-base", env = "VIRTUALFIT_CATVTON_BASE", default_value = BASE_REPO)]
    pub base: RepoRef,
    /// catvton from the hub: the VAE's repository, `org/name[@revision]`.
    #[arg(long = "catvton-vae", env = "VIRTUALFIT_CATVTON_VAE", default_value = VAE_REPO)]
    pub vae: RepoRef,
    /// catvton from the hub: the attention weights' repository, `org/name[@revision]`.
    #[arg(long = "catvton-attention", env = "VIRTUALFIT_CATVTON_ATTENTION", default_value = ATTENTION_REPO)]
    pub attention: RepoRef,
    /// catvton from the hub: which attention checkpoint (`mix-48k-1024` for 1024×768, or the
    /// 512×384 `vitonhd-16k-512`, `dresscode-16k-512`).
    #[arg(long = "catvton-variant", env = "VIRTUALFIT_CATVTON_VARIANT", default_value = VARIANTS[0], value_parser = VARIANTS)]
    pub variant: String,
    /// catvton: the human parsers of the automatic person mask: `hub` (the folder `SCHP/` of
    /// the attention weights' repository, through the hub cache), or a folder holding
    /// `exp-schp-201908301523-atr.pth` and `exp-schp-201908261155-lip.pth`; without it the
    /// mask is drawn. `random:SEED` (seeded random weights, meaningless masks) is for tests
    /// only.
    #[arg(
        long = "masker-source",
        env = "VIRTUALFIT_MASKER_SOURCE",
        value_name = "hub|DIR"
    )]
    pub masker_source: Option<String>,
    /// catvton: DensePose in the automatic person mask (the official AutoMasker's third
    /// network: it keeps hands and feet and adds the body under the garment). `on` reads it where
    /// the parsers come from: the folder `DensePose/` of the attention repository with
    /// `--masker-source hub`, the folder `DensePose` beside a `--masker-source` folder (the
    /// repository's layout, which `download --to` writes); or a folder holding
    /// `densepose_rcnn_R_50_FPN_s1x.yaml`, `Base-DensePose-RCNN-FPN.yaml` and
    /// `model_final_162be9.pkl`; or `off`: an all-background DensePose map, faster, the
    /// official mask without those two parts.
    #[arg(
        long = "masker-densepose",
        env = "VIRTUALFIT_MASKER_DENSEPOSE",
        default_value = DENSEPOSE_ON,
        value_name = "on|off|DIR"
    )]
    pub masker_densepose: String,
}

/// `--masker-densepose on`: from where the parsers come from.
pub const DENSEPOSE_ON: &str = "on";
/// `--masker-densepose off`: no DensePose.
pub const DENSEPOSE_OFF: &str = "off";

impl CatvtonRepos {
    /// The flags that differ from the defaults, to repeat in a suggested command.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (flag, repo, default) in [
            ("--catvton-base", &self.base, BASE_REPO),
            ("--catvton-vae", &self.vae, VAE_REPO),
            ("--catvton-attention", &self.attention, ATTENTION_REPO),
        ] {
            if repo.id != default || repo.revision != "main" {
                flags.push(format!("{flag} {repo}"));
            }
        }
        if let Some(source) = &self.masker_source {
            flags.push(format!("--masker-source {source}"));
        }
        if self.masker_densepose != DENSEPOSE_ON {
            flags.push(format!("--masker-densepose {}", self.masker_densepose));
        }
        if self.variant != VARIANTS[0] {
            flags.push(format!("--catvton-variant {}", self.variant));
        }
        flags
    }
}

/// Whether `dtype` is half precision, which reads the UNet's `.fp16` file when there is one.
fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// The files CatVTON reads, per repository, in the order [`model_files`] takes them.
pub fn hub_requests(repos: &CatvtonRepos, dtype: DType) -> Vec<RepoRequest> {
    let unet_weights = if is_half(dtype) {
        Wanted::first_of(&[UNET_WEIGHTS_FP16, UNET_WEIGHTS])
    } else {
        Wanted::file(UNET_WEIGHTS)
    };
    vec![
        RepoRequest {
            repo: repos.base.clone(),
            files: vec![
                Wanted::file(UNET_CONFIG),
                Wanted::file(SCHEDULER_CONFIG),
                unet_weights,
            ],
        },
        RepoRequest {
            repo: repos.vae.clone(),
            files: vec![Wanted::file(VAE_CONFIG), Wanted::file(VAE_WEIGHTS)],
        },
        RepoRequest {
            repo: repos.attention.clone(),
            files: vec![Wanted::file(&format!(
                "{}/attention/model.safetensors",
                repos.variant
            ))],
        },
    ]
}

/// Where the parsers' checkpoints sit in the attention weights' repository, and in the
/// `--to` layout.
const MASKER_FOLDER: &str = "SCHP";

/// The human parsers' checkpoints: (ATR, LIP).
pub struct MaskerFiles {
    pub atr: PathBuf,
    pub lip: PathBuf,
}

/// The parsers' files in the attention weights' repository (CatVTON's `SCHP/`).
pub fn masker_request(repos: &CatvtonRepos) -> RepoRequest {
    RepoRequest {
        repo: repos.attention.clone(),
        files: [SchpConfig::ATR, SchpConfig::LIP]
            .iter()
            .map(|config| Wanted::file(&format!("{MASKER_FOLDER}/{}", config.file_name)))
            .collect(),
    }
}

/// The parsers' files from what [`masker_request`] resolved to.
pub fn masker_files(resolved: &Resolved) -> Result<MaskerFiles, ModelError> {
    match resolved.files.as_slice() {
        [atr, lip] => Ok(MaskerFiles {
            atr: atr.path.clone(),
            lip: lip.path.clone(),
        }),
        _ => Err(ModelError::Candle(candle_core::Error::Msg(
            "the hub resolved other files than the human parsers' two".into(),
        ))),
    }
}

/// Puts the parsers' files under `dir/SCHP/`, the folder `--masker-source` takes, as
/// [`write_local`] does the model's.
pub fn write_local_masker(files: &MaskerFiles, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (source, config) in [(&files.atr, SchpConfig::ATR), (&files.lip, SchpConfig::LIP)] {
        let target = dir.join(MASKER_FOLDER).join(config.file_name);
        if place(source, &target)? {
            written.push(target);
        }
    }
    Ok(written)
}

/// Where DensePose's files sit in the attention weights' repository, and in the `--to` layout.
pub const DENSEPOSE_FOLDER: &str = "DensePose";

/// DensePose's files: its configuration, the configuration's base, the checkpoint.
pub struct DensePoseFiles {
    pub config: PathBuf,
    pub base: PathBuf,
    pub weights: PathBuf,
}

/// DensePose's files in the attention weights' repository (CatVTON's `DensePose/`).
pub fn densepose_request(repos: &CatvtonRepos) -> RepoRequest {
    RepoRequest {
        repo: repos.attention.clone(),
        files: [CONFIG_FILE, BASE_CONFIG_FILE, CHECKPOINT_FILE]
            .iter()
            .map(|name| Wanted::file(&format!("{DENSEPOSE_FOLDER}/{name}")))
            .collect(),
    }
}

/// DensePose's files from what [`densepose_request`] resolved to.
pub fn densepose_files(resolved: &Resolved) -> Result<DensePoseFiles, ModelError> {
    match resolved.files.as_slice() {
        [config, base, weights] => Ok(DensePoseFiles {
            config: config.path.clone(),
            base: base.path.clone(),
            weights: weights.path.clone(),
        }),
        _ => Err(ModelError::Candle(candle_core::Error::Msg(
            "the hub resolved other files than DensePose's three".into(),
        ))),
    }
}

/// Puts DensePose's files under `dir/DensePose/`, beside `dir/SCHP/`.
pub fn write_local_densepose(files: &DensePoseFiles, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (source, name) in [
        (&files.config, CONFIG_FILE),
        (&files.base, BASE_CONFIG_FILE),
        (&files.weights, CHECKPOINT_FILE),
    ] {
        let target = dir.join(DENSEPOSE_FOLDER).join(name);
        if place(source, &target)? {
            written.push(target);
        }
    }
    Ok(written)
}

/// Where `--masker-densepose` reads DensePose from, given `--masker-source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DensePoseSource {
    Off,
    Hub,
    /// The seeded weights (with `--masker-source random:SEED`).
    Random,
    Folder(PathBuf),
}

impl CatvtonRepos {
    /// DensePose's source, or None without parsers (no automatic mask at all).
    pub fn densepose_source(&self) -> Option<DensePoseSource> {
        let parsers = self.masker_source.as_deref()?;
        Some(match self.masker_densepose.as_str() {
            DENSEPOSE_OFF => DensePoseSource::Off,
            DENSEPOSE_ON if parsers == "hub" => DensePoseSource::Hub,
            DENSEPOSE_ON if parsers.starts_with("random:") => DensePoseSource::Random,
            DENSEPOSE_ON => {
                let parsers = Path::new(parsers);
                let parent = parsers.parent().unwrap_or(Path::new("."));
                DensePoseSource::Folder(parent.join(DENSEPOSE_FOLDER))
            }
            folder => DensePoseSource::Folder(PathBuf::from(folder)),
        })
    }
}

/// The model's files from what [`hub_requests`] resolved to.
pub fn model_files(resolved: &[Resolved]) -> Result<ModelFiles, ModelError> {
    let path = |repo: usize, file: usize| -> Result<PathBuf, ModelError> {
        resolved
            .get(repo)
            .and_then(|r| r.files.get(file))
            .map(|f| f.path.clone())
            .ok_or_else(|| {
                ModelError::Candle(candle_core::Error::Msg(
                    "the hub resolved fewer files than CatVTON reads".into(),
                ))
            })
    };
    Ok(ModelFiles {
        unet_config: path(0, 0)?,
        scheduler_config: path(0, 1)?,
        unet_weights: path(0, 2)?,
        vae_config: path(1, 0)?,
        vae_weights: path(1, 1)?,
        attention: path(2, 0)?,
    })
}

/// Each part's licence, naming the repository it comes from.
pub fn licences(repos: &CatvtonRepos) -> Vec<Licence> {
    let mut licences = vec![
        Licence {
            part: "Stable Diffusion 1.5 inpainting UNet and scheduler".into(),
            source: repos.base.id.clone(),
            licence: "CreativeML Open RAIL-M".into(),
        },
        Licence {
            part: "sd-vae-ft-mse VAE".into(),
            source: repos.vae.id.clone(),
            licence: "MIT".into(),
        },
        Licence {
            part: "CatVTON attention weights".into(),
            source: repos.attention.id.clone(),
            licence: "CC BY-NC-SA 4.0, non-commercial".into(),
        },
    ];
    if repos
        .masker_source
        .as_deref()
        .is_some_and(|source| !source.starts_with("random:"))
    {
        licences.push(Licence {
            part: "SCHP human parsers (ATR, LIP)".into(),
            source: match repos.masker_source.as_deref() {
                Some("hub") => format!("{}/{MASKER_FOLDER}", repos.attention.id),
                _ => "--masker-source".into(),
            },
            licence: "SCHP code MIT; checkpoints published without terms of their own, copied \
                      in a CC BY-NC-SA 4.0 repository"
                .into(),
        });
    }
    match repos.densepose_source() {
        None | Some(DensePoseSource::Off) | Some(DensePoseSource::Random) => {}
        Some(source) => licences.push(Licence {
            part: "DensePose R-CNN (R_50_FPN_s1x, model zoo 165712039)".into(),
            source: match source {
                DensePoseSource::Folder(dir) => dir.display().to_string(),
                _ => format!("{}/{DENSEPOSE_FOLDER}", repos.attention.id),
            },
            licence: "detectron2 and its configuration Apache-2.0; DensePose model zoo weights \
                      CC BY-SA 3.0"
                .into(),
        }),
    }
    licences
}

/// Puts the files into the local-folder layout under `dir` (`base/unet`, `base/scheduler`,
/// `vae`, `attention`): a hard link to the cache's blob where the file system allows it, else a
/// copy. A file already there that is the same blob is left alone.
pub fn write_local(files: &ModelFiles, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let unet_name = files
        .unet_weights
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "diffusion_pytorch_model.safetensors".into());
    let targets = [
        (&files.unet_config, dir.join("base/unet/config.json")),
        (&files.unet_weights, dir.join("base/unet").join(unet_name)),
        (
            &files.scheduler_config,
            dir.join("base/scheduler/scheduler_config.json"),
        ),
        (&files.vae_config, dir.join("vae/config.json")),
        (&files.vae_weights, dir.join("vae").join(VAE_WEIGHTS)),
        (&files.attention, dir.join("attention/model.safetensors")),
    ];
    let mut written = Vec::new();
    for (source, target) in targets {
        if place(source, &target)? {
            written.push(target);
        }
    }
    Ok(written)
}

/// Links or copies `source` (a snapshot entry) to `target`; false when `target` already is it.
fn place(source: &Path, target: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let blob = std::fs::canonicalize(source)?;
    let blob_meta = std::fs::metadata(&blob)?;
    if let Ok(meta) = std::fs::metadata(target) {
        if meta.dev() == blob_meta.dev() && meta.ino() == blob_meta.ino() {
            return Ok(false);
        }
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = target.as_os_str().to_os_string();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&blob, &tmp).is_err() {
        std::fs::copy(&blob, &tmp)?;
    }
    std::fs::rename(&tmp, target)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        repos: CatvtonRepos,
    }

    fn source(args: &[&str]) -> Option<DensePoseSource> {
        let mut argv = vec!["virtualfit"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv)
            .expect("flags")
            .repos
            .densepose_source()
    }

    #[test]
    fn densepose_comes_from_where_the_parsers_come_from_unless_named() {
        assert_eq!(source(&[]), None, "no parsers, no automatic mask");
        assert_eq!(
            source(&["--masker-source", "hub"]),
            Some(DensePoseSource::Hub)
        );
        assert_eq!(
            source(&["--masker-source", "random:3"]),
            Some(DensePoseSource::Random)
        );
        assert_eq!(
            source(&["--masker-source", "/w/SCHP"]),
            Some(DensePoseSource::Folder(PathBuf::from("/w/DensePose")))
        );
        assert_eq!(
            source(&["--masker-source", "hub", "--masker-densepose", "off"]),
            Some(DensePoseSource::Off)
        );
        assert_eq!(
            source(&["--masker-source", "hub", "--masker-densepose", "/d"]),
            Some(DensePoseSource::Folder(PathBuf::from("/d")))
        );
    }

    #[test]
    fn the_suggested_command_repeats_a_densepose_choice() {
        let flags = Flags::try_parse_from([
            "virtualfit",
            "--masker-source",
            "hub",
            "--masker-densepose",
            "off",
        ])
        .expect("flags");
        assert!(flags
            .repos
            .flags()
            .contains(&"--masker-densepose off".to_string()));
        let flags = Flags::try_parse_from(["virtualfit", "--masker-source", "hub"]).expect("flags");
        assert!(!flags.repos.flags().iter().any(|f| f.contains("densepose")));
    }
}
