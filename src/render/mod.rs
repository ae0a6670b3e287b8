//! Drawing detections: the CPU annotator for exported images (the GPU overlay joins it later).

pub mod annotate;
pub mod palette;

pub use annotate::{Annotator, BoxLabel};
