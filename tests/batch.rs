#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Detection batched across sources: arvis derives a batch-capable twin of the shared YOLOv8n
//! file (fixed to batch 1), and a batch of frames gives the same detections as one frame at a
//! time on every shared photo. A model that cannot be batched runs frames one after another, and
//! says why.

mod common;

use arvis::detect::{DetectOptions, Detector, FrameDetector};
use arvis::runtime::Device;

fn photos() -> Vec<image::RgbImage> {
    let mut paths: Vec<_> = std::fs::read_dir(common::images_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let photos: Vec<_> = paths
        .iter()
        .map(|p| image::open(p).unwrap().to_rgb8())
        .collect();
    assert!(photos.len() >= 10, "the shared photos are missing");
    photos
}

fn load(file: &str, id: &str) -> Detector {
    common::provisioned();
    let path = common::models_mirror().join("yolov8n").join(file);
    Detector::load(common::runtime(), &path, id, Device::Cpu).unwrap()
}

#[test]
fn a_batch_gives_the_same_detections_as_batch_one_on_every_shared_photo() {
    let twins = tempfile::tempdir().unwrap();
    let mut detector = load("yolov8n_coco_fp32_dequantized.onnx", "yolov8n-fp32");
    let batching = detector
        .enable_batching_in(common::runtime(), Device::Cpu, twins.path())
        .clone();
    assert!(batching.is_batched(), "{batching}");
    let twin_files = std::fs::read_dir(twins.path()).unwrap().count();
    assert_eq!(twin_files, 1, "the twin is derived into the given folder");

    let photos = photos();
    let opts = DetectOptions::default();
    // Batches of 4 with a ragged tail, so every photo sits beside different neighbours.
    let mut total = 0;
    for chunk in photos.chunks(4) {
        let frames: Vec<&image::RgbImage> = chunk.iter().collect();
        let batched = detector.detect_frames(&frames, &opts).unwrap();
        assert_eq!(batched.len(), frames.len());
        for (frame, got) in frames.iter().zip(&batched) {
            let want = detector.detect(frame, &opts).unwrap();
            assert_eq!(
                got.detections.len(),
                want.detections.len(),
                "batched {:?}\nsingle {:?}",
                got.detections,
                want.detections
            );
            for (g, w) in got.detections.iter().zip(&want.detections) {
                assert_eq!(g.class_id, w.class_id);
                assert!((g.score - w.score).abs() < 1e-4, "{g:?} vs {w:?}");
                for (a, b) in g.bbox.iter().zip(&w.bbox) {
                    assert!((a - b).abs() < 0.05, "{g:?} vs {w:?}");
                }
            }
            total += want.detections.len();
        }
    }
    assert!(
        total >= 20,
        "the photos should hold many objects, got {total}"
    );

    // A second detector finds the derived twin in place rather than deriving it again.
    let mut again = load("yolov8n_coco_fp32_dequantized.onnx", "yolov8n-fp32");
    let modified = std::fs::metadata(
        std::fs::read_dir(twins.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap()
    .modified()
    .unwrap();
    assert!(
        again
            .enable_batching_in(common::runtime(), Device::Cpu, twins.path())
            .is_batched()
    );
    let entry = std::fs::read_dir(twins.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(entry.metadata().unwrap().modified().unwrap(), modified);
}

#[test]
fn a_dynamically_quantised_model_runs_frames_one_after_another_and_says_why() {
    let twins = tempfile::tempdir().unwrap();
    let mut detector = load("yolov8n_coco_int8_dynamic.onnx", "yolov8n-int8");
    let batching = detector
        .enable_batching_in(common::runtime(), Device::Cpu, twins.path())
        .clone();
    assert!(!batching.is_batched());
    let text = batching.to_string();
    assert!(
        text.contains("one frame per run") && text.contains("dynamically quantised"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(twins.path()).unwrap().count(),
        0,
        "no twin is written"
    );

    let photos = photos();
    let frames: Vec<&image::RgbImage> = photos.iter().take(3).collect();
    let opts = DetectOptions::default();
    let got = detector.detect_frames(&frames, &opts).unwrap();
    for (frame, got) in frames.iter().zip(&got) {
        let want = detector.detect(frame, &opts).unwrap();
        assert_eq!(
            format!("{:?}", got.detections),
            format!("{:?}", want.detections)
        );
    }
}

#[test]
fn a_corrupt_cached_twin_is_refused_not_trusted() {
    let twins = tempfile::tempdir().unwrap();
    let src = common::models_mirror().join("yolov8n/yolov8n_coco_fp32_dequantized.onnx");
    let path = arvis::models::batch::twin_path(&src, twins.path()).unwrap();
    std::fs::write(&path, b"not a model").unwrap();
    let mut detector = load("yolov8n_coco_fp32_dequantized.onnx", "yolov8n-fp32");
    let batching = detector
        .enable_batching_in(common::runtime(), Device::Cpu, twins.path())
        .clone();
    assert!(!batching.is_batched(), "{batching}");
    assert!(batching.to_string().contains("batch twin"), "{batching}");
    // Frames still run, one by one.
    let photos = photos();
    let frames: Vec<&image::RgbImage> = photos.iter().take(2).collect();
    assert_eq!(
        detector
            .detect_frames(&frames, &DetectOptions::default())
            .unwrap()
            .len(),
        2
    );
}

/// One round of three sources: their detections in one detector call, the crops due in all
/// three frames in one CLIP batch, and each frame's matches the same as matching it alone.
#[test]
fn a_round_embeds_every_source_s_crops_in_one_clip_batch_with_per_frame_results() {
    use arvis::pipeline::frame::{MatchStage, ProcessorConfig, TrackStage};
    use arvis::pipeline::multi::{FeedFrame, MultiProcessor};
    use std::sync::Arc;

    let (clip, index) = common::tiny_gallery();
    let location = arvis::search::GalleryLocation::parse(index.as_os_str()).unwrap();
    let encoder =
        || arvis::embed::ImageEncoder::load(common::runtime(), clip, Device::Cpu).unwrap();
    let mut matcher = arvis::search::RegionMatcher {
        encoder: encoder(),
        index: arvis::search::store::open_any(&location).unwrap(),
        k: 3,
    };
    let mut detector = load("yolov8n_coco_int8_dynamic.onnx", "yolov8n-int8");
    let names = [
        "ultralytics_bus.jpg",
        "ultralytics_zidane.jpg",
        "darknet_horses.jpg",
    ];
    let images: Vec<Arc<image::RgbImage>> = names
        .iter()
        .map(|n| Arc::new(image::open(common::images_dir().join(n)).unwrap().to_rgb8()))
        .collect();
    let config = ProcessorConfig {
        match_k: 3,
        ..ProcessorConfig::default()
    };
    let mut multi = MultiProcessor::new(3, config);
    let round = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let frame = arvis::source::Frame {
                image: img.clone(),
                pts_ms: None,
                index: 0,
            };
            (
                i,
                FeedFrame {
                    frame,
                    captured_at: std::time::Instant::now(),
                    generation: 1,
                },
            )
        })
        .collect();
    let opts = DetectOptions::default();
    let results = multi
        .process_round(round, &mut detector, &opts, Some(&mut matcher))
        .unwrap();
    assert_eq!(
        multi.clip_batches(),
        1,
        "three sources' crops, one CLIP batch"
    );
    assert_eq!(results.len(), 3);

    // Alone: each frame detected, tracked and matched by itself, with an encoder of its own.
    let mut alone_encoder = encoder();
    let mut alone_index = arvis::search::store::open_any(&location).unwrap();
    for (r, img) in results.into_iter().zip(&images) {
        let r = r.unwrap();
        assert!(r.matched && !r.regions.is_empty());
        let mut tracking = TrackStage::new(config.tracker);
        let mut regions = tracking.track(&detector.detect(img, &opts).unwrap().detections);
        MatchStage::new(config.refresh_frames, 3)
            .match_regions(
                0,
                img,
                &mut regions,
                &mut alone_encoder,
                alone_index.as_mut(),
            )
            .unwrap();
        assert_eq!(r.regions.len(), regions.len());
        for (got, want) in r.regions.iter().zip(&regions) {
            assert_eq!(got.hits.len(), 3);
            let ids = |h: &[arvis::search::Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
            assert_eq!(ids(&got.hits), ids(&want.hits), "{:?}", got.detection);
            for (g, w) in got.hits.iter().zip(&want.hits) {
                assert!((g.score - w.score).abs() < 1e-4, "{g:?} vs {w:?}");
            }
        }
    }
}
