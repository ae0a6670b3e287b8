//! `arvis index`: build and maintain a gallery index.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Subcommand;

use super::clip::{ClipArgs, IndexArg};
use super::detect::expand_inputs;
use crate::paths::display_path;
use crate::runtime::DeviceRequest;
use crate::search::{GalleryIndex, canonical_key, ingest};

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
            let mut idx = GalleryIndex::open_any_for_writing(&index.dir())?;
            let _lock = idx.lock_for_writing(&mut || wait_message(&index.dir()))?;
            let mut missing = 0;
            for p in &paths {
                let key = canonical_key(p);
                if idx.remove(&key)? {
                    println!("removed {}", display_path(&key));
                } else {
                    missing += 1;
                    eprintln!("not in the index: {}", display_path(p));
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
            let mut idx = GalleryIndex::open_any_for_writing(&index.dir())?;
            let _lock = idx.lock_for_writing(&mut || wait_message(&index.dir()))?;
            let gone: Vec<PathBuf> = idx.paths()?.into_iter().filter(|p| !p.exists()).collect();
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

fn wait_message(dir: &Path) {
    eprintln!(
        "another arvis is writing to {}; waiting for it to finish…",
        dir.display()
    );
}

fn add(
    paths: &[PathBuf],
    dir: &Path,
    clip: &ClipArgs,
    device: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let (inputs, skipped_other) = expand_inputs(paths);
    let inputs: Vec<PathBuf> = inputs.into_iter().map(|i| i.path).collect();
    let mut loaded = clip.load_image_encoder(device)?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ctrl-C finishes the batch in flight, commits it and saves: the index stays consistent and resumes.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let mut terminal = Terminal {
        dir,
        skipped_other,
        bar: indicatif::ProgressBar::hidden(),
        stop,
        batches: 0,
        // Test hooks (crate::fault): a kill, or a real SIGINT, after the Nth committed batch.
        hooks: crate::fault::BatchHooks::from_env(),
    };
    let report = ingest::add_to_index(
        dir,
        &loaded.meta,
        &mut loaded.encoder,
        &inputs,
        &mut terminal,
    )?;
    terminal.bar.finish_and_clear();
    println!(
        "indexed {} image(s), {} unchanged, {} failed; {} in {}",
        report.added,
        report.unchanged,
        report.failed,
        report.total,
        dir.display()
    );
    // With ARVIS_LOG=arvis=info: the peak memory, which must not grow with the photos' size.
    tracing::info!(
        peak_rss_mb = crate::bench::peak_rss_mb().unwrap_or(0.0),
        "index add finished"
    );
    let (interrupted, failed, todo, processed) = (
        report.stopped,
        report.failed,
        report.planned,
        report.processed,
    );
    if interrupted {
        eprintln!(
            "interrupted: {} image(s) not indexed yet; what was indexed is saved. Run the same command again to add the rest",
            todo - processed
        );
        return Ok(ExitCode::from(130));
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `index add`'s view of the ingestion job: a progress bar, errors on stderr, Ctrl-C.
struct Terminal<'a> {
    dir: &'a Path,
    skipped_other: usize,
    bar: indicatif::ProgressBar,
    stop: Arc<AtomicBool>,
    batches: usize,
    hooks: crate::fault::BatchHooks,
}

impl ingest::IngestObserver for Terminal<'_> {
    fn waiting(&mut self) {
        wait_message(self.dir);
    }

    fn planned(&mut self, plan: &ingest::Plan) {
        for (path, e) in &plan.failed {
            eprintln!("{}: error: {e}", display_path(path));
        }
        eprintln!(
            "indexing {} image(s) into {} ({} unchanged, {} non-image file(s) skipped)",
            plan.todo.len(),
            self.dir.display(),
            plan.unchanged,
            self.skipped_other
        );
        self.bar = crate::progress::items_bar(plan.todo.len() as u64, "images");
    }

    fn skipped(&mut self, path: &Path, why: &str) {
        self.bar
            .suspend(|| eprintln!("{}: skipped: {why}", display_path(path)));
    }

    fn committed(&mut self, done: usize, _added: usize) -> std::ops::ControlFlow<()> {
        self.bar.set_position(done as u64);
        self.batches += 1;
        self.hooks.after_batch(self.batches, &self.stop);
        if self.stop.load(Ordering::SeqCst) {
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    }
}
