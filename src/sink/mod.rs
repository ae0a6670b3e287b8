//! Where processed frames go besides the screen: annotated video files (JSON Lines are written
//! by the `video` command beside them).

#[cfg(feature = "video")]
pub mod video;

#[cfg(feature = "video")]
pub use video::{VideoWriteError, VideoWriter};
