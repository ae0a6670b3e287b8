//! `arvis bench streams`: many live sources on one detector. N = 1, 2, 4 synthetic cameras
//! (decoded photos delivered at a fixed frame rate, newest frame only, as a camera does) run
//! through the same feeds and frame processor as `arvis watch`, once per schedule: one frame at
//! a time in turn, and batched where the detector has a batch twin. Aggregate detection
//! throughput and each source's capture → result latency are set against the single-source run
//! measured in the same process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;

use crate::detect::{DetectOptions, Detector};
use crate::pipeline::frame::ProcessorConfig;
use crate::pipeline::multi::{FeedConfig, FeedSource, Feeds, MultiProcessor, Schedule};
use crate::runtime::DeviceRequest;
use crate::source::{Frame, FrameSource, SourceError, SourceInfo, SourceKind};

/// A camera that is not there: the given frames in a loop at `fps`, newest only. Like a real
/// camera it never queues: a reader that falls behind gets the frame of now, not of then.
struct SyntheticCamera {
    info: SourceInfo,
    frames: Arc<Vec<Arc<RgbImage>>>,
    interval: Duration,
    started: Instant,
    /// Frames delivered or skipped so far (the next frame's number).
    next: u64,
}

impl SyntheticCamera {
    fn new(name: String, frames: Arc<Vec<Arc<RgbImage>>>, fps: f64, offset: usize) -> Self {
        let (width, height) = frames.first().map_or((0, 0), |f| f.dimensions());
        SyntheticCamera {
            info: SourceInfo {
                kind: SourceKind::Camera,
                name,
                width,
                height,
                fps: Some(fps),
                format: format!("synthetic {width}×{height} @ {fps} fps"),
                duration_ms: None,
            },
            frames,
            interval: Duration::from_secs_f64(1.0 / fps),
            // Sources start out of phase, as real cameras do.
            started: Instant::now() + Duration::from_secs_f64(offset as f64 * 0.37 / fps),
            next: offset as u64,
        }
    }
}

impl FrameSource for SyntheticCamera {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let due = self.started + self.interval.mul_f64(self.next as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let index = self.next;
        self.next += 1;
        let image = self.frames[index as usize % self.frames.len()].clone();
        Ok(Some(Frame {
            image,
            pts_ms: None,
            index,
        }))
    }
}

#[derive(Debug, Serialize)]
struct Run {
    sources: usize,
    schedule: Schedule,
    seconds: f64,
    /// Frames detected per second, all sources together.
    throughput_fps: f64,
    /// throughput_fps / the single-source run's.
    throughput_ratio: f64,
    /// Frames detected per source.
    per_source_frames: Vec<u64>,
    /// Fewest / most frames of any source (1 is perfectly fair).
    fairness: f64,
    /// Capture → result latency over every source, ms.
    latency_p50_ms: f64,
    latency_p95_ms: f64,
    /// The worst source's p95 / the single-source p95.
    worst_source_p95_ratio: f64,
    /// Frames the sources replaced before the detector took them.
    dropped: u64,
}

#[derive(Debug, Serialize)]
struct StreamsBench {
    device: String,
    detector: String,
    batching: String,
    camera_fps: f64,
    frame_size: [u32; 2],
    runs: Vec<Run>,
}

/// What one run measured, after its warm-up.
struct Measured {
    /// Frames detected per source.
    counts: Vec<u64>,
    /// Capture → result latencies per source, ms.
    latencies: Vec<Vec<f64>>,
    /// Frames replaced before the detector took them.
    dropped: u64,
    /// Seconds measured.
    elapsed: f64,
}

/// Drive `n` synthetic cameras through the feeds for `warmup + seconds`.
fn drive(
    detector: &mut Detector,
    frames: &Arc<Vec<Arc<RgbImage>>>,
    n: usize,
    fps: f64,
    schedule: Schedule,
    (warmup, seconds): (Duration, Duration),
) -> anyhow::Result<Measured> {
    let sources = (0..n)
        .map(|i| {
            let frames = frames.clone();
            let name = format!("synthetic:{i}");
            FeedSource {
                name: name.clone(),
                live: true,
                open: Box::new(move || {
                    Ok(
                        Box::new(SyntheticCamera::new(name.clone(), frames.clone(), fps, i))
                            as Box<dyn FrameSource>,
                    )
                }),
            }
        })
        .collect();
    let mut feeds = Feeds::start_sources(sources, FeedConfig::default());
    let mut processor = MultiProcessor::new(n, ProcessorConfig::default());
    let opts = DetectOptions::default();
    let mut counts = vec![0u64; n];
    let mut latencies = vec![Vec::new(); n];
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + seconds;
    let mut dropped_at_start = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= measure_from && dropped_at_start.is_none() {
            dropped_at_start = Some(
                feeds
                    .feeds()
                    .iter()
                    .map(|f| f.status().dropped)
                    .sum::<u64>(),
            );
        }
        let batch = feeds.next(schedule, Duration::from_millis(200));
        if batch.is_empty() {
            continue;
        }
        let measured = Instant::now() >= measure_from;
        for r in processor.process_round(batch, detector, &opts, None)? {
            let r = r?;
            if measured {
                counts[r.source] += 1;
                latencies[r.source].push(r.latency_ms);
            }
        }
    }
    let elapsed = (Instant::now() - measure_from).as_secs_f64();
    let dropped = feeds
        .feeds()
        .iter()
        .map(|f| f.status().dropped)
        .sum::<u64>()
        - dropped_at_start.unwrap_or(0);
    feeds.stop(Duration::from_millis(200));
    Ok(Measured {
        counts,
        latencies,
        dropped,
        elapsed,
    })
}

/// `arvis bench streams`.
pub fn bench_streams(
    images: &[PathBuf],
    model: Option<&str>,
    fps: f64,
    seconds: f64,
    json: bool,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let (_, decoded) = super::decode_all(images)?;
    // One frame size for every source (a camera's frames do not change size): the first
    // photo's, others scaled to it.
    let size = decoded[0].dimensions();
    let frames: Arc<Vec<Arc<RgbImage>>> = Arc::new(
        decoded
            .iter()
            .map(|img| {
                Arc::new(if img.dimensions() == size {
                    img.clone()
                } else {
                    image::imageops::resize(
                        img,
                        size.0,
                        size.1,
                        image::imageops::FilterType::Triangle,
                    )
                })
            })
            .collect(),
    );
    let (mut detector, device) =
        crate::load::load_threaded_detector(model, request, "arvis bench streams")?;
    let runtime = crate::runtime::Runtime::get(device.flavor())?;
    let batching = detector.enable_batching(runtime, device).clone();
    let mut schedules = vec![Schedule::OneAtATime];
    if batching.is_batched() {
        schedules.push(Schedule::Batched);
    }
    let timing = (
        Duration::from_secs_f64(1.5),
        Duration::from_secs_f64(seconds.max(1.0)),
    );
    if !json {
        eprintln!(
            "streams bench: {} on {device}, {fps} fps synthetic cameras of {}×{}, {seconds} s per run; batching: {batching}",
            detector.model_name, size.0, size.1
        );
    }

    let mut runs: Vec<Run> = Vec::new();
    let mut reference: Option<(f64, f64)> = None;
    for &n in &[1usize, 2, 4] {
        for &schedule in &schedules {
            if n == 1 && schedule == Schedule::Batched {
                continue; // a batch of one is the one-at-a-time run
            }
            let Measured {
                counts,
                latencies,
                dropped,
                elapsed,
            } = drive(&mut detector, &frames, n, fps, schedule, timing)?;
            let total: u64 = counts.iter().sum();
            let throughput = total as f64 / elapsed;
            let mut all: Vec<f64> = latencies.iter().flatten().copied().collect();
            let p50 = super::stats::percentile(&mut all, 0.5);
            let p95 = super::stats::percentile(&mut all, 0.95);
            let worst_p95 = latencies
                .iter()
                .map(|l| super::stats::percentile(&mut l.clone(), 0.95))
                .fold(0.0, f64::max);
            let (ref_fps, ref_p95) = *reference.get_or_insert((throughput, p95));
            let min = counts.iter().copied().min().unwrap_or(0);
            let max = counts.iter().copied().max().unwrap_or(0);
            let run = Run {
                sources: n,
                schedule,
                seconds: elapsed,
                throughput_fps: throughput,
                throughput_ratio: throughput / ref_fps.max(1e-9),
                fairness: if max == 0 {
                    0.0
                } else {
                    min as f64 / max as f64
                },
                per_source_frames: counts,
                latency_p50_ms: p50,
                latency_p95_ms: p95,
                worst_source_p95_ratio: worst_p95 / ref_p95.max(1e-9),
                dropped,
            };
            if !json {
                eprintln!(
                    "  {n} source(s), {:<13}: {:6.1} frames/s ({:.2}× one source), latency p50 {:6.1} ms p95 {:6.1} ms (worst source {:.2}× one source's p95), fairness {:.2}",
                    run.schedule.to_string(),
                    run.throughput_fps,
                    run.throughput_ratio,
                    run.latency_p50_ms,
                    run.latency_p95_ms,
                    run.worst_source_p95_ratio,
                    run.fairness
                );
            }
            runs.push(run);
        }
    }
    let report = StreamsBench {
        device: device.to_string(),
        detector: detector.model_name.clone(),
        batching: batching.to_string(),
        camera_fps: fps,
        frame_size: [size.0, size.1],
        runs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let four = report
            .runs
            .iter()
            .find(|r| r.sources == 4 && r.schedule == Schedule::OneAtATime);
        if let Some(r) = four {
            println!(
                "4 sources one at a time: throughput {:.2}× one source (target ≥ 0.95), worst p95 {:.2}× (target ≤ 2)",
                r.throughput_ratio, r.worst_source_p95_ratio
            );
        }
        if let Some(r) = report
            .runs
            .iter()
            .find(|r| r.sources == 4 && r.schedule == Schedule::Batched)
        {
            println!(
                "4 sources batched: throughput {:.2}× one source, worst p95 {:.2}×",
                r.throughput_ratio, r.worst_source_p95_ratio
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
