//! Model weights from the Hugging Face Hub, kept in the standard hub cache
//! (`models--org--name/{blobs,snapshots/<commit>,refs/<revision>}`), which the Python tools share.
//!
//! hf-hub transfers each file: ranged requests into a `.sync.part` file that records how much is
//! written, so an interrupted download resumes after its last whole chunk. On top of it:
//! - a manifest per repository (`virtualfit.json` in its cache folder) records the commit the hub
//!   answered for a revision and each verified file's etag, so a restart with every file in the
//!   cache touches no network and loads exactly what was verified, at that commit;
//! - every file is verified before use: LFS files against their sha256 (the hub's linked etag),
//!   small files against their git blob sha1; a file that does not match is fetched again once;
//! - offline (`HF_HUB_OFFLINE=1`, `--offline`), a missing file is an error that lists them all;
//! - the hub's refusals become errors that say what to do (401/403: `HF_TOKEN`; 404: the
//!   revision, the repository or the file).
//!
//! Endpoint, cache and token are read from our flags and their env (`HF_ENDPOINT`,
//! `HF_HUB_CACHE` / `HF_HOME`, `HF_TOKEN`) and handed to hf-hub explicitly.

pub mod progress;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use hf_hub::api::tokio::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use serde::{Deserialize, Serialize};

pub use progress::Reporter;

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The manifest's name inside a repository's cache folder.
const MANIFEST: &str = "virtualfit.json";
/// Bytes read at a time when hashing.
const HASH_BUFFER: usize = 1 << 20;

/// Where the hub is, where its cache lives, and how to talk to it.
#[derive(Debug, Clone, Args)]
pub struct HubArgs {
    /// The hub's address (with `--model-source hub`).
    #[arg(long = "hub-endpoint", env = "HF_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The hub cache folder [default: $HF_HOME/hub, else ~/.cache/huggingface/hub].
    #[arg(long = "hub-cache", env = "HF_HUB_CACHE")]
    pub cache: Option<PathBuf>,
    /// Hugging Face's home folder; its `hub/` is the cache when --hub-cache is unset.
    #[arg(long = "hf-home", env = "HF_HOME")]
    pub hf_home: Option<PathBuf>,
    /// Access token for gated or private repositories [default: the file `token` in
    /// $HF_HOME, which `huggingface-cli login` writes].
    #[arg(long = "hf-token", env = "HF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Never contact the hub: every file must already be verified in the cache.
    #[arg(long, env = "HF_HUB_OFFLINE", value_parser = clap::builder::BoolishValueParser::new())]
    pub offline: bool,
    /// Bytes per ranged request of a download; an interrupted download resumes after the last
    /// whole one.
    #[arg(long = "hub-chunk-size", env = "VIRTUALFIT_HUB_CHUNK_SIZE", default_value = "10MiB", value_parser = crate::config::byte_size)]
    pub chunk_size: u64,
}

impl HubArgs {
    /// The cache folder: `--hub-cache`, else `$HF_HOME/hub`, else the hub's default under
    /// `$XDG_CACHE_HOME` or `~/.cache`.
    pub fn cache_dir(&self) -> Result<PathBuf, HubError> {
        if let Some(cache) = &self.cache {
            return Ok(cache.clone());
        }
        self.hf_home()
            .map(|home| home.join("hub"))
            .ok_or(HubError::NoCacheDir)
    }

    /// Hugging Face's home: `--hf-home`, else `huggingface/` under `$XDG_CACHE_HOME` or
    /// `~/.cache`.
    fn hf_home(&self) -> Option<PathBuf> {
        self.hf_home.clone().or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|base| base.join("huggingface"))
        })
    }

    /// The token: `--hf-token` / `HF_TOKEN`, else the one `huggingface-cli login` saved.
    fn token(&self) -> Option<String> {
        let token = self.token.clone().or_else(|| {
            let path = self.hf_home()?.join("token");
            std::fs::read_to_string(path).ok()
        })?;
        let token = token.trim();
        (!token.is_empty()).then(|| token.to_string())
    }
}

/// A repository on the hub and the revision to read: `org/name` or `org/name@revision` (a
/// branch, a tag or a commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub id: String,
    pub revision: String,
}

impl RepoRef {
    pub fn new(id: &str, revision: &str) -> Self {
        Self {
            id: id.to_string(),
            revision: revision.to_string(),
        }
    }

    /// The repository's folder in the hub cache.
    fn folder_name(&self) -> String {
        format!("models--{}", self.id.replace('/', "--"))
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.revision)
    }
}

fn name_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl std::str::FromStr for RepoRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (s, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| name_chars_ok(p) && !p.contains("..")) {
            return Err(format!(
                "`{}` is not a repository id: use org/name or org/name@revision",
                crate::api::echo(s)
            ));
        }
        let revision_ok =
            revision.len() <= 200 && revision.split('/').all(|p| name_chars_ok(p) && p != "..");
        if !revision_ok {
            return Err(format!(
                "`{}` is not a revision: use a branch, a tag or a commit",
                crate::api::echo(revision)
            ));
        }
        Ok(RepoRef::new(id, revision))
    }
}

/// One file a model reads from a repository: the first of `candidates` that the repository
/// holds (a half-precision file before the full one, say).
#[derive(Debug, Clone)]
pub struct Wanted {
    pub candidates: Vec<String>,
}

impl Wanted {
    pub fn file(path: &str) -> Self {
        Self {
            candidates: vec![path.to_string()],
        }
    }

    pub fn first_of(paths: &[&str]) -> Self {
        Self {
            candidates: paths.iter().map(|p| p.to_string()).collect(),
        }
    }
}

/// The files of one repository that a model reads.
#[derive(Debug, Clone)]
pub struct RepoRequest {
    pub repo: RepoRef,
    pub files: Vec<Wanted>,
}

/// A file in the cache, verified.
#[derive(Debug, Clone)]
pub struct CachedFile {
    /// Its path in the repository.
    pub name: String,
    /// Its path in the cache (`snapshots/<commit>/<name>`).
    pub path: PathBuf,
    pub size: u64,
}

/// What one repository request resolved to: the commit and a file per [`Wanted`], in order.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub repo: RepoRef,
    pub commit: String,
    pub files: Vec<CachedFile>,
}

/// Why the weights could not be had from the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("no hub cache folder: set HF_HUB_CACHE (or HF_HOME, or HOME)")]
    NoCacheDir,
    #[error(
        "offline (HF_HUB_OFFLINE / --offline) and not in the hub cache {cache}: {}; fetch them \
         on a machine with access to the hub with `{command}` (same HF_HUB_CACHE), or run \
         without HF_HUB_OFFLINE",
        missing.join(", ")
    )]
    Offline {
        cache: String,
        missing: Vec<String>,
        command: String,
    },
    #[error(
        "the hub refused {repo} (HTTP {status}) for {file}: set HF_TOKEN to a token that can read \
         it (https://huggingface.co/settings/tokens), and accept the model's terms on its page if \
         it is gated"
    )]
    Unauthorized {
        repo: String,
        file: String,
        status: u16,
    },
    #[error(
        "revision `{revision}` not found in {repo}: use a branch, a tag or a commit of the \
         repository (`{repo}@REVISION`)"
    )]
    RevisionNotFound { repo: String, revision: String },
    #[error("repository {repo} not found on {endpoint} (a private one needs HF_TOKEN)")]
    RepoNotFound { repo: String, endpoint: String },
    #[error("{repo} has no file {file} (tried: {})", tried.join(", "))]
    FileNotFound {
        repo: String,
        file: String,
        tried: Vec<String>,
    },
    #[error("the hub answered HTTP {status} for {file} of {repo}")]
    Http {
        repo: String,
        file: String,
        status: u16,
    },
    #[error(
        "cannot download {file} of {repo} from {endpoint}: {reason} (with every file in the \
         cache, HF_HUB_OFFLINE=1 starts without the hub)"
    )]
    Transfer {
        repo: String,
        file: String,
        endpoint: String,
        reason: String,
    },
    #[error(
        "{file} of {repo} does not match the hub's checksum twice ({detail}): the download is \
         corrupted on the way; try again"
    )]
    Corrupt {
        repo: String,
        file: String,
        detail: String,
    },
    #[error(
        "{repo} moved from commit {pinned} to {answered} while its files were fetched: run again"
    )]
    Moved {
        repo: String,
        pinned: String,
        answered: String,
    },
    #[error("hub cache {path}: {reason}")]
    Cache { path: PathBuf, reason: String },
}

fn cache_error(path: &Path, reason: impl std::fmt::Display) -> HubError {
    HubError::Cache {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// What `virtualfit.json` records per requested revision.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Manifest {
    revisions: BTreeMap<String, Snapshot>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Snapshot {
    /// The commit the hub answered for the revision; later files are fetched at this commit.
    commit: String,
    /// Verified files: their etag (sha256 or git sha1) and size.
    files: BTreeMap<String, FileRecord>,
    /// Candidate files the repository does not have at this commit.
    #[serde(default)]
    absent: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileRecord {
    etag: String,
    size: u64,
}

/// One repository's state between the look into the cache and the downloads.
struct Plan {
    manifest: Manifest,
    /// The manifest's snapshot as read, to tell whether it must be written back.
    recorded: Snapshot,
    snapshot: Snapshot,
    /// Per wanted file, the verified cached one.
    found: Vec<Option<CachedFile>>,
}

/// The hub client with its cache.
pub struct Hub {
    api: Api,
    /// For the one request hf-hub cannot answer: why a file is not found.
    probe: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    cache: PathBuf,
    offline: bool,
    /// The command that fetches the files, for the offline error.
    download_command: String,
}

impl Hub {
    /// A client for `args`; `download_command` is what the offline error tells to run.
    pub fn new(args: &HubArgs, download_command: String) -> Result<Self, HubError> {
        let cache = args.cache_dir()?;
        let endpoint = args.endpoint.trim_end_matches('/').to_string();
        let token = args.token();
        let chunk = usize::try_from(args.chunk_size.max(1)).unwrap_or(usize::MAX);
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache.clone()))
            .with_endpoint(endpoint.clone())
            .with_token(token.clone())
            .with_progress(false)
            .with_chunk_size(Some(chunk))
            .with_user_agent("virtualfit", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| cache_error(&cache, format!("cannot set up the hub client: {e}")))?;
        let probe = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| cache_error(&cache, format!("cannot set up an HTTP client: {e}")))?;
        Ok(Self {
            api,
            probe,
            endpoint,
            token,
            cache,
            offline: args.offline,
            download_command,
        })
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    fn repo_dir(&self, repo: &RepoRef) -> PathBuf {
        self.cache.join(repo.folder_name())
    }

    fn read_manifest(&self, repo: &RepoRef) -> Manifest {
        let path = self.repo_dir(repo).join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "unreadable manifest, checking again: {e}");
                Manifest::default()
            }),
            Err(_) => Manifest::default(),
        }
    }

    fn write_manifest(&self, repo: &RepoRef, manifest: &Manifest) -> Result<(), HubError> {
        let dir = self.repo_dir(repo);
        std::fs::create_dir_all(&dir).map_err(|e| cache_error(&dir, e))?;
        let path = dir.join(MANIFEST);
        // Pods sharing the cache on a volume may write at once: each its own temporary file.
        let tmp = dir.join(format!("{MANIFEST}.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| cache_error(&path, e))?;
        std::fs::write(&tmp, bytes).map_err(|e| cache_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| cache_error(&path, e))
    }

    fn snapshot_path(&self, repo: &RepoRef, commit: &str, name: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("snapshots")
            .join(commit)
            .join(name)
    }

    /// Resolves every request: from the cache where the manifest and the files agree, else
    /// (online) from the hub. Offline, every file missing from the cache is listed at once.
    /// Each cached file is read once, to verify it.
    pub async fn resolve(
        &self,
        requests: &[RepoRequest],
        reporter: &Reporter,
    ) -> Result<Vec<Resolved>, HubError> {
        let mut missing = Vec::new();
        let mut plans = Vec::with_capacity(requests.len());
        for request in requests {
            let manifest = self.read_manifest(&request.repo);
            let recorded = manifest
                .revisions
                .get(&request.repo.revision)
                .cloned()
                .unwrap_or_default();
            let mut snapshot = recorded.clone();
            let found: Vec<Option<CachedFile>> = request
                .files
                .iter()
                .map(|wanted| self.cached(&request.repo, &mut snapshot, wanted))
                .collect();
            for (wanted, file) in request.files.iter().zip(&found) {
                if file.is_none() {
                    missing.push(format!(
                        "{} {}",
                        request.repo,
                        wanted.candidates.join(" or ")
                    ));
                }
            }
            plans.push(Plan {
                manifest,
                recorded,
                snapshot,
                found,
            });
        }
        if !missing.is_empty() && self.offline {
            return Err(HubError::Offline {
                cache: self.cache.display().to_string(),
                missing,
                command: self.download_command.clone(),
            });
        }
        let mut resolved = Vec::with_capacity(requests.len());
        for (request, plan) in requests.iter().zip(plans) {
            resolved.push(self.resolve_repo(request, plan, reporter).await?);
        }
        Ok(resolved)
    }

    /// The first candidate of `wanted` that the cache holds intact at the snapshot's commit;
    /// `None` when one must be fetched. A file the manifest does not record yet (a cache filled
    /// by the Python tools) is checked against its blob's name, which is its etag, and recorded.
    /// A file that fails its check is removed.
    fn cached(
        &self,
        repo: &RepoRef,
        snapshot: &mut Snapshot,
        wanted: &Wanted,
    ) -> Option<CachedFile> {
        if snapshot.commit.is_empty() {
            snapshot.commit = self.ref_commit(repo)?;
        }
        for name in &wanted.candidates {
            if snapshot.absent.contains(name) {
                continue;
            }
            let path = self.snapshot_path(repo, &snapshot.commit, name);
            let recorded = snapshot.files.get(name).map(|r| r.etag.clone());
            let Some(etag) = recorded.clone().or_else(|| blob_etag(&path)) else {
                // Online, a candidate not looked for yet is asked for; offline, the next one
                // in the cache does.
                if self.offline {
                    continue;
                }
                return None;
            };
            match verify(&path, &etag) {
                Ok(()) => {
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if recorded.is_none() {
                        tracing::info!(repo = %repo, file = %name, "verified in the hub cache");
                        snapshot
                            .files
                            .insert(name.clone(), FileRecord { etag, size });
                    }
                    return Some(CachedFile {
                        name: name.clone(),
                        path,
                        size,
                    });
                }
                Err(Check::Missing) => return None,
                Err(Check::Mismatch(detail)) => {
                    tracing::warn!(
                        repo = %repo, file = %name,
                        "cached file does not match its checksum ({detail}); fetching it again"
                    );
                    remove_cached(&path);
                    snapshot.files.remove(name);
                    return None;
                }
            }
        }
        None
    }

    /// The commit the cache's `refs/<revision>` names (or the revision, if it is a commit the
    /// cache has a snapshot of).
    fn ref_commit(&self, repo: &RepoRef) -> Option<String> {
        let dir = self.repo_dir(repo);
        let commit = match std::fs::read_to_string(dir.join("refs").join(&repo.revision)) {
            Ok(text) => text.trim().to_string(),
            Err(_) => repo.revision.clone(),
        };
        let is_commit = commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit());
        (is_commit && dir.join("snapshots").join(&commit).is_dir()).then_some(commit)
    }

    /// Fetches what the cache lacked for one repository, and records what was verified.
    async fn resolve_repo(
        &self,
        request: &RepoRequest,
        plan: Plan,
        reporter: &Reporter,
    ) -> Result<Resolved, HubError> {
        let repo = &request.repo;
        let Plan {
            mut manifest,
            recorded,
            mut snapshot,
            found,
        } = plan;
        let mut files = Vec::with_capacity(request.files.len());
        for (wanted, cached) in request.files.iter().zip(found) {
            if let Some(file) = cached {
                files.push(file);
                continue;
            }
            let file = self
                .fetch_wanted(repo, &mut snapshot, wanted, reporter)
                .await;
            // What was verified (or found absent) stays recorded even when a later file fails.
            manifest
                .revisions
                .insert(repo.revision.clone(), snapshot.clone());
            self.write_manifest(repo, &manifest)?;
            files.push(file?);
        }
        if snapshot != recorded {
            // Files found verified in the cache without a record (the Python tools' downloads).
            manifest
                .revisions
                .insert(repo.revision.clone(), snapshot.clone());
            self.write_manifest(repo, &manifest)?;
        }
        Ok(Resolved {
            repo: repo.clone(),
            commit: snapshot.commit,
            files,
        })
    }

    /// Fetches the first candidate the repository has, verifies it and records it.
    async fn fetch_wanted(
        &self,
        repo: &RepoRef,
        snapshot: &mut Snapshot,
        wanted: &Wanted,
        reporter: &Reporter,
    ) -> Result<CachedFile, HubError> {
        for (i, name) in wanted.candidates.iter().enumerate() {
            let last = i + 1 == wanted.candidates.len();
            if snapshot.absent.contains(name) && !last {
                continue;
            }
            match self.fetch_verified(repo, snapshot, name, reporter).await {
                Ok(file) => return Ok(file),
                Err(HubError::FileNotFound { .. }) if !last => {
                    tracing::info!(repo = %repo, file = %name, "not in the repository; trying the next file");
                    snapshot.absent.insert(name.clone());
                }
                Err(HubError::FileNotFound { repo, file, .. }) => {
                    return Err(HubError::FileNotFound {
                        repo,
                        file,
                        tried: wanted.candidates.clone(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last candidate returns")
    }

    /// Downloads `name` at the snapshot's commit (the requested revision for the first file),
    /// verifies it, and fetches it once more if it does not match.
    async fn fetch_verified(
        &self,
        repo: &RepoRef,
        snapshot: &mut Snapshot,
        name: &str,
        reporter: &Reporter,
    ) -> Result<CachedFile, HubError> {
        let mut last_mismatch = String::new();
        for attempt in 0..2 {
            let (commit, etag, path) = self.download(repo, snapshot, name, reporter).await?;
            if snapshot.commit.is_empty() {
                snapshot.commit = commit.clone();
            } else if snapshot.commit != commit {
                return Err(HubError::Moved {
                    repo: repo.to_string(),
                    pinned: snapshot.commit.clone(),
                    answered: commit,
                });
            }
            match verify(&path, &etag) {
                Ok(()) => {
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    snapshot.files.insert(
                        name.to_string(),
                        FileRecord {
                            etag: etag.clone(),
                            size,
                        },
                    );
                    snapshot.absent.remove(name);
                    tracing::info!(repo = %repo, commit = %commit, file = %name, size, "verified");
                    return Ok(CachedFile {
                        name: name.to_string(),
                        path,
                        size,
                    });
                }
                Err(Check::Missing) => {
                    return Err(cache_error(
                        &path,
                        "the downloaded file is not in the cache",
                    ))
                }
                Err(Check::Mismatch(detail)) => {
                    tracing::warn!(
                        repo = %repo, file = %name, attempt,
                        "download does not match the hub's checksum ({detail}); fetching it again"
                    );
                    remove_cached(&path);
                    last_mismatch = detail;
                }
            }
        }
        Err(HubError::Corrupt {
            repo: repo.to_string(),
            file: name.to_string(),
            detail: last_mismatch,
        })
    }

    /// One hf-hub download: the commit the hub answered, the file's etag and its snapshot path.
    async fn download(
        &self,
        repo: &RepoRef,
        snapshot: &Snapshot,
        name: &str,
        reporter: &Reporter,
    ) -> Result<(String, String, PathBuf), HubError> {
        // After the first file, the rest come from the same commit, even if the branch moves.
        let revision = if snapshot.commit.is_empty() {
            repo.revision.clone()
        } else {
            snapshot.commit.clone()
        };
        let api_repo = self.api.repo(Repo::with_revision(
            repo.id.clone(),
            RepoType::Model,
            revision.clone(),
        ));
        let progress = reporter.file(&format!("{}/{}", repo.id, name));
        let pointer = match api_repo.download_with_progress(name, progress).await {
            Ok(p) => p,
            Err(e) => return Err(self.classify(repo, &revision, name, e).await),
        };
        let commit = pointer
            .strip_prefix(self.repo_dir(repo).join("snapshots"))
            .ok()
            .and_then(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                cache_error(
                    &pointer,
                    "not under a commit's folder of the repository's snapshots (the hub answered \
                     no usable X-Repo-Commit)",
                )
            })?;
        // hf-hub links the snapshot entry to blobs/<etag>.
        let etag = blob_etag(&pointer)
            .ok_or_else(|| cache_error(&pointer, "not a link to a blob named by its etag"))?;
        Ok((commit, etag, pointer))
    }

    /// Turns hf-hub's error into one that says what to do.
    async fn classify(&self, repo: &RepoRef, revision: &str, name: &str, e: ApiError) -> HubError {
        let status = match &e {
            ApiError::RequestError(r) => r.status().map(|s| s.as_u16()),
            _ => None,
        };
        match status {
            Some(401 | 403) => HubError::Unauthorized {
                repo: repo.to_string(),
                file: name.to_string(),
                status: status.unwrap_or(401),
            },
            Some(404) => self.not_found(repo, revision, name).await,
            Some(status) => HubError::Http {
                repo: repo.to_string(),
                file: name.to_string(),
                status,
            },
            None => HubError::Transfer {
                repo: repo.to_string(),
                file: name.to_string(),
                endpoint: self.endpoint.clone(),
                reason: error_chain(&e),
            },
        }
    }

    /// Asks the hub again, without hf-hub, which of revision, repository or file is missing
    /// (its `X-Error-Code`).
    async fn not_found(&self, repo: &RepoRef, revision: &str, name: &str) -> HubError {
        let url = format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            repo.id,
            revision.replace('/', "%2F"),
            name
        );
        let mut request = self
            .probe
            .get(url)
            .header(reqwest::header::RANGE, "bytes=0-0");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let code = match request.send().await {
            Ok(r) => r
                .headers()
                .get("x-error-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            Err(_) => None,
        };
        match code.as_deref() {
            Some("RevisionNotFound") => HubError::RevisionNotFound {
                repo: repo.id.clone(),
                revision: repo.revision.clone(),
            },
            Some("RepoNotFound") => HubError::RepoNotFound {
                repo: repo.id.clone(),
                endpoint: self.endpoint.clone(),
            },
            _ => HubError::FileNotFound {
                repo: repo.to_string(),
                file: name.to_string(),
                tried: vec![name.to_string()],
            },
        }
    }
}

/// An error and its sources, on one line (a source that only repeats is left out).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The etag of a snapshot entry: the name of the blob it links to (`../../blobs/<etag>`).
fn blob_etag(pointer: &Path) -> Option<String> {
    let target = std::fs::read_link(pointer).ok()?;
    let etag = target.file_name()?.to_str()?.to_string();
    matches!(etag.len(), 40 | 64)
        .then_some(etag)
        .filter(|e| e.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Removes a snapshot entry and the blob it points to, so that the next download starts clean
/// (hf-hub keeps an existing entry, even one whose blob is gone).
fn remove_cached(pointer: &Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(pointer);
}

/// Why a cached file is not usable.
#[derive(Debug)]
enum Check {
    Missing,
    Mismatch(String),
}

/// Checks a file against its etag: an LFS file's is its sha256 (64 hex digits), a small
/// file's its git blob sha1 (40).
fn verify(path: &Path, etag: &str) -> Result<(), Check> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(_) => return Err(Check::Missing),
    };
    let len = file
        .metadata()
        .map(|m| m.len())
        .map_err(|_| Check::Missing)?;
    let got = match etag.len() {
        64 => digest::<sha2::Sha256>(file, None),
        40 => digest::<sha1::Sha1>(file, Some(len)),
        _ => {
            return Err(Check::Mismatch(format!(
                "etag `{}` is neither a sha256 nor a git sha1",
                crate::api::echo(etag)
            )))
        }
    }
    .map_err(|e| Check::Mismatch(format!("cannot read it: {e}")))?;
    if got.eq_ignore_ascii_case(etag) {
        Ok(())
    } else {
        Err(Check::Mismatch(format!("expected {etag}, got {got}")))
    }
}

/// The hex digest of a file; with `git_blob_len`, of git's blob object (`blob <len>\0` first).
fn digest<D: sha2::Digest>(
    mut file: std::fs::File,
    git_blob_len: Option<u64>,
) -> std::io::Result<String> {
    let mut hasher = D::new();
    if let Some(len) = git_blob_len {
        hasher.update(format!("blob {len}\0").as_bytes());
    }
    let mut buffer = vec![0u8; HASH_BUFFER];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Runs a hub future to completion from synchronous code, on its own thread and runtime (the
/// caller may be inside another runtime's blocking pool).
pub fn block_on<T: Send>(
    future: impl std::future::Future<Output = Result<T, HubError>> + Send,
) -> Result<T, HubError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| HubError::Transfer {
                        repo: String::new(),
                        file: String::new(),
                        endpoint: String::new(),
                        reason: format!("cannot start the download runtime: {e}"),
                    })?
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(HubError::Transfer {
                    repo: String::new(),
                    file: String::new(),
                    endpoint: String::new(),
                    reason: "the download panicked (an answer the hub client could not read)"
                        .into(),
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_refs_parse_with_an_optional_revision_and_refuse_paths() {
        let r: RepoRef = "some-org/some-model".parse().expect("parses");
        assert_eq!(r, RepoRef::new("some-org/some-model", "main"));
        let r: RepoRef = "a/b@v1.0".parse().expect("parses");
        assert_eq!(r.revision, "v1.0");
        let r: RepoRef = "a/b@refs/pr/1".parse().expect("parses");
        assert_eq!(r.revision, "refs/pr/1");
        for bad in [
            "a", "a/b/c", "../b", "a/..", "a/b@", "a/b@../x", "a/b@x y", "/b",
        ] {
            assert!(bad.parse::<RepoRef>().is_err(), "{bad}");
        }
        assert_eq!(r.folder_name(), "models--a--b");
    }

    #[test]
    fn files_are_checked_against_sha256_and_git_sha1_etags() {
        let dir = std::env::temp_dir().join(format!("hub-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        std::fs::write(&path, b"hello\n").expect("write");
        // `sha256sum` and `git hash-object` of "hello\n".
        let sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let git = "ce013625030ba8dba906f756967f9e9ca394464a";
        assert!(verify(&path, sha256).is_ok());
        assert!(verify(&path, git).is_ok());
        assert!(matches!(
            verify(&path, &"0".repeat(64)),
            Err(Check::Mismatch(_))
        ));
        assert!(matches!(verify(&path, "weak"), Err(Check::Mismatch(_))));
        assert!(matches!(
            verify(&dir.join("none"), git),
            Err(Check::Missing)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
