//! The live pipeline with real sources and the real detector: a video replayed in real time as a
//! camera stands in for one (none can exist here), sources that fail mid-stream, bad files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic
#![cfg(feature = "video")]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use arvis::detect::DetectOptions;
use arvis::pipeline::live::{
    LiveOptions, LoadedDetector, Loaders, Pipeline, PipelineConfig, SourceCommand, SourceState,
    Stage,
};
use arvis::source::video::VideoSource;
use arvis::source::{Frame, FrameSource, Replay, SourceError, SourceInfo, SourceSpec};

fn options() -> LiveOptions {
    LiveOptions {
        detect: DetectOptions {
            conf: 0.25,
            iou: 0.45,
            max_det: 300,
            classes: None,
        },
        index: Ok(PathBuf::from("/nonexistent/arvis-index").into()),
        gallery_images: PathBuf::from("/nonexistent/arvis-gallery-images"),
        match_enabled: false,
        match_k: 3,
    }
}

/// No text tower: these tests add no text items.
fn no_text() -> arvis::pipeline::live::TextLoader {
    Box::new(|_, _| anyhow::bail!("no text items in these tests"))
}

fn loaders() -> Loaders {
    Loaders {
        detector: Box::new(|_| {
            Ok(LoadedDetector {
                detector: Box::new(common::detector()),
                description: "yolov8n-int8 · CPUExecutionProvider".into(),
            })
        }),
        encoder: Box::new(|_| anyhow::bail!("CLIP is not used in these tests")),
        text: no_text(),
    }
}

fn start(config: PipelineConfig) -> Pipeline {
    ready(Pipeline::start(loaders(), options(), config))
}

fn start_with(loaders: Loaders) -> Pipeline {
    ready(Pipeline::start(
        loaders,
        options(),
        PipelineConfig::default(),
    ))
}

fn ready(pipeline: Pipeline) -> Pipeline {
    assert!(
        common::wait_until(Duration::from_secs(60), || matches!(
            pipeline.status().detector,
            Stage::Ready(_)
        )),
        "detector never became ready: {:?}",
        pipeline.status().detector
    );
    pipeline
}

fn replay_opener(fps: f64) -> arvis::pipeline::live::Opener {
    Box::new(move || {
        let video = VideoSource::open(&common::walking_video())?;
        Ok(Box::new(Replay::new(Box::new(video), fps)) as Box<dyn FrameSource>)
    })
}

#[test]
fn video_source_decodes_every_frame_in_order_and_seeks() {
    let mut video = VideoSource::open(&common::walking_video()).unwrap();
    let info = video.info().clone();
    assert_eq!((info.width, info.height), (768, 432));
    assert_eq!(info.fps, Some(10.0));
    let mut last = -1.0;
    let mut n = 0;
    while let Some(f) = video.next_frame().unwrap() {
        let pts = f.pts_ms.unwrap();
        assert!(pts > last, "timestamps must increase: {pts} after {last}");
        assert_eq!(f.image.dimensions(), (768, 432));
        last = pts;
        n += 1;
    }
    assert_eq!(n, 101, "every frame of the 10.1 s clip at 10 fps");
    video.seek(5000.0).unwrap();
    let f = video.next_frame().unwrap().unwrap();
    assert!(
        (f.pts_ms.unwrap() - 5000.0).abs() < 1.0,
        "seek lands on the frame at 5 s, got {:?}",
        f.pts_ms
    );
    assert_eq!(f.index, 50);
}

#[test]
fn replayed_camera_at_30_fps_drops_stale_frames_instead_of_queueing() {
    let pipeline = start(PipelineConfig::default());
    pipeline.send(SourceCommand::Open {
        label: "replay".into(),
        live: true,
        opener: replay_opener(30.0),
    });
    // Watch every snapshot for 4 seconds.
    let mut seen: Vec<Arc<arvis::pipeline::live::Snapshot>> = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        if let Some(s) = pipeline.latest() {
            if seen.last().is_none_or(|l| l.seq != s.seq) {
                seen.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    pipeline.send(SourceCommand::Close);
    let status = pipeline.status();
    let c = &status.counters;
    eprintln!(
        "{c:?}, capture {:.1} fps, inference {:.1} fps",
        status.capture_fps, status.inference_fps
    );

    // Every captured frame was either detected or dropped as stale: nothing waits in a queue
    // (speed itself is the benchmarks' business; the exact drop count is checked with a held
    // detector below).
    assert!(c.captured > 30, "captured {} frames in 4 s", c.captured);
    assert!(
        c.captured - (c.detected + c.dropped_before_detect) <= 2,
        "captured {} = detected {} + dropped {} (+ at most one in flight)",
        c.captured,
        c.detected,
        c.dropped_before_detect
    );
    let detected: Vec<_> = seen.iter().filter(|s| s.detected).collect();
    assert!(detected.len() > 3, "{} detected snapshots", detected.len());
    // Snapshots only move forward.
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
}

/// The real detector, held before each frame until the test lets it go: "busy" at a moment
/// the test chooses, however fast or loaded the machine is.
struct Gated {
    inner: arvis::detect::Detector,
    started: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
}

impl arvis::detect::FrameDetector for Gated {
    fn labels(&self) -> &[String] {
        self.inner.labels()
    }

    fn detect_frame(
        &mut self,
        image: &image::RgbImage,
        opts: &DetectOptions,
    ) -> Result<arvis::detect::DetectOutput, arvis::detect::DetectError> {
        let _ = self.started.send(());
        let _ = self.go.recv_timeout(Duration::from_secs(60));
        arvis::detect::FrameDetector::detect_frame(&mut self.inner, image, opts)
    }
}

/// A live source that delivers exactly the frames the test pushes, when it pushes them.
struct Pushed {
    info: SourceInfo,
    frames: std::sync::mpsc::Receiver<Frame>,
}

impl FrameSource for Pushed {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        Ok(self.frames.recv().ok())
    }
}

#[test]
fn frames_arriving_while_detection_is_busy_are_dropped_all_but_the_newest() {
    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let gated = std::sync::Mutex::new(Some((started_tx, go_rx)));
    let pipeline = start_with(Loaders {
        detector: Box::new(move |_| {
            let (started, go) = gated.lock().unwrap().take().expect("loaded once");
            Ok(LoadedDetector {
                detector: Box::new(Gated {
                    inner: common::detector(),
                    started,
                    go,
                }),
                description: "gated yolov8n-int8".into(),
            })
        }),
        encoder: Box::new(|_| anyhow::bail!("CLIP is not used in this test")),
        text: no_text(),
    });
    let (push, frames) = std::sync::mpsc::channel::<Frame>();
    let frames = std::sync::Mutex::new(Some(frames));
    let bus = Arc::new(
        image::open(common::images_dir().join("ultralytics_bus.jpg"))
            .unwrap()
            .to_rgb8(),
    );
    pipeline.send(SourceCommand::Open {
        label: "pushed".into(),
        live: true,
        opener: Box::new(move || {
            let frames = frames
                .lock()
                .unwrap()
                .take()
                .ok_or_else(|| SourceError::Other("opened twice".into()))?;
            Ok(Box::new(Pushed {
                info: SourceInfo {
                    kind: arvis::source::SourceKind::Camera,
                    name: "pushed".into(),
                    width: 810,
                    height: 1080,
                    fps: None,
                    format: "test frames".into(),
                    duration_ms: None,
                },
                frames,
            }) as Box<dyn FrameSource>)
        }),
    });
    let frame = |index| Frame {
        image: bus.clone(),
        pts_ms: None,
        index,
    };
    let captured = |n| {
        common::wait_until(Duration::from_secs(30), || {
            pipeline.status().counters.captured == n
        })
    };
    // Frame 0 reaches the detector, which is now busy with it.
    push.send(frame(0)).unwrap();
    started
        .recv_timeout(Duration::from_secs(60))
        .expect("detection started");
    // Ten more arrive while it is busy: nine are stale the moment the next one lands.
    for i in 1..=10 {
        push.send(frame(i)).unwrap();
    }
    assert!(captured(11), "{:?}", pipeline.status().counters);
    assert_eq!(pipeline.status().counters.dropped_before_detect, 9);
    assert_eq!(pipeline.status().counters.detected, 0);
    // Let it go: the next frame it detects is the newest, frame 10; nothing else is queued.
    go.send(()).unwrap();
    started
        .recv_timeout(Duration::from_secs(60))
        .expect("second detection started");
    go.send(()).unwrap();
    assert!(common::wait_until(Duration::from_secs(30), || {
        pipeline.status().counters.detected == 2
    }));
    // (The counter moves just before the snapshot is published.)
    assert!(
        common::wait_until(Duration::from_secs(10), || pipeline
            .latest()
            .is_some_and(|s| s.detected && s.frame.index == 10)),
        "the newest frame was detected: {:?}",
        pipeline.latest().map(|s| s.frame.index)
    );
    let c = pipeline.status().counters;
    assert_eq!(
        (c.captured, c.detected, c.dropped_before_detect),
        (11, 2, 9)
    );
    assert!(
        started.recv_timeout(Duration::from_millis(300)).is_err(),
        "no third detection: nothing was queued"
    );
    pipeline.send(SourceCommand::Close);
}

/// A source that fails after a number of frames, as an unplugged camera does.
struct Flaky {
    inner: Box<dyn FrameSource>,
    frames_left: u32,
}

impl FrameSource for Flaky {
    fn info(&self) -> &SourceInfo {
        self.inner.info()
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.frames_left == 0 {
            return Err(SourceError::Camera {
                index: 0,
                message: "capture failed: device unplugged".into(),
            });
        }
        self.frames_left -= 1;
        self.inner.next_frame()
    }
}

#[test]
fn a_camera_failing_mid_stream_is_reported_and_reconnected_with_backoff() {
    let pipeline = start(PipelineConfig {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        ..PipelineConfig::default()
    });
    let opens = Arc::new(AtomicU32::new(0));
    let counter = opens.clone();
    let mut replay = replay_opener(30.0);
    pipeline.send(SourceCommand::Open {
        label: "camera:0".into(),
        live: true,
        opener: Box::new(move || {
            // 1st: streams 15 frames then fails; 2nd to 5th: the device is gone;
            // 6th: back for good.
            let n = counter.fetch_add(1, Ordering::SeqCst);
            match n {
                1..=4 => Err(SourceError::Camera {
                    index: 0,
                    message: "not present (cameras: none)".into(),
                }),
                _ => Ok(Box::new(Flaky {
                    inner: replay()?,
                    frames_left: if n == 0 { 15 } else { u32::MAX },
                }) as Box<dyn FrameSource>),
            }
        }),
    });
    let mut states = Vec::new();
    let mut recovered_seq = None;
    let ok = common::wait_until(Duration::from_secs(30), || {
        let s = pipeline.status();
        if states.last() != Some(&s.source) {
            states.push(s.source.clone());
        }
        if opens.load(Ordering::SeqCst) >= 6 && s.source == SourceState::Running {
            let seq = pipeline.latest().map_or(0, |l| l.seq);
            let first = *recovered_seq.get_or_insert(seq);
            return seq >= first + 10;
        }
        false
    });
    let failures: Vec<_> = states
        .iter()
        .filter_map(|s| match s {
            SourceState::Failed { error, retry_in_ms } => Some((error.clone(), *retry_in_ms)),
            _ => None,
        })
        .collect();
    assert!(ok, "no recovery; states seen: {states:?}");
    assert!(
        failures
            .iter()
            .any(|(e, r)| e.contains("device unplugged") && r.is_some()),
        "the mid-stream failure was shown with a retry: {failures:?}"
    );
    assert!(
        failures.iter().any(|(e, _)| e.contains("not present")),
        "the failed reopen was shown: {failures:?}"
    );
    // Back-off doubles from 100 ms and stops at the 400 ms cap: five failures in a row show
    // 100, 200, 400, 400, 400 (equal states in a row are seen once).
    let delays: Vec<u64> = failures.iter().filter_map(|(_, r)| *r).collect();
    assert_eq!(delays, [100, 200, 400], "{failures:?}");
    assert!(pipeline.status().counters.reconnects >= 5);
}

#[test]
fn bad_files_are_errors_and_the_pipeline_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    // Not a video at all, whatever its name says.
    let junk = dir.path().join("clip.mp4");
    std::fs::write(&junk, b"this is not a video, just text pretending").unwrap();
    let err = SourceSpec::classify(&junk).unwrap_err().to_string();
    assert!(err.contains("not an image or video"), "{err}");

    // A real video cut short: opens (or not), then fails with a readable error, never panics.
    let bytes = std::fs::read(common::walking_video()).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 5]).unwrap();
    let pipeline = start(PipelineConfig::default());
    pipeline.send(SourceCommand::SetLoop(false));
    match SourceSpec::classify(&cut) {
        Ok(spec) => {
            pipeline.open(spec);
            let ended = common::wait_until(Duration::from_secs(30), || {
                matches!(
                    pipeline.status().source,
                    SourceState::Failed { .. } | SourceState::Ended
                )
            });
            assert!(ended, "{:?}", pipeline.status().source);
            // Never a silent end: the README promises a message naming the file.
            match pipeline.status().source {
                SourceState::Failed { error, retry_in_ms } => {
                    assert!(error.contains("cut.mp4"), "{error}");
                    assert!(
                        error.contains("truncated") || error.contains("decoding failed"),
                        "{error}"
                    );
                    assert_eq!(retry_in_ms, None, "files are not retried");
                }
                other => panic!("a truncated video ended silently: {other:?}"),
            }
        }
        Err(e) => assert!(e.to_string().contains("cut.mp4"), "{e}"),
    }

    // A truncated JPEG: an image by its bytes, but it fails to decode.
    let jpeg = std::fs::read(common::images_dir().join("ultralytics_bus.jpg")).unwrap();
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, &jpeg[..jpeg.len() / 2]).unwrap();
    pipeline.open(SourceSpec::classify(&broken).unwrap());
    // (The state may still be the video's failure: wait for this file's own.)
    assert!(
        common::wait_until(Duration::from_secs(10), || matches!(
            &pipeline.status().source,
            SourceState::Failed { error, .. } if error.contains("broken.jpg")
        )),
        "{:?}",
        pipeline.status().source
    );

    // Still alive: a good image is detected.
    pipeline.open(SourceSpec::classify(&common::images_dir().join("ultralytics_bus.jpg")).unwrap());
    assert!(common::wait_until(Duration::from_secs(20), || pipeline
        .latest()
        .is_some_and(|s| s.detected
            && s.frame.image.dimensions() == (810, 1080)
            && !s.regions.is_empty())));
    assert_eq!(pipeline.status().source, SourceState::Ended);
}

/// The live pipeline in replay mode (every frame processed, in order, with the models in place)
/// and `arvis video --jsonl` run the same frame processor: on the walking clip, with gallery
/// matching, they agree frame by frame on detections, track ids and matches.
#[test]
fn live_replay_and_arvis_video_give_identical_records_for_every_frame() {
    use arvis::runtime::{Device, DeviceRequest};
    common::runtime();
    let (clip, index) = common::tiny_gallery();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("walk.jsonl");
    let video = common::arvis()
        .env("ARVIS_CLIP_MODEL", clip)
        .args(["video", "--match", "--index"])
        .arg(index)
        .arg("-o")
        .arg(dir.path().join("walk.mp4"))
        .arg("--jsonl")
        .arg(&jsonl)
        .arg(common::walking_video())
        .output()
        .unwrap();
    assert!(video.status.success(), "{}", common::stderr(&video));
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(expected.len() > 90, "{} frames", expected.len());

    let clip = clip.display().to_string();
    let request = DeviceRequest::Exact(Device::Cpu);
    let loaders = Loaders {
        detector: Box::new(move |_| {
            let path = common::yolo_int8().display().to_string();
            let (detector, _) = arvis::load::load_threaded_detector(Some(&path), request, "test")?;
            Ok(LoadedDetector {
                detector: Box::new(detector),
                description: "yolov8n-int8".into(),
            })
        }),
        encoder: Box::new(move |_| {
            let models = arvis::load::ClipModels {
                image: Some(clip.clone()),
                text: None,
            };
            let loaded = models.load_image_encoder(request)?;
            Ok(arvis::pipeline::live::LoadedEncoder {
                encoder: loaded.encoder,
                meta: loaded.meta,
                description: "tiny CLIP".into(),
            })
        }),
        text: no_text(),
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let pipeline = Pipeline::start(
        loaders,
        LiveOptions {
            index: Ok(index.clone().into()),
            match_enabled: true,
            ..options()
        },
        PipelineConfig {
            lockstep: true,
            on_snapshot: Some(Arc::new(move |s| sink.lock().unwrap().push(s.clone()))),
            ..PipelineConfig::default()
        },
    );
    pipeline.send(SourceCommand::SetLoop(false));
    pipeline.open(SourceSpec::Video(common::walking_video()));
    assert!(
        common::wait_until(Duration::from_secs(300), || pipeline.status().source
            == SourceState::Ended),
        "{:?}",
        pipeline.status()
    );
    let status = pipeline.status();
    drop(pipeline);
    let seen = seen.lock().unwrap();
    let c = &status.counters;
    assert_eq!(
        (c.dropped_before_detect, c.dropped_before_embed),
        (0, 0),
        "{c:?}"
    );
    assert_eq!(seen.len(), expected.len(), "frames: live vs arvis video");
    let labels = status.class_names.clone();
    let mut matched_regions = 0;
    for (n, (snap, want)) in seen.iter().zip(&expected).enumerate() {
        assert!(
            snap.detected && (snap.matched || snap.regions.is_empty()),
            "frame {n} not fully processed"
        );
        matched_regions += snap.regions.iter().filter(|r| !r.hits.is_empty()).count();
        let regions: Vec<&arvis::search::Region> = snap.regions.iter().collect();
        // Through text, as a reader of the JSONL sees it (f32 fields print as their shortest form).
        let got: serde_json::Value = serde_json::from_str(
            &serde_json::to_string(&arvis::report::regions_json(
                &labels,
                &regions,
                true,
                true,
                &arvis::search::MatchView::default(),
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(got, want["detections"], "frame {n}");
    }
    // Not vacuous: the person is found, tracked and matched in (nearly) every frame.
    assert!(matched_regions > 90, "{matched_regions} matched regions");
}
