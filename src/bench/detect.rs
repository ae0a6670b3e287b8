//! `arvis bench detect`: per-stage times, end-to-end ÷ bare `session.run` on the same inputs,
//! the detector's I/O modes against each other, and (with `--python`) the Python reference.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use super::load_inputs;
use super::procfs::{peak_rss_mb, vram_used_mib};
use super::stats::{Stat, stat};
use crate::detect::{DetectOptions, Detector, IoMode, Prepared};
use crate::pipeline::{Prefetch, PrefetchPriority};
use crate::runtime::{Device, DeviceRequest, Runtime};
use crate::source::DecodeLimits;

#[derive(Debug, Serialize)]
struct DetectBench {
    model: String,
    device: String,
    /// Where the detector's nodes ran: "CPU", "CUDA (every node)", or mixed — a mixed run's
    /// figures are partly CPU figures.
    placement: String,
    images: usize,
    rounds: usize,
    decode: Stat,
    preprocess: Stat,
    infer: Stat,
    postprocess: Stat,
    bare_session_run: Stat,
    /// Inference (upload + run + download) per I/O mode, each its own session, interleaved.
    io_modes: Vec<IoModeRow>,
    /// Mean wall time per image of the pipelined end-to-end loop (decode → … → postprocess).
    end_to_end_per_image_ms: f64,
    /// Mean bare `session.run` time per image over the same images.
    bare_per_image_ms: f64,
    /// end_to_end_per_image_ms / bare_per_image_ms.
    ratio_end_to_end_over_bare: f64,
    /// Median over rounds of (that round's end to end ÷ the bare round just before it): the
    /// steadier figure on a machine whose speed drifts.
    ratio_median_of_rounds: f64,
    /// The Python reference on the same inputs (with --python).
    #[serde(skip_serializing_if = "Option::is_none")]
    python: Option<PythonComparison>,
    /// Peak resident memory of this process (Linux), MB.
    peak_rss_mb: Option<f64>,
    /// GPU memory in use at the end (all processes; nvidia-smi), MiB.
    vram_used_mib: Option<u64>,
}

#[derive(Debug, Serialize)]
struct IoModeRow {
    mode: IoMode,
    /// None when the mode could not run here (see `unavailable`).
    infer: Option<Stat>,
    /// Median ÷ the `plain` mode's median.
    ratio_over_plain: Option<f64>,
    /// Graph mode only: its explicit host → device and device → host copies, which ort runs as
    /// a separate small session (included in `infer`; shown apart so they can be told from the
    /// graph replay itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    copies: Option<(Stat, Stat)>,
    /// Why this mode could not run on this device and model (e.g. CUDA graphs with int8's
    /// CPU-only ConvInteger nodes); the bench goes on with the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    unavailable: Option<String>,
}

/// Whole-process runs of arvis and of the Python script each (alternated).
const WHOLE_PROCESS_RUNS: usize = 5;

#[derive(Debug, Serialize)]
struct PythonComparison {
    onnxruntime: String,
    end_to_end_per_image_ms: f64,
    bare_per_image_ms: f64,
    ratio_end_to_end_over_bare: f64,
    ratio_median_of_rounds: f64,
    /// arvis end-to-end ÷ Python end-to-end, per image.
    arvis_over_python_per_image: f64,
    /// Median wall time of `arvis detect --json` over all the images, start-up included
    /// (`WHOLE_PROCESS_RUNS` runs, alternated with the Python script's).
    arvis_whole_process_ms: f64,
    /// Same for the Python script (`--once`).
    python_whole_process_ms: f64,
    /// Median of the per-pair ratios (each arvis run ÷ the Python run right after it).
    arvis_over_python_whole_process: f64,
    /// Detections per pass over the images, a sanity check that both do the same work.
    arvis_detections: usize,
    python_detections: u64,
}

pub struct DetectBenchOptions {
    pub rounds: usize,
    pub json: bool,
    pub python: bool,
    pub io_modes: bool,
}

pub fn bench_detect(
    inputs: &[PathBuf],
    model: Option<&str>,
    options: DetectBenchOptions,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let DetectBenchOptions {
        rounds,
        json,
        python,
        io_modes,
    } = options;
    let (inputs, images) = load_inputs(inputs)?;
    let priority = PrefetchPriority::from_settings().map_err(anyhow::Error::msg)?;
    let (mut detector, device) = crate::load::load_detector(model, request)?;
    let opts = DetectOptions::default();
    let pre = detector.preprocessor();
    let prepared: Vec<Prepared> = images.iter().map(|img| pre.prepare(img)).collect();

    // Warm-up: first runs allocate arenas and pick kernels.
    for p in &prepared {
        detector.run(p, &opts)?;
    }

    let (mut decode, mut preprocess, mut infer, mut post, mut bare) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut e2e_total = 0.0;
    let mut bare_total = 0.0;
    // Each round's end to end ÷ the bare round just before it: drift slower than two rounds
    // cancels out of these, unlike out of the totals.
    let mut round_ratios = Vec::with_capacity(rounds);
    let mut found = 0usize;
    for _ in 0..rounds {
        // Reference: bare session.run on already-prepared inputs.
        let bare_before = bare_total;
        for p in &prepared {
            let t = Instant::now();
            detector.run_bare(p)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            bare.push(ms);
            bare_total += ms;
        }
        // End to end, as `arvis detect` runs it: decode + letterbox of image N+1 overlaps inference of N.
        let t = Instant::now();
        let staged = Prefetch::start(
            inputs.iter().map(|i| i.path.clone()).collect(),
            DecodeLimits::default(),
            priority,
        )
        .with_preprocessor(pre);
        for staged in staged {
            let s = staged
                .result
                .with_context(|| staged.path.display().to_string())?;
            let out = detector.run(&s.prepared, &opts)?;
            let (i, po) = (out.timings.infer, out.timings.postprocess);
            found += out.detections.len();
            decode.push(s.decode_ms);
            preprocess.push(s.preprocess_ms);
            infer.push(i);
            post.push(po);
        }
        let e2e_round = t.elapsed().as_secs_f64() * 1e3;
        e2e_total += e2e_round;
        round_ratios.push(e2e_round / (bare_total - bare_before));
    }
    let n = (images.len() * rounds) as f64;
    let io_modes = if io_modes {
        compare_io_modes(model, device, &prepared, rounds)?
    } else {
        Vec::new()
    };
    let python = if python {
        let (model_path, reference) = crate::load::resolve_detector(model, device)?;
        let paths: Vec<PathBuf> = inputs.iter().map(|i| i.path.clone()).collect();
        let py = super::reference::per_image(&model_path, rounds, &paths)?;
        let exe = std::env::current_exe().context("locating the arvis binary")?;
        let mut arvis_cmd = || {
            let mut c = std::process::Command::new(&exe);
            c.args([
                "--device",
                &device.to_string(),
                "detect",
                "--json",
                "--model",
            ])
            .arg(&reference)
            .args(&paths);
            c
        };
        let mut python_cmd = super::reference::once_command(&model_path, &paths)?;
        let times = super::reference::whole_processes_ms(
            &mut [&mut arvis_cmd, &mut python_cmd],
            WHOLE_PROCESS_RUNS,
        )?;
        let (arvis_runs, python_runs) = (&times[0], &times[1]);
        let pair_ratios: Vec<f64> = arvis_runs
            .iter()
            .zip(python_runs)
            .map(|(a, p)| a / p)
            .collect();
        let e2e = e2e_total / n;
        Some(PythonComparison {
            onnxruntime: py.onnxruntime,
            end_to_end_per_image_ms: py.end_to_end_per_image_ms,
            bare_per_image_ms: py.bare_per_image_ms,
            ratio_end_to_end_over_bare: py.end_to_end_per_image_ms / py.bare_per_image_ms,
            ratio_median_of_rounds: py.ratio_median_of_rounds,
            arvis_over_python_per_image: e2e / py.end_to_end_per_image_ms,
            arvis_whole_process_ms: stat(arvis_runs).median_ms,
            python_whole_process_ms: stat(python_runs).median_ms,
            // Sample statistics are unit-free; Stat only names them in ms.
            arvis_over_python_whole_process: stat(&pair_ratios).median_ms,
            arvis_detections: found / rounds,
            python_detections: py.detections_per_round,
        })
    } else {
        None
    };
    let result = DetectBench {
        model: detector.model_name.clone(),
        device: device.to_string(),
        placement: detector.placement.to_string(),
        images: images.len(),
        rounds,
        decode: stat(&decode),
        preprocess: stat(&preprocess),
        infer: stat(&infer),
        postprocess: stat(&post),
        bare_session_run: stat(&bare),
        io_modes,
        end_to_end_per_image_ms: e2e_total / n,
        bare_per_image_ms: bare_total / n,
        ratio_end_to_end_over_bare: e2e_total / bare_total,
        // Sample statistics are unit-free; Stat only names them in ms.
        ratio_median_of_rounds: stat(&round_ratios).median_ms,
        python,
        peak_rss_mb: peak_rss_mb(),
        vram_used_mib: vram_used_mib(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "arvis bench detect: {} on {} ({}), {} images x {} rounds (after 1 warm-up pass)",
            result.model, result.device, result.placement, result.images, rounds
        );
        println!("{:<28} {:>10} {:>10}", "stage", "median ms", "p95 ms");
        for (name, s) in [
            ("decode (overlapped)", result.decode),
            ("preprocess (overlapped)", result.preprocess),
            ("infer (session.run + I/O)", result.infer),
            ("postprocess", result.postprocess),
            ("reference: bare session.run", result.bare_session_run),
        ] {
            println!("{name:<28} {:>10.2} {:>10.2}", s.median_ms, s.p95_ms);
        }
        println!(
            "end-to-end {:.2} ms/image vs bare session.run {:.2} ms/image: ratio {:.3} (median of per-round ratios {:.3})",
            result.end_to_end_per_image_ms,
            result.bare_per_image_ms,
            result.ratio_end_to_end_over_bare,
            result.ratio_median_of_rounds
        );
        if !result.io_modes.is_empty() {
            println!(
                "detector I/O modes (ARVIS_DETECTOR_IO), infer incl. upload/download, interleaved rounds:"
            );
            println!(
                "{:<8} {:>10} {:>10} {:>10}",
                "mode", "median ms", "p95 ms", "÷ plain"
            );
        }
        for row in &result.io_modes {
            match (&row.infer, &row.unavailable) {
                (Some(infer), _) => println!(
                    "{:<8} {:>10.2} {:>10.2} {:>10}{}",
                    row.mode.to_string(),
                    infer.median_ms,
                    infer.p95_ms,
                    row.ratio_over_plain
                        .map_or("-".into(), |r| format!("{r:.3}")),
                    row.copies.map_or(String::new(), |(up, down)| format!(
                        "   of which copies (ort copy session) up {:.2} + down {:.2} ms",
                        up.median_ms, down.median_ms
                    ))
                ),
                (None, why) => println!(
                    "{:<8} unavailable here: {}",
                    row.mode.to_string(),
                    why.as_deref().unwrap_or("?")
                ),
            }
        }
        if let Some(mb) = result.peak_rss_mb {
            println!("peak RSS {mb:.0} MB");
        }
        if let Some(mib) = result.vram_used_mib {
            println!("GPU memory held by this process (nvidia-smi): {mib} MiB");
        }
        if let Some(p) = &result.python {
            println!(
                "python reference (onnxruntime {} + NumPy + Pillow): {:.2} ms/image vs its bare session.run {:.2}: ratio {:.3} (median of per-round ratios {:.3})",
                p.onnxruntime,
                p.end_to_end_per_image_ms,
                p.bare_per_image_ms,
                p.ratio_end_to_end_over_bare,
                p.ratio_median_of_rounds
            );
            println!(
                "arvis ÷ python per image: {:.3}; whole process over {} images (start-up included, median of {} alternated runs): arvis {:.0} ms, python {:.0} ms, ratio {:.3}",
                p.arvis_over_python_per_image,
                result.images,
                WHOLE_PROCESS_RUNS,
                p.arvis_whole_process_ms,
                p.python_whole_process_ms,
                p.arvis_over_python_whole_process
            );
            println!(
                "detections per pass: arvis {}, python {}",
                p.arvis_detections, p.python_detections
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Time `Detector::run` under each I/O mode this device supports, each in its own session,
/// rounds interleaved so drift hits all modes alike.
fn compare_io_modes(
    model: Option<&str>,
    device: Device,
    prepared: &[Prepared],
    rounds: usize,
) -> anyhow::Result<Vec<IoModeRow>> {
    let (path, name) = crate::load::resolve_detector(model, device)?;
    let runtime = Runtime::get(device.flavor())?;
    // Every mode is tried; one this device or model cannot run becomes a row saying why.
    let modes = [IoMode::Plain, IoMode::Bound, IoMode::Graph];
    let opts = DetectOptions::default();
    let mut runs = Vec::new();
    let mut unavailable = Vec::new();
    for mode in modes {
        let loaded = Detector::load_with(runtime, &path, &name, device, mode)
            .map_err(|e| format!("{e:#}"))
            .and_then(|mut d| {
                // Warm-up; CUDA graphs are captured during these runs.
                for p in prepared.iter().chain(prepared.iter().take(2)) {
                    d.run(p, &opts).map_err(|e| format!("{e:#}"))?;
                }
                Ok(d)
            });
        match loaded {
            Ok(d) => runs.push((mode, d, Vec::new(), Vec::new())),
            Err(why) => unavailable.push((mode, why)),
        }
    }
    for _ in 0..rounds {
        for (mode, d, samples, copies) in runs.iter_mut() {
            for p in prepared {
                let out = d
                    .run(p, &opts)
                    .with_context(|| format!("detector with {mode} I/O"))?;
                samples.push(out.timings.infer);
                copies.push(d.last_copies());
            }
        }
    }
    let plain = runs
        .iter()
        .find(|(m, ..)| *m == IoMode::Plain)
        .map(|(_, _, s, _)| stat(s).median_ms);
    let mut rows: Vec<IoModeRow> = runs
        .into_iter()
        .map(|(mode, _, samples, copies)| {
            let infer = stat(&samples);
            let up: Vec<f64> = copies.iter().map(|c| c.upload_ms).collect();
            let down: Vec<f64> = copies.iter().map(|c| c.download_ms).collect();
            IoModeRow {
                mode,
                infer: Some(infer),
                ratio_over_plain: plain.map(|p| infer.median_ms / p),
                copies: (mode == IoMode::Graph).then(|| (stat(&up), stat(&down))),
                unavailable: None,
            }
        })
        .collect();
    rows.extend(unavailable.into_iter().map(|(mode, why)| IoModeRow {
        mode,
        infer: None,
        ratio_over_plain: None,
        copies: None,
        unavailable: Some(why),
    }));
    rows.sort_by_key(|r| modes.iter().position(|m| *m == r.mode));
    Ok(rows)
}
