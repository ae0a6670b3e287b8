//! `arvis demo`: the app on a short clip with a small gallery, offline once the models are
//! present. The gallery images ship inside the binary (public domain / CC0, see
//! assets/demo/ATTRIBUTION.md); the clip is made from them on first run and the gallery index
//! is built with the CLIP model in use.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use image::{Rgb, RgbImage};

use super::clip::ClipArgs;
use crate::app::AppOptions;
use crate::runtime::DeviceRequest;
use crate::search::{GalleryIndex, GalleryLocation, IngestObserver, add_to_index, store};
use crate::sink::VideoWriter;

/// The demo gallery, embedded so the demo works from any install.
const IMAGES: [(&str, &[u8]); 4] = [
    (
        "astronaut.jpg",
        include_bytes!("../../assets/demo/astronaut.jpg"),
    ),
    (
        "chelsea_cat.jpg",
        include_bytes!("../../assets/demo/chelsea_cat.jpg"),
    ),
    ("coffee.jpg", include_bytes!("../../assets/demo/coffee.jpg")),
    ("rocket.jpg", include_bytes!("../../assets/demo/rocket.jpg")),
];

/// Clip geometry: each image is shown for `SECONDS_EACH` with a slow zoom.
const CLIP_SIZE: (u32, u32) = (960, 540);
const FPS: i32 = 24;
const SECONDS_EACH: u32 = 3;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Detector: a manifest id or an .onnx path.
    #[arg(long, env = crate::settings::var::DETECTOR)]
    pub model: Option<String>,
    #[command(flatten)]
    pub clip: ClipArgs,
    /// The gallery the demo's images are added to and matched against: a directory or a
    /// catalogue URL (default: the demo's own index, rebuilt when the CLIP model changes).
    #[arg(long, value_name = "DIR|URL")]
    pub index: Option<std::ffi::OsString>,
    /// Prepare the clip and the gallery index, print where they are, and exit.
    #[arg(long)]
    pub prepare_only: bool,
    #[command(flatten)]
    pub scripted: super::app::ScriptedArgs,
}

pub fn run(args: DemoArgs, device: DeviceRequest) -> anyhow::Result<ExitCode> {
    let dir = crate::paths::data_dir().join("demo");
    let index = match &args.index {
        Some(v) => GalleryLocation::parse(v)?,
        None => GalleryLocation::Dir(dir.join("index")),
    };
    let own = args.index.is_none();
    let clip = prepare(&dir, &index, own, &args.clip, device)?;
    if args.prepare_only {
        println!("clip:  {}", clip.display());
        println!("index: {index}");
        return Ok(ExitCode::SUCCESS);
    }
    let loaders = crate::app::loaders(args.model, args.clip.models(), device);
    crate::app::run(
        loaders,
        AppOptions {
            sources: vec![clip.display().to_string()],
            index: Some(PathBuf::from(index.arg())),
            gallery_images: None,
            screenshot: args.scripted.screenshot,
            exit_after_frames: args.scripted.exit_after_frames,
            fresh_settings: false,
            every_frame: args.scripted.every_frame,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Write the gallery images, make the clip and build the index where missing.
fn prepare(
    dir: &Path,
    index: &GalleryLocation,
    own: bool,
    clip: &ClipArgs,
    device: DeviceRequest,
) -> anyhow::Result<PathBuf> {
    let gallery = dir.join("gallery");
    std::fs::create_dir_all(&gallery).with_context(|| format!("creating {}", gallery.display()))?;
    let mut paths = Vec::new();
    for (name, bytes) in IMAGES {
        let path = gallery.join(name);
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
            crate::util::write_atomic(&path, bytes)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        paths.push(path);
    }

    let clip_path = dir.join("arvis-demo.mp4");
    if !clip_path.is_file() {
        eprintln!("arvis demo: making the demo clip…");
        let tmp = dir.join("arvis-demo.partial.mp4");
        make_clip(&tmp).context("making the demo clip")?;
        std::fs::rename(&tmp, &clip_path)
            .with_context(|| format!("saving {}", clip_path.display()))?;
    }

    // Matches need CLIP; without it the demo still plays, and says why matches are missing.
    match build_index(index, own, &paths, clip, device) {
        Ok(0) => {}
        Ok(n) => eprintln!("arvis demo: indexed {n} gallery image(s)"),
        Err(e) => eprintln!(
            "warning: the demo gallery could not be indexed, so no matches will show: {e:#}"
        ),
    }
    Ok(clip_path)
}

fn build_index(
    index: &GalleryLocation,
    own: bool,
    paths: &[PathBuf],
    clip: &ClipArgs,
    device: DeviceRequest,
) -> anyhow::Result<usize> {
    let mut loaded = clip.load_image_encoder(device)?;
    // The demo's own index, made with another CLIP model, is rebuilt rather than refused (a
    // gallery the user named is never deleted: its mismatch is reported).
    if own
        && let GalleryLocation::Dir(dir) = index
        && GalleryIndex::exists(dir)
        && store::open(index, &loaded.meta).is_err()
    {
        std::fs::remove_dir_all(dir).with_context(|| format!("resetting {}", dir.display()))?;
    }
    struct Demo;
    impl IngestObserver for Demo {
        fn waiting(&mut self) {
            eprintln!("arvis demo: waiting for another arvis writing to the demo gallery…");
        }
        fn skipped(&mut self, path: &Path, why: &str) {
            eprintln!("{}: skipped: {why}", path.display());
        }
    }
    let report = add_to_index(
        index,
        &loaded.meta,
        &mut loaded.encoder,
        &crate::search::ingest::ToAdd::unlabelled(paths),
        &mut Demo,
    )?;
    Ok(report.added)
}

/// Each gallery image in turn, fitted into the frame and slowly zoomed, on a dark background.
fn make_clip(path: &Path) -> anyhow::Result<()> {
    let (w, h) = CLIP_SIZE;
    let mut writer = VideoWriter::create(path, CLIP_SIZE, (1, FPS), (FPS, 1))?;
    let per_image = SECONDS_EACH * FPS as u32;
    let mut pts = 0i64;
    for (name, bytes) in IMAGES {
        let img = image::load_from_memory(bytes)
            .with_context(|| format!("decoding the built-in {name}"))?
            .to_rgb8();
        let fit =
            (f64::from(w) / f64::from(img.width())).min(f64::from(h) / f64::from(img.height()));
        for n in 0..per_image {
            let zoom = 0.85 + 0.15 * f64::from(n) / f64::from(per_image);
            let (sw, sh) = (
                ((f64::from(img.width()) * fit * zoom).round() as u32).clamp(1, w),
                ((f64::from(img.height()) * fit * zoom).round() as u32).clamp(1, h),
            );
            let scaled =
                image::imageops::resize(&img, sw, sh, image::imageops::FilterType::Triangle);
            let mut frame = RgbImage::from_pixel(w, h, Rgb([24, 24, 28]));
            image::imageops::overlay(
                &mut frame,
                &scaled,
                i64::from((w - sw) / 2),
                i64::from((h - sh) / 2),
            );
            writer.write(&frame, pts)?;
            pts += 1;
        }
    }
    writer.finish()?;
    Ok(())
}
