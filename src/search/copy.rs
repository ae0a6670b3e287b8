//! `arvis index copy`: a gallery moved between stores (a directory and a catalogue, either way,
//! or between two of a kind) as it is: embeddings, thumbnails, items, text items and the stored
//! decision, with no image read or embedded again. Page by page, one committed batch per page,
//! so an interrupted copy keeps what it committed and the same command carries on from there:
//! images the destination already has from the same file unchanged are skipped.

use std::ops::ControlFlow;

use super::index::{IndexError, NewItem};
use super::store::{self, GalleryLocation};

/// Images per page (one batch committed per page).
const PAGE: usize = 256;

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Images the source holds.
    pub images: usize,
    /// Images written to the destination.
    pub copied: usize,
    /// Images the destination already had unchanged (from an earlier, interrupted copy).
    pub already: usize,
    /// Text prompts written.
    pub prompts: usize,
    /// Whether the destination was given the source's stored decision.
    pub decision: bool,
    /// Images in the destination afterwards.
    pub total: usize,
}

/// Copy `from` into `to` (created for `from`'s model when it does not exist; a destination
/// made with another model is refused). `committed(done, of)` is told after each batch and may
/// stop the copy (what was committed stays).
pub fn copy_gallery(
    from: &GalleryLocation,
    to: &GalleryLocation,
    mut committed: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<CopyReport, IndexError> {
    if from == to {
        return Err(IndexError::Io {
            dir: std::path::PathBuf::from(from.to_string()),
            reason: "source and destination are the same gallery".into(),
        });
    }
    let src = store::open_any(from)?;
    let meta = src.meta().clone();
    let mut dst = store::open_or_create(to, &meta)?;
    let _lock = dst.lock_for_writing(&mut || {})?;
    let hashed = dst.wants_content_hash();
    dst.prepare_ann()?;
    let mut report = CopyReport {
        images: src.len()?,
        ..CopyReport::default()
    };
    let page_size = crate::fault::after_batches(crate::fault::COPY_PAGE).unwrap_or(PAGE);
    let mut after = 0;
    loop {
        let page = src.export(after, page_size.max(1))?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = *last;
        let mut batch = Vec::with_capacity(page.len());
        for (_, mut item) in page {
            if dst.lookup(&item.path)? == Some((item.size, item.mtime_ns)) {
                report.already += 1;
                continue;
            }
            if hashed && item.sha256.is_none() {
                item.sha256 = Some(content_hash(&item));
            }
            batch.push(item);
        }
        if !batch.is_empty() {
            dst.upsert_batch(&batch)?;
            report.copied += batch.len();
        }
        if committed(report.copied + report.already, report.images).is_break() {
            dst.save()?;
            report.total = dst.len()?;
            return Ok(report);
        }
    }
    for (label, prompt, embedding) in src.prompts()? {
        dst.add_text(&label, &prompt, &embedding)?;
        report.prompts += 1;
    }
    if let Some(decision) = src.stored_decision()?
        && dst.stored_decision()?.is_none()
    {
        dst.store_decision(&decision)?;
        report.decision = true;
    }
    dst.save()?;
    report.total = dst.len()?;
    Ok(report)
}

/// A directory gallery keeps no content hash: the file's, when it is still there as it was
/// indexed; else one of the stored embedding (identical embeddings are one image to a search
/// anyway), marked so that it can never equal a file's.
fn content_hash(item: &NewItem) -> String {
    let unchanged =
        super::ingest::file_identity(&item.path).is_ok_and(|id| id == (item.size, item.mtime_ns));
    if unchanged && let Ok(h) = crate::util::sha256_file(&item.path) {
        return h;
    }
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for v in &item.embedding {
        h.update(v.to_le_bytes());
    }
    format!("embedding:{}", crate::util::hex(&h.finalize()))
}
