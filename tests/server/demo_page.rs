//! The try-on page's routes: the page and its two files, self-contained and open without a
//! key; the sample photos only from the sample folder and only the listed files; upload only
//! without the folder; `--demo off` removes it all. (The page itself runs in Chromium in
//! tests/diffusion/demo_page.rs.)

use crate::common;

use common::*;
use serde_json::Value;

async fn get(url: String) -> reqwest::Response {
    client().get(url).send().await.expect("an answer")
}

#[tokio::test]
async fn the_page_is_self_contained_open_without_a_key_and_serves_only_listed_samples() {
    let (_server, base) = start(&["--api-key", "s3cret"]).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/page.js", "text/javascript"),
        ("/page.css", "text/css"),
    ] {
        let r = get(format!("{base}{path}")).await;
        assert_eq!(r.status(), 200, "{path} needs no key");
        let content_type = r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        let body = r.text().await.expect("text");
        // Nothing from elsewhere: no absolute URL at all.
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{path} loads something from elsewhere"
        );
    }
    let page = get(format!("{base}/")).await.text().await.expect("text");
    assert!(page.contains(r#"src="/page.js""#) && page.contains(r#"href="/page.css""#));

    // The API behind it still wants the key.
    let r = get(format!("{base}/v1/jobs/{}", "0".repeat(32))).await;
    assert_eq!(r.status(), 401);

    let samples: Value = get(format!("{base}/samples"))
        .await
        .json()
        .await
        .expect("json");
    let pairs = samples["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), common::pairs().len());
    assert!(samples["notice"]
        .as_str()
        .unwrap_or("")
        .contains("research use only"));
    let person = pairs[0]["person"].as_str().expect("a name");
    let r = get(format!("{base}/samples/person/{person}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(
        r.bytes().await.expect("bytes").as_ref(),
        common::fixture(&format!("person/{person}")).as_slice()
    );
    // Only the listed files: not another file of the folder, not a path out of it, not a
    // person photo as a garment.
    for path in [
        "/samples/person/pairs.txt",
        "/samples/person/..%2fNOTICE",
        "/samples/person/..%2f..%2f..%2fCargo.toml",
        "/samples/cloth-mask/017575_1.jpg",
        &format!("/samples/cloth/{person}"),
    ] {
        let r = get(format!("{base}{path}")).await;
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.expect("a JSON error");
        assert_eq!(body["error"], "not_found");
    }
}

#[tokio::test]
async fn without_the_sample_folder_the_page_is_upload_only_and_demo_off_removes_it() {
    let missing = fresh_data_dir().join("no-samples");
    let (_server, base) = start(&["--samples-dir", missing.to_str().expect("utf-8")]).await;
    assert_eq!(get(format!("{base}/")).await.status(), 200);
    let r = get(format!("{base}/samples")).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("a JSON error");
    assert!(body["message"].as_str().unwrap_or("").contains("upload"));
    assert_eq!(
        get(format!("{base}/samples/person/000066_0.jpg"))
            .await
            .status(),
        404
    );

    let (_server, base) = start(&["--demo", "off"]).await;
    for path in ["/", "/page.js", "/page.css", "/samples"] {
        assert_eq!(get(format!("{base}{path}")).await.status(), 404, "{path}");
    }
    assert_eq!(get(format!("{base}/v1/models")).await.status(), 200);
}
