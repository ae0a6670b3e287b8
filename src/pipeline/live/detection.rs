//! The detection thread: the frame processor's first half (detect + track) on the newest
//! captured frame; frames with regions to match go on to the embedding thread, the rest are
//! published at once.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use super::grid::{Grid, GridStatus};
use super::status::{FrameTimings, RateMeter, Stage};
use super::{DetectedFrame, LoadedDetector, POLL, Shared, lock, publish};
use crate::detect::FrameDetector;
use crate::pipeline::frame::{ProcessorConfig, TrackStage};

pub(super) fn detect_loop(
    shared: &Shared,
    loaded: &Receiver<anyhow::Result<LoadedDetector>>,
    mut tracking: TrackStage,
    config: ProcessorConfig,
) {
    let mut grid: Option<Grid> = None;
    let mut grids = 0;
    let mut detector: Option<Box<dyn FrameDetector>> = None;
    let mut rate = RateMeter::default();
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
        if let Some(sources) = lock(&shared.grid_request).take() {
            if let Some(mut old) = grid.take() {
                old.stop();
            }
            *lock(&shared.grid) = GridStatus::default();
            if !sources.is_empty() {
                let looping = lock(&shared.status).looping;
                grids += 1;
                grid = Some(Grid::start(grids, &sources, config, looping));
            }
        }
        if let Some(g) = grid.as_mut() {
            // The grid has the detector while it is shown; the single view's frames wait.
            let options = lock(&shared.options).clone();
            let matching = options.match_enabled && shared.matcher_ready();
            g.serve(shared, detector.as_mut(), &options.detect, (POLL, matching));
            continue;
        }
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
        if captured.source_generation != generation {
            generation = captured.source_generation;
            tracking.reset();
        }
        let mut regions = Vec::new();
        let mut ran = false;
        if let Some(det) = detector.as_mut() {
            match tracking.detect(det.as_mut(), &captured.frame.image, &options.detect) {
                Ok((found, t)) => {
                    regions = found;
                    timings.preprocess_ms = t.preprocess;
                    timings.infer_ms = t.infer;
                    timings.postprocess_ms = t.postprocess;
                    ran = true;
                }
                Err(e) => shared.update(|s| s.last_error = Some(format!("detection failed: {e}"))),
            }
        }
        if ran {
            let fps = rate.tick(Instant::now());
            shared.count(|s| {
                s.counters.detected += 1;
                s.inference_fps = fps;
            });
        }
        let d = DetectedFrame {
            captured,
            detected: ran,
            regions,
            timings,
        };
        if ran && !d.regions.is_empty() && options.match_enabled && shared.matcher_ready() {
            shared.detected.put(d);
        } else {
            publish(shared, d, false);
        }
    }
    if let Some(mut g) = grid {
        g.stop();
    }
}
