//! Many sources, one detector. Each source has a capture thread of its own (open, read, pace a
//! file to its timestamps, reconnect a lost camera or stream with back-off) writing into its own
//! latest-frame slot, so a slow round drops that source's stale frames instead of queueing them.
//! [`Feeds::next_round`] takes every source's fresh frame at once (round robin, never more than
//! one per source), [`MultiProcessor::process_round`] detects them as one batch
//! ([`FrameDetector::detect_frames`]) and tracks and matches each with the source's own state.
//!
//! Fairness follows from the round: a source with a fresh frame is in the next round whatever
//! the others do, so none starves, and its latency is bounded by one round (at most one frame
//! per source) plus its own frame; a stalled or reconnecting source simply has no frame in it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::frame::{FrameProcessor, ProcessError, ProcessorConfig};
use super::live::{Backoff, RateMeter, SourceState};
use super::slot::LatestSlot;
use crate::detect::{DetectOptions, FrameDetector};
use crate::search::{Region, RegionMatcher};
use crate::source::{Frame, FrameSource, SourceError, SourceInfo, SourceKind, SourceSpec};

/// How long a sleeping capture thread waits between checks for shutdown.
const POLL: Duration = Duration::from_millis(50);
/// Paced playback further behind than this re-anchors instead of racing to catch up.
const MAX_LAG: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections only assign plain fields: a poisoned lock still holds valid data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How the capture threads behave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedConfig {
    /// First reconnect delay for a lost live source; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// The longest reconnect delay.
    pub backoff_max: Duration,
    /// Whether a video file starts over at its end (else it ends).
    pub looping: bool,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            looping: false,
        }
    }
}

/// One frame from one source.
#[derive(Clone)]
pub struct FeedFrame {
    /// The frame.
    pub frame: Frame,
    /// When it was read.
    pub captured_at: Instant,
    /// Counts the source's (re)openings: tracks do not carry over a reconnect.
    pub generation: u64,
}

/// What one source is doing, for stats and the HUD.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedStatus {
    /// Opening, running, failed (with the retry delay), ended.
    pub state: SourceState,
    /// What was negotiated with it, once open.
    pub info: Option<SourceInfo>,
    /// Frames read.
    pub captured: u64,
    /// Frames overwritten before a round took them.
    pub dropped: u64,
    /// Times it was lost and opened again.
    pub reconnects: u64,
    /// Frames read per second, recently.
    pub capture_fps: f64,
}

impl FeedStatus {
    /// Whether it will deliver no more frames (a file that ended or failed).
    pub fn finished(&self) -> bool {
        matches!(
            self.state,
            SourceState::Ended
                | SourceState::Failed {
                    retry_in_ms: None,
                    ..
                }
        )
    }
}

/// One source's slot and status.
pub struct Feed {
    /// The source as shown: a file name, `camera:N`, or the URL with its password masked.
    pub name: String,
    slot: LatestSlot<FeedFrame>,
    status: Mutex<FeedStatus>,
}

impl Feed {
    /// What the source is doing now.
    pub fn status(&self) -> FeedStatus {
        let mut s = lock(&self.status).clone();
        s.dropped = self.slot.dropped();
        s
    }

    fn update(&self, f: impl FnOnce(&mut FeedStatus)) {
        f(&mut lock(&self.status));
    }
}

/// Wakes the round when any source has a new frame.
#[derive(Default)]
struct Wake {
    generation: Mutex<u64>,
    ready: Condvar,
}

impl Wake {
    fn notify(&self) {
        *lock(&self.generation) += 1;
        self.ready.notify_all();
    }
}

/// The running capture threads of every source.
pub struct Feeds {
    feeds: Vec<Arc<Feed>>,
    wake: Arc<Wake>,
    stop: Arc<AtomicBool>,
    /// Which source goes first in the next round.
    rotate: usize,
    threads: Vec<JoinHandle<()>>,
}

impl Feeds {
    /// Start one capture thread per source.
    pub fn start(specs: &[SourceSpec], config: FeedConfig) -> Feeds {
        let wake = Arc::new(Wake::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut feeds = Vec::new();
        let mut threads = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let feed = Arc::new(Feed {
                name: spec.to_string(),
                slot: LatestSlot::new(),
                status: Mutex::new(FeedStatus {
                    state: SourceState::Opening,
                    ..FeedStatus::default()
                }),
            });
            let capture = FeedCapture {
                feed: feed.clone(),
                spec: spec.clone(),
                config,
                wake: wake.clone(),
                stop: stop.clone(),
            };
            threads.extend(
                std::thread::Builder::new()
                    .name(format!("arvis-capture-{i}"))
                    .spawn(move || capture.run())
                    .ok(),
            );
            feeds.push(feed);
        }
        Feeds {
            feeds,
            wake,
            stop,
            rotate: 0,
            threads,
        }
    }

    /// The sources, in the order given.
    pub fn feeds(&self) -> &[Arc<Feed>] {
        &self.feeds
    }

    /// Whether no source will deliver another frame.
    pub fn all_finished(&self) -> bool {
        self.feeds.iter().all(|f| f.status().finished())
    }

    /// Every source's fresh frame (at most one each, the newest), waiting up to `timeout` for
    /// the first; empty when none came. The order rotates so no source is always first.
    pub fn next_round(&mut self, timeout: Duration) -> Vec<(usize, FeedFrame)> {
        let deadline = Instant::now() + timeout;
        let n = self.feeds.len();
        loop {
            let seen = *lock(&self.wake.generation);
            let round: Vec<(usize, FeedFrame)> = (0..n)
                .map(|k| (self.rotate + k) % n)
                .filter_map(|i| {
                    self.feeds[i]
                        .slot
                        .take_timeout(Duration::ZERO)
                        .map(|f| (i, f))
                })
                .collect();
            if !round.is_empty() {
                self.rotate = (self.rotate + 1) % n.max(1);
                return round;
            }
            let now = Instant::now();
            if now >= deadline || self.stop.load(Ordering::Relaxed) {
                return round;
            }
            let generation = lock(&self.wake.generation);
            if *generation == seen {
                // Nothing arrived since the slots were looked at: sleep until something does.
                let _ = self
                    .wake
                    .ready
                    .wait_timeout(generation, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Stop every capture thread. Threads in the middle of a read finish it first (bounded by
    /// the stream's read timeout); they are not waited for beyond `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for f in &self.feeds {
            f.slot.close();
        }
        self.wake.notify();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Feeds {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// One source's capture thread.
struct FeedCapture {
    feed: Arc<Feed>,
    spec: SourceSpec,
    config: FeedConfig,
    wake: Arc<Wake>,
    stop: Arc<AtomicBool>,
}

/// Why reading stopped.
enum Stopped {
    /// Shutdown, or the source ended for good.
    Done,
    /// Lost: open it again.
    Reopen,
}

impl FeedCapture {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run(self) {
        let live = self.spec.is_live();
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut generation = 0;
        while !self.stopping() {
            self.feed.update(|s| s.state = SourceState::Opening);
            match self.spec.open() {
                Ok(source) => {
                    generation += 1;
                    backoff.reset();
                    let info = source.info().clone();
                    self.feed.update(|s| {
                        s.info = Some(info);
                        s.state = SourceState::Running;
                    });
                    match self.read(source, live, generation) {
                        Stopped::Done => return,
                        Stopped::Reopen => {}
                    }
                }
                Err(e) => self.failed(&e, live, &mut backoff),
            }
            if !live {
                return;
            }
        }
    }

    /// Report a failure; a live source then waits out its back-off.
    fn failed(&self, error: &SourceError, live: bool, backoff: &mut Backoff) {
        let wait = live.then(|| backoff.failed());
        self.feed.update(|s| {
            s.state = SourceState::Failed {
                error: error.to_string(),
                retry_in_ms: wait.map(|w| w.as_millis() as u64),
            };
            s.capture_fps = 0.0;
            if live {
                s.reconnects += 1;
            }
        });
        if let Some(wait) = wait {
            let until = Instant::now() + wait;
            while !self.stopping() && Instant::now() < until {
                std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
            }
        }
    }

    fn read(&self, mut source: Box<dyn FrameSource>, live: bool, generation: u64) -> Stopped {
        let mut anchor: Option<(Instant, f64)> = None;
        let mut rate = RateMeter::default();
        let mut frames_read = 0u64;
        let mut last_pts = None;
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            if self.stopping() {
                return Stopped::Done;
            }
            match source.next_frame() {
                Ok(Some(frame)) => {
                    if !live && let Some(pts) = frame.pts_ms {
                        self.pace(&mut anchor, pts);
                    }
                    frames_read += 1;
                    last_pts = frame.pts_ms;
                    let now = Instant::now();
                    let fps = rate.tick(now);
                    self.feed.slot.put(FeedFrame {
                        frame,
                        captured_at: now,
                        generation,
                    });
                    self.feed.update(|s| {
                        s.captured += 1;
                        s.capture_fps = fps;
                    });
                    self.wake.notify();
                }
                Ok(None) if live => {
                    let message = format!("{}: the stream ended", self.feed.name);
                    self.failed(&SourceError::Other(message), true, &mut backoff);
                    return Stopped::Reopen;
                }
                Ok(None) => {
                    let kind = source.info().kind;
                    let truncated = (kind == SourceKind::Video)
                        .then(|| {
                            crate::source::stream::truncation(
                                source.info(),
                                frames_read.min(1),
                                last_pts,
                            )
                        })
                        .flatten();
                    if let Some(message) = truncated {
                        self.failed(&SourceError::Other(message), false, &mut backoff);
                        return Stopped::Done;
                    }
                    if kind == SourceKind::Video && self.config.looping {
                        if let Err(e) = source.seek(0.0) {
                            self.failed(&e, false, &mut backoff);
                            return Stopped::Done;
                        }
                        anchor = None;
                        continue;
                    }
                    self.feed.update(|s| {
                        s.state = SourceState::Ended;
                        s.capture_fps = 0.0;
                    });
                    return Stopped::Done;
                }
                Err(e) => {
                    // The outer loop's back-off applies to the reopening, so this one counts
                    // the loss once.
                    let mut once =
                        Backoff::new(self.config.backoff_initial, self.config.backoff_max);
                    self.failed(&e, live, &mut once);
                    return if live { Stopped::Reopen } else { Stopped::Done };
                }
            }
        }
    }

    /// Sleep until a file's frame is due at its native rate.
    fn pace(&self, anchor: &mut Option<(Instant, f64)>, pts_ms: f64) {
        let now = Instant::now();
        let (t0, p0) = *anchor.get_or_insert((now, pts_ms));
        let due = t0 + Duration::from_secs_f64(((pts_ms - p0) / 1e3).max(0.0));
        if now > due + MAX_LAG || pts_ms < p0 {
            *anchor = Some((now, pts_ms));
            return;
        }
        while !self.stopping() {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(POLL));
        }
    }
}

/// One source's processed frame.
pub struct SourceResult {
    /// Which source (index into the list given).
    pub source: usize,
    /// The frame.
    pub frame: FeedFrame,
    /// Frames of this source processed before this one.
    pub processed: u64,
    /// Its regions: detection, track id and (with a gallery) matches.
    pub regions: Vec<Region>,
    /// Whether matching ran.
    pub matched: bool,
    /// Detection of the whole round (shared by the frames in it), ms.
    pub detect_ms: f64,
    /// Matching of this frame's regions, ms.
    pub match_ms: f64,
    /// Capture to result, ms.
    pub latency_ms: f64,
}

/// Per-source tracking and matching state, the detector shared.
pub struct MultiProcessor {
    per_source: Vec<SourceProcessor>,
}

struct SourceProcessor {
    processor: FrameProcessor,
    generation: u64,
    processed: u64,
}

impl MultiProcessor {
    /// State for `sources` sources with `config`'s settings.
    pub fn new(sources: usize, config: ProcessorConfig) -> MultiProcessor {
        MultiProcessor {
            per_source: (0..sources)
                .map(|_| SourceProcessor {
                    processor: FrameProcessor::new(config),
                    generation: 0,
                    processed: 0,
                })
                .collect(),
        }
    }

    /// Detect a round's frames as one batch, then track and match each with its source's
    /// state. A failed detection fails the round; a failed match fails only its frame.
    pub fn process_round(
        &mut self,
        round: Vec<(usize, FeedFrame)>,
        detector: &mut dyn FrameDetector,
        opts: &DetectOptions,
        mut gallery: Option<&mut RegionMatcher>,
    ) -> Result<Vec<Result<SourceResult, ProcessError>>, ProcessError> {
        let t0 = Instant::now();
        let images: Vec<&image::RgbImage> = round.iter().map(|(_, f)| &*f.frame.image).collect();
        let outputs = detector.detect_frames(&images, opts)?;
        let detect_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut results = Vec::with_capacity(round.len());
        for ((source, frame), out) in round.into_iter().zip(outputs) {
            let Some(state) = self.per_source.get_mut(source) else {
                continue;
            };
            if frame.generation != state.generation {
                state.generation = frame.generation;
                state.processor.tracking.reset();
            }
            let mut regions = state.processor.tracking.track(&out.detections);
            let t1 = Instant::now();
            let matched = match gallery.as_deref_mut() {
                Some(g) => {
                    let done = state.processor.matching.match_regions(
                        state.processed,
                        &frame.frame.image,
                        &mut regions,
                        &mut g.encoder,
                        g.index.as_mut(),
                    );
                    if let Err(e) = done {
                        state.processed += 1;
                        results.push(Err(ProcessError::Match(e)));
                        continue;
                    }
                    true
                }
                None => false,
            };
            let processed = state.processed;
            state.processed += 1;
            results.push(Ok(SourceResult {
                source,
                processed,
                regions,
                matched,
                detect_ms,
                match_ms: t1.elapsed().as_secs_f64() * 1e3,
                latency_ms: frame.captured_at.elapsed().as_secs_f64() * 1e3,
                frame,
            }));
        }
        Ok(results)
    }
}
