//! arvis's decode and resampling against Pillow on the shared photos (see the fixture's script).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use arvis::preprocess::{Filter, resize_rgb};
use arvis::source::{DecodeLimits, load_image};
use sha2::Digest;

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/pillow_resize.json")).expect("fixture parses")
}

#[test]
fn resampling_matches_pillow_bit_for_bit_on_lossless_photos() {
    let fixture = fixture();
    let mut checked = 0;
    for (name, entry) in fixture["images"].as_object().expect("images") {
        if entry.get("letterbox_bilinear").is_none() {
            continue;
        }
        let img =
            load_image(&common::images_dir().join(name), DecodeLimits::default()).expect("decode");
        for (key, filter) in [
            ("letterbox_bilinear", Filter::Bilinear),
            ("clip_bicubic", Filter::Bicubic),
        ] {
            let size = &entry[key]["size"];
            let (w, h) = (
                size[0].as_u64().unwrap() as u32,
                size[1].as_u64().unwrap() as u32,
            );
            let out = resize_rgb(&img, w, h, filter);
            let sha: String = sha2::Sha256::digest(out.as_raw())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                sha,
                entry[key]["sha256"].as_str().unwrap(),
                "{name} {key} {w}x{h}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 8, "four PNGs, two filters each");
}

#[test]
fn decoding_agrees_with_pillow_on_every_photo() {
    let fixture = fixture();
    let images = fixture["images"].as_object().expect("images");
    assert_eq!(images.len(), 15);
    for (name, entry) in images {
        let img =
            load_image(&common::images_dir().join(name), DecodeLimits::default()).expect("decode");
        assert_eq!(
            [img.width() as u64, img.height() as u64],
            [
                entry["size"][0].as_u64().unwrap(),
                entry["size"][1].as_u64().unwrap()
            ],
            "{name}"
        );
        let mut sums = [0f64; 3];
        for p in img.pixels() {
            for (sum, &v) in sums.iter_mut().zip(&p.0) {
                *sum += f64::from(v);
            }
        }
        let n = f64::from(img.width() * img.height());
        for c in 0..3 {
            let ours = sums[c] / n;
            let pillow = entry["channel_means"][c].as_f64().unwrap();
            // Lossless formats match exactly; JPEG decoders differ by a fraction of a level on average.
            let tol = if name.ends_with(".png") { 1e-9 } else { 0.25 };
            assert!(
                (ours - pillow).abs() <= tol,
                "{name} channel {c}: {ours} vs Pillow {pillow}"
            );
        }
    }
}
