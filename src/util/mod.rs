//! Small helpers every layer may use: atomic file replacement, a seeded RNG. They depend on
//! nothing else in the crate.

mod fs;
mod rng;

pub use fs::{FileId, fsync_and_rename, sha256_file, write_atomic};
pub use rng::Rng;
