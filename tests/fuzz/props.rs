//! What must hold for every input of each fuzz target, shared by the targets
//! (`fuzz_targets/*.rs`, nightly) and the stable replay of the corpus (`tests/fuzz_corpus.rs`):
//! a finding is a broken property, not only a crash.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // a broken property must panic

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::OnceLock;

use arvis::embed::tokenizer::{CONTEXT_LENGTH, ClipTokenizer, END_OF_TEXT, START_OF_TEXT};
use arvis::source::DecodeLimits;

// ---- allocation accounting (per thread, so parallel tests do not disturb each other) ----

/// Counts the bytes each thread holds, and its peak; install with `#[global_allocator]`.
pub struct Counting;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = HELD.try_with(|h| {
        let now = h.get() + n;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(n)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

/// `f`'s result and the most bytes this thread held beyond what it held before.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = HELD.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    (out, PEAK.with(Cell::get).saturating_sub(start))
}

// ---- image decoding ----

/// The decode limits fuzzed: smaller than the product's (so a breach shows quickly), the same
/// code paths.
pub const IMAGE_LIMITS: DecodeLimits = DecodeLimits {
    max_side_px: 4096,
    max_pixels: 4_000_000,
    max_file_bytes: 64 << 20,
};

/// What decoding may hold at its peak: a few full-size buffers (decode, colour conversion,
/// orientation) of the largest image the limits admit, plus the decoders' own tables.
pub const IMAGE_PEAK_BOUND: usize = 16 * IMAGE_LIMITS.max_pixels as usize + (64 << 20);

/// Any bytes as an image file: an error or an upright RGB image within the limits, never more
/// memory than the limits allow.
pub fn image_decode(data: &[u8], measure: bool) {
    let run = || arvis::source::decode_image_bytes(data, IMAGE_LIMITS);
    let (result, peak) = if measure {
        peak_during(run)
    } else {
        (run(), 0)
    };
    assert!(
        peak <= IMAGE_PEAK_BOUND,
        "decoding {} bytes held {peak} bytes at its peak, over the bound {IMAGE_PEAK_BOUND}",
        data.len()
    );
    if let Ok(img) = result {
        let (w, h) = img.dimensions();
        assert!(w > 0 && h > 0, "an empty image was returned");
        assert!(
            w.max(h) <= IMAGE_LIMITS.max_side_px,
            "{w}x{h} passed the side limit"
        );
        assert!(
            u64::from(w) * u64::from(h) <= IMAGE_LIMITS.max_pixels,
            "{w}x{h} passed the pixel limit"
        );
        assert_eq!(img.as_raw().len(), w as usize * h as usize * 3);
    }
}

// ---- FP16 conversion and the ONNX reader ----

/// Any bytes as a model: an error, or a model whose graph inputs and outputs keep their names
/// and types (FP32 stays FP32), which converts again.
pub fn onnx_fp16(data: &[u8]) {
    let Ok((converted, report)) = arvis::models::fp16::convert(data) else {
        return;
    };
    assert_eq!(report.bytes_before, data.len());
    assert_eq!(report.bytes_after, converted.len());
    let before = arvis::models::fp16::graph_io(data).expect("the original parsed once already");
    let after = arvis::models::fp16::graph_io(&converted).expect("a converted model must parse");
    assert_eq!(before, after, "graph inputs/outputs changed");
    assert!(
        arvis::models::fp16::convert(&converted).is_ok(),
        "a converted model must convert again"
    );
}

// ---- the CLIP tokenizer ----

/// The shared CLIP vocabulary (`ARVIS_SHARED_DIR`, else `../shared` beside the checkout).
pub fn vocab_path() -> PathBuf {
    let shared = std::env::var_os(arvis::settings::var::SHARED_DIR).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        PathBuf::from,
    );
    let shared = if shared.join("models").is_dir() {
        shared
    } else {
        // The fuzz crate sits two levels below the checkout.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
    };
    shared.join("models/clip-vit-b32/tokenizer/bpe_simple_vocab_16e6.txt.gz")
}

/// The real tokenizer, loaded once.
pub fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| ClipTokenizer::from_gz_file(&vocab_path()).expect("the shared vocabulary"))
}

/// What every encoding must be: 77 ids, start-of-text first, the last id before the zero
/// padding end-of-text, and nothing outside the vocabulary. (A prompt that spells out
/// `<|endoftext|>` gets that token where it stands, as CLIP's reference tokenizer gives it.)
pub fn check_ids(ids: &[i64; CONTEXT_LENGTH], text: &str) {
    assert_eq!(ids[0], START_OF_TEXT, "{text:?}");
    let end = ids
        .iter()
        .rposition(|&t| t == END_OF_TEXT)
        .unwrap_or_else(|| panic!("no end-of-text for {text:?}: {ids:?}"));
    assert!(ids[end + 1..].iter().all(|&t| t == 0), "{text:?}: {ids:?}");
    assert!(
        ids[..end].iter().all(|&t| (0..=END_OF_TEXT).contains(&t)),
        "ids outside the vocabulary for {text:?}: {ids:?}"
    );
}

/// Any bytes as a prompt (lossily UTF-8, as a prompt box would give them).
pub fn tokenizer_encode(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_ids(&tokenizer().encode_padded(&text), &text);
}

/// The real merges text with lines replaced by the input's: the loader refuses it or builds a
/// tokenizer whose encodings keep the shape.
pub fn tokenizer_vocab(data: &[u8]) {
    static MERGES: OnceLock<Vec<String>> = OnceLock::new();
    let merges = MERGES.get_or_init(|| {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(vocab_path()).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        text.lines().map(str::to_owned).collect()
    });
    let fuzzed = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = merges.iter().map(String::as_str).collect();
    // Replace the first lines (the header and the first merges) with the input's.
    let mine: Vec<&str> = fuzzed.lines().take(64).collect();
    let n = mine.len().min(lines.len());
    lines.splice(0..n, mine);
    let text = lines.join("\n");
    if let Ok(t) = ClipTokenizer::from_merges_text(&text) {
        for prompt in ["a photo of a cat", "", "🦀 rust <|endoftext|> x", &fuzzed] {
            check_ids(&t.encode_padded(prompt), prompt);
        }
    }
}

// ---- camera pixel layouts ----

/// A width and height (up to 256, from the first two bytes) and a buffer: YUYV and NV12
/// either refuse it or give an image of exactly that size.
pub fn camera_pixels(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (w, h) = (u32::from(data[0]), u32::from(data[1]));
    let buf = &data[2..];
    for (name, result) in [
        ("YUYV", arvis::source::pixels::yuyv_to_rgb(buf, w, h)),
        ("NV12", arvis::source::pixels::nv12_to_rgb(buf, w, h)),
    ] {
        if let Ok(img) = result {
            assert_eq!(img.dimensions(), (w, h), "{name}");
        }
    }
}

// ---- the environment's tuning settings ----

/// Lines `NAME=value` as an environment: settings parse or name every bad variable.
pub fn settings_env(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.trim().is_empty())
    };
    match arvis::settings::Settings::from_lookup(lookup) {
        Ok(s) => {
            serde_json::to_string(&s).unwrap();
        }
        Err(e) => {
            assert!(!e.0.is_empty());
            for problem in &e.0 {
                assert!(
                    problem.contains("ARVIS_"),
                    "a problem that names no variable: {problem}"
                );
            }
        }
    }
}
