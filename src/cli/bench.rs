//! `arvis bench`: speed measured against a reference taken in the same run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

use super::detect::expand_inputs;
use crate::detect::{DetectOptions, Detector, IoMode, Prepared};
use crate::pipeline::{Prefetch, PrefetchPriority};
use crate::runtime::{Device, DeviceRequest, Runtime};
use crate::source::{DecodeLimits, load_image};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Detector: per-stage times, and end-to-end ÷ bare `session.run` on the same inputs.
    Detect {
        /// Images or directories to run on.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Detector model (manifest id or .onnx path).
        #[arg(long, env = "ARVIS_DETECTOR")]
        model: Option<String>,
        /// Timed passes over all the images (after one warm-up pass).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Print the results as one JSON object.
        #[arg(long)]
        json: bool,
        /// Also run the Python reference (onnxruntime + NumPy + Pillow, installed with pip into
        /// the cache on first use) on the same images and model, and time both whole processes.
        #[arg(long)]
        python: bool,
        /// Skip the comparison of detector I/O modes (plain, bound, graph).
        #[arg(long)]
        no_io_modes: bool,
    },
    /// Every tuning switch (TF32, cuDNN conv search, detector I/O and CUDA graphs, memory limit,
    /// FP16 models; on the CPU: intra-op spinning, detector I/O, FP16) against the defaults,
    /// each in its own process on the same images; the defaults run first and last.
    Switches {
        /// Images or a directory of them.
        images: PathBuf,
        /// FP32 detector (its FP16 twin is converted into the cache).
        #[arg(long)]
        model: Option<String>,
        /// FP32 image encoder (default: the generated full-size ViT-B/32, as for `bench embed`).
        #[arg(long)]
        clip_model: Option<String>,
        /// Timed detector passes over the images per variant.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// CLIP batch sizes per variant.
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        batches: Vec<usize>,
        /// Measure every variant this many times, round-robin, and report medians.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// CLIP image embedding throughput per batch size, against bare `session.run` on the same tensors.
    Embed {
        /// Images or directories to embed.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Image encoder (default: the full ViT-B/32 architecture with random weights, generated
        /// into the cache on first use; speed does not depend on weight values).
        #[arg(long, env = "ARVIS_CLIP_MODEL")]
        clip_model: Option<String>,
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        batches: Vec<usize>,
        /// Images per measurement (the inputs are cycled).
        #[arg(long, default_value_t = 32)]
        images: usize,
        /// Also auto-tune the batch size (1, 2, 4 … 64, backing off on out-of-memory) as arvis
        /// does on a GPU, and print the choice.
        #[arg(long)]
        tune: bool,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Video end to end (detect + track + per-track CLIP): serial vs pipelined on two threads,
    /// against 1 / max(stage) measured in the same run.
    Video {
        /// A video file, or a directory of its frames as images (taken in file-name order; for
        /// builds without video support).
        input: PathBuf,
        /// Detector model (manifest id or .onnx path).
        #[arg(long, env = "ARVIS_DETECTOR")]
        model: Option<String>,
        /// Image encoder (default: the generated full-size ViT-B/32, as for `bench embed`).
        #[arg(long, env = "ARVIS_CLIP_MODEL")]
        clip_model: Option<String>,
        /// Frames to use from the start of the video.
        #[arg(long, default_value_t = 100)]
        frames: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every benchmark in turn (detect with the Python reference, embed with batch tuning,
    /// search at 10k and 100k vectors, and video when built with video support).
    All {
        /// Images or directories (detect, embed).
        images: PathBuf,
        /// A video (video bench).
        video: Option<PathBuf>,
        /// Detector model for the detect bench (the issue targets use yolov8n-fp32).
        #[arg(long, env = "ARVIS_DETECTOR")]
        model: Option<String>,
        /// Skip the Python reference (it needs pip the first time).
        #[arg(long)]
        no_python: bool,
        /// One JSON object with every result.
        #[arg(long)]
        json: bool,
    },
    /// Vector search: HNSW vs exact scan on synthetic clustered unit vectors, in the same run.
    Search {
        /// Index sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        sizes: Vec<usize>,
        /// Queries per size.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Vector dimensions (CLIP ViT-B/32: 512).
        #[arg(long, default_value_t = 512)]
        dim: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A memory field of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in MB (Linux only).
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Peak resident set size of this process in MB (`VmHWM`; Linux only).
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// GPU memory this process holds right now (nvidia-smi's per-process figure), MiB; None on
/// the CPU or without an NVIDIA GPU (other processes' memory is never counted in).
pub fn vram_used_mib() -> Option<u64> {
    crate::runtime::gpu_info::process_memory_mib()
}

/// Median and 95th percentile of a sample, in ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median_ms: f64,
    pub p95_ms: f64,
}

pub fn stat(samples: &[f64]) -> Stat {
    let mut s = samples.to_vec();
    Stat {
        median_ms: percentile(&mut s, 0.5),
        p95_ms: percentile(&mut s, 0.95),
    }
}

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

pub fn run(cmd: BenchCommand, request: DeviceRequest) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::All {
            images,
            video,
            model,
            no_python,
            json,
        } => bench_all(&images, video.as_deref(), model, !no_python, json, request),
        BenchCommand::Video {
            input,
            model,
            clip_model,
            frames,
            json,
        } => super::bench_video::bench_video(
            &input,
            model.as_deref(),
            clip_model,
            frames.max(1),
            json,
            request,
        ),
        BenchCommand::Search {
            sizes,
            queries,
            dim,
            json,
        } => bench_search(&sizes, queries.max(1), dim, json),
        BenchCommand::Embed {
            inputs,
            clip_model,
            batches,
            images,
            tune,
            json,
        } => bench_embed(
            &inputs,
            clip_model,
            &batches,
            images.max(1),
            tune,
            json,
            request,
        ),
        BenchCommand::Detect {
            inputs,
            model,
            rounds,
            json,
            python,
            no_io_modes,
        } => bench_detect(
            &inputs,
            model.as_deref(),
            DetectBenchOptions {
                rounds: rounds.max(1),
                json,
                python,
                io_modes: !no_io_modes,
            },
            request,
        ),
        BenchCommand::Switches {
            images,
            model,
            clip_model,
            rounds,
            batches,
            repeat,
            json,
        } => super::bench_switches::bench_switches(
            &images,
            model,
            clip_model,
            rounds.max(1),
            repeat.max(1),
            &batches,
            json,
            request,
        ),
    }
}

/// Run each benchmark as its own `arvis bench …` process (so each starts clean and its peak
/// RSS is its own), printing their tables, or one combined JSON object.
fn bench_all(
    images: &std::path::Path,
    video: Option<&std::path::Path>,
    model: Option<String>,
    python: bool,
    json: bool,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the arvis binary")?;
    let model = model.unwrap_or_else(|| "yolov8n-fp32".into());
    let image_arg = images.display().to_string();
    let mut runs: Vec<(&str, Vec<String>)> = vec![
        (
            "detect",
            ["detect", &image_arg, "--model", &model, "--rounds", "3"]
                .iter()
                .map(|s| s.to_string())
                .chain(python.then(|| "--python".to_string()))
                .collect(),
        ),
        (
            "embed",
            ["embed", &image_arg, "--batches", "1,8,32", "--tune"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        (
            "search",
            ["search", "--sizes", "10000,100000"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
    ];
    if let Some(v) = video {
        runs.push(("video", vec!["video".into(), v.display().to_string()]));
    }
    let mut combined = serde_json::Map::new();
    for (name, args) in runs {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--device", &request.to_string(), "bench"])
            .args(&args);
        if json {
            cmd.arg("--json");
            combined.insert(name.to_string(), run_json(cmd, &format!("bench {name}"))?);
        } else {
            println!("\n== arvis bench {} ==", args.join(" "));
            let status = cmd
                .status()
                .with_context(|| format!("running bench {name}"))?;
            anyhow::ensure!(status.success(), "bench {name} failed ({status})");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&combined)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Run an `arvis … --json` child (its progress on our stderr) and parse what it printed.
pub(crate) fn run_json(
    mut cmd: std::process::Command,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {what}"))?;
    anyhow::ensure!(out.status.success(), "{what} failed ({})", out.status);
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading {what}'s JSON"))
}

/// Expand and decode every input up front (benchmarks time inference, not the disk).
fn load_inputs(
    paths: &[PathBuf],
) -> anyhow::Result<(Vec<crate::source::files::Input>, Vec<image::RgbImage>)> {
    let loaded = decode_all(paths)?;
    anyhow::ensure!(!loaded.1.is_empty(), "no images to benchmark");
    Ok(loaded)
}

/// Expand files and folders into images and decode them all; the first failure is the error.
pub(crate) fn decode_all(
    paths: &[PathBuf],
) -> anyhow::Result<(Vec<crate::source::files::Input>, Vec<image::RgbImage>)> {
    let (inputs, _) = expand_inputs(paths);
    let images: Vec<_> = inputs
        .iter()
        .map(|i| {
            load_image(&i.path, DecodeLimits::default())
                .with_context(|| i.path.display().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((inputs, images))
}

struct DetectBenchOptions {
    rounds: usize,
    json: bool,
    python: bool,
    io_modes: bool,
}

fn bench_detect(
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
    let priority = PrefetchPriority::from_env().map_err(anyhow::Error::msg)?;
    let (mut detector, device) = super::load_detector(model, request)?;
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
        let (model_path, reference) = super::resolve_detector(model, device)?;
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
    let (path, name) = super::resolve_detector(model, device)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_picks_median_and_p95() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let st = stat(&s);
        assert_eq!(st.median_ms, 51.0);
        assert_eq!(st.p95_ms, 95.0);
    }
}

#[derive(Debug, Serialize)]
struct SearchBenchRow {
    vectors: usize,
    ef_search: usize,
    build_s: f64,
    build_vectors_per_s: f64,
    size_on_disk_mb: f64,
    rss_mb: f64,
    hnsw_p50_ms: f64,
    hnsw_p99_ms: f64,
    exact_p50_ms: f64,
    exact_p99_ms: f64,
    recall_at_10: f64,
}

/// Resident and peak memory of this process, MB (Linux; 0 elsewhere).
fn rss_mb() -> (f64, f64) {
    (
        proc_status_mb("VmRSS:").unwrap_or(0.0),
        proc_status_mb("VmHWM:").unwrap_or(0.0),
    )
}

/// The `q` quantile (0 to 1) of `samples`, nearest rank; 0 for no samples.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples
        .get(((samples.len().saturating_sub(1)) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Unit vectors around `centres` random cluster centres (images of a gallery cluster by content).
fn clustered(
    rng: &mut crate::models::generate::Rng,
    centres: &[f32],
    n: usize,
    dim: usize,
    spread: f32,
) -> Vec<f32> {
    let k = centres.len() / dim;
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = (rng.next_u64() % k as u64) as usize;
        let noise = rng.normals(dim, spread / (dim as f32).sqrt());
        let mut v: Vec<f32> = centres[c * dim..(c + 1) * dim]
            .iter()
            .zip(noise)
            .map(|(a, b)| a + b)
            .collect();
        crate::embed::l2_normalize(&mut v);
        out.extend(v);
    }
    out
}

fn bench_search(
    sizes: &[usize],
    queries: usize,
    dim: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::search::{Ann, exact_search};
    let mut rng = crate::models::generate::Rng(42);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    for &n in sizes {
        let mut centres = Vec::new();
        for _ in 0..(n / 100).max(10) {
            let mut c = rng.normals(dim, 1.0);
            crate::embed::l2_normalize(&mut c);
            centres.extend(c);
        }
        let matrix = clustered(&mut rng, &centres, n, dim, 0.6);
        let keys: Vec<u64> = (0..n as u64).collect();
        let t = Instant::now();
        let mut ann = Ann::new(dim)?;
        ann.add_parallel(&keys, &matrix, threads)?;
        let build_s = t.elapsed().as_secs_f64();
        let dir = tempfile_dir()?;
        let path = dir.join("bench.usearch");
        ann.save_atomic(&path)?;
        let size_on_disk_mb = std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1e6);
        let _ = std::fs::remove_dir_all(&dir);
        let (rss, _) = rss_mb();

        let qs = clustered(&mut rng, &centres, queries, dim, 0.6);
        // The exact answers once, then each ef_search on the same graph and queries.
        let mut exact = Vec::new();
        let truths: Vec<_> = qs
            .chunks_exact(dim)
            .map(|q| {
                let t = Instant::now();
                let truth = exact_search(&matrix, &keys, dim, q, 10);
                exact.push(t.elapsed().as_secs_f64() * 1e3);
                truth
            })
            .collect();
        let (exact_p50_ms, exact_p99_ms) =
            (percentile(&mut exact, 0.5), percentile(&mut exact, 0.99));
        for ef in [64, 128, 256] {
            ann.set_expansion_search(ef);
            let (mut hnsw, mut recall) = (Vec::new(), 0.0);
            for (q, truth) in qs.chunks_exact(dim).zip(&truths) {
                let t = Instant::now();
                let approx = ann.search(q, 10)?;
                hnsw.push(t.elapsed().as_secs_f64() * 1e3);
                let hits = approx
                    .iter()
                    .filter(|a| truth.iter().any(|t| t.key == a.key))
                    .count();
                recall += hits as f64 / truth.len().max(1) as f64;
            }
            rows.push(SearchBenchRow {
                vectors: n,
                ef_search: ef,
                build_s,
                build_vectors_per_s: n as f64 / build_s,
                size_on_disk_mb,
                rss_mb: rss,
                hnsw_p50_ms: percentile(&mut hnsw, 0.5),
                hnsw_p99_ms: percentile(&mut hnsw, 0.99),
                exact_p50_ms,
                exact_p99_ms,
                recall_at_10: recall / queries as f64,
            });
        }
        if !json {
            eprintln!("measured {n} vectors");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "arvis bench search: {dim}-d clustered unit vectors, HNSW (usearch, cosine, f16, M=16, ef_construction=128) vs exact scan, {queries} queries, {threads} build threads"
    );
    println!(
        "{:>9} {:>4} {:>9} {:>11} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8}",
        "vectors",
        "ef",
        "build s",
        "build vec/s",
        "disk MB",
        "RSS MB",
        "hnsw p50",
        "hnsw p99",
        "exact p50",
        "exact p99",
        "speed-up",
        "recall@10"
    );
    for r in &rows {
        println!(
            "{:>9} {:>4} {:>9.1} {:>11.0} {:>9.1} {:>9.0} {:>9.3}ms {:>9.3}ms {:>9.2}ms {:>9.2}ms {:>8.0}x {:>8.3}",
            r.vectors,
            r.ef_search,
            r.build_s,
            r.build_vectors_per_s,
            r.size_on_disk_mb,
            r.rss_mb,
            r.hnsw_p50_ms,
            r.hnsw_p99_ms,
            r.exact_p50_ms,
            r.exact_p99_ms,
            r.exact_p50_ms / r.hnsw_p50_ms.max(1e-9),
            r.recall_at_10
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("arvis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[derive(Debug, Serialize)]
struct EmbedBenchRow {
    batch: usize,
    images: usize,
    preprocess_ms_per_image: f64,
    session_ms_per_image: f64,
    end_to_end_images_per_s: f64,
    bare_images_per_s: f64,
    ratio_end_to_end_over_bare: f64,
    /// GPU memory this process holds after this batch size ran (None on the CPU).
    vram_mib: Option<u64>,
}

/// The full ViT-B/32 vision tower with random weights, generated into the cache once.
pub(crate) fn generated_vit_b32() -> anyhow::Result<PathBuf> {
    use crate::models::generate::{ClipConfig, clip_vision};
    let path = crate::paths::cache_dir()
        .join("generated")
        .join("clip-vit-b32-random-vision.onnx");
    if !path.is_file() {
        eprintln!(
            "generating the ViT-B/32 architecture with random weights (benchmark only) into {}",
            path.display()
        );
        std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
        crate::search::write_atomic(&path, &clip_vision(&ClipConfig::VIT_B32, 1).to_bytes())?;
    }
    Ok(path)
}

fn bench_embed(
    inputs: &[PathBuf],
    clip_model: Option<String>,
    batches: &[usize],
    count: usize,
    tune: bool,
    json: bool,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    use crate::embed::preprocess::CLIP_TENSOR_LEN;
    let (_, images) = load_inputs(inputs)?;
    let model = match clip_model {
        Some(m) => m,
        None => generated_vit_b32()?.display().to_string(),
    };
    let clip = super::clip::ClipArgs {
        clip_model: Some(model.clone()),
        clip_text_model: None,
    };
    let mut loaded = clip.load_image_encoder(request)?;
    let enc = &mut loaded.encoder;
    let mut rows = Vec::new();
    for &batch in batches {
        let batch = batch.clamp(1, enc.max_batch);
        let pool: Vec<&image::RgbImage> = images.iter().cycle().take(count.max(batch)).collect();
        enc.embed(&pool[..batch])?; // warm-up at this shape
        // End to end: preprocess + run, as `arvis index add` does.
        let t = Instant::now();
        let mut pre_ms = 0.0;
        let mut run_ms = 0.0;
        let mut tensor = vec![0f32; batch * CLIP_TENSOR_LEN];
        for chunk in pool.chunks(batch) {
            let t0 = Instant::now();
            for (img, slot) in chunk.iter().zip(tensor.chunks_exact_mut(CLIP_TENSOR_LEN)) {
                crate::embed::clip_preprocess_into(img, slot);
            }
            pre_ms += t0.elapsed().as_secs_f64() * 1e3;
            let t1 = Instant::now();
            enc.run(&tensor[..chunk.len() * CLIP_TENSOR_LEN], chunk.len())?;
            run_ms += t1.elapsed().as_secs_f64() * 1e3;
        }
        let e2e_s = t.elapsed().as_secs_f64();
        // Reference: bare session.run on the already-preprocessed tensor, same batches.
        let t = Instant::now();
        for chunk in pool.chunks(batch) {
            enc.run(&tensor[..chunk.len() * CLIP_TENSOR_LEN], chunk.len())?;
        }
        let bare_s = t.elapsed().as_secs_f64();
        let n = pool.len() as f64;
        rows.push(EmbedBenchRow {
            batch,
            images: pool.len(),
            preprocess_ms_per_image: pre_ms / n,
            session_ms_per_image: run_ms / n,
            end_to_end_images_per_s: n / e2e_s,
            bare_images_per_s: n / bare_s,
            ratio_end_to_end_over_bare: e2e_s / bare_s,
            vram_mib: vram_used_mib(),
        });
    }
    let tuned = if tune {
        let tried = enc.tune_batch(&[1, 2, 4, 8, 16, 32, 64, 128, 256])?;
        Some((enc.batch, tried))
    } else {
        None
    };
    if json {
        let tuned_json = tuned.as_ref().map(|(best, tried)| {
            serde_json::json!({
                "chosen_batch": best,
                "tried": tried.iter().map(|(b, r)| serde_json::json!({"batch": b, "images_per_s": r})).collect::<Vec<_>>(),
            })
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "rows": rows,
                "tuning": tuned_json,
                "peak_rss_mb": peak_rss_mb(),
                "vram_used_mib": vram_used_mib(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some((best, tried)) = &tuned {
        let list: Vec<String> = tried
            .iter()
            .map(|(b, r)| format!("{b}: {r:.1}/s"))
            .collect();
        println!(
            "batch auto-tuning (bare session.run): {} → batch {best}",
            list.join(", ")
        );
    }
    println!("arvis bench embed: {model}");
    println!(
        "{:>6} {:>7} {:>14} {:>12} {:>12} {:>12} {:>8} {:>9}",
        "batch",
        "images",
        "preprocess ms",
        "session ms",
        "e2e img/s",
        "bare img/s",
        "ratio",
        "VRAM MiB"
    );
    for r in &rows {
        println!(
            "{:>6} {:>7} {:>14.2} {:>12.2} {:>12.1} {:>12.1} {:>8.3} {:>9}",
            r.batch,
            r.images,
            r.preprocess_ms_per_image,
            r.session_ms_per_image,
            r.end_to_end_images_per_s,
            r.bare_images_per_s,
            r.ratio_end_to_end_over_bare,
            r.vram_mib.map_or("-".into(), |m| m.to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}
