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
use crate::search::items::label_from_stem;
use crate::search::{GalleryLocation, canonical_key, ingest, store};

/// Where an added image's item label comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelFrom {
    /// The file's name without its extension (`red-mug.jpg` → `red-mug`).
    Stem,
    /// The folder the file is in (`gallery/red-mug/1.jpg` → `red-mug`).
    Folder,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Add images (files or folders, recursively) to the gallery, as items.
    ///
    /// Unchanged files are skipped, changed ones re-embedded. Each image belongs to an item: by
    /// default named by its file stem; with `--label-from folder` by its folder
    /// (`gallery/red-mug/*.jpg` → item `red-mug`); with `--label` all of them to one item. An
    /// unchanged image given a new label moves to it.
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Name each image's item after its file stem or its folder.
        #[arg(long, value_enum, conflicts_with = "label")]
        label_from: Option<LabelFrom>,
        /// Put every image into this item (any text; not empty).
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        index: IndexArg,
        #[command(flatten)]
        clip: ClipArgs,
    },
    /// List the items: label, image count, text prompts, and the image their thumbnail shows.
    Items {
        #[command(flatten)]
        index: IndexArg,
        /// One JSON object per item.
        #[arg(long)]
        json: bool,
    },
    /// Move indexed images into item NAME (created if new).
    Label {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The item.
        #[arg(long = "set", value_name = "NAME")]
        set: String,
        #[command(flatten)]
        index: IndexArg,
    },
    /// Rename an item (if NEW exists, the two become one).
    Rename {
        old: String,
        new: String,
        #[command(flatten)]
        index: IndexArg,
    },
    /// Define an item by text (CLIP's text encoder).
    ///
    /// The prompt is embedded as given and in a few phrasings ("a photo of …") and averaged.
    /// Regions are compared to it with its own threshold (--text-threshold): image-to-text
    /// scores run far lower than image-to-image.
    AddText {
        /// What the item looks like, e.g. "a red fire extinguisher".
        prompt: String,
        /// The item (default: the prompt itself). More prompts for one label are averaged.
        #[arg(long)]
        label: Option<String>,
        /// Use a text model whose pairing with the index's image model cannot be checked.
        #[arg(long)]
        trust_text_model: bool,
        #[command(flatten)]
        index: IndexArg,
        #[command(flatten)]
        clip: ClipArgs,
    },
    /// Measure the item threshold and margin from the gallery itself.
    ///
    /// Leave-one-out over items with at least 2 images. Prints the score distributions and
    /// suggests both (equal error rate); --save stores them as the gallery's defaults for
    /// --match and the app.
    Calibrate {
        #[command(flatten)]
        index: IndexArg,
        #[command(flatten)]
        clip: ClipArgs,
        /// Store the suggested threshold and margin in the index.
        #[arg(long)]
        save: bool,
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Count, model, dimensions and size on disk.
    Stats {
        #[command(flatten)]
        index: IndexArg,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove images from the index (by path), or a whole item (--item).
    Rm {
        #[arg(required_unless_present = "item", conflicts_with = "item")]
        paths: Vec<PathBuf>,
        /// Remove this item: all its images and prompts.
        #[arg(long, value_name = "NAME")]
        item: Option<String>,
        #[command(flatten)]
        index: IndexArg,
    },
    /// Drop entries whose files no longer exist.
    Prune {
        #[command(flatten)]
        index: IndexArg,
    },
    /// Copy a gallery to another store as it is: a directory to a catalogue
    /// (`postgres://…`) or back, without embedding anything again.
    ///
    /// Embeddings, thumbnails, items, text items and the stored decision are copied; the
    /// destination is created for the source's model (one made with another model is refused).
    /// Interrupted, it keeps what it committed; the same command carries on from there.
    Copy {
        /// The gallery to copy: a directory or a catalogue URL.
        #[arg(value_name = "FROM")]
        from: std::ffi::OsString,
        /// Where to: a directory or a catalogue URL.
        #[arg(value_name = "TO")]
        to: std::ffi::OsString,
    },
}

impl IndexCommand {
    /// The gallery `--index` names (`copy` names two of its own).
    fn index(&self) -> Option<&IndexArg> {
        Some(match self {
            IndexCommand::Add { index, .. }
            | IndexCommand::Items { index, .. }
            | IndexCommand::Label { index, .. }
            | IndexCommand::Rename { index, .. }
            | IndexCommand::AddText { index, .. }
            | IndexCommand::Calibrate { index, .. }
            | IndexCommand::Stats { index, .. }
            | IndexCommand::Rm { index, .. }
            | IndexCommand::Prune { index } => index,
            IndexCommand::Copy { .. } => return None,
        })
    }
}

pub fn run(cmd: IndexCommand, device: DeviceRequest) -> anyhow::Result<ExitCode> {
    // `copy` names its two galleries itself.
    let gallery = match cmd.index() {
        Some(index) => index.location()?,
        None => GalleryLocation::Dir(PathBuf::new()),
    };
    match cmd {
        IndexCommand::Add {
            paths,
            label_from,
            label,
            index: _,
            clip,
        } => add(&paths, label_from, label, &gallery, &clip, device),
        IndexCommand::Items { json, .. } => {
            let idx = store::open_any(&gallery)?;
            let items = idx.items()?;
            let mut out = std::io::stdout().lock();
            for item in &items {
                if json {
                    crate::report::write_json_line(&mut out, item)?;
                } else {
                    use std::io::Write;
                    let prompts = match item.prompts {
                        0 => String::new(),
                        n => format!(", {n} prompt(s)"),
                    };
                    writeln!(
                        out,
                        "{}\t{} image(s){prompts}\t{}",
                        item.label,
                        item.images,
                        item.thumbnail.as_deref().unwrap_or("-")
                    )?;
                }
            }
            if !json {
                eprintln!("{} item(s) in {}", items.len(), gallery);
            }
            Ok(ExitCode::SUCCESS)
        }
        IndexCommand::Label { paths, set, .. } => {
            let label = crate::search::items::check_label(&set)?;
            let mut idx = store::open_any_for_writing(&gallery)?;
            let _lock = idx.lock_for_writing(&mut || wait_message(&gallery))?;
            let keys: Vec<PathBuf> = paths.iter().map(|p| canonical_key(p)).collect();
            let found = idx.set_label(&keys, &label)?;
            let mut missing = 0;
            for (p, ok) in paths.iter().zip(found) {
                if ok {
                    println!("{} → {label}", display_path(p));
                } else {
                    missing += 1;
                    eprintln!("not in the index: {}", display_path(p));
                }
            }
            Ok(exit_for(missing))
        }
        IndexCommand::Rename { old, new, .. } => {
            let mut idx = store::open_any_for_writing(&gallery)?;
            let _lock = idx.lock_for_writing(&mut || wait_message(&gallery))?;
            let merged = idx.items()?.iter().any(|i| i.label == new.trim());
            // Through `teach`, as the app renames: the crop folder the app saved for the item
            // records the new name too.
            let images = crate::paths::gallery_images_dir();
            match crate::search::teach::rename_item(idx.as_mut(), &images, &old, &new)? {
                0 => {
                    eprintln!("no item {old:?} in {}", gallery);
                    Ok(ExitCode::from(1))
                }
                n => {
                    let how = if merged {
                        " (merged into the existing item)"
                    } else {
                        ""
                    };
                    println!(
                        "renamed {old:?} to {:?}: {n} image(s)/prompt(s){how}",
                        new.trim()
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        IndexCommand::AddText {
            prompt,
            label,
            trust_text_model,
            index: _,
            clip,
        } => add_text(
            &prompt,
            label.as_deref(),
            trust_text_model,
            &gallery,
            &clip,
            device,
        ),
        IndexCommand::Calibrate {
            index: _,
            clip,
            save,
            json,
        } => calibrate(&gallery, &clip, save, json, device),
        IndexCommand::Stats { json, .. } => {
            let s = store::open_any(&gallery)?.stats()?;
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
        IndexCommand::Rm {
            paths,
            item: Some(item),
            index: _,
        } if paths.is_empty() => {
            let mut idx = store::open_any_for_writing(&gallery)?;
            let _lock = idx.lock_for_writing(&mut || wait_message(&gallery))?;
            // The crops the app saved for it go too (file before row, as the app does): else its
            // next start would find them without rows and add them back.
            let images = crate::paths::gallery_images_dir();
            let n = crate::search::teach::remove_item(idx.as_mut(), &images, &item)?;
            idx.save()?;
            if n == 0 {
                eprintln!("no item {item:?} in {}", gallery);
                return Ok(ExitCode::from(1));
            }
            println!(
                "removed item {item:?} ({n} image(s)/prompt(s)); {} image(s) remain",
                idx.len()?
            );
            Ok(ExitCode::SUCCESS)
        }
        IndexCommand::Rm { paths, .. } => {
            let mut idx = store::open_any_for_writing(&gallery)?;
            let _lock = idx.lock_for_writing(&mut || wait_message(&gallery))?;
            let mut missing = 0;
            let images = crate::paths::gallery_images_dir();
            for p in &paths {
                let key = canonical_key(p);
                // A crop the app saved is deleted with its row (see `rm --item`).
                if crate::search::teach::forget_image(idx.as_mut(), &images, &key)? {
                    println!("removed {}", display_path(&key));
                } else {
                    missing += 1;
                    eprintln!("not in the index: {}", display_path(p));
                }
            }
            idx.save()?;
            Ok(exit_for(missing))
        }
        IndexCommand::Copy { from, to } => copy(&from, &to),
        IndexCommand::Prune { .. } => {
            let mut idx = store::open_any_for_writing(&gallery)?;
            let _lock = idx.lock_for_writing(&mut || wait_message(&gallery))?;
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

fn exit_for(missing: usize) -> ExitCode {
    if missing > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn wait_message(gallery: &GalleryLocation) {
    eprintln!("another arvis is writing to {gallery}; waiting for it to finish…");
}

fn add(
    paths: &[PathBuf],
    label_from: Option<LabelFrom>,
    label: Option<String>,
    dir: &GalleryLocation,
    clip: &ClipArgs,
    device: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    // A bad label is refused before any model loads.
    let label = label
        .map(|l| crate::search::items::check_label(&l))
        .transpose()?;
    let (inputs, skipped_other) = expand_inputs(paths);
    let inputs: Vec<ingest::ToAdd> = inputs
        .into_iter()
        .map(|i| {
            let label = match (&label, label_from) {
                (Some(l), _) => Some(l.clone()),
                (None, Some(LabelFrom::Folder)) => folder_label(&i.path),
                (None, Some(LabelFrom::Stem)) => Some(label_from_stem(&i.path)),
                (None, None) => None,
            };
            ingest::ToAdd {
                path: i.path,
                label,
            }
        })
        .collect();
    let mut loaded = clip.load_image_encoder(device)?;

    // Ctrl-C finishes the batch in flight, commits it and saves: the index stays consistent and resumes.
    let stop = super::stop_on_ctrl_c();
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
        report.added, report.unchanged, report.failed, report.total, dir
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

/// `arvis index copy FROM TO`, with a progress bar; Ctrl-C stops after the batch in flight.
fn copy(from: &std::ffi::OsStr, to: &std::ffi::OsStr) -> anyhow::Result<ExitCode> {
    let (from, to) = (GalleryLocation::parse(from)?, GalleryLocation::parse(to)?);
    let stop = super::stop_on_ctrl_c();
    eprintln!("copying {from} to {to}");
    let mut bar: Option<indicatif::ProgressBar> = None;
    let hooks = crate::fault::BatchHooks::from_env();
    let mut batches = 0;
    let report = crate::search::copy::copy_gallery(&from, &to, |done, of| {
        let bar = bar.get_or_insert_with(|| crate::progress::items_bar(of as u64, "images"));
        bar.set_position(done as u64);
        batches += 1;
        hooks.after_batch(batches, &stop);
        if stop.load(Ordering::SeqCst) {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let left = report.images.saturating_sub(report.copied + report.already);
    println!(
        "copied {} image(s), {} already there, {} prompt(s){}; {} image(s) in {to}",
        report.copied,
        report.already,
        report.prompts,
        if report.decision {
            ", the stored decision"
        } else {
            ""
        },
        report.total
    );
    if left > 0 {
        eprintln!(
            "interrupted: {left} image(s) not copied yet; what was copied is saved. Run the same command again to copy the rest"
        );
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// The item of `gallery/red-mug/1.jpg`: `red-mug` (its folder's name; the stem when the folder
/// has no usable name).
fn folder_label(path: &Path) -> Option<String> {
    let folder = canonical_key(path)
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    Some(
        folder
            .and_then(|f| crate::search::items::check_label(&f).ok())
            .unwrap_or_else(|| label_from_stem(path)),
    )
}

fn add_text(
    prompt: &str,
    label: Option<&str>,
    trust_text_model: bool,
    dir: &GalleryLocation,
    clip: &ClipArgs,
    device: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    use crate::search::items::check_label;
    // Both refused before any model loads.
    let prompt = check_label(prompt).map_err(|_| crate::search::teach::TeachError::EmptyPrompt)?;
    let label = check_label(label.unwrap_or(&prompt))?;
    let mut idx = store::open_any_for_writing(dir)?;
    let mut text = clip.load_text_encoder(device)?;
    crate::load::check_text_pairing(idx.meta(), text.family.as_deref(), trust_text_model, dir)?;
    let prompt =
        crate::search::teach::add_text_item(idx.as_mut(), &mut text, &label, &prompt, &mut || {
            wait_message(dir)
        })?;
    let prompts = idx
        .items()?
        .into_iter()
        .find(|i| i.label == label)
        .map_or(1, |i| i.prompts);
    println!(
        "text item {label:?}: prompt {prompt:?} embedded in {} phrasings ({prompts} prompt(s) for this item)",
        crate::search::items::prompt_phrasings(&prompt).len()
    );
    Ok(ExitCode::SUCCESS)
}

fn calibrate(
    dir: &GalleryLocation,
    clip: &ClipArgs,
    save: bool,
    json: bool,
    device: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    use crate::search::items::{
        CALIBRATION_QUERIES, Decision, LabelledEmbedding, calibrate, equal_error_cut,
        text_histogram,
    };
    // The model in use says whether the figures mean anything: a generated random-weight CLIP
    // only exercises the mechanics.
    let loaded = clip.load_image_encoder(device)?;
    let mut idx = if save {
        store::open_any_for_writing(dir)?
    } else {
        store::open_any(dir)?
    };
    anyhow::ensure!(
        idx.meta().same_embeddings(&loaded.meta),
        "index {} was built with CLIP model {}, but the current model is {}. Fix: pass --clip-model for the index's model",
        dir,
        idx.meta().model_id,
        loaded.meta.model_id
    );
    let generated = loaded.encoder.generated.clone();
    let (labels, matrix) = idx.labelled_embeddings()?;
    let dim = idx.meta().dim;
    let gallery: Vec<LabelledEmbedding<'_>> = labels
        .iter()
        .zip(matrix.chunks_exact(dim))
        .map(|(label, embedding)| LabelledEmbedding { label, embedding })
        .collect();
    let cal = calibrate(&gallery);
    let items_with_two = {
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        for l in &labels {
            *counts.entry(l).or_default() += 1;
        }
        counts.values().filter(|&&n| n >= 2).count()
    };
    let (Some((threshold, eer)), Some((margin, margin_eer))) = (
        equal_error_cut(&cal.genuine, &cal.impostor),
        equal_error_cut(&cal.genuine_margin, &cal.impostor_margin),
    ) else {
        anyhow::bail!(
            "calibration needs at least one item with 2 or more images and one other item; {} has {} item(s) with 2+ images among {} image(s). Fix: add several images per item, e.g. `arvis index add --label-from folder gallery/` with one folder per item",
            dir,
            items_with_two,
            labels.len()
        );
    };
    let stored = idx.stored_decision()?;
    let suggested = Decision {
        threshold,
        margin,
        text_threshold: stored.unwrap_or_default().text_threshold,
    };
    let (known_ok, unknown_named) = cal.rates(&suggested);
    let pct = |n: usize| 100.0 * n as f64 / cal.queries.max(1) as f64;
    if json {
        let record = serde_json::json!({
            "index": dir.to_string(),
            "model": idx.meta().model_id,
            "generated_model": generated,
            "items_with_2_or_more_images": items_with_two,
            "held_out_images": cal.queries,
            "top1_per_image": cal.top1_per_image,
            "top1_per_item": cal.top1_per_item,
            "threshold": threshold,
            "threshold_equal_error_rate": eer,
            "margin": margin,
            "margin_equal_error_rate": margin_eer,
            "known_named_right": known_ok,
            "unknown_named": unknown_named,
            "saved": save,
        });
        println!("{record}");
    } else {
        println!(
            "calibrating {}: {} item(s) with 2+ images, {} held-out image(s) (leave-one-out{})",
            dir,
            items_with_two,
            cal.queries,
            if cal.queries >= CALIBRATION_QUERIES {
                ", evenly sampled"
            } else {
                ""
            }
        );
        println!("model: {}", idx.meta().model_id);
        if let Some(g) = &generated {
            println!(
                "NOTE: the CLIP model has generated random weights ({g}): these figures only exercise the mechanics and say nothing about recognition with a real CLIP. Calibrate again with the real model."
            );
        }
        println!(
            "top-1 on held-out images: nearest image's item {:.1} %, per-item score (mean of top-2) {:.1} %",
            pct(cal.top1_per_image),
            pct(cal.top1_per_item)
        );
        let all: Vec<f32> = cal.genuine.iter().chain(&cal.impostor).copied().collect();
        let lo = (all.iter().copied().fold(f32::INFINITY, f32::min) / 0.05).floor() * 0.05;
        let hi = (all.iter().copied().fold(f32::NEG_INFINITY, f32::max) + 0.05).min(1.05);
        println!(
            "\nitem score: true item in the gallery (known) | best item with the true one left out (unknown)"
        );
        let known = text_histogram(&cal.genuine, lo, hi, 12, 24);
        let unknown = text_histogram(&cal.impostor, lo, hi, 12, 24);
        for (k, u) in known.iter().zip(&unknown) {
            println!("  {k:<38} | {}", u.get(7..).unwrap_or(""));
        }
        println!(
            "\nsuggested threshold {threshold:.3}: equal error rate {:.1} % (as many unknown objects named as known ones missed)",
            100.0 * eer
        );
        println!(
            "suggested margin    {margin:.3}: equal error rate {:.1} % (lead over the next item, right answers vs unknown objects)",
            100.0 * margin_eer
        );
        println!(
            "with both: {:.1} % of known items named right, {:.1} % of unknown objects named as an item",
            100.0 * known_ok,
            100.0 * unknown_named
        );
    }
    if save {
        let _lock = idx.lock_for_writing(&mut || wait_message(dir))?;
        idx.store_decision(&suggested)?;
        if !json {
            println!(
                "saved as the defaults of {} (flags and app sliders still override)",
                dir
            );
        }
    } else if !json {
        println!("to use these as the gallery's defaults: arvis index calibrate --save");
    }
    Ok(ExitCode::SUCCESS)
}

/// `index add`'s view of the ingestion job: a progress bar, errors on stderr, Ctrl-C.
struct Terminal<'a> {
    dir: &'a GalleryLocation,
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
            self.dir,
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
