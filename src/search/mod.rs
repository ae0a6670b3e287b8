//! The visual-search index: a gallery of images embedded with CLIP, persisted per directory.
//!
//! SQLite (bundled) is the source of truth: model identity, one row per image (path, size,
//! mtime, embedding, thumbnail) and a generation counter bumped by every committed change. The
//! HNSW graph (`vectors.usearch`) is a cache of those embeddings, saved atomically and trusted
//! only when its recorded generation, size and sha256 match; otherwise it is rebuilt. A crash or
//! kill at any moment therefore leaves the old or the new state, never a corrupt one.

pub mod ann;
pub mod index;
pub mod ingest;
pub mod matcher;

use std::fs::{self, File};
use std::path::Path;

pub use ann::{Ann, Neighbour, exact_search};
pub use index::{GalleryIndex, Hit, IndexError, IndexMeta, IndexStats, NewItem, WriteLock};
pub use ingest::{IngestError, IngestObserver, IngestReport, add_to_index, canonical_key};
pub use matcher::{Region, RegionMatcher, TrackMatches};

/// fsync `tmp`, rename it over `dest`, fsync the directory: the atomic-replace protocol.
pub fn fsync_and_rename(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    File::open(tmp)?.sync_all()?;
    fs::rename(tmp, dest)?;
    if let Some(dir) = dest.parent() {
        // Directory fsync makes the rename durable; not supported everywhere, so best effort.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// The sha256 of a file's bytes, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut f = File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Write `bytes` to `dest` atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    fsync_and_rename(&tmp, dest)
}
