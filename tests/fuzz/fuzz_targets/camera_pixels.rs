//! Fuzz target `camera_pixels`: the property in `props.rs` for any input.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::camera_pixels(data);
});
