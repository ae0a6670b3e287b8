//! `arvis models convert --fp16`: FP16 twins of the real detector and a CLIP-interface encoder,
//! validated against their FP32 originals on the shared photos; bad inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use common::*;

/// `arvis models convert --fp16 MODEL -o OUT --validate <the shared photos>`, which must
/// succeed; returns what it printed.
fn convert_validated(model: impl AsRef<std::ffi::OsStr>, out: &std::path::Path) -> String {
    let run = arvis()
        .args(["models", "convert", "--fp16"])
        .arg(model)
        .arg("-o")
        .arg(out)
        .arg("--validate")
        .arg(images_dir())
        .output()
        .unwrap();
    let text = stdout(&run);
    assert!(run.status.success(), "{text}{}", stderr(&run));
    text
}

#[test]
fn the_fp16_detector_finds_the_same_objects() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("y16.onnx");
    let text = convert_validated("yolov8n-fp32", &out);
    // Every confident FP32 detection on the 15 photos (36 of them) was looked for and found.
    let checked: usize = text
        .split("detector: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(checked, 36, "{text}");
    assert!(text.contains("; 0 not found by FP16;"), "{text}");
    // Half the bytes: the weights are FP16 now.
    let (a, b) = (
        std::fs::metadata(models_mirror().join("yolov8n/yolov8n_coco_fp32_dequantized.onnx"))
            .unwrap()
            .len(),
        std::fs::metadata(&out).unwrap().len(),
    );
    assert!(b * 10 < a * 6, "{b} vs {a}");
    // The converted model is a normal detector to the rest of arvis (FP32 in, FP32 out).
    let det = arvis()
        .args(["detect", "--json", "--model"])
        .arg(&out)
        .arg(images_dir().join("ultralytics_bus.jpg"))
        .output()
        .unwrap();
    assert!(det.status.success(), "{}", stderr(&det));
    assert!(
        stdout(&det).contains("\"label\":\"bus\""),
        "{}",
        stdout(&det)
    );
}

#[test]
fn the_fp16_image_encoder_keeps_its_embeddings() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    let text = convert_validated(&clip_tiny().0, &dir.path().join("v16.onnx"));
    let cos: f32 = text
        .split("min cosine FP16 vs FP32 over 15 images ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(cos >= 0.999, "{text}");
}

#[test]
fn an_fp16_model_that_is_not_the_twin_is_refused() {
    provisioned();
    // Same architecture and interface, other weights: as wrong as a badly converted twin.
    let dir = tempfile::tempdir().unwrap();
    let out = arvis()
        .args(["models", "generate", "clip-tiny", "--seed", "9", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let other16 = dir.path().join("other16.onnx");
    convert_validated(dir.path().join("clip-tiny-random-vision.onnx"), &other16);
    let run = arvis()
        .args(["models", "convert", "--fp16"])
        .arg(&clip_tiny().0)
        .arg("--check")
        .arg(&other16)
        .arg("--validate")
        .arg(images_dir())
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}{}",
        stdout(&run),
        stderr(&run)
    );
    assert!(
        stderr(&run).contains("differs from the FP32 one beyond tolerance"),
        "{}",
        stderr(&run)
    );
    // The real twin passes the same check.
    let twin = dir.path().join("twin16.onnx");
    convert_validated(&clip_tiny().0, &twin);
    let run = arvis()
        .args(["models", "convert", "--fp16"])
        .arg(&clip_tiny().0)
        .arg("--check")
        .arg(&twin)
        .arg("--validate")
        .arg(images_dir())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}{}", stdout(&run), stderr(&run));
}

#[test]
fn converting_something_that_is_not_a_model_is_a_clear_error() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x0a\xff\xff\xff\x0fnot protobuf").unwrap();
    let run = arvis()
        .args(["models", "convert", "--fp16"])
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("not a valid ONNX model"),
        "{}",
        stderr(&run)
    );
}
