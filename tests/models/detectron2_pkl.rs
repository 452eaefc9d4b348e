//! Our reader of detectron2's checkpoint format (DensePose's `model_final_162be9.pkl` is one)
//! against pickles that Python's own `pickle` and numpy wrote (`tests/fixtures/detectron2`,
//! from `scripts/fixtures/detectron2_pkl.py`), and its refusals.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use virtualfit::models::automasker::densepose::read_detectron2_pkl;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/detectron2")
        .join(name)
}

fn values(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("values")
}

#[test]
fn both_protocols_read_every_array_with_its_type_shape_and_values() {
    let expected = candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu)
        .expect("fixture");
    assert_eq!(expected.len(), 8);
    // The true shapes (safetensors writes a 0-d array as [1]).
    let bytes = std::fs::read(fixture("expected.safetensors")).expect("fixture");
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let shapes: std::collections::HashMap<String, Vec<usize>> = serde_json::from_str(
        metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("shapes"))
            .expect("shapes"),
    )
    .expect("JSON");
    for file in ["model-p2.pkl", "model-p4.pkl"] {
        let got = read_detectron2_pkl(&fixture(file), &Device::Cpu).expect(file);
        let mut names: Vec<&String> = got.keys().collect();
        names.sort();
        let mut want_names: Vec<&String> = expected.keys().collect();
        want_names.sort();
        assert_eq!(
            names, want_names,
            "{file}: only the `model` dictionary's arrays"
        );
        for (name, want) in &expected {
            let g = &got[name];
            assert_eq!(g.dtype(), want.dtype(), "{file} {name}");
            assert_eq!(g.dims(), shapes[name].as_slice(), "{file} {name}");
            // Exact: the file holds the very bits (the Fortran-ordered matrix included).
            assert_eq!(values(g), values(want), "{file} {name}");
        }
    }
}

/// A file of `bytes` in the temporary folder.
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("virtualfit-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("temp file");
    path
}

fn refusal(path: &Path) -> String {
    match read_detectron2_pkl(path, &Device::Cpu) {
        Ok(t) => panic!("{} read as {} arrays", path.display(), t.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn what_is_not_a_detectron2_checkpoint_is_refused_by_name_and_nothing_is_called() {
    let e = refusal(&fixture("model-bigendian.pkl"));
    assert!(e.contains("weight") && e.contains("big-endian"), "{e}");

    let whole = std::fs::read(fixture("model-p4.pkl")).expect("fixture");
    let e = refusal(&temp_file("truncated.pkl", &whole[..whole.len() / 2]));
    assert!(
        e.contains("truncated") && e.contains("truncated.pkl"),
        "{e}"
    );

    // `os.system('ls')`: a pickle may name any callable; the reader calls none of them.
    let e = refusal(&temp_file(
        "call.pkl",
        b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.",
    ));
    assert!(e.contains("refuses to call os.system"), "{e}");

    let e = refusal(&temp_file("dict.pkl", b"\x80\x02}."));
    assert!(e.contains("no `model` dictionary"), "{e}");

    let e = refusal(&temp_file("text.pkl", b"hello"));
    assert!(e.contains("not a readable pickle"), "{e}");

    let e = refusal(&fixture("no-such-file.pkl"));
    assert!(e.contains("no-such-file.pkl"), "{e}");
}
