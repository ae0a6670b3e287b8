//! Expanding the files and folders a user names into the images to process.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::util::FileId;

/// File extensions treated as images when a directory is expanded.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"];

/// One input as given or found in a directory.
#[derive(Debug, Clone)]
pub struct Input {
    /// The file.
    pub path: PathBuf,
}

/// Expand files and directories into the list of inputs, in a stable order.
///
/// Directories contribute only regular files with image extensions; everything named explicitly
/// is kept, so a missing or non-image file named by the user is reported, not silently dropped.
/// Each real directory is walked once and each file listed once (by device and inode), so a
/// symlink loop or a folder linked twice cannot repeat work or recurse without end.
/// Returns the inputs and how many other files the directories held.
pub fn expand_inputs(paths: &[PathBuf]) -> (Vec<Input>, usize) {
    let mut walk = Walk::default();
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk.dir(p, &mut found);
            out.extend(found.into_iter().map(|path| Input { path }));
        } else {
            // Named by the user: kept even if it is a duplicate or not an image, so it is reported.
            if let Some(id) = FileId::of(p) {
                walk.files.insert(id);
            }
            out.push(Input { path: p.clone() });
        }
    }
    (out, walk.skipped)
}

#[derive(Default)]
struct Walk {
    dirs: HashSet<FileId>,
    files: HashSet<FileId>,
    skipped: usize,
}

impl Walk {
    fn dir(&mut self, dir: &Path, found: &mut Vec<PathBuf>) {
        match FileId::of(dir) {
            Some(id) if self.dirs.insert(id) => {}
            _ => return,
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        // Sorted per directory: a stable order that does not depend on the file system's.
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            // Follows symlinks: a linked folder or photo counts, a dangling link is skipped.
            let Ok(meta) = std::fs::metadata(&path) else {
                self.skipped += 1;
                continue;
            };
            if meta.is_dir() {
                self.dir(&path, found);
            } else if meta.is_file() && has_image_extension(&path) {
                if FileId::of(&path).is_some_and(|id| self.files.insert(id)) {
                    found.push(path);
                }
            } else {
                self.skipped += 1;
            }
        }
    }
}

/// Whether the file name ends in an image extension arvis reads.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_loops_and_special_files_are_walked_once_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/one.jpg"), b"x").expect("write");
        std::fs::write(root.join("a/b/two.png"), b"x").expect("write");
        std::fs::write(root.join("a/notes.txt"), b"x").expect("write");
        // A loop back to the top, a second name for a folder, a second name for a file.
        std::os::unix::fs::symlink(root, root.join("a/b/loop")).expect("symlink");
        std::os::unix::fs::symlink(root.join("a/b"), root.join("again")).expect("symlink");
        std::os::unix::fs::symlink(root.join("a/one.jpg"), root.join("alias.jpg"))
            .expect("symlink");
        std::os::unix::fs::symlink("/dev/zero", root.join("zero.jpg")).expect("symlink");
        let c = std::ffi::CString::new(root.join("fifo.jpg").as_os_str().as_encoded_bytes())
            .expect("cstr");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let (inputs, skipped) = expand_inputs(&[root.to_path_buf()]);
        let names: Vec<String> = inputs
            .iter()
            .map(|i| {
                i.path
                    .strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a/b/two.png", "a/one.jpg"], "{names:?}");
        // notes.txt, zero.jpg (a device) and fifo.jpg (a pipe).
        assert_eq!(skipped, 3);
    }
}
