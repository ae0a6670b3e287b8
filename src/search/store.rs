//! The gallery store seam: what every front end asks of a gallery, whether it is a directory on
//! this machine (SQLite + usearch, [`GalleryIndex`]) or a catalogue shared by many machines on
//! PostgreSQL + pgvector ([`PgCatalogue`]). `--index` / `ARVIS_INDEX` names either; the
//! front ends only ever hold a `Box<dyn GalleryStore>`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::catalogue::{Access, CatalogueError, CatalogueUrl, PgCatalogue};
use super::index::{
    GalleryIndex, Hit, IndexError, IndexMeta, IndexStats, ItemSummary, NewItem, WriteLock,
};
use super::items::{Decision, TextItem};
use crate::paths::display_path;

/// Where a gallery lives.
#[derive(Clone, PartialEq, Eq)]
pub enum GalleryLocation {
    /// An index directory on this machine.
    Dir(PathBuf),
    /// A shared catalogue on a PostgreSQL server (boxed: a parsed driver config is large).
    Catalogue(Box<CatalogueUrl>),
}

impl GalleryLocation {
    /// `--index`'s value: a `postgres://` / `postgresql://` URL, else a directory (any bytes).
    pub fn parse(value: &OsStr) -> Result<GalleryLocation, CatalogueError> {
        match value.to_str() {
            Some(s) if CatalogueUrl::is_catalogue(s) => {
                Ok(GalleryLocation::Catalogue(Box::new(s.parse()?)))
            }
            _ => Ok(GalleryLocation::Dir(PathBuf::from(value))),
        }
    }

    /// The directory, for a directory gallery.
    pub fn as_dir(&self) -> Option<&Path> {
        match self {
            GalleryLocation::Dir(d) => Some(d),
            GalleryLocation::Catalogue(_) => None,
        }
    }

    /// The value that names this gallery again, password included: to hand on (to the
    /// window's settings), never to print — printing goes through `Display`.
    pub fn arg(&self) -> OsString {
        match self {
            GalleryLocation::Dir(d) => d.clone().into_os_string(),
            GalleryLocation::Catalogue(url) => url.expose().into(),
        }
    }
}

impl From<PathBuf> for GalleryLocation {
    fn from(dir: PathBuf) -> GalleryLocation {
        GalleryLocation::Dir(dir)
    }
}

impl From<&Path> for GalleryLocation {
    fn from(dir: &Path) -> GalleryLocation {
        GalleryLocation::Dir(dir.to_path_buf())
    }
}

/// A directory as [`display_path`] shows it; a catalogue as its URL with the password masked.
impl std::fmt::Display for GalleryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GalleryLocation::Dir(d) => f.write_str(&display_path(d)),
            GalleryLocation::Catalogue(url) => write!(f, "{url}"),
        }
    }
}

impl std::fmt::Debug for GalleryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GalleryLocation({self})")
    }
}

/// An open gallery. Images are named by the path they were added from on this machine: in a
/// directory that path is the image's identity; in a catalogue the identity is the file's
/// content hash and each image keeps the hosts and paths it came from.
pub trait GalleryStore: Send {
    /// Where it is.
    fn location(&self) -> GalleryLocation;
    /// The model its embeddings were made with.
    fn meta(&self) -> &IndexMeta;
    /// Whether [`NewItem::sha256`] must be filled in (a catalogue's identity of an image).
    fn wants_content_hash(&self) -> bool {
        false
    }
    /// Take the writer lock, waiting (after one call to `on_wait`) while another process holds
    /// it. A catalogue needs none (`None`): its writers meet in the database's transactions.
    fn lock_for_writing(&self, on_wait: &mut dyn FnMut()) -> Result<Option<WriteLock>, IndexError>;
    /// Images.
    fn len(&self) -> Result<usize, IndexError>;
    /// Whether it holds no image.
    fn is_empty(&self) -> Result<bool, IndexError> {
        Ok(self.len()? == 0)
    }
    /// Size and mtime recorded for the image added from `path`, if any.
    fn lookup(&self, path: &Path) -> Result<Option<(u64, i64)>, IndexError>;
    /// The item of the image added from `path`.
    fn label_of(&self, path: &Path) -> Result<Option<String>, IndexError>;
    /// Insert or replace a batch, all or nothing.
    fn upsert_batch(&mut self, items: &[NewItem]) -> Result<(), IndexError>;
    /// Remove the image added from `path`; true if it was there.
    fn remove(&mut self, path: &Path) -> Result<bool, IndexError>;
    /// Every path images were added from on this machine.
    fn paths(&self) -> Result<Vec<PathBuf>, IndexError>;
    /// An image's thumbnail JPEG.
    fn thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>, IndexError>;
    /// Load the search structure now (so a batch of changes updates it in place).
    fn prepare_ann(&mut self) -> Result<(), IndexError>;
    /// Persist what a batch of changes left in memory.
    fn save(&mut self) -> Result<(), IndexError>;
    /// The `k` most similar images to a unit query; exhaustive when `exact`.
    fn search(&mut self, query: &[f32], k: usize, exact: bool) -> Result<Vec<Hit>, IndexError>;
    /// Counts for `arvis index stats`.
    fn stats(&self) -> Result<IndexStats, IndexError>;
    /// Every item, ordered by label (byte order).
    fn items(&self) -> Result<Vec<ItemSummary>, IndexError>;
    /// One item's images: id and path, in the order they were added.
    fn item_images(&self, label: &str) -> Result<Vec<(i64, PathBuf)>, IndexError>;
    /// Images per item and the text items, as of now.
    fn labels(&mut self) -> Result<(&HashMap<String, usize>, &[TextItem]), IndexError>;
    /// Add (or replace) a prompt of text item `label`.
    fn add_text(&mut self, label: &str, prompt: &str, embedding: &[f32]) -> Result<(), IndexError>;
    /// Put the images added from `paths` into item `label`; per path, whether it was there.
    fn set_label(&mut self, paths: &[PathBuf], label: &str) -> Result<Vec<bool>, IndexError>;
    /// Rename an item (merging into `new` when it exists); how many images and prompts moved.
    fn rename_item(&mut self, old: &str, new: &str) -> Result<usize, IndexError>;
    /// Remove an item's images and prompts; how many.
    fn remove_item(&mut self, label: &str) -> Result<usize, IndexError>;
    /// Every image's item and embedding (row-major), for calibration.
    fn labelled_embeddings(&self) -> Result<(Vec<String>, Vec<f32>), IndexError>;
    /// The decision `arvis index calibrate --save` stored.
    fn stored_decision(&self) -> Result<Option<Decision>, IndexError>;
    /// Store the gallery's default decision.
    fn store_decision(&mut self, decision: &Decision) -> Result<(), IndexError>;
    /// Up to `limit` images with row ids above `after`, in id order, whole (embedding,
    /// thumbnail, item, where it came from, content hash when the store keeps one): what
    /// `arvis index copy` moves, page by page.
    fn export(&self, after: i64, limit: usize) -> Result<Vec<(i64, NewItem)>, IndexError>;
    /// Every text prompt as stored: (item, prompt, unit embedding).
    fn prompts(&self) -> Result<Vec<(String, String, Vec<f32>)>, IndexError>;
    /// What `arvis doctor` says about the store: (what, value) lines beyond [`IndexStats`]'s
    /// counts (kind of store, server and extension versions, the search index).
    fn describe(&self) -> Result<Vec<(&'static str, String)>, IndexError>;
    /// Start noticing changes that other processes make to this gallery.
    fn watch(&self) -> Result<Box<dyn ChangeWatch>, IndexError>;
}

/// What a [`ChangeWatch`] saw since it was last asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Nothing new.
    Quiet,
    /// The gallery changed (or may have: a catalogue whose server came back may have missed
    /// announcements): reopen it.
    Changed,
    /// The catalogue's server cannot be reached now; the watch keeps trying, with why.
    Unreachable(String),
}

/// Changes that other processes make to a gallery, noticed without asking its store over and
/// over: a catalogue's server announces them (LISTEN/NOTIFY), a directory's change counter is a
/// local file read.
pub trait ChangeWatch: Send {
    /// What happened since the last call; never blocks.
    fn poll(&mut self) -> WatchEvent;
}

/// Whether `e` says a catalogue's server is out of reach for now (worth retrying), rather than
/// that something is wrong with the gallery.
pub fn is_transient(e: &IndexError) -> bool {
    matches!(
        e,
        IndexError::Catalogue(CatalogueError::Unreachable { .. } | CatalogueError::Lost { .. })
    )
}

/// Whether there may be a gallery to open: a directory holding an index, or any catalogue URL
/// (only the server can tell; opening says so when it has none).
pub fn exists(location: &GalleryLocation) -> bool {
    match location {
        GalleryLocation::Dir(d) => GalleryIndex::exists(d),
        GalleryLocation::Catalogue(_) => true,
    }
}

/// Open for searching; its model must be `meta`'s.
pub fn open(
    location: &GalleryLocation,
    meta: &IndexMeta,
) -> Result<Box<dyn GalleryStore>, IndexError> {
    Ok(match location {
        GalleryLocation::Dir(d) => Box::new(GalleryIndex::open(d, meta)?),
        GalleryLocation::Catalogue(url) => Box::new(PgCatalogue::open(url, Access::Read(meta))?),
    })
}

/// Open for adding, creating the gallery for `meta`'s model if there is none.
pub fn open_or_create(
    location: &GalleryLocation,
    meta: &IndexMeta,
) -> Result<Box<dyn GalleryStore>, IndexError> {
    Ok(match location {
        GalleryLocation::Dir(d) => Box::new(GalleryIndex::open_or_create(d, meta)?),
        GalleryLocation::Catalogue(url) => Box::new(PgCatalogue::open(url, Access::Create(meta))?),
    })
}

/// Open for reading without a model check (stats, items, search by text).
pub fn open_any(location: &GalleryLocation) -> Result<Box<dyn GalleryStore>, IndexError> {
    Ok(match location {
        GalleryLocation::Dir(d) => Box::new(GalleryIndex::open_any(d)?),
        GalleryLocation::Catalogue(url) => Box::new(PgCatalogue::open(url, Access::ReadAny)?),
    })
}

/// Open for changes without a model check (rm, prune, labels need no encoder).
pub fn open_any_for_writing(
    location: &GalleryLocation,
) -> Result<Box<dyn GalleryStore>, IndexError> {
    Ok(match location {
        GalleryLocation::Dir(d) => Box::new(GalleryIndex::open_any_for_writing(d)?),
        GalleryLocation::Catalogue(url) => Box::new(PgCatalogue::open(url, Access::Write)?),
    })
}
