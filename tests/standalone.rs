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
