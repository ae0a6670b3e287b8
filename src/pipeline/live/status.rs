//! What the live pipeline tells the UI: the state of each part, counters and rates, and the
//! immutable per-frame [`Snapshot`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::search::Region;
use crate::source::{Frame, SourceInfo};

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
    /// One record per detected region: detection, track id, gallery hits.
    pub regions: Vec<Region>,
    /// Whether gallery matching ran on this frame (the regions' hits are meaningful).
    pub matched: bool,
    pub timings: FrameTimings,
    pub captured_at: Instant,
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

    pub fn reset(&mut self) {
        *self = RateMeter::default();
    }
}
