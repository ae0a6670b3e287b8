//! Several sources in one window. Each source is read by a capture thread of its own
//! ([`Feeds`]: latest-frame slot, pacing, reconnect with back-off), and the pipeline's one
//! detection thread serves them with the same detector as the single view, by the detector's
//! [`Schedule`] (batched where it has a batch twin, else one source's newest frame at a time in
//! turn). Each source keeps its own tracker ([`MultiProcessor`]); the newest result of each is an
//! immutable [`GridShot`] in its [`GridCell`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::status::RateMeter;
use super::{Shared, lock};
use crate::detect::{DetectOptions, FrameDetector};
use crate::pipeline::frame::ProcessorConfig;
use crate::pipeline::multi::{FeedConfig, FeedFrame, FeedStatus, Feeds, MultiProcessor, Schedule};
use crate::search::Region;
use crate::source::{Frame, SourceSpec};

/// One source's newest processed frame.
#[derive(Clone)]
pub struct GridShot {
    /// Increases with every frame shown in the grid, across sources.
    pub seq: u64,
    /// The frame.
    pub frame: Frame,
    /// Whether the detector ran (false while it loads).
    pub detected: bool,
    /// Detections with their track ids (and gallery hits when `matched`).
    pub regions: Vec<Region>,
    /// Whether gallery matching ran on this frame (the regions' hits are meaningful).
    pub matched: bool,
    /// Capture to result, ms.
    pub latency_ms: f64,
}

/// A detected grid frame waiting for gallery matching on the embedding thread.
pub(super) struct GridPending {
    /// Which source.
    pub source: usize,
    /// Changes when the grid is restarted or the source reconnects: tracks do not carry over.
    pub generation: (u64, u64),
    /// The source's frame count, for the per-track refresh.
    pub processed: u64,
    /// When it was captured.
    pub captured_at: Instant,
    /// The shot, its `matched` still false.
    pub shot: GridShot,
}

/// Put `shot` into source `source`'s cell unless the cell already shows a newer frame.
pub(super) fn publish_shot(shared: &Shared, source: usize, shot: Arc<GridShot>) {
    {
        let mut grid = lock(&shared.grid);
        let Some(cell) = grid.cells.get_mut(source) else {
            return;
        };
        if cell.shot.as_ref().is_some_and(|s| s.seq > shot.seq) {
            return;
        }
        cell.shot = Some(shot);
    }
    (shared.notify)();
}

/// One source of the grid, as the UI shows it.
#[derive(Clone, Default)]
pub struct GridCell {
    /// The source as shown (a URL's password masked).
    pub name: String,
    /// Open, running, failed and retrying, ended; fps, drops, reconnects.
    pub status: FeedStatus,
    /// Frames detected per second, recently.
    pub processed_fps: f64,
    /// The newest result.
    pub shot: Option<Arc<GridShot>>,
}

/// What the grid is doing, for the UI.
#[derive(Clone, Default)]
pub struct GridStatus {
    /// One cell per source, in the order given.
    pub cells: Vec<GridCell>,
    /// How frames reach the detector ("batched", "one at a time").
    pub schedule: Option<String>,
}

/// The detection thread's grid state.
pub(super) struct Grid {
    /// Which grid this is (a new list of sources is a new grid).
    id: u64,
    feeds: Feeds,
    processor: MultiProcessor,
    rates: Vec<RateMeter>,
    seq: u64,
    /// Frames shown before the detector was loaded: detected once it is (a still image has
    /// no other frame to show its boxes on).
    undetected: Vec<Option<FeedFrame>>,
}

impl Grid {
    /// Start reading `specs` (files loop when `looping`).
    pub(super) fn start(
        id: u64,
        specs: &[SourceSpec],
        config: ProcessorConfig,
        looping: bool,
    ) -> Grid {
        let feeds = Feeds::start(
            specs,
            FeedConfig {
                looping,
                ..FeedConfig::default()
            },
        );
        Grid {
            id,
            processor: MultiProcessor::new(specs.len(), config),
            rates: (0..specs.len()).map(|_| RateMeter::default()).collect(),
            undetected: vec![None; specs.len()],
            feeds,
            seq: 0,
        }
    }

    /// One turn: the next frames by the detector's schedule, detected (when the detector is
    /// loaded) and tracked per source, published to the grid's cells; with `matching`, frames
    /// with regions go to the embedding thread first.
    pub(super) fn serve(
        &mut self,
        shared: &Shared,
        detector: Option<&mut Box<dyn FrameDetector>>,
        opts: &DetectOptions,
        (poll, matching): (Duration, bool),
    ) {
        let schedule = match &detector {
            Some(d) if d.batched() => Schedule::Batched,
            _ => Schedule::OneAtATime,
        };
        let mut frames = self.feeds.next(schedule, poll);
        if detector.is_some() {
            for (source, pending) in self.undetected.iter_mut().enumerate() {
                if let Some(f) = pending.take()
                    && !frames.iter().any(|(s, _)| *s == source)
                {
                    frames.push((source, f));
                }
            }
        }
        let mut shots: Vec<(usize, Arc<GridShot>)> = Vec::new();
        match detector {
            Some(det) if !frames.is_empty() => {
                match self
                    .processor
                    .process_round(frames, det.as_mut(), opts, None)
                {
                    Ok(results) => {
                        for r in results.into_iter().flatten() {
                            self.seq += 1;
                            self.rates[r.source].tick(Instant::now());
                            let shot = GridShot {
                                seq: self.seq,
                                latency_ms: r.latency_ms,
                                frame: r.frame.frame,
                                detected: true,
                                regions: r.regions,
                                matched: false,
                            };
                            if matching && !shot.regions.is_empty() {
                                let pending = GridPending {
                                    source: r.source,
                                    generation: (self.id, r.frame.generation),
                                    processed: r.processed,
                                    captured_at: r.frame.captured_at,
                                    shot,
                                };
                                if let Some(slot) = shared.grid_detected.get(r.source) {
                                    slot.put(pending);
                                }
                            } else {
                                shots.push((r.source, Arc::new(shot)));
                            }
                        }
                    }
                    Err(e) => {
                        shared.update(|s| s.last_error = Some(format!("detection failed: {e}")))
                    }
                }
            }
            // Frames are shown while the detector loads.
            _ => {
                for (source, f) in frames {
                    self.seq += 1;
                    if let Some(pending) = self.undetected.get_mut(source) {
                        *pending = Some(f.clone());
                    }
                    shots.push((
                        source,
                        Arc::new(GridShot {
                            seq: self.seq,
                            latency_ms: f.captured_at.elapsed().as_secs_f64() * 1e3,
                            frame: f.frame,
                            detected: false,
                            regions: Vec::new(),
                            matched: false,
                        }),
                    ));
                }
            }
        }
        let changed = !shots.is_empty();
        {
            let mut grid = lock(&shared.grid);
            grid.schedule = Some(schedule.to_string());
            let feeds = self.feeds.feeds();
            grid.cells.resize_with(feeds.len(), GridCell::default);
            for (i, (cell, feed)) in grid.cells.iter_mut().zip(feeds).enumerate() {
                cell.name.clone_from(&feed.name);
                cell.status = feed.status();
                cell.processed_fps = self.rates[i].rate(Instant::now());
            }
            for (source, shot) in shots {
                if let Some(cell) = grid.cells.get_mut(source)
                    && cell.shot.as_ref().is_none_or(|s| s.seq <= shot.seq)
                {
                    cell.shot = Some(shot);
                }
            }
        }
        if changed {
            (shared.notify)();
        }
    }

    /// Stop the capture threads (a thread inside a stream read finishes it on its own).
    pub(super) fn stop(&mut self) {
        self.feeds.stop(Duration::from_millis(100));
    }
}
