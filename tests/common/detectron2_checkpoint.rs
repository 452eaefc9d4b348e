//! A detectron2 checkpoint file as the model zoo publishes it (`model_final_*.pkl`): a pickle of
//! `{'model': {name: numpy float32 array}, '__author__': str}`, written here from DensePose's
//! seeded formula weights so that a test can load the network the way users' files load.
//!
//! The pickle uses protocol 3 and only the opcodes `pickle.dump` emits for such a dictionary of
//! numpy arrays (less the memo, which nothing refers back to): each array is
//! `numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')` built with the state
//! `(1, shape, dtype('<f4'), False, raw bytes)`.

use std::path::Path;

use virtualfit::models::automasker::densepose;

fn unicode(out: &mut Vec<u8>, text: &str) {
    out.push(b'X');
    out.extend((text.len() as u32).to_le_bytes());
    out.extend(text.as_bytes());
}

fn int(out: &mut Vec<u8>, value: i32) {
    out.push(b'J');
    out.extend(value.to_le_bytes());
}

fn array(out: &mut Vec<u8>, shape: &[usize], values: &[f32]) {
    out.extend(b"cnumpy.core.multiarray\n_reconstruct\n");
    out.extend(b"cnumpy\nndarray\n");
    out.extend([b'K', 0, 0x85]); // (0,)
    out.extend([b'C', 1, b'b']);
    out.extend([0x87, b'R']);
    // The state: (1, shape, dtype, is_fortran, data).
    out.push(b'(');
    out.extend([b'K', 1]);
    out.push(b'(');
    for &d in shape {
        int(out, d as i32);
    }
    out.push(b't');
    out.extend(b"cnumpy\ndtype\n");
    unicode(out, "f4");
    out.extend([0x89, 0x88, 0x87, b'R']);
    out.push(b'(');
    out.extend([b'K', 3]);
    unicode(out, "<");
    out.extend(b"NNN");
    int(out, -1);
    int(out, -1);
    out.extend([b'K', 0]);
    out.extend([b't', b'b']);
    out.push(0x89);
    out.push(b'B');
    out.extend(((values.len() * 4) as u32).to_le_bytes());
    for v in values {
        out.extend(v.to_le_bytes());
    }
    out.extend([b't', b'b']);
}

/// `model_final_162be9.pkl` holding the seeded weights of every tensor the official model has
/// (the generator's listing, `tests/fixtures/densepose/state_dict.txt`).
pub fn formula_checkpoint() -> Vec<u8> {
    let listing = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/densepose/state_dict.txt"),
    )
    .expect("the listing");
    let weights = densepose::formula_weights();
    let mut out = vec![0x80, 3, b'}', b'('];
    unicode(&mut out, "model");
    out.extend([b'}', b'(']);
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let (name, shape) = line.split_once('\t').expect("name and shape");
        let dims: Vec<usize> = shape
            .split(',')
            .map(|d| d.parse().expect("a dimension"))
            .collect();
        unicode(&mut out, name);
        array(
            &mut out,
            &dims,
            &weights.values(name, &dims).expect("a formula"),
        );
    }
    out.push(b'u');
    unicode(&mut out, "__author__");
    unicode(&mut out, "VirtualFit tests (seeded formula weights)");
    out.extend([b'u', b'.']);
    out
}

/// A folder in the published layout: the two YAML files and the checkpoint.
pub fn write_folder(dir: &Path) {
    std::fs::create_dir_all(dir).expect("folder");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/densepose/config");
    for name in [densepose::CONFIG_FILE, densepose::BASE_CONFIG_FILE] {
        std::fs::copy(config.join(name), dir.join(name)).expect("configuration");
    }
    std::fs::write(dir.join(densepose::CHECKPOINT_FILE), formula_checkpoint()).expect("checkpoint");
}
