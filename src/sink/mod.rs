//! Where processed frames and results go besides the screen: annotated video files, and the
//! output-file discipline every writer follows (never over an input, complete or not at all).

pub mod output;
#[cfg(feature = "video")]
pub mod video;

pub use output::{AtomicOutput, FileId, OutputError, check_outputs};
#[cfg(feature = "video")]
pub use video::{VideoWriteError, VideoWriter};
