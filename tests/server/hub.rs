//! `--model-source hub` and `virtualfit download` against a fake hub on 127.0.0.1
//! (`common::fake_hub`): download then serve, a second start that fetches nothing, a resumed
//! transfer, corruption in the cache and on the wire, offline starts, a 401, a wrong revision,
//! the folder layout of `--to`, and dmvton's refusal.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::child::ChildServer;
use common::fake_hub::{commit_of, FakeHub};
use common::{fresh_data_dir, pair_form, ScratchDir};

const BASE: &str = "booksforcharlie/stable-diffusion-inpainting";
const VAE: &str = "stabilityai/sd-vae-ft-mse";
const ATTENTION: &str = "zhengchong/CatVTON";
const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
const ATTENTION_FILE: &str = "mix-48k-1024/attention/model.safetensors";

/// The six files CatVTON reads, across its three repositories.
const MODEL_FILES: [&str; 6] = [
    "unet/config.json",
    UNET,
    "scheduler/scheduler_config.json",
    "config.json",
    "diffusion_pytorch_model.safetensors",
    ATTENTION_FILE,
];

fn files_set(files: &[&str]) -> std::collections::BTreeSet<String> {
    files.iter().map(|f| f.to_string()).collect()
}

/// The repository files the hub was asked to resolve.
fn asked_files(hub: &FakeHub) -> std::collections::BTreeSet<String> {
    hub.seen()
        .iter()
        .filter(|s| s.route == "resolve")
        .map(|s| s.what.clone())
        .collect()
}

/// A fresh, empty hub cache folder, removed when the test ends.
fn fresh_cache() -> ScratchDir {
    ScratchDir::new("hub-cache")
}

/// `virtualfit download --model catvton EXTRA…` with the hub at `hub` and the cache `cache`
/// (through the environment, as a deployment sets them); `env` adds variables.
async fn download(hub: &FakeHub, cache: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"));
    command
        .args(["download", "--model", "catvton"])
        .args(extra)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("RUST_LOG", "info")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("VIRTUALFIT_MODEL_SOURCE")
        .env_remove("VIRTUALFIT_MODEL_DIR")
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("download finishes in time")
        .expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "download failed: {}", text(o));
}

fn assert_failed(o: &Output) -> String {
    assert!(!o.status.success(), "download should fail: {}", text(o));
    text(o)
}

/// The cache folder of a repository.
fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// The snapshot entry of a file at the fixture's commit.
fn snapshot(cache: &Path, repo: &str, file: &str) -> PathBuf {
    repo_dir(cache, repo)
        .join("snapshots")
        .join(commit_of(repo))
        .join(file)
}

/// `serve --model catvton --model-source hub` against the fake hub and cache.
fn serve_from_hub(hub: &FakeHub, cache: &Path, extra: &[&str]) -> ChildServer {
    let cache = cache.display().to_string();
    let mut args = vec![
        "--model",
        "catvton",
        "--model-source",
        "hub",
        "--hub-endpoint",
        hub.endpoint.as_str(),
        "--hub-cache",
        cache.as_str(),
        "--max-steps",
        "4",
        "--request-timeout-s",
        "300",
    ];
    args.extend_from_slice(extra);
    ChildServer::start(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_then_serve_answers_tryon_and_a_second_start_downloads_nothing() {
    let hub = FakeHub::start().await;
    let cache = fresh_cache();

    let o = download(&hub, &cache, &[], &[]).await;
    assert_ok(&o);
    let log = text(&o);
    assert!(
        log.contains(
            "CatVTON attention weights (zhengchong/CatVTON): CC BY-NC-SA 4.0, non-commercial"
        ),
        "the download names the licences: {log}"
    );
    assert!(log.contains("CreativeML Open RAIL-M"), "{log}");
    assert!(
        log.contains(&format!("downloading {BASE}/{UNET}")),
        "the log shows the progress: {log}"
    );

    // Only the six files the model reads were asked for, never the rest of the repository.
    assert_eq!(asked_files(&hub), files_set(&MODEL_FILES));

    // The standard hub cache: refs/main holds the commit, snapshots link to blobs named by etag.
    let refs = std::fs::read_to_string(repo_dir(&cache, BASE).join("refs/main")).expect("ref");
    assert_eq!(refs.trim(), commit_of(BASE));
    let unet = snapshot(&cache, BASE, UNET);
    let target = std::fs::read_link(&unet).expect("a snapshot entry links to its blob");
    assert!(
        target.ends_with(format!("blobs/{}", hub.file(BASE, UNET).sha256)),
        "{target:?}"
    );
    assert_eq!(
        std::fs::read(&unet).expect("unet"),
        *hub.file(BASE, UNET).bytes
    );
    // The manifest records the commit the hub answered.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_dir(&cache, ATTENTION).join("virtualfit.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(
        manifest["revisions"]["main"]["commit"],
        commit_of(ATTENTION)
    );

    hub.clear_seen();
    let server = serve_from_hub(&hub, &cache, &[]);
    server.wait_ready().await;
    assert!(
        hub.seen().is_empty(),
        "a start with every file verified in the cache asks the hub nothing: {:?}",
        hub.seen()
    );

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    let form = pair_form(0)
        .text("resolution", "512x384")
        .text("steps", "2")
        .text("seed", "7");
    let r = client
        .post(format!("{}/tryon?format=png", server.base))
        .multipart(form)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let image = image::load_from_memory(&r.bytes().await.expect("body")).expect("png");
    assert_eq!((image.width(), image.height()), (384, 512));

    let models: serde_json::Value = client
        .get(format!("{}/v1/models", server.base))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    let licences = &models["models"][0]["licences"];
    assert_eq!(licences.as_array().map(Vec::len), Some(3), "{models}");
    assert!(
        licences
            .as_array()
            .expect("array")
            .iter()
            .any(|l| l["part"] == "CatVTON attention weights"
                && l["licence"] == "CC BY-NC-SA 4.0, non-commercial"
                && l["source"] == ATTENTION),
        "{licences}"
    );
    let logs = server.logs().join("\n");
    assert!(
        logs.contains("weights licence: CatVTON attention weights"),
        "the start logs the licences"
    );
    assert!(hub.seen().is_empty(), "{:?}", hub.seen());
}

#[tokio::test]
async fn an_interrupted_download_resumes_after_its_last_whole_chunk() {
    let hub = FakeHub::start().await;
    let cache = fresh_cache();
    let unet = hub.file(BASE, UNET);
    const CHUNK: u64 = 262_144;
    assert!(
        unet.bytes.len() as u64 > 3 * CHUNK,
        "the fixture spans chunks"
    );
    // The third chunk breaks off half-way.
    hub.cut_at(&unet, 2 * CHUNK + CHUNK / 2);
    let chunk = CHUNK.to_string();

    let o = download(&hub, &cache, &["--hub-chunk-size", &chunk], &[]).await;
    let log = assert_failed(&o);
    assert!(log.contains(UNET), "the error names the file: {log}");
    let part = repo_dir(&cache, BASE)
        .join("blobs")
        .join(format!("{}.sync.part", unet.sha256));
    assert!(part.is_file(), "the partial transfer is kept: {log}");

    hub.clear_seen();
    let o = download(&hub, &cache, &["--hub-chunk-size", &chunk], &[]).await;
    assert_ok(&o);
    let starts: Vec<u64> = hub
        .transfers()
        .iter()
        .filter(|s| s.route == "cdn" && s.what == unet.sha256)
        .filter_map(|s| s.range_start())
        .collect();
    assert_eq!(
        starts.first(),
        Some(&(2 * CHUNK)),
        "the transfer goes on from the two whole chunks: {starts:?}"
    );
    assert!(!starts.contains(&0), "nothing is fetched twice: {starts:?}");
    assert_eq!(
        std::fs::read(snapshot(&cache, BASE, UNET)).expect("unet"),
        *unet.bytes
    );
    // The files finished before the cut were not fetched again.
    let again: Vec<String> = hub
        .transfers()
        .iter()
        .filter(|s| s.route == "resolve")
        .map(|s| s.what.clone())
        .collect();
    assert!(!again.iter().any(|f| f == "unet/config.json"), "{again:?}");
}

#[tokio::test]
async fn a_corrupted_file_is_detected_by_its_sha256_and_fetched_again() {
    let hub = FakeHub::start().await;
    let cache = fresh_cache();
    assert_ok(&download(&hub, &cache, &[], &[]).await);

    // On disk: one byte of the cached attention weights changes.
    let attention = hub.file(ATTENTION, ATTENTION_FILE);
    let blob = repo_dir(&cache, ATTENTION)
        .join("blobs")
        .join(&attention.sha256);
    let mut bytes = std::fs::read(&blob).expect("blob");
    bytes[1000] ^= 1;
    std::fs::write(&blob, &bytes).expect("write");

    hub.clear_seen();
    let o = download(&hub, &cache, &[], &[]).await;
    assert_ok(&o);
    let log = text(&o);
    assert!(log.contains("does not match its checksum"), "{log}");
    let fetched: Vec<String> = hub
        .transfers()
        .iter()
        .filter(|s| s.route == "resolve")
        .map(|s| s.what.clone())
        .collect();
    assert_eq!(
        fetched,
        [ATTENTION_FILE],
        "only the damaged file is fetched"
    );
    assert_eq!(std::fs::read(&blob).expect("blob"), *attention.bytes);

    // On the wire: the hub sends the VAE weights damaged once; the download checks them,
    // fetches them again and keeps the good copy.
    let cache = fresh_cache();
    let vae = hub.file(VAE, "diffusion_pytorch_model.safetensors");
    hub.corrupt_once(&vae);
    hub.clear_seen();
    let o = download(&hub, &cache, &[], &[]).await;
    assert_ok(&o);
    assert!(
        text(&o).contains("does not match the hub's checksum"),
        "{}",
        text(&o)
    );
    let vae_transfers = hub
        .transfers()
        .iter()
        .filter(|s| s.route == "cdn" && s.what == vae.sha256)
        .count();
    assert_eq!(vae_transfers, 2);
    assert_eq!(
        std::fs::read(snapshot(&cache, VAE, "diffusion_pytorch_model.safetensors")).expect("vae"),
        *vae.bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_starts_from_a_full_cache_and_names_what_is_missing() {
    let hub = FakeHub::start().await;
    let cache = fresh_cache();
    assert_ok(&download(&hub, &cache, &[], &[]).await);
    hub.clear_seen();

    let server = serve_from_hub(&hub, &cache, &["--offline"]);
    server.wait_ready().await;
    drop(server);
    let o = download(&hub, &cache, &[], &[("HF_HUB_OFFLINE", "1")]).await;
    assert_ok(&o);
    assert!(hub.seen().is_empty(), "{:?}", hub.seen());

    // `virtualfit tryon` reads the same cache.
    let (person, cloth) = common::pairs().swap_remove(0);
    let output = fresh_data_dir().with_extension("png");
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args([
            "tryon",
            "--model",
            "catvton",
            "--model-source",
            "hub",
            "--offline",
        ])
        .arg("--hub-cache")
        .arg(&cache)
        .arg("--person")
        .arg(common::demo_dir().join("person").join(person))
        .arg("--cloth")
        .arg(common::demo_dir().join("cloth").join(cloth))
        .arg("--output")
        .arg(&output)
        .args(["--steps", "2", "--resolution", "512x384", "--seed", "3"])
        .kill_on_drop(true)
        .output();
    let o = tokio::time::timeout(Duration::from_secs(300), o)
        .await
        .expect("in time")
        .expect("runs");
    assert!(o.status.success(), "{}", text(&o));
    let image = image::open(&output).expect("a PNG");
    assert_eq!((image.width(), image.height()), (384, 512));
    assert!(hub.seen().is_empty());

    // A file gone from the cache: offline, the error lists it and the command to fetch it.
    std::fs::remove_file(snapshot(&cache, ATTENTION, ATTENTION_FILE)).expect("remove");
    let o = download(&hub, &cache, &[], &[("HF_HUB_OFFLINE", "1")]).await;
    let log = assert_failed(&o);
    assert!(
        log.contains(&format!("{ATTENTION}@main {ATTENTION_FILE}")),
        "names the file: {log}"
    );
    assert!(
        !log.contains("unet/config.json"),
        "lists only what is missing: {log}"
    );
    assert!(log.contains("virtualfit download --model catvton"), "{log}");
    assert!(
        hub.seen().is_empty(),
        "offline asks nothing: {:?}",
        hub.seen()
    );

    // The server does not start either, and says why.
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(["serve", "--bind", "127.0.0.1:0", "--model", "catvton"])
        .args(["--model-source", "hub", "--hub-endpoint", &hub.endpoint])
        .arg("--hub-cache")
        .arg(&cache)
        .arg("--data-dir")
        .arg(fresh_data_dir())
        .env("HF_HUB_OFFLINE", "1")
        .kill_on_drop(true)
        .output();
    let o = tokio::time::timeout(Duration::from_secs(60), o)
        .await
        .expect("exits in time")
        .expect("runs");
    let log = assert_failed(&o);
    assert!(log.contains(ATTENTION_FILE), "{log}");
    assert!(hub.seen().is_empty());
}

#[tokio::test]
async fn a_401_from_the_hub_says_to_set_hf_token() {
    let hub = FakeHub::start().await;
    hub.require_token(Some("hf_test_token"));
    let cache = fresh_cache();
    let log = assert_failed(&download(&hub, &cache, &[], &[]).await);
    assert!(log.contains("HF_TOKEN"), "{log}");
    assert!(log.contains("HTTP 401"), "{log}");

    hub.clear_seen();
    assert_ok(&download(&hub, &cache, &[], &[("HF_TOKEN", "hf_test_token")]).await);
    let resolve = hub
        .seen()
        .into_iter()
        .find(|s| s.route == "resolve")
        .expect("asked");
    assert_eq!(
        resolve.authorization.as_deref(),
        Some("Bearer hf_test_token")
    );

    // The token `huggingface-cli login` saved in HF_HOME does as well.
    let home = fresh_data_dir().with_extension("hf-home");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join("token"), "hf_test_token\n").expect("token");
    let home = home.display().to_string();
    let cache = fresh_cache();
    assert_ok(&download(&hub, &cache, &[], &[("HF_HOME", &home)]).await);
    // The transfers redirected to the CDN do not carry the token (hf-hub 0.4.3 still sends it
    // with its one-byte size probe there).
    let cdn: Vec<_> = hub
        .transfers()
        .into_iter()
        .filter(|s| s.route == "cdn")
        .collect();
    assert!(!cdn.is_empty());
    assert!(cdn.iter().all(|s| s.authorization.is_none()), "{cdn:?}");
}

#[tokio::test]
async fn a_wrong_revision_or_repository_is_a_clear_error() {
    let hub = FakeHub::start().await;
    let cache = fresh_cache();
    let log = assert_failed(
        &download(
            &hub,
            &cache,
            &["--catvton-vae", "stabilityai/sd-vae-ft-mse@no-such-branch"],
            &[],
        )
        .await,
    );
    assert!(
        log.contains("revision `no-such-branch` not found in stabilityai/sd-vae-ft-mse"),
        "{log}"
    );

    let log = assert_failed(
        &download(
            &hub,
            &cache,
            &["--catvton-attention", "someone/nothing"],
            &[],
        )
        .await,
    );
    assert!(
        log.contains("repository someone/nothing not found"),
        "{log}"
    );

    // A pinned commit works like a branch.
    let pinned = format!("{VAE}@{}", commit_of(VAE));
    assert_ok(&download(&hub, &cache, &["--catvton-vae", &pinned], &[]).await);
}

#[tokio::test]
async fn download_to_writes_the_folder_layout_and_dmvton_says_where_its_files_are() {
    let hub = FakeHub::start().await;
    let cache = fresh_cache();
    let to = ScratchDir::new("layout");
    let to_text = to.display().to_string();
    assert_ok(&download(&hub, &cache, &["--to", &to_text], &[]).await);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/catvton/model");
    for rel in [
        "base/unet/config.json",
        "base/unet/diffusion_pytorch_model.safetensors",
        "base/scheduler/scheduler_config.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "attention/model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(to.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")),
            std::fs::read(fixture.join(rel)).expect("fixture"),
            "{rel}"
        );
    }
    // Again: nothing to fetch, nothing to rewrite.
    hub.clear_seen();
    assert_ok(&download(&hub, &cache, &["--to", &to_text], &[]).await);
    assert!(hub.seen().is_empty());

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"));
    command.args(["download", "--model", "dmvton"]);
    let o = command.output().await.expect("runs");
    let log = assert_failed(&o);
    assert!(log.contains("KiseKloset/DM-VTON"), "{log}");
    assert!(log.contains("dmvton_pf_warp.pt"), "{log}");
}

#[tokio::test]
async fn a_cache_filled_by_the_python_tools_is_verified_and_used_offline() {
    let hub = FakeHub::start().await;
    let cache = fresh_cache();
    // The layout huggingface_hub writes: blobs named by etag, snapshot links, refs/main.
    for (repo, files) in common::fake_hub::catvton_repos() {
        let dir = repo_dir(&cache, repo);
        std::fs::create_dir_all(dir.join("blobs")).expect("blobs");
        std::fs::create_dir_all(dir.join("refs")).expect("refs");
        std::fs::write(dir.join("refs/main"), commit_of(repo)).expect("ref");
        for (path, file) in files {
            let etag = if file.lfs {
                &file.sha256
            } else {
                &file.git_sha1
            };
            std::fs::write(dir.join("blobs").join(etag), &*file.bytes).expect("blob");
            let link = snapshot(&cache, repo, &path);
            std::fs::create_dir_all(link.parent().expect("parent")).expect("snapshot");
            let up = "../".repeat(path.matches('/').count() + 2);
            std::os::unix::fs::symlink(format!("{up}blobs/{etag}"), &link).expect("link");
        }
    }
    let o = download(&hub, &cache, &[], &[("HF_HUB_OFFLINE", "1")]).await;
    assert_ok(&o);
    assert!(hub.seen().is_empty());
    assert!(repo_dir(&cache, VAE).join("virtualfit.json").is_file());

    // A damaged blob there is caught too, and fetched again online.
    let vae = hub.file(VAE, "diffusion_pytorch_model.safetensors");
    let blob = repo_dir(&cache, VAE).join("blobs").join(&vae.sha256);
    std::fs::write(&blob, b"not the weights").expect("write");
    let o = download(&hub, &cache, &[], &[]).await;
    assert_ok(&o);
    assert_eq!(std::fs::read(&blob).expect("blob"), *vae.bytes);
    assert_eq!(
        hub.transfers().iter().filter(|s| s.route == "cdn").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_downloads_at_start_with_progress_in_its_log_before_it_listens() {
    let hub = FakeHub::start().await;
    let cache = fresh_cache();
    let server = serve_from_hub(&hub, &cache, &[]);
    // It listens only once the weights are verified and loaded.
    assert_eq!(
        hub.transfers().iter().filter(|s| s.route == "cdn").count(),
        3
    );
    server.wait_ready().await;
    let logs = server.logs().join("\n");
    for (repo, file) in [(BASE, UNET), (ATTENTION, ATTENTION_FILE)] {
        let line = format!("downloading {repo}/{file}: ");
        assert!(logs.contains(&line), "the log shows `{line}`: {logs}");
    }
    assert!(logs.contains("\"message\":\"verified\""), "{logs}");
    let download = logs.find("downloading ").expect("progress lines");
    let listening = logs.find("\"listening\"").expect("listening");
    assert!(
        download < listening,
        "the download comes before the listener"
    );
}

#[tokio::test]
async fn half_precision_takes_the_fp16_unet_when_the_repository_has_one() {
    const FP16: &str = "unet/diffusion_pytorch_model.fp16.safetensors";
    // Without one: the f32 file, and the manifest remembers that there is none.
    let hub = FakeHub::start().await;
    let cache = fresh_cache();
    assert_ok(&download(&hub, &cache, &["--dtype", "f16"], &[]).await);
    let resolved: Vec<String> = hub
        .transfers()
        .iter()
        .filter(|s| s.route == "resolve")
        .map(|s| s.what.clone())
        .collect();
    assert!(resolved.iter().any(|f| f == UNET), "{resolved:?}");
    hub.clear_seen();
    assert_ok(&download(&hub, &cache, &["--dtype", "f16"], &[]).await);
    assert!(
        hub.seen().is_empty(),
        "the absent fp16 file is not asked for again"
    );

    // With one: only the fp16 file.
    let fp16 = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/catvton/model/base/unet/diffusion_pytorch_model.safetensors"),
    )
    .expect("fixture");
    let hub = FakeHub::start_with(vec![(BASE, FP16, fp16)]).await;
    let cache = fresh_cache();
    assert_ok(&download(&hub, &cache, &["--dtype", "bf16"], &[]).await);
    let fetched: Vec<String> = hub
        .transfers()
        .iter()
        .filter(|s| s.route == "resolve")
        .map(|s| s.what.clone())
        .collect();
    assert!(fetched.iter().any(|f| f == FP16), "{fetched:?}");
    assert!(!fetched.iter().any(|f| f == UNET), "{fetched:?}");
    assert!(snapshot(&cache, BASE, FP16).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_parsers_come_from_the_attention_repository_and_lay_out_under_schp() {
    const ATR: &str = "SCHP/exp-schp-201908301523-atr.pth";
    const LIP: &str = "SCHP/exp-schp-201908261155-lip.pth";
    const DENSEPOSE_CONFIG: &str = "DensePose/densepose_rcnn_R_50_FPN_s1x.yaml";
    const DENSEPOSE_BASE: &str = "DensePose/Base-DensePose-RCNN-FPN.yaml";
    const DENSEPOSE_WEIGHTS: &str = "DensePose/model_final_162be9.pkl";
    let published = |name: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/densepose/config")
                .join(name),
        )
        .expect("the published configuration")
    };
    // A real `torch.save` file that holds a few of the parser's tensors, not all of them: the
    // server must read it from the cache and refuse it as an incomplete checkpoint.
    let partial =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schp/subset.pth"))
            .expect("fixture");
    let hub = FakeHub::start_with(vec![
        (ATTENTION, ATR, partial.clone()),
        (ATTENTION, LIP, b"not a checkpoint".to_vec()),
        (
            ATTENTION,
            DENSEPOSE_CONFIG,
            published("densepose_rcnn_R_50_FPN_s1x.yaml"),
        ),
        (
            ATTENTION,
            DENSEPOSE_BASE,
            published("Base-DensePose-RCNN-FPN.yaml"),
        ),
        (ATTENTION, DENSEPOSE_WEIGHTS, b"not a pickle".to_vec()),
    ])
    .await;
    let cache = fresh_cache();
    let to = ScratchDir::new("layout");
    let to_text = to.display().to_string();

    // Offline with an empty cache: the error names the parsers' files and the command.
    let serve = |env: &[(&str, &str)]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"));
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--model", "catvton"])
            .arg("--model-dir")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/catvton/model"))
            .args(["--masker-source", "hub", "--hub-endpoint", &hub.endpoint])
            .arg("--hub-cache")
            .arg(&cache)
            .arg("--data-dir")
            .arg(fresh_data_dir())
            .env_remove("HF_HUB_OFFLINE")
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        async move {
            tokio::time::timeout(Duration::from_secs(120), command.output())
                .await
                .expect("exits in time")
                .expect("runs")
        }
    };
    let log = assert_failed(&serve(&[("HF_HUB_OFFLINE", "1")]).await);
    assert!(log.contains(&format!("{ATTENTION}@main {ATR}")), "{log}");
    assert!(
        log.contains("virtualfit download --model catvton --masker-source hub"),
        "{log}"
    );
    assert!(hub.seen().is_empty(), "offline asks nothing");

    // `download --masker-source hub` fetches the two parsers and DensePose's three files with
    // the model, nothing else of the repository, and lays them out where `--masker-source DIR`
    // reads them (DensePose beside the parsers' folder).
    let o = download(
        &hub,
        &cache,
        &["--masker-source", "hub", "--to", &to_text],
        &[],
    )
    .await;
    assert_ok(&o);
    assert!(
        text(&o).contains("SCHP human parsers (ATR, LIP) (zhengchong/CatVTON/SCHP)"),
        "the download names the parsers' licence: {}",
        text(&o)
    );
    assert!(
        text(&o).contains(
            "DensePose R-CNN (R_50_FPN_s1x, model zoo 165712039) (zhengchong/CatVTON/DensePose)"
        ),
        "the download names DensePose's licence: {}",
        text(&o)
    );
    let mut expected = files_set(&MODEL_FILES);
    expected.extend(
        [
            ATR,
            LIP,
            DENSEPOSE_CONFIG,
            DENSEPOSE_BASE,
            DENSEPOSE_WEIGHTS,
        ]
        .map(String::from),
    );
    assert_eq!(asked_files(&hub), expected);
    assert_eq!(
        std::fs::read(to.join(DENSEPOSE_CONFIG)).expect("laid out"),
        published("densepose_rcnn_R_50_FPN_s1x.yaml")
    );
    assert_eq!(
        std::fs::read(to.join(DENSEPOSE_WEIGHTS)).expect("laid out"),
        b"not a pickle"
    );
    assert_eq!(std::fs::read(to.join(ATR)).expect("laid out"), partial);
    assert_eq!(
        std::fs::read(to.join(LIP)).expect("laid out"),
        b"not a checkpoint"
    );
    assert_eq!(
        std::fs::read(snapshot(&cache, ATTENTION, ATR)).expect("cached"),
        partial
    );

    // Serving reads the cached file into the parser's loader, which refuses it by name.
    hub.clear_seen();
    let log = assert_failed(&serve(&[]).await);
    assert!(log.contains("not an SCHP atr checkpoint"), "{log}");
    assert!(
        log.contains(&snapshot(&cache, ATTENTION, ATR).display().to_string()),
        "names the cached file: {log}"
    );
    assert!(
        hub.transfers().is_empty(),
        "the verified cache is used: {:?}",
        hub.transfers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parsers_from_the_hub_make_the_official_automaskers_mask() {
    use common::schp_checkpoint::formula_checkpoint;
    use virtualfit::models::automasker::schp::SchpConfig;
    // Full-size checkpoints in the official layout, holding the seeded weights the official
    // `AutoMasker.__call__` fixture ran with (tests/fixtures/automasker/call).
    let (atr, lip) = tokio::task::spawn_blocking(|| {
        (
            formula_checkpoint(SchpConfig::ATR, "atr"),
            formula_checkpoint(SchpConfig::LIP, "lip"),
        )
    })
    .await
    .expect("checkpoints");
    let hub = FakeHub::start_with(vec![
        (ATTENTION, "SCHP/exp-schp-201908301523-atr.pth", atr),
        (ATTENTION, "SCHP/exp-schp-201908261155-lip.pth", lip),
    ])
    .await;
    let cache = fresh_cache();
    let cache_text = cache.display().to_string();
    let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/catvton/model");
    let server = ChildServer::start(&[
        "--model",
        "catvton",
        "--model-dir",
        model_dir,
        "--masker-source",
        "hub",
        // The fixture's official masks had an all-background DensePose map.
        "--masker-densepose",
        "off",
        "--hub-endpoint",
        &hub.endpoint,
        "--hub-cache",
        &cache_text,
        "--request-timeout-s",
        "300",
    ]);
    server.wait_ready().await;
    let logs = server.logs().join("\n");
    assert!(logs.contains("human parsers verified"), "{logs}");
    assert!(logs.contains("person mask: parsers"), "{logs}");

    let fixture = |name: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/automasker/call")
                .join(name),
        )
        .expect("fixture")
    };
    let form = reqwest::multipart::Form::new()
        .part(
            "person_image",
            common::image_part(fixture("photo-0.png"), "image/png"),
        )
        .text("category", "upper")
        .text("resolution", "512x384");
    let r = common::post_form(&server.base, "/v1/masks", form).await;
    assert_eq!(r.status(), 200);
    let served = image::load_from_memory(&r.bytes().await.expect("body"))
        .expect("a PNG")
        .to_luma8();
    let official = image::load_from_memory(&fixture("mask-0-upper.png"))
        .expect("a PNG")
        .to_luma8();
    assert!(
        served == official,
        "the parsers read from the hub give the official mask"
    );
}
