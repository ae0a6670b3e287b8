//! The benchmarks run and compare like with like: `bench detect --python` runs the Python
//! reference on the same images (same detections found), `bench video` measures both stages and
//! both schedules in one run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use common::*;

/// Run an `arvis … --json` command that must succeed and parse its output.
fn json_of(cmd: &mut std::process::Command) -> serde_json::Value {
    let run = cmd.output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    serde_json::from_str(&stdout(&run)).unwrap()
}

#[test]
fn bench_detect_runs_the_python_reference_on_the_same_images() {
    provisioned();
    let images = images_dir();
    let v = json_of(
        arvis()
            .args([
                "bench",
                "detect",
                "--model",
                "yolov8n-fp32",
                "--rounds",
                "1",
                "--python",
                "--json",
            ])
            .arg(images.join("ultralytics_bus.jpg"))
            .arg(images.join("ultralytics_zidane.jpg"))
            .arg(images.join("darknet_dog.jpg")),
    );
    let py = &v["python"];
    assert_eq!(py["onnxruntime"], "1.31.1");
    // Same model, same images, same thresholds: the same number of objects.
    assert_eq!(py["arvis_detections"], py["python_detections"], "{v}");
    assert!(py["arvis_detections"].as_u64().unwrap() >= 8, "{v}");
    for key in [
        "end_to_end_per_image_ms",
        "bare_per_image_ms",
        "arvis_whole_process_ms",
        "python_whole_process_ms",
        "arvis_over_python_whole_process",
    ] {
        assert!(py[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    assert!(v["ratio_end_to_end_over_bare"].as_f64().unwrap() > 0.5);
    // With one round the median of per-round ratios is that round's ratio, on both sides.
    for side in [&v, py] {
        let per_round = side["ratio_median_of_rounds"].as_f64().unwrap();
        let whole = side["ratio_end_to_end_over_bare"].as_f64().unwrap();
        assert!(
            (per_round - whole).abs() < 1e-9,
            "{per_round} vs {whole}: {v}"
        );
    }
    // Every I/O mode is a row: those this device has are timed (plain the reference); CUDA
    // graphs cannot run on the CPU, which is a row saying why, not an aborted bench.
    let modes: Vec<&str> = v["io_modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["plain", "bound", "graph"], "{v}");
    assert_eq!(v["io_modes"][0]["ratio_over_plain"], 1.0);
    assert!(v["io_modes"][1]["infer"]["median_ms"].as_f64().unwrap() > 0.0);
    let graph = &v["io_modes"][2];
    assert!(graph["infer"].is_null(), "{graph}");
    assert!(
        graph["unavailable"]
            .as_str()
            .unwrap()
            .contains("--device cuda"),
        "{graph}"
    );
}

/// `bench switches` runs the defaults first and last and each CPU switch between them, each in
/// its own process with its switch set (FP16 twins converted into the cache), and reports them.
#[test]
fn bench_switches_measures_each_cpu_switch_against_the_defaults() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    for name in ["ultralytics_bus.jpg", "darknet_dog.jpg"] {
        std::fs::copy(images_dir().join(name), dir.path().join(name)).unwrap();
    }
    let v = json_of(
        arvis()
            .args([
                "bench",
                "switches",
                "--rounds",
                "1",
                "--batches",
                "1,2",
                "--json",
                "--clip-model",
            ])
            .arg(&clip_tiny().0)
            .arg(dir.path()),
    );
    let rows = v["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(labels.first(), Some(&"defaults"), "{v}");
    assert_eq!(labels.last(), Some(&"defaults (again, last)"), "{v}");
    for (label, env) in [
        (
            "intra-op spinning on (ARVIS_ORT_SPIN=1)",
            "ARVIS_ORT_SPIN=1",
        ),
        (
            "detector I/O bound (ARVIS_DETECTOR_IO=bound)",
            "ARVIS_DETECTOR_IO=bound",
        ),
        (
            "prefetch at idle priority (ARVIS_PREFETCH_PRIORITY=idle)",
            "ARVIS_PREFETCH_PRIORITY=idle",
        ),
    ] {
        let row = rows.iter().find(|r| r["variant"] == label).expect(label);
        assert_eq!(row["env"][0], env);
        let over_bare = row["detect_end_to_end_over_bare"].as_f64().unwrap();
        assert!(over_bare > 0.5 && over_bare < 3.0, "{row}");
    }
    let fp16 = rows.iter().find(|r| r["variant"] == "FP16 models").unwrap();
    assert!(
        fp16["detect_infer_median_ms"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert_eq!(
        fp16["embed_images_per_s"].as_array().unwrap().len(),
        2,
        "{v}"
    );
    let converted: Vec<_> = std::fs::read_dir(test_cache().join("converted"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        converted
            .iter()
            .any(|n| n.starts_with("yolov8n_coco_fp32") && n.ends_with("-fp16.onnx")),
        "{converted:?}"
    );
}

#[cfg(feature = "video")]
#[test]
fn bench_video_measures_stages_and_both_schedules() {
    provisioned();
    let v = json_of(
        arvis()
            .args(["bench", "video", "--frames", "20", "--json", "--clip-model"])
            .arg(&clip_tiny().0)
            .arg(walking_video()),
    );
    assert_eq!(v["frames"], 20);
    for key in [
        "detect_ms_per_frame",
        "embed_ms_per_frame",
        "serial_fps",
        "pipelined_fps",
        "bound_fps",
        "pipelined_with_decode_fps",
        "bound_with_decode_fps",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    // The bound is what it says: 1000 / the slowest stage's ms per frame, and the figures that
    // are ratios of others are those ratios (no speed bound here: that is the bench's job).
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    let bound = 1e3 / f("detect_ms_per_frame").max(f("embed_ms_per_frame"));
    assert!((f("bound_fps") - bound).abs() <= 1e-6 * bound, "{v}");
    assert!(
        (f("pipeline_efficiency") - f("pipelined_fps") / f("bound_fps")).abs() < 1e-9,
        "{v}"
    );
    assert!(
        (f("speedup_over_serial") - f("pipelined_fps") / f("serial_fps")).abs() < 1e-9,
        "{v}"
    );
    // Per-track embedding: fewer crops than regions once the person is tracked.
    let (crops, regions) = (
        v["crops_embedded"].as_u64().expect("crops_embedded"),
        v["regions"].as_u64().expect("regions"),
    );
    assert!(regions > 0 && crops < regions, "{v}");
}

/// A directory of frames stands in for the video, in every build: this is how builds without
/// FFmpeg (the GPU machines') run the video bench.
#[test]
fn bench_video_takes_a_directory_of_frames() {
    provisioned();
    let v = json_of(
        arvis()
            .args(["bench", "video", "--frames", "4", "--json", "--clip-model"])
            .arg(&clip_tiny().0)
            .arg(images_dir()),
    );
    assert_eq!(v["frames"], 4, "{v}");
    assert!(v["regions"].as_u64().unwrap() > 0, "{v}");
    // The decode thread read the same four frames from the directory (the bench checks the count).
    assert!(
        v["pipelined_with_decode_fps"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[test]
fn bench_items_measures_item_matching_against_per_image_matching_on_one_index() {
    let r = json_of(arvis().args([
        "bench",
        "items",
        "--items",
        "300",
        "--images-per-item",
        "3",
        "--queries",
        "30",
        "--dim",
        "64",
        "--json",
    ]));
    assert_eq!(r["items"].as_u64(), Some(300));
    assert_eq!(r["images"].as_u64(), Some(900));
    for key in ["per_image_p50_ms", "per_item_p50_ms", "search_alone_p50_ms"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    let ratio = r["ratio_p50"].as_f64().unwrap();
    let expected = r["per_item_p50_ms"].as_f64().unwrap() / r["per_image_p50_ms"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{r}");
}

/// The streams bench runs 1, 2 and 4 synthetic cameras through the watch pipeline under both
/// schedules, every source detected in every run, and its ratios are of its own figures.
#[test]
fn bench_streams_measures_both_schedules_against_one_source() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    for name in ["ultralytics_bus.jpg", "ultralytics_zidane.jpg"] {
        std::fs::copy(images_dir().join(name), dir.path().join(name)).unwrap();
    }
    let v = json_of(
        arvis()
            .args([
                "bench",
                "streams",
                "--json",
                "--seconds",
                "1.5",
                "--model",
                "yolov8n-fp32",
            ])
            .arg(dir.path()),
    );
    assert!(
        v["batching"].as_str().unwrap().starts_with("batched"),
        "{v}"
    );
    let runs = v["runs"].as_array().unwrap();
    let key: Vec<(u64, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["sources"].as_u64().unwrap(),
                r["schedule"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        key,
        [
            (1, "one-at-a-time"),
            (2, "one-at-a-time"),
            (2, "batched"),
            (4, "one-at-a-time"),
            (4, "batched")
        ]
    );
    let reference = runs[0]["throughput_fps"].as_f64().unwrap();
    for r in runs {
        let frames: Vec<u64> = r["per_source_frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_u64().unwrap())
            .collect();
        assert_eq!(frames.len() as u64, r["sources"].as_u64().unwrap());
        assert!(frames.iter().all(|&f| f > 0), "a source starved: {r}");
        let ratio = r["throughput_fps"].as_f64().unwrap() / reference;
        assert!(
            (r["throughput_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9,
            "{r}"
        );
        assert!(r["latency_p95_ms"].as_f64().unwrap() >= r["latency_p50_ms"].as_f64().unwrap());
    }

    // The int8 CPU default cannot batch: only one-at-a-time runs, and the reason is given.
    let v = json_of(
        arvis()
            .args([
                "bench",
                "streams",
                "--json",
                "--seconds",
                "1",
                "--model",
                "yolov8n-int8",
            ])
            .arg(dir.path()),
    );
    assert!(
        v["batching"]
            .as_str()
            .unwrap()
            .contains("dynamically quantised"),
        "{v}"
    );
    assert!(
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["schedule"] == "one-at-a-time"),
        "{v}"
    );
}
