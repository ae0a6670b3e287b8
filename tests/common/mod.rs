//! Helpers for integration tests: the real binary, the shared models and media, a loopback server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

pub mod pg;
pub mod store;

/// `../shared` beside the checkout (or `ARVIS_SHARED_DIR`).
pub fn shared() -> PathBuf {
    std::env::var_os("ARVIS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("shared")
        })
}

pub fn models_mirror() -> PathBuf {
    shared().join("models")
}

pub fn images_dir() -> PathBuf {
    shared().join("media").join("images")
}

/// One cache for all tests of a run, so ONNX Runtime is provisioned once.
pub fn test_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("arvis-test-cache")
}

/// A loopback port free now (for a server a test starts).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `arvis` binary with a test environment: shared cache, offline mirror, CPU.
pub fn arvis() -> Command {
    arvis_with_cache(&test_cache())
}

pub fn arvis_with_cache(cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arvis"));
    cmd.env("ARVIS_CACHE_DIR", cache)
        .env("ARVIS_MODEL_MIRROR", models_mirror())
        .env("ARVIS_DEVICE", "cpu")
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("ARVIS_OFFLINE")
        .env_remove("ARVIS_DETECTOR")
        .env_remove("ARVIS_LOG");
    cmd
}

/// Provision ONNX Runtime and both YOLO models into the test cache once per test binary.
pub fn provisioned() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = arvis()
            .args(["models", "fetch", "yolov8n-int8", "yolov8n-fp32"])
            .output()
            .expect("run arvis");
        assert!(
            out.status.success(),
            "models fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = arvis().arg("doctor").output().expect("run arvis doctor");
        assert!(
            out.status.success(),
            "doctor failed:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
    });
}

/// The provisioned ONNX Runtime library (for tests that copy it around).
pub fn provisioned_library() -> PathBuf {
    provisioned();
    let dir = test_cache().join("onnxruntime");
    std::fs::read_dir(&dir)
        .expect("runtime dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("-cpu"))
        })
        .map(|d| d.join("libonnxruntime.so.1.31.1"))
        .expect("provisioned CPU runtime")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Parse JSON Lines output.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A tiny HTTP/1.1 file server on 127.0.0.1 serving `root`, for the real download path.
pub struct FileServer {
    pub url: String,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl FileServer {
    pub fn start(root: PathBuf) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let root = root.clone();
                    std::thread::spawn(move || serve(stream, &root));
                }
            }
        });
        FileServer {
            url: format!("http://{addr}"),
            stop,
            addr,
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, root: &Path) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).map_or(true, |n| n == 0) || header == "\r\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let file = root.join(&path);
    let response = if !path.contains("..") && file.is_file() {
        let body = std::fs::read(&file).expect("read served file");
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend(body);
        r
    } else {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
            .to_vec()
    };
    let _ = stream.write_all(&response);
}

/// A PNG whose header claims `w`×`h` (valid CRCs), with one tiny IDAT chunk, as a decompression bomb has.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // zlib stream with one stored block of 64 zero bytes.
    let raw = [0u8; 64];
    let mut idat = vec![0x78, 0x01, 0x01, 64, 0, !64u8, 0xFF];
    idat.extend(raw);
    idat.extend(adler32(&raw).to_be_bytes());
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The near-duplicate query: the image at half size, re-encoded as JPEG quality 50.
pub fn half_size_jpeg_q50(img: &image::RgbImage) -> Vec<u8> {
    let half = image::imageops::resize(
        img,
        img.width() / 2,
        img.height() / 2,
        image::imageops::FilterType::Triangle,
    );
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 50)
        .encode_image(&half)
        .expect("encode JPEG");
    jpeg
}

/// ONNX Runtime loaded into this test process (from the provisioned test cache).
pub fn runtime() -> &'static arvis::runtime::Runtime {
    arvis::runtime::Runtime::from_library(
        &provisioned_library(),
        arvis::runtime::LibraryFlavor::Cpu,
    )
    .expect("load the provisioned ONNX Runtime")
}

/// The shared YOLOv8n int8 model file.
pub fn yolo_int8() -> PathBuf {
    models_mirror().join("yolov8n/yolov8n_coco_int8_dynamic.onnx")
}

/// The shared video clip with one person walking.
pub fn walking_video() -> PathBuf {
    shared().join("media/video/person_walking_10s.mp4")
}

/// A YOLOv8n detector on the CPU, in this process.
pub fn detector() -> arvis::detect::Detector {
    arvis::detect::Detector::load(
        runtime(),
        &yolo_int8(),
        "yolov8n-int8",
        arvis::runtime::Device::Cpu,
    )
    .expect("load the detector")
}

/// Poll `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// The tiny random-weight CLIP models (vision, text), generated with `arvis models generate`
/// once per test binary.
pub fn clip_tiny() -> &'static (PathBuf, PathBuf) {
    static MODELS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    MODELS.get_or_init(|| {
        provisioned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clip-tiny-cli");
        let out = arvis()
            .args(["models", "generate", "clip-tiny", "--out"])
            .arg(&dir)
            .output()
            .expect("run arvis models generate");
        assert!(out.status.success(), "{}", stderr(&out));
        (
            dir.join("clip-tiny-random-vision.onnx"),
            dir.join("clip-tiny-random-text.onnx"),
        )
    })
}

/// `arvis` with the tiny CLIP models (both towers) and `index` as its gallery.
pub fn arvis_tiny_clip(index: &Path) -> Command {
    let (vision, text) = clip_tiny();
    let mut c = arvis();
    c.env("ARVIS_CLIP_MODEL", vision)
        .env("ARVIS_CLIP_TEXT_MODEL", text)
        .env("ARVIS_INDEX", index);
    c
}

/// Run [`arvis_tiny_clip`] with `args` to the end.
pub fn run_tiny_clip(index: &Path, args: &[&str]) -> Output {
    arvis_tiny_clip(index)
        .args(args)
        .output()
        .expect("run arvis")
}

/// Another tiny CLIP pair (vision, text): the same interface and width as [`clip_tiny`]'s,
/// other weights (seed 7), so that its embeddings must never be compared with those. Generated
/// once per test binary.
pub fn clip_tiny_other() -> &'static (PathBuf, PathBuf) {
    static MODELS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    MODELS.get_or_init(|| {
        provisioned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clip-tiny-seed7");
        let out = arvis()
            .args(["models", "generate", "clip-tiny", "--seed", "7", "--out"])
            .arg(&dir)
            .output()
            .expect("run arvis models generate");
        assert!(out.status.success(), "{}", stderr(&out));
        (
            dir.join("clip-tiny-random-vision.onnx"),
            dir.join("clip-tiny-random-text.onnx"),
        )
    })
}

/// Images in gallery `index` (a directory or a catalogue URL), as `arvis index stats --json`
/// counts them.
pub fn gallery_count(index: impl AsRef<Path>) -> u64 {
    let out = run_tiny_clip(index.as_ref(), &["index", "stats", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&out)[0]["count"].as_u64().unwrap()
}

/// An index of the 15 shared photos made with [`clip_tiny`] by `arvis index add`, built once
/// per test binary: (vision model, index directory).
pub fn tiny_gallery() -> &'static (PathBuf, PathBuf) {
    static G: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    G.get_or_init(|| {
        let clip = clip_tiny().0.clone();
        let index = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-gallery");
        let _ = std::fs::remove_dir_all(&index);
        let out = arvis()
            .env("ARVIS_CLIP_MODEL", &clip)
            .args(["index", "add", "--index"])
            .arg(&index)
            .arg(images_dir())
            .output()
            .expect("run arvis index add");
        assert!(out.status.success(), "{}", stderr(&out));
        (clip, index)
    })
}

/// A gallery folder of the shared photos mirrored left to right: as many images again, none of
/// them the same content as the shared photos' (a catalogue keeps one image per content).
pub fn mirrored_gallery() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(images_dir()).unwrap().flatten() {
        let img = image::open(e.path()).unwrap().to_rgb8();
        let name = Path::new(&e.file_name()).with_extension("mirrored.png");
        image::imageops::flip_horizontal(&img)
            .save(dir.path().join(name))
            .unwrap();
    }
    dir
}

/// `chmod -R mode path`.
pub fn chmod_r(mode: &str, path: &Path) {
    let ok = Command::new("chmod")
        .args(["-R", mode])
        .arg(path)
        .status()
        .expect("run chmod")
        .success();
    assert!(ok, "chmod -R {mode} {}", path.display());
}

/// What `nobody` runs: copies of the binary, ONNX Runtime and the tiny CLIP models in a
/// world-readable temporary folder (the checkout and its target/ may sit where that user cannot
/// look, as under /root); removed when dropped.
pub struct NobodyKit {
    dir: tempfile::TempDir,
}

impl NobodyKit {
    pub fn new() -> NobodyKit {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = |from: &Path, name: &str| {
            std::fs::copy(from, dir.path().join(name)).expect("copy into the kit");
        };
        copy(Path::new(env!("CARGO_BIN_EXE_arvis")), "arvis");
        copy(&provisioned_library(), "libonnxruntime.so.1.31.1");
        let (vision, text) = clip_tiny();
        copy(vision, "clip-tiny-random-vision.onnx");
        copy(text, "clip-tiny-random-text.onnx");
        chmod_r("a+rX", dir.path());
        NobodyKit { dir }
    }

    /// The kit's `arvis` run as `nobody` (through `setpriv`; the tests run as root), with its own
    /// ONNX Runtime and tiny CLIP models, and `home` (made writable for it) as HOME and cache.
    pub fn arvis(&self, home: &Path) -> Command {
        chmod_r("a+rwx", home);
        let kit = self.dir.path();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(kit.join("arvis"))
            .env("HOME", home)
            .env("ARVIS_CACHE_DIR", home.join("cache"))
            .env("ORT_DYLIB_PATH", kit.join("libonnxruntime.so.1.31.1"))
            .env("ARVIS_CLIP_MODEL", kit.join("clip-tiny-random-vision.onnx"))
            .env(
                "ARVIS_CLIP_TEXT_MODEL",
                kit.join("clip-tiny-random-text.onnx"),
            )
            .env("ARVIS_DEVICE", "cpu");
        c
    }
}
