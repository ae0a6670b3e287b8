//! `arvis video`: process a video file headless — detect, track, match each track against the
//! gallery — and write an annotated H.264 MP4 (same frames, rate and duration) and JSON Lines.

use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use image::RgbImage;
use serde::Serialize;

use super::detect::{DetectorArgs, MatchArgs};
use crate::detect::{DetectOptions, Detector};
use crate::pipeline::frame::{FrameProcessor, ProcessedFrame, ProcessorConfig, REFRESH_FRAMES};
use crate::render::{Annotator, BoxLabel, PlateParts, region_labels};
use crate::report::{DetectionJson, regions_json};
use crate::runtime::DeviceRequest;
use crate::search::{MatchView, RegionMatcher};
use crate::sink::{AtomicOutput, VideoWriter};
use crate::source::video::VideoSource;
use crate::source::{FrameSource, SourceError};

#[derive(Debug, Args)]
pub struct VideoArgs {
    /// Any video FFmpeg can read.
    pub input: PathBuf,
    /// The annotated video to write (H.264 MP4).
    #[arg(short, long, value_name = "OUT.mp4")]
    pub output: PathBuf,
    /// Also write one JSON object per frame here.
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,
    /// Run detection on every Nth frame (the frames between show the last result).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub stride: u64,
    #[command(flatten)]
    pub detector: DetectorArgs,
    #[command(flatten)]
    pub matching: MatchArgs,
    /// Re-embed a track after this many frames (also when its box changes a lot).
    #[arg(long, default_value_t = REFRESH_FRAMES, value_parser = clap::value_parser!(u64).range(1..))]
    pub refresh_every: u64,
}

#[derive(Serialize)]
struct FrameJson<'a> {
    frame: u64,
    pts_ms: Option<f64>,
    /// False on frames skipped by --stride (they repeat the last result).
    detected: bool,
    detections: Vec<DetectionJson<'a>>,
}

/// One decoded frame with its timestamps.
struct Decoded {
    image: RgbImage,
    pts: i64,
    pts_ms: Option<f64>,
}

pub fn run(args: VideoArgs, device: DeviceRequest) -> anyhow::Result<ExitCode> {
    // Before anything is opened for writing: no output may be the input or the other output.
    let mut outputs = vec![("-o", args.output.as_path())];
    if let Some(j) = &args.jsonl {
        outputs.push(("--jsonl", j.as_path()));
    }
    crate::sink::check_outputs(&[&args.input], &outputs)?;
    crate::sink::video::check_container(&args.output)?;
    let source = VideoSource::open(&args.input)?;
    let info = source.info().clone();
    let time_base = source.time_base();
    let frame_rate = source
        .frame_rate()
        .or_else(|| info.fps.map(|f| ((f * 1000.0).round() as i32, 1000)))
        .unwrap_or((25, 1));
    let (mut detector, on, opts) = args.detector.load_for(device, Some("arvis video"))?;
    let (mut matcher, view) = match args.matching.matcher(device)? {
        Some((m, view)) => (Some(m), view),
        None => (None, MatchView::default()),
    };
    // Both outputs are written to temporary files beside their targets and renamed over them
    // only when complete: a failure never leaves a stub in place of a good earlier result.
    let (jsonl_target, mut jsonl) = match &args.jsonl {
        Some(p) => {
            let out = AtomicOutput::new("--jsonl", p)?;
            let file = out
                .create()
                .with_context(|| format!("creating {}", p.display()))?;
            (Some(out), Some(BufWriter::new(file)))
        }
        None => (None, None),
    };
    let video_out = AtomicOutput::new("-o", &args.output)?;
    let writer =
        VideoWriter::create_for(&video_out, (info.width, info.height), time_base, frame_rate)?;
    // Ctrl-C or SIGTERM: stop reading, finish the frames in hand, close both files properly.
    let stop = super::stop_on_ctrl_c();
    let annotator = Annotator::new().context("the built-in label font failed to load")?;
    let expected = info
        .duration_ms
        .zip(info.fps)
        .map(|(d, f)| (d / 1e3 * f).round() as u64);
    eprintln!(
        "{}: {}×{} {} · {} frames · detector {} on {}",
        info.name,
        info.width,
        info.height,
        info.format,
        expected.map_or("?".into(), |n| n.to_string()),
        detector.model_name,
        on
    );
    let bar = crate::progress::items_bar(expected.unwrap_or(0), "frames");
    let t0 = Instant::now();

    let outcome = std::thread::scope(|scope| -> anyhow::Result<Outcome> {
        // Decoding and encoding run beside detection; bounded queues keep memory flat.
        let (frames_tx, frames_rx) = mpsc::sync_channel::<Result<Decoded, SourceError>>(4);
        scope.spawn(move || decode_all(source, &frames_tx));
        let (encode_tx, encode_rx) = mpsc::sync_channel::<(RgbImage, i64)>(4);
        let encoder = scope.spawn(move || -> anyhow::Result<u64> {
            let mut writer = writer;
            for (img, pts) in encode_rx {
                writer.write(&img, pts)?;
            }
            Ok(writer.finish()?)
        });
        let mut state = Process {
            detector: &mut detector,
            opts: &opts,
            processor: FrameProcessor::new(ProcessorConfig {
                refresh_frames: args.refresh_every,
                match_k: args.matching.match_k,
                ..ProcessorConfig::default()
            }),
            matcher: matcher.as_mut(),
            current: ProcessedFrame::default(),
            view,
        };
        let mut outcome = Outcome::default();
        for (i, decoded) in (0u64..).zip(frames_rx) {
            if stop.load(Ordering::SeqCst) {
                outcome.interrupted = true;
                break;
            }
            let decoded = match decoded {
                Ok(d) => d,
                Err(e) => {
                    outcome.decode_error = Some(e.to_string());
                    break;
                }
            };
            let detect_now = i % args.stride == 0;
            if detect_now {
                state.process(i, &decoded.image)?;
                outcome.detected_frames += 1;
            }
            let mut img = decoded.image;
            annotator.draw(&mut img, &state.labels());
            if let Some(out) = jsonl.as_mut() {
                let line = state.frame_json(i, decoded.pts_ms, detect_now);
                crate::report::write_json_line(out, &line)?;
            }
            outcome.last_pts_ms = decoded.pts_ms;
            outcome.frames += 1;
            // The encoder thread only stops early on an error, reported when joined.
            if encode_tx.send((img, decoded.pts)).is_err() {
                break;
            }
            bar.inc(1);
        }
        drop(encode_tx);
        outcome.written = encoder
            .join()
            .map_err(|_| anyhow::anyhow!("the encoder thread panicked"))??;
        outcome.embedded = state.processor.matching.embedded();
        outcome.regions = state.processor.matching.regions();
        Ok(outcome)
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    // No frame at all: nothing worth writing, and an existing file at -o stays as it was.
    if outcome.written == 0 {
        let why = if outcome.interrupted {
            "interrupted before the first frame".to_string()
        } else if let Some(e) = &outcome.decode_error {
            e.clone()
        } else {
            crate::source::stream::truncation(&info, 0, None).unwrap_or_default()
        };
        eprintln!("error: {why}; nothing was written");
        return Ok(ExitCode::from(if outcome.interrupted { 130 } else { 1 }));
    }
    // Only complete files replace the targets (an error above dropped the temporaries).
    if let (Some(target), Some(w)) = (jsonl_target, jsonl) {
        let shown = target.target().display().to_string();
        w.into_inner()
            .map_err(|e| anyhow::anyhow!("writing {shown}: {}", e.error()))?;
        target
            .commit()
            .with_context(|| format!("writing {shown}"))?;
    }
    video_out
        .commit()
        .with_context(|| format!("writing {}", args.output.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "wrote {} frames to {} in {secs:.1} s ({:.1} fps; detection on {} frames)",
        outcome.written,
        args.output.display(),
        outcome.frames as f64 / secs.max(1e-9),
        outcome.detected_frames
    );
    if matcher.is_some() {
        let saved = outcome.regions.saturating_sub(outcome.embedded);
        println!(
            "CLIP: {} crops embedded for {} matched regions ({saved} calls saved by per-track embedding, {:.0} %)",
            outcome.embedded,
            outcome.regions,
            100.0 * saved as f64 / outcome.regions.max(1) as f64
        );
    }
    // A stream that stops well before its declared duration was cut short.
    let truncated = crate::source::stream::truncation(&info, outcome.frames, outcome.last_pts_ms);
    if outcome.interrupted {
        eprintln!(
            "interrupted: stopped after {} frames; {} holds those frames (a playable, shorter video){}",
            outcome.written,
            args.output.display(),
            args.jsonl.as_ref().map_or(String::new(), |j| format!(
                " and {} the same frames",
                j.display()
            ))
        );
        return Ok(ExitCode::from(130));
    }
    if let Some(e) = outcome.decode_error {
        eprintln!(
            "error: {e}; the {} frames before it were processed and written",
            outcome.written
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(why) = truncated {
        eprintln!(
            "error: {why}; the {} frames that could be decoded were processed and written",
            outcome.written
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Default)]
struct Outcome {
    frames: u64,
    written: u64,
    detected_frames: u64,
    embedded: u64,
    regions: u64,
    last_pts_ms: Option<f64>,
    decode_error: Option<String>,
    /// Stopped by Ctrl-C or SIGTERM.
    interrupted: bool,
}

fn decode_all(mut source: VideoSource, tx: &mpsc::SyncSender<Result<Decoded, SourceError>>) {
    loop {
        let item = match source.next_frame() {
            Ok(Some(frame)) => {
                let pts = source.last_pts().unwrap_or(frame.index as i64);
                // The frame's pixels are shared only with us: take them without copying.
                let image =
                    std::sync::Arc::try_unwrap(frame.image).unwrap_or_else(|a| (*a).clone());
                Ok(Decoded {
                    image,
                    pts,
                    pts_ms: frame.pts_ms,
                })
            }
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let stop = item.is_err();
        if tx.send(item).is_err() || stop {
            return;
        }
    }
}

struct Process<'a> {
    detector: &'a mut Detector,
    opts: &'a DetectOptions,
    processor: FrameProcessor,
    matcher: Option<&'a mut RegionMatcher>,
    /// The result drawn on frames until the next detection.
    current: ProcessedFrame,
    view: MatchView,
}

impl Process<'_> {
    fn process(&mut self, frame: u64, img: &RgbImage) -> anyhow::Result<()> {
        self.current = self.processor.process(
            frame,
            img,
            self.detector,
            self.opts,
            self.matcher.as_deref_mut(),
        )?;
        Ok(())
    }

    fn regions(&self) -> Vec<&crate::search::Region> {
        self.current.regions.iter().collect()
    }

    fn labels(&self) -> Vec<BoxLabel> {
        region_labels(
            &self.regions(),
            self.detector.labels(),
            PlateParts::all(self.view),
        )
    }

    fn frame_json(&self, frame: u64, pts_ms: Option<f64>, detected: bool) -> FrameJson<'_> {
        FrameJson {
            frame,
            pts_ms: pts_ms.map(|t| (t * 1000.0).round() / 1000.0),
            detected,
            detections: regions_json(
                self.detector.labels(),
                &self.regions(),
                true,
                self.current.matched,
                &self.view,
            ),
        }
    }
}
