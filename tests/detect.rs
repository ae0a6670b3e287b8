//! `arvis detect` end to end: the real binary, the real YOLOv8n models, the shared photos.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::Value;

/// Reference detections per image file name, for one model file.
fn reference(model_file: &str) -> BTreeMap<String, Vec<Value>> {
    let text = std::fs::read_to_string(models_mirror().join("yolov8n/reference_detections.json"))
        .expect("reference file");
    let all: Value = serde_json::from_str(&text).expect("reference JSON");
    all["detections"][model_file]
        .as_object()
        .expect("model entry")
        .iter()
        .map(|(k, v)| {
            let name = Path::new(k)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, v.as_array().unwrap().clone())
        })
        .collect()
}

fn corners_close(a: &[Value], b: &[Value], tol: f64) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= tol)
}

fn agrees_with_reference(model_id: &str, model_file: &str) {
    provisioned();
    let out = arvis()
        .args(["detect", "--json", "--model", model_id])
        .arg(images_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let reference = reference(model_file);
    assert_eq!(lines.len(), reference.len(), "one line per shared image");
    for line in &lines {
        let name = Path::new(line["path"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ours = line["detections"].as_array().unwrap();
        let theirs = &reference[&name];
        // PNGs decode to the same pixels everywhere and the letterbox reproduces Pillow bit for
        // bit, so the FP32 model must agree to the reference's rounding (measured: ≤ 0.5 px,
        // ≤ 0.0004). JPEG decoders differ by a few levels, and int8's dynamic quantisation
        // follows its input's range, so those get the manifest's stated tolerances.
        let exact = name.ends_with(".png") && model_id == "yolov8n-fp32";
        let (box_tol, score_tol) = if exact { (1.0, 0.002) } else { (10.0, 0.05) };
        // Every reference detection ≥ 0.4 is present: same label, score and corners in tolerance.
        for r in theirs
            .iter()
            .filter(|r| r["score"].as_f64().unwrap() >= 0.4)
        {
            let found = ours.iter().any(|o| {
                o["label"] == r["class"]
                    && (o["score"].as_f64().unwrap() - r["score"].as_f64().unwrap()).abs()
                        <= score_tol
                    && corners_close(
                        o["box"].as_array().unwrap(),
                        r["xyxy"].as_array().unwrap(),
                        box_tol,
                    )
            });
            assert!(
                found,
                "{model_id} {name}: reference {r} missing from {ours:?}"
            );
        }
        // And we add nothing confident that the reference lacks.
        for o in ours.iter().filter(|o| o["score"].as_f64().unwrap() >= 0.45) {
            let known = theirs.iter().any(|r| {
                o["label"] == r["class"]
                    && corners_close(
                        o["box"].as_array().unwrap(),
                        r["xyxy"].as_array().unwrap(),
                        10.0,
                    )
            });
            assert!(known, "{model_id} {name}: extra detection {o}");
        }
    }
}

#[test]
fn int8_model_agrees_with_reference_detections() {
    agrees_with_reference("yolov8n-int8", "yolov8n_coco_int8_dynamic.onnx");
}

#[test]
fn fp32_model_agrees_with_reference_detections() {
    agrees_with_reference("yolov8n-fp32", "yolov8n_coco_fp32_dequantized.onnx");
}

#[test]
fn json_lines_have_the_documented_shape() {
    provisioned();
    let bus = images_dir().join("ultralytics_bus.jpg");
    let out = arvis()
        .args(["detect", "--json"])
        .arg(&bus)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let obj = lines[0].as_object().unwrap();
    let keys: Vec<_> = obj.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["detections", "height", "path", "timings_ms", "width"]
    );
    assert_eq!(obj["path"], bus.display().to_string());
    assert_eq!(
        (obj["width"].as_u64(), obj["height"].as_u64()),
        (Some(810), Some(1080))
    );
    let timings: Vec<_> = obj["timings_ms"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(timings, ["decode", "infer", "postprocess", "preprocess"]);
    for d in obj["detections"].as_array().unwrap() {
        let keys: Vec<_> = d.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["box", "class_id", "label", "score"]);
        assert_eq!(d["box"].as_array().unwrap().len(), 4);
    }
    let labels: Vec<_> = obj["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"bus") && labels.iter().filter(|l| **l == "person").count() >= 3,
        "{labels:?}"
    );
    assert!(
        stdout(&out).lines().count() == 1,
        "nothing but JSON on stdout"
    );
}

#[test]
fn class_filter_confidence_and_max_det_apply() {
    provisioned();
    let bus = images_dir().join("ultralytics_bus.jpg");
    let run = |args: &[&str]| {
        let out = arvis()
            .args(["detect", "--json"])
            .args(args)
            .arg(&bus)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        json_lines(&out)[0]["detections"]
            .as_array()
            .unwrap()
            .clone()
    };
    let only_bus = run(&["--classes", "bus"]);
    assert_eq!(only_bus.len(), 1);
    assert_eq!(only_bus[0]["label"], "bus");
    let by_id = run(&["--classes", "5,0"]);
    assert_eq!(by_id.len(), 5, "ids work like names");
    assert_eq!(run(&["--max-det", "2"]).len(), 2);
    let confident = run(&["--conf", "0.85"]);
    assert!(
        !confident.is_empty()
            && confident
                .iter()
                .all(|d| d["score"].as_f64().unwrap() >= 0.85)
    );

    let out = arvis()
        .args(["detect", "--classes", "unicorn"])
        .arg(&bus)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown class `unicorn`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn save_writes_annotated_images_with_boxes() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    let bus = images_dir().join("ultralytics_bus.jpg");
    let cat = images_dir().join("skimage_chelsea_cat.png");
    let out = arvis()
        .args(["detect", "--json", "--save"])
        .arg(dir.path())
        .arg(&bus)
        .arg(&cat)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let saved = image::open(dir.path().join("ultralytics_bus.jpg"))
        .unwrap()
        .to_rgb8();
    let original = image::open(&bus).unwrap().to_rgb8();
    assert_eq!(saved.dimensions(), original.dimensions());
    // The bus box's left edge is drawn in the bus colour (Ultralytics palette index 5: 0x48F90A).
    let bus_det = json_lines(&out)[0]["detections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["label"] == "bus")
        .unwrap()
        .clone();
    let b: Vec<f64> = bus_det["box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let p = saved
        .get_pixel(b[0].round() as u32 + 1, ((b[1] + b[3]) / 2.0) as u32)
        .0;
    assert!(
        (p[0] as i32 - 0x48).abs() < 40
            && (p[1] as i32 - 0xF9).abs() < 40
            && (p[2] as i32 - 0x0A).abs() < 40,
        "edge pixel {p:?}"
    );
    assert!(
        dir.path().join("skimage_chelsea_cat.png").is_file(),
        "PNG input saved as PNG"
    );
}

#[test]
fn bad_inputs_are_reported_per_input_and_the_rest_still_run() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("empty.jpg"), b"").unwrap();
    std::fs::write(d.join("text.jpg"), b"this is not an image\n").unwrap();
    let dog = std::fs::read(images_dir().join("darknet_dog.jpg")).unwrap();
    std::fs::write(d.join("truncated.jpg"), &dog[..dog.len() * 2 / 5]).unwrap();
    std::fs::write(d.join("bomb.png"), png_header_only(60_000, 60_000)).unwrap();
    let good = images_dir().join("skimage_chelsea_cat.png");
    let out = arvis()
        .args(["detect", "--json"])
        .arg(d.join("missing.jpg"))
        .arg(d.join("empty.jpg"))
        .arg(d.join("text.jpg"))
        .arg(&good)
        .arg(d.join("truncated.jpg"))
        .arg(d.join("bomb.png"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "non-zero exit when any input fails"
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 6, "one line per input, failures included");
    let error = |i: usize| {
        lines[i]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("line {i} has no error: {}", lines[i]))
            .to_string()
    };
    assert!(error(0).contains("no such file"), "{}", error(0));
    assert!(error(1).contains("empty file"), "{}", error(1));
    assert!(
        error(2).contains("not a recognised image format"),
        "{}",
        error(2)
    );
    assert_eq!(
        lines[3]["detections"][0]["label"], "cat",
        "good input still processed"
    );
    assert!(error(4).contains("truncated"), "{}", error(4));
    assert!(
        error(5).contains("60000x60000") && error(5).contains("decompression-bomb"),
        "{}",
        error(5)
    );
    for l in lines.iter().filter(|l| l.get("error").is_some()) {
        assert_eq!(
            l.as_object().unwrap().len(),
            2,
            "error lines are exactly {{path, error}}: {l}"
        );
    }
}

#[test]
fn directories_yield_their_images_and_skip_other_files() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("nested")).unwrap();
    std::fs::copy(
        images_dir().join("skimage_chelsea_cat.png"),
        d.join("cat.png"),
    )
    .unwrap();
    std::fs::copy(
        images_dir().join("darknet_eagle.jpg"),
        d.join("nested/eagle.JPG"),
    )
    .unwrap();
    std::fs::write(d.join("notes.txt"), "not an image").unwrap();
    std::fs::write(d.join("model.onnx"), [0u8; 16]).unwrap();
    let out = arvis().args(["detect", "--json"]).arg(d).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let labels: Vec<_> = lines
        .iter()
        .map(|l| l["detections"][0]["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels, ["cat", "bird"], "recursive, sorted, images only");

    let out = arvis().args(["detect"]).arg(d).output().unwrap();
    assert!(
        stderr(&out).contains("skipped 2 non-image file(s)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_model_that_is_not_a_yolov8_detector_is_refused_with_its_shapes() {
    use arvis::models::onnx::{Model, Node, ValueInfo};
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    // A valid ONNX model with the right input but a classifier-like output.
    let model = Model {
        name: "not-yolo".into(),
        inputs: vec![ValueInfo::f32("images", &[1, 3, 640, 640])],
        outputs: vec![ValueInfo::f32("logits", &[1, 3])],
        nodes: vec![
            Node::new("ReduceMean", &["images"], &["logits"])
                .attr("axes", arvis::models::onnx::Attr::Ints(vec![2, 3]))
                .attr("keepdims", arvis::models::onnx::Attr::Int(0)),
        ],
        opset: 17,
        ..Default::default()
    };
    let path = dir.path().join("classifier.onnx");
    std::fs::write(&path, model.to_bytes()).unwrap();
    let out = arvis()
        .args(["detect", "--model"])
        .arg(&path)
        .arg(images_dir().join("ultralytics_bus.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("is not a YOLOv8 detector")
            && err.contains("[1, 3]")
            && err.contains("[1, 84, 8400]"),
        "{err}"
    );

    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"definitely not protobuf").unwrap();
    let out = arvis()
        .args(["detect", "--model"])
        .arg(&junk)
        .arg(images_dir().join("ultralytics_bus.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot load model"),
        "{}",
        stderr(&out)
    );

    let out = arvis()
        .args(["detect", "--model", "/no/such/model.onnx"])
        .arg(images_dir().join("ultralytics_bus.jpg"))
        .output()
        .unwrap();
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

/// Bound I/O (CUDA's default: input and output buffers bound once and reused) gives exactly what
/// plain `session.run` gives on every shared photo, one after another (so a stale input buffer
/// would show); graph mode is refused on the CPU; a bad mode name is a clear error.
#[test]
fn bound_io_matches_plain_session_run_exactly() {
    use arvis::detect::{DetectOptions, IoMode};
    use arvis::runtime::Device;
    provisioned();
    let mut d = detector();
    assert_eq!(d.io_mode(), IoMode::Plain, "the CPU default");
    d.set_io(IoMode::Bound, Device::Cpu).unwrap();
    let opts = DetectOptions::default();
    let pre = d.preprocessor();
    let mut paths: Vec<_> = std::fs::read_dir(images_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10);
    let prepared: Vec<_> = paths
        .iter()
        .map(|p| pre.prepare(&image::open(p).unwrap().to_rgb8()))
        .collect();
    let bound: Vec<_> = prepared
        .iter()
        .map(|p| d.run(p, &opts).unwrap().detections)
        .collect();
    // `detect` letterboxes straight into the bound buffer (no intermediate tensor): the same.
    let images: Vec<_> = paths
        .iter()
        .map(|p| image::open(p).unwrap().to_rgb8())
        .collect();
    let direct: Vec<_> = images
        .iter()
        .map(|img| d.detect(img, &opts).unwrap().detections)
        .collect();
    d.set_io(IoMode::Plain, Device::Cpu).unwrap();
    let plain: Vec<_> = prepared
        .iter()
        .map(|p| d.run(p, &opts).unwrap().detections)
        .collect();
    assert!(plain.iter().map(Vec::len).sum::<usize>() > 30);
    for (((b, p), dd), path) in bound.iter().zip(&plain).zip(&direct).zip(&paths) {
        assert_eq!(b, p, "{}", path.display());
        assert_eq!(
            dd,
            p,
            "letterboxed into the bound buffer: {}",
            path.display()
        );
    }

    let err = d
        .set_io(IoMode::Graph, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--device cuda"), "{err}");

    let err = detect_with_env("ARVIS_DETECTOR_IO", "fast").unwrap_err();
    assert!(
        err.contains("ARVIS_DETECTOR_IO") && err.contains("plain, bound or graph"),
        "{err}"
    );
    detect_with_env("ARVIS_DETECTOR_IO", "plain").unwrap();
}

/// `arvis detect --json` on the bus photo with one variable set: its stdout, or its stderr when
/// it exits with 2 (any other outcome fails the test).
fn detect_with_env(var: &str, value: &str) -> Result<String, String> {
    let out = arvis()
        .env(var, value)
        .args(["detect", "--json"])
        .arg(images_dir().join("ultralytics_bus.jpg"))
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => Ok(stdout(&out)),
        Some(2) => Err(stderr(&out)),
        other => panic!("{var}={value}: exit {other:?}: {}", stderr(&out)),
    }
}

/// A bad value for a runtime switch is one clear error naming the variable, not a silent default.
#[test]
fn a_bad_spinning_switch_is_a_clear_error() {
    provisioned();
    let err = detect_with_env("ARVIS_ORT_SPIN", "maybe").unwrap_err();
    assert!(
        err.contains("ARVIS_ORT_SPIN") && err.contains("maybe") && err.contains("1 or 0"),
        "{err}"
    );
    for value in ["0", "1"] {
        let out = detect_with_env("ARVIS_ORT_SPIN", value).unwrap();
        assert!(out.contains("\"label\":\"bus\""), "{value}");
    }
}

/// The prefetch thread's priority changes only timing: a bad value is a clear error, and both
/// priorities give the same detections.
#[test]
fn prefetch_priority_is_checked_and_changes_no_result() {
    provisioned();
    let err = detect_with_env("ARVIS_PREFETCH_PRIORITY", "high").unwrap_err();
    assert!(
        err.contains("ARVIS_PREFETCH_PRIORITY") && err.contains("normal or idle"),
        "{err}"
    );
    let detections = |value| {
        let out = detect_with_env("ARVIS_PREFETCH_PRIORITY", value).unwrap();
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["detections"].clone()
    };
    let idle = detections("idle");
    assert!(idle.to_string().contains("\"bus\""), "{idle}");
    assert_eq!(idle, detections("normal"));
}

/// ONNX Runtime's usage-event store stays off: a run leaves nothing in the user's cache folder
/// (Microsoft's builds create ~/.cache/Microsoft/…/onnxruntime.db on some machines, this
/// development machine among them, and not on others, CI's among them), and `arvis doctor` says
/// so, while a user who set ORT_DISABLE_TELEMETRY=0 keeps ONNX Runtime's own behaviour.
#[test]
fn onnx_runtime_keeps_no_telemetry_store() {
    provisioned();
    let run = |opt_in: bool, args: &[&str]| {
        let home = tempfile::tempdir().unwrap();
        let mut cmd = arvis();
        cmd.env("HOME", home.path())
            .env("XDG_CACHE_HOME", home.path().join(".cache"))
            .env_remove("ORT_DISABLE_TELEMETRY");
        if opt_in {
            cmd.env("ORT_DISABLE_TELEMETRY", "0");
        }
        let out = cmd.args(args).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        (stdout(&out), home.path().join(".cache/Microsoft").exists())
    };
    let bus = images_dir().join("ultralytics_bus.jpg");
    let detect = ["detect", "--json", bus.to_str().unwrap()];
    // Where this ONNX Runtime writes its store when allowed, a default run must leave none;
    // where it writes none even when allowed, the store says nothing and only the doctor lines
    // below (what arvis hands ONNX Runtime) are checked.
    let (_, store_opted_in) = run(true, &detect);
    let (_, store) = run(false, &detect);
    if store_opted_in {
        assert!(!store, "arvis let ONNX Runtime write its telemetry store");
    } else {
        eprintln!("this ONNX Runtime build writes no telemetry store here even when allowed");
    }

    let (text, _) = run(false, &["doctor"]);
    assert!(
        text.contains("telemetry: off (ORT_DISABLE_TELEMETRY=1)"),
        "{text}"
    );
    let (text, _) = run(true, &["doctor"]);
    assert!(
        text.contains("telemetry: left to ONNX Runtime (ORT_DISABLE_TELEMETRY=\"0\""),
        "ORT_DISABLE_TELEMETRY=0 from the user was overridden:\n{text}"
    );
}

/// Threads of a running process whose CPU affinity is narrower than its main thread's.
#[cfg(target_os = "linux")]
fn pinned_threads(pid: u32) -> usize {
    let allowed = |status: &str| {
        status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .map(str::to_owned)
    };
    let Ok(main) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter(|s| allowed(s) != allowed(&main))
        .count()
}

/// ONNX Runtime's default pool pins its workers to cores; arvis builds its sessions with the same
/// thread count unpinned, and ARVIS_ORT_THREADS=0 restores the pinned default (the control that
/// shows this check can fail).
#[cfg(target_os = "linux")]
#[test]
fn intra_op_threads_are_unpinned_unless_asked() {
    provisioned();
    let max_pinned = |threads: Option<&str>| {
        let mut cmd = arvis();
        match threads {
            Some(v) => cmd.env("ARVIS_ORT_THREADS", v),
            None => cmd.env_remove("ARVIS_ORT_THREADS"),
        };
        let images = images_dir();
        let mut child = cmd
            .args(["detect", "--json", "--model", "yolov8n-fp32"])
            .args([&images, &images])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut most = 0;
        while child.try_wait().unwrap().is_none() {
            most = most.max(pinned_threads(child.id()));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        most
    };
    assert_eq!(max_pinned(None), 0, "a thread was pinned by default");
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert!(
            max_pinned(Some("0")) > 0,
            "ONNX Runtime's default did not pin"
        );
    }
}
