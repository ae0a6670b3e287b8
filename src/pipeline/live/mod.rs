//! The app's live pipeline. Four threads, each owning its state, joined by one-element
//! latest-value slots so a slow stage drops stale frames instead of queueing them:
//!
//! [`capture`] (source, pacing, reconnect) → [frames] → [`detection`] → [detected] →
//! [`embedding`] (gallery matching) → an immutable [`Snapshot`] the UI picks up whenever it
//! paints. Detection and embedding are the two halves of the shared frame processor
//! ([`crate::pipeline::frame`]). The UI never waits on inference; it only reads the newest
//! snapshot and the [`PipelineStatus`].
//!
//! Errors end here: each is shown once through the status, and the pipeline keeps running.

mod backoff;
mod capture;
mod detection;
mod embedding;
mod grid;
mod status;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use backoff::Backoff;
pub use capture::{Opener, SourceCommand};
pub use grid::{GridCell, GridShot, GridStatus};
pub use status::{
    Counters, FrameTimings, IndexJob, PipelineStatus, RateMeter, Snapshot, SourceState, Stage,
};

use super::frame::{ProcessorConfig, TrackStage};
use super::slot::LatestSlot;
use crate::detect::DetectOptions;
pub use crate::detect::FrameDetector;
use crate::embed::ImageEncoder;
use crate::search::{GalleryLocation, IndexMeta, Region};
use crate::source::{Frame, SourceSpec};
use capture::Capture;
use embedding::{EmbedCommand, EmbedWorker};

/// How long idle workers sleep between checks for shutdown.
const POLL: Duration = Duration::from_millis(50);

/// The most sources the grid shows at once.
pub const MAX_GRID: usize = 16;

/// Settings the workers read per frame.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveOptions {
    /// Detector thresholds and class filter.
    pub detect: DetectOptions,
    /// The gallery matched against, or why the one asked for cannot be named (a bad URL).
    pub index: Result<GalleryLocation, String>,
    /// Whether regions are matched at all.
    pub match_enabled: bool,
    /// Gallery hits kept per region.
    pub match_k: usize,
    /// Where crops taught from the window are saved, one folder per item.
    pub gallery_images: PathBuf,
}

/// A detector ready to run, and how to describe it ("yolov8n-int8 on cpu").
pub struct LoadedDetector {
    /// The detector.
    pub detector: Box<dyn FrameDetector>,
    /// For the status bar.
    pub description: String,
}

/// A CLIP image tower ready to run, with the index identity it implies.
pub struct LoadedEncoder {
    /// The encoder.
    pub encoder: ImageEncoder,
    /// The identity an index built with it records.
    pub meta: IndexMeta,
    /// For the status bar.
    pub description: String,
}

/// Progress callback for loaders: short words like "provisioning ONNX Runtime".
pub type Progress<'a> = &'a dyn Fn(String);

/// How models are obtained. Loading runs on worker threads; provisioning on first run can take
/// minutes, during which frames are shown without detections.
pub struct Loaders {
    /// Loads the detector (once, on its own thread).
    pub detector: Box<dyn FnOnce(Progress<'_>) -> anyhow::Result<LoadedDetector> + Send>,
    /// Called the first time matching or indexing needs CLIP.
    pub encoder: Box<dyn FnMut(Progress<'_>) -> anyhow::Result<LoadedEncoder> + Send>,
    /// Called the first time a text item is added: CLIP's text tower, checked to pair with the
    /// image model of the index given.
    pub text: TextLoader,
}

/// Loads CLIP's text tower for an index of the given model.
pub type TextLoader = Box<
    dyn FnMut(
            &crate::search::IndexMeta,
            &GalleryLocation,
        ) -> anyhow::Result<crate::embed::TextEncoder>
        + Send,
>;

/// Called with every published snapshot (replay mode's consumer sees each frame).
pub type SnapshotObserver = Arc<dyn Fn(&Arc<Snapshot>) + Send + Sync>;

/// How the pipeline behaves (not changed while it runs).
pub struct PipelineConfig {
    /// First reconnect delay for a failed live source; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// The longest reconnect delay.
    pub backoff_max: Duration,
    /// Called whenever there is something new to paint.
    pub notify: Arc<dyn Fn() + Send + Sync>,
    /// Replay mode: files are read as fast as the pipeline processes them, each frame only
    /// after the previous one was published and the models are in place: nothing is dropped,
    /// and the result is the same as `arvis video`'s for the same file.
    pub lockstep: bool,
    /// Called with every snapshot as it is published.
    pub on_snapshot: Option<SnapshotObserver>,
    /// The frame processor's defaults (refresh interval, tracker).
    pub processor: ProcessorConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            notify: Arc::new(|| {}),
            lockstep: false,
            on_snapshot: None,
            processor: ProcessorConfig::default(),
        }
    }
}

#[derive(Clone)]
struct Captured {
    seq: u64,
    /// Changes when another source is opened (tracks do not carry over).
    source_generation: u64,
    frame: Frame,
    captured_at: Instant,
}

struct DetectedFrame {
    captured: Captured,
    detected: bool,
    regions: Vec<Region>,
    timings: FrameTimings,
}

struct Shared {
    status: Mutex<PipelineStatus>,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    options: Mutex<LiveOptions>,
    frames: LatestSlot<Captured>,
    detected: LatestSlot<DetectedFrame>,
    /// Encoder loaded and the index for the current `index_dir` open.
    matcher_ready: AtomicBool,
    shutdown: AtomicBool,
    notify: Arc<dyn Fn() + Send + Sync>,
    on_snapshot: Option<SnapshotObserver>,
    /// Sources the UI asked the grid to show (taken by the detection thread; empty: no grid).
    grid_request: Mutex<Option<Vec<SourceSpec>>>,
    /// The grid's cells.
    grid: Mutex<GridStatus>,
    /// Detected grid frames waiting for matching, one slot per source (newest only, so a fast
    /// source cannot push a slow one's frame out).
    grid_detected: Vec<LatestSlot<grid::GridPending>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section only assigns plain fields: a poisoned lock still holds valid data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Change the status and ask the UI to repaint.
    fn update(&self, f: impl FnOnce(&mut PipelineStatus)) {
        f(&mut lock(&self.status));
        (self.notify)();
    }

    /// Change counters and rates only: shown with the next frame, no repaint of its own (a
    /// repaint per counter tick would cost more than the frames themselves).
    fn count(&self, f: impl FnOnce(&mut PipelineStatus)) {
        f(&mut lock(&self.status));
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    fn matcher_ready(&self) -> bool {
        self.matcher_ready.load(Ordering::Relaxed)
    }
}

/// The running pipeline; dropping it stops the workers.
pub struct Pipeline {
    commands: Sender<SourceCommand>,
    embed_commands: Sender<EmbedCommand>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Start the threads; models load in the background while frames are already shown.
    pub fn start(loaders: Loaders, options: LiveOptions, config: PipelineConfig) -> Pipeline {
        let shared = Arc::new(Shared {
            status: Mutex::new(PipelineStatus {
                detector: Stage::Loading("starting".into()),
                looping: true,
                ..PipelineStatus::default()
            }),
            snapshot: Mutex::new(None),
            options: Mutex::new(options),
            frames: LatestSlot::new(),
            detected: LatestSlot::new(),
            matcher_ready: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            notify: config.notify.clone(),
            on_snapshot: config.on_snapshot.clone(),
            grid_request: Mutex::new(None),
            grid: Mutex::new(GridStatus::default()),
            grid_detected: (0..MAX_GRID).map(|_| LatestSlot::new()).collect(),
        });
        let (commands, command_rx) = mpsc::channel();
        let (embed_commands, embed_rx) = mpsc::channel();
        let (detector_tx, detector_rx) = mpsc::channel();

        // The loader gets its own thread: provisioning may take minutes and must not hold frames.
        {
            let shared = shared.clone();
            let refresh = commands.clone();
            let load = loaders.detector;
            std::thread::Builder::new()
                .name("arvis-load".into())
                .spawn(move || {
                    let progress =
                        |msg: String| shared.update(|s| s.detector = Stage::Loading(msg));
                    let result = load(&progress);
                    if detector_tx.send(result).is_ok() {
                        // A still or paused frame shown without boxes gets them now.
                        let _ = refresh.send(SourceCommand::Refresh);
                    }
                })
                .ok();
        }

        let mut workers = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).ok()
        };
        let capture = Capture::new(shared.clone(), command_rx, &config);
        let processor = config.processor;
        let tracking = TrackStage::new(processor.tracker);
        workers.extend(spawn("arvis-capture", Box::new(move || capture.run())));
        {
            let shared = shared.clone();
            workers.extend(spawn(
                "arvis-detect",
                Box::new(move || {
                    detection::detect_loop(&shared, &detector_rx, tracking, processor)
                }),
            ));
        }
        {
            let shared = shared.clone();
            let encoder = loaders.encoder;
            let text = loaders.text;
            let refresh = commands.clone();
            workers.extend(spawn(
                "arvis-embed",
                Box::new(move || {
                    EmbedWorker::new(shared, (encoder, text), embed_rx, refresh, processor).run()
                }),
            ));
        }
        Pipeline {
            commands,
            embed_commands,
            shared,
            workers,
        }
    }

    /// Send a command to the capture thread.
    pub fn send(&self, command: SourceCommand) {
        // Fails only after shutdown, when nothing is listening anyway.
        let _ = self.commands.send(command);
    }

    /// Open a camera, video or image.
    pub fn open(&self, spec: SourceSpec) {
        let live = spec.is_live();
        let label = spec.to_string();
        self.send(SourceCommand::Open {
            label,
            live,
            opener: Box::new(move || spec.open()),
        });
    }

    /// Show these sources side by side, each with its own capture thread and tracker, all
    /// served by the one detector (the single view's source is left as it is); an empty list
    /// ends the grid.
    pub fn set_grid(&self, mut sources: Vec<SourceSpec>) {
        sources.truncate(MAX_GRID);
        // The detection thread takes it within one poll.
        *lock(&self.shared.grid_request) = Some(sources);
    }

    /// The grid's cells (empty when there is no grid).
    pub fn grid(&self) -> GridStatus {
        lock(&self.shared.grid).clone()
    }

    /// The newest processed frame.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        lock(&self.shared.snapshot).clone()
    }

    /// What the HUD and status bar show, now.
    pub fn status(&self) -> PipelineStatus {
        lock(&self.shared.status).clone()
    }

    /// Change settings; a still or paused frame is processed again with them.
    pub fn set_options(&self, options: LiveOptions) {
        *lock(&self.shared.options) = options;
        self.send(SourceCommand::Refresh);
    }

    /// Add the images in `dir` (recursively) to the current index, in the background.
    pub fn index_folder(&self, dir: PathBuf) {
        let _ = self.embed_commands.send(EmbedCommand::AddFolder(dir));
    }

    /// Save `crop` (a region of the frame) as an image of item `label`, embed and commit it,
    /// in the background; the next frame is matched with it.
    pub fn teach(&self, crop: image::RgbImage, label: String) {
        let _ = self
            .embed_commands
            .send(EmbedCommand::Teach { crop, label });
    }

    /// Forget the gallery image at `path` (its file too when arvis saved it).
    pub fn forget(&self, path: PathBuf) {
        let _ = self.embed_commands.send(EmbedCommand::Forget(path));
    }

    /// Define item `label` by the text `prompt` (CLIP's text tower, loaded on first use).
    pub fn add_text_item(&self, prompt: String, label: String) {
        let _ = self
            .embed_commands
            .send(EmbedCommand::AddText { prompt, label });
    }

    /// Rename item `old` to `new`.
    pub fn rename_item(&self, old: String, new: String) {
        let _ = self
            .embed_commands
            .send(EmbedCommand::RenameItem { old, new });
    }

    /// Remove item `label` with its images.
    pub fn remove_item(&self, label: String) {
        let _ = self.embed_commands.send(EmbedCommand::RemoveItem(label));
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        self.shared.frames.close();
        self.shared.detected.close();
        for slot in &self.shared.grid_detected {
            slot.close();
        }
        // Detection and embedding stop within one frame; the capture thread may sit in a
        // blocking camera read, so it is left to notice the shutdown on its own.
        for w in self.workers.drain(1..) {
            let _ = w.join();
        }
    }
}

/// Publish a processed frame as the newest snapshot (`matched`: its regions' hits are real).
fn publish(shared: &Shared, d: DetectedFrame, matched: bool) {
    let now = Instant::now();
    let mut timings = d.timings;
    timings.pipeline_ms = now.duration_since(d.captured.captured_at).as_secs_f64() * 1e3;
    let snapshot = Arc::new(Snapshot {
        seq: d.captured.seq,
        frame: d.captured.frame,
        detected: d.detected,
        regions: d.regions,
        matched,
        timings,
        captured_at: d.captured.captured_at,
        published_at: now,
    });
    {
        let mut slot = lock(&shared.snapshot);
        // Never replace a newer frame with an older one (matching can finish after detection
        // already published a later frame without matches).
        if slot.as_ref().is_some_and(|s| s.seq > snapshot.seq) {
            return;
        }
        *slot = Some(snapshot.clone());
    }
    if let Some(observe) = &shared.on_snapshot {
        observe(&snapshot);
    }
    let dropped = shared.detected.dropped();
    // The one repaint per processed frame.
    shared.update(|s| {
        s.counters.published += 1;
        s.counters.dropped_before_embed = dropped;
    });
}
