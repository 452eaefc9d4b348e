//! Writes `person | garment | try-on` strips of the overlay model for the viton-demo pairs.
//! Usage: cargo run --release --example overlay_strips -- OUT_DIR
use std::path::Path;

use virtualfit::imaging;
use virtualfit::models::{self, TryOnBatch};

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "overlay-strips".into());
    std::fs::create_dir_all(&out_dir)?;
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let pairs = std::fs::read_to_string(demo.join("pairs.txt"))?;
    let mut sheet = image::RgbImage::new(576, 256 * 6);
    let model = models::load(
        "overlay",
        models::WeightSource::None,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )?
    .into_batch()?;
    for (i, line) in pairs.lines().enumerate() {
        let mut it = line.split_whitespace();
        let (Some(p), Some(c)) = (it.next(), it.next()) else {
            continue;
        };
        let (person_bytes, cloth_bytes) = (
            std::fs::read(demo.join("person").join(p))?,
            std::fs::read(demo.join("cloth").join(c))?,
        );
        let person = imaging::decode(&person_bytes, u64::MAX)?;
        let cloth = imaging::decode(&cloth_bytes, u64::MAX)?;
        let parts = virtualfit::pipeline::ImageParts {
            person: person_bytes.into(),
            cloth: cloth_bytes.into(),
            garment_mask: None,
            person_mask: None,
        };
        let family = models::family("overlay")?;
        let input =
            virtualfit::pipeline::prepare_now(family, &parts, Default::default(), u64::MAX)?;
        let batch = TryOnBatch::from_inputs(&[&input], &candle_core::Device::Cpu)?;
        let out = imaging::tensor_to_rgb(&models::forward_u8(model.as_ref(), &batch)?[0])?;
        let mut strip = image::RgbImage::new(576, 256);
        image::imageops::replace(&mut strip, &person, 0, 0);
        image::imageops::replace(&mut strip, &cloth, 192, 0);
        image::imageops::replace(&mut strip, &out, 384, 0);
        strip.save(Path::new(&out_dir).join(format!("{i}.png")))?;
        image::imageops::replace(&mut sheet, &strip, 0, 256 * i as i64);
    }
    sheet.save(Path::new(&out_dir).join("all.png"))?;
    Ok(())
}
