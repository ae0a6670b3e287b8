//! Adding images to a gallery index — the one ingestion job behind `arvis index add`, a folder
//! dropped on the app and `arvis demo`: take the writer lock, decide what changed, then embed
//! and commit in batches (each batch atomic), and save the vector graph.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use image::RgbImage;

use super::index::{IndexError, IndexMeta, NewItem};
use super::store::{self, GalleryLocation, GalleryStore};
use crate::embed::{CLIP_TENSOR_LEN, EmbedError, ImageEncoder, clip_preprocess_into};
use crate::source::{DecodeLimits, load_image};

/// Thumbnail long side in pixels.
const THUMBNAIL_PX: u32 = 160;
/// Images embedded and committed together (each batch is one transaction).
const ADD_BATCH: usize = 16;

/// Why adding images failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Embedding failed.
    #[error("embedding failed: {0}")]
    Embed(#[from] EmbedError),
}

/// An image to add and the item it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToAdd {
    /// The file.
    pub path: PathBuf,
    /// Its item. None: a new image is named by its file stem, an indexed one keeps its item.
    pub label: Option<String>,
}

impl ToAdd {
    /// Files without labels.
    pub fn unlabelled(paths: &[PathBuf]) -> Vec<ToAdd> {
        paths
            .iter()
            .map(|p| ToAdd {
                path: p.clone(),
                label: None,
            })
            .collect()
    }
}

/// An image that needs (re-)embedding.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The file as given.
    pub path: PathBuf,
    /// Its item (see [`ToAdd::label`]).
    pub label: Option<String>,
    /// The key it is stored under (canonical absolute path, byte for byte).
    pub key: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, ns since the epoch.
    pub mtime_ns: i64,
}

/// What an add will do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Images to embed (new or changed).
    pub todo: Vec<Pending>,
    /// Images already indexed as they are.
    pub unchanged: usize,
    /// Unchanged images to move to another item (key, label): no embedding needed.
    pub relabel: Vec<(PathBuf, String)>,
    /// Files that could not even be stat'ed, with why.
    pub failed: Vec<(PathBuf, String)>,
}

/// Someone watching an ingestion job: each front end words progress its own way.
pub trait IngestObserver {
    /// Another process is writing to the index; the job waits for it.
    fn waiting(&mut self) {}
    /// What the job will do, decided under the writer lock.
    fn planned(&mut self, _plan: &Plan) {}
    /// An image that could not be decoded, left out.
    fn skipped(&mut self, _path: &Path, _why: &str) {}
    /// After each committed batch: images done and added so far. `Break` stops the job (the
    /// batches done stay committed and the graph is saved).
    fn committed(&mut self, _done: usize, _added: usize) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// What an ingestion job did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IngestReport {
    /// Images that needed embedding.
    pub planned: usize,
    /// Images already indexed as they are.
    pub unchanged: usize,
    /// Images processed before the job ended (all of `planned` unless stopped).
    pub processed: usize,
    /// Images added.
    pub added: usize,
    /// Files that could not be read or decoded.
    pub failed: usize,
    /// The observer stopped the job early.
    pub stopped: bool,
    /// Images in the index afterwards.
    pub total: usize,
}

/// The ingestion job: add `paths` (image files) to the gallery at `location`, creating it for
/// `meta`'s model if needed. In a directory, one writer at a time: what is new is decided, and
/// the graph loaded, under the index's writer lock; a catalogue takes writers side by side.
pub fn add_to_index(
    location: &GalleryLocation,
    meta: &IndexMeta,
    encoder: &mut ImageEncoder,
    images: &[ToAdd],
    observer: &mut dyn IngestObserver,
) -> Result<IngestReport, IngestError> {
    // Labels are checked before anything is written.
    for image in images {
        if let Some(l) = &image.label {
            crate::search::items::check_label(l).map_err(IndexError::from)?;
        }
    }
    let mut index = store::open_or_create(location, meta)?;
    let _lock = index.lock_for_writing(&mut || observer.waiting())?;
    // Loaded now so each batch updates it in memory instead of a rebuild at the end.
    index.prepare_ann()?;
    let plan = plan(index.as_ref(), images)?;
    observer.planned(&plan);
    relabel(index.as_mut(), &plan.relabel)?;
    let mut report = IngestReport {
        planned: plan.todo.len(),
        unchanged: plan.unchanged,
        failed: plan.failed.len(),
        ..IngestReport::default()
    };
    let batch = encoder.max_batch.clamp(1, ADD_BATCH);
    for chunk in plan.todo.chunks(batch) {
        let mut skipped = 0;
        let added = add_batch(index.as_mut(), encoder, chunk, &mut |path, why| {
            skipped += 1;
            observer.skipped(path, &why);
        })?;
        report.added += added;
        report.failed += skipped;
        report.processed += chunk.len();
        if observer
            .committed(report.processed, report.added)
            .is_break()
        {
            report.stopped = true;
            break;
        }
    }
    index.save()?;
    report.total = index.len()?;
    Ok(report)
}

/// New files, and files whose size or mtime changed since they were indexed.
pub fn plan(index: &dyn GalleryStore, images: &[ToAdd]) -> Result<Plan, IndexError> {
    let mut plan = Plan::default();
    for image in images {
        let path = &image.path;
        let key = canonical_key(path);
        match file_identity(path) {
            Ok(id) if index.lookup(&key)? == Some(id) => {
                plan.unchanged += 1;
                if let Some(label) = &image.label
                    && index.label_of(&key)?.as_deref() != Some(label.trim())
                {
                    plan.relabel.push((key, label.clone()));
                }
            }
            Ok((size, mtime_ns)) => plan.todo.push(Pending {
                path: path.clone(),
                label: image.label.clone(),
                key,
                size,
                mtime_ns,
            }),
            Err(e) => plan.failed.push((path.clone(), e.to_string())),
        }
    }
    Ok(plan)
}

/// Move unchanged images to their new items, one transaction per label.
fn relabel(index: &mut dyn GalleryStore, moves: &[(PathBuf, String)]) -> Result<(), IndexError> {
    let mut by_label: Vec<(&str, Vec<PathBuf>)> = Vec::new();
    for (key, label) in moves {
        match by_label.iter_mut().find(|(l, _)| l == label) {
            Some((_, v)) => v.push(key.clone()),
            None => by_label.push((label, vec![key.clone()])),
        }
    }
    for (label, keys) in by_label {
        index.set_label(&keys, label)?;
    }
    Ok(())
}

/// Decode, embed and commit one batch. Images that fail to decode are reported through
/// `on_skip` and left out; returns how many were added.
pub fn add_batch(
    index: &mut dyn GalleryStore,
    encoder: &mut ImageEncoder,
    batch: &[Pending],
    on_skip: &mut dyn FnMut(&Path, String),
) -> Result<usize, IngestError> {
    // Each photo is reduced to what is kept of it (CLIP's 224² tensor and a 160 px thumbnail)
    // as soon as it is decoded, so a batch of 24 MP photos holds one full image at a time.
    let mut kept = Vec::with_capacity(batch.len());
    let mut tensor = Vec::with_capacity(batch.len() * CLIP_TENSOR_LEN);
    let hashed = index.wants_content_hash();
    for item in batch {
        // A catalogue names an image by its content (the same photo from two machines is one
        // image); hashed before decoding, so a file that cannot be read is skipped either way.
        let sha256 = match hashed
            .then(|| crate::util::sha256_file(&item.path))
            .transpose()
        {
            Ok(h) => h,
            Err(e) => {
                on_skip(&item.path, e.to_string());
                continue;
            }
        };
        match load_image(&item.path, DecodeLimits::default()) {
            Ok(img) => {
                let start = tensor.len();
                tensor.resize(start + CLIP_TENSOR_LEN, 0.0);
                clip_preprocess_into(&img, &mut tensor[start..]);
                kept.push((item, thumbnail_jpeg(&img), sha256));
            }
            Err(e) => on_skip(&item.path, e.to_string()),
        }
    }
    if kept.is_empty() {
        return Ok(0);
    }
    let embeddings = encoder.embed_preprocessed(&tensor, kept.len())?;
    drop(tensor);
    let items: Vec<NewItem> = kept
        .into_iter()
        .zip(embeddings)
        .map(|((item, thumbnail, sha256), embedding)| NewItem {
            path: item.key.clone(),
            size: item.size,
            mtime_ns: item.mtime_ns,
            embedding,
            thumbnail,
            label: item.label.clone(),
            sha256,
        })
        .collect();
    index.upsert_batch(&items)?;
    Ok(items.len())
}

/// The key an image is stored under: its canonical absolute path (exact bytes, not lossily
/// converted to text: two names differing only in invalid UTF-8 stay two keys).
pub fn canonical_key(path: &Path) -> PathBuf {
    path.canonicalize()
        .unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

pub(crate) fn file_identity(path: &Path) -> std::io::Result<(u64, i64)> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    Ok((meta.len(), mtime))
}

fn thumbnail_jpeg(img: &RgbImage) -> Vec<u8> {
    let scale = (f64::from(THUMBNAIL_PX) / f64::from(img.width().max(img.height()))).min(1.0);
    let w = ((f64::from(img.width()) * scale).round() as u32).max(1);
    let h = ((f64::from(img.height()) * scale).round() as u32).max(1);
    let thumb = image::imageops::thumbnail(img, w, h);
    let mut out = Vec::new();
    // A thumbnail that fails to encode is only cosmetic: store none rather than fail the add.
    let _ = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&thumb);
    out
}
