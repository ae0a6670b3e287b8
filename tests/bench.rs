//! The benchmarks run and compare like with like: `bench detect --python` runs the Python
//! reference on the same images (same detections found), `bench video` measures both stages and
//! both schedules in one run.

mod common;

use common::*;

#[test]
fn bench_detect_runs_the_python_reference_on_the_same_images() {
    provisioned();
    let images = images_dir();
    let run = arvis()
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
        .arg(images.join("darknet_dog.jpg"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let v: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
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
}

#[cfg(feature = "video")]
#[test]
fn bench_video_measures_stages_and_both_schedules() {
    provisioned();
    let run = arvis()
        .args(["bench", "video", "--frames", "20", "--json", "--clip-model"])
        .arg(&clip_tiny().0)
        .arg(walking_video())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let v: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(v["frames"], 20);
    for key in [
        "detect_ms_per_frame",
        "embed_ms_per_frame",
        "serial_fps",
        "pipelined_fps",
        "bound_fps",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    // Per-track embedding: fewer crops than regions once the person is tracked.
    assert!(v["crops_embedded"].as_u64() < v["regions"].as_u64(), "{v}");
}
