//! The repository stands alone: nothing it tracks reads or names a folder beside the checkout.

use std::path::Path;
use std::process::Command;

/// `..` + `/shared`, spelled so that this file does not match itself.
const SIBLING: &str = concat!("..", "/", "shared");

fn tracked_files(root: &Path) -> Vec<String> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("run git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    String::from_utf8(out.stdout)
        .expect("utf-8 paths")
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn no_tracked_file_names_a_sibling_shared_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = tracked_files(root);
    assert!(files.len() > 50, "git lists only {} files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter(|p| {
            std::fs::read(root.join(p))
                .map(|bytes| {
                    bytes
                        .windows(SIBLING.len())
                        .any(|w| w == SIBLING.as_bytes())
                })
                .unwrap_or(false)
        })
        .cloned()
        .collect();
    assert!(
        offenders.is_empty(),
        "these tracked files name {SIBLING}: {offenders:?}"
    );
}

#[test]
fn the_readme_example_photos_are_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let photos: Vec<&str> = readme
        .split(|c: char| c.is_whitespace() || c == '\\')
        .filter_map(|w| w.split_once("=@").map(|(_, path)| path))
        .collect();
    assert!(photos.len() >= 2, "README's curl example names no photos");
    for p in photos {
        assert!(
            root.join(p).is_file(),
            "README names {p}, which is not in the repository"
        );
    }
}

/// The images build from what the Dockerfile copies: the build stages' `COPY` lines, less
/// `.dockerignore`, hold every file an `include_bytes!`/`include_str!` embeds, and every stage
/// copies the same files. `.ci/run` also compiles that folder
/// (`scripts/check-docker-context.py` without `--no-build`).
#[test]
fn the_docker_build_context_holds_every_embedded_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("scripts/check-docker-context.py"))
        .arg("--no-build")
        .current_dir(root)
        .output()
        .expect("python3 runs scripts/check-docker-context.py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check itself catches a missing COPY: the Dockerfile without its font line fails.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("COPY assets/fonts assets/fonts"));
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dockerfile.replace("COPY assets/fonts assets/fonts\n", "");
    std::fs::write(dir.path().join("Dockerfile"), broken).expect("write");
    let out = Command::new("python3")
        .arg(root.join("scripts/check-docker-context.py"))
        .args(["--no-build", "--dockerfile"])
        .arg(dir.path().join("Dockerfile"))
        .current_dir(root)
        .output()
        .expect("python3 runs scripts/check-docker-context.py");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("src/plotting.rs") && err.contains("DejaVuSans.ttf"),
        "{err}"
    );
}
