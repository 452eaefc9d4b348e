//! The registry: every model the server can run, by name, and the one loader. Adding a model is
//! writing its files under `src/models/` and one line in [`REGISTRY`]; nothing above this
//! module names a model.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use clap::Args;

use super::{
    catvton, dmvton, identity_steps, overlay, InputSpec, Licence, LoadedModel, ModelError,
    OptionLimits, OptionSpec, PersonMasker, RequestOptions,
};
use crate::hub::{Hub, HubArgs, Reporter};

/// Every model, in the order `--help` and `/v1/models` list them. The first is the default.
pub static REGISTRY: &[&dyn ModelFamily] = &[
    &overlay::Family,
    &dmvton::Family,
    &catvton::Family,
    &identity_steps::Family,
];

/// The model served when `--model` is not given: the weight-free one, so a fresh clone serves.
pub const DEFAULT_MODEL: &str = "overlay";

/// A model as the server, the CLI and the documents see it before it is loaded.
pub trait ModelFamily: Sync {
    /// The registry name, as `--model` and `/v1/models` spell it.
    fn name(&self) -> &'static str;
    /// One line for `--help` and `/v1/models`.
    fn about(&self) -> &'static str;
    /// Test-only models are left out of listings, and still served by name.
    fn hidden(&self) -> bool {
        false
    }
    /// The request options, under the server's bounds.
    fn options(&self, _limits: &OptionLimits) -> Vec<OptionSpec> {
        Vec::new()
    }
    /// The inputs a request with these options needs.
    fn input(&self, options: &RequestOptions) -> InputSpec;
    /// The licence of each part of the weights (none for a weight-free model).
    fn licences(&self, _flags: &ModelFlags) -> Vec<Licence> {
        Vec::new()
    }
    /// Loads the model from `request.source`.
    fn load(&self, request: &LoadRequest<'_>) -> Result<LoadedModel, ModelError>;
    /// The model with random weights at its full size, to time it without the downloads
    /// (`bench model --random-weights`); `None` when it has no such form.
    fn random(&self, _request: &LoadRequest<'_>) -> Option<Result<LoadedModel, ModelError>> {
        None
    }
    /// Whether [`ModelFamily::random`] gives a model.
    fn offers_random(&self) -> bool {
        false
    }
    /// Fetches the weights from the hub into its cache (and lays them out in `to`); the
    /// files in the cache.
    fn download(
        &self,
        _hub: &Hub,
        _reporter: &Reporter,
        _request: &LoadRequest<'_>,
        _to: Option<&Path>,
    ) -> Result<Downloaded, ModelError> {
        Err(self.not_on_hub())
    }
    /// The masker its flags name (e.g. `--masker-source`), loaded onto the request's device;
    /// `None`: the drawn mask of [`InputSpec::person_mask`] serves.
    fn masker(
        &self,
        _request: &MaskerRequest<'_>,
    ) -> Result<Option<std::sync::Arc<dyn PersonMasker>>, ModelError> {
        Ok(None)
    }
    /// Refuses options that only a loaded masker serves (`has_masker` says whether one is).
    fn check_masker_options(
        &self,
        _options: &RequestOptions,
        _has_masker: bool,
    ) -> Result<(), String> {
        Ok(())
    }
    /// The error for `--model-source hub` when the model has no repository there.
    fn not_on_hub(&self) -> ModelError {
        ModelError::NotOnHub {
            model: self.name().into(),
            help: "it has no weights on the hub".into(),
        }
    }
}

/// What `virtualfit download` fetched.
#[derive(Debug, Clone, Default)]
pub struct Downloaded {
    /// The files in the hub cache.
    pub files: Vec<PathBuf>,
    /// The files laid out under `--to`.
    pub written: Vec<PathBuf>,
}

/// Where a model's weights are, as a loader reads them.
pub enum WeightSource<'a> {
    /// No weights given.
    None,
    /// A local folder.
    Dir(&'a Path),
    /// The model's repositories on the Hugging Face Hub, through the cache.
    Hub {
        hub: &'a Hub,
        reporter: &'a Reporter,
    },
}

/// Everything a loader needs: where, onto which device, in which precision, with the models'
/// own flags.
pub struct LoadRequest<'a> {
    pub source: WeightSource<'a>,
    pub device: &'a Device,
    /// The compute precision of models that offer several (the others run in f32).
    pub dtype: DType,
    pub flags: &'a ModelFlags,
}

/// What a family's masker loads from.
pub struct MaskerRequest<'a> {
    pub device: &'a Device,
    pub flags: &'a ModelFlags,
    /// Opens the hub cache, for a masker whose flags name the hub (opened only then).
    pub hub: &'a dyn Fn() -> Result<Hub, ModelError>,
    pub reporter: &'a Reporter,
}

/// The models' own flags (e.g. which hub repositories a model reads).
#[derive(Debug, Clone, Args)]
pub struct ModelFlags {
    #[command(flatten)]
    pub catvton: catvton::sources::CatvtonRepos,
}

impl Default for ModelFlags {
    /// Every flag at its default (or its environment variable).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            flags: ModelFlags,
        }
        <Defaults as clap::Parser>::try_parse_from(["virtualfit"])
            .map(|d| d.flags)
            .unwrap_or_else(|e| panic!("the models' flags have defaults: {e}"))
    }
}

impl ModelFlags {
    /// The flags that differ from their defaults, to repeat in a suggested command.
    pub fn changed(&self) -> Vec<String> {
        self.catvton.flags()
    }
}

/// The model registered under `name`.
pub fn family(name: &str) -> Result<&'static dyn ModelFamily, ModelError> {
    REGISTRY
        .iter()
        .copied()
        .find(|f| f.name() == name)
        .ok_or_else(|| ModelError::UnknownModel(crate::api::echo(name)))
}

/// The names of the models this build serves, in listing order (test-only models left out).
pub fn names() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|f| !f.hidden())
        .map(|f| f.name())
        .collect()
}

/// Names accepted by `--model`, in the order `/v1/models` lists them.
pub static MODEL_NAMES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(names);

/// `--model`'s parser: a registered name (test-only ones hidden from the help).
pub fn name_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(REGISTRY.iter().map(|f| {
        clap::builder::PossibleValue::new(f.name())
            .help(f.about())
            .hide(f.hidden())
    }))
}

/// The one loader: the model `name` from `source`, onto `device`, in `dtype` (for models that
/// offer several), with the models' default flags.
pub fn load(
    name: &str,
    source: WeightSource<'_>,
    device: &Device,
    dtype: DType,
) -> Result<LoadedModel, ModelError> {
    family(name)?.load(&LoadRequest {
        source,
        device,
        dtype,
        flags: &ModelFlags::default(),
    })
}

/// The folder of a model that needs one.
pub fn required_dir<'a>(source: &WeightSource<'a>, model: &str) -> Result<&'a Path, ModelError> {
    match source {
        WeightSource::Dir(dir) => Ok(dir),
        _ => Err(ModelError::MissingModelDir {
            model: model.to_string(),
        }),
    }
}

/// The request options of every model, once per name (the first declaration of a name wins),
/// for the CLI's flags.
pub fn all_options(limits: &OptionLimits) -> Vec<OptionSpec> {
    let mut all: Vec<OptionSpec> = Vec::new();
    for family in REGISTRY {
        for spec in family.options(limits) {
            if !all.iter().any(|s| s.name == spec.name) {
                all.push(spec);
            }
        }
    }
    all
}

/// The README's table of every model's options, at the default `--max-steps` (a test keeps
/// the README in step).
pub fn options_table(limits: &OptionLimits) -> String {
    let mut out = String::from("| model | option | type | values | default | meaning |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for family in REGISTRY.iter().filter(|f| !f.hidden()) {
        for spec in family.options(limits) {
            let default = match spec.default_value() {
                serde_json::Value::Null => "drawn".to_string(),
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            };
            // A table cell cannot hold `|`.
            let values = match &spec.kind {
                super::OptionKind::Choice { .. } | super::OptionKind::Preset { .. } => spec
                    .words()
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => spec.bounds(),
            };
            out.push_str(&format!(
                "| `{}` | `{}` | {} | {} | {} | {} |\n",
                family.name(),
                spec.name,
                spec.type_name(),
                values,
                default,
                spec.help.replace('|', "\\|")
            ));
        }
    }
    out
}

/// The request options as command-line flags (`virtualfit tryon`, `bench model`): one
/// `--NAME VALUE` flag for every option any model declares, checked against the chosen model's
/// declaration once it is known ([`OptionFlags::options`]).
#[derive(Debug, Clone, Default)]
pub struct OptionFlags(Vec<(String, String)>);

impl OptionFlags {
    fn declared() -> Vec<OptionSpec> {
        all_options(&OptionLimits {
            max_steps: usize::MAX,
        })
    }

    /// The given flags as the model's options, under `limits`; absent seeds are drawn.
    pub fn options(
        &self,
        family: &dyn ModelFamily,
        limits: &OptionLimits,
    ) -> Result<RequestOptions, String> {
        let specs = family.options(limits);
        if let Some((name, _)) = self
            .0
            .iter()
            .find(|(name, _)| !specs.iter().any(|s| s.name == name))
        {
            return Err(format!(
                "--{name} is not an option of model `{}`",
                family.name()
            ));
        }
        RequestOptions::parse(
            &specs,
            |name| {
                self.0
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            },
            rand::random,
        )
    }
}

impl clap::FromArgMatches for OptionFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(OptionFlags(
            Self::declared()
                .into_iter()
                .filter_map(|spec| {
                    matches
                        .get_one::<String>(spec.name)
                        .map(|v| (spec.name.to_string(), v.clone()))
                })
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for OptionFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        Self::declared().into_iter().fold(command, |command, spec| {
            command.arg(
                clap::Arg::new(spec.name)
                    .long(spec.name)
                    .value_name(match spec.kind {
                        super::OptionKind::Integer { .. } | super::OptionKind::Seed => "N",
                        super::OptionKind::Number { .. } => "X",
                        super::OptionKind::Choice { .. } | super::OptionKind::Preset { .. } => {
                            "WORD"
                        }
                    })
                    .help(spec.help)
                    .required(false),
            )
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// The model to load, converted from the flags.
#[derive(Debug, Clone)]
pub struct ModelChoice {
    pub name: String,
    /// `None`: no weights given.
    pub source: Option<SourceChoice>,
    pub dtype: DType,
    pub flags: ModelFlags,
    pub hub: HubArgs,
}

/// Where the weights come from (`--model-source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChoice {
    /// The model's published repositories on the Hugging Face Hub, through the hub cache.
    Hub,
    /// A local folder.
    Dir(PathBuf),
}

impl std::str::FromStr for SourceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("use `hub` or a folder".into()),
            "hub" => Ok(SourceChoice::Hub),
            // A folder literally named `hub` is `./hub`.
            dir => Ok(SourceChoice::Dir(PathBuf::from(dir))),
        }
    }
}

impl ModelChoice {
    pub fn family(&self) -> Result<&'static dyn ModelFamily, ModelError> {
        family(&self.name)
    }

    /// The licences of the model's weights.
    pub fn licences(&self) -> Vec<Licence> {
        self.family()
            .map(|f| f.licences(&self.flags))
            .unwrap_or_default()
    }

    /// Loads the masker the flags name onto `device` (fetching its weights first when the flags
    /// name the hub, progress through `reporter`), and logs which masker serves.
    pub fn masker(
        &self,
        device: &Device,
        reporter: &Reporter,
    ) -> Result<Option<std::sync::Arc<dyn PersonMasker>>, ModelError> {
        let family = self.family()?;
        let masker = family.masker(&MaskerRequest {
            device,
            flags: &self.flags,
            hub: &|| self.hub(),
            reporter,
        })?;
        if family
            .input(&RequestOptions::default())
            .person_mask
            .is_some()
        {
            let name = masker.as_ref().map(|m| m.name()).unwrap_or("drawn");
            tracing::info!(masker = name, "person mask: {name}");
        }
        Ok(masker)
    }

    /// Loads the model onto `device`, fetching its weights first from the hub when asked
    /// (progress through `reporter`). Logs each part's licence.
    pub fn load(&self, device: &Device, reporter: &Reporter) -> Result<LoadedModel, ModelError> {
        let family = self.family()?;
        let hub;
        let source = match &self.source {
            None => WeightSource::None,
            Some(SourceChoice::Dir(dir)) => WeightSource::Dir(dir),
            Some(SourceChoice::Hub) => {
                hub = self.hub()?;
                WeightSource::Hub {
                    hub: &hub,
                    reporter,
                }
            }
        };
        let model = family.load(&LoadRequest {
            source,
            device,
            dtype: self.dtype,
            flags: &self.flags,
        })?;
        for licence in self.licences() {
            tracing::info!(part = %licence.part, source = %licence.source, licence = %licence.licence, "weights licence: {licence}");
        }
        Ok(model)
    }

    /// `virtualfit download`: the weights into the hub cache, verified, and laid out in `to`.
    pub fn download(
        &self,
        reporter: &Reporter,
        to: Option<&Path>,
    ) -> Result<Downloaded, ModelError> {
        let family = self.family()?;
        let hub = self.hub()?;
        family.download(
            &hub,
            reporter,
            &LoadRequest {
                source: WeightSource::None,
                device: &Device::Cpu,
                dtype: self.dtype,
                flags: &self.flags,
            },
            to,
        )
    }

    fn hub(&self) -> Result<Hub, ModelError> {
        Ok(Hub::new(&self.hub, self.download_command())?)
    }

    /// The command that fetches these weights into the cache, for the offline error.
    fn download_command(&self) -> String {
        let mut command = format!("virtualfit download --model {}", self.name);
        if self.dtype != DType::F32 {
            command.push_str(&format!(" --dtype {}", self.dtype.as_str()));
        }
        for flag in self.flags.changed() {
            command.push(' ');
            command.push_str(&flag);
        }
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_resolve() {
        let mut seen = std::collections::HashSet::new();
        for f in REGISTRY {
            assert!(seen.insert(f.name()), "{} registered twice", f.name());
            assert_eq!(family(f.name()).expect("found").name(), f.name());
        }
        assert_eq!(REGISTRY[0].name(), DEFAULT_MODEL);
        assert!(family(&"x".repeat(1000)).is_err());
        assert!(!names().contains(&identity_steps::Family.name()));
    }

    #[test]
    fn every_model_states_inputs_for_its_default_options() {
        let limits = OptionLimits::default();
        for f in REGISTRY {
            let options = RequestOptions::parse(&f.options(&limits), |_| None, || 1)
                .unwrap_or_else(|e| panic!("{}: {e}", f.name()));
            let spec = f.input(&options);
            assert!(spec.frame.0 > 0 && spec.frame.1 > 0, "{}", f.name());
        }
    }

    #[test]
    fn the_readme_lists_every_model_option() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .expect("README.md");
        let table = options_table(&OptionLimits::default());
        let (start, end) = ("<!-- model-options -->\n", "<!-- /model-options -->");
        let block = readme
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(block, _)| block)
            .expect("the README's model-options block");
        assert!(
            block == table,
            "README.md's model-options block should read:\n{table}"
        );
    }
}
