//! The embedding thread: the frame processor's second half (per-track gallery matching) on the
//! newest detected frame, and the ingestion job for folders dropped on the window. It owns the
//! CLIP encoder (loaded the first time it is needed) and the open index.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use super::capture::SourceCommand;
use super::status::{IndexJob, Stage};
use super::{DetectedFrame, LoadedEncoder, POLL, Progress, Shared, lock, publish};
use crate::pipeline::frame::{MatchJob, MatchStage, ProcessorConfig, match_frames};
use crate::search::ingest::{IngestObserver, Plan};
use crate::search::store::{ChangeWatch, WatchEvent};
use crate::search::{GalleryLocation, GalleryStore, IndexError, add_to_index, store, teach};

/// How soon a gallery that could not be opened for a reason that may pass (its catalogue's
/// server out of reach) is tried again.
const RETRY_OPEN: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) enum EmbedCommand {
    AddFolder(PathBuf),
    /// Save a region's crop as an image of an item, embed and commit it.
    Teach {
        crop: image::RgbImage,
        label: String,
    },
    /// Forget one gallery image (its file too when arvis made it).
    Forget(PathBuf),
    RenameItem {
        old: String,
        new: String,
    },
    RemoveItem(String),
    AddText {
        prompt: String,
        label: String,
    },
}

pub(super) type EncoderLoader =
    Box<dyn FnMut(Progress<'_>) -> anyhow::Result<LoadedEncoder> + Send>;

pub(super) struct EmbedWorker {
    shared: Arc<Shared>,
    /// To re-run a still or paused frame once matching becomes possible.
    refresh: Sender<SourceCommand>,
    load: EncoderLoader,
    load_text: super::TextLoader,
    /// CLIP's text tower, for the index it was checked against.
    text: Option<(GalleryLocation, crate::embed::TextEncoder)>,
    rx: Receiver<EmbedCommand>,
    encoder: Option<LoadedEncoder>,
    encoder_failed: bool,
    /// The open gallery and where it is.
    index: Option<(GalleryLocation, Box<dyn GalleryStore>)>,
    /// The gallery that failed to open (not retried until it changes or is rebuilt), and when
    /// to try again if the failure may pass (a catalogue server out of reach).
    index_failed: Option<(GalleryLocation, Option<Instant>)>,
    /// Changes other processes make to the gallery opened last, and where it is.
    watch: Option<(GalleryLocation, Box<dyn ChangeWatch>)>,
    config: ProcessorConfig,
    /// Matches carried per track (reset with the source, the index or k).
    matching: MatchStage,
    matching_key: (u64, Option<GalleryLocation>, usize),
    /// The index whose taught crops were reconciled this run.
    reconciled: Option<GalleryLocation>,
    /// Per grid source: its matches carried per track, and what they were made for.
    grid_matching: Vec<GridMatch>,
}

/// One grid source's per-track matches and what they were made for.
struct GridMatch {
    key: GridKey,
    stage: MatchStage,
}

impl AsMut<MatchStage> for GridMatch {
    fn as_mut(&mut self) -> &mut MatchStage {
        &mut self.stage
    }
}

/// What a grid source's per-track matches belong to: (grid, source generation), gallery, k.
type GridKey = ((u64, u64), Option<GalleryLocation>, usize);

impl EmbedWorker {
    pub(super) fn new(
        shared: Arc<Shared>,
        (load, load_text): (EncoderLoader, super::TextLoader),
        rx: Receiver<EmbedCommand>,
        refresh: Sender<SourceCommand>,
        config: ProcessorConfig,
    ) -> EmbedWorker {
        EmbedWorker {
            shared,
            refresh,
            load,
            load_text,
            text: None,
            rx,
            encoder: None,
            encoder_failed: false,
            index: None,
            index_failed: None,
            watch: None,
            config,
            matching: MatchStage::new(config.refresh_frames, config.match_k),
            matching_key: (0, None, 0),
            reconciled: None,
            grid_matching: Vec::new(),
        }
    }

    pub(super) fn run(mut self) {
        while !self.shared.stopping() {
            while let Ok(cmd) = self.rx.try_recv() {
                match cmd {
                    EmbedCommand::AddFolder(dir) => self.add_folder(&dir),
                    other => self.change_gallery(other),
                }
            }
            let options = lock(&self.shared.options).clone();
            self.config.match_k = options.match_k.max(1);
            let ready = options.match_enabled && self.ensure_index(&options.index);
            let was_ready = self
                .shared
                .matcher_ready
                .swap(ready, std::sync::atomic::Ordering::Relaxed);
            if ready && !was_ready {
                let _ = self.refresh.send(SourceCommand::Refresh);
            }
            if self.match_grid(ready) {
                continue;
            }
            // With a grid shown its frames arrive in the slots above: look again soon.
            let wait = if lock(&self.shared.grid).cells.is_empty() {
                POLL
            } else {
                Duration::from_millis(5)
            };
            let Some(mut d) = self.shared.detected.take_timeout(wait) else {
                continue;
            };
            let matched = ready && self.match_regions(&mut d);
            publish(&self.shared, d, matched);
        }
    }

    fn ensure_encoder(&mut self) -> bool {
        if self.encoder.is_some() {
            return true;
        }
        if self.encoder_failed {
            return false;
        }
        let shared = self.shared.clone();
        shared.update(|s| s.embedder = Stage::Loading("loading CLIP".into()));
        let progress = |msg: String| shared.update(|s| s.embedder = Stage::Loading(msg));
        match (self.load)(&progress) {
            Ok(l) => {
                let description = l.description.clone();
                self.encoder = Some(l);
                shared.update(|s| s.embedder = Stage::Ready(description));
                true
            }
            Err(e) => {
                self.encoder_failed = true;
                shared.update(|s| s.embedder = Stage::Failed(format!("{e:#}")));
                false
            }
        }
    }

    /// Tell the window about the index now open: counts, items, stored decision.
    fn publish_index(&self, index: &dyn GalleryStore) {
        let images = index.len().unwrap_or(0);
        let items = index.items().unwrap_or_default();
        let ready = Stage::Ready(format!("{} items, {images} images", items.len()));
        let decision = index.stored_decision().ok().flatten();
        self.shared.update(|s| {
            s.index = ready;
            s.gallery_decision = decision;
            s.items = items;
        });
    }

    /// Open the gallery `wanted` names if it is not the one open; false if it cannot be used.
    fn ensure_index(&mut self, wanted: &Result<GalleryLocation, String>) -> bool {
        let dir = match wanted {
            Ok(d) => d,
            Err(e) => {
                self.index = None;
                self.set_index_stage(Stage::Failed(e.clone()));
                return false;
            }
        };
        // Another process changed the gallery: open it afresh (its counts, items and decision
        // are published again and every track is matched anew). While a catalogue's server is
        // away, say so and leave it be until the watch sees it back.
        if let Some((at, watch)) = self.watch.as_mut()
            && at == dir
        {
            match watch.poll() {
                WatchEvent::Quiet => {}
                WatchEvent::Changed => {
                    self.index = None;
                    self.index_failed = None;
                    self.matching_key = (0, None, 0);
                    // A still or paused frame is matched again against what is there now.
                    let _ = self.refresh.send(SourceCommand::Refresh);
                }
                WatchEvent::Unreachable(why) => {
                    self.index = None;
                    self.index_failed = None;
                    // Failed, not Loading: frames go on being shown (unmatched) meanwhile.
                    self.set_index_stage(Stage::Failed(format!(
                        "catalogue unreachable, retrying: {why}"
                    )));
                    return false;
                }
            }
        }
        if self.index.as_ref().is_some_and(|(d, _)| d == dir) {
            return true;
        }
        if let Some((failed, retry)) = &self.index_failed
            && failed == dir
            && retry.is_none_or(|at| Instant::now() < at)
        {
            return false;
        }
        // Finish what a killed teach or forget left half-done, once per index per run (a first
        // teach killed before its commit leaves a crop and no index yet).
        let images = lock(&self.shared.options).gallery_images.clone();
        let has_crops = std::fs::read_dir(&images).is_ok_and(|mut d| d.next().is_some());
        if self.reconciled.as_ref() != Some(dir)
            && (store::exists(dir) || has_crops)
            && self.ensure_encoder()
            && let Some(encoder) = self.encoder.as_mut()
        {
            self.reconciled = Some(dir.clone());
            if let Err(e) = teach::reconcile(dir, &encoder.meta, &mut encoder.encoder, &images) {
                self.shared
                    .update(|s| s.last_error = Some(format!("gallery images: {e}")));
            }
        }
        // No index yet: say how to make one, and do not load CLIP for nothing.
        if !store::exists(dir) {
            self.index = None;
            self.set_index_stage(Stage::Absent(no_index_yet(dir)));
            return false;
        }
        if !self.ensure_encoder() {
            return false;
        }
        let Some(meta) = self.encoder.as_ref().map(|e| e.meta.clone()) else {
            return false;
        };
        self.index = None;
        match store::open(dir, &meta) {
            Ok(index) => {
                if self.watch.as_ref().is_none_or(|(at, _)| at != dir) {
                    // Without a watch the window still works; it just learns of other
                    // processes' changes when it reopens the gallery.
                    self.watch = index.watch().ok().map(|w| (dir.clone(), w));
                }
                self.publish_index(index.as_ref());
                self.index = Some((dir.clone(), index));
                self.index_failed = None;
                true
            }
            Err(e) => {
                let retry = store::is_transient(&e).then(|| Instant::now() + RETRY_OPEN);
                let stage = match e {
                    IndexError::Missing(_) => Stage::Absent(no_index_yet(dir)),
                    other if retry.is_some() => {
                        Stage::Failed(format!("catalogue unreachable, retrying: {other}"))
                    }
                    other => Stage::Failed(other.to_string()),
                };
                self.index_failed = Some((dir.clone(), retry));
                self.set_index_stage(stage);
                false
            }
        }
    }

    /// Show `stage` for the index, unless it is shown already (each update wakes the window).
    fn set_index_stage(&self, stage: Stage) {
        if lock(&self.shared.status).index != stage {
            self.shared.update(|s| s.index = stage);
        }
    }

    /// Match every waiting grid frame (at most one per source) with their due crops in one
    /// CLIP batch, and publish each to its view; false when none was waiting.
    fn match_grid(&mut self, ready: bool) -> bool {
        let mut pending: Vec<super::grid::GridPending> = self
            .shared
            .grid_detected
            .iter()
            .filter_map(|slot| slot.take_timeout(Duration::ZERO))
            .collect();
        if pending.is_empty() {
            return false;
        }
        let matched = ready && self.match_grid_frames(&mut pending);
        for mut p in pending {
            p.shot.matched = matched;
            p.shot.latency_ms = p.captured_at.elapsed().as_secs_f64() * 1e3;
            super::grid::publish_shot(&self.shared, p.source, Arc::new(p.shot));
        }
        true
    }

    fn match_grid_frames(&mut self, pending: &mut [super::grid::GridPending]) -> bool {
        let (Some(encoder), Some((dir, index))) = (self.encoder.as_mut(), self.index.as_mut())
        else {
            return false;
        };
        let (refresh, k) = (self.config.refresh_frames, self.config.match_k);
        for p in pending.iter() {
            let key: GridKey = (p.generation, Some(dir.clone()), k);
            if self.grid_matching.len() <= p.source {
                self.grid_matching.resize_with(p.source + 1, || GridMatch {
                    key: ((0, 0), None, 0),
                    stage: MatchStage::new(refresh, k),
                });
            }
            let m = &mut self.grid_matching[p.source];
            if m.key != key {
                m.stage = MatchStage::new(refresh, k);
                m.key = key;
            }
        }
        let mut jobs: Vec<MatchJob<'_>> = pending
            .iter_mut()
            .map(|p| MatchJob {
                stage: p.source,
                frame: p.processed,
                image: &p.shot.frame.image,
                regions: &mut p.shot.regions,
            })
            .collect();
        // One CLIP run for every source's new and refreshed tracks.
        let error = match match_frames(
            &mut self.grid_matching,
            &mut jobs,
            &mut encoder.encoder,
            index.as_mut(),
        ) {
            Ok(done) => done
                .per_frame
                .into_iter()
                .find_map(Result::err)
                .map(|e| e.to_string()),
            Err(failed) => Some(failed.error.to_string()),
        };
        let Some(e) = error else {
            return true;
        };
        for p in pending.iter_mut() {
            for r in &mut p.shot.regions {
                r.clear_match();
            }
        }
        self.shared
            .update(|s| s.last_error = Some(format!("matching failed: {e}")));
        false
    }

    /// Fill in the frame's gallery hits; false if matching failed (shown in the status).
    fn match_regions(&mut self, d: &mut DetectedFrame) -> bool {
        let (Some(encoder), Some((dir, index))) = (self.encoder.as_mut(), self.index.as_mut())
        else {
            return false;
        };
        let key = (
            d.captured.source_generation,
            Some(dir.clone()),
            self.config.match_k,
        );
        if key != self.matching_key {
            self.matching = MatchStage::new(self.config.refresh_frames, self.config.match_k);
            self.matching_key = key;
        }
        let t0 = Instant::now();
        let result = self.matching.match_regions(
            d.captured.seq,
            &d.captured.frame.image,
            &mut d.regions,
            &mut encoder.encoder,
            index.as_mut(),
        );
        let (embedded, regions) = (self.matching.embedded(), self.matching.regions());
        self.shared.count(|s| {
            s.counters.crops_embedded = embedded;
            s.counters.regions_matched = regions;
        });
        match result {
            Ok(()) => {
                d.timings.match_ms = t0.elapsed().as_secs_f64() * 1e3;
                true
            }
            Err(e) => {
                for r in &mut d.regions {
                    r.clear_match();
                }
                self.shared
                    .update(|s| s.last_error = Some(format!("matching failed: {e}")));
                false
            }
        }
    }

    /// A change to the gallery from the window; afterwards every track is matched afresh, so
    /// the next frame already shows it.
    fn change_gallery(&mut self, cmd: EmbedCommand) {
        let options = lock(&self.shared.options).clone();
        let index_dir = match &options.index {
            Ok(g) => g.clone(),
            Err(e) => {
                let outcome = Err(format!("gallery: {e}"));
                self.shared.update(|s| {
                    let n = s.gallery_change.as_ref().map_or(0, |c| c.0) + 1;
                    s.gallery_change = Some((n, outcome));
                });
                return;
            }
        };
        let (index_dir, images) = (&index_dir, &options.gallery_images);
        let result: anyhow::Result<String> = match cmd {
            EmbedCommand::Teach { crop, label } => {
                if self.ensure_encoder()
                    && let Some(encoder) = self.encoder.as_mut()
                {
                    teach::add_crop(
                        index_dir,
                        &encoder.meta,
                        &mut encoder.encoder,
                        images,
                        &label,
                        &crop,
                    )
                    .map(|path| {
                        format!("added to {label:?}: {}", crate::paths::display_path(&path))
                    })
                    .map_err(Into::into)
                } else {
                    Err(anyhow::anyhow!("CLIP is not available (see the status)"))
                }
            }
            EmbedCommand::Forget(path) => {
                with_writable(index_dir, |index| teach::forget_image(index, images, &path))
                    .map(|_| format!("forgot {}", crate::paths::display_path(&path)))
            }
            EmbedCommand::RenameItem { old, new } => with_writable(index_dir, |index| {
                teach::rename_item(index, images, &old, &new)
            })
            .map(|_| format!("renamed {old:?} to {:?}", new.trim())),
            EmbedCommand::AddText { prompt, label } => self
                .add_text(index_dir, &prompt, &label)
                .map(|()| format!("text item {label:?}: \"{prompt}\"")),
            EmbedCommand::RemoveItem(label) => {
                with_writable(index_dir, |index| teach::remove_item(index, images, &label))
                    .map(|n| format!("removed {label:?} ({n} image(s)/prompt(s))"))
            }
            EmbedCommand::AddFolder(dir) => {
                self.add_folder(&dir);
                return;
            }
        };
        let outcome = result.map_err(|e| format!("gallery: {e:#}"));
        self.shared.update(|s| {
            let n = s.gallery_change.as_ref().map_or(0, |c| c.0) + 1;
            s.gallery_change = Some((n, outcome));
        });
        // Reopen (a teach may have created the index) and match every track again.
        self.index = None;
        self.index_failed = None;
        self.matching_key = (0, None, 0);
        let _ = self.ensure_index(&Ok(index_dir.clone()));
        let _ = self.refresh.send(SourceCommand::Refresh);
    }

    /// Embed `prompt` with CLIP's text tower (loaded on first use, checked against the index's
    /// image model) and store it as a prompt of text item `label`.
    fn add_text(
        &mut self,
        index_dir: &GalleryLocation,
        prompt: &str,
        label: &str,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.ensure_encoder(),
            "CLIP is not available (see the status)"
        );
        let Some(encoder) = self.encoder.as_ref() else {
            anyhow::bail!("CLIP is not available");
        };
        let mut index = store::open_or_create(index_dir, &encoder.meta)?;
        if self.text.as_ref().is_none_or(|(d, _)| d != index_dir) {
            self.text = None;
            let text = (self.load_text)(index.meta(), index_dir)?;
            self.text = Some((index_dir.clone(), text));
        }
        let Some((_, text)) = self.text.as_mut() else {
            anyhow::bail!("the CLIP text model is not available");
        };
        teach::add_text_item(index.as_mut(), text, label, prompt, &mut || {})?;
        Ok(())
    }

    fn add_folder(&mut self, dir: &Path) {
        let index_dir = lock(&self.shared.options).index.clone();
        let mut job = IndexJob {
            dir: dir.to_path_buf(),
            done: 0,
            total: 0,
            added: 0,
            failed: 0,
            finished: false,
            error: None,
            waiting: false,
        };
        self.shared.update(|s| s.indexing = Some(job.clone()));
        let result = index_dir
            .map_err(|e| anyhow::anyhow!(e))
            .and_then(|index_dir| self.add_folder_inner(dir, &index_dir, &mut job));
        job.finished = true;
        job.error = result.err().map(|e| format!("{e:#}"));
        self.shared.update(|s| s.indexing = Some(job));
    }

    fn add_folder_inner(
        &mut self,
        dir: &Path,
        index_dir: &GalleryLocation,
        job: &mut IndexJob,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.ensure_encoder(),
            "CLIP is not available (see the status)"
        );
        let (inputs, _) = crate::source::files::expand_inputs(&[dir.to_path_buf()]);
        let paths: Vec<PathBuf> = inputs.into_iter().map(|i| i.path).collect();
        anyhow::ensure!(!paths.is_empty(), "no images in {}", dir.display());
        let Some(encoder) = self.encoder.as_mut() else {
            anyhow::bail!("CLIP is not available");
        };
        // The matching index is read-only; the job opens the index for writing, and waits for
        // any other writer (an `arvis index add` in a terminal) to finish first.
        let report = add_to_index(
            index_dir,
            &encoder.meta,
            &mut encoder.encoder,
            &crate::search::ingest::ToAdd::unlabelled(&paths),
            &mut FolderJob {
                shared: &self.shared,
                job,
            },
        )?;
        job.failed = report.failed;
        let index = store::open(index_dir, &encoder.meta)?;
        self.publish_index(index.as_ref());
        self.index = Some((index_dir.clone(), index));
        self.index_failed = None;
        Ok(())
    }
}

fn no_index_yet(gallery: &GalleryLocation) -> String {
    format!("no index in {gallery} yet: drop a folder of images on the window to build one")
}

/// A dropped folder's progress, kept in the status after every batch.
struct FolderJob<'a> {
    shared: &'a Shared,
    job: &'a mut IndexJob,
}

impl FolderJob<'_> {
    fn show(&self) {
        let job = self.job.clone();
        self.shared.update(|s| s.indexing = Some(job));
    }
}

impl IngestObserver for FolderJob<'_> {
    fn waiting(&mut self) {
        self.job.waiting = true;
        self.show();
    }

    fn planned(&mut self, plan: &Plan) {
        self.job.waiting = false;
        self.job.total = plan.todo.len();
        // Files that could not even be stat'ed.
        self.job.failed = plan.failed.len();
        self.show();
    }

    fn skipped(&mut self, _path: &Path, _why: &str) {
        self.job.failed += 1;
    }

    fn committed(&mut self, done: usize, added: usize) -> ControlFlow<()> {
        self.job.done = done;
        self.job.added = added;
        self.show();
        if self.shared.stopping() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Run `change` on the index in `dir` opened for writing, under its writer lock (waiting for
/// any other writer), and save it.
fn with_writable<T>(
    gallery: &GalleryLocation,
    change: impl FnOnce(&mut dyn GalleryStore) -> Result<T, teach::TeachError>,
) -> anyhow::Result<T> {
    let mut index = store::open_any_for_writing(gallery)?;
    let _lock = index.lock_for_writing(&mut || {})?;
    let out = change(index.as_mut())?;
    index.save()?;
    Ok(out)
}
