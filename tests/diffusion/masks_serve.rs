//! CatVTON's person masker when serving: with `--masker-source random:0` (the test-only seeded
//! parsers) `POST /v1/masks` answers the official `AutoMasker.__call__`'s mask for the same
//! weights, pixel for pixel, and it is the one `/tryon` samples with; `inner`/`outer` are
//! accepted; without parsers the drawn mask serves and `inner` is refused. The parsers cost
//! about 10 s of CPU per photo, so each test runs them sparingly.

use crate::catvton_serve::{patient, post_form, ONE_AT_A_TIME};
use crate::common;

use std::io::Cursor;

use common::{image_part, start};
use image::{GrayImage, RgbImage};
use reqwest::multipart::Form;
use virtualfit::models::catvton::mask::auto_mask;
use virtualfit::models::catvton::preprocess::resize_and_crop;
use virtualfit::models::catvton::Category;

/// The half-size frame, width × height.
const FRAME: (u32, u32) = (384, 512);

async fn server(masker: Option<&str>) -> (virtualfit::server::Server, String) {
    server_with(masker, &[]).await
}

async fn server_with(masker: Option<&str>, extra: &[&str]) -> (virtualfit::server::Server, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/catvton/model");
    let mut args = vec![
        "--model",
        "catvton",
        "--model-dir",
        dir,
        "--request-timeout-s",
        "300",
        "--max-steps",
        "2",
    ];
    if let Some(source) = masker {
        args.extend_from_slice(&["--masker-source", source]);
    }
    args.extend_from_slice(extra);
    start(&args).await
}

/// The first sample person, already at the half-size frame, so that fitting it is the
/// identity and an uploaded mask of its size is used as sent.
fn person() -> RgbImage {
    let (name, _) = &common::pairs()[0];
    let photo = image::load_from_memory(&common::fixture(&format!("person/{name}")))
        .expect("a sample photo")
        .to_rgb8();
    resize_and_crop(&photo, FRAME.0, FRAME.1)
}

fn encode_png(image: impl Into<image::DynamicImage>) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .into()
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("PNG");
    bytes
}

fn mask_form(person: &RgbImage, category: &str) -> Form {
    Form::new()
        .part(
            "person_image",
            image_part(encode_png(person.clone()), "image/png"),
        )
        .text("category", category.to_string())
        .text("resolution", "512x384")
}

async fn gray_png(response: reqwest::Response) -> GrayImage {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"image/png"[..])
    );
    let bytes = response.bytes().await.expect("body");
    let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .expect("a PNG")
        .to_luma8();
    assert_eq!(image.dimensions(), FRAME, "the model's frame");
    image
}

async fn masker_reported(base: &str) -> serde_json::Value {
    let models: serde_json::Value = patient()
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("JSON");
    models["models"][0]["masker"].clone()
}

async fn tryon(base: &str, person: &RgbImage, mask: Option<&GrayImage>) -> RgbImage {
    let (_, cloth) = &common::pairs()[0];
    let mut form = Form::new()
        .part(
            "person_image",
            image_part(encode_png(person.clone()), "image/png"),
        )
        .part(
            "cloth_image",
            image_part(common::fixture(&format!("cloth/{cloth}")), "image/jpeg"),
        )
        .text("resolution", "512x384")
        .text("steps", "1")
        .text("seed", "5");
    if let Some(mask) = mask {
        form = form.part(
            "person_mask",
            image_part(encode_png(mask.clone()), "image/png"),
        );
    }
    let r = post_form(base, "/tryon?format=png", form).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    image::load_from_memory(&r.bytes().await.expect("body"))
        .expect("a PNG")
        .to_rgb8()
}

/// A file of the official `AutoMasker.__call__` fixture with an all-background DensePose map
/// (`scripts/fixtures/automasker_call.py`): the fitted photos, the official masks per part and
/// the parsers' label maps, all at the frame.
fn official(name: &str) -> image::DynamicImage {
    fixture_image("call", name)
}

/// A file of the official `AutoMasker.__call__` fixture with the seeded DensePose too
/// (`scripts/fixtures/automasker_call_densepose.py`), which adds DensePose's map per photo.
fn official_with_densepose(name: &str) -> image::DynamicImage {
    fixture_image("call-densepose", name)
}

fn fixture_image(folder: &str, name: &str) -> image::DynamicImage {
    let path = format!(
        "{}/tests/fixtures/automasker/{folder}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    image::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Asserts that `served` is the fixture image `want`, pixel for pixel.
fn assert_same(served: &GrayImage, want: &GrayImage, name: &str) {
    assert_eq!(served.dimensions(), want.dimensions(), "{name}");
    let differing = served
        .pixels()
        .zip(want.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "{name}: {differing} pixels differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_parsers_the_mask_is_the_official_automaskers_and_tryon_samples_with_it() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // `--masker-densepose off`: the official combination with an all-background DensePose map.
    let (_server, base) = server_with(Some("random:0"), &["--masker-densepose", "off"]).await;
    assert_eq!(masker_reported(&base).await, "parsers");
    // The official pipeline with the same seeded parsers and an all-background DensePose map,
    // on photos it fitted to the frame (so that fitting them here is the identity).
    let photos = [
        official("photo-0.png").to_rgb8(),
        official("photo-1.png").to_rgb8(),
    ];
    let same =
        |served: &GrayImage, name: &str| assert_same(served, &official(name).to_luma8(), name);

    let served =
        gray_png(post_form(&base, "/v1/masks", mask_form(&photos[0], "upper")).await).await;
    same(&served, "mask-0-upper.png");
    let drawn = auto_mask(&photos[0], Category::Upper);
    let differing = served
        .pixels()
        .zip(drawn.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(differing > 0, "the parsers' mask is not the drawn one");

    // /tryon without a mask samples with the parsers' mask: the same answer as with it sent,
    // another with the drawn mask sent.
    let automatic = tryon(&base, &photos[0], None).await;
    assert!(automatic == tryon(&base, &photos[0], Some(&served)).await);
    assert!(automatic != tryon(&base, &photos[0], Some(&drawn)).await);

    // The other parts, and the label maps, are the official ones too. Sent at once, they wait
    // together while the worker parses the first to arrive, then go through in one call.
    let (inner, outer, atr, lip) = tokio::join!(
        post_form(&base, "/v1/masks", mask_form(&photos[0], "inner")),
        post_form(&base, "/v1/masks", mask_form(&photos[1], "outer")),
        post_form(
            &base,
            "/v1/masks?labels=atr",
            mask_form(&photos[0], "upper")
        ),
        post_form(
            &base,
            "/v1/masks?labels=lip",
            mask_form(&photos[1], "upper")
        ),
    );
    same(&gray_png(inner).await, "mask-0-inner.png");
    same(&gray_png(outer).await, "mask-1-outer.png");
    same(&gray_png(atr).await, "atr-0.png");
    same(&gray_png(lip).await, "lip-1.png");

    // Every automatic mask went through the masker on the model's worker: one photo for the
    // first /v1/masks, one for the /tryon without a mask, four for the concurrent ones, which
    // took two calls at most (a parser pass takes seconds; the four arrive within
    // milliseconds).
    let text = common::metrics_text(&base).await;
    assert_eq!(
        common::metric(&text, "virtualfit_mask_batch_size_sum", ""),
        6.0
    );
    let calls = common::metric(&text, "virtualfit_mask_batch_size_count", "");
    assert!(
        calls <= 4.0,
        "the concurrent masks were batched: {calls} calls for 6 photos"
    );

    // Unknown values are refused.
    for (path, category) in [
        ("/v1/masks", "hat"),
        ("/v1/masks?labels=densepose", "upper"),
    ] {
        let r = post_form(&base, path, mask_form(&photos[0], category)).await;
        assert_eq!(r.status(), 400, "{path} {category}");
        let body: serde_json::Value = r.json().await.expect("an error body");
        assert_eq!(body["error"], "bad_request", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_densepose_its_map_and_the_masks_are_the_official_automaskers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // DensePose is on by default; with `random:SEED` parsers it has the fixtures' seeded weights.
    let (_server, base) = server(Some("random:0")).await;
    assert_eq!(masker_reported(&base).await, "parsers+densepose");
    let photos: Vec<RgbImage> = (0..3)
        .map(|i| official_with_densepose(&format!("photo-{i}.png")).to_rgb8())
        .collect();
    // Sent at once: the worker takes them in batches of up to four photos, and DensePose runs
    // each batch as one.
    let (d0, d1, d2, upper, lower, overall) = tokio::join!(
        post_form(
            &base,
            "/v1/masks?labels=densepose",
            mask_form(&photos[0], "upper")
        ),
        post_form(
            &base,
            "/v1/masks?labels=densepose",
            mask_form(&photos[1], "upper")
        ),
        post_form(
            &base,
            "/v1/masks?labels=densepose",
            mask_form(&photos[2], "upper")
        ),
        post_form(&base, "/v1/masks", mask_form(&photos[0], "upper")),
        post_form(&base, "/v1/masks", mask_form(&photos[1], "lower")),
        post_form(&base, "/v1/masks", mask_form(&photos[2], "overall")),
    );
    for (i, served) in [d0, d1, d2].into_iter().enumerate() {
        let name = format!("densepose-{i}.png");
        let map = gray_png(served).await;
        assert!(
            map.pixels().any(|p| p.0[0] > 0),
            "{name}: the seeded network detects someone"
        );
        assert_same(&map, &official_with_densepose(&name).to_luma8(), &name);
    }
    // Parts whose official masks read no pixel where our parsers' labels differ from the
    // official ones (one ATR pixel of photo 1 does; tests/models/densepose.rs covers all 15).
    for (served, name) in [
        (upper, "mask-0-upper.png"),
        (lower, "mask-1-lower.png"),
        (overall, "mask-2-overall.png"),
    ] {
        assert_same(
            &gray_png(served).await,
            &official_with_densepose(name).to_luma8(),
            name,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_parsers_the_drawn_mask_serves_and_inner_is_refused() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_server, base) = server(None).await;
    assert_eq!(masker_reported(&base).await, "drawn");
    let person = person();
    let served = gray_png(post_form(&base, "/v1/masks", mask_form(&person, "lower")).await).await;
    assert!(served == auto_mask(&person, Category::Lower));
    for category in ["inner", "outer"] {
        let r = post_form(&base, "/v1/masks", mask_form(&person, category)).await;
        assert_eq!(r.status(), 400);
        let text = r.text().await.expect("body");
        assert!(text.contains("--masker-source"), "{text}");
    }
    let r = post_form(&base, "/v1/masks?labels=atr", mask_form(&person, "upper")).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_person_mask_has_no_masks_endpoint() {
    let (_server, base) = start(&["--model", "overlay"]).await;
    assert!(masker_reported(&base).await.is_null());
    let r = post_form(&base, "/v1/masks", mask_form(&person(), "upper")).await;
    assert_eq!(r.status(), 404);
}

/// What a server start with `extra` fails with.
async fn start_error(extra: &[&str]) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/catvton/model");
    let mut args = vec!["--model", "catvton", "--model-dir", dir];
    args.extend_from_slice(extra);
    match virtualfit::server::Server::start(common::serve_args(&args)).await {
        Err(e) => format!("{e:#}"),
        Ok(mut server) => match server.ready().await {
            Err(e) => format!("{e:#}"),
            Ok(()) => panic!("the server started with {extra:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn densepose_reads_the_published_files_from_a_folder() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // The published layout: both YAML files and a pickled checkpoint, holding the seeded
    // weights, which the official run of the fixture had.
    let root = common::ScratchDir::new("densepose");
    let folder = root.join("DensePose");
    tokio::task::spawn_blocking({
        let folder = folder.clone();
        move || common::detectron2_checkpoint::write_folder(&folder)
    })
    .await
    .expect("the folder");
    let folder_text = folder.display().to_string();
    let (server, base) = server_with(Some("random:0"), &["--masker-densepose", &folder_text]).await;
    assert_eq!(masker_reported(&base).await, "parsers+densepose");
    let photo = official_with_densepose("photo-2.png").to_rgb8();
    let map = gray_png(
        post_form(
            &base,
            "/v1/masks?labels=densepose",
            mask_form(&photo, "upper"),
        )
        .await,
    )
    .await;
    assert_same(
        &map,
        &official_with_densepose("densepose-2.png").to_luma8(),
        "densepose-2.png",
    );
    drop(server);

    // A folder that is not there: the start-up error names it and the way out.
    let error = start_error(&[
        "--masker-source",
        "random:0",
        "--masker-densepose",
        "/nonexistent/dp",
    ])
    .await;
    assert!(error.contains("/nonexistent/dp"), "{error}");
    assert!(error.contains("--masker-densepose off"), "{error}");
    // A folder whose checkpoint is not a pickle: refused by name.
    std::fs::write(folder.join("model_final_162be9.pkl"), b"not a pickle").expect("write");
    let error = start_error(&[
        "--masker-source",
        "random:0",
        "--masker-densepose",
        &folder_text,
    ])
    .await;
    assert!(error.contains("model_final_162be9.pkl"), "{error}");
}
