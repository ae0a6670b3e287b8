//! Teaching the gallery from the live view: a region's crop saved as an image of an item, in a
//! folder people can see (`~/.local/share/arvis/gallery-images/<label>/`), then embedded and
//! committed; and forgetting such an image again.
//!
//! The file and its index row are two writes, so each change is ordered for a kill at any
//! point, and [`reconcile`] (run when the app opens the index) finishes or undoes the rest:
//! a crop is written (atomically) before its row is committed, so a file without a row is an
//! add that did not finish and is added; an image is forgotten by deleting its file before its
//! row, so a row whose file is gone is a forget that did not finish and is removed. A restart
//! therefore finds both or neither.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::index::{IndexError, IndexMeta};
use super::ingest::{IngestError, IngestObserver, ToAdd, add_to_index, canonical_key};
use super::items::check_label;
use super::store::{self, GalleryLocation, GalleryStore};
use crate::embed::ImageEncoder;

/// The file in each label folder that holds the exact label (folder names are sanitised).
const LABEL_FILE: &str = ".label";

/// Why teaching failed.
#[derive(Debug, thiserror::Error)]
pub enum TeachError {
    /// The index or embedding failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// A text item needs words.
    #[error("the prompt is empty. Fix: describe the item, e.g. \"a red fire extinguisher\"")]
    EmptyPrompt,
    /// The crop could not be written or removed.
    #[error("{path}: {reason}. Fix: check that the folder is writable and the disk not full")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<IndexError> for TeachError {
    fn from(e: IndexError) -> Self {
        TeachError::Ingest(e.into())
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TeachError + '_ {
    move |e| TeachError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A folder name for `label`: the label itself where it can be one, otherwise with `/` and NUL
/// replaced, a leading dot escaped and the length bounded (the exact label is kept beside it).
pub fn folder_name(label: &str) -> String {
    let mut name: String = label
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if name.starts_with('.') {
        name.insert(0, '_');
    }
    while name.len() > 120 {
        name.pop();
    }
    name
}

/// The label of the crops in `folder`: its `.label` file, else the folder's name.
fn folder_label(folder: &Path) -> Option<String> {
    let stored = std::fs::read_to_string(folder.join(LABEL_FILE)).ok();
    let name = folder.file_name().map(|n| n.to_string_lossy().into_owned());
    stored
        .and_then(|s| check_label(&s).ok())
        .or_else(|| name.and_then(|n| check_label(&n).ok()))
}

struct Quiet;
impl IngestObserver for Quiet {}

/// Save `crop` as a new image of item `label` under `images_root` and add it to the index in
/// `gallery` (created for `meta`'s model if needed). Returns the file written.
pub fn add_crop(
    gallery: &GalleryLocation,
    meta: &IndexMeta,
    encoder: &mut ImageEncoder,
    images_root: &Path,
    label: &str,
    crop: &RgbImage,
) -> Result<PathBuf, TeachError> {
    let label = check_label(label).map_err(IndexError::from)?;
    let folder = images_root.join(folder_name(&label));
    std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    let label_file = folder.join(LABEL_FILE);
    if std::fs::read_to_string(&label_file).ok().as_deref() != Some(label.as_str()) {
        crate::util::write_atomic(&label_file, label.as_bytes()).map_err(io(&label_file))?;
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92)
        .encode_image(crop)
        .map_err(|e| TeachError::Io {
            path: folder.clone(),
            reason: format!("encoding the crop: {e}"),
        })?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut path = folder.join(format!("crop-{stamp}.jpg"));
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = folder.join(format!("crop-{stamp}-{n}.jpg"));
    }
    crate::util::write_atomic(&path, &jpeg).map_err(io(&path))?;
    // Test hook: die with the crop written and its row not committed, as a kill there would.
    if crate::fault::is_set(crate::fault::ABORT_AFTER_CROP_WRITTEN) {
        std::process::abort();
    }
    add_to_index(
        gallery,
        meta,
        encoder,
        &[ToAdd {
            path: path.clone(),
            label: Some(label),
        }],
        &mut Quiet,
    )?;
    Ok(path)
}

/// Define item `label` by the words `prompt`: embedded with CLIP's text tower `text` in the
/// zero-shot phrasings ([`embed_prompt`](super::items::embed_prompt)) and stored as one of the
/// item's prompts, under the index's writer lock (`on_wait` when another writer holds it).
/// Returns the prompt as stored.
pub fn add_text_item(
    index: &mut dyn GalleryStore,
    text: &mut crate::embed::TextEncoder,
    label: &str,
    prompt: &str,
    on_wait: &mut dyn FnMut(),
) -> Result<String, TeachError> {
    let prompt = check_label(prompt).map_err(|_| TeachError::EmptyPrompt)?;
    let label = check_label(label).map_err(IndexError::from)?;
    let embedding =
        super::items::embed_prompt(text, &prompt).map_err(|e| TeachError::Ingest(e.into()))?;
    let _lock = index.lock_for_writing(on_wait)?;
    index.add_text(&label, &prompt, &embedding)?;
    Ok(prompt)
}

/// Delete `path` if arvis made it (it lies under `root`, canonical); already gone is fine.
fn delete_if_ours(path: &Path, root: Option<&Path>) -> Result<(), TeachError> {
    if root.is_none_or(|r| !path.starts_with(r)) {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// Forget the gallery image at `path`: its index row always; its file only when arvis made it
/// (it lies under `images_root`) — a user's own photo is never deleted. Returns whether the
/// image was in the index.
///
/// `index` is open for writing with its writer lock held, here and in [`remove_item`] and
/// [`rename_item`]; the caller saves it when done.
pub fn forget_image(
    index: &mut dyn GalleryStore,
    images_root: &Path,
    path: &Path,
) -> Result<bool, TeachError> {
    let key = canonical_key(path);
    delete_if_ours(&key, images_root.canonicalize().ok().as_deref())?;
    Ok(index.remove(&key)?)
}

/// Remove item `label` from the index, and the crops arvis saved for it first (file before
/// row, as [`forget_image`]). Returns how many images and prompts were removed.
pub fn remove_item(
    index: &mut dyn GalleryStore,
    images_root: &Path,
    label: &str,
) -> Result<usize, TeachError> {
    let root = images_root.canonicalize().ok();
    for (_, path) in index.item_images(label)? {
        delete_if_ours(&path, root.as_deref())?;
    }
    Ok(index.remove_item(label)?)
}

/// Rename item `old` to `new`, and the label its crop folder records, so that a gallery rebuilt
/// from the folders keeps the new name.
pub fn rename_item(
    index: &mut dyn GalleryStore,
    images_root: &Path,
    old: &str,
    new: &str,
) -> Result<usize, TeachError> {
    let new = check_label(new).map_err(IndexError::from)?;
    let n = index.rename_item(old, &new)?;
    let folder = images_root.join(folder_name(old));
    if n > 0 && folder.is_dir() {
        let label_file = folder.join(LABEL_FILE);
        crate::util::write_atomic(&label_file, new.as_bytes()).map_err(io(&label_file))?;
    }
    Ok(n)
}

/// What [`reconcile`] repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Crops whose add had not been committed, now added.
    pub added: usize,
    /// Rows whose crop had been deleted by an unfinished forget, now removed.
    pub removed: usize,
}

/// Finish what a killed teach or forget left half-done (see the module docs).
pub fn reconcile(
    gallery: &GalleryLocation,
    meta: &IndexMeta,
    encoder: &mut ImageEncoder,
    images_root: &Path,
) -> Result<Reconciled, TeachError> {
    let mut done = Reconciled::default();
    let Ok(root) = images_root.canonicalize() else {
        return Ok(done);
    };
    // One handle for both halves (a catalogue is a connection, not a file to look at); no
    // gallery yet is fine: a first teach killed before its commit leaves only the crop.
    let mut index = match store::open_any_for_writing(gallery) {
        Ok(index) => Some(index),
        Err(IndexError::Missing(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(index) = index.as_mut() {
        let _lock = index.lock_for_writing(&mut || {})?;
        for path in index.paths()? {
            if path.starts_with(&root) && !path.exists() && index.remove(&path)? {
                done.removed += 1;
            }
        }
        index.save()?;
    }
    let mut missing = Vec::new();
    let folders = std::fs::read_dir(&root).map_err(io(&root))?;
    for folder in folders.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let Some(label) = folder_label(&folder) else {
            continue;
        };
        let Ok(files) = std::fs::read_dir(&folder) else {
            continue;
        };
        for file in files.flatten().map(|e| e.path()) {
            // A crop a kill caught before its rename: never visible as an image, just litter.
            if file
                .extension()
                .is_some_and(|e| e.to_string_lossy().starts_with("tmp-"))
            {
                let _ = std::fs::remove_file(&file);
                continue;
            }
            let is_crop = file.extension().is_some_and(|e| e == "jpg")
                && file
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("crop-"));
            let indexed = match &index {
                Some(i) => i.lookup(&canonical_key(&file))?.is_some(),
                None => false,
            };
            if is_crop && !indexed {
                missing.push(ToAdd {
                    path: file,
                    label: Some(label.clone()),
                });
            }
        }
    }
    drop(index);
    if !missing.is_empty() {
        done.added = add_to_index(gallery, meta, encoder, &missing, &mut Quiet)?.added;
    }
    Ok(done)
}
