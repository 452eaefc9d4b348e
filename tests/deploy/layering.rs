//! The layering rules, checked on the source tree: imports run one way, from the HTTP edge
//! (`server`, `jobs`, the CLI) through the pipeline and the batcher to the models, imaging and
//! the ops; and no file outside `src/models/` names a registered model.

use std::path::{Path, PathBuf};

/// The modules below the HTTP edge, and what they must not reach up to.
const LOWER: &[&str] = &["pipeline", "batcher", "models", "imaging", "ops"];
const EDGE: &[&str] = &[
    "crate::server",
    "crate::jobs",
    "crate::error",
    "crate::config",
    "crate::cli",
];
/// The registered models' names, test-only ones included; only `src/models/` may spell them.
fn model_words() -> Vec<&'static str> {
    virtualfit::models::registry::REGISTRY
        .iter()
        .map(|f| f.name())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Where `word` appears in `text` as a whole word (case-insensitive): not inside a longer
/// identifier, so `overlays` is not `overlay`.
fn word_lines(text: &str, word: &str) -> Vec<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let lower = line.to_ascii_lowercase();
        let found = lower.match_indices(word).any(|(i, _)| {
            let before = lower[..i].chars().next_back();
            let after = lower[i + word.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        });
        if found {
            lines.push(n + 1);
        }
    }
    lines
}

/// The lines of `text` that reach one of `edge`'s modules.
fn edge_lines(text: &str, edge: &[&str]) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            edge.iter().any(|m| {
                line.match_indices(m).any(|(i, _)| {
                    let after = line[i + m.len()..].chars().next();
                    !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            })
        })
        .map(|(n, _)| n + 1)
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(src())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn lower_layers_never_import_the_http_edge() {
    let mut violations = Vec::new();
    for module in LOWER {
        let mut files = Vec::new();
        rust_files(&src().join(module), &mut files);
        let single = src().join(format!("{module}.rs"));
        if single.exists() {
            files.push(single);
        }
        assert!(!files.is_empty(), "no source for `{module}`");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for line in edge_lines(&text, EDGE) {
                violations.push(format!("{}:{line}", relative(&file)));
            }
        }
    }
    assert!(violations.is_empty(), "reaches up: {violations:?}");
}

#[test]
fn no_model_is_named_outside_the_models() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let models = src().join("models");
    let words = model_words();
    assert!(words.len() >= 3, "the registry was read: {words:?}");
    let mut violations = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&models)) {
        let text = std::fs::read_to_string(file).expect("readable source");
        for word in &words {
            for line in word_lines(&text, word) {
                violations.push(format!("{}:{line} names {word}", relative(file)));
            }
        }
    }
    assert!(files.len() > 50, "the source tree was read");
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_checks_catch_what_they_look_for() {
    assert_eq!(word_lines("let m = Catvton::load();\nok", "catvton"), [1]);
    assert_eq!(
        word_lines("k8s/overlays/batch-pool", "overlay"),
        Vec::<usize>::new()
    );
    assert_eq!(word_lines("a\n\"overlay\"", "overlay"), [2]);
    assert_eq!(word_lines("dmvton_x", "dmvton"), Vec::<usize>::new());
    assert_eq!(
        edge_lines("use crate::server::AppState;\nuse crate::servers;", EDGE),
        [1]
    );
    assert_eq!(edge_lines("use crate::jobs;", EDGE), [1]);
}
