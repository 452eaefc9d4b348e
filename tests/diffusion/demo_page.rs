//! The try-on page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which scripts/test.sh installs) driven through WebDriver, against real
//! servers with the tiny CatVTON fixture and with `overlay`. The CatVTON run picks a sample
//! pair with the mouse at desktop width, sets the steps and follows the job to its image; the
//! `overlay` run does the same with the keyboard only at a phone's width, then uploads a photo
//! over the server's body limit and expects the server's own message. Each run saves a
//! screenshot under `target/`.
//!
//! As root (CI containers), Chromium's sandbox cannot start: it runs with `--no-sandbox`,
//! `--headless=new` and a fresh profile directory.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::catvton_serve::{catvton_server, ONE_AT_A_TIME};

/// `chromedriver` on a free port of 127.0.0.1, stopped on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the browser's viewport is set.
enum Screen {
    /// A desktop window of this size.
    Window(u32, u32),
    /// A phone's viewport (CSS pixels), by Chromium's device emulation: a headless window is
    /// never narrower than 500 pixels.
    Phone(u32, u32),
}

/// Starts chromedriver and a headless Chromium session on `screen`.
async fn browser(screen: Screen) -> (Driver, Client) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start chromedriver ({e}): install Debian's chromium and chromium-driver (scripts/test.sh does)")
        });
    let profile = tempfile::tempdir().expect("a profile dir");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let (width, height) = match screen {
        Screen::Window(w, h) | Screen::Phone(w, h) => (w, h),
    };
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--disable-gpu".to_string(),
        format!("--window-size={},{}", width.max(500), height),
        format!("--user-data-dir={}", driver._profile.path().display()),
    ];
    let mut options = json!({"args": args});
    if let Screen::Phone(..) = screen {
        options["mobileEmulation"] = json!({
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0}
        });
    }
    let capabilities = json!({ "goog:chromeOptions": options });
    let capabilities = capabilities.as_object().expect("an object").clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&driver.url)
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no Chromium session: {e}"),
        }
    };
    (driver, client)
}

/// Evaluates `expression` in the page.
async fn js(client: &Client, expression: &str) -> Value {
    client
        .execute(&format!("return {expression};"), vec![])
        .await
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
}

/// Waits until `expression` is true in the page.
async fn wait_for(client: &Client, expression: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while js(client, expression).await != Value::Bool(true) {
        assert!(
            Instant::now() < deadline,
            "still not true after {within:?}: {expression}; error shown: {}",
            js(client, "document.getElementById('error').textContent").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn find(client: &Client, css: &str) -> Element {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// The result image's natural size, once the job has succeeded.
async fn result_size(client: &Client, within: Duration) -> (u64, u64) {
    let img = "document.getElementById('result-img')";
    wait_for(
        client,
        &format!("{img}.complete && {img}.naturalWidth > 0"),
        within,
    )
    .await;
    let size = js(
        client,
        &format!("[{img}.naturalWidth, {img}.naturalHeight]"),
    )
    .await;
    (
        size[0].as_u64().expect("a width"),
        size[1].as_u64().expect("a height"),
    )
}

/// The progress bar's value and maximum, and the stage's words.
async fn progress(client: &Client) -> (f64, f64, String) {
    let p = js(
        client,
        "[document.getElementById('progress').value, document.getElementById('progress').max, \
         document.getElementById('stage').textContent]",
    )
    .await;
    (
        p[0].as_f64().expect("value"),
        p[1].as_f64().expect("max"),
        p[2].as_str().unwrap_or("").to_string(),
    )
}

/// Whether the mask panel shows as it should: hidden where the server has no `/v1/masks`.
async fn check_mask_panel(client: &Client, base: &str, person: Vec<u8>) {
    let form = reqwest::multipart::Form::new()
        .part("person_image", common::image_part(person, "image/jpeg"))
        .text("category", "upper");
    let masks = common::post_form(base, "/v1/masks", form).await.status();
    let hidden = js(client, "document.getElementById('mask-panel').hidden").await;
    assert_eq!(
        hidden,
        Value::Bool(masks == 404),
        "/v1/masks answers {masks}"
    );
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/")
        .join(name)
}

async fn save_screenshot(client: &Client, name: &str) {
    js(client, "window.scrollTo(0, 0) || true").await;
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = screenshot_path(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test]
async fn the_page_runs_a_catvton_try_on_of_a_sample_pair_in_chromium() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_server, base) = catvton_server(&[]).await;
    let (_driver, client) = browser(Screen::Window(1280, 1000)).await;
    client
        .goto(&format!("{base}/"))
        .await
        .expect("the page loads");
    // The options come from /v1/models, the pairs from the sample folder.
    let sample_pairs = common::pairs().len();
    wait_for(
        &client,
        &format!(
            "document.querySelectorAll('#samples input').length === {sample_pairs} \
             && !!document.getElementById('option-steps')"
        ),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        js(&client, "document.getElementById('samples-box').hidden").await,
        Value::Bool(false)
    );
    let notice = js(&client, "document.getElementById('notice').textContent").await;
    assert!(
        notice.as_str().unwrap_or("").contains("research use only"),
        "{notice}"
    );

    find(&client, "#samples label:nth-child(2)")
        .await
        .click()
        .await
        .expect("a pair picked");
    wait_for(
        &client,
        "document.getElementById('person-img').naturalWidth > 0 \
         && document.getElementById('cloth-img').naturalWidth > 0",
        Duration::from_secs(10),
    )
    .await;
    let steps = find(&client, "#option-steps").await;
    steps.clear().await.expect("clear");
    steps.send_keys("3").await.expect("type");
    find(&client, "#option-resolution")
        .await
        .select_by_value("512x384")
        .await
        .expect("a resolution");
    find(&client, "#option-seed")
        .await
        .send_keys("7")
        .await
        .expect("a seed");
    find(&client, "#submit")
        .await
        .click()
        .await
        .expect("submit");

    assert_eq!(
        result_size(&client, Duration::from_secs(300)).await,
        (384, 512)
    );
    let (done, total, stage) = progress(&client).await;
    assert_eq!((done, total), (3.0, 3.0), "{stage}");
    assert_eq!(stage, "Done: 3 of 3");
    assert_eq!(
        js(&client, "document.getElementById('error').hidden").await,
        Value::Bool(true)
    );
    let download = js(
        &client,
        "[document.getElementById('download').hidden, document.getElementById('download').href]",
    )
    .await;
    assert_eq!(download[0], Value::Bool(false));
    assert!(download[1].as_str().unwrap_or("").starts_with("blob:"));
    let (person, _) = &common::pairs()[1];
    check_mask_panel(&client, &base, common::fixture(&format!("person/{person}"))).await;
    save_screenshot(&client, "demo-page.png").await;
    client.close().await.expect("the session closes");
}

#[tokio::test]
async fn the_page_works_by_keyboard_at_phone_width_and_shows_the_server_s_errors() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let limit = 200_000;
    let (_server, base) = common::start(&["--max-body-bytes", &limit.to_string()]).await;
    let (_driver, client) = browser(Screen::Phone(390, 844)).await;
    client
        .goto(&format!("{base}/"))
        .await
        .expect("the page loads");
    wait_for(
        &client,
        "document.querySelectorAll('#samples input').length > 0 \
         && document.getElementById('model-line').textContent.startsWith('Model')",
        Duration::from_secs(20),
    )
    .await;
    // Nothing wider than the phone.
    assert_eq!(js(&client, "window.innerWidth").await, Value::from(390));
    assert_eq!(
        js(
            &client,
            "document.documentElement.scrollWidth <= window.innerWidth"
        )
        .await,
        Value::Bool(true)
    );

    // By keyboard: a space picks the first pair, Enter on the button submits.
    find(&client, "#pair-0")
        .await
        .send_keys(" ")
        .await
        .expect("a pair picked");
    wait_for(
        &client,
        "document.getElementById('pair-0').checked \
         && document.getElementById('person-img').naturalWidth > 0 \
         && document.getElementById('cloth-img').naturalWidth > 0",
        Duration::from_secs(10),
    )
    .await;
    find(&client, "#submit")
        .await
        .send_keys("\u{E007}")
        .await
        .expect("Enter");
    assert_eq!(
        result_size(&client, Duration::from_secs(60)).await,
        (192, 256)
    );
    let (done, total, _) = progress(&client).await;
    assert_eq!(
        (done, total),
        (1.0, 1.0),
        "a whole-batch model has one step"
    );
    save_screenshot(&client, "demo-page-phone.png").await;

    // A photo over the body limit: the server's message, as the API gives it.
    let big = tempfile::Builder::new()
        .suffix(".jpg")
        .tempfile()
        .expect("a file");
    std::fs::write(big.path(), vec![0x5a; limit + 1]).expect("write");
    find(&client, "#person-file")
        .await
        .send_keys(big.path().to_str().expect("utf-8"))
        .await
        .expect("a file chosen");
    wait_for(
        &client,
        "!document.querySelector('input[name=pair]:checked')",
        Duration::from_secs(5),
    )
    .await;
    find(&client, "#submit")
        .await
        .click()
        .await
        .expect("submit");
    wait_for(
        &client,
        "!document.getElementById('error').hidden",
        Duration::from_secs(30),
    )
    .await;
    let shown = js(&client, "document.getElementById('error').textContent").await;
    assert_eq!(
        shown,
        Value::from(format!("request body is larger than {limit} bytes"))
    );
    client.close().await.expect("the session closes");
}
