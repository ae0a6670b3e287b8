//! The fuzzers' findings, replayed on stable by the ordinary `cargo test`: every input that ever
//! broke a property (`tests/fuzz/regressions/<target>/`), the hand-made seeds
//! (`tests/fuzz/seeds/<target>/`) and the minimised corpus the fuzzers grew
//! (`tests/fuzz/corpus/<target>/`), each through the same property the fuzz target checks
//! (`tests/fuzz/props.rs`). No nightly and no fuzzing time needed; docs/FUZZING.md says how to
//! fuzz.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

#[path = "fuzz/props.rs"]
mod props;

use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: props::Counting = props::Counting;

/// Every input kept for `target`, in a stable order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions", "corpus"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) {
            files.extend(dir.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}

fn replay(target: &str, at_least: usize, property: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= at_least,
        "{target}: {} inputs, expected at least {at_least}",
        files.len()
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| property(&bytes)));
        assert!(
            outcome.is_ok(),
            "{target}: {} broke its property",
            f.display()
        );
    }
}

#[test]
fn image_decoding_keeps_its_limits_on_every_kept_input() {
    replay("image_decode", 60, |b| props::image_decode(b, true));
}

#[test]
fn fp16_conversion_keeps_the_graph_interface_on_every_kept_input() {
    replay("onnx_fp16", 6, props::onnx_fp16);
}

#[test]
fn the_tokenizer_keeps_its_shape_on_every_kept_input() {
    replay("tokenizer", 10, props::tokenizer_encode);
    replay("tokenizer_vocab", 3, props::tokenizer_vocab);
}

#[test]
fn camera_pixel_conversion_keeps_its_sizes_on_every_kept_input() {
    replay("camera_pixels", 6, props::camera_pixels);
}

#[test]
fn tuning_settings_name_every_bad_variable_on_every_kept_input() {
    replay("settings_env", 6, props::settings_env);
}

/// The properties are not vacuous: each rejects what it must.
#[test]
fn the_properties_catch_what_they_guard() {
    // A decoded image: some kept inputs must decode, or the image property checks nothing.
    let decoded = inputs("image_decode")
        .iter()
        .filter(|f| {
            arvis::source::decode_image_bytes(&std::fs::read(f).unwrap(), props::IMAGE_LIMITS)
                .is_ok()
        })
        .count();
    assert!(decoded >= 40, "only {decoded} seeds decode");
    // The peak accounting sees an allocation.
    let (_, peak) = props::peak_during(|| vec![0u8; 10 << 20]);
    assert!(peak >= 10 << 20, "{peak}");
    // A converted seed model exists.
    let converted = inputs("onnx_fp16")
        .iter()
        .filter(|f| arvis::models::fp16::convert(&std::fs::read(f).unwrap()).is_ok())
        .count();
    assert!(converted >= 3, "only {converted} seed models convert");
    // A malformed id list is refused by the tokenizer check.
    let mut ids = [0i64; 77];
    ids[0] = arvis::embed::tokenizer::START_OF_TEXT;
    let missing_end = std::panic::catch_unwind(|| props::check_ids(&ids, "x"));
    assert!(missing_end.is_err());
}
