//! Command-line edge: argument parsing, user-facing output, exit codes. Errors become `anyhow` here.

#[cfg(feature = "gui")]
mod app;
mod args;
mod bench;
mod bench_switches;
mod bench_video;
pub(crate) mod clip;
mod convert;
#[cfg(all(feature = "gui", feature = "video"))]
mod demo;
pub(crate) mod detect;
mod doctor;
mod index;
mod models;
mod reference;
pub(crate) mod search;
#[cfg(feature = "video")]
mod video;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::detect::Detector;
use crate::runtime::{Device, DeviceRequest, Runtime};

/// arvis: live object detection matched against your own image gallery.
#[derive(Debug, Parser)]
#[command(name = "arvis", version, about, long_about = None)]
pub struct Cli {
    /// Where models run: auto, cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto", env = "ARVIS_DEVICE")]
    pub device: DeviceRequest,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the desktop app (the default when no command is given).
    #[cfg(feature = "gui")]
    App(app::AppArgs),
    /// Detect objects in images (files or directories).
    Detect(detect::DetectArgs),
    /// List, fetch and verify models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Build and maintain the visual-search gallery index.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Open the app on a short demo clip with a small gallery (works offline once models are present).
    #[cfg(all(feature = "gui", feature = "video"))]
    Demo(demo::DemoArgs),
    /// Process a video headless: detect, track, match; write an annotated MP4 and JSON Lines.
    #[cfg(feature = "video")]
    Video(video::VideoArgs),
    /// Find the gallery images most similar to query images or texts.
    Search(search::SearchArgs),
    /// Check the installation: ONNX Runtime, execution providers, models, cameras, GPUs.
    Doctor,
    /// Measure speed against a reference in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    opt_out_of_ort_telemetry();
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Detect(args)) => detect::run(args, cli.device),
        Some(Command::Models(cmd)) => models::run(cmd, cli.device),
        Some(Command::Index(cmd)) => index::run(cmd, cli.device),
        Some(Command::Search(args)) => search::run(args, cli.device),
        #[cfg(feature = "video")]
        Some(Command::Video(args)) => video::run(args, cli.device),
        #[cfg(all(feature = "gui", feature = "video"))]
        Some(Command::Demo(args)) => demo::run(args, cli.device),
        Some(Command::Doctor) => doctor::run(cli.device),
        Some(Command::Bench(cmd)) => bench::run(cmd, cli.device),
        #[cfg(feature = "gui")]
        Some(Command::App(args)) => app::run(args, cli.device),
        #[cfg(feature = "gui")]
        None => app::run(app::AppArgs::default(), cli.device),
        #[cfg(not(feature = "gui"))]
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Microsoft's ONNX Runtime builds keep a usage-event store (model metadata, run counts) under
/// ~/.cache/Microsoft for upload. A local vision app sends nothing anywhere, and the store's
/// fsyncs cost start-up and exit time. The library reads this variable when it loads; a value
/// the user set is respected.
fn opt_out_of_ort_telemetry() {
    const VAR: &str = "ORT_DISABLE_TELEMETRY";
    if std::env::var_os(VAR).is_none() {
        // SAFETY: called first thing in main, before any thread exists that could read the
        // environment concurrently.
        unsafe { std::env::set_var(VAR, "1") };
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // Quiet by default: ONNX Runtime logs a lot at info level. ARVIS_LOG=info (or debug) shows more.
    let filter =
        EnvFilter::try_from_env("ARVIS_LOG").unwrap_or_else(|_| EnvFilter::new("warn,ort=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .try_init();
}

/// Run `load` on the requested device. `auto` falls back to the CPU with a visible warning when
/// anything about the GPU attempt fails (runtime, provider registration, session); an explicit
/// `cuda` never falls back.
pub(crate) fn on_device<T>(
    request: DeviceRequest,
    load: impl Fn(&'static Runtime, Device) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Device)> {
    let device = request.resolve();
    let attempt = |device: Device| load(Runtime::get(device.flavor())?, device);
    match attempt(device) {
        Ok(t) => Ok((t, device)),
        Err(e) if request == DeviceRequest::Auto && device != Device::Cpu => {
            eprintln!("warning: CUDA unavailable ({e:#}); running on the CPU");
            attempt(Device::Cpu).map(|t| (t, Device::Cpu))
        }
        Err(e) => Err(e.context(format!("on {device}"))),
    }
}

/// The detector's file and display name (a manifest id or a path; the device's default when `None`).
pub(crate) fn resolve_detector(
    model: Option<&str>,
    device: Device,
) -> anyhow::Result<(std::path::PathBuf, String)> {
    let manifest = crate::models::manifest()?;
    let (path, spec) = match (model, device, &manifest.defaults.detector_cuda) {
        (Some(named), _, _) => crate::models::resolve_model(named)?,
        (None, Device::Cuda(_), Some(cuda)) => match crate::models::resolve_model(cuda) {
            Ok(found) => found,
            Err(e) => {
                eprintln!(
                    "warning: the CUDA default detector {cuda} is unavailable ({e:#}); using {}, whose int8 layers run on the CPU",
                    manifest.defaults.detector
                );
                crate::models::resolve_model(&manifest.defaults.detector)?
            }
        },
        (None, _, _) => crate::models::resolve_model(&manifest.defaults.detector)?,
    };
    let name = spec.map_or_else(|| path.display().to_string(), |s| s.id.clone());
    Ok((path, name))
}

/// The default detector for `device` if it is already in the cache (never downloads).
pub(crate) fn resolve_detector_cached(
    device: Device,
) -> anyhow::Result<(std::path::PathBuf, String)> {
    let manifest = crate::models::manifest()?;
    let id = match (device, &manifest.defaults.detector_cuda) {
        (Device::Cuda(_), Some(cuda)) => cuda.clone(),
        _ => manifest.defaults.detector.clone(),
    };
    let spec = manifest
        .get(&id)
        .ok_or_else(|| anyhow::anyhow!("{id} is not in the manifest"))?;
    let path = crate::models::models_dir().join(&spec.file);
    anyhow::ensure!(path.is_file(), "{id} is not cached");
    Ok((path, id))
}

/// Load the detector (a manifest id or a path) on the requested device.
pub(crate) fn load_detector(
    model: Option<&str>,
    request: DeviceRequest,
) -> anyhow::Result<(Detector, Device)> {
    on_device(request, |runtime, device| {
        let (path, name) = resolve_detector(model, device)?;
        Detector::load(runtime, &path, &name, device)
            .with_context(|| format!("loading detector {name}"))
    })
}

/// Load the detector for a front end that runs it beside other threads (the app, `arvis video`,
/// `bench video`). CUDA graph capture needs the device to itself while it records, which those
/// threads cannot promise: graph mode is refused there with the mode that works instead.
pub(crate) fn load_threaded_detector(
    model: Option<&str>,
    request: DeviceRequest,
    front_end: &str,
) -> anyhow::Result<(Detector, Device)> {
    let (detector, device) = load_detector(model, request)?;
    if detector.io_mode() == crate::detect::IoMode::Graph {
        anyhow::bail!(
            "ARVIS_DETECTOR_IO=graph cannot be used by {front_end}: CUDA graph capture needs the GPU to itself while it records, and {front_end} runs the detector beside other threads. Fix: use ARVIS_DETECTOR_IO=bound (the CUDA default) here; graphs are for `arvis detect` and `arvis bench detect`"
        );
    }
    Ok((detector, device))
}
