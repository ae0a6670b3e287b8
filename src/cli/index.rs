//! `arvis index`: build and maintain a gallery index.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use anyhow::Context;
use clap::Subcommand;
use image::RgbImage;

use super::clip::{ClipArgs, IndexArg};
use super::detect::expand_inputs;
use crate::runtime::DeviceRequest;
use crate::search::{GalleryIndex, NewItem};
use crate::source::{DecodeLimits, load_image};

/// Thumbnail long side in pixels.
const THUMBNAIL_PX: u32 = 160;

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Add images (files or folders, recursively); unchanged files are skipped, changed ones re-embedded.
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        index: IndexArg,
        #[command(flatten)]
        clip: ClipArgs,
    },
    /// Count, model, dimensions and size on disk.
    Stats {
        #[command(flatten)]
        index: IndexArg,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove images from the index (by path).
    Rm {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        index: IndexArg,
    },
    /// Drop entries whose files no longer exist.
    Prune {
        #[command(flatten)]
        index: IndexArg,
    },
}

pub fn run(cmd: IndexCommand, device: DeviceRequest) -> anyhow::Result<ExitCode> {
    match cmd {
        IndexCommand::Add { paths, index, clip } => add(&paths, &index.dir(), &clip, device),
        IndexCommand::Stats { index, json } => {
            let s = GalleryIndex::open_any(&index.dir())?.stats()?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("index:      {}", s.dir);
                println!("images:     {}", s.count);
                println!(
                    "model:      {} (preprocessing v{})",
                    s.model_id, s.preprocess_version
                );
                println!("dimensions: {}", s.dim);
                println!("on disk:    {:.1} MB", s.bytes_on_disk as f64 / 1e6);
            }
            Ok(ExitCode::SUCCESS)
        }
        IndexCommand::Rm { paths, index } => {
            let mut idx = GalleryIndex::open_any(&index.dir())?;
            let mut missing = 0;
            for p in &paths {
                let key = canonical_key(p);
                if idx.remove(&key)? {
                    println!("removed {key}");
                } else {
                    missing += 1;
                    eprintln!("not in the index: {}", p.display());
                }
            }
            idx.save()?;
            Ok(if missing > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        IndexCommand::Prune { index } => {
            let mut idx = GalleryIndex::open_any(&index.dir())?;
            let gone: Vec<String> = idx
                .paths()?
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .collect();
            for p in &gone {
                idx.remove(p)?;
            }
            idx.save()?;
            println!(
                "pruned {} missing file(s); {} remain",
                gone.len(),
                idx.len()?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The key an image is stored under: its canonical absolute path.
pub fn canonical_key(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
        .display()
        .to_string()
}

fn file_identity(path: &Path) -> std::io::Result<(u64, i64)> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    Ok((meta.len(), mtime))
}

fn thumbnail_jpeg(img: &RgbImage) -> Vec<u8> {
    let scale = (f64::from(THUMBNAIL_PX) / f64::from(img.width().max(img.height()))).min(1.0);
    let w = ((f64::from(img.width()) * scale).round() as u32).max(1);
    let h = ((f64::from(img.height()) * scale).round() as u32).max(1);
    let thumb = image::imageops::thumbnail(img, w, h);
    let mut out = Vec::new();
    // A thumbnail that fails to encode is only cosmetic: store none rather than fail the add.
    let _ = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&thumb);
    out
}

fn add(
    paths: &[PathBuf],
    dir: &Path,
    clip: &ClipArgs,
    device: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let (inputs, skipped_other) = expand_inputs(paths);
    let mut loaded = clip.load_image_encoder(device)?;
    let mut index = GalleryIndex::open_or_create(dir, &loaded.meta)?;
    index.prepare_ann()?;

    // Decide what needs embedding: new files, and files whose size or mtime changed.
    let mut todo = Vec::new();
    let (mut unchanged, mut failed) = (0usize, 0usize);
    for input in inputs {
        let key = canonical_key(&input.path);
        match file_identity(&input.path) {
            Ok(id) if index.lookup(&key)? == Some(id) => unchanged += 1,
            Ok(id) => todo.push((input.path, key, id)),
            Err(e) => {
                failed += 1;
                eprintln!("{}: error: {e}", input.path.display());
            }
        }
    }
    eprintln!(
        "indexing {} image(s) into {} ({unchanged} unchanged, {skipped_other} non-image file(s) skipped)",
        todo.len(),
        dir.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ctrl-C finishes the batch in flight, commits it and saves: the index stays consistent and resumes.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    // Test hook: abort (no unwinding, no cleanup) after N committed batches, as a kill would.
    let abort_after: Option<usize> = std::env::var("ARVIS_TEST_ABORT_AFTER_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok());

    let bar = crate::progress::items_bar(todo.len() as u64, "images");
    let batch = loaded.encoder.max_batch.clamp(1, 16);
    let mut added = 0usize;
    for (n, chunk) in todo.chunks(batch).enumerate() {
        let mut images = Vec::with_capacity(chunk.len());
        for (path, key, id) in chunk {
            match load_image(path, DecodeLimits::default()) {
                Ok(img) => images.push((key.clone(), *id, img)),
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("{}: skipped: {e}", path.display()));
                }
            }
            bar.inc(1);
        }
        if !images.is_empty() {
            let refs: Vec<&RgbImage> = images.iter().map(|(_, _, img)| img).collect();
            let embeddings = loaded.encoder.embed(&refs)?;
            let items: Vec<NewItem> = images
                .iter()
                .zip(embeddings)
                .map(|((key, (size, mtime), img), embedding)| NewItem {
                    path: key.clone(),
                    size: *size,
                    mtime_ns: *mtime,
                    embedding,
                    thumbnail: thumbnail_jpeg(img),
                })
                .collect();
            index.upsert_batch(&items)?;
            added += items.len();
        }
        if abort_after == Some(n + 1) {
            std::process::abort();
        }
        if stop.load(Ordering::SeqCst) {
            bar.suspend(|| eprintln!("interrupted: saving what was indexed so far; run the same command again to resume"));
            break;
        }
    }
    bar.finish_and_clear();
    index.save().context("saving the vector index")?;
    println!(
        "indexed {added} image(s), {unchanged} unchanged, {failed} failed; {} in {}",
        index.len()?,
        dir.display()
    );
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
