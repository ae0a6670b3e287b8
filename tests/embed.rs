//! CLIP embedding with the generated tiny model (real CLIP weights are not available here; the
//! model has CLIP's exact interface and seeded random weights, see src/models/generate.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use arvis::embed::preprocess::{CLIP_INPUT_PX, CLIP_TENSOR_LEN};
use arvis::embed::{ClipTokenizer, ImageEncoder, TextEncoder, clip_preprocess_into, cosine};
use arvis::models::generate::{ClipConfig, clip_text, clip_vision};
use arvis::runtime::{Device, LibraryFlavor, Runtime};
use arvis::source::{DecodeLimits, load_image};
use common::*;

fn runtime() -> &'static Runtime {
    Runtime::from_library(&provisioned_library(), LibraryFlavor::Cpu).expect("runtime")
}

/// The tiny generated models, written once per test binary.
fn tiny_models() -> &'static (PathBuf, PathBuf) {
    static MODELS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("clip-tiny");
        std::fs::create_dir_all(&dir).unwrap();
        let vision = dir.join("clip-tiny-random-vision.onnx");
        let text = dir.join("clip-tiny-random-text.onnx");
        std::fs::write(&vision, clip_vision(&ClipConfig::TINY, 1).to_bytes()).unwrap();
        std::fs::write(&text, clip_text(&ClipConfig::TINY, 2).to_bytes()).unwrap();
        (vision, text)
    })
}

fn image_encoder() -> &'static Mutex<ImageEncoder> {
    static ENC: OnceLock<Mutex<ImageEncoder>> = OnceLock::new();
    ENC.get_or_init(|| {
        Mutex::new(
            ImageEncoder::load(runtime(), &tiny_models().0, Device::Cpu).expect("load vision"),
        )
    })
}

fn tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_gz_file(
        &models_mirror().join("clip-vit-b32/tokenizer/bpe_simple_vocab_16e6.txt.gz"),
    )
    .expect("tokenizer")
}

fn shared_images() -> Vec<(String, image::RgbImage)> {
    let mut names: Vec<_> = std::fs::read_dir(images_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            (
                n.clone(),
                load_image(&images_dir().join(&n), DecodeLimits::default()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn clip_preprocessing_matches_hugging_face() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/clip_preprocess.json")).unwrap();
    let positions = fixture["positions_cyx"].as_array().unwrap();
    let side = CLIP_INPUT_PX as usize;
    let mut out = vec![0.0f32; CLIP_TENSOR_LEN];
    for (name, img) in shared_images() {
        clip_preprocess_into(&img, &mut out);
        let reference = &fixture["images"][&name];
        // PNGs decode identically everywhere: the whole pipeline must agree within 1e-5. JPEG
        // decoders differ by up to 3 levels (libjpeg-turbo vs zune-jpeg), i.e. ≤ 0.045 after
        // normalisation; the resampler itself is bit-exact (tests/preprocess.rs).
        let tol = if name.ends_with(".png") { 1e-5 } else { 0.05 };
        for (p, expected) in positions
            .iter()
            .zip(reference["values"].as_array().unwrap())
        {
            let (c, y, x) = (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
                p[2].as_u64().unwrap() as usize,
            );
            let ours = out[c * side * side + y * side + x];
            let theirs = expected.as_f64().unwrap() as f32;
            assert!(
                (ours - theirs).abs() <= tol,
                "{name} [{c},{y},{x}]: {ours} vs HF {theirs}"
            );
        }
        for c in 0..3 {
            let plane = &out[c * side * side..(c + 1) * side * side];
            let mean = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / plane.len() as f64;
            let expected = reference["channel_mean"][c].as_f64().unwrap();
            let tol = if name.ends_with(".png") { 1e-5 } else { 0.01 };
            assert!(
                (mean - expected).abs() <= tol,
                "{name} channel {c} mean {mean} vs HF {expected}"
            );
        }
    }
}

#[test]
fn an_image_queried_by_itself_scores_one() {
    let images = shared_images();
    let refs: Vec<_> = images.iter().map(|(_, i)| i).collect();
    let mut enc = image_encoder().lock().unwrap();
    assert!(
        enc.generated
            .as_deref()
            .is_some_and(|g| g.contains("random weights")),
        "generated models are labelled"
    );
    let a = enc.embed(&refs).unwrap();
    let b = enc.embed(&refs[..3]).unwrap();
    assert_eq!(a.len(), 15);
    assert_eq!(a[0].len(), 512);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            cosine(x, y) >= 0.999,
            "batching does not change embeddings: {}",
            cosine(x, y)
        );
    }
    for v in &a {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    }
}

#[test]
fn a_half_size_jpeg_q50_copy_finds_its_original_first() {
    let images = shared_images();
    let originals: Vec<_> = images.iter().map(|(_, i)| i).collect();
    let copies: Vec<image::RgbImage> = images
        .iter()
        .map(|(_, img)| {
            let jpeg = half_size_jpeg_q50(img);
            arvis::source::decode_image_bytes(&jpeg, DecodeLimits::default()).unwrap()
        })
        .collect();
    let mut enc = image_encoder().lock().unwrap();
    let gallery = enc.embed(&originals).unwrap();
    let queries = enc.embed(&copies.iter().collect::<Vec<_>>()).unwrap();
    for (i, q) in queries.iter().enumerate() {
        let best = (0..gallery.len())
            .max_by(|&a, &b| cosine(q, &gallery[a]).total_cmp(&cosine(q, &gallery[b])))
            .unwrap();
        let second = (0..gallery.len())
            .filter(|&j| j != i)
            .map(|j| cosine(q, &gallery[j]))
            .fold(f32::MIN, f32::max);
        eprintln!(
            "{}: self {:.4} next {:.4}",
            images[i].0,
            cosine(q, &gallery[i]),
            second
        );
        assert_eq!(
            images[best].0,
            images[i].0,
            "copy of {} matched {} ({} vs {})",
            images[i].0,
            images[best].0,
            cosine(q, &gallery[best]),
            cosine(q, &gallery[i])
        );
    }
}

#[test]
fn text_embeddings_are_unit_vectors_that_depend_on_the_text() {
    let mut enc = TextEncoder::load(runtime(), &tiny_models().1, tokenizer(), Device::Cpu)
        .expect("load text");
    let v = enc
        .embed(&["a photo of a cat", "a photo of a dog", "a photo of a cat"])
        .unwrap();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].len(), 512);
    for e in &v {
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert!(cosine(&v[0], &v[2]) > 0.9999, "deterministic");
    assert!(cosine(&v[0], &v[1]) < 0.999, "different texts differ");
}

#[test]
fn a_detector_is_not_accepted_as_a_clip_model() {
    provisioned();
    let yolo = test_cache().join("models/yolov8n_coco_int8_dynamic.onnx");
    let err = ImageEncoder::load(runtime(), &yolo, Device::Cpu)
        .err()
        .expect("must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains("does not have the CLIP image interface") && msg.contains("[1, 3, 640, 640]"),
        "{msg}"
    );
    let err = TextEncoder::load(runtime(), &tiny_models().0, tokenizer(), Device::Cpu)
        .err()
        .expect("must refuse");
    assert!(
        err.to_string()
            .contains("does not have the CLIP text interface"),
        "{err}"
    );
}
