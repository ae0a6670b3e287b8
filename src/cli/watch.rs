//! `arvis watch`: the live pipeline without a window, for machines without a display. Every
//! source (cameras, stream URLs, video files) is read by a thread of its own; one detector takes
//! each round of fresh frames as a batch; per-frame records and track events go to JSON Lines,
//! stats to stderr.

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::detect::{DetectorArgs, MatchArgs};
use crate::pipeline::events::{TrackEvent, TrackEvents};
use crate::pipeline::frame::{ProcessorConfig, REFRESH_FRAMES};
use crate::pipeline::live::SourceState;
use crate::pipeline::multi::{
    FeedConfig, FeedStatus, Feeds, MultiProcessor, Schedule, SourceResult,
};
use crate::report::{DetectionJson, regions_json};
use crate::runtime::DeviceRequest;
use crate::search::MatchView;
use crate::source::SourceSpec;
use crate::source::network::{RtspTransport, StreamOptions};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Sources: `camera[:N]`, stream URLs (rtsp://, http(s)://, udp://, srt://…) or video files.
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    /// Append one JSON object per processed frame here (with its source).
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,
    /// Append track events here: appeared, recognised (with --match), ended.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Append the stats as JSON Lines here instead of printing them on stderr.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Seconds between two stats reports.
    #[arg(long, default_value_t = 5.0, value_parser = super::args::positive_seconds)]
    pub stats_every: f64,
    /// Stop after this many seconds (default: until Ctrl-C / SIGTERM, or every source ended).
    #[arg(long, value_parser = super::args::positive_seconds)]
    pub duration: Option<f64>,
    /// Play video files in a loop instead of ending with them.
    #[arg(long = "loop")]
    pub looping: bool,
    /// RTSP media transport: tcp (default: no packet loss, passes firewalls) or udp.
    #[arg(long, default_value = "tcp")]
    pub rtsp_transport: RtspTransport,
    /// Seconds a stream may stay silent (or take to open, twice this) before it counts as lost
    /// and is reconnected.
    #[arg(long, default_value_t = 5.0, value_parser = super::args::positive_seconds)]
    pub stream_timeout: f64,
    /// How the sources' frames reach the detector: auto (batched on a GPU when the model has a
    /// batch twin, else one at a time), batched (every source's fresh frame in one run; falls
    /// back to one at a time, saying why, for a model that cannot batch) or one-at-a-time.
    #[arg(long, default_value = "auto")]
    pub schedule: ScheduleArg,
    #[command(flatten)]
    pub detector: DetectorArgs,
    #[command(flatten)]
    pub matching: MatchArgs,
}

/// `--schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// Batched on a GPU with a batch twin, else one at a time.
    Auto,
    /// Every source's fresh frame in one run.
    Batched,
    /// One source's newest frame per run, in turn.
    OneAtATime,
}

/// One processed frame in `--jsonl`.
#[derive(Serialize)]
struct FrameJson<'a> {
    /// The source as given (password masked).
    source: &'a str,
    /// Its position in the command line, from 0.
    source_index: usize,
    /// The frame's number in its source.
    frame: u64,
    pts_ms: Option<f64>,
    /// When it was captured, ms since the Unix epoch.
    captured_unix_ms: u64,
    /// Capture to result.
    latency_ms: f64,
    detections: Vec<DetectionJson<'a>>,
}

/// One event in `--events`.
#[derive(Serialize)]
struct EventJson<'a> {
    source: &'a str,
    source_index: usize,
    unix_ms: u64,
    /// The class name (appeared).
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(flatten)]
    event: &'a TrackEvent,
}

/// One source's line of stats.
#[derive(Serialize)]
struct StatsJson<'a> {
    source: &'a str,
    source_index: usize,
    unix_ms: u64,
    state: String,
    capture_fps: f64,
    processed_fps: f64,
    processed: u64,
    captured: u64,
    dropped: u64,
    reconnects: u64,
    latency_p50_ms: Option<f64>,
    latency_p95_ms: Option<f64>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Open `path` for appending (a log: what is there stays), each line written whole.
fn append(flag: &str, path: &Path) -> anyhow::Result<LineWriter<std::fs::File>> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{flag} {}: cannot open for appending", path.display()))?;
    Ok(LineWriter::new(file))
}

/// Per-source counters between two stats reports.
#[derive(Default)]
struct Window {
    processed: u64,
    latencies: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).map(|v| (v * 10.0).round() / 10.0)
}

fn state_words(s: &FeedStatus) -> String {
    match &s.state {
        SourceState::Idle => "idle".into(),
        SourceState::Opening => "opening".into(),
        SourceState::Running | SourceState::Paused => "running".into(),
        SourceState::Ended => "ended".into(),
        SourceState::Failed {
            error,
            retry_in_ms: Some(ms),
        } => format!("lost, retrying in {:.1} s: {error}", *ms as f64 / 1e3),
        SourceState::Failed { error, .. } => format!("failed: {error}"),
    }
}

pub fn run(args: WatchArgs, device: DeviceRequest) -> anyhow::Result<ExitCode> {
    let stream = StreamOptions {
        rtsp_transport: args.rtsp_transport,
        open_timeout: Duration::from_secs_f64(args.stream_timeout * 2.0),
        read_timeout: Duration::from_secs_f64(args.stream_timeout),
    };
    let specs = args
        .sources
        .iter()
        .map(|s| SourceSpec::parse_with(s, stream))
        .collect::<Result<Vec<_>, _>>()?;
    // Before anything is opened for appending: no log may be a source file or another log.
    let inputs: Vec<&Path> = specs
        .iter()
        .filter_map(|s| match s {
            SourceSpec::Video(p) | SourceSpec::Image(p) => Some(p.as_path()),
            _ => None,
        })
        .collect();
    let outputs: Vec<(&str, &Path)> = [
        ("--jsonl", &args.jsonl),
        ("--events", &args.events),
        ("--stats-json", &args.stats_json),
    ]
    .into_iter()
    .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
    .collect();
    crate::sink::check_outputs(&inputs, &outputs)?;
    let (mut detector, on, opts) = args.detector.load_for(device, Some("arvis watch"))?;
    // On the CPU a batch costs what its frames cost one by one, so auto does not derive a twin
    // there; asked for, or on a GPU, it is derived and checked against batch 1.
    if args.schedule == ScheduleArg::Batched
        || (args.schedule == ScheduleArg::Auto && on != crate::runtime::Device::Cpu)
    {
        let runtime = crate::runtime::Runtime::get(on.flavor())?;
        detector.enable_batching(runtime, on);
    }
    let schedule = match args.schedule {
        ScheduleArg::OneAtATime => Schedule::OneAtATime,
        ScheduleArg::Batched if detector.batching().is_batched() => Schedule::Batched,
        ScheduleArg::Batched => {
            eprintln!("warning: detection runs {}", detector.batching());
            Schedule::OneAtATime
        }
        ScheduleArg::Auto => Schedule::auto(detector.batching(), on),
    };
    let (mut matcher, view) = match args.matching.matcher(device)? {
        Some((m, view)) => (Some(m), view),
        None => (None, MatchView::default()),
    };
    let mut jsonl = args
        .jsonl
        .as_deref()
        .map(|p| append("--jsonl", p))
        .transpose()?;
    let mut events = args
        .events
        .as_deref()
        .map(|p| append("--events", p))
        .transpose()?;
    let mut stats_out = args
        .stats_json
        .as_deref()
        .map(|p| append("--stats-json", p))
        .transpose()?;
    let stop = super::stop_on_ctrl_c();
    let config = ProcessorConfig {
        refresh_frames: REFRESH_FRAMES,
        match_k: args.matching.match_k,
        ..ProcessorConfig::default()
    };
    let mut feeds = Feeds::start(
        &specs,
        FeedConfig {
            looping: args.looping,
            ..FeedConfig::default()
        },
    );
    let names: Vec<String> = feeds.feeds().iter().map(|f| f.name.clone()).collect();
    eprintln!(
        "watching {} source(s) with {} on {on}{}, detection {schedule}: {}",
        names.len(),
        detector.model_name,
        if matcher.is_some() { ", matching" } else { "" },
        names.join(", ")
    );
    let mut processor = MultiProcessor::new(specs.len(), config);
    let mut tracks: Vec<TrackEvents> = (0..specs.len())
        .map(|_| TrackEvents::new(config.tracker.max_lost_frames))
        .collect();
    let mut windows: Vec<Window> = (0..specs.len()).map(|_| Window::default()).collect();
    let mut processed = vec![0u64; specs.len()];
    let labels = detector.labels().to_vec();
    let started = Instant::now();
    let mut last_stats = Instant::now();
    let until = args.duration.map(|d| started + Duration::from_secs_f64(d));
    let mut failures = 0u64;

    let write_events = |events_out: &mut Option<LineWriter<std::fs::File>>,
                        source: usize,
                        list: &[TrackEvent]|
     -> anyhow::Result<()> {
        let Some(out) = events_out.as_mut() else {
            return Ok(());
        };
        for e in list {
            let label = match e {
                TrackEvent::Appeared { class_id, .. } => labels.get(*class_id).map(String::as_str),
                _ => None,
            };
            let record = EventJson {
                source: &names[source],
                source_index: source,
                unix_ms: unix_ms(SystemTime::now()),
                label,
                event: e,
            };
            crate::report::write_json_line(out, &record).context("writing --events")?;
        }
        Ok(())
    };

    let outcome = (|| -> anyhow::Result<()> {
        loop {
            if stop.load(Ordering::SeqCst) || until.is_some_and(|u| Instant::now() >= u) {
                return Ok(());
            }
            if feeds.all_finished() {
                return Ok(());
            }
            if last_stats.elapsed().as_secs_f64() >= args.stats_every {
                report_stats(&feeds, &mut windows, &processed, last_stats, &mut stats_out)?;
                last_stats = Instant::now();
            }
            let round = feeds.next(schedule, Duration::from_millis(100));
            if round.is_empty() {
                continue;
            }
            let results =
                match processor.process_round(round, &mut detector, &opts, matcher.as_mut()) {
                    Ok(r) => r,
                    Err(e) => {
                        // A detector failure is the model's, not a source's: say it and stop.
                        return Err(e.into());
                    }
                };
            for result in results {
                let r: SourceResult = match result {
                    Ok(r) => r,
                    Err(e) => {
                        failures += 1;
                        if failures <= 3 {
                            eprintln!("warning: {e}");
                        }
                        continue;
                    }
                };
                processed[r.source] += 1;
                let w = &mut windows[r.source];
                w.processed += 1;
                w.latencies.push(r.latency_ms);
                let decision = r.matched.then_some(&view.decision);
                let list =
                    tracks[r.source].update(r.frame.generation, r.processed, &r.regions, decision);
                write_events(&mut events, r.source, &list)?;
                if let Some(out) = jsonl.as_mut() {
                    let captured = SystemTime::now()
                        .checked_sub(r.frame.captured_at.elapsed())
                        .unwrap_or(UNIX_EPOCH);
                    let record = FrameJson {
                        source: &names[r.source],
                        source_index: r.source,
                        frame: r.frame.frame.index,
                        pts_ms: r.frame.frame.pts_ms.map(|t| (t * 1000.0).round() / 1000.0),
                        captured_unix_ms: unix_ms(captured),
                        latency_ms: (r.latency_ms * 10.0).round() / 10.0,
                        detections: regions_json(
                            &labels,
                            &r.regions.iter().collect::<Vec<_>>(),
                            true,
                            r.matched,
                            &view,
                        ),
                    };
                    crate::report::write_json_line(out, &record).context("writing --jsonl")?;
                }
            }
        }
    })();
    // Whatever ended the watch: every open track ends, the last stats are given, files flushed.
    feeds.stop(Duration::from_millis(200));
    for (i, t) in tracks.iter_mut().enumerate() {
        let list = t.end_all();
        write_events(&mut events, i, &list)?;
    }
    report_stats(&feeds, &mut windows, &processed, last_stats, &mut stats_out)?;
    for (flag, out) in [
        ("--jsonl", &mut jsonl),
        ("--events", &mut events),
        ("--stats-json", &mut stats_out),
    ] {
        if let Some(w) = out.as_mut() {
            w.flush().with_context(|| format!("writing {flag}"))?;
        }
    }
    outcome?;
    let failed: Vec<String> = feeds
        .feeds()
        .iter()
        .filter_map(|f| match f.status().state {
            SourceState::Failed { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    let total: u64 = processed.iter().sum();
    eprintln!(
        "stopped after {:.1} s: {total} frame(s) processed ({})",
        started.elapsed().as_secs_f64(),
        names
            .iter()
            .zip(&processed)
            .map(|(n, p)| format!("{n}: {p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Sources that failed for good (files) make the run a failure; a live source that was
    // still retrying when the watch was stopped is reported above, not an error.
    let interrupted = stop.load(Ordering::SeqCst) || until.is_some();
    if !interrupted && !failed.is_empty() {
        for e in &failed {
            eprintln!("error: {e}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn report_stats(
    feeds: &Feeds,
    windows: &mut [Window],
    processed: &[u64],
    since: Instant,
    json: &mut Option<LineWriter<std::fs::File>>,
) -> anyhow::Result<()> {
    let secs = since.elapsed().as_secs_f64().max(1e-3);
    let now = unix_ms(SystemTime::now());
    for (i, (feed, w)) in feeds.feeds().iter().zip(windows.iter_mut()).enumerate() {
        let status = feed.status();
        w.latencies.sort_by(f64::total_cmp);
        let record = StatsJson {
            source: &feed.name,
            source_index: i,
            unix_ms: now,
            state: state_words(&status),
            capture_fps: (status.capture_fps * 10.0).round() / 10.0,
            processed_fps: (w.processed as f64 / secs * 10.0).round() / 10.0,
            processed: processed[i],
            captured: status.captured,
            dropped: status.dropped,
            reconnects: status.reconnects,
            latency_p50_ms: percentile(&w.latencies, 0.5),
            latency_p95_ms: percentile(&w.latencies, 0.95),
        };
        match json.as_mut() {
            Some(out) => {
                crate::report::write_json_line(out, &record).context("writing --stats-json")?
            }
            None => eprintln!(
                "[{i}] {}: {} · in {:.1} fps · processed {:.1} fps · latency p50 {} p95 {} · dropped {} · reconnects {}",
                record.source,
                record.state,
                record.capture_fps,
                record.processed_fps,
                record
                    .latency_p50_ms
                    .map_or("-".into(), |v| format!("{v:.0} ms")),
                record
                    .latency_p95_ms
                    .map_or("-".into(), |v| format!("{v:.0} ms")),
                record.dropped,
                record.reconnects
            ),
        }
        *w = Window::default();
    }
    Ok(())
}
