//! Where frames come from: still images, video files (FFmpeg) and cameras (nokhwa), all behind
//! the [`FrameSource`] trait.

#[cfg(feature = "camera")]
pub mod camera;
pub mod files;
pub mod image;
pub mod network;
pub mod pixels;
pub mod stream;
#[cfg(feature = "video")]
pub mod video;

pub use self::image::{DecodeLimits, ImageLoadError, decode_image_bytes, load_image};
pub use self::stream::{
    Frame, FrameSource, ImageSource, Replay, SourceError, SourceInfo, SourceKind, SourceSpec,
};
