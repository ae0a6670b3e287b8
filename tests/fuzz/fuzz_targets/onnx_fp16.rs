//! Fuzz target `onnx_fp16`: the property in `props.rs` for any input.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::onnx_fp16(data);
});
