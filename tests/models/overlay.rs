//! The overlay baseline on the six sample pairs (assets/samples): the head stays as it was, the torso
//! changes.

use crate::common;

use candle_core::Device;
use common::{fixture, pairs};
use virtualfit::imaging;
use virtualfit::models::{self, ModelInput, TryOnBatch};
use virtualfit::pipeline::{self, ImageParts};

/// A sample pair's inputs, prepared by the pipeline as the server prepares them.
fn prepared(p: &str, c: &str) -> ModelInput {
    let parts = ImageParts {
        person: fixture(&format!("person/{p}")).into(),
        cloth: fixture(&format!("cloth/{c}")).into(),
        garment_mask: None,
        person_mask: None,
    };
    let family = models::family("overlay").expect("registered");
    pipeline::prepare_now(family, &parts, Default::default(), u64::MAX).expect("prepared")
}

#[test]
fn head_is_kept_and_torso_changes() {
    let model = models::load(
        "overlay",
        models::WeightSource::None,
        &Device::Cpu,
        candle_core::DType::F32,
    )
    .and_then(models::LoadedModel::into_batch)
    .expect("overlay loads");
    let mut inputs = Vec::new();
    let mut persons = Vec::new();
    for (p, c) in pairs() {
        let person = imaging::decode(&fixture(&format!("person/{p}")), u64::MAX).expect("person");
        inputs.push(prepared(&p, &c));
        persons.push(person);
    }
    let refs: Vec<&_> = inputs.iter().collect();
    let batch = TryOnBatch::from_inputs(&refs, &Device::Cpu).expect("batch");
    let out = models::forward_u8(model.as_ref(), &batch).expect("forward");
    assert_eq!(out.len(), 6);
    for (i, person) in persons.iter().enumerate() {
        let result = imaging::tensor_to_rgb(&out[i]).expect("image");
        let mean_diff = |rows: std::ops::Range<u32>, cols: std::ops::Range<u32>| {
            let mut sum = 0f64;
            let mut n = 0f64;
            for y in rows {
                for x in cols.clone() {
                    let (a, b) = (person.get_pixel(x, y), result.get_pixel(x, y));
                    for c in 0..3 {
                        sum += (a[c] as f64 - b[c] as f64).abs();
                        n += 1.0;
                    }
                }
            }
            sum / n
        };
        let head = mean_diff(0..40, 0..192);
        let torso = mean_diff(110..170, 64..128);
        println!("pair {i}: head change {head:.2} levels, torso change {torso:.2} levels");
        assert!(head < 0.5, "pair {i}: the head region changed by {head}");
        assert!(torso > 15.0, "pair {i}: the torso barely changed ({torso})");
    }
}

#[test]
fn batch_items_are_independent() {
    let model = models::load(
        "overlay",
        models::WeightSource::None,
        &Device::Cpu,
        candle_core::DType::F32,
    )
    .and_then(models::LoadedModel::into_batch)
    .expect("overlay loads");
    let prepare = prepared;
    let all = pairs();
    let a = prepare(&all[0].0, &all[0].1);
    let b = prepare(&all[1].0, &all[1].1);
    let alone = model
        .forward(&TryOnBatch::from_inputs(&[&b], &Device::Cpu).expect("batch"))
        .expect("forward");
    let together = model
        .forward(&TryOnBatch::from_inputs(&[&a, &b], &Device::Cpu).expect("batch"))
        .expect("forward");
    let diff = (alone.get(0).expect("x") - together.get(1).expect("y"))
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar");
    assert_eq!(diff, 0.0);
}
