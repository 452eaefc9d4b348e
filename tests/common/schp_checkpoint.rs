//! Full-size SCHP checkpoints in the official layout, from the seeded formula weights: what
//! `SchpParsers::random` computes, written as a file the way users receive the real parsers, so
//! that a test can serve them from a folder or the hub and compare with the official fixtures.
//!
//! The layout is `torch.save`'s zip archive: `archive/data.pkl` pickles
//! `{'state_dict': OrderedDict}` with `module.`-prefixed keys before the official renames, each
//! tensor a `torch._utils._rebuild_tensor_v2` over a persistent `FloatStorage` whose bytes are
//! the entry `archive/data/N`. The pickle (protocol 2) uses only the opcodes `torch.save` emits
//! for such a dictionary.

use std::io::{Cursor, Write};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use virtualfit::models::automasker::schp::weights::{
    FormulaWeights, MODULE_PREFIX, RENAMES, STATE_DICT_KEY,
};
use virtualfit::models::automasker::schp::{Schp, SchpConfig};

/// Every tensor the network asks for, by module path, with its shape and values.
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The formula weights, recording each tensor the network asks for.
struct Recording {
    formula: FormulaWeights,
    seen: Arc<Mutex<Tensors>>,
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let values = self.formula.values(name, s.dims())?;
        self.seen
            .lock()
            .expect("lock")
            .push((name.to_string(), s.dims().to_vec(), values.clone()));
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded weights need a shape: {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The official checkpoint file of `config` holding the formula weights of variant `tag`
/// (`atr`, `lip`: those of `SchpParsers::random(0)`).
pub fn formula_checkpoint(config: SchpConfig, tag: &str) -> Vec<u8> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = Recording {
        formula: FormulaWeights::new(tag),
        seen: seen.clone(),
    };
    Schp::new(
        config,
        VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu),
    )
    .expect("the network");
    let tensors = std::mem::take(&mut *seen.lock().expect("lock"));
    write_archive(&tensors)
}

/// The checkpoint key of a module path: the official renames undone, `module.` added.
fn checkpoint_key(path: &str) -> String {
    let key = RENAMES
        .iter()
        .find(|(_, to)| *to == path)
        .map_or(path, |(from, _)| from);
    format!("{MODULE_PREFIX}{key}")
}

fn write_archive(tensors: &Tensors) -> Vec<u8> {
    let mut pickle = Pickle(vec![0x80, 2]);
    pickle.0.push(b'}');
    pickle.unicode(STATE_DICT_KEY);
    pickle.ordered_dict();
    pickle.0.push(b'(');
    for (index, (path, dims, _)) in tensors.iter().enumerate() {
        pickle.unicode(&checkpoint_key(path));
        pickle.tensor(&index.to_string(), dims);
    }
    pickle.0.extend_from_slice(b"us.");

    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    let mut entry = |name: &str, bytes: &[u8]| {
        zip.start_file(name, stored).expect("zip entry");
        zip.write_all(bytes).expect("zip write");
    };
    entry("archive/data.pkl", &pickle.0);
    for (index, (_, _, values)) in tensors.iter().enumerate() {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        entry(&format!("archive/data/{index}"), &bytes);
    }
    entry("archive/version", b"3\n");
    zip.finish().expect("zip").into_inner()
}

/// A protocol-2 pickle under construction.
struct Pickle(Vec<u8>);

impl Pickle {
    fn unicode(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: usize) {
        self.0.push(b'J');
        self.0.extend_from_slice(&(v as i32).to_le_bytes());
    }

    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    /// `collections.OrderedDict()`.
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.extend_from_slice(b")R");
    }

    fn ints(&mut self, values: &[usize]) {
        self.0.push(b'(');
        for &v in values {
            self.int(v);
        }
        self.0.push(b't');
    }

    /// `_rebuild_tensor_v2(storage, 0, dims, strides, False, OrderedDict())` over the
    /// persistent float storage `key`.
    fn tensor(&mut self, key: &str, dims: &[usize]) {
        let numel = dims.iter().product();
        let strides: Vec<usize> = (0..dims.len())
            .map(|i| dims[i + 1..].iter().product())
            .collect();
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.0.push(b'(');
        self.0.push(b'(');
        self.unicode("storage");
        self.global("torch", "FloatStorage");
        self.unicode(key);
        self.unicode("cpu");
        self.int(numel);
        self.0.extend_from_slice(b"tQ");
        self.int(0);
        self.ints(dims);
        self.ints(&strides);
        self.0.push(0x89);
        self.ordered_dict();
        self.0.extend_from_slice(b"tR");
    }
}
