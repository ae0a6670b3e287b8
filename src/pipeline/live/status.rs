//! What the live pipeline tells the UI: the state of each part, counters and rates, and the
//! immutable per-frame [`Snapshot`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::search::Region;
use crate::source::{Frame, SourceInfo};

/// Where the current source is.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SourceState {
    /// No source.
    #[default]
    Idle,
    /// Being opened.
    Opening,
    /// Delivering frames.
    Running,
    /// Paused by the user.
    Paused,
    /// A file played to its end.
    Ended,
    /// It failed.
    Failed {
        /// What went wrong, for the user.
        error: String,
        /// Live sources retry after this long; files stay failed until another is opened.
        retry_in_ms: Option<u64>,
    },
}

/// A model or index: not wanted, loading, ready, or failed — with words for the user.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Stage {
    /// Not wanted (e.g. matching off).
    #[default]
    Off,
    /// Loading, with what is happening.
    Loading(String),
    /// Ready, with a description.
    Ready(String),
    /// Not there yet, which is fine, with how to make it (no index before the first folder).
    Absent(String),
    /// Failed, with why.
    Failed(String),
}

/// Frame counts since the pipeline started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Frames read from sources.
    pub captured: u64,
    /// Frames overwritten in the slot before detection took them.
    pub dropped_before_detect: u64,
    /// Detected frames overwritten before the embedder took them.
    pub dropped_before_embed: u64,
    /// Frames the detector ran on.
    pub detected: u64,
    /// Snapshots published.
    pub published: u64,
    /// Times a live source was reopened.
    pub reconnects: u64,
    /// CLIP crops embedded, and regions given matches (per-track embedding saves the difference)
    /// since the current source and index were chosen.
    pub crops_embedded: u64,
    /// Regions given matches.
    pub regions_matched: u64,
}

/// Progress of a folder being added to the index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexJob {
    /// The folder being added.
    pub dir: PathBuf,
    /// Images processed so far.
    pub done: usize,
    /// Images to process.
    pub total: usize,
    /// Images added.
    pub added: usize,
    /// Images that could not be read.
    pub failed: usize,
    /// The job has ended.
    pub finished: bool,
    /// Why it ended early, if it did.
    pub error: Option<String>,
    /// Waiting for another process that is writing to the same index.
    pub waiting: bool,
}

/// Everything the HUD and status bar show, besides the frame itself.
#[derive(Debug, Clone, Default)]
pub struct PipelineStatus {
    /// The source's state.
    pub source: SourceState,
    /// What the source is called (path, camera:N).
    pub source_label: String,
    /// Size, rate and kind, once open.
    pub source_info: Option<SourceInfo>,
    /// Media time of the last frame.
    pub position_ms: Option<f64>,
    /// Whether a video starts over at its end.
    pub looping: bool,
    /// The detector's state.
    pub detector: Stage,
    /// The CLIP encoder's state.
    pub embedder: Stage,
    /// The index's state.
    pub index: Stage,
    /// The open gallery's items.
    pub items: Vec<crate::search::ItemSummary>,
    /// The last change asked of the gallery from the window: a count (so a repeated message is
    /// still new), what was done, or why it failed.
    pub gallery_change: Option<(u64, Result<String, String>)>,
    /// The decision the open gallery stores (`arvis index calibrate --save`), if any.
    pub gallery_decision: Option<crate::search::Decision>,
    /// A folder being added, if any.
    pub indexing: Option<IndexJob>,
    /// The detector's class names.
    pub class_names: Arc<Vec<String>>,
    /// Frame counts.
    pub counters: Counters,
    /// Frames captured per second.
    pub capture_fps: f64,
    /// Frames detected per second.
    pub inference_fps: f64,
    /// The latest per-frame error (inference or matching), if any.
    pub last_error: Option<String>,
}

/// Per-frame stage times in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameTimings {
    /// Capture to the detector picking the frame up.
    pub wait_ms: f64,
    /// Letterboxing.
    pub preprocess_ms: f64,
    /// The detector's session run.
    pub infer_ms: f64,
    /// Decoding and NMS.
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
    /// The frame itself.
    pub frame: Frame,
    /// Whether the detector ran (false while models load).
    pub detected: bool,
    /// One record per detected region: detection, track id, gallery hits.
    pub regions: Vec<Region>,
    /// Whether gallery matching ran on this frame (the regions' hits are meaningful).
    pub matched: bool,
    /// Stage times.
    pub timings: FrameTimings,
    /// When the frame was captured.
    pub captured_at: Instant,
    /// When this snapshot was published.
    pub published_at: Instant,
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

    /// Forget the history (a new source).
    pub fn reset(&mut self) {
        *self = RateMeter::default();
    }

    /// The rate as of `now` without an event: falls towards 0 once events are overdue (a
    /// stalled source must not go on showing its old rate).
    pub fn rate(&self, now: Instant) -> f64 {
        let (Some(last), Some(avg)) = (self.last, self.interval_s) else {
            return 0.0;
        };
        let since = now.duration_since(last).as_secs_f64();
        let interval = if since > 2.0 * avg { since } else { avg };
        if interval > 0.0 { 1.0 / interval } else { 0.0 }
    }
}
