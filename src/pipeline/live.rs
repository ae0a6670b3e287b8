//! The app's live pipeline. Four threads, each owning its state, joined by one-element
//! latest-value slots so a slow stage drops stale frames instead of queueing them:
//!
//! capture (source, pacing, reconnect) → [frames] → detection → [detected] → embedding + search
//! → an immutable [`Snapshot`] the UI picks up whenever it paints. The UI never waits on
//! inference; it only reads the newest snapshot and the [`PipelineStatus`].
//!
//! Errors end here: each is shown once through the status, and the pipeline keeps running.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::slot::LatestSlot;
use crate::detect::{DetectOptions, Detection, Detector};
use crate::embed::ImageEncoder;
use crate::search::{
    GalleryIndex, Hit, IndexError, IndexMeta, RegionMatcher, TrackMatches, ingest,
};
use crate::source::{Frame, FrameSource, SourceError, SourceInfo, SourceKind, SourceSpec};
use crate::track::{Tracked, Tracker, TrackerConfig};

/// How long idle workers sleep between checks for shutdown.
const POLL: Duration = Duration::from_millis(50);
/// Paced playback that falls further behind than this re-anchors instead of racing to catch up.
const MAX_LAG: Duration = Duration::from_millis(250);
/// Frames (at the detector's rate) after which a track is embedded again.
const TRACK_REFRESH_FRAMES: u64 = 15;

/// Opens (and re-opens, after a failure) a source.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn FrameSource>, SourceError> + Send>;

/// What the UI asks of the capture thread.
pub enum SourceCommand {
    /// Switch to a new source. `live` sources (cameras) are reopened with back-off after errors.
    Open {
        label: String,
        live: bool,
        opener: Opener,
    },
    Close,
    Pause(bool),
    /// While paused: capture exactly one more frame.
    Step,
    Seek(f64),
    SetLoop(bool),
    /// Send the last frame through again (settings changed on a still or paused source).
    Refresh,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum SourceState {
    #[default]
    Idle,
    Opening,
    Running,
    Paused,
    Ended,
    Failed {
        error: String,
        /// Live sources retry after this long; files stay failed until another is opened.
        retry_in_ms: Option<u64>,
    },
}

/// A model or index: not wanted, loading, ready, or failed — with words for the user.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Stage {
    #[default]
    Off,
    Loading(String),
    Ready(String),
    Failed(String),
}

/// Settings the workers read per frame.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveOptions {
    pub detect: DetectOptions,
    pub index_dir: PathBuf,
    pub match_enabled: bool,
    pub match_k: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub captured: u64,
    /// Frames overwritten in the slot before detection took them.
    pub dropped_before_detect: u64,
    /// Detected frames overwritten before the embedder took them.
    pub dropped_before_embed: u64,
    pub detected: u64,
    pub published: u64,
    pub reconnects: u64,
    /// CLIP crops embedded, and regions given matches (per-track embedding saves the difference)
    /// since the current source and index were chosen.
    pub crops_embedded: u64,
    pub regions_matched: u64,
}

/// Progress of a folder being added to the index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexJob {
    pub dir: PathBuf,
    pub done: usize,
    pub total: usize,
    pub added: usize,
    pub failed: usize,
    pub finished: bool,
    pub error: Option<String>,
    /// Waiting for another process that is writing to the same index.
    pub waiting: bool,
}

/// Everything the HUD and status bar show, besides the frame itself.
#[derive(Debug, Clone, Default)]
pub struct PipelineStatus {
    pub source: SourceState,
    pub source_label: String,
    pub source_info: Option<SourceInfo>,
    pub position_ms: Option<f64>,
    pub looping: bool,
    pub detector: Stage,
    pub embedder: Stage,
    pub index: Stage,
    pub indexing: Option<IndexJob>,
    pub class_names: Arc<Vec<String>>,
    pub counters: Counters,
    pub capture_fps: f64,
    pub inference_fps: f64,
    /// The latest per-frame error (inference or matching), if any.
    pub last_error: Option<String>,
}

/// Per-frame stage times in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameTimings {
    /// Capture to the detector picking the frame up.
    pub wait_ms: f64,
    pub preprocess_ms: f64,
    pub infer_ms: f64,
    pub postprocess_ms: f64,
    /// Crop + embed + search of all regions.
    pub match_ms: f64,
    /// Capture to snapshot published.
    pub pipeline_ms: f64,
}

/// One processed frame, immutable once published.
pub struct Snapshot {
    /// Increases with every captured frame, across sources.
    pub seq: u64,
    pub frame: Frame,
    /// Whether the detector ran (false while models load).
    pub detected: bool,
    pub detections: Vec<Detection>,
    /// Track id per detection (None until a track is confirmed).
    pub track_ids: Vec<Option<u64>>,
    /// Top gallery hits per detection, when matching ran.
    pub matches: Option<Vec<Vec<Hit>>>,
    pub timings: FrameTimings,
    pub captured_at: Instant,
    pub published_at: Instant,
}

/// What the live pipeline needs of a detector: its class names, and detections for one frame
/// with the time each stage took. Implemented by [`Detector`]; tests wrap the real one to hold
/// it at a known moment.
pub trait FrameDetector: Send {
    fn labels(&self) -> &[String];
    /// Detections for `image`, and (preprocess, inference, postprocess) milliseconds.
    fn detect_frame(
        &mut self,
        image: &image::RgbImage,
        opts: &DetectOptions,
    ) -> Result<(Vec<Detection>, [f64; 3]), crate::detect::DetectError>;
}

impl FrameDetector for Detector {
    fn labels(&self) -> &[String] {
        Detector::labels(self)
    }

    fn detect_frame(
        &mut self,
        image: &image::RgbImage,
        opts: &DetectOptions,
    ) -> Result<(Vec<Detection>, [f64; 3]), crate::detect::DetectError> {
        let (dets, t) = self.detect(image, opts)?;
        Ok((dets, [t.preprocess, t.infer, t.postprocess]))
    }
}

/// A detector ready to run, and how to describe it ("yolov8n-int8 on cpu").
pub struct LoadedDetector {
    pub detector: Box<dyn FrameDetector>,
    pub description: String,
}

pub struct LoadedEncoder {
    pub encoder: ImageEncoder,
    pub meta: IndexMeta,
    pub description: String,
}

/// Progress callback for loaders: short words like "provisioning ONNX Runtime".
pub type Progress<'a> = &'a dyn Fn(String);

/// How models are obtained. Loading runs on worker threads; provisioning on first run can take
/// minutes, during which frames are shown without detections.
pub struct Loaders {
    pub detector: Box<dyn FnOnce(Progress<'_>) -> anyhow::Result<LoadedDetector> + Send>,
    /// Called the first time matching or indexing needs CLIP.
    pub encoder: Box<dyn FnMut(Progress<'_>) -> anyhow::Result<LoadedEncoder> + Send>,
}

pub struct PipelineConfig {
    /// First reconnect delay for a failed live source; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Called whenever there is something new to paint.
    pub notify: Arc<dyn Fn() + Send + Sync>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            notify: Arc::new(|| {}),
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

struct Detected {
    captured: Captured,
    detected: bool,
    detections: Vec<Detection>,
    track_ids: Vec<Option<u64>>,
    timings: FrameTimings,
}

enum EmbedCommand {
    AddFolder(PathBuf),
}

struct Shared {
    status: Mutex<PipelineStatus>,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    options: Mutex<LiveOptions>,
    frames: LatestSlot<Captured>,
    detected: LatestSlot<Detected>,
    /// Encoder loaded and the index for the current `index_dir` open.
    matcher_ready: AtomicBool,
    shutdown: AtomicBool,
    notify: Arc<dyn Fn() + Send + Sync>,
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
}

/// Frames per second from an exponentially weighted mean of intervals.
#[derive(Debug, Default)]
pub struct RateMeter {
    last: Option<Instant>,
    interval_s: Option<f64>,
}

impl RateMeter {
    /// Record an event; returns the current rate.
    pub fn tick(&mut self, now: Instant) -> f64 {
        if let Some(last) = self.last {
            let dt = now.duration_since(last).as_secs_f64();
            self.interval_s = Some(match self.interval_s {
                Some(avg) => 0.9 * avg + 0.1 * dt,
                None => dt,
            });
        }
        self.last = Some(now);
        self.interval_s
            .map_or(0.0, |s| if s > 0.0 { 1.0 / s } else { 0.0 })
    }

    pub fn reset(&mut self) {
        *self = RateMeter::default();
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
        workers.extend(spawn("arvis-capture", Box::new(move || capture.run())));
        {
            let shared = shared.clone();
            workers.extend(spawn(
                "arvis-detect",
                Box::new(move || detect_loop(&shared, &detector_rx)),
            ));
        }
        {
            let shared = shared.clone();
            let encoder = loaders.encoder;
            let refresh = commands.clone();
            workers.extend(spawn(
                "arvis-embed",
                Box::new(move || EmbedWorker::new(shared, encoder, embed_rx, refresh).run()),
            ));
        }
        Pipeline {
            commands,
            embed_commands,
            shared,
            workers,
        }
    }

    pub fn send(&self, command: SourceCommand) {
        // Fails only after shutdown, when nothing is listening anyway.
        let _ = self.commands.send(command);
    }

    /// Open a camera, video or image.
    pub fn open(&self, spec: SourceSpec) {
        let live = matches!(spec, SourceSpec::Camera(_));
        let label = spec.to_string();
        self.send(SourceCommand::Open {
            label,
            live,
            opener: Box::new(move || spec.open()),
        });
    }

    /// The newest processed frame.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        lock(&self.shared.snapshot).clone()
    }

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
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        self.shared.frames.close();
        self.shared.detected.close();
        // Detection and embedding stop within one frame; the capture thread may sit in a
        // blocking camera read, so it is left to notice the shutdown on its own.
        for w in self.workers.drain(1..) {
            let _ = w.join();
        }
    }
}

struct Capture {
    shared: Arc<Shared>,
    rx: Receiver<SourceCommand>,
    source: Option<Box<dyn FrameSource>>,
    opener: Option<Opener>,
    live: bool,
    paused: bool,
    step: bool,
    looping: bool,
    ended: bool,
    failed: bool,
    retry_at: Option<Instant>,
    delay: Duration,
    backoff: (Duration, Duration),
    /// Wall-clock instant and media time of the pacing anchor.
    anchor: Option<(Instant, f64)>,
    last: Option<Captured>,
    seq: u64,
    generation: u64,
    rate: RateMeter,
}

/// What a command means for a frame waiting to be shown.
enum Pending {
    Keep,
    Discard,
}

impl Capture {
    fn new(shared: Arc<Shared>, rx: Receiver<SourceCommand>, config: &PipelineConfig) -> Capture {
        Capture {
            shared,
            rx,
            source: None,
            opener: None,
            live: false,
            paused: false,
            step: false,
            looping: true,
            ended: false,
            failed: false,
            retry_at: None,
            delay: config.backoff_initial,
            backoff: (config.backoff_initial, config.backoff_max),
            anchor: None,
            last: None,
            seq: 0,
            generation: 0,
            rate: RateMeter::default(),
        }
    }

    fn idle(&self) -> bool {
        self.opener.is_none()
            || (self.paused && !self.step)
            || self.ended
            || (self.failed && self.retry_at.is_none())
    }

    fn run(mut self) {
        loop {
            if self.shared.stopping() {
                return;
            }
            let wait = if self.idle() {
                Some(POLL)
            } else {
                self.retry_at
                    .map(|at| at.saturating_duration_since(Instant::now()).min(POLL))
                    .filter(|d| !d.is_zero())
            };
            let command = match wait {
                Some(d) => match self.rx.recv_timeout(d) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match self.rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                },
            };
            if let Some(c) = command {
                self.apply(c);
                continue;
            }
            if wait.is_some() {
                continue;
            }
            if self.retry_at.take().is_some() {
                self.failed = false;
            }
            if self.source.is_none() {
                self.open_source();
            } else {
                self.capture_one();
            }
        }
    }

    fn set_state(&self, state: SourceState) {
        self.shared.update(|s| s.source = state);
    }

    fn running_state(&self) -> SourceState {
        if self.paused {
            SourceState::Paused
        } else {
            SourceState::Running
        }
    }

    fn apply(&mut self, command: SourceCommand) -> Pending {
        match command {
            SourceCommand::Open {
                label,
                live,
                opener,
            } => {
                self.source = None;
                self.opener = Some(opener);
                self.live = live;
                self.paused = false;
                self.step = false;
                self.ended = false;
                self.failed = false;
                self.retry_at = None;
                self.delay = self.backoff.0;
                self.anchor = None;
                self.last = None;
                self.generation += 1;
                self.rate.reset();
                self.shared.update(|s| {
                    s.source = SourceState::Opening;
                    s.source_label = label;
                    s.source_info = None;
                    s.position_ms = None;
                    s.capture_fps = 0.0;
                });
                Pending::Discard
            }
            SourceCommand::Close => {
                self.source = None;
                self.opener = None;
                self.last = None;
                self.shared.update(|s| {
                    s.source = SourceState::Idle;
                    s.source_info = None;
                    s.capture_fps = 0.0;
                });
                Pending::Discard
            }
            SourceCommand::Pause(p) => {
                if self.paused == p {
                    return Pending::Keep;
                }
                self.paused = p;
                self.anchor = None;
                self.rate.reset();
                if !self.ended && self.source.is_some() {
                    self.set_state(self.running_state());
                }
                Pending::Discard
            }
            SourceCommand::Step => {
                if self.paused {
                    self.step = true;
                }
                Pending::Keep
            }
            SourceCommand::Seek(ms) => {
                let Some(source) = self.source.as_mut() else {
                    return Pending::Keep;
                };
                match source.seek(ms) {
                    Ok(()) => {
                        self.anchor = None;
                        if self.ended {
                            self.ended = false;
                            self.set_state(self.running_state());
                        }
                        // Show the frame at the new position even while paused.
                        self.step = self.paused;
                    }
                    Err(e) => self.shared.update(|s| s.last_error = Some(e.to_string())),
                }
                Pending::Discard
            }
            SourceCommand::SetLoop(looping) => {
                self.looping = looping;
                self.shared.update(|s| s.looping = looping);
                Pending::Keep
            }
            SourceCommand::Refresh => {
                if let Some(last) = &self.last {
                    let mut again = last.clone();
                    self.seq += 1;
                    again.seq = self.seq;
                    again.captured_at = Instant::now();
                    self.shared.frames.put(again);
                }
                Pending::Keep
            }
        }
    }

    fn open_source(&mut self) {
        if self.opener.is_none() {
            return;
        }
        self.set_state(SourceState::Opening);
        let Some(opener) = self.opener.as_mut() else {
            return;
        };
        match opener() {
            Ok(source) => {
                let info = source.info().clone();
                self.source = Some(source);
                self.delay = self.backoff.0;
                let state = self.running_state();
                self.shared.update(|s| {
                    s.source_info = Some(info);
                    s.source = state;
                });
            }
            Err(e) => self.fail(&e),
        }
    }

    fn fail(&mut self, error: &SourceError) {
        self.source = None;
        self.rate.reset();
        let retry_in_ms = if self.live {
            self.retry_at = Some(Instant::now() + self.delay);
            let ms = self.delay.as_millis() as u64;
            self.delay = (self.delay * 2).min(self.backoff.1);
            Some(ms)
        } else {
            self.failed = true;
            None
        };
        let live = self.live;
        self.shared.update(|s| {
            s.source = SourceState::Failed {
                error: error.to_string(),
                retry_in_ms,
            };
            s.capture_fps = 0.0;
            if live {
                s.counters.reconnects += 1;
            }
        });
    }

    /// Sleep until the frame's media time, handling commands meanwhile.
    fn pace(&mut self, pts_ms: f64) -> Pending {
        let now = Instant::now();
        let (t0, p0) = *self.anchor.get_or_insert((now, pts_ms));
        let offset = Duration::from_secs_f64(((pts_ms - p0) / 1e3).max(0.0));
        let due = t0 + offset;
        if now > due + MAX_LAG || pts_ms < p0 {
            self.anchor = Some((now, pts_ms));
            return Pending::Keep;
        }
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() || self.shared.stopping() {
                return Pending::Keep;
            }
            match self.rx.recv_timeout(left.min(POLL)) {
                Ok(c) => {
                    if let Pending::Discard = self.apply(c) {
                        return Pending::Discard;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Pending::Discard,
            }
        }
    }

    fn capture_one(&mut self) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        let kind = source.info().kind;
        match source.next_frame() {
            Ok(Some(frame)) => {
                let stepping = self.step;
                if !self.live && !stepping {
                    if let Some(pts) = frame.pts_ms {
                        if let Pending::Discard = self.pace(pts) {
                            return;
                        }
                    }
                }
                self.step = false;
                self.seq += 1;
                let now = Instant::now();
                let captured = Captured {
                    seq: self.seq,
                    source_generation: self.generation,
                    frame,
                    captured_at: now,
                };
                let position = captured.frame.pts_ms;
                self.last = Some(captured.clone());
                self.shared.frames.put(captured);
                let fps = if stepping { 0.0 } else { self.rate.tick(now) };
                let dropped = self.shared.frames.dropped();
                let state = self.running_state();
                let changed = lock(&self.shared.status).source != state;
                let apply = |s: &mut PipelineStatus| {
                    s.counters.captured += 1;
                    s.counters.dropped_before_detect = dropped;
                    s.capture_fps = fps;
                    s.position_ms = position;
                    s.source = state;
                };
                if changed {
                    self.shared.update(apply);
                } else {
                    self.shared.count(apply);
                }
            }
            Ok(None) => {
                // A file cut short ends early and silently in the decoder: say so, naming it.
                let this_source = self
                    .last
                    .as_ref()
                    .filter(|c| c.source_generation == self.generation);
                let (frames, last) = this_source.map_or((0, None), |c| (1, c.frame.pts_ms));
                if kind == SourceKind::Video
                    && let Some(message) =
                        crate::source::stream::truncation(source.info(), frames, last)
                {
                    self.fail(&SourceError::Other(message));
                } else if kind == SourceKind::Video && self.looping {
                    match source.seek(0.0) {
                        Ok(()) => self.anchor = None,
                        Err(e) => self.fail(&e),
                    }
                } else {
                    self.ended = true;
                    self.rate.reset();
                    self.shared.update(|s| {
                        s.source = SourceState::Ended;
                        s.capture_fps = 0.0;
                    });
                }
            }
            Err(e) => self.fail(&e),
        }
    }
}

fn detect_loop(shared: &Shared, loaded: &Receiver<anyhow::Result<LoadedDetector>>) {
    let mut detector: Option<Box<dyn FrameDetector>> = None;
    let mut rate = RateMeter::default();
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut generation = 0;
    let poll_loader = |detector: &mut Option<Box<dyn FrameDetector>>| {
        if detector.is_some() {
            return;
        }
        match loaded.try_recv() {
            Ok(Ok(l)) => {
                let names = Arc::new(l.detector.labels().to_vec());
                shared.update(|s| {
                    s.detector = Stage::Ready(l.description);
                    s.class_names = names;
                });
                *detector = Some(l.detector);
            }
            Ok(Err(e)) => shared.update(|s| s.detector = Stage::Failed(format!("{e:#}"))),
            Err(_) => {}
        }
    };
    while !shared.stopping() {
        poll_loader(&mut detector);
        let Some(captured) = shared.frames.take_timeout(POLL) else {
            continue;
        };
        // Again after taking the frame: the refresh sent when loading finishes must find the
        // detector in place.
        poll_loader(&mut detector);
        let mut timings = FrameTimings {
            wait_ms: captured.captured_at.elapsed().as_secs_f64() * 1e3,
            ..FrameTimings::default()
        };
        let options = lock(&shared.options).clone();
        let mut detections = Vec::new();
        let mut ran = false;
        if let Some(det) = detector.as_mut() {
            match det.detect_frame(&captured.frame.image, &options.detect) {
                Ok((dets, [pre, infer, post])) => {
                    detections = dets;
                    timings.preprocess_ms = pre;
                    timings.infer_ms = infer;
                    timings.postprocess_ms = post;
                    ran = true;
                }
                Err(e) => shared.update(|s| s.last_error = Some(format!("detection failed: {e}"))),
            }
        }
        if captured.source_generation != generation {
            generation = captured.source_generation;
            tracker = Tracker::new(TrackerConfig::default());
        }
        let track_ids = if ran {
            tracker
                .update(&detections)
                .iter()
                .map(|t| t.track_id)
                .collect()
        } else {
            Vec::new()
        };
        let fps = if ran { rate.tick(Instant::now()) } else { 0.0 };
        if ran {
            shared.count(|s| {
                s.counters.detected += 1;
                s.inference_fps = fps;
            });
        }
        let d = Detected {
            captured,
            detected: ran,
            detections,
            track_ids,
            timings,
        };
        if ran
            && !d.detections.is_empty()
            && options.match_enabled
            && shared.matcher_ready.load(Ordering::Relaxed)
        {
            shared.detected.put(d);
        } else {
            publish(shared, d, None);
        }
    }
}

fn publish(shared: &Shared, d: Detected, matches: Option<Vec<Vec<Hit>>>) {
    let now = Instant::now();
    let mut timings = d.timings;
    timings.pipeline_ms = now.duration_since(d.captured.captured_at).as_secs_f64() * 1e3;
    let snapshot = Snapshot {
        seq: d.captured.seq,
        frame: d.captured.frame,
        detected: d.detected,
        detections: d.detections,
        track_ids: d.track_ids,
        matches,
        timings,
        captured_at: d.captured.captured_at,
        published_at: now,
    };
    {
        let mut slot = lock(&shared.snapshot);
        // Never replace a newer frame with an older one (matching can finish after detection
        // already published a later frame without matches).
        if slot.as_ref().is_some_and(|s| s.seq > snapshot.seq) {
            return;
        }
        *slot = Some(Arc::new(snapshot));
    }
    let dropped = shared.detected.dropped();
    // The one repaint per processed frame.
    shared.update(|s| {
        s.counters.published += 1;
        s.counters.dropped_before_embed = dropped;
    });
}

struct EmbedWorker {
    shared: Arc<Shared>,
    /// To re-run a still or paused frame once matching becomes possible.
    refresh: Sender<SourceCommand>,
    load: Box<dyn FnMut(Progress<'_>) -> anyhow::Result<LoadedEncoder> + Send>,
    rx: Receiver<EmbedCommand>,
    encoder: Option<LoadedEncoder>,
    encoder_failed: bool,
    /// The open index and its directory.
    index: Option<(PathBuf, GalleryIndex)>,
    /// The directory whose index failed to open (not retried until it changes or is rebuilt).
    index_failed: Option<PathBuf>,
    k: usize,
    /// Matches carried per track (reset with the source or the index).
    per_track: TrackMatches,
    per_track_key: (u64, Option<PathBuf>, usize),
}

impl EmbedWorker {
    fn new(
        shared: Arc<Shared>,
        load: Box<dyn FnMut(Progress<'_>) -> anyhow::Result<LoadedEncoder> + Send>,
        rx: Receiver<EmbedCommand>,
        refresh: Sender<SourceCommand>,
    ) -> EmbedWorker {
        EmbedWorker {
            shared,
            refresh,
            load,
            rx,
            encoder: None,
            encoder_failed: false,
            index: None,
            index_failed: None,
            k: 3,
            per_track: TrackMatches::new(TRACK_REFRESH_FRAMES),
            per_track_key: (0, None, 0),
        }
    }

    fn run(mut self) {
        while !self.shared.stopping() {
            while let Ok(cmd) = self.rx.try_recv() {
                match cmd {
                    EmbedCommand::AddFolder(dir) => self.add_folder(&dir),
                }
            }
            let options = lock(&self.shared.options).clone();
            self.k = options.match_k.max(1);
            let ready = options.match_enabled && self.ensure_index(&options.index_dir);
            if ready && !self.shared.matcher_ready.swap(ready, Ordering::Relaxed) {
                let _ = self.refresh.send(SourceCommand::Refresh);
            }
            self.shared.matcher_ready.store(ready, Ordering::Relaxed);
            let Some(d) = self.shared.detected.take_timeout(POLL) else {
                continue;
            };
            let matches = if ready { self.match_regions(&d) } else { None };
            let mut d = d;
            if let Some((ms, _)) = &matches {
                d.timings.match_ms = *ms;
            }
            publish(&self.shared, d, matches.map(|(_, m)| m));
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

    /// Open the index in `dir` if it is not the one open; false if it cannot be used.
    fn ensure_index(&mut self, dir: &PathBuf) -> bool {
        if self.index.as_ref().is_some_and(|(d, _)| d == dir) {
            return true;
        }
        if self.index_failed.as_ref() == Some(dir) {
            return false;
        }
        // No index yet: say how to make one, and do not load CLIP for nothing.
        if !GalleryIndex::exists(dir) {
            self.index = None;
            let message = format!(
                "no index in {} yet: drop a folder of images on the window to build one",
                dir.display()
            );
            if lock(&self.shared.status).index != Stage::Failed(message.clone()) {
                self.shared.update(|s| s.index = Stage::Failed(message));
            }
            return false;
        }
        if !self.ensure_encoder() {
            return false;
        }
        let Some(meta) = self.encoder.as_ref().map(|e| e.meta.clone()) else {
            return false;
        };
        self.index = None;
        match GalleryIndex::open(dir, &meta) {
            Ok(index) => {
                let count = index.len().unwrap_or(0);
                self.index = Some((dir.clone(), index));
                self.index_failed = None;
                self.shared
                    .update(|s| s.index = Stage::Ready(format!("{count} images")));
                true
            }
            Err(e) => {
                let message = match e {
                    IndexError::Missing(_) => format!(
                        "no index in {} yet: drop a folder of images on the window to build one",
                        dir.display()
                    ),
                    other => other.to_string(),
                };
                self.index_failed = Some(dir.clone());
                self.shared.update(|s| s.index = Stage::Failed(message));
                false
            }
        }
    }

    /// Matches per detection; each track is embedded when it appears or its box changed a lot,
    /// and every TRACK_REFRESH_FRAMES frames; in between its matches carry over.
    fn match_regions(&mut self, d: &Detected) -> Option<(f64, Vec<Vec<Hit>>)> {
        let (Some(encoder), Some((dir, index))) = (self.encoder.as_mut(), self.index.as_mut())
        else {
            return None;
        };
        let key = (d.captured.source_generation, Some(dir.clone()), self.k);
        if key != self.per_track_key {
            self.per_track = TrackMatches::new(TRACK_REFRESH_FRAMES);
            self.per_track_key = key;
        }
        let t0 = Instant::now();
        let tracked: Vec<Tracked> = d
            .detections
            .iter()
            .enumerate()
            .map(|(i, det)| Tracked {
                detection: *det,
                track_id: d.track_ids.get(i).copied().flatten(),
            })
            .collect();
        let (k, img) = (self.k, &d.captured.frame.image);
        let result = self
            .per_track
            .match_frame(d.captured.seq, &tracked, &mut |dets| {
                RegionMatcher::match_with(&mut encoder.encoder, index, k, img, dets)
            });
        let (embedded, regions) = (self.per_track.embedded, self.per_track.regions);
        self.shared.count(|s| {
            s.counters.crops_embedded = embedded;
            s.counters.regions_matched = regions;
        });
        match result {
            Ok(hits) => Some((t0.elapsed().as_secs_f64() * 1e3, hits)),
            Err(e) => {
                self.shared
                    .update(|s| s.last_error = Some(format!("matching failed: {e}")));
                None
            }
        }
    }

    fn add_folder(&mut self, dir: &std::path::Path) {
        let index_dir = lock(&self.shared.options).index_dir.clone();
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
        let result = self.add_folder_inner(dir, &index_dir, &mut job);
        job.finished = true;
        job.error = result.err().map(|e| format!("{e:#}"));
        self.shared.update(|s| s.indexing = Some(job));
    }

    fn add_folder_inner(
        &mut self,
        dir: &std::path::Path,
        index_dir: &std::path::Path,
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
        // The matching index is read-only; adding opens the index for writing, and waits for any
        // other writer (an `arvis index add` in a terminal) to finish first.
        let mut index = GalleryIndex::open_or_create(index_dir, &encoder.meta)?;
        let _lock = index.lock_for_writing(&mut || {
            job.waiting = true;
            self.shared.update(|s| s.indexing = Some(job.clone()));
        })?;
        job.waiting = false;
        index.prepare_ann()?;
        let plan = ingest::plan(&index, &paths)?;
        job.total = plan.todo.len();
        job.failed = plan.failed.len();
        self.shared.update(|s| s.indexing = Some(job.clone()));
        let failed = std::cell::Cell::new(0);
        let shared = self.shared.clone();
        if !shared.stopping() {
            // The callback keeps `job` current (done, added) after every batch.
            let before = job.added;
            ingest::add_all(
                &mut index,
                &mut encoder.encoder,
                &plan.todo,
                &mut |_, _| failed.set(failed.get() + 1),
                &mut |done, added| {
                    job.done = done;
                    job.added = before + added;
                    shared.update(|s| {
                        s.indexing = Some(IndexJob {
                            failed: job.failed + failed.get(),
                            ..job.clone()
                        })
                    });
                    if shared.stopping() {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                },
            )?;
        }
        job.failed += failed.get();
        index.save()?;
        let count = index.len()?;
        drop(_lock);
        self.index = Some((
            index_dir.to_path_buf(),
            GalleryIndex::open(index_dir, &encoder.meta)?,
        ));
        self.index_failed = None;
        self.shared
            .update(|s| s.index = Stage::Ready(format!("{count} images")));
        Ok(())
    }
}
