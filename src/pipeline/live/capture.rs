//! The capture thread: owns the source, paces files to their timestamps, reopens failed live
//! sources with back-off, and applies the UI's commands between frames.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::status::{PipelineStatus, RateMeter, SourceState, Stage};
use super::{Captured, POLL, PipelineConfig, Shared, lock};
use crate::source::{FrameSource, SourceError, SourceKind};

/// Paced playback that falls further behind than this re-anchors instead of racing to catch up.
const MAX_LAG: Duration = Duration::from_millis(250);

/// Opens (and re-opens, after a failure) a source.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn FrameSource>, SourceError> + Send>;

/// What the UI asks of the capture thread.
pub enum SourceCommand {
    /// Switch to a new source. `live` sources (cameras) are reopened with back-off after errors.
    Open {
        /// What the UI shows for the source.
        label: String,
        /// A camera: reopened with back-off after errors.
        live: bool,
        /// How to open it (again).
        opener: Opener,
    },
    /// Stop and forget the source.
    Close,
    /// Pause (true) or resume (false).
    Pause(bool),
    /// While paused: capture exactly one more frame.
    Step,
    /// Jump to this media time, in ms.
    Seek(f64),
    /// Whether a video starts over when it ends.
    SetLoop(bool),
    /// Send the last frame through again (settings changed on a still or paused source).
    Refresh,
}

/// Where the capture thread is with its source.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No source chosen, or it was closed.
    Closed,
    /// A source is chosen and is to be opened now.
    Opening,
    /// Reading frames.
    Reading,
    /// A file played to its end without looping (still open, so it can seek back).
    Ended,
    /// Failed; a file stays failed until another source is opened.
    Failed,
    /// A live source failed and is opened again at this instant.
    Retrying { at: Instant },
}

/// What a command means for a frame waiting to be shown.
enum Pending {
    Keep,
    Discard,
}

pub(super) struct Capture {
    shared: Arc<Shared>,
    rx: Receiver<SourceCommand>,
    source: Option<Box<dyn FrameSource>>,
    opener: Option<Opener>,
    phase: Phase,
    /// A camera (reopened after failures, never paced or looped).
    live: bool,
    paused: bool,
    /// While paused: one frame is wanted.
    step: bool,
    looping: bool,
    backoff: Backoff,
    /// Replay mode: every frame is processed before the next is read (nothing dropped).
    lockstep: bool,
    /// Wall-clock instant and media time of the pacing anchor.
    anchor: Option<(Instant, f64)>,
    last: Option<Captured>,
    seq: u64,
    generation: u64,
    rate: RateMeter,
}

impl Capture {
    pub(super) fn new(
        shared: Arc<Shared>,
        rx: Receiver<SourceCommand>,
        config: &PipelineConfig,
    ) -> Capture {
        Capture {
            shared,
            rx,
            source: None,
            opener: None,
            phase: Phase::Closed,
            live: false,
            paused: false,
            step: false,
            looping: true,
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            lockstep: config.lockstep,
            anchor: None,
            last: None,
            seq: 0,
            generation: 0,
            rate: RateMeter::default(),
        }
    }

    /// How long to wait for a command before doing anything; None: act now.
    fn wait(&self) -> Option<Duration> {
        if self.paused && !self.step {
            return Some(POLL);
        }
        match self.phase {
            Phase::Closed | Phase::Ended | Phase::Failed => Some(POLL),
            Phase::Opening | Phase::Reading => None,
            Phase::Retrying { at } => Some(at.saturating_duration_since(Instant::now()).min(POLL))
                .filter(|d| !d.is_zero()),
        }
    }

    pub(super) fn run(mut self) {
        loop {
            if self.shared.stopping() {
                return;
            }
            let wait = self.wait();
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
            match self.phase {
                Phase::Opening | Phase::Retrying { .. } => self.open_source(),
                Phase::Reading => self.capture_one(),
                Phase::Closed | Phase::Ended | Phase::Failed => {}
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
                self.phase = Phase::Opening;
                self.live = live;
                self.paused = false;
                self.step = false;
                self.backoff.reset();
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
                self.phase = Phase::Closed;
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
                if self.phase == Phase::Reading {
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
                        if self.phase == Phase::Ended {
                            self.phase = Phase::Reading;
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
                // A replay processes each frame once while it plays (a model becoming ready is
                // waited for instead); a paused or ended one is refreshed as usual.
                if self.lockstep && self.phase == Phase::Reading && !self.paused {
                    return Pending::Keep;
                }
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
        self.set_state(SourceState::Opening);
        let Some(opener) = self.opener.as_mut() else {
            self.phase = Phase::Closed;
            return;
        };
        match opener() {
            Ok(source) => {
                let info = source.info().clone();
                self.source = Some(source);
                self.phase = Phase::Reading;
                self.backoff.reset();
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
            let wait = self.backoff.failed();
            self.phase = Phase::Retrying {
                at: Instant::now() + wait,
            };
            Some(wait.as_millis() as u64)
        } else {
            self.phase = Phase::Failed;
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
            if let Some(pending) = self.command_within(left.min(POLL)) {
                return pending;
            }
        }
    }

    /// Apply a command arriving within `wait`; Some when it means the frame in hand goes.
    fn command_within(&mut self, wait: Duration) -> Option<Pending> {
        match self.rx.recv_timeout(wait) {
            Ok(c) => match self.apply(c) {
                Pending::Discard => Some(Pending::Discard),
                Pending::Keep => None,
            },
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Pending::Discard),
        }
    }

    /// Replay mode: wait until the models are in place and the previous frame was published,
    /// so that no frame is dropped or processed without them. False: stop reading now.
    fn wait_for_pipeline(&mut self) -> bool {
        loop {
            if self.shared.stopping() {
                return false;
            }
            let settled = {
                let status = lock(&self.shared.status);
                let matching = lock(&self.shared.options).match_enabled;
                let loading = matches!(status.detector, Stage::Loading(_));
                let matcher_settled = !matching
                    || self.shared.matcher_ready()
                    || matches!(status.index, Stage::Failed(_) | Stage::Absent(_))
                    || matches!(status.embedder, Stage::Failed(_));
                !loading && matcher_settled
            };
            let published = lock(&self.shared.snapshot).as_ref().map_or(0, |s| s.seq);
            if settled && published >= self.seq {
                return true;
            }
            if let Some(Pending::Discard) = self.command_within(Duration::from_millis(2)) {
                return false;
            }
        }
    }

    fn capture_one(&mut self) {
        if self.lockstep && !self.wait_for_pipeline() {
            return;
        }
        let Some(source) = self.source.as_mut() else {
            return;
        };
        let kind = source.info().kind;
        match source.next_frame() {
            Ok(Some(frame)) => {
                let stepping = self.step;
                if !self.live && !stepping && !self.lockstep {
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
                if self.live {
                    // A stream that ends is a stream lost: reconnect as after any failure.
                    let message = format!("{}: the stream ended", source.info().name);
                    self.fail(&SourceError::Other(message));
                } else if kind == SourceKind::Video
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
                    self.phase = Phase::Ended;
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
