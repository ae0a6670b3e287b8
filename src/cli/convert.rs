//! `arvis models convert --fp16`: write the FP16 twin of a model and validate it against the
//! FP32 original on real images.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::detect::{DetectOptions, Detector, iou};
use crate::embed::{ImageEncoder, cosine};
use crate::runtime::DeviceRequest;

/// Detections at or above this score must be found again by the FP16 model.
const CHECK_SCORE: f32 = 0.4;
const MIN_IOU: f32 = 0.95;
const MIN_COSINE: f32 = 0.999;

pub fn run(
    model: &str,
    out: Option<PathBuf>,
    check: Option<PathBuf>,
    validate: &[PathBuf],
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let (src, _) = crate::models::resolve_model(model)?;
    if let Some(candidate) = check {
        anyhow::ensure!(
            candidate.is_file(),
            "--check {}: no such file",
            candidate.display()
        );
        return validate_against(&src, &candidate, validate, request);
    }
    let out = out.unwrap_or_else(|| {
        let stem = src
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        crate::models::models_dir()
            .join("converted")
            .join(format!("{stem}-fp16.onnx"))
    });
    let report = crate::models::fp16::write_twin(&src, &out)?;
    println!(
        "wrote {} ({:.1} MB → {:.1} MB; {} tensors FP16, {} kept FP32{}; {} FP32 input/output casts)",
        out.display(),
        report.bytes_before as f64 / 1e6,
        report.bytes_after as f64 / 1e6,
        report.tensors_converted,
        report.tensors_kept_fp32.len(),
        if report.tensors_kept_fp32.is_empty() {
            String::new()
        } else {
            format!(": {}", report.tensors_kept_fp32.join(", "))
        },
        report.io_casts
    );
    if validate.is_empty() {
        eprintln!("note: not validated; pass --validate IMAGES to compare it with the FP32 model");
        return Ok(ExitCode::SUCCESS);
    }
    let code = validate_against(&src, &out, validate, request);
    // A refused twin is not left where a later run (or `--model`) would take it as checked.
    if !matches!(code, Ok(ExitCode::SUCCESS)) {
        let _ = std::fs::remove_file(&out);
        eprintln!("{} was removed: it did not pass validation", out.display());
    }
    code
}

/// Compare the FP16 model `out` with its FP32 original `src` on the `validate` images.
fn validate_against(
    src: &std::path::Path,
    out: &std::path::Path,
    validate: &[PathBuf],
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let (_, images) = crate::bench::decode_all(validate)?;
    anyhow::ensure!(!images.is_empty(), "no images to validate on");
    let passed = super::on_device(request, |runtime, device| {
        // The model's interface says what it is: a detector, else an image encoder.
        if let Ok(mut d32) = Detector::load(runtime, src, "fp32", device) {
            let mut d16 = Detector::load(runtime, out, "fp16", device)?;
            return validate_detector(&mut d32, &mut d16, &images);
        }
        let mut e32 = ImageEncoder::load(runtime, src, device)
            .context("the model is neither a YOLO detector nor a CLIP image encoder")?;
        let mut e16 = ImageEncoder::load(runtime, out, device)?;
        validate_encoder(&mut e32, &mut e16, &images)
    })?
    .0;
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: the FP16 model differs from the FP32 one beyond tolerance; use the FP32 model"
        );
        ExitCode::from(1)
    })
}

/// The lower of two values, where NaN wins (`f32::min` would silently drop a NaN, and a model
/// that produces NaN must fail its validation).
fn worst_low(acc: f32, v: f32) -> f32 {
    if acc.is_nan() || v.is_nan() {
        f32::NAN
    } else {
        acc.min(v)
    }
}

/// The higher of two values, where NaN wins.
fn worst_high(acc: f32, v: f32) -> f32 {
    if acc.is_nan() || v.is_nan() {
        f32::NAN
    } else {
        acc.max(v)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn validate_detector(
    d32: &mut Detector,
    d16: &mut Detector,
    images: &[image::RgbImage],
) -> anyhow::Result<bool> {
    let opts = DetectOptions::default();
    let (mut checked, mut missing, mut min_iou, mut max_dscore) = (0, 0, 1.0f32, 0.0f32);
    let (mut t32, mut t16) = (0.0, 0.0);
    for img in images {
        let t = Instant::now();
        let a = d32.detect(img, &opts)?.detections;
        t32 += ms(t);
        let t = Instant::now();
        let b = d16.detect(img, &opts)?.detections;
        t16 += ms(t);
        for d in a.iter().filter(|d| d.score >= CHECK_SCORE) {
            checked += 1;
            let best = b
                .iter()
                .filter(|e| e.class_id == d.class_id)
                .map(|e| (iou(&d.bbox, &e.bbox), (e.score - d.score).abs()))
                .max_by(|x, y| x.0.total_cmp(&y.0));
            match best {
                Some((o, ds)) => {
                    min_iou = worst_low(min_iou, o);
                    max_dscore = worst_high(max_dscore, ds);
                }
                None => missing += 1,
            }
        }
    }
    let n = images.len() as f64;
    println!(
        "detector: {checked} detections ≥ {CHECK_SCORE} on {} images; {missing} not found by FP16; min box IoU {min_iou:.4} (need ≥ {MIN_IOU}); max score change {max_dscore:.4}; detect {:.1} ms/image FP32 vs {:.1} ms FP16",
        images.len(),
        t32 / n,
        t16 / n
    );
    // A reference that finds nothing checks nothing: that is no pass; NaN never passes.
    Ok(checked > 0 && missing == 0 && min_iou >= MIN_IOU && max_dscore.is_finite())
}

fn validate_encoder(
    e32: &mut ImageEncoder,
    e16: &mut ImageEncoder,
    images: &[image::RgbImage],
) -> anyhow::Result<bool> {
    let mut min_cos = 1.0f32;
    let (mut t32, mut t16) = (0.0, 0.0);
    for img in images {
        let t = Instant::now();
        let a = e32.embed(&[img])?;
        t32 += ms(t);
        let t = Instant::now();
        let b = e16.embed(&[img])?;
        t16 += ms(t);
        min_cos = worst_low(min_cos, cosine(&a[0], &b[0]));
    }
    let n = images.len() as f64;
    println!(
        "image encoder: min cosine FP16 vs FP32 over {} images {min_cos:.5} (need ≥ {MIN_COSINE}); embed {:.1} ms/image FP32 vs {:.1} ms FP16",
        images.len(),
        t32 / n,
        t16 / n
    );
    Ok(min_cos >= MIN_COSINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_fails_validation_instead_of_being_skipped() {
        assert_eq!(worst_low(1.0, 0.96), 0.96);
        assert!(worst_low(1.0, f32::NAN).is_nan());
        assert!(
            worst_low(worst_low(1.0, f32::NAN), 0.99).is_nan(),
            "NaN stays"
        );
        let iou = worst_low(1.0, f32::NAN);
        assert!(
            iou.partial_cmp(&MIN_IOU).is_none(),
            "a NaN IoU never passes `>=`"
        );
        assert!(!worst_high(0.0, f32::NAN).is_finite());
    }
}
