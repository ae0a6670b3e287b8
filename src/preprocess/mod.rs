//! Pixel preparation shared by the detector and the embedder.

pub mod resample;

pub use resample::{Filter, resize_rgb};
