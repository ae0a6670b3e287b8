//! Getting ONNX Runtime and the models: mirrors, the real HTTP path, corruption, and every way
//! the runtime library can be missing or wrong. Each failure must be one clear error with a fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const INT8: &str = "yolov8n/yolov8n_coco_int8_dynamic.onnx";

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn bus() -> std::path::PathBuf {
    images_dir().join("ultralytics_bus.jpg")
}

#[test]
fn models_download_over_http_from_a_url_mirror() {
    let server = FileServer::start(models_mirror());
    let cache = tempfile::tempdir().unwrap();
    let out = arvis_with_cache(cache.path())
        .env("ARVIS_MODEL_MIRROR", &server.url)
        .args(["models", "fetch", "yolov8n-int8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "fetching model yolov8n-int8 from {}/{INT8}",
            server.url
        )),
        "{}",
        stderr(&out)
    );
    let cached = cache.path().join("models/yolov8n_coco_int8_dynamic.onnx");
    assert_eq!(
        sha256(&cached),
        "83de8f0d2cd521e00ae2b138c340a03dece35b060b3898509bdc69afff417312"
    );
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("models"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "no partial files left behind");

    // A model the mirror does not hold: 404 → an error naming the mirror path to provide.
    let out = arvis_with_cache(cache.path())
        .env("ARVIS_MODEL_MIRROR", &server.url)
        .args(["models", "fetch", "yolov8n-fp32"])
        .env("ARVIS_MODEL_MIRROR", format!("{}/nowhere", server.url))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("404") && stderr(&out).contains("ARVIS_MODEL_MIRROR holds yolov8n/"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_mirror_serving_wrong_bytes_is_rejected_by_sha256() {
    let mirror = tempfile::tempdir().unwrap();
    std::fs::create_dir(mirror.path().join("yolov8n")).unwrap();
    let mut bytes = std::fs::read(models_mirror().join(INT8)).unwrap();
    bytes[1000] ^= 0xFF; // same size, different content
    std::fs::write(mirror.path().join(INT8), &bytes).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = arvis_with_cache(cache.path())
        .env("ARVIS_MODEL_MIRROR", mirror.path())
        .args(["models", "fetch", "yolov8n-int8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("has sha256")
            && err.contains("expects 83de8f0d")
            && err.contains("corrupt or not this model"),
        "{err}"
    );
    assert!(
        !cache
            .path()
            .join("models/yolov8n_coco_int8_dynamic.onnx")
            .exists(),
        "rejected bytes never enter the cache"
    );

    std::fs::write(mirror.path().join(INT8), &bytes[..1000]).unwrap();
    let out = arvis_with_cache(cache.path())
        .env("ARVIS_MODEL_MIRROR", mirror.path())
        .args(["models", "fetch", "yolov8n-int8"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("is 1000 bytes") && stderr(&out).contains("truncated"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_corrupted_cached_model_is_caught_and_force_fetch_repairs_it() {
    provisioned();
    let cache = tempfile::tempdir().unwrap();
    // Share the provisioned runtime; models are per cache.
    std::os::unix::fs::symlink(
        test_cache().join("onnxruntime"),
        cache.path().join("onnxruntime"),
    )
    .unwrap();
    let ok = arvis_with_cache(cache.path())
        .args(["models", "fetch"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let cached = cache.path().join("models/yolov8n_coco_int8_dynamic.onnx");
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes[5000] ^= 0x55;
    std::fs::write(&cached, &bytes).unwrap();

    let out = arvis_with_cache(cache.path())
        .args(["detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("cached model")
            && err.contains("sha256")
            && err.contains("arvis models fetch --force yolov8n-int8"),
        "{err}"
    );

    let verify = arvis_with_cache(cache.path())
        .args(["models", "verify"])
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        stdout(&verify).contains("yolov8n-int8     BAD"),
        "{}",
        stdout(&verify)
    );

    let fix = arvis_with_cache(cache.path())
        .args(["models", "fetch", "--force", "yolov8n-int8"])
        .output()
        .unwrap();
    assert!(fix.status.success(), "{}", stderr(&fix));
    let out = arvis_with_cache(cache.path())
        .args(["detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn without_network_or_mirror_the_error_says_how_to_set_the_mirror() {
    let cache = tempfile::tempdir().unwrap();
    let out = arvis_with_cache(cache.path())
        .env_remove("ARVIS_MODEL_MIRROR")
        .env("ARVIS_OFFLINE", "1")
        .args(["detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ARVIS_OFFLINE is set and no mirror is configured")
            && stderr(&out).contains("set ARVIS_MODEL_MIRROR"),
        "{}",
        stderr(&out)
    );

    // For CLIP the advice names the CLIP flag.
    let out = arvis_with_cache(cache.path())
        .env_remove("ARVIS_MODEL_MIRROR")
        .env_remove("ARVIS_CLIP_TEXT_MODEL")
        .env("ARVIS_OFFLINE", "1")
        .args(["search", "--text", "a cat"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("or pass --clip-text-model PATH"),
        "{}",
        stderr(&out)
    );

    // A mirror URL nobody listens on: the connection error plus the same advice.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = arvis_with_cache(cache.path())
        .env("ARVIS_MODEL_MIRROR", format!("http://127.0.0.1:{port}"))
        .args(["detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("could not fetch yolov8n-int8")
            && stderr(&out).contains("ARVIS_MODEL_MIRROR"),
        "{}",
        stderr(&out)
    );

    // The fp32 rebuild has no public home: say so rather than try the network.
    let out = arvis_with_cache(cache.path())
        .env_remove("ARVIS_MODEL_MIRROR")
        .args(["models", "fetch", "yolov8n-fp32"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("has no public download"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ort_dylib_path_to_nothing_is_a_clear_error() {
    provisioned();
    let out = arvis()
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .args(["detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("ORT_DYLIB_PATH is set to /nonexistent/libonnxruntime.so")
            && err.contains("unset it"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_file_that_is_not_onnx_runtime_is_a_clear_error() {
    provisioned();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, "not a shared library").unwrap();
    let out = arvis()
        .env("ORT_DYLIB_PATH", &fake)
        .args(["detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("could not load ONNX Runtime from") && stderr(&out).contains("Fix:"),
        "{}",
        stderr(&out)
    );

    // A real shared library that is something else entirely.
    let libz = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if let Some(libz) = libz {
        let out = arvis()
            .env("ORT_DYLIB_PATH", libz)
            .args(["detect"])
            .arg(bus())
            .output()
            .unwrap();
        assert!(
            stderr(&out).contains("does not export OrtGetApiBase"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn an_old_onnx_runtime_is_refused_with_the_fix() {
    provisioned();
    // A stand-in library that answers OrtGetApiBase like ONNX Runtime 1.16.3 does.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("old_ort.c");
    std::fs::write(
        &src,
        r#"typedef struct { const void* (*GetApi)(unsigned); const char* (*GetVersionString)(void); } OrtApiBase;
static const void* get_api(unsigned v) { (void)v; return 0; }
static const char* version(void) { return "1.16.3"; }
static const OrtApiBase base = { get_api, version };
const OrtApiBase* OrtGetApiBase(void) { return &base; }
"#,
    )
    .unwrap();
    let lib = dir.path().join("libonnxruntime.so.1.16.3");
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status();
    if !cc.is_ok_and(|s| s.success()) {
        eprintln!("no C compiler: skipping the old-runtime check");
        return;
    }
    let out = arvis()
        .env("ORT_DYLIB_PATH", &lib)
        .args(["detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("is version 1.16.3, but arvis needs 1.31 or newer") && err.contains("Fix:"),
        "{err}"
    );
}

#[test]
fn when_provisioning_is_impossible_the_error_names_the_fix() {
    let cache = tempfile::tempdir().unwrap();
    let out = arvis_with_cache(cache.path())
        .env("ARVIS_PYTHON", "/nonexistent/python3")
        .args(["detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("ONNX Runtime 1.31.1 is not installed and could not be provisioned")
            && err.contains("ORT_DYLIB_PATH"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn doctor_reports_runtime_providers_and_models() {
    provisioned();
    let out = arvis().arg("doctor").output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("version:   1.31.1"), "{text}");
    assert!(text.contains("CPUExecutionProvider"), "{text}");
    assert!(
        text.contains("yolov8n-int8     cached, sha256 ok"),
        "{text}"
    );
    assert!(text.contains("Cameras") && text.contains("GPUs"), "{text}");
    // Not just compiled in: a session was built and run, and the detector's placement shown.
    assert!(
        text.contains("probe:     a small CLIP-shaped model built and ran on cpu (CPU)"),
        "{text}"
    );
    assert!(
        text.contains("detector:  yolov8n-int8 runs on CPU"),
        "{text}"
    );
}

#[test]
fn cuda_without_an_nvidia_driver_fails_fast_and_never_runs_on_the_cpu() {
    provisioned();
    let out = arvis()
        .env("ARVIS_TEST_NVIDIA_DRIVER", "absent")
        .args(["--device", "cuda", "detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an explicit CUDA request must not fall back"
    );
    let err = stderr(&out);
    assert!(
        err.contains("no NVIDIA driver") && err.contains("--device cpu"),
        "{err}"
    );
    assert!(
        stdout(&out).is_empty(),
        "no detections were produced on the CPU"
    );
    assert!(
        !test_cache().join("onnxruntime/1.31.1-cuda").exists(),
        "no GPU build was downloaded"
    );
}

#[test]
fn cuda_with_a_driver_but_a_cpu_only_runtime_is_an_error_naming_the_provider() {
    // A machine with a driver whose ONNX Runtime has no CUDA provider: `--device cuda` must
    // fail and name what is missing, never detect on the CPU; `auto` falls back, saying so.
    let lib = provisioned_library();
    let out = arvis()
        .env("ARVIS_TEST_NVIDIA_DRIVER", "present")
        .env("ORT_DYLIB_PATH", &lib)
        .args(["--device", "cuda", "detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("CUDA"), "{}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "no detections on the CPU: {}",
        stdout(&out)
    );
    let auto = arvis()
        .env("ARVIS_TEST_NVIDIA_DRIVER", "present")
        .env("ORT_DYLIB_PATH", &lib)
        .args(["--device", "auto", "detect"])
        .arg(bus())
        .output()
        .unwrap();
    assert!(auto.status.success(), "{}", stderr(&auto));
    assert!(
        stderr(&auto).contains("running on the CPU"),
        "{}",
        stderr(&auto)
    );
}

#[test]
fn two_first_runs_at_once_both_get_onnx_runtime() {
    // Two arvis processes provisioning into one empty cache at the same moment (a user starting
    // two commands, or a test and its child): both must end with a working runtime.
    let cache = tempfile::tempdir().unwrap();
    let start = || {
        arvis_with_cache(cache.path())
            .arg("doctor")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs = [start(), start()];
    for run in runs {
        let out = run.wait_with_output().unwrap();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!text.contains("PROBLEM: ONNX Runtime"), "{text}");
        assert!(text.contains("ONNX Runtime 1.31.1"), "{text}");
    }
    let lib = cache
        .path()
        .join("onnxruntime/1.31.1-cpu/libonnxruntime.so.1.31.1");
    assert!(lib.is_file(), "{}", lib.display());
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("onnxruntime"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
