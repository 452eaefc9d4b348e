//! DM-VTON parity with the reference implementation (fixtures in `../shared/fixtures/dmvton`)
//! and checkpoint loading. Run with `--nocapture` to see the error figures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use virtualfit::models::dmvton::{DmVton, DmVtonOutput};
use virtualfit::models::{ModelError, TryOnBatch, TryOnModel};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/dmvton")
}

fn parity() -> &'static HashMap<String, Tensor> {
    static PARITY: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    PARITY.get_or_init(|| {
        let path = fixture_dir().join("parity.safetensors");
        candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    })
}

fn reference(name: &str) -> &'static Tensor {
    parity()
        .get(name)
        .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
}

fn model() -> &'static DmVton {
    static MODEL: OnceLock<DmVton> = OnceLock::new();
    MODEL.get_or_init(|| DmVton::load(&fixture_dir(), &Device::Cpu).expect("load fixture model"))
}

/// The inputs of pairs `start..start + len`.
fn batch(start: usize, len: usize) -> TryOnBatch {
    let take = |name: &str| reference(name).narrow(0, start, len).unwrap();
    TryOnBatch {
        person: take("input.person"),
        cloth: take("input.cloth"),
        cloth_mask: take("input.cloth_mask"),
    }
}

fn full_output() -> &'static DmVtonOutput {
    static OUT: OnceLock<DmVtonOutput> = OnceLock::new();
    OUT.get_or_init(|| model().run(&batch(0, 6)).expect("forward"))
}

/// ‖out − ref‖ / ‖ref‖ and max |out − ref|, in f64.
fn errors(out: &Tensor, reference: &Tensor) -> (f64, f64) {
    assert_eq!(out.dims(), reference.dims(), "shape");
    let a: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = reference
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        let d = *x as f64 - *y as f64;
        num += d * d;
        den += (*y as f64) * (*y as f64);
        max = max.max(d.abs());
    }
    (num.sqrt() / den.sqrt().max(1e-30), max)
}

fn assert_close(name: &str, out: &Tensor, reference: &Tensor) {
    let (rel, max) = errors(out, reference);
    println!("{name}: rel L2 {rel:.3e}, max abs {max:.3e}");
    assert!(rel <= 1e-4, "{name}: relative L2 error {rel:.3e} > 1e-4");
}

/// The fixture README's rule: trunc(clamp((x + 1) / 2, 0, 1) · 255 + 0.5).
fn to_u8(x: &Tensor) -> Vec<u8> {
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    v.iter()
        .map(|x| (((x + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0 + 0.5) as u8)
        .collect()
}

#[test]
fn feature_pyramids_match_reference_on_first_pair() {
    let b = batch(0, 1);
    let mask = b
        .cloth_mask
        .gt(0.5f64)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let cloth = b.cloth.broadcast_mul(&mask).unwrap();
    let (cond, image) = model().warp_module().pyramids(&b.person, &cloth).unwrap();
    assert_eq!(cond.len(), 5);
    for level in 0..5 {
        assert_close(
            &format!("cond_fpn.{level}"),
            &cond[level],
            reference(&format!("cond_fpn.{level}")),
        );
        assert_close(
            &format!("image_fpn.{level}"),
            &image[level],
            reference(&format!("image_fpn.{level}")),
        );
    }
}

#[test]
fn outputs_match_reference_on_batch_of_six() {
    let out = full_output();
    assert_close("output.flow", &out.flow, reference("output.flow"));
    assert_close(
        "output.warped_cloth",
        &out.warped_cloth,
        reference("output.warped_cloth"),
    );
    assert_close(
        "output.warped_mask",
        &out.warped_mask,
        reference("output.warped_mask"),
    );
    assert_close("output.gen_raw", &out.gen_raw, reference("output.gen_raw"));
    assert_close("output.tryon", &out.tryon, reference("output.tryon"));
}

#[test]
fn eight_bit_images_match_reference() {
    let got = to_u8(&full_output().tryon);
    let want: Vec<u8> = reference("output.tryon_u8")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let within = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.abs_diff(**b) <= 1)
        .count();
    let exact = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    let share = within as f64 / want.len() as f64;
    println!(
        "tryon_u8: {:.4}% within 1 level, {:.4}% exact, worst {}",
        share * 100.0,
        exact as f64 / want.len() as f64 * 100.0,
        got.iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0)
    );
    assert!(
        share >= 0.999,
        "only {:.4}% within one level",
        share * 100.0
    );
}

#[test]
fn a_pair_alone_gives_the_same_output_as_in_the_batch() {
    let model = model();
    for i in [0usize, 3] {
        let alone = model.forward(&batch(i, 1)).unwrap();
        let in_batch = full_output().tryon.narrow(0, i, 1).unwrap();
        let (rel, max) = errors(&alone, &in_batch);
        println!("pair {i} alone vs in batch: rel L2 {rel:.3e}, max abs {max:.3e}");
        assert!(
            max <= 1e-5,
            "pair {i}: alone differs from batched by {max:.3e}"
        );
    }
    // And a pair of two inside the six.
    let two = model.forward(&batch(2, 2)).unwrap();
    let (_, max) = errors(&two, &full_output().tryon.narrow(0, 2, 2).unwrap());
    assert!(max <= 1e-5, "pairs 2..4: {max:.3e}");
}

// ---- checkpoints ----

/// Converts a fixture `.pt` into safetensors at `dest` with the `safetensors` crate.
fn convert_to_safetensors(pt: &Path, dest: &Path) {
    let tensors = candle_core::pickle::read_all_with_key(pt, Some("model")).expect("read .pt");
    let mut data: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (name, t) in tensors {
        let (bytes, dtype) = match t.dtype() {
            DType::F32 => {
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                (
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    safetensors::Dtype::F32,
                )
            }
            DType::I64 => {
                let v: Vec<i64> = t.flatten_all().unwrap().to_vec1().unwrap();
                (
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    safetensors::Dtype::I64,
                )
            }
            other => panic!("unexpected dtype {other:?} for {name}"),
        };
        data.push((name, bytes, t.dims().to_vec(), dtype));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, dest).expect("write safetensors");
}

fn load_error(warp: &Path, gen: &Path) -> String {
    match DmVton::load_files(warp, gen, &Device::Cpu) {
        Ok(_) => panic!("loading {} / {} should fail", warp.display(), gen.display()),
        Err(e) => {
            assert!(matches!(e, ModelError::Checkpoint { .. }), "{e:?}");
            e.to_string()
        }
    }
}

#[test]
fn safetensors_conversion_reloads_to_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    for stem in ["dmvton_pf_warp", "dmvton_pf_gen"] {
        convert_to_safetensors(
            &fixture_dir().join(format!("{stem}.pt")),
            &dir.path().join(format!("{stem}.safetensors")),
        );
    }
    let converted = DmVton::load(dir.path(), &Device::Cpu).expect("load safetensors");
    let b = batch(1, 1);
    let a = converted.forward(&b).unwrap();
    let want = model().forward(&b).unwrap();
    let (_, max) = errors(&a, &want);
    println!("safetensors vs .pt: max abs {max:.3e}");
    assert_eq!(max, 0.0, "safetensors weights give a different output");
}

#[test]
fn shared_smooth_layer_storage_loads_as_equal_tensors() {
    let ckpt = virtualfit::models::dmvton::Checkpoint::load(
        &fixture_dir().join("dmvton_pf_warp.pt"),
        &Device::Cpu,
    )
    .unwrap();
    let t = ckpt.tensors();
    let first = &t["cond_mobile.smooth_layers.0.weight"];
    for i in 1..5 {
        let other = &t[&format!("cond_mobile.smooth_layers.{i}.weight")];
        let (_, max) = errors(other, first);
        assert_eq!(max, 0.0);
    }
    assert_eq!(first.dims(), &[256, 256, 3, 3]);
}

#[test]
fn truncated_checkpoint_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture_dir().join("dmvton_pf_warp.pt");
    let bytes = std::fs::read(&src).unwrap();
    let cut = dir.path().join("dmvton_pf_warp.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_error(&cut, &fixture_dir().join("dmvton_pf_gen.pt"));
    println!("{msg}");
    assert!(msg.contains(&cut.display().to_string()), "{msg}");

    // A truncated safetensors file too.
    let st = dir.path().join("dmvton_pf_gen.safetensors");
    convert_to_safetensors(&fixture_dir().join("dmvton_pf_gen.pt"), &st);
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = load_error(&src, &st);
    println!("{msg}");
    assert!(msg.contains(&st.display().to_string()), "{msg}");
}

#[test]
fn a_file_of_another_model_names_the_file_and_the_missing_tensor() {
    let gen = fixture_dir().join("dmvton_pf_gen.pt");
    // The generator file given as the warp file.
    let msg = load_error(&gen, &gen);
    println!("{msg}");
    assert!(msg.contains(&gen.display().to_string()), "{msg}");
    assert!(msg.contains("image_mobile.first_layer.0.weight"), "{msg}");
}

#[test]
fn a_swapped_pair_names_the_file_and_the_tensor() {
    let warp = fixture_dir().join("dmvton_pf_warp.pt");
    let gen = fixture_dir().join("dmvton_pf_gen.pt");
    let msg = load_error(&gen, &warp);
    println!("{msg}");
    assert!(msg.contains(&gen.display().to_string()), "{msg}");
    assert!(msg.contains("image_mobile.first_layer.0.weight"), "{msg}");
}

#[test]
fn a_mis_shaped_tensor_names_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("dmvton_pf_gen.safetensors");
    convert_to_safetensors(&fixture_dir().join("dmvton_pf_gen.pt"), &st);
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    // conv_last is 4×16×3×3; store it as 3×16×3×3.
    let bad = tensors["conv_last.weight"]
        .narrow(0, 0, 3)
        .unwrap()
        .contiguous()
        .unwrap();
    tensors.insert("conv_last.weight".to_string(), bad);
    candle_core::safetensors::save(&tensors, &st).unwrap();
    let msg = load_error(&fixture_dir().join("dmvton_pf_warp.pt"), &st);
    println!("{msg}");
    assert!(msg.contains(&st.display().to_string()), "{msg}");
    assert!(msg.contains("conv_last.weight"), "{msg}");
}

#[test]
fn registry_loads_dmvton_from_model_dir() {
    let m = virtualfit::models::load("dmvton", Some(&fixture_dir()), &Device::Cpu).unwrap();
    assert_eq!(m.name(), "dmvton");
    let missing = virtualfit::models::load("dmvton", None, &Device::Cpu);
    assert!(matches!(missing, Err(ModelError::MissingModelDir { .. })));
}

// ---- speed (a measurement, not a check): cargo test --release --test dmvton -- --ignored --nocapture ----

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat (100 Hz ticks).
fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let user: f64 = rest.get(11)?.parse().ok()?;
            let system: f64 = rest.get(12)?.parse().ok()?;
            Some((user + system) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn median_secs(iterations: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..iterations)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

#[test]
#[ignore = "timing measurement; run explicitly"]
fn speed_profile() {
    let sizes: Vec<usize> = std::env::var("DMVTON_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,4,8".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let iterations: usize = std::env::var("DMVTON_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let model = model();
    for b in sizes {
        let idx: Vec<u32> = (0..b as u32).map(|i| i % 6).collect();
        let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
        let pick = |n: &str| reference(n).index_select(&idx, 0).unwrap();
        let batch = TryOnBatch {
            person: pick("input.person"),
            cloth: pick("input.cloth"),
            cloth_mask: pick("input.cloth_mask"),
        };
        let warp = model.warp_module();
        let fpn = median_secs(iterations, || {
            warp.pyramids(&batch.person, &batch.cloth).unwrap();
        });
        let warp_all = median_secs(iterations, || {
            warp.forward(&batch.person, &batch.cloth).unwrap();
        });
        let cpu0 = cpu_secs();
        let total = median_secs(iterations, || {
            model.forward(&batch).unwrap();
        });
        let cpu = (cpu_secs() - cpu0) / (iterations + 1) as f64;
        println!(
            "batch {b}: {:.3} s/batch, {:.1} ms/image ({:.1} CPU-ms/image) | fpn x2 {:.3} s, aflow {:.3} s, gen+rest {:.3} s | peak RSS {:.0} MiB",
            total,
            total / b as f64 * 1000.0,
            cpu / b as f64 * 1000.0,
            fpn,
            warp_all - fpn,
            total - warp_all,
            peak_rss_mib()
        );
    }
}

// ---- end to end through the CLI ----

#[test]
fn cli_tryon_matches_reference_images() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture_dir();
    let png = fx.join("png");
    for n in 0..6 {
        let out = dir.path().join(format!("out_{n}.png"));
        let arg = |p: PathBuf| p.display().to_string();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
            .args(["tryon", "--model", "dmvton", "--model-dir"])
            .arg(arg(fx.clone()))
            .args(["--person", &arg(png.join(format!("person_{n}.png")))])
            .args(["--cloth", &arg(png.join(format!("cloth_{n}.png")))])
            .args(["--cloth-mask", &arg(png.join(format!("mask_{n}.png")))])
            .args(["--output", &arg(out.clone())])
            .output()
            .expect("run virtualfit");
        assert!(
            status.status.success(),
            "pair {n}: virtualfit tryon failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let got = image::open(&out).unwrap().to_rgb8();
        let want = image::open(png.join(format!("tryon_{n}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(got.dimensions(), want.dimensions(), "pair {n}: size");
        let total = want.as_raw().len();
        let within = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a.abs_diff(**b) <= 1)
            .count();
        let share = within as f64 / total as f64;
        println!("cli pair {n}: {:.4}% within 1 level", share * 100.0);
        assert!(
            share >= 0.999,
            "pair {n}: only {:.4}% within one level",
            share * 100.0
        );
    }
}
