//! `virtualfit tryon`, the offline one-shot command.

use crate::common;

use std::process::Command;

use common::demo_dir;

fn tryon(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .arg("tryon")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn path(rel: &str) -> String {
    demo_dir().join(rel).to_string_lossy().into_owned()
}

#[test]
fn writes_png_or_jpeg_by_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, format) in [
        ("out.png", image::ImageFormat::Png),
        ("out.jpg", image::ImageFormat::Jpeg),
    ] {
        let out = dir.path().join(name);
        let o = tryon(&[
            "--person",
            &path("person/000066_0.jpg"),
            "--cloth",
            &path("cloth/017575_1.jpg"),
            "--cloth-mask",
            &path("cloth-mask/017575_1.jpg"),
            "--output",
            &out.to_string_lossy(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let bytes = std::fs::read(&out).expect("written");
        assert_eq!(image::guess_format(&bytes).expect("an image"), format);
        let img = image::load_from_memory(&bytes).expect("decodes");
        assert_eq!((img.width(), img.height()), (192, 256));
    }
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.jpg");
    std::fs::write(&garbage, b"not an image").expect("write");
    let out = dir.path().join("out.png").to_string_lossy().into_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--person".into(),
                garbage.to_string_lossy().into(),
                "--cloth".into(),
                path("cloth/017575_1.jpg"),
                "--output".into(),
                out.clone(),
            ],
            "person photo",
        ),
        (
            vec![
                "--person".into(),
                path("person/000066_0.jpg"),
                "--cloth".into(),
                "/nonexistent/cloth.jpg".into(),
                "--output".into(),
                out.clone(),
            ],
            "cannot read the garment photo",
        ),
        (
            vec![
                "--person".into(),
                path("person/000066_0.jpg"),
                "--cloth".into(),
                path("cloth/017575_1.jpg"),
                "--output".into(),
                dir.path().join("out.gif").to_string_lossy().into(),
            ],
            "output format",
        ),
        (
            vec![
                "--person".into(),
                path("person/000066_0.jpg"),
                "--cloth".into(),
                path("cloth/017575_1.jpg"),
                "--output".into(),
                out.clone(),
                "--model".into(),
                "dmvton".into(),
            ],
            "--model-dir",
        ),
        (
            vec![
                "--person".into(),
                path("person/000066_0.jpg"),
                "--cloth".into(),
                path("cloth/017575_1.jpg"),
                "--output".into(),
                out.clone(),
                "--model".into(),
                "nope".into(),
            ],
            "invalid value 'nope' for '--model",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = tryon(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(
        !std::path::Path::new(&out).exists(),
        "nothing written on failure"
    );
}

#[test]
fn serve_refuses_a_zero_request_timeout_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(["serve", "--bind", "127.0.0.1:0", "--request-timeout-s", "0"])
        .output()
        .expect("run virtualfit");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--request-timeout-s"), "{err}");
    assert!(err.contains("above 0"), "{err}");
}

#[test]
fn serve_refuses_job_priorities_that_a_sqlite_store_would_strand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--job-priorities",
            "interactive",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run virtualfit");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--job-priorities"), "{err}");
    assert!(err.contains("batch jobs"), "{err}");
    assert!(err.contains("--jobs-redis"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(["serve", "--job-priorities", "urgent"])
        .output()
        .expect("run virtualfit");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("interactive") && err.contains("batch"),
        "{err}"
    );
}
