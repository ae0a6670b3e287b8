//! Expanding the files and folders a user names into the images to process.

use std::path::{Path, PathBuf};

/// File extensions treated as images when a directory is expanded.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"];

/// One input as given or found in a directory.
#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
}

/// Expand files and directories into the list of inputs, in a stable order.
/// Directories contribute only files with image extensions; everything named explicitly is kept,
/// so a missing or non-image file named by the user is reported, not silently dropped.
pub fn expand_inputs(paths: &[PathBuf]) -> (Vec<Input>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found, &mut skipped);
            found.sort();
            out.extend(found.into_iter().map(|path| Input { path }));
        } else {
            out.push(Input { path: p.clone() });
        }
    }
    (out, skipped)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>, skipped: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, found, skipped);
        } else if has_image_extension(&path) {
            found.push(path);
        } else {
            *skipped += 1;
        }
    }
}

pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}
