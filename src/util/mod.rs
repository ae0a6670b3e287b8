//! Small helpers every layer may use: atomic file replacement, a seeded RNG. They depend on
//! nothing else in the crate.

mod fs;
mod rng;
mod secrets;

pub use fs::{FileId, fsync_and_rename, hex, sha256_file, write_atomic};
pub use rng::Rng;
pub use secrets::mask_urls;
