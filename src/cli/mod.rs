//! Command-line edge: argument parsing, user-facing output, exit codes. Errors become `anyhow` here.

#[cfg(feature = "gui")]
mod app;
mod args;
mod bench;
pub(crate) mod clip;
mod convert;
#[cfg(all(feature = "gui", feature = "video"))]
mod demo;
pub(crate) mod detect;
mod doctor;
mod index;
mod models;
pub(crate) mod search;
#[cfg(feature = "video")]
mod video;
#[cfg(feature = "video")]
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::runtime::DeviceRequest;

// Model loading is library policy (crate::load); the commands call it through these names.
pub(crate) use crate::load::{
    load_detector, load_threaded_detector, on_device, resolve_detector_cached,
};

/// arvis: live object detection matched against your own image gallery.
#[derive(Debug, Parser)]
#[command(name = "arvis", version, about, long_about = None)]
pub struct Cli {
    /// Where models run: auto, cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto", env = crate::settings::var::DEVICE)]
    pub device: DeviceRequest,
    /// The command; none opens the app.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
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
    /// Watch cameras, streams and videos without a window: JSON Lines records, track events
    /// and stats.
    #[cfg(feature = "video")]
    Watch(watch::WatchArgs),
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
    // The tuning switches, read once: a bad value stops every command but `doctor`, which
    // lists it among its problems.
    let settings = crate::settings::Settings::from_env();
    let result = match &settings {
        Ok(s) => dispatch(cli, Ok(crate::settings::install(s.clone()))),
        Err(e) if matches!(cli.command, Some(Command::Doctor)) => dispatch(cli, Err(e)),
        Err(e) => Err(anyhow::anyhow!(
            "{e}. Fix: correct or unset the variable (`arvis doctor` lists every setting)"
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Run the command; `settings` is only an error for `doctor`, which reports it.
fn dispatch(
    cli: Cli,
    settings: Result<&crate::settings::Settings, &crate::settings::SettingsError>,
) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Detect(args)) => detect::run(args, cli.device),
        Some(Command::Models(cmd)) => models::run(cmd, cli.device),
        Some(Command::Index(cmd)) => index::run(cmd, cli.device),
        Some(Command::Search(args)) => search::run(args, cli.device),
        #[cfg(feature = "video")]
        Some(Command::Video(args)) => video::run(args, cli.device),
        #[cfg(feature = "video")]
        Some(Command::Watch(args)) => watch::run(args, cli.device),
        #[cfg(all(feature = "gui", feature = "video"))]
        Some(Command::Demo(args)) => demo::run(args, cli.device),
        Some(Command::Doctor) => doctor::run(cli.device, settings),
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
    }
}

/// Microsoft's ONNX Runtime builds keep a usage-event store (model metadata, run counts) under
/// ~/.cache/Microsoft for upload. A local vision app sends nothing anywhere, and the store's
/// fsyncs cost start-up and exit time. The library reads this variable when it loads; a value
/// the user set is respected.
/// A flag that Ctrl-C (or SIGTERM) sets: long commands finish what is in hand, save and stop
/// cleanly instead of dying mid-write.
fn stop_on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    stop
}

fn opt_out_of_ort_telemetry() {
    const VAR: &str = crate::settings::var::ORT_DISABLE_TELEMETRY;
    if std::env::var_os(VAR).is_none() {
        // SAFETY: called first thing in main, before any thread exists that could read the
        // environment concurrently.
        unsafe { std::env::set_var(VAR, "1") };
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // Quiet by default: ONNX Runtime logs a lot at info level. ARVIS_LOG=info (or debug) shows more.
    let filter = EnvFilter::try_from_env(crate::settings::var::LOG)
        .unwrap_or_else(|_| EnvFilter::new("warn,ort=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .try_init();
}
