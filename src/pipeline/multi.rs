//! Many sources, one detector. Each source has a capture thread of its own (open, read, pace a
//! file to its timestamps, reconnect a lost camera or stream with back-off) writing into its own
//! latest-frame slot, so a slow round drops that source's stale frames instead of queueing them.
//! [`Feeds::next`] hands out fresh frames by a [`Schedule`]: every source's at once for one
//! batched run ([`FrameDetector::detect_frames`]), or one source's at a time in turn.
//! [`MultiProcessor::process_round`] detects them and tracks and matches each with the source's
//! own state.
//!
//! Fairness follows from the rotation: a source with a fresh frame is served within one pass
//! over the others whatever they do, so none starves, and its latency is bounded by that pass;
//! a stalled or reconnecting source simply has no frame to give. One at a time, each frame is
//! picked the moment the detector is free, so it is at most one frame interval old when
//! detection starts, however many sources wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::frame::{
    FrameProcessor, MatchJob, MatchStage, ProcessError, ProcessorConfig, match_frames,
};
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

/// How fresh frames of several sources reach the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Every source's fresh frame in one batched run: the GPU's way, where a batch of N costs
    /// far less than N runs.
    Batched,
    /// One source's newest frame per run, the sources in turn: the CPU's way, where a batch of
    /// N costs about N runs (the cores are busy with one), so batching would only make every
    /// frame wait for the others.
    OneAtATime,
}

impl Schedule {
    /// Batched where the detector has a batch twin and runs on a GPU; one at a time otherwise.
    pub fn auto(batching: &crate::detect::Batching, device: crate::runtime::Device) -> Schedule {
        if batching.is_batched() && device != crate::runtime::Device::Cpu {
            Schedule::Batched
        } else {
            Schedule::OneAtATime
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::Batched => "batched",
            Schedule::OneAtATime => "one at a time",
        })
    }
}

/// Opens a source, and again after it was lost.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn FrameSource>, SourceError> + Send>;

/// A source for [`Feeds`]: how it is shown, whether it is live, and how to open it.
pub struct FeedSource {
    /// A file name, `camera:N`, or the URL with its password masked.
    pub name: String,
    /// Live sources (cameras, streams) reconnect when lost; files are paced to their timestamps.
    pub live: bool,
    /// Opens it.
    pub open: Opener,
}

impl FeedSource {
    /// The source a user named.
    pub fn from_spec(spec: &SourceSpec) -> FeedSource {
        let spec = spec.clone();
        FeedSource {
            name: spec.to_string(),
            live: spec.is_live(),
            open: Box::new(move || spec.open()),
        }
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
        Feeds::start_sources(specs.iter().map(FeedSource::from_spec).collect(), config)
    }

    /// Start one capture thread per source, however each is opened.
    pub fn start_sources(sources: Vec<FeedSource>, config: FeedConfig) -> Feeds {
        let wake = Arc::new(Wake::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut feeds = Vec::new();
        let mut threads = Vec::new();
        for (i, source) in sources.into_iter().enumerate() {
            let feed = Arc::new(Feed {
                name: source.name,
                slot: LatestSlot::new(),
                status: Mutex::new(FeedStatus {
                    state: SourceState::Opening,
                    ..FeedStatus::default()
                }),
            });
            let capture = FeedCapture {
                feed: feed.clone(),
                live: source.live,
                open: source.open,
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
        self.take(self.feeds.len(), timeout)
    }

    /// The newest frame of the next source in turn that has a fresh one, waiting up to
    /// `timeout`; the source after it goes first next time.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<(usize, FeedFrame)> {
        self.take(1, timeout).pop()
    }

    /// What `schedule` gives the detector next: a round, or one frame.
    pub fn next(&mut self, schedule: Schedule, timeout: Duration) -> Vec<(usize, FeedFrame)> {
        match schedule {
            Schedule::Batched => self.next_round(timeout),
            Schedule::OneAtATime => self.next_frame(timeout).into_iter().collect(),
        }
    }

    /// Up to `limit` fresh frames, one per source, starting from the rotation point.
    fn take(&mut self, limit: usize, timeout: Duration) -> Vec<(usize, FeedFrame)> {
        let deadline = Instant::now() + timeout;
        let n = self.feeds.len();
        loop {
            let seen = *lock(&self.wake.generation);
            let mut round: Vec<(usize, FeedFrame)> = Vec::new();
            for i in (0..n).map(|k| (self.rotate + k) % n) {
                if round.len() >= limit {
                    break;
                }
                if let Some(f) = self.feeds[i].slot.take_timeout(Duration::ZERO) {
                    round.push((i, f));
                }
            }
            if let Some(&(last, _)) = round.last() {
                // A full round moves the start by one; a single frame passes the turn on.
                self.rotate = if limit >= n {
                    (self.rotate + 1) % n
                } else {
                    (last + 1) % n
                };
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
    live: bool,
    open: Opener,
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

    fn run(mut self) {
        let live = self.live;
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut generation = 0;
        while !self.stopping() {
            self.feed.update(|s| s.state = SourceState::Opening);
            match (self.open)() {
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
    /// CLIP batches run so far (one per round with crops due, whatever its sources).
    clip_batches: u64,
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
            clip_batches: 0,
        }
    }

    /// CLIP batches run so far: one per round that had crops to embed, however many of its
    /// sources had them.
    pub fn clip_batches(&self) -> u64 {
        self.clip_batches
    }

    /// Detect a round's frames as one batch, then track each with its source's state and
    /// match them: the crops due in all of the round's frames go to CLIP as one batch. A failed
    /// detection fails the round; a failed match fails only the frames whose crops it held.
    pub fn process_round(
        &mut self,
        round: Vec<(usize, FeedFrame)>,
        detector: &mut dyn FrameDetector,
        opts: &DetectOptions,
        gallery: Option<&mut RegionMatcher>,
    ) -> Result<Vec<Result<SourceResult, ProcessError>>, ProcessError> {
        let t0 = Instant::now();
        let images: Vec<&image::RgbImage> = round.iter().map(|(_, f)| &*f.frame.image).collect();
        let outputs = detector.detect_frames(&images, opts)?;
        let detect_ms = t0.elapsed().as_secs_f64() * 1e3;

        // Track each frame with its source's tracker.
        let mut tracked: Vec<(usize, FeedFrame, Vec<Region>, u64)> = Vec::new();
        for ((source, frame), out) in round.into_iter().zip(outputs) {
            let Some(state) = self.per_source.get_mut(source) else {
                continue;
            };
            if frame.generation != state.generation {
                state.generation = frame.generation;
                state.processor.tracking.reset();
            }
            let regions = state.processor.tracking.track(&out.detections);
            let processed = state.processed;
            state.processed += 1;
            tracked.push((source, frame, regions, processed));
        }

        let t1 = Instant::now();
        let matched: Vec<Result<bool, ProcessError>> = match gallery {
            Some(g) => self.match_round(&mut tracked, g),
            None => tracked.iter().map(|_| Ok(false)).collect(),
        };
        let match_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(tracked
            .into_iter()
            .zip(matched)
            .map(|((source, frame, regions, processed), matched)| {
                Ok(SourceResult {
                    source,
                    processed,
                    regions,
                    matched: matched?,
                    detect_ms,
                    match_ms,
                    latency_ms: frame.captured_at.elapsed().as_secs_f64() * 1e3,
                    frame,
                })
            })
            .collect())
    }

    /// Gallery matches for every tracked frame of a round, their due crops embedded in one CLIP
    /// batch.
    fn match_round(
        &mut self,
        tracked: &mut [(usize, FeedFrame, Vec<Region>, u64)],
        g: &mut RegionMatcher,
    ) -> Vec<Result<bool, ProcessError>> {
        let mut jobs: Vec<MatchJob<'_>> = tracked
            .iter_mut()
            .map(|(source, frame, regions, processed)| MatchJob {
                stage: *source,
                frame: *processed,
                image: &frame.frame.image,
                regions,
            })
            .collect();
        match match_frames(
            &mut self.per_source,
            &mut jobs,
            &mut g.encoder,
            g.index.as_mut(),
        ) {
            Ok(done) => {
                if done.crops > 0 {
                    self.clip_batches += 1;
                }
                done.per_frame
                    .into_iter()
                    .map(|r| r.map(|()| true).map_err(ProcessError::Match))
                    .collect()
            }
            Err(failed) => {
                self.clip_batches += 1;
                // The batch failed: the frames with crops in it are not matched; the others
                // had nothing to embed and are left unmatched this round.
                let message = format!("the batch with this frame's regions: {}", failed.error);
                failed
                    .held
                    .iter()
                    .map(|&held| {
                        if held {
                            Err(ProcessError::Match(crate::search::IngestError::from(
                                crate::embed::EmbedError::Setting(message.clone()),
                            )))
                        } else {
                            Ok(false)
                        }
                    })
                    .collect()
            }
        }
    }
}

impl AsMut<MatchStage> for SourceProcessor {
    fn as_mut(&mut self) -> &mut MatchStage {
        &mut self.processor.matching
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live source delivering tiny frames every `interval`, or, with `None`, nothing ever
    /// (a stalled camera: each read blocks until the feeds stop).
    struct Ticker {
        info: SourceInfo,
        interval: Option<Duration>,
        index: u64,
    }

    impl FrameSource for Ticker {
        fn info(&self) -> &SourceInfo {
            &self.info
        }
        fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
            let Some(interval) = self.interval else {
                std::thread::sleep(Duration::from_millis(100));
                return Err(SourceError::Other("stalled".into()));
            };
            std::thread::sleep(interval);
            self.index += 1;
            Ok(Some(Frame {
                image: Arc::new(image::RgbImage::new(4, 4)),
                pts_ms: None,
                index: self.index,
            }))
        }
    }

    fn feeds(intervals: &[Option<Duration>]) -> Feeds {
        let sources = intervals
            .iter()
            .enumerate()
            .map(|(i, &interval)| FeedSource {
                name: format!("t{i}"),
                live: true,
                open: Box::new(move || {
                    Ok(Box::new(Ticker {
                        info: SourceInfo {
                            kind: SourceKind::Camera,
                            name: format!("t{i}"),
                            width: 4,
                            height: 4,
                            fps: None,
                            format: String::new(),
                            duration_ms: None,
                        },
                        interval,
                        index: 0,
                    }) as Box<dyn FrameSource>)
                }),
            })
            .collect();
        Feeds::start_sources(sources, FeedConfig::default())
    }

    #[test]
    fn one_at_a_time_serves_sources_in_turn_and_a_fast_one_takes_no_extra_turns() {
        // Source 0 is ten times faster than the others; each still gets one turn per pass.
        let ms = |m| Some(Duration::from_millis(m));
        let mut feeds = feeds(&[ms(2), ms(20), ms(20)]);
        let mut served = [0u32; 3];
        let mut order = Vec::new();
        for _ in 0..30 {
            // The detector's time: every source has a fresh frame again by the next pick.
            std::thread::sleep(Duration::from_millis(25));
            let (i, _) = feeds.next_frame(Duration::from_secs(2)).expect("a frame");
            served[i] += 1;
            order.push(i);
        }
        feeds.stop(Duration::from_secs(1));
        assert!(
            served.iter().all(|&n| n == 10),
            "{served:?} in order {order:?}"
        );
    }

    #[test]
    fn a_stalled_source_does_not_hold_the_others_back() {
        let mut feeds = feeds(&[None, Some(Duration::from_millis(10)), None]);
        let start = Instant::now();
        let mut got = 0;
        while got < 20 && start.elapsed() < Duration::from_secs(5) {
            if let Some((i, _)) = feeds.next_frame(Duration::from_millis(500)) {
                assert_eq!(i, 1, "only the live source has frames");
                got += 1;
            }
        }
        assert_eq!(got, 20);
        // Batched, the round holds what there is instead of waiting for the stalled ones.
        let round = feeds.next(Schedule::Batched, Duration::from_secs(2));
        assert_eq!(round.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
        feeds.stop(Duration::from_secs(1));
        let stalled = feeds.feeds()[0].status();
        assert!(
            matches!(
                stalled.state,
                SourceState::Failed { .. } | SourceState::Opening
            ),
            "{stalled:?}"
        );
    }
}
