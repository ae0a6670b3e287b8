//! `arvis bench switches`: every tuning switch against the defaults, on the same inputs.
//!
//! Each variant is its own `arvis bench detect` / `bench embed` process (sessions read their
//! switches when they are built, and a fresh process keeps one variant's arena and threads out of
//! the next one's figures). The defaults run first and again last: the gap between the two is
//! the noise floor for every other ratio in the table.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;
use serde::Serialize;

use crate::runtime::{Device, DeviceRequest};
use crate::settings::var;

/// One configuration to measure; every variant runs the detector bench.
struct Variant {
    label: &'static str,
    env: &'static [(&'static str, &'static str)],
    /// Run the detector/embedder FP16 twins instead of the FP32 models.
    fp16: bool,
    /// Whether the switch can affect the embedder too (skip it where it cannot).
    embed: bool,
}

type Env = &'static [(&'static str, &'static str)];

/// A switch that can affect both models.
const fn both(label: &'static str, env: Env) -> Variant {
    Variant {
        label,
        env,
        fp16: false,
        embed: true,
    }
}

/// A switch that only the detector reads.
const fn detector_only(label: &'static str, env: Env) -> Variant {
    Variant {
        embed: false,
        ..both(label, env)
    }
}

/// Both models' FP16 twins, with these switches.
const fn fp16(label: &'static str, env: Env) -> Variant {
    Variant {
        fp16: true,
        ..both(label, env)
    }
}

const DEFAULTS: Variant = both("defaults", &[]);

// In both device sets.
const PREFETCH_IDLE: Variant = detector_only(
    "prefetch at idle priority (ARVIS_PREFETCH_PRIORITY=idle)",
    &[(var::PREFETCH_PRIORITY, "idle")],
);
const FP16: Variant = fp16("FP16 models", &[]);

const CPU: &[Variant] = &[
    both(
        "intra-op spinning on (ARVIS_ORT_SPIN=1)",
        &[(var::ORT_SPIN, "1")],
    ),
    detector_only(
        "detector I/O bound (ARVIS_DETECTOR_IO=bound)",
        &[(var::DETECTOR_IO, "bound")],
    ),
    both(
        "ONNX Runtime's default threads, pinned (ARVIS_ORT_THREADS=0)",
        &[(var::ORT_THREADS, "0")],
    ),
    PREFETCH_IDLE,
    FP16,
];

const CUDA: &[Variant] = &[
    both("TF32 off (ARVIS_CUDA_TF32=0)", &[(var::CUDA_TF32, "0")]),
    detector_only(
        "cuDNN conv search heuristic",
        &[(var::CUDNN_CONV_SEARCH, "heuristic")],
    ),
    detector_only(
        "cuDNN conv search default",
        &[(var::CUDNN_CONV_SEARCH, "default")],
    ),
    detector_only(
        "detector I/O plain (no binding, pageable memory)",
        &[(var::DETECTOR_IO, "plain")],
    ),
    detector_only(
        "detector I/O graph (CUDA graphs)",
        &[(var::DETECTOR_IO, "graph")],
    ),
    both(
        "memory limit 1GB, arena same-as-requested",
        &[
            (var::GPU_MEM_LIMIT, "1GB"),
            (var::CUDA_ARENA, "same-as-requested"),
        ],
    ),
    PREFETCH_IDLE,
    FP16,
    fp16("FP16 models, TF32 off", &[(var::CUDA_TF32, "0")]),
];

#[derive(Debug, Default, Serialize)]
pub struct SwitchRow {
    variant: String,
    env: Vec<String>,
    detect_infer_median_ms: Option<f64>,
    detect_end_to_end_ms_per_image: Option<f64>,
    /// End to end ÷ bare `session.run` in the same bench (how much the pipeline adds).
    detect_end_to_end_over_bare: Option<f64>,
    embed_images_per_s: Vec<(usize, f64)>,
    /// GPU memory in use at the end of the detect (or embed) run, MiB (nvidia-smi); the
    /// largest over the repeats.
    vram_used_mib: Option<u64>,
    peak_rss_mb: Option<f64>,
    /// Measurements this row is the median of.
    repeats: usize,
}

/// The FP16 twin of an FP32 model, converted into the cache once (keyed by the source's hash).
fn fp16_twin(src: &Path) -> anyhow::Result<PathBuf> {
    let out =
        crate::models::converted_path(src, &crate::paths::cache_dir().join("converted"), "fp16")?;
    if !out.is_file() {
        eprintln!(
            "converting {} to FP16 into {}",
            src.display(),
            out.display()
        );
        crate::models::fp16::write_twin(src, &out)?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub fn bench_switches(
    images: &Path,
    model: Option<String>,
    clip_model: Option<String>,
    rounds: usize,
    repeat: usize,
    batches: &[usize],
    json: bool,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let device = request.resolve();
    let exe = std::env::current_exe().context("locating the arvis binary")?;
    let (detector, _) =
        crate::load::resolve_detector(Some(model.as_deref().unwrap_or("yolov8n-fp32")), device)?;
    let clip = match clip_model {
        Some(m) => crate::models::resolve_model(&m)?.0,
        None => super::generated_vit_b32()?,
    };
    let (detector16, clip16) = (fp16_twin(&detector)?, fp16_twin(&clip)?);
    let batch_list = batches
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let switches = match device {
        Device::Cpu => CPU,
        Device::Cuda(_) => CUDA,
    };
    let again = Variant {
        label: "defaults (again, last)",
        ..DEFAULTS
    };
    let measure = |variant: &Variant| -> anyhow::Result<SwitchRow> {
        let base = || {
            let mut c = Command::new(&exe);
            // The variant's switches on top of a clean slate for every switch this bench sets.
            for (var, _) in CPU.iter().chain(CUDA).flat_map(|v| v.env) {
                c.env_remove(var);
            }
            c.envs(variant.env.iter().copied())
                .args(["--device", &device.to_string(), "bench"]);
            c
        };
        let mut row = SwitchRow {
            variant: variant.label.to_string(),
            env: variant
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            ..Default::default()
        };
        let mut c = base();
        c.args(["detect", "--json", "--no-io-modes", "--rounds"])
            .arg(rounds.to_string())
            .arg("--model")
            .arg(if variant.fp16 { &detector16 } else { &detector })
            .arg(images);
        let r = super::run_json(c, "bench detect")?;
        row.detect_infer_median_ms = r["infer"]["median_ms"].as_f64();
        row.detect_end_to_end_ms_per_image = r["end_to_end_per_image_ms"].as_f64();
        row.detect_end_to_end_over_bare = r["ratio_end_to_end_over_bare"].as_f64();
        row.vram_used_mib = r["vram_used_mib"].as_u64();
        row.peak_rss_mb = r["peak_rss_mb"].as_f64();
        if variant.embed {
            let mut c = base();
            c.args(["embed", "--json", "--batches", &batch_list, "--clip-model"])
                .arg(if variant.fp16 { &clip16 } else { &clip })
                .arg(images);
            let r = super::run_json(c, "bench embed")?;
            row.embed_images_per_s = r["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| {
                    Some((
                        x["batch"].as_u64()? as usize,
                        x["end_to_end_images_per_s"].as_f64()?,
                    ))
                })
                .collect();
            row.vram_used_mib = row.vram_used_mib.or(r["vram_used_mib"].as_u64());
        }
        Ok(row)
    };
    let variants: Vec<&Variant> = std::iter::once(&DEFAULTS)
        .chain(switches)
        .chain(std::iter::once(&again))
        .collect();
    // Round-robin over the variants `repeat` times, so slow drift of the machine hits them alike.
    let mut samples: Vec<Vec<SwitchRow>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..repeat {
        for (variant, out) in variants.iter().zip(samples.iter_mut()) {
            eprintln!("== {} (round {}/{repeat}) ==", variant.label, round + 1);
            out.push(measure(variant)?);
        }
    }
    let rows: Vec<SwitchRow> = samples.into_iter().map(median_row).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "device": device.to_string(),
                "detector": detector,
                "clip_model": clip,
                "rows": rows,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_table(device, &detector, &clip, &rows, batches);
    Ok(ExitCode::SUCCESS)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    (!xs.is_empty()).then(|| super::stats::percentile(&mut xs, 0.5))
}

/// One row from a variant's repeated measurements: the median of each figure.
fn median_row(runs: Vec<SwitchRow>) -> SwitchRow {
    let pick = |f: &dyn Fn(&SwitchRow) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let batches: Vec<usize> = runs
        .first()
        .map(|r| r.embed_images_per_s.iter().map(|(b, _)| *b).collect())
        .unwrap_or_default();
    SwitchRow {
        detect_infer_median_ms: pick(&|r| r.detect_infer_median_ms),
        detect_end_to_end_ms_per_image: pick(&|r| r.detect_end_to_end_ms_per_image),
        detect_end_to_end_over_bare: pick(&|r| r.detect_end_to_end_over_bare),
        embed_images_per_s: batches
            .iter()
            .filter_map(|&b| {
                let v = pick(&|r| {
                    r.embed_images_per_s
                        .iter()
                        .find(|(bb, _)| *bb == b)
                        .map(|(_, v)| *v)
                })?;
                Some((b, v))
            })
            .collect(),
        vram_used_mib: runs.iter().filter_map(|r| r.vram_used_mib).max(),
        peak_rss_mb: pick(&|r| r.peak_rss_mb),
        repeats: runs.len(),
        variant: runs.first().map(|r| r.variant.clone()).unwrap_or_default(),
        env: runs.first().map(|r| r.env.clone()).unwrap_or_default(),
    }
}

fn ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:.3}", x / b),
        _ => "-".into(),
    }
}

fn print_table(
    device: Device,
    detector: &Path,
    clip: &Path,
    rows: &[SwitchRow],
    batches: &[usize],
) {
    println!(
        "arvis bench switches on {device}: detector {}, CLIP {} (each variant its own process, median of {} round-robin runs; ratios ÷ the first defaults row)",
        detector.display(),
        clip.display(),
        rows.first().map_or(0, |r| r.repeats)
    );
    let mut header = format!(
        "{:<62} {:>9} {:>8} {:>9} {:>8} {:>9}",
        "variant", "infer ms", "÷ def", "e2e ms", "÷ def", "e2e÷bare"
    );
    for b in batches {
        header.push_str(&format!(" {:>10} {:>7}", format!("b{b} img/s"), "× def"));
    }
    header.push_str(&format!(" {:>9}", "VRAM MiB"));
    println!("{header}");
    let base = &rows[0];
    let embed_at = |r: &SwitchRow, b: usize| {
        r.embed_images_per_s
            .iter()
            .find(|(bb, _)| *bb == b)
            .map(|(_, v)| *v)
    };
    for r in rows {
        let fmt = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
        let mut line = format!(
            "{:<62} {:>9} {:>8} {:>9} {:>8} {:>9}",
            r.variant,
            fmt(r.detect_infer_median_ms),
            ratio(r.detect_infer_median_ms, base.detect_infer_median_ms),
            fmt(r.detect_end_to_end_ms_per_image),
            ratio(
                r.detect_end_to_end_ms_per_image,
                base.detect_end_to_end_ms_per_image
            ),
            r.detect_end_to_end_over_bare
                .map_or_else(|| "-".into(), |v| format!("{v:.3}")),
        );
        for &b in batches {
            let x = embed_at(r, b);
            line.push_str(&format!(
                " {:>10} {:>7}",
                x.map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                ratio(x, embed_at(base, b))
            ));
        }
        line.push_str(&format!(
            " {:>9}",
            r.vram_used_mib
                .map_or_else(|| "-".into(), |v| v.to_string())
        ));
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(infer: f64, b1: f64, vram: u64) -> SwitchRow {
        SwitchRow {
            variant: "v".into(),
            detect_infer_median_ms: Some(infer),
            embed_images_per_s: vec![(1, b1)],
            vram_used_mib: Some(vram),
            ..Default::default()
        }
    }

    #[test]
    fn repeated_runs_reduce_to_their_medians() {
        let r = median_row(vec![
            row(90.0, 10.0, 5),
            row(70.0, 30.0, 9),
            row(80.0, 20.0, 7),
        ]);
        assert_eq!(r.detect_infer_median_ms, Some(80.0));
        assert_eq!(r.embed_images_per_s, vec![(1, 20.0)]);
        assert_eq!(r.vram_used_mib, Some(9), "the largest VRAM seen");
        assert_eq!(r.repeats, 3);
        assert_eq!(r.detect_end_to_end_ms_per_image, None);
        assert_eq!(ratio(Some(50.0), Some(100.0)), "0.500");
        assert_eq!(ratio(None, Some(1.0)), "-");
    }

    #[test]
    fn every_variant_names_a_switch_arvis_reads() {
        for v in CPU.iter().chain(CUDA) {
            for (key, value) in v.env {
                let ok = match *key {
                    var::DETECTOR_IO => value.parse::<crate::detect::IoMode>().is_ok(),
                    var::ORT_SPIN => ["0", "1"].contains(value),
                    var::ORT_THREADS => crate::runtime::IntraOpThreads::parse(Some(value)).is_ok(),
                    var::PREFETCH_PRIORITY => {
                        crate::pipeline::PrefetchPriority::parse(value).is_ok()
                    }
                    // A CUDA switch must parse and change something (a misspelt name would not).
                    _ => crate::runtime::CudaTuning::from_lookup(|k| {
                        (k == *key).then(|| value.to_string())
                    })
                    .is_ok_and(|t| t != crate::runtime::CudaTuning::default()),
                };
                assert!(ok, "{key}={value}");
            }
        }
    }
}
