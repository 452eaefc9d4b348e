//! CatVTON parity with the official pipeline (fixtures in `tests/fixtures/catvton`, made by
//! `scripts/fixtures/catvton.py`), with DDIM and with DPM-Solver++ 2M or UniPC in its place, with
//! DeepCache as `DeepCacheSDHelper` runs it, batch independence, the samplers' timesteps against diffusers', the PIL-like resizing, and the
//! loader's errors. Run with `--nocapture` to see the error figures.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, IndexOp, Tensor};
use virtualfit::models::catvton::scheduler::UniPcMemory;
use virtualfit::models::catvton::{
    preprocess, CatVton, DeepCache, DiffusionInput, DpmSolver, Noise, Sample, SamplingParams,
    SchedulerKind, UnetCall, UniPc,
};
use virtualfit::models::ModelError;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/catvton")
}

fn model_dir() -> PathBuf {
    fixture_dir().join("model")
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

fn model() -> &'static CatVton {
    static MODEL: OnceLock<CatVton> = OnceLock::new();
    MODEL.get_or_init(|| {
        CatVton::load(&model_dir(), DType::F32, &Device::Cpu).expect("load fixture model")
    })
}

/// ‖out − ref‖ / ‖ref‖, in f64 (NaN when `out` holds a NaN).
fn rel_l2(out: &Tensor, reference: &Tensor) -> f64 {
    let (rel, _, nan) = virtualfit::gpu_check::compare(out, reference).expect("same shape");
    if nan {
        f64::NAN
    } else {
        rel
    }
}

const TOLERANCE: f64 = 1e-4;

fn check(what: &str, out: &Tensor, reference: &Tensor) {
    let e = rel_l2(out, reference);
    println!("{what}: relative L2 {e:.2e}");
    assert!(
        e <= TOLERANCE,
        "{what}: relative L2 {e:.3e} > {TOLERANCE:e}"
    );
}

/// The recorded run `run` (`p0`, `p1`, `g1`): its inputs and its noise, in draw order.
fn recorded(run: &str) -> (DiffusionInput, Noise) {
    let r = |name: &str| reference(&format!("{run}.{name}")).clone();
    let timesteps: Vec<i64> = r("timesteps").to_vec1().unwrap();
    let guidance = r("guidance")
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0];
    let mask = r("mask");
    let (h, w) = mask.dims2().unwrap();
    let input = DiffusionInput {
        person: r("person"),
        cloth: r("cloth"),
        mask: mask.reshape((h, w, 1)).unwrap(),
        params: SamplingParams {
            steps: timesteps.len(),
            scheduler: SchedulerKind::Ddim,
            guidance,
            seed: 0,
            cache: DeepCache::OFF,
        },
    };
    let mut noise = VecDeque::from([r("noise.vae_person"), r("noise.vae_cloth"), r("noise.init")]);
    let steps = r("noise.step");
    for i in 0..timesteps.len() {
        noise.push_back(steps.get(i).unwrap());
    }
    (input, Noise::Given(noise))
}

fn run_parity(run: &str) {
    let m = model();
    let r = |name: &str| reference(&format!("{run}.{name}"));
    let (input, noise) = recorded(run);
    let expected_t: Vec<i64> = r("timesteps").to_vec1().unwrap();
    let t: Vec<i64> = m
        .scheduler()
        .timesteps(input.params.steps)
        .into_iter()
        .map(|t| t as i64)
        .collect();
    assert_eq!(t, expected_t, "{run}: DDIM timesteps");

    let mut sample: Sample = m.begin(&input, noise).expect("begin");
    check(
        &format!("{run} masked latent"),
        &sample.masked_latent,
        r("masked_latent"),
    );
    check(
        &format!("{run} garment latent"),
        &sample.cloth_latent,
        r("cloth_latent"),
    );
    for i in 0..expected_t.len() {
        m.step(&mut [&mut sample]).expect("step");
        let out = sample.last_model_output.clone().expect("model output");
        check(
            &format!("{run} step {i} UNet output"),
            &out,
            &r("unet_out").get(i).unwrap(),
        );
        let eps = sample.last_noise_pred.clone().expect("noise prediction");
        check(
            &format!("{run} step {i} guided noise"),
            &eps,
            &r("noise_pred").get(i).unwrap(),
        );
        check(
            &format!("{run} step {i} latents"),
            sample.latents(),
            &r("latents").get(i).unwrap(),
        );
    }
    assert!(sample.is_done());
    check(
        &format!("{run} image"),
        &m.decode(&sample).expect("decode"),
        r("image"),
    );
    let bytes = m.finish(&sample).expect("finish");
    let (off, n) = u8_off(&bytes, r("image_u8"));
    println!("{run}: {off} of {n} 8-bit values differ by more than 1");
    assert!(
        off as f64 <= n as f64 * 1e-3,
        "{run}: {off} values differ by more than one level"
    );
}

#[test]
fn the_first_pair_matches_the_official_pipeline_at_every_stage() {
    run_parity("p0");
}

#[test]
fn the_second_pair_matches_the_official_pipeline_at_every_stage() {
    run_parity("p1");
}

#[test]
fn without_guidance_a_single_row_matches_the_official_pipeline() {
    run_parity("g1");
}

#[test]
fn the_vae_posterior_and_the_unet_alone_match() {
    let m = model();
    let (input, _) = recorded("p0");
    // The masked person as the reference computes it.
    let person = input
        .person
        .permute((2, 0, 1))
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let person = ((person.to_dtype(DType::F32).unwrap() / 127.5).unwrap() - 1.0).unwrap();
    let mask = input.mask.permute((2, 0, 1)).unwrap().unsqueeze(0).unwrap();
    let keep = (mask.to_dtype(DType::F32).unwrap() / 255.0)
        .unwrap()
        .lt(0.5)
        .unwrap();
    let masked = person
        .broadcast_mul(&keep.to_dtype(DType::F32).unwrap())
        .unwrap();
    let posterior = m.vae().encode(&masked).expect("encode");
    check("VAE mean", &posterior.mean, reference("p0.vae.person_mean"));
    check("VAE std", &posterior.std, reference("p0.vae.person_std"));

    let unet_input = reference("p0.unet_input");
    let rows = unet_input.dim(0).unwrap();
    let t = reference("p0.timesteps").to_vec1::<i64>().unwrap()[0] as f64;
    let out = m.unet().forward(unet_input, &vec![t; rows]).expect("unet");
    check("UNet alone", &out, &reference("p0.unet_out").i(0).unwrap());
}

/// Samples `input` with its seed: alone, or (with `companion`) after the companion has taken
/// `head_start` steps, the two then sharing every UNet call until each is done.
fn sample_with(input: &DiffusionInput, companion: Option<(&DiffusionInput, usize)>) -> Tensor {
    let m = model();
    let mut other = companion.map(|(c, head_start)| {
        let mut s = m
            .begin(c, Noise::seeded(c.params.seed))
            .expect("begin companion");
        for _ in 0..head_start {
            m.step(&mut [&mut s]).expect("companion step");
        }
        s
    });
    let mut sample = m
        .begin(input, Noise::seeded(input.params.seed))
        .expect("begin");
    while !sample.is_done() {
        match other.as_mut().filter(|o| !o.is_done()) {
            Some(o) => m.step(&mut [o, &mut sample]).expect("shared step"),
            None => m.step(&mut [&mut sample]).expect("step"),
        }
    }
    m.decode(&sample).expect("decode")
}

#[test]
fn a_request_gives_the_same_image_alone_and_inside_a_batch_at_other_steps() {
    let (mut a, _) = recorded("p0");
    a.params = SamplingParams {
        steps: 4,
        scheduler: SchedulerKind::Ddim,
        guidance: 2.5,
        seed: 11,
        cache: DeepCache::OFF,
    };
    let (mut b, _) = recorded("p1");
    b.params = SamplingParams {
        steps: 6,
        scheduler: SchedulerKind::Ddim,
        guidance: 1.0,
        seed: 12,
        cache: DeepCache::OFF,
    };
    let alone = sample_with(&a, None);
    for head_start in [0, 2, 5] {
        let batched = sample_with(&a, Some((&b, head_start)));
        let diff = (&batched - &alone)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        println!("companion {head_start} steps ahead: max difference {diff:.2e}");
        assert!(diff < 1e-4, "batching changed the image by {diff}");
    }
    // A different seed gives a different image: the comparison above can fail.
    a.params.seed = 99;
    let other = sample_with(&a, None);
    let diff = (&other - &alone).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() > 1e-2);
}

/// 8-bit images as f64 differences from the reference: mean and largest absolute difference.
fn u8_diff(ours: &image::RgbImage, theirs: &Tensor) -> (f64, u8) {
    let theirs: Vec<u8> = theirs.flatten_all().unwrap().to_vec1().unwrap();
    let ours = ours.as_raw();
    assert_eq!(ours.len(), theirs.len(), "size");
    let diffs: Vec<u8> = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let mean = diffs.iter().map(|d| *d as f64).sum::<f64>() / diffs.len() as f64;
    (mean, diffs.iter().copied().max().unwrap_or(0))
}

fn rgb(t: &Tensor) -> image::RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    image::RgbImage::from_raw(
        w as u32,
        h as u32,
        t.flatten_all().unwrap().to_vec1().unwrap(),
    )
    .unwrap()
}

#[test]
fn resize_crop_and_padding_follow_pil_within_rounding() {
    let person = rgb(reference("resize.person_in"));
    let ours = preprocess::resize_and_crop(&person, 96, 128);
    let (mean, max) = u8_diff(&ours, reference("resize.person_out"));
    println!("resize_and_crop: mean {mean:.3}, max {max}");
    assert!(mean < 1.0 && max <= 16, "crop: mean {mean}, max {max}");

    let cloth = rgb(reference("resize.cloth_in"));
    let ours = preprocess::resize_and_padding(&cloth, 96, 128);
    let (mean, max) = u8_diff(&ours, reference("resize.cloth_out"));
    println!("resize_and_padding: mean {mean:.3}, max {max}");
    assert!(mean < 1.0 && max <= 16, "padding: mean {mean}, max {max}");
}

// ---- Loader errors -------------------------------------------------------------------------

/// A copy of the fixture model folder to break.
fn model_copy(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("virtualfit-catvton-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&model_dir(), &dir);
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn load_error(dir: &Path) -> String {
    match CatVton::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e @ ModelError::Checkpoint { .. }) => e.to_string(),
        Err(e) => panic!("not a checkpoint error: {e}"),
    }
}

fn rewrite_without(path: &Path, key: &str) {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    assert!(
        tensors.remove(key).is_some(),
        "{key} not in {}",
        path.display()
    );
    candle_core::safetensors::save(&tensors, path).unwrap();
}

#[test]
fn a_truncated_file_names_the_file() {
    let dir = model_copy("truncated");
    let unet = dir.join("base/unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("base/unet/diffusion_pytorch_model.safetensors"),
        "{e}"
    );
    assert!(e.contains("cannot read safetensors"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_tensor_names_the_file_and_the_tensor() {
    let dir = model_copy("missing");
    rewrite_without(&dir.join("attention/model.safetensors"), "8.to_k.weight");
    let e = load_error(&dir);
    assert!(
        e.contains("attention/model.safetensors") && e.contains("8.to_k.weight"),
        "{e}"
    );

    let dir2 = model_copy("missing-unet");
    rewrite_without(
        &dir2.join("base/unet/diffusion_pytorch_model.safetensors"),
        "conv_in.weight",
    );
    let e = load_error(&dir2);
    assert!(
        e.contains("base/unet/diffusion_pytorch_model.safetensors"),
        "{e}"
    );
    assert!(e.contains("conv_in.weight"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn a_mis_shaped_attention_tensor_names_the_file_and_the_tensor() {
    let dir = model_copy("shape");
    let path = dir.join("attention/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let bias = tensors.get("0.to_out.0.bias").unwrap();
    let longer = Tensor::zeros(bias.dim(0).unwrap() + 1, DType::F32, &Device::Cpu).unwrap();
    tensors.insert("0.to_out.0.bias".into(), longer);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("attention/model.safetensors") && e.contains("0.to_out.0.bias"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn swapped_vae_and_unet_folders_are_named() {
    let dir = model_copy("swapped");
    let unet = dir.join("base/unet");
    let vae = dir.join("vae");
    let tmp = dir.join("tmp");
    std::fs::rename(&unet, &tmp).unwrap();
    std::fs::rename(&vae, &unet).unwrap();
    std::fs::rename(&tmp, &vae).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("base/unet/config.json"), "{e}");
    assert!(e.contains("AutoencoderKL") && e.contains("swapped"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_folder_or_file_is_named() {
    let e = load_error(Path::new("/nonexistent/catvton"));
    assert!(e.contains("/nonexistent/catvton"), "{e}");
    let dir = model_copy("no-attention");
    std::fs::remove_file(dir.join("attention/model.safetensors")).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("attention/model.safetensors") && e.contains("not found"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_half_precision_unet_file_is_read() {
    let dir = model_copy("fp16");
    let unet = dir.join("base/unet");
    let full = unet.join("diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&full, &Device::Cpu).unwrap();
    let half: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&half, unet.join("diffusion_pytorch_model.fp16.safetensors"))
        .unwrap();
    std::fs::remove_file(&full).unwrap();
    let m = CatVton::load(&dir, DType::F32, &Device::Cpu).expect("loads the .fp16 file");
    let t = reference("p0.timesteps").to_vec1::<i64>().unwrap()[0] as f64;
    let out = m
        .unet()
        .forward(reference("p0.unet_input"), &[t, t])
        .expect("unet");
    // Weights rounded to f16: close to the f32 reference, not equal.
    let e = rel_l2(&out, &reference("p0.unet_out").i(0).unwrap());
    println!("UNet from f16 weights: relative L2 {e:.2e}");
    assert!(e < 1e-2, "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_committed_full_size_configs_describe_the_published_networks() {
    use virtualfit::models::catvton::config::{parse, SchedulerConfig, UNetConfig, VaeConfig};
    use virtualfit::models::catvton::FULL_SIZE_CONFIGS;
    // Parsed as `CatVton::random` parses them, class names checked.
    let unet: UNetConfig = parse(FULL_SIZE_CONFIGS[0], "UNet2DConditionModel").expect("UNet");
    let vae: VaeConfig = parse(FULL_SIZE_CONFIGS[1], "AutoencoderKL").expect("VAE");
    let scheduler: SchedulerConfig = parse(FULL_SIZE_CONFIGS[2], "").expect("scheduler");
    unet.validate().expect("the UNet config is supported");
    vae.validate().expect("the VAE config is supported");
    scheduler
        .validate()
        .expect("the scheduler config is supported");
    // SD 1.5 inpainting: 9 input channels (latents, mask, masked image), 4 out.
    assert_eq!((unet.in_channels, unet.out_channels), (9, 4));
    assert_eq!(unet.block_out_channels, [320, 640, 1280, 1280]);
    assert_eq!(unet.cross_attention_dim, 768);
    // sd-vae-ft-mse.
    assert_eq!(vae.latent_channels, 4);
    assert_eq!(vae.block_out_channels, [128, 256, 512, 512]);
    assert!((vae.scaling_factor - 0.18215).abs() < 1e-12);
    // The base model's schedule, read into DDIM.
    assert_eq!(scheduler.num_train_timesteps, 1000);
    assert_eq!(scheduler.beta_schedule, "scaled_linear");
    assert_eq!(scheduler.steps_offset, 1);
}

#[test]
fn half_precision_networks_follow_the_reference_closely() {
    // `--dtype f16`: the networks compute in half precision while the scheduler and the noise
    // stay f32. The whole sampling of the first pair lands near the f32 reference. (bf16, the
    // GPU overlay's setting, has no CPU matrix product; see the next test.)
    for (dtype, limit) in [(DType::F16, 1e-2)] {
        let m = CatVton::load(&model_dir(), dtype, &Device::Cpu).expect("loads in half precision");
        let (input, noise) = recorded("p0");
        let mut sample = m.begin(&input, noise).expect("begin");
        while !sample.is_done() {
            m.step(&mut [&mut sample]).expect("step");
        }
        assert_eq!(sample.latents().dtype(), DType::F32, "{dtype:?}");
        let image = m.decode(&sample).expect("decode");
        let e = rel_l2(&image, reference("p0.image"));
        println!("{dtype:?}: final image relative L2 {e:.2e}");
        assert!(e.is_finite() && e < limit, "{dtype:?}: {e}");
    }
}

#[test]
fn bf16_is_refused_on_the_cpu_at_load_time() {
    let e = match CatVton::load(&model_dir(), DType::BF16, &Device::Cpu) {
        Ok(_) => panic!("bf16 on the CPU loads"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("--dtype bf16") && e.contains("CPU") && e.contains("f16"),
        "{e}"
    );
}

/// diffusers' timesteps for `scheduler` and `spacing`, entry i for i + 1 steps, from
/// `scripts/fixtures/scheduler_timesteps.py`.
fn diffusers_timesteps(scheduler: &str, spacing: &str) -> Vec<Vec<i64>> {
    static TABLE: OnceLock<serde_json::Value> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let path = fixture_dir().join("scheduler_timesteps.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).expect("the timestep fixture parses")
    });
    serde_json::from_value(table["timesteps"][scheduler][spacing].clone())
        .unwrap_or_else(|e| panic!("no timesteps for {scheduler} {spacing}: {e}"))
}

#[test]
fn ddim_timesteps_match_diffusers_for_every_spacing_from_1_to_200_steps() {
    use virtualfit::models::catvton::config::{parse, SchedulerConfig};
    use virtualfit::models::catvton::FULL_SIZE_CONFIGS;
    for spacing in ["leading", "trailing", "linspace"] {
        let mut config: SchedulerConfig = parse(FULL_SIZE_CONFIGS[2], "").expect("scheduler");
        config.timestep_spacing = Some(spacing.into());
        config.validate().expect("the spacing is supported");
        let ddim = virtualfit::models::catvton::Ddim::new(&config);
        let expected = diffusers_timesteps("ddim", spacing);
        assert_eq!(expected.len(), 200, "{spacing}");
        let mut appended = Vec::new();
        for (i, theirs) in expected.iter().enumerate() {
            let steps = i + 1;
            let ours: Vec<i64> = ddim.timesteps(steps).iter().map(|&t| t as i64).collect();
            assert_eq!(ours.len(), steps, "{spacing}, {steps} steps");
            // numpy's `arange` makes one value too many at a few trailing step counts; diffusers
            // then ends on timestep −1. We stop at the step count.
            if theirs.len() == steps + 1 && theirs.last() == Some(&-1) {
                appended.push(steps);
                assert_eq!(ours[..], theirs[..steps], "{spacing}, {steps} steps");
            } else {
                assert_eq!(&ours, theirs, "{spacing}, {steps} steps");
            }
        }
        let expected_appended: &[usize] = if spacing == "trailing" {
            &[61, 103, 121, 122]
        } else {
            &[]
        };
        assert_eq!(appended, expected_appended, "{spacing}");
    }
}

#[test]
fn solver_timesteps_match_diffusers_for_every_spacing_from_1_to_200_steps() {
    use virtualfit::models::catvton::config::{parse, SchedulerConfig};
    use virtualfit::models::catvton::FULL_SIZE_CONFIGS;
    // The config names no spacing: DPM-Solver's own default, "linspace", as diffusers'
    // `from_config` gives it.
    let config: SchedulerConfig = parse(FULL_SIZE_CONFIGS[2], "").expect("scheduler");
    assert_eq!(config.timestep_spacing, None);
    let default = DpmSolver::new(&config);
    for spacing in [None, Some("leading"), Some("trailing"), Some("linspace")] {
        let mut config = config.clone();
        config.timestep_spacing = spacing.map(Into::into);
        config.validate().expect("the spacing is supported");
        let dpm = DpmSolver::new(&config);
        let expected = diffusers_timesteps("dpmsolver_multistep", spacing.unwrap_or("linspace"));
        assert_eq!(expected.len(), 200, "{spacing:?}");
        // UniPC's are the same, and so are ours (`CatVton::timesteps` gives both the table's).
        let unipc = diffusers_timesteps("unipc_multistep", spacing.unwrap_or("linspace"));
        assert_eq!(unipc, expected, "{spacing:?}");
        let mut appended = Vec::new();
        for (i, theirs) in expected.iter().enumerate() {
            let steps = i + 1;
            let ours: Vec<i64> = dpm.timesteps(steps).iter().map(|&t| t as i64).collect();
            assert_eq!(ours.len(), steps, "{spacing:?}, {steps} steps");
            if spacing.is_none() {
                assert_eq!(
                    ours,
                    default
                        .timesteps(steps)
                        .iter()
                        .map(|&t| t as i64)
                        .collect::<Vec<_>>()
                );
            }
            // As with DDIM, numpy's `arange` makes one trailing value too many at a few step
            // counts (a timestep of −1); we stop at the step count.
            if theirs.len() == steps + 1 && theirs.last() == Some(&-1) {
                appended.push(steps);
                assert_eq!(ours[..], theirs[..steps], "{spacing:?}, {steps} steps");
            } else {
                assert_eq!(&ours, theirs, "{spacing:?}, {steps} steps");
            }
        }
        let expected_appended: &[usize] = if spacing == Some("trailing") {
            &[61, 103, 121, 122]
        } else {
            &[]
        };
        assert_eq!(appended, expected_appended, "{spacing:?}");
    }
}

// ---- The multistep solvers against the official pipeline with diffusers' classes ----------

/// The solver fixtures (`scripts/fixtures/catvton.py --solvers`): pair `p0` sampled by the
/// official pipeline with its scheduler swapped for diffusers' solvers.
fn solvers() -> &'static HashMap<String, Tensor> {
    static SOLVERS: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    SOLVERS.get_or_init(|| crate::common::gz_tensors(&fixture_dir().join("solvers.safetensors.gz")))
}

fn solver_reference(name: &str) -> &'static Tensor {
    solvers()
        .get(name)
        .unwrap_or_else(|| panic!("the solver fixture has no tensor {name}"))
}

/// Pair `p0` with its recorded VAE and initial noise, sampled by `scheduler` in `steps` steps.
fn recorded_with(scheduler: SchedulerKind, steps: usize) -> (DiffusionInput, Noise) {
    let (mut input, _) = recorded("p0");
    input.params.scheduler = scheduler;
    input.params.steps = steps;
    let r = |name: &str| reference(&format!("p0.{name}")).clone();
    let noise = VecDeque::from([r("noise.vae_person"), r("noise.vae_cloth"), r("noise.init")]);
    (input, Noise::Given(noise))
}

/// The solvers of the fixture: our kind and the fixture's name.
const SOLVER_KINDS: [(SchedulerKind, &str); 2] = [
    (SchedulerKind::DpmPp2m, "dpmpp_2m"),
    (SchedulerKind::UniPc, "unipc"),
];

#[test]
fn solver_steps_alone_match_diffusers() {
    // Each recorded step replayed from diffusers' own latents and guided noise: the solver's
    // update alone (DPM-Solver++: first order at the first and the last step, second order
    // between; UniPC: its corrector from the second step on, then its predictor).
    for (kind, name) in SOLVER_KINDS {
        let r = |what: &str| solver_reference(&format!("{name}.10.{what}"));
        let timesteps: Vec<usize> = r("timesteps")
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|t| t as usize)
            .collect();
        let m = model();
        assert_eq!(m.timesteps(kind, 10), timesteps, "{name}");
        let sigmas = m.dpm_solver().sigmas(&timesteps);
        let theirs: Vec<f32> = r("sigmas").to_vec1().unwrap();
        assert_eq!(sigmas.len(), theirs.len());
        for (ours, theirs) in sigmas.iter().zip(&theirs) {
            assert!(
                (ours - theirs).abs() <= 1e-6 * theirs.abs(),
                "{name}: σ {ours} against {theirs}"
            );
        }
        let init = reference("p0.noise.init");
        let mut previous_x0: Option<Tensor> = None;
        let mut memory = UniPcMemory::default();
        for i in 0..timesteps.len() {
            let x = if i == 0 {
                init.clone()
            } else {
                r("latents").get(i - 1).unwrap()
            };
            let eps = r("noise_pred").get(i).unwrap();
            let next = match kind {
                SchedulerKind::UniPc => {
                    UniPc::step(&sigmas, i, &x, &eps, &mut memory).expect("step")
                }
                _ => {
                    let (next, x0) =
                        DpmSolver::step(&sigmas, i, &x, &eps, previous_x0.as_ref()).expect("step");
                    previous_x0 = Some(x0);
                    next
                }
            };
            let e = rel_l2(&next, &r("latents").get(i).unwrap());
            println!("{name} step {i} alone: relative L2 {e:.2e}");
            assert!(e <= 1e-6, "{name} step {i}: {e:.3e}");
        }
    }
}

#[test]
fn solver_samplings_match_the_official_pipeline_at_10_20_and_25_steps() {
    let m = model();
    for (kind, name) in SOLVER_KINDS {
        for steps in [10, 20, 25] {
            let r = |what: &str| solver_reference(&format!("{name}.{steps}.{what}"));
            let (input, noise) = recorded_with(kind, steps);
            let mut sample = m.begin(&input, noise).expect("begin");
            let expected_t: Vec<i64> = r("timesteps").to_vec1().unwrap();
            let ours_t: Vec<i64> = sample.timesteps().iter().map(|&t| t as i64).collect();
            assert_eq!(ours_t, expected_t, "{name}, {steps} steps: timesteps");
            let mut stepped = 0;
            while !sample.is_done() {
                m.step(&mut [&mut sample]).expect("step");
                if steps == 10 {
                    check(
                        &format!("{name} {steps} steps, step {stepped} latents"),
                        sample.latents(),
                        &r("latents").get(stepped).unwrap(),
                    );
                }
                stepped += 1;
            }
            assert_eq!(stepped, steps);
            check(
                &format!("{name} {steps} steps, final latents"),
                sample.latents(),
                r("final_latents"),
            );
            let (off, n) = u8_off(&m.finish(&sample).unwrap(), r("image_u8"));
            println!("{name} {steps} steps: {off} of {n} 8-bit values off by more than 1");
            assert!(
                off as f64 <= n as f64 * 1e-3,
                "{name}, {steps} steps: {off} values"
            );
        }
    }
}

#[test]
fn requests_on_different_samplers_batch_together_without_changing_each_other() {
    // A multistep-solver request and a DDIM one share UNet calls at different steps: each
    // gives the image it gives alone (the solver's memory stays with its request).
    let max_diff = |x: &Tensor, y: &Tensor| -> f32 {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (mut b, _) = recorded("p1");
    b.params = SamplingParams {
        steps: 7,
        scheduler: SchedulerKind::Ddim,
        guidance: 1.0,
        seed: 22,
        cache: DeepCache::OFF,
    };
    let ddim_alone = sample_with(&b, None);
    for (kind, name) in SOLVER_KINDS {
        let (mut a, _) = recorded("p0");
        a.params = SamplingParams {
            steps: 5,
            scheduler: kind,
            guidance: 2.5,
            seed: 21,
            cache: DeepCache::OFF,
        };
        let solver_alone = sample_with(&a, None);
        for head_start in [0, 2, 6] {
            let d = max_diff(&sample_with(&a, Some((&b, head_start))), &solver_alone);
            println!("{name} beside DDIM {head_start} steps ahead: max difference {d:.2e}");
            assert!(d < 1e-4, "batching changed the {name} image by {d}");
            let d = max_diff(&sample_with(&b, Some((&a, head_start.min(4)))), &ddim_alone);
            println!("DDIM beside {name}: max difference {d:.2e}");
            assert!(d < 1e-4, "batching changed the DDIM image by {d}");
        }
        // The samplers differ: the same seed and steps give another image with DDIM.
        let mut a_ddim = a.clone();
        a_ddim.params.scheduler = SchedulerKind::Ddim;
        assert!(max_diff(&sample_with(&a_ddim, None), &solver_alone) > 1e-2);
    }
}

// ---- DeepCache against `DeepCacheSDHelper` on the official pipeline ------------------------

/// The DeepCache fixtures (`scripts/fixtures/catvton.py --deepcache`).
fn deepcache() -> &'static HashMap<String, Tensor> {
    static DEEPCACHE: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    DEEPCACHE
        .get_or_init(|| crate::common::gz_tensors(&fixture_dir().join("deepcache.safetensors.gz")))
}

fn deepcache_reference(name: &str) -> &'static Tensor {
    deepcache()
        .get(&format!("deepcache.{name}"))
        .unwrap_or_else(|| panic!("the DeepCache fixture has no tensor {name}"))
}

/// Pair `p0` with its recorded VAE and initial noise and the fixture's step noise: DDIM, 10
/// steps, with `cache`.
fn recorded_deepcache(cache: DeepCache) -> (DiffusionInput, Noise) {
    let (mut input, _) = recorded("p0");
    input.params.steps = 10;
    input.params.cache = cache;
    let r = |name: &str| reference(&format!("p0.{name}")).clone();
    let mut noise = VecDeque::from([r("noise.vae_person"), r("noise.vae_cloth"), r("noise.init")]);
    let steps = deepcache_reference("noise.step");
    for i in 0..10 {
        noise.push_back(steps.get(i).unwrap());
    }
    (input, Noise::Given(noise))
}

/// 8-bit values of `ours` more than one level away from `theirs`, and their count.
fn u8_off(ours: &Tensor, theirs: &Tensor) -> (usize, usize) {
    let ours: Vec<u8> = ours.flatten_all().unwrap().to_vec1().unwrap();
    let theirs: Vec<u8> = theirs.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ours.len(), theirs.len());
    let off = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a.abs_diff(**b) > 1)
        .count();
    (off, ours.len())
}

#[test]
fn deepcache_matches_the_reference_helper_at_intervals_2_and_3_on_two_branches() {
    let m = model();
    let uncached = deepcache_reference("none.final_latents");
    for (key, cache) in [
        ("none", DeepCache::OFF),
        (
            "i2.b0",
            DeepCache {
                interval: 2,
                branch: 0,
            },
        ),
        (
            "i2.b4",
            DeepCache {
                interval: 2,
                branch: 4,
            },
        ),
        (
            "i3.b0",
            DeepCache {
                interval: 3,
                branch: 0,
            },
        ),
        (
            "i3.b4",
            DeepCache {
                interval: 3,
                branch: 4,
            },
        ),
    ] {
        let r = |what: &str| deepcache_reference(&format!("{key}.{what}"));
        let (input, noise) = recorded_deepcache(cache);
        let mut sample = m.begin(&input, noise).expect("begin");
        let expected_t: Vec<i64> = deepcache_reference("timesteps").to_vec1().unwrap();
        let ours_t: Vec<i64> = sample.timesteps().iter().map(|&t| t as i64).collect();
        assert_eq!(ours_t, expected_t, "{key}: timesteps");
        let mut full = Vec::new();
        let mut step = 0;
        while !sample.is_done() {
            if sample.unet_call() == UnetCall::Full {
                full.push(step);
            }
            m.step(&mut [&mut sample]).expect("step");
            step += 1;
        }
        let expected_full: Vec<usize> = (0..10).step_by(cache.interval).collect();
        assert_eq!(full, expected_full, "{key}: full steps");
        check(
            &format!("DeepCache {key}, final latents"),
            sample.latents(),
            r("final_latents"),
        );
        let (off, n) = u8_off(&m.finish(&sample).unwrap(), r("image_u8"));
        println!("DeepCache {key}: {off} of {n} 8-bit values off by more than 1");
        assert!(off as f64 <= n as f64 * 1e-3, "{key}: {off} values");
        if cache.is_on() {
            // Caching moves the result far past the tolerance: the check above can fail.
            let moved = rel_l2(r("final_latents"), uncached);
            println!("DeepCache {key}: {moved:.3} from the uncached latents");
            assert!(moved > 1e-2, "{key}: {moved}");
        }
    }
}

#[test]
fn cached_requests_batch_beside_others_without_changing_each_other() {
    // A request caching every 3 steps, one caching every 2 steps on another branch, and one
    // without caching share the running set at different steps: each gives its image alone.
    let max_diff = |x: &Tensor, y: &Tensor| -> f32 {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let input = |run: &str, steps, guidance, seed, cache| {
        let (mut i, _) = recorded(run);
        i.params = SamplingParams {
            steps,
            scheduler: SchedulerKind::Ddim,
            guidance,
            seed,
            cache,
        };
        i
    };
    let every3 = input(
        "p0",
        7,
        2.5,
        31,
        DeepCache {
            interval: 3,
            branch: 0,
        },
    );
    let every2 = input(
        "p1",
        6,
        1.0,
        32,
        DeepCache {
            interval: 2,
            branch: 0,
        },
    );
    let every2_deeper = input(
        "p0",
        6,
        2.5,
        34,
        DeepCache {
            interval: 2,
            branch: 4,
        },
    );
    let plain = input("p1", 5, 2.5, 33, DeepCache::OFF);
    let inputs = [&every3, &every2, &every2_deeper, &plain];
    let alone: Vec<Tensor> = inputs.iter().map(|i| sample_with(i, None)).collect();
    // Beside another interval on the same branch (their shallow passes meet in one call at
    // step 4), another branch, and no caching; each way round.
    for (a, b) in [(0, 1), (1, 0), (0, 2), (2, 0), (0, 3), (3, 0), (2, 3)] {
        for head_start in [0, 1, 4] {
            let d = max_diff(
                &sample_with(inputs[a], Some((inputs[b], head_start))),
                &alone[a],
            );
            println!("request {a} beside {b}, {head_start} steps ahead: max difference {d:.2e}");
            assert!(d < 1e-4, "batching changed request {a}'s image by {d}");
        }
    }
    // Caching changes the image: the same request without it differs.
    let mut uncached = every3.clone();
    uncached.params.cache = DeepCache::OFF;
    assert!(max_diff(&sample_with(&uncached, None), &alone[0]) > 1e-2);
}

#[test]
fn full_and_shallow_passes_and_branches_step_in_separate_groups() {
    use virtualfit::models::{StepGroup, StepState};
    let m = model();
    let begin = |cache| {
        let (mut input, _) = recorded("p0");
        input.params.steps = 4;
        input.params.cache = cache;
        m.begin(&input, Noise::seeded(5)).expect("begin")
    };
    let mut plain = begin(DeepCache::OFF);
    let mut shallow = begin(DeepCache {
        interval: 2,
        branch: 0,
    });
    let mut deeper = begin(DeepCache {
        interval: 2,
        branch: 4,
    });
    let mut beyond = begin(DeepCache {
        interval: 3,
        branch: 11,
    });
    let groups = |samples: [&Sample; 4]| -> Vec<StepGroup> {
        samples.iter().map(|s| StepState::group(*s)).collect()
    };
    let size = plain.latent_size();
    let full = StepGroup {
        size,
        variant: None,
    };
    // Step 0 is a full pass for everyone: one call.
    assert_eq!(groups([&plain, &shallow, &deeper, &beyond]), vec![full; 4]);
    m.step(&mut [&mut plain, &mut shallow, &mut deeper, &mut beyond])
        .expect("step");
    // Step 1: shallow passes, each by where it splits the UNet (3 levels, one resnet each:
    // branch 11 lies past the deepest level and caches the mid block only).
    let variants: Vec<_> = groups([&plain, &shallow, &deeper, &beyond])
        .into_iter()
        .map(|g| g.variant)
        .collect();
    assert_eq!(
        variants,
        vec![None, Some((0, 0)), Some((1, 1)), Some((2, 1))]
    );
    m.step(&mut [&mut plain, &mut shallow, &mut deeper, &mut beyond])
        .expect("step");
    // Step 2: full again for interval 2, shallow for interval 3.
    let variants: Vec<_> = groups([&plain, &shallow, &deeper, &beyond])
        .into_iter()
        .map(|g| g.variant)
        .collect();
    assert_eq!(variants, vec![None, None, None, Some((2, 1))]);
}

/// max |a − b| / max |b|.
fn max_relative(out: &Tensor, reference: &Tensor) -> f32 {
    let diff = (out - reference).unwrap().abs().unwrap().max_all().unwrap();
    let scale = reference.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
}

#[test]
fn fused_attention_matches_the_chunked_one_on_every_shape_the_networks_use() {
    use virtualfit::models::catvton::attention::{chunked_attention, MAX_SCORE_ELEMENTS_CPU};
    use virtualfit::models::catvton::fused_attention::fused_attention;
    let dev = Device::Cpu;
    // (groups, queries, keys, channels per head, query scale). The UNet's self-attention: 8
    // heads, tokens of the stacked 2·h/8 × w/8 latents at its four levels (the mid block is
    // the fourth), 40/80/160/160 channels per head; fewer groups on the large ones, since
    // every group is computed alike. The VAE's mid block: one head of 512 channels over one
    // image's latents (a slice of the queries at 1024×768). Then odd sizes across the blocks,
    // and sharp softmaxes whose maximum moves between key blocks.
    let shapes: &[(usize, usize, usize, usize, f64)] = &[
        // 512×384: latents 128×48.
        (2, 6144, 6144, 40, 1.0),
        (2, 1536, 1536, 80, 1.0),
        (4, 384, 384, 160, 1.0),
        (8, 96, 96, 160, 1.0),
        // 1024×768: latents 256×96.
        (1, 24_576, 24_576, 40, 1.0),
        (1, 6144, 6144, 80, 1.0),
        (2, 1536, 1536, 160, 1.0),
        (4, 384, 384, 160, 1.0),
        // The VAE at 512×384 and 1024×768.
        (1, 3072, 3072, 512, 1.0),
        (1, 200, 12_288, 512, 1.0),
        // Odd sizes.
        (1, 1, 1, 1, 1.0),
        (3, 37, 29, 8, 1.0),
        (2, 65, 257, 41, 1.0),
        (1, 129, 513, 3, 1.0),
        (5, 63, 255, 17, 1.0),
        (2, 100, 1000, 40, 6.0),
        (1, 70, 700, 7, 20.0),
    ];
    for &(groups, n_q, n_k, d, sharpness) in shapes {
        let q = (Tensor::randn(0f32, 1.0, (groups, n_q, d), &dev).unwrap() * sharpness).unwrap();
        let k = Tensor::randn(0f32, 1.0, (groups, n_k, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (groups, n_k, d), &dev).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let reference = chunked_attention(&q, &k, &v, scale, MAX_SCORE_ELEMENTS_CPU).unwrap();
        let fused = fused_attention(&q, &k, &v, scale).unwrap();
        assert_eq!(fused.dims(), reference.dims());
        let e = max_relative(&fused, &reference);
        println!("{groups}×{n_q}×{n_k}×{d} (sharpness {sharpness}): max relative {e:.2e}");
        assert!(e <= 1e-5, "{groups}×{n_q}×{n_k}×{d}: {e:.3e}");
    }
    // Mismatched shapes are refused, not read out of bounds.
    let q = Tensor::zeros((2, 4, 8), DType::F32, &dev).unwrap();
    let k = Tensor::zeros((2, 5, 8), DType::F32, &dev).unwrap();
    let short = Tensor::zeros((2, 4, 8), DType::F32, &dev).unwrap();
    assert!(fused_attention(&q, &k, &short, 1.0).is_err());
    assert!(fused_attention(&q, &k.narrow(2, 0, 4).unwrap(), &short, 1.0).is_err());
}
