//! `arvis app` (and `arvis` alone): the desktop window.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::clip::ClipArgs;
use crate::app::AppOptions;
use crate::runtime::DeviceRequest;

#[derive(Debug, Default, Args)]
pub struct AppArgs {
    /// What to open: `camera`, `camera:N`, a stream URL (`rtsp://`, `http(s)://`, `udp://`,
    /// `srt://`), or a video or image file (default: the last one). Given more than once, the
    /// sources are shown side by side in a grid, all served by one detector.
    #[arg(long, value_name = "camera[:N]|URL|PATH")]
    pub source: Vec<String>,
    /// The gallery to match regions against: an index directory or a shared catalogue,
    /// `postgres://user@host/db[?catalogue=NAME]` (default: the last one used).
    #[arg(long, env = crate::settings::var::INDEX, value_name = "DIR|URL")]
    pub index: Option<PathBuf>,
    /// Detector: a manifest id or an .onnx path.
    #[arg(long, env = crate::settings::var::DETECTOR)]
    pub model: Option<String>,
    #[command(flatten)]
    pub clip: ClipArgs,
    #[command(flatten)]
    pub scripted: ScriptedArgs,
    /// Start from default settings instead of the saved ones.
    #[arg(long)]
    pub fresh: bool,
}

/// Scripted runs of the window (shared by `app` and `demo`).
#[derive(Debug, Default, Args)]
pub struct ScriptedArgs {
    /// Save a screenshot of the window here once frames with detections are shown.
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
    /// Quit after this many frames with detections (for scripted runs).
    #[arg(long, value_name = "N")]
    pub exit_after_frames: Option<u64>,
    /// Process every frame of a video in order, none dropped: it plays slower than real time
    /// when detection is slower than the video (the same records as `arvis video`).
    #[arg(long)]
    pub every_frame: bool,
}

pub fn run(args: AppArgs, device: DeviceRequest) -> anyhow::Result<ExitCode> {
    let loaders = crate::app::loaders(args.model, args.clip.models(), device);
    crate::app::run(
        loaders,
        AppOptions {
            sources: args.source,
            index: args.index,
            gallery_images: None,
            screenshot: args.scripted.screenshot,
            exit_after_frames: args.scripted.exit_after_frames,
            fresh_settings: args.fresh,
            every_frame: args.scripted.every_frame,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
