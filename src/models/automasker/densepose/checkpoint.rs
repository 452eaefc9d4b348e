//! detectron2's published checkpoints (`model_final_*.pkl`, DensePose's among them): a Python
//! pickle of `{'model': {name: numpy array}, '__author__': ...}`, which detectron2 reads with
//! `pickle.load(f, encoding="latin1")`. candle reads PyTorch's zip archives, not numpy arrays,
//! so this is a small reader of its own: a pickle machine for protocols 2 to 4 (with Python 2
//! strings read as latin-1, as detectron2 does) that builds only what these files hold —
//! dictionaries, lists, tuples, strings, numbers and numpy arrays — and refuses anything else
//! by name. Nothing in the file is executed: the only "globals" understood are numpy's array
//! and dtype reconstructors and `_codecs.encode`, the way protocol 2 spells bytes.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use crate::models::ModelError;

/// The largest file read: detectron2's R-50 FPN checkpoints are about 250 MB.
const MAX_FILE_BYTES: u64 = 2 << 30;

/// A value of the pickle machine.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A float: only metadata holds them, and none is read.
    Float,
    Str(Rc<str>),
    Bytes(Rc<Vec<u8>>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Rc<str>, Rc<str>),
    /// `callable(*args)`, kept as data.
    Reduce(Box<Value>, Box<Value>),
    /// `object.__setstate__(state)`, kept as data.
    Build(Box<Value>, Box<Value>),
    Mark,
}

/// Reads a detectron2 checkpoint: the arrays of its `model` dictionary by name, on `device`.
pub fn read_detectron2_pkl(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let error = |reason: String| ModelError::checkpoint(path, reason);
    let file = std::fs::File::open(path).map_err(|e| error(format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(error(format!("larger than {} MiB", MAX_FILE_BYTES >> 20)));
    }
    let top = unpickle(&bytes).map_err(|e| error(format!("not a readable pickle: {e}")))?;
    let Value::Dict(entries) = top else {
        return Err(error("the pickle holds no dictionary".into()));
    };
    let model = entries
        .into_iter()
        .find(|(k, _)| text(k).as_deref() == Some("model"))
        .map(|(_, v)| v)
        .ok_or_else(|| error("no `model` dictionary (not a detectron2 checkpoint)".into()))?;
    let Value::Dict(arrays) = model else {
        return Err(error("`model` is not a dictionary".into()));
    };
    arrays
        .into_iter()
        .map(|(k, v)| {
            let name = text(&k).ok_or_else(|| error("a key of `model` is not a string".into()))?;
            let tensor = array(&v, device).map_err(|e| error(format!("{name}: {e}")))?;
            Ok((name, tensor))
        })
        .collect()
}

/// A string key: Python 3 `str`, or a Python 2 `str` read as latin-1.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.to_string()),
        Value::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
        _ => None,
    }
}

/// A numpy array: `_reconstruct(ndarray, (0,), b'b')` built with the state
/// `(version, shape, dtype, is_fortran, data)`.
fn array(v: &Value, device: &Device) -> Result<Tensor, String> {
    let Value::Build(object, state) = v else {
        return Err("not a numpy array".into());
    };
    match object.as_ref() {
        Value::Reduce(callable, _) if is_global(callable, &NUMPY_MULTIARRAY, "_reconstruct") => {}
        _ => return Err("not a numpy array".into()),
    }
    let Value::Tuple(state) = state.as_ref() else {
        return Err("an array state that is not a tuple".into());
    };
    let [_, shape, dtype, fortran, data] = state.as_slice() else {
        return Err(format!("an array state of {} items", state.len()));
    };
    let shape: Vec<usize> = match shape {
        Value::Tuple(dims) => dims
            .iter()
            .map(|d| match d {
                Value::Int(n) if *n >= 0 => Ok(*n as usize),
                _ => Err("a shape that is not whole numbers".to_string()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("a shape that is not a tuple".into()),
    };
    let (dtype, width) = element_type(dtype)?;
    let data: &[u8] = match data {
        Value::Bytes(b) => b,
        _ => return Err("array data that is not bytes (an object array?)".into()),
    };
    let count: usize = shape.iter().product();
    if data.len() != count * width {
        return Err(format!(
            "{} bytes of data for {count} elements of {width} bytes",
            data.len()
        ));
    }
    let fortran = matches!(fortran, Value::Bool(true));
    // Column-major data is the transpose of its reversed shape in row-major order.
    let stored: Vec<usize> = if fortran {
        shape.iter().rev().copied().collect()
    } else {
        shape.clone()
    };
    let tensor =
        Tensor::from_raw_buffer(data, dtype, &stored, device).map_err(|e| e.to_string())?;
    if fortran && shape.len() > 1 {
        let order: Vec<usize> = (0..shape.len()).rev().collect();
        tensor
            .permute(order)
            .and_then(|t| t.contiguous())
            .map_err(|e| e.to_string())
    } else {
        Ok(tensor)
    }
}

/// numpy's module of the array reconstructor, before and after numpy 2 renamed it.
const NUMPY_MULTIARRAY: [&str; 2] = ["numpy.core.multiarray", "numpy._core.multiarray"];

fn is_global(v: &Value, modules: &[&str], name: &str) -> bool {
    matches!(v, Value::Global(m, n) if modules.contains(&m.as_ref()) && n.as_ref() == name)
}

/// The candle type and byte width of a numpy dtype: `dtype('f4', False, True)`, with the byte
/// order in its built state (`(3, '<', ...)`); big-endian data is refused.
fn element_type(v: &Value) -> Result<(DType, usize), String> {
    let (reduce, state) = match v {
        Value::Build(object, state) => (object.as_ref(), Some(state.as_ref())),
        other => (other, None),
    };
    let code = match reduce {
        Value::Reduce(callable, args) if is_global(callable, &["numpy"], "dtype") => {
            match args.as_ref() {
                Value::Tuple(args) => args.first().and_then(text),
                _ => None,
            }
        }
        _ => None,
    }
    .ok_or("a dtype that is not numpy's")?;
    if let Some(Value::Tuple(state)) = state {
        if let Some(order) = state.get(1).and_then(text) {
            if order == ">" {
                return Err(format!("big-endian {code}"));
            }
        }
    }
    match code.as_str() {
        "f4" => Ok((DType::F32, 4)),
        "f8" => Ok((DType::F64, 8)),
        "f2" => Ok((DType::F16, 2)),
        "i8" => Ok((DType::I64, 8)),
        "u1" => Ok((DType::U8, 1)),
        "u4" => Ok((DType::U32, 4)),
        other => Err(format!("arrays of {other} are not read")),
    }
}

/// Runs the pickle machine over `bytes` and answers the value it stops on.
fn unpickle(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { bytes, at: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| "stack underflow".to_string());
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>, String> {
        let at = stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("no mark")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                let protocol = r.u8()?;
                if protocol > 4 {
                    return Err(format!("protocol {protocol} (2 to 4 are read)"));
                }
            }
            0x95 => {
                r.take(8)?;
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(i32::from_le_bytes(r.array()?) as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(u16::from_le_bytes(r.array()?) as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                let digits = r.take(n)?;
                if n > 8 {
                    return Err("an integer wider than 64 bits".into());
                }
                let mut v: i64 = 0;
                for (i, &b) in digits.iter().enumerate() {
                    v |= (b as i64) << (8 * i);
                }
                if n > 0 && n < 8 && digits[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                r.take(8)?;
                stack.push(Value::Float);
            }
            b'X' => {
                let n = u32::from_le_bytes(r.array()?) as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            0x8d => {
                let n = r.len64()?;
                stack.push(Value::Str(r.utf8(n)?));
            }
            // Python 2 `str` and Python 3 `bytes`: raw bytes (latin-1 where text is wanted).
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(Rc::new(r.take(n)?.to_vec())));
            }
            b'T' | b'B' => {
                let n = u32::from_le_bytes(r.array()?) as usize;
                stack.push(Value::Bytes(Rc::new(r.take(n)?.to_vec())));
            }
            0x8e => {
                let n = r.len64()?;
                stack.push(Value::Bytes(Rc::new(r.take(n)?.to_vec())));
            }
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err("append to a non-list".into()),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err("appends to a non-list".into()),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err("setitem on a non-dict".into()),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if items.len() % 2 != 0 {
                    return Err("setitems with an odd count".into());
                }
                let mut items = items.into_iter();
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        while let (Some(k), Some(v)) = (items.next(), items.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err("setitems on a non-dict".into()),
                }
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err("stack_global of non-strings".into()),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(reduce(callable, args)?);
            }
            b'b' => {
                let state = pop(&mut stack)?;
                let object = pop(&mut stack)?;
                stack.push(Value::Build(Box::new(object), Box::new(state)));
            }
            b'q' => {
                let at = r.u8()? as u32;
                memo.insert(at, stack.last().cloned().ok_or("memo of nothing")?);
            }
            b'r' => {
                let at = u32::from_le_bytes(r.array()?);
                memo.insert(at, stack.last().cloned().ok_or("memo of nothing")?);
            }
            0x94 => {
                let at = memo.len() as u32;
                memo.insert(at, stack.last().cloned().ok_or("memo of nothing")?);
            }
            b'h' => {
                let at = r.u8()? as u32;
                stack.push(memo.get(&at).cloned().ok_or("unknown memo entry")?);
            }
            b'j' => {
                let at = u32::from_le_bytes(r.array()?);
                stack.push(memo.get(&at).cloned().ok_or("unknown memo entry")?);
            }
            other => return Err(format!("opcode 0x{other:02x} at byte {}", r.at - 1)),
        }
    }
}

/// `callable(*args)` for the globals these files use. Only `_codecs.encode(text, 'latin1')`
/// and `bytes()` (protocol 2's spellings of bytes) are evaluated; numpy's reconstructors stay data, and any
/// other global is refused by name.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    match &callable {
        Value::Global(m, n) if m.as_ref() == "_codecs" && n.as_ref() == "encode" => match &args {
            Value::Tuple(a) => match a.as_slice() {
                [Value::Str(s), Value::Str(enc)] if enc.as_ref() == "latin1" => {
                    let bytes = s
                        .chars()
                        .map(|c| u8::try_from(c as u32).map_err(|_| "not latin-1"))
                        .collect::<Result<Vec<u8>, _>>()?;
                    Ok(Value::Bytes(Rc::new(bytes)))
                }
                _ => Err("_codecs.encode with other arguments".into()),
            },
            _ => Err("_codecs.encode with other arguments".into()),
        },
        // Protocol 2's empty bytes: `bytes()`.
        Value::Global(m, n)
            if (m.as_ref() == "__builtin__" || m.as_ref() == "builtins")
                && n.as_ref() == "bytes"
                && matches!(&args, Value::Tuple(a) if a.is_empty()) =>
        {
            Ok(Value::Bytes(Rc::new(Vec::new())))
        }
        Value::Global(m, n)
            if (NUMPY_MULTIARRAY.contains(&m.as_ref()) && n.as_ref() == "_reconstruct")
                || (m.as_ref() == "numpy"
                    && (n.as_ref() == "ndarray" || n.as_ref() == "dtype")) =>
        {
            Ok(Value::Reduce(Box::new(callable), Box::new(args)))
        }
        Value::Global(m, n) if m.as_ref() == "collections" && n.as_ref() == "OrderedDict" => {
            Ok(Value::Dict(Vec::new()))
        }
        Value::Global(m, n) => Err(format!("refuses to call {m}.{n}")),
        _ => Err("a call of a non-global".into()),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or("truncated")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len64(&mut self) -> Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.array()?)).map_err(|_| "a length too large".into())
    }

    fn utf8(&mut self, n: usize) -> Result<Rc<str>, String> {
        std::str::from_utf8(self.take(n)?)
            .map(Rc::from)
            .map_err(|_| "a string that is not UTF-8".into())
    }

    fn line(&mut self) -> Result<Rc<str>, String> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("truncated")?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| "a name that is not UTF-8")?;
        self.at += end + 1;
        Ok(Rc::from(line))
    }
}
