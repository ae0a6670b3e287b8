//! Fuzz target `image_decode`: the property in `props.rs` for any input.
#![no_main]

#[path = "../props.rs"]
mod props;

#[global_allocator]
static ALLOC: props::Counting = props::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::image_decode(data, true);
});
