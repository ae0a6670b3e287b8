//! Drawing detections: the CPU annotator for exported images, videos and snapshots, and the
//! app's wgpu overlay pass. Both use the same palette and font.

pub mod annotate;
#[cfg(feature = "gui")]
pub mod overlay;
pub mod palette;

pub use annotate::{
    Annotator, BoxLabel, PlateParts, plate_text, region_labels, region_plate, short_name,
};
