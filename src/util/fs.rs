//! Files written so that a crash or kill at any moment leaves the old or the new content,
//! never a torn one.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
    Ok(hex(&h.finalize()))
}

/// Bytes as lower-case hex (how digests are written everywhere in arvis).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// A file's identity: the same (device, inode) is the same file whatever path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// The device the file is on.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
}

impl FileId {
    /// The identity of the file at `path` (following symlinks), if it exists.
    pub fn of(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}
