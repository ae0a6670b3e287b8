//! One gallery index directory: `index.sqlite` (truth) + `vectors.usearch` (HNSW cache).

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use std::collections::HashMap;

use super::ann::{Ann, Neighbour, exact_search};
use super::items::{Decision, TextItem, check_label, label_from_stem};
use super::store::{ChangeWatch, GalleryLocation, GalleryStore, WatchEvent};
use crate::paths::display_path;
use std::time::Instant;

const DB_FILE: &str = "index.sqlite";
const ANN_FILE: &str = "vectors.usearch";
const LOCK_FILE: &str = "index.lock";
/// 1: images only (every release before items). 2: items (a label per image) and text items.
const FORMAT_VERSION: i64 = 2;
/// The schema of a new index, and what an upgrade from version 1 adds (each statement is a
/// no-op when its object exists, so an interrupted upgrade is simply redone).
const SCHEMA_V2: &str = "CREATE INDEX IF NOT EXISTS items_label ON items(label);
     CREATE TABLE IF NOT EXISTS texts (
         id INTEGER PRIMARY KEY,
         label TEXT NOT NULL,
         prompt TEXT NOT NULL,
         embedding BLOB NOT NULL,
         UNIQUE (label, prompt)
     );";
const IMAGES_TABLE_V1: &str = "CREATE TABLE IF NOT EXISTS items (
         id INTEGER PRIMARY KEY,
         path TEXT NOT NULL UNIQUE,
         size INTEGER NOT NULL,
         mtime_ns INTEGER NOT NULL,
         embedding BLOB NOT NULL,
         thumbnail BLOB NOT NULL
     );";
/// Up to this many vectors, queries scan every embedding exactly (fast enough, and no recall loss).
pub const EXACT_SEARCH_MAX: usize = 10_000;

/// The embedding model an index was built with. Opening with another is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexMeta {
    /// Identity of the image encoder (name and content hash).
    pub model_id: String,
    /// Version of the preprocessing the embeddings were made with.
    pub preprocess_version: u32,
    /// Embedding dimensions.
    pub dim: usize,
    /// The CLIP export the image tower belongs to, when known: a text tower must share it.
    pub clip_family: Option<String>,
}

impl IndexMeta {
    /// Same embeddings: model, preprocessing and dimensions (the family only names the pair).
    pub fn same_embeddings(&self, other: &IndexMeta) -> bool {
        self.model_id == other.model_id
            && self.preprocess_version == other.preprocess_version
            && self.dim == other.dim
    }

    /// `Ok` when `wanted` makes the same embeddings as this (the model of gallery `index`),
    /// else the mismatch, named for both stores alike.
    pub fn require_same(&self, wanted: &IndexMeta, index: String) -> Result<(), IndexError> {
        if self.same_embeddings(wanted) {
            return Ok(());
        }
        Err(IndexError::ModelMismatch {
            index,
            index_model: self.model_id.clone(),
            index_pre: self.preprocess_version,
            index_dim: self.dim,
            model: wanted.model_id.clone(),
            pre: wanted.preprocess_version,
            dim: wanted.dim,
        })
    }
}

/// Why an index could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// No index in this directory (or no such catalogue on the server).
    #[error("no index at {0}. Fix: build one with `arvis index add --index {0} <folders>`")]
    Missing(String),
    /// The index's files are damaged.
    #[error(
        "index {path} is damaged ({reason}). Fix: move it aside and rebuild with `arvis index add --index {dir} <folders>`"
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// The index directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The index was built with another model.
    #[error(
        "index {index} was built with CLIP model {index_model} (preprocessing v{index_pre}, {index_dim}-d), but the current model is {model} (v{pre}, {dim}-d); embeddings of different models cannot be compared. Fix: pass --clip-model for {index_model}, or use another --index"
    )]
    ModelMismatch {
        /// The index (directory or masked catalogue URL).
        index: String,
        /// The index's model.
        index_model: String,
        /// The index's preprocessing version.
        index_pre: u32,
        /// The index's dimensions.
        index_dim: usize,
        /// The current model.
        model: String,
        /// Its preprocessing version.
        pre: u32,
        /// Its dimensions.
        dim: usize,
    },
    /// SQLite failed.
    #[error("index {dir}: {source}")]
    Sqlite {
        /// The index directory.
        dir: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The index was written by a newer arvis.
    #[error(
        "index {index} has format version {found}; this arvis reads up to version {supported}. Fix: use the newer arvis that wrote it (or a newer release), or another --index"
    )]
    NewerFormat {
        /// The index (directory or masked catalogue URL).
        index: String,
        /// The index's format version.
        found: i64,
        /// The newest this build reads.
        supported: i64,
    },
    /// An older index must be upgraded, and this user cannot write it.
    #[error(
        "index {dir} was made by an older arvis and must be upgraded in place once ({reason}). Fix: run `arvis index stats --index {dir}` as a user who may write to it"
    )]
    NeedsUpgrade {
        /// The index directory.
        dir: PathBuf,
        /// Why the upgrade could not be done now.
        reason: String,
    },
    /// A label was refused.
    #[error(transparent)]
    Label(#[from] super::items::LabelError),
    /// The PostgreSQL catalogue failed.
    #[error(transparent)]
    Catalogue(#[from] super::catalogue::CatalogueError),
    /// A file of the index could not be read or written.
    #[error("index {dir}: {reason}")]
    Io {
        /// The index directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

/// One image to add: where it is, its identity on disk, its embedding and thumbnail.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// The canonical path, byte for byte (file names need not be UTF-8).
    pub path: PathBuf,
    /// File size in bytes when embedded.
    pub size: u64,
    /// Modification time when embedded, ns since the epoch.
    pub mtime_ns: i64,
    /// The unit CLIP embedding.
    pub embedding: Vec<f32>,
    /// Small JPEG for the UI.
    pub thumbnail: Vec<u8>,
    /// The item it belongs to. None: a new image is named by its file stem, an indexed one
    /// keeps the item it has.
    pub label: Option<String>,
    /// sha256 of the file's bytes: the image's identity in a shared catalogue (where a path
    /// means nothing on another machine). Only computed for stores that ask for it.
    pub sha256: Option<String>,
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The image's row id.
    pub id: i64,
    /// The image's path for display ([`display_path`]: exact when it is plain UTF-8).
    pub path: String,
    /// The item the image belongs to.
    pub label: String,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// One item of `arvis index items`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ItemSummary {
    /// The item's label.
    pub label: String,
    /// Its gallery images.
    pub images: usize,
    /// Its text prompts.
    pub prompts: usize,
    /// The image its thumbnail shows (row id), when it has images.
    #[serde(skip)]
    pub thumbnail_id: Option<i64>,
    /// That image's path.
    pub thumbnail: Option<String>,
}

/// What `arvis index stats` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexStats {
    /// The index directory.
    pub dir: String,
    /// Images.
    pub count: usize,
    /// The CLIP model's identity.
    pub model_id: String,
    /// Preprocessing version.
    pub preprocess_version: u32,
    /// Embedding dimensions.
    pub dim: usize,
    /// Bytes of all the index's files.
    pub bytes_on_disk: u64,
    /// Committed changes so far.
    pub generation: i64,
    /// Items (labels with at least one image or prompt).
    pub items: usize,
    /// Text prompts of text-defined items.
    pub prompts: usize,
    /// The decision stored by `arvis index calibrate --save`, if any.
    pub decision: Option<super::items::Decision>,
}

/// An open gallery index.
pub struct GalleryIndex {
    dir: PathBuf,
    db: Connection,
    meta: IndexMeta,
    ann: Option<Ann>,
    /// The database generation the in-memory graph holds exactly; a graph is only ever saved
    /// under the generation it reflects (another writer's commits make it stale, not wrong).
    ann_generation: Option<i64>,
    /// Embeddings loaded for exact search (keys, row-major vectors) and their generation.
    exact_cache: Option<(i64, Vec<u64>, Vec<f32>)>,
    /// Opened read-only (no writes, no WAL set-up): stats, search, matching.
    read_only: bool,
    /// Images per item and the text items, for the (generation, labels generation) they hold.
    labels_cache: Option<LabelsCache>,
}

/// Images per item and the text items, keyed by (generation, labels generation).
type LabelsCache = ((i64, i64), HashMap<String, usize>, Vec<TextItem>);

/// Held while one process writes to an index: `flock` on `index.lock` in the index directory,
/// released when dropped (or when the process dies, however it dies).
#[derive(Debug)]
pub struct WriteLock {
    _file: std::fs::File,
}

fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl GalleryIndex {
    fn sqlite_err(&self) -> impl Fn(rusqlite::Error) -> IndexError + '_ {
        |source| classify(&self.dir, source)
    }

    /// Open an existing index; its model must be `meta`'s.
    /// Whether `dir` holds an index (without opening it).
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).is_file()
    }

    /// Open an existing index read-only for searching; its model must be `meta`'s.
    pub fn open(dir: &Path, meta: &IndexMeta) -> Result<GalleryIndex, IndexError> {
        Self::check_db_file(dir)?;
        let index = Self::open_db(dir, Access::Read)?;
        index.check_model(meta)?;
        Ok(index)
    }

    /// `index.sqlite` must be a non-empty regular file; anything else is named for what it is.
    fn check_db_file(dir: &Path) -> Result<(), IndexError> {
        let path = dir.join(DB_FILE);
        let corrupt = |reason: &str| IndexError::Corrupt {
            path: path.clone(),
            dir: dir.to_path_buf(),
            reason: reason.into(),
        };
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(IndexError::Missing(display_path(dir)))
            }
            Err(e) => Err(IndexError::Io {
                dir: dir.to_path_buf(),
                reason: format!("{}: {e}", path.display()),
            }),
            Ok(m) if m.is_dir() => Err(corrupt("it is a directory, not a database file")),
            Ok(m) if !m.is_file() => Err(corrupt("it is not a regular file")),
            Ok(m) if m.len() == 0 => Err(corrupt("the database file is empty (0 bytes)")),
            Ok(_) => Ok(()),
        }
    }

    /// The writer lock if no other process holds it, without waiting.
    fn try_lock_for_writing(&self) -> Result<Option<WriteLock>, IndexError> {
        use std::os::fd::AsRawFd;
        let file = self.lock_file()?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Ok(None);
        }
        self.remove_stale_temporaries();
        Ok(Some(WriteLock { _file: file }))
    }

    fn lock_file(&self) -> Result<std::fs::File, IndexError> {
        let path = self.dir.join(LOCK_FILE);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| IndexError::Io {
                dir: self.dir.clone(),
                reason: format!("cannot create the writer lock {}: {e}", path.display()),
            })
    }

    /// Graph files a killed writer left half-saved: with the lock held nobody else is writing one.
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("vectors.tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Open for adding, creating the index (for `meta`'s model) if it does not exist.
    pub fn open_or_create(dir: &Path, meta: &IndexMeta) -> Result<GalleryIndex, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Io {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        if dir.join(DB_FILE).exists() {
            Self::check_db_file(dir)?;
        }
        let mut index = Self::open_db(dir, Access::Create(meta))?;
        index.check_model(meta)?;
        // An index from before families were recorded learns its own model's family.
        if index.meta.clip_family.is_none()
            && let Some(family) = &meta.clip_family
        {
            set_meta_in(&index.db, "clip_family", family).map_err(|e| classify(dir, e))?;
            index.meta.clip_family = Some(family.clone());
        }
        Ok(index)
    }

    /// Open read-only without a model check (stats, search by text).
    pub fn open_any(dir: &Path) -> Result<GalleryIndex, IndexError> {
        Self::check_db_file(dir)?;
        Self::open_db(dir, Access::Read)
    }

    /// Open for changes without a model check (rm, prune need no encoder).
    pub fn open_any_for_writing(dir: &Path) -> Result<GalleryIndex, IndexError> {
        Self::check_db_file(dir)?;
        Self::open_db(dir, Access::Write)
    }

    fn open_db(dir: &Path, access: Access<'_>) -> Result<GalleryIndex, IndexError> {
        let path = dir.join(DB_FILE);
        let create_for = match access {
            Access::Create(m) => Some(m),
            _ => None,
        };
        let db = match access {
            Access::Read => open_read_only(dir, &path)?,
            Access::Write => Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
                .map_err(|e| classify(dir, e))?,
            Access::Create(_) => Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )
            .map_err(|e| classify(dir, e))?,
        };
        let read_only = matches!(access, Access::Read);
        let setup = || -> rusqlite::Result<()> {
            if read_only {
                return Ok(());
            }
            // WAL + synchronous=FULL: each committed batch survives a crash; readers never block.
            db.pragma_update(None, "journal_mode", "WAL")?;
            db.pragma_update(None, "synchronous", "FULL")?;
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
            )
        };
        setup().map_err(|e| classify(dir, e))?;
        let get = |key: &str| meta_text_in(&db, key).map_err(|e| classify(dir, e));
        let meta = match (get("model_id")?, get("preprocess_version")?, get("dim")?) {
            (Some(model_id), Some(pre), Some(dim)) => {
                let corrupt = |what: &str| IndexError::Corrupt {
                    path: path.clone(),
                    dir: dir.to_path_buf(),
                    reason: format!("bad {what} in meta"),
                };
                IndexMeta {
                    model_id,
                    preprocess_version: pre.parse().map_err(|_| corrupt("preprocess_version"))?,
                    dim: dim.parse().map_err(|_| corrupt("dim"))?,
                    clip_family: get("clip_family")?,
                }
            }
            _ => match create_for {
                Some(m) => {
                    let tx = || -> rusqlite::Result<()> {
                        db.execute_batch("BEGIN IMMEDIATE")?;
                        db.execute_batch(IMAGES_TABLE_V1)?;
                        add_label_column(&db)?;
                        db.execute_batch(SCHEMA_V2)?;
                        for (k, v) in [
                            ("format_version", FORMAT_VERSION.to_string()),
                            ("model_id", m.model_id.clone()),
                            ("preprocess_version", m.preprocess_version.to_string()),
                            ("dim", m.dim.to_string()),
                            ("generation", "0".into()),
                        ] {
                            set_meta_in(&db, k, &v)?;
                        }
                        if let Some(family) = &m.clip_family {
                            set_meta_in(&db, "clip_family", family)?;
                        }
                        db.execute_batch("COMMIT")
                    };
                    tx().map_err(|e| classify(dir, e))?;
                    m.clone()
                }
                None => {
                    return Err(IndexError::Corrupt {
                        path,
                        dir: dir.to_path_buf(),
                        reason: "no model recorded in meta".into(),
                    });
                }
            },
        };
        let version = get("format_version")?
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(1);
        if version > FORMAT_VERSION {
            return Err(IndexError::NewerFormat {
                index: display_path(dir),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version < FORMAT_VERSION {
            if read_only {
                // A reader upgrades through its own read-write connection when it may.
                let upgraded =
                    Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).and_then(
                        |rw| {
                            rw.pragma_update(None, "journal_mode", "WAL")?;
                            rw.pragma_update(None, "synchronous", "FULL")?;
                            upgrade(&rw)
                        },
                    );
                match upgraded {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), "index upgraded to format version {FORMAT_VERSION}")
                    }
                    Err(e) => {
                        // Nobody may write it (another user's gallery, a read-only mount): read
                        // it as the upgrade would show it; it is upgraded when someone who may
                        // opens it.
                        tracing::info!(dir = %dir.display(), "not upgraded ({e}): read as version 2");
                        read_as_upgraded(&db).map_err(|e| IndexError::NeedsUpgrade {
                            dir: dir.to_path_buf(),
                            reason: e.to_string(),
                        })?;
                    }
                }
            } else {
                upgrade(&db).map_err(|e| classify(dir, e))?;
                tracing::info!(dir = %dir.display(), "index upgraded to format version {FORMAT_VERSION}");
            }
        }
        Ok(GalleryIndex {
            dir: dir.to_path_buf(),
            db,
            meta,
            ann: None,
            ann_generation: None,
            exact_cache: None,
            read_only,
            labels_cache: None,
        })
    }

    fn refuse_if_read_only(&self) -> Result<(), IndexError> {
        if self.read_only {
            return Err(IndexError::Io {
                dir: self.dir.clone(),
                reason: "opened read-only; this change needs the index opened for writing".into(),
            });
        }
        Ok(())
    }

    fn check_model(&self, meta: &IndexMeta) -> Result<(), IndexError> {
        self.meta.require_same(meta, display_path(&self.dir))
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn meta_i64(&self, key: &str) -> Result<i64, IndexError> {
        meta_i64_in(&self.db, key).map_err(self.sqlite_err())
    }

    /// A write transaction (SQLite's write lock taken at once) and the generation it starts at.
    fn begin_write(&self) -> Result<(rusqlite::Transaction<'_>, i64), IndexError> {
        self.refuse_if_read_only()?;
        let tx = rusqlite::Transaction::new_unchecked(
            &self.db,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(|e| classify(&self.dir, e))?;
        let before = generation_in(&tx).map_err(|e| classify(&self.dir, e))?;
        Ok((tx, before))
    }

    /// After a commit that moved the generation from `before` to `before + 1`: whether the
    /// in-memory graph was exactly at `before` (then it takes this change and moves on), or
    /// another writer committed since it was built (then it is dropped, to be rebuilt).
    fn graph_follows(&mut self, before: i64) -> bool {
        if self.ann.is_some() && self.ann_generation == Some(before) {
            self.ann_generation = Some(before + 1);
            true
        } else {
            self.ann = None;
            self.ann_generation = None;
            false
        }
    }

    fn all_embeddings(&self) -> Result<(Vec<u64>, Vec<f32>), IndexError> {
        let mut stmt = self
            .db
            .prepare("SELECT id, embedding FROM items ORDER BY id")
            .map_err(self.sqlite_err())?;
        let mut keys = Vec::new();
        let mut matrix = Vec::new();
        let mut rows = stmt.query([]).map_err(self.sqlite_err())?;
        while let Some(row) = rows.next().map_err(self.sqlite_err())? {
            let id: i64 = row.get(0).map_err(self.sqlite_err())?;
            let blob: Vec<u8> = row.get(1).map_err(self.sqlite_err())?;
            if blob.len() != self.meta.dim * 4 {
                return Err(IndexError::Corrupt {
                    path: self.dir.join(DB_FILE),
                    dir: self.dir.clone(),
                    reason: format!(
                        "item {id} has a {}-byte embedding, expected {}",
                        blob.len(),
                        self.meta.dim * 4
                    ),
                });
            }
            keys.push(id as u64);
            matrix.extend(bytes_to_f32s(&blob));
        }
        Ok((keys, matrix))
    }

    /// The HNSW graph, loaded if its file is current and intact, else rebuilt from the database.
    fn ann(&mut self) -> Result<&Ann, IndexError> {
        // Another process may have committed since the graph was loaded: reload it then.
        if self.ann.is_some() && self.ann_generation != Some(self.meta_i64("generation")?) {
            self.ann = None;
            self.ann_generation = None;
        }
        if self.ann.is_none() {
            let (ann, generation) = self.load_or_rebuild_ann()?;
            self.ann = Some(ann);
            self.ann_generation = Some(generation);
        }
        self.ann.as_ref().ok_or_else(|| IndexError::Io {
            dir: self.dir.clone(),
            reason: "vector index unavailable".into(),
        })
    }

    /// The graph and the generation it holds exactly.
    fn load_or_rebuild_ann(&mut self) -> Result<(Ann, i64), IndexError> {
        let path = self.dir.join(ANN_FILE);
        // One read transaction: the generation and the rows read below are one snapshot.
        let snapshot = self
            .db
            .unchecked_transaction()
            .map_err(|e| classify(&self.dir, e))?;
        let generation = self.meta_i64("generation")?;
        let recorded = self.meta_i64("ann_generation")?;
        let expected_sha = meta_text_in(&self.db, "ann_sha256").map_err(self.sqlite_err())?;
        if recorded == generation
            && let Some(expected) = expected_sha
            && path.is_file()
            // Verify the bytes before the C++ loader sees them: a damaged file must never crash us.
            && crate::util::sha256_file(&path).is_ok_and(|actual| actual == expected)
            && let Ok(ann) = Ann::load(&path, self.meta.dim)
            && ann.len() == self.len()?
        {
            return Ok((ann, generation));
        }
        tracing::info!(dir = %self.dir.display(), "rebuilding the vector index from the database");
        let (keys, matrix) = self.all_embeddings()?;
        let mut ann = Ann::new(self.meta.dim).map_err(|e| IndexError::Io {
            dir: self.dir.clone(),
            reason: e.to_string(),
        })?;
        for (key, v) in keys.iter().zip(matrix.chunks_exact(self.meta.dim)) {
            ann.upsert(*key, v).map_err(|e| IndexError::Io {
                dir: self.dir.clone(),
                reason: e.to_string(),
            })?;
        }
        drop(snapshot);
        // A cache that cannot be written (read-only gallery, full disk) still serves this run.
        if self.read_only {
            self.persist_from_reader(&ann, generation);
        } else if let Err(e) = self.persist_ann(&ann, generation) {
            tracing::warn!("{e}; the vector index is rebuilt in memory until it can be saved");
        }
        Ok((ann, generation))
    }

    /// Write `ann` as the graph of `generation` (see [`persist_graph`]).
    fn persist_ann(&self, ann: &Ann, generation: i64) -> Result<bool, IndexError> {
        persist_graph(&self.db, &self.dir, ann, generation)
    }

    /// A read-only opener that had to rebuild the graph saves it when it may (write access and
    /// no other writer busy), so the next reader does not rebuild it again.
    fn persist_from_reader(&self, ann: &Ann, generation: i64) {
        let Ok(db) =
            Connection::open_with_flags(self.dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_WRITE)
        else {
            return;
        };
        match self.try_lock_for_writing() {
            Ok(Some(_lock)) => {
                if let Err(e) = persist_graph(&db, &self.dir, ann, generation) {
                    tracing::debug!("the rebuilt vector index was not saved: {e}");
                }
            }
            _ => tracing::debug!("another writer is busy: the rebuilt vector index is not saved"),
        }
    }

    fn exact_neighbours(&mut self, query: &[f32], k: usize) -> Result<Vec<Neighbour>, IndexError> {
        let generation = self.meta_i64("generation")?;
        if self
            .exact_cache
            .as_ref()
            .is_none_or(|(g, _, _)| *g != generation)
        {
            let snapshot = self
                .db
                .unchecked_transaction()
                .map_err(|e| classify(&self.dir, e))?;
            let generation = self.meta_i64("generation")?;
            let (keys, matrix) = self.all_embeddings()?;
            drop(snapshot);
            self.exact_cache = Some((generation, keys, matrix));
        }
        let (keys, matrix) = self
            .exact_cache
            .as_ref()
            .map(|(_, k, m)| (k.as_slice(), m.as_slice()))
            .unwrap_or_default();
        Ok(exact_search(matrix, keys, self.meta.dim, query, k))
    }

    fn count(&self, sql: &str) -> Result<usize, IndexError> {
        let n: i64 = self
            .db
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(self.sqlite_err())?;
        Ok(n as usize)
    }

    fn read_text_items(&self, db: &Connection) -> Result<Vec<TextItem>, IndexError> {
        Ok(TextItem::from_prompts(self.read_prompts(db)?))
    }

    fn read_prompts(&self, db: &Connection) -> Result<Vec<(String, String, Vec<f32>)>, IndexError> {
        let mut stmt = db
            .prepare("SELECT label, prompt, embedding FROM texts ORDER BY label, id")
            .map_err(self.sqlite_err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(self.sqlite_err())?;
        let mut prompts = Vec::new();
        for row in rows {
            let (label, prompt, blob) = row.map_err(self.sqlite_err())?;
            let v = bytes_to_f32s(&blob);
            if v.len() != self.meta.dim {
                return Err(IndexError::Corrupt {
                    path: self.dir.join(DB_FILE),
                    dir: self.dir.clone(),
                    reason: format!("text item {label:?} has a {}-d embedding", v.len()),
                });
            }
            prompts.push((label, prompt, v));
        }
        Ok(prompts)
    }

    fn forget_in_graph(&mut self, ids: &[i64]) {
        if let Some(ann) = self.ann.as_mut()
            && ids.iter().any(|&id| ann.remove(id as u64).is_err())
        {
            self.ann = None;
            self.ann_generation = None;
        }
    }
}

impl GalleryStore for GalleryIndex {
    fn location(&self) -> GalleryLocation {
        GalleryLocation::Dir(self.dir.clone())
    }

    /// Take the index's writer lock. When another process holds it, `on_wait` is called once
    /// and this waits until that writer is done: two writers never interleave their batches.
    fn lock_for_writing(&self, on_wait: &mut dyn FnMut()) -> Result<Option<WriteLock>, IndexError> {
        use std::os::fd::AsRawFd;
        if let Some(lock) = self.try_lock_for_writing()? {
            return Ok(Some(lock));
        }
        on_wait();
        let file = self.lock_file()?;
        loop {
            // SAFETY: flock on a descriptor this function owns; blocks until the other writer
            // releases the lock.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(IndexError::Io {
                    dir: self.dir.clone(),
                    reason: format!("locking {}: {e}", self.dir.join(LOCK_FILE).display()),
                });
            }
        }
        self.remove_stale_temporaries();
        Ok(Some(WriteLock { _file: file }))
    }

    /// The model this index was built with.
    fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    /// Number of images.
    fn len(&self) -> Result<usize, IndexError> {
        self.count("SELECT COUNT(*) FROM items")
    }

    /// Size and mtime recorded for `path`, if indexed.
    fn lookup(&self, path: &Path) -> Result<Option<(u64, i64)>, IndexError> {
        self.db
            .query_row(
                "SELECT size, mtime_ns FROM items WHERE path = ?1",
                [path_value(path)],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()
            .map_err(self.sqlite_err())
    }

    /// Insert or replace a batch in one transaction (all or nothing), then update the HNSW cache
    /// in memory. Call [`GalleryIndex::save`] to persist the cache.
    fn upsert_batch(&mut self, items: &[NewItem]) -> Result<(), IndexError> {
        if let Some(bad) = items.iter().find(|i| i.embedding.len() != self.meta.dim) {
            return Err(IndexError::Io {
                dir: self.dir.clone(),
                reason: format!(
                    "embedding of {} has {} dimensions, index has {}",
                    display_path(&bad.path),
                    bad.embedding.len(),
                    self.meta.dim
                ),
            });
        }
        let (tx, before) = self.begin_write()?;
        let mut ids = Vec::with_capacity(items.len());
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO items (path, size, mtime_ns, embedding, thumbnail, label) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                         embedding = excluded.embedding, thumbnail = excluded.thumbnail,
                         label = CASE WHEN ?7 THEN excluded.label ELSE items.label END
                     RETURNING id",
                )
                .map_err(|e| classify(&self.dir, e))?;
            for item in items {
                let label = match &item.label {
                    Some(l) => check_label(l)?,
                    None => label_from_stem(&item.path),
                };
                let id: i64 = stmt
                    .query_row(
                        params![
                            path_value(&item.path),
                            item.size as i64,
                            item.mtime_ns,
                            f32s_to_bytes(&item.embedding),
                            item.thumbnail,
                            label,
                            item.label.is_some()
                        ],
                        |r| r.get(0),
                    )
                    .map_err(|e| classify(&self.dir, e))?;
                ids.push(id);
            }
        }
        bump_generation(&tx).map_err(|e| classify(&self.dir, e))?;
        tx.commit().map_err(|e| classify(&self.dir, e))?;
        self.exact_cache = None;
        if !self.graph_follows(before) {
            return Ok(());
        }
        if let Some(ann) = self.ann.as_mut() {
            for (id, item) in ids.iter().zip(items) {
                if let Err(e) = ann.upsert(*id as u64, &item.embedding) {
                    // The database has the batch; a graph that missed it must not be kept.
                    self.ann = None;
                    self.ann_generation = None;
                    return Err(IndexError::Io {
                        dir: self.dir.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Remove one image by path; true if it was there.
    fn remove(&mut self, path: &Path) -> Result<bool, IndexError> {
        let (tx, before) = self.begin_write()?;
        let id: Option<i64> = tx
            .query_row(
                "DELETE FROM items WHERE path = ?1 RETURNING id",
                [path_value(path)],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| classify(&self.dir, e))?;
        if id.is_some() {
            bump_generation(&tx).map_err(|e| classify(&self.dir, e))?;
        }
        tx.commit().map_err(|e| classify(&self.dir, e))?;
        self.exact_cache = None;
        if let Some(id) = id
            && self.graph_follows(before)
        {
            self.forget_in_graph(&[id]);
        }
        Ok(id.is_some())
    }

    /// Every indexed path.
    fn paths(&self) -> Result<Vec<PathBuf>, IndexError> {
        let mut stmt = self
            .db
            .prepare("SELECT path FROM items ORDER BY path")
            .map_err(self.sqlite_err())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Value>(0))
            .map_err(self.sqlite_err())?;
        rows.map(|v| v.map(path_from_value))
            .collect::<Result<_, _>>()
            .map_err(self.sqlite_err())
    }

    /// Thumbnail JPEG of an item.
    fn thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>, IndexError> {
        self.db
            .query_row("SELECT thumbnail FROM items WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.sqlite_err())
    }

    /// Persist the HNSW cache (after a batch of changes). Only a graph that holds exactly the
    /// database's rows is saved; a stale one is rebuilt from the database first.
    fn save(&mut self) -> Result<(), IndexError> {
        self.refuse_if_read_only()?;
        let generation = self.meta_i64("generation")?;
        let on_disk =
            self.meta_i64("ann_generation")? == generation && self.dir.join(ANN_FILE).is_file();
        if on_disk {
            return Ok(());
        }
        if let (Some(ann), Some(g)) = (self.ann.take(), self.ann_generation)
            && g == generation
        {
            let result = self.persist_ann(&ann, generation);
            self.ann = Some(ann);
            if result? {
                return Ok(());
            }
        }
        self.ann = None;
        self.ann_generation = None;
        let (ann, generation) = self.load_or_rebuild_ann()?;
        self.ann = Some(ann);
        self.ann_generation = Some(generation);
        Ok(())
    }

    /// Load the HNSW cache now (so later upserts update it in memory).
    fn prepare_ann(&mut self) -> Result<(), IndexError> {
        self.ann().map(|_| ())
    }

    /// The `k` most similar images to a unit query. Exact for small indexes or when asked.
    fn search(&mut self, query: &[f32], k: usize, exact: bool) -> Result<Vec<Hit>, IndexError> {
        let count = self.len()?;
        // Never more than the index holds: usearch reserves k results up front.
        let k = k.min(count);
        if k == 0 {
            return Ok(Vec::new());
        }
        let approximate = if exact || count <= EXACT_SEARCH_MAX {
            None
        } else {
            match self.ann() {
                Ok(ann) => ann.search(query, k).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
            .inspect_err(|e| {
                tracing::warn!("{e}; searching every vector exactly instead");
            })
            .ok()
        };
        let neighbours = match approximate {
            Some(n) => n,
            None => self.exact_neighbours(query, k)?,
        };
        // One statement for all the hits' rows (a region asks for dozens).
        let placeholders = vec!["?"; neighbours.len()].join(",");
        let mut stmt = self
            .db
            .prepare_cached(&format!(
                "SELECT id, path, label FROM items WHERE id IN ({placeholders})"
            ))
            .map_err(|e| classify(&self.dir, e))?;
        let ids: Vec<i64> = neighbours.iter().map(|n| n.key as i64).collect();
        let mut rows: HashMap<i64, (PathBuf, String)> = stmt
            .query_map(rusqlite::params_from_iter(&ids), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    (
                        path_from_value(r.get::<_, Value>(1)?),
                        r.get::<_, String>(2)?,
                    ),
                ))
            })
            .map_err(|e| classify(&self.dir, e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| classify(&self.dir, e))?;
        neighbours
            .into_iter()
            .map(|n| {
                let (file, label) =
                    rows.remove(&(n.key as i64))
                        .ok_or_else(|| IndexError::Corrupt {
                            path: self.dir.join(DB_FILE),
                            dir: self.dir.clone(),
                            reason: format!("vector {} has no image row", n.key),
                        })?;
                Ok(Hit {
                    id: n.key as i64,
                    path: display_path(&file),
                    label,
                    score: n.score,
                })
            })
            .collect()
    }

    /// Counts and sizes for `arvis index stats`.
    fn stats(&self) -> Result<IndexStats, IndexError> {
        let bytes_on_disk = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Ok(IndexStats {
            dir: self.dir.display().to_string(),
            count: self.len()?,
            model_id: self.meta.model_id.clone(),
            preprocess_version: self.meta.preprocess_version,
            dim: self.meta.dim,
            bytes_on_disk,
            generation: self.meta_i64("generation")?,
            items: self.count(
                "SELECT COUNT(*) FROM (SELECT label FROM items UNION SELECT label FROM texts)",
            )?,
            prompts: self.count("SELECT COUNT(*) FROM texts")?,
            decision: self.stored_decision()?,
        })
    }

    /// Every item: label, image and prompt counts, a thumbnail image; ordered by label.
    fn items(&self) -> Result<Vec<ItemSummary>, IndexError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT g.label, g.images, g.prompts, g.first, i.path FROM (
                     SELECT label, SUM(images) AS images, SUM(prompts) AS prompts,
                            MIN(first) AS first FROM (
                         SELECT label, COUNT(*) AS images, 0 AS prompts, MIN(id) AS first
                             FROM items GROUP BY label
                         UNION ALL
                         SELECT label, 0, COUNT(*), NULL FROM texts GROUP BY label
                     ) GROUP BY label
                 ) g LEFT JOIN items i ON i.id = g.first ORDER BY g.label",
            )
            .map_err(self.sqlite_err())?;
        stmt.query_map([], |r| {
            Ok(ItemSummary {
                label: r.get(0)?,
                images: r.get::<_, i64>(1)? as usize,
                prompts: r.get::<_, i64>(2)? as usize,
                thumbnail_id: r.get(3)?,
                thumbnail: r
                    .get::<_, Option<Value>>(4)?
                    .map(|v| display_path(&path_from_value(v))),
            })
        })
        .map_err(self.sqlite_err())?
        .collect::<rusqlite::Result<_>>()
        .map_err(self.sqlite_err())
    }

    /// The images of one item: row id and path, in the order they were added.
    fn item_images(&self, label: &str) -> Result<Vec<(i64, PathBuf)>, IndexError> {
        let mut stmt = self
            .db
            .prepare("SELECT id, path FROM items WHERE label = ?1 ORDER BY id")
            .map_err(self.sqlite_err())?;
        stmt.query_map([label], |r| Ok((r.get(0)?, path_from_value(r.get(1)?))))
            .map_err(self.sqlite_err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sqlite_err())
    }

    /// The item an indexed image belongs to.
    fn label_of(&self, path: &Path) -> Result<Option<String>, IndexError> {
        self.db
            .query_row(
                "SELECT label FROM items WHERE path = ?1",
                [path_value(path)],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sqlite_err())
    }

    /// Images per item, and the text items, as of now (cached until a change is committed).
    fn labels(&mut self) -> Result<(&HashMap<String, usize>, &[TextItem]), IndexError> {
        let key = (
            self.meta_i64("generation")?,
            self.meta_i64("labels_generation")?,
        );
        if self.labels_cache.as_ref().is_none_or(|(k, _, _)| *k != key) {
            let snapshot = self.db.unchecked_transaction().map_err(self.sqlite_err())?;
            let counts = {
                let mut stmt = snapshot
                    .prepare("SELECT label, COUNT(*) FROM items GROUP BY label")
                    .map_err(self.sqlite_err())?;
                stmt.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
                })
                .map_err(self.sqlite_err())?
                .collect::<rusqlite::Result<HashMap<_, _>>>()
                .map_err(self.sqlite_err())?
            };
            let texts = self.read_text_items(&snapshot)?;
            drop(snapshot);
            self.labels_cache = Some((key, counts, texts));
        }
        match &self.labels_cache {
            Some((_, counts, texts)) => Ok((counts, texts.as_slice())),
            None => Err(IndexError::Io {
                dir: self.dir.clone(),
                reason: "item labels unavailable".into(),
            }),
        }
    }

    /// Add (or replace) a prompt of text item `label`; `embedding` is its unit text embedding.
    fn add_text(&mut self, label: &str, prompt: &str, embedding: &[f32]) -> Result<(), IndexError> {
        let label = check_label(label)?;
        if embedding.len() != self.meta.dim {
            return Err(IndexError::Io {
                dir: self.dir.clone(),
                reason: format!(
                    "the text model gives {}-d embeddings but the index holds {}-d ones. Fix: use the text tower of the index's CLIP model",
                    embedding.len(),
                    self.meta.dim
                ),
            });
        }
        let (tx, _) = self.begin_write()?;
        let sql = |e| classify(&self.dir, e);
        tx.execute(
            "INSERT INTO texts (label, prompt, embedding) VALUES (?1, ?2, ?3)
             ON CONFLICT(label, prompt) DO UPDATE SET embedding = excluded.embedding",
            params![label, prompt, f32s_to_bytes(embedding)],
        )
        .map_err(sql)?;
        bump_labels_generation(&tx).map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Put the indexed images at `paths` into item `label`; returns, per path, whether it was
    /// indexed. One transaction.
    fn set_label(&mut self, paths: &[PathBuf], label: &str) -> Result<Vec<bool>, IndexError> {
        let label = check_label(label)?;
        let (tx, _) = self.begin_write()?;
        let sql = |e| classify(&self.dir, e);
        let mut found = Vec::with_capacity(paths.len());
        {
            let mut stmt = tx
                .prepare("UPDATE items SET label = ?2 WHERE path = ?1")
                .map_err(sql)?;
            for p in paths {
                found.push(stmt.execute(params![path_value(p), label]).map_err(sql)? > 0);
            }
        }
        bump_labels_generation(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(found)
    }

    /// Rename item `old` to `new` (its images and prompts); when `new` exists the two merge.
    /// Returns how many images and prompts were renamed (0: no such item).
    fn rename_item(&mut self, old: &str, new: &str) -> Result<usize, IndexError> {
        let new = check_label(new)?;
        let (tx, _) = self.begin_write()?;
        let sql = |e| classify(&self.dir, e);
        let mut n = tx
            .execute(
                "UPDATE items SET label = ?2 WHERE label = ?1",
                params![old, new],
            )
            .map_err(sql)?;
        n += tx
            .execute(
                "UPDATE OR REPLACE texts SET label = ?2 WHERE label = ?1",
                params![old, new],
            )
            .map_err(sql)?;
        bump_labels_generation(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(n)
    }

    /// Remove item `label`: its images and prompts, in one transaction. Returns how many.
    fn remove_item(&mut self, label: &str) -> Result<usize, IndexError> {
        let (tx, before) = self.begin_write()?;
        let sql = |e| classify(&self.dir, e);
        let ids: Vec<i64> = tx
            .prepare("DELETE FROM items WHERE label = ?1 RETURNING id")
            .map_err(sql)?
            .query_map([label], |r| r.get(0))
            .map_err(sql)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql)?;
        let texts = tx
            .execute("DELETE FROM texts WHERE label = ?1", [label])
            .map_err(sql)?;
        if !ids.is_empty() {
            bump_generation(&tx).map_err(sql)?;
        }
        bump_labels_generation(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
        self.exact_cache = None;
        if !ids.is_empty() && self.graph_follows(before) {
            self.forget_in_graph(&ids);
        }
        Ok(ids.len() + texts)
    }

    /// Every image's item and embedding (row-major), for calibration.
    fn labelled_embeddings(&self) -> Result<(Vec<String>, Vec<f32>), IndexError> {
        let snapshot = self.db.unchecked_transaction().map_err(self.sqlite_err())?;
        let (_, matrix) = self.all_embeddings()?;
        let labels: Vec<String> = snapshot
            .prepare("SELECT label FROM items ORDER BY id")
            .map_err(self.sqlite_err())?
            .query_map([], |r| r.get(0))
            .map_err(self.sqlite_err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sqlite_err())?;
        drop(snapshot);
        Ok((labels, matrix))
    }

    /// The decision `arvis index calibrate --save` stored, if any.
    fn stored_decision(&self) -> Result<Option<Decision>, IndexError> {
        let raw = meta_text_in(&self.db, "decision").map_err(self.sqlite_err())?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Store `decision` as this gallery's default.
    fn store_decision(&mut self, decision: &Decision) -> Result<(), IndexError> {
        let (tx, _) = self.begin_write()?;
        let sql = |e| classify(&self.dir, e);
        let value = serde_json::to_string(decision).map_err(|e| IndexError::Io {
            dir: self.dir.clone(),
            reason: e.to_string(),
        })?;
        set_meta_in(&tx, "decision", &value).map_err(sql)?;
        tx.commit().map_err(sql)
    }

    fn export(&self, after: i64, limit: usize) -> Result<Vec<(i64, NewItem)>, IndexError> {
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT id, path, size, mtime_ns, embedding, thumbnail, label FROM items
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(self.sqlite_err())?;
        let rows = stmt
            .query_map(params![after, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    NewItem {
                        path: path_from_value(r.get(1)?),
                        size: r.get::<_, i64>(2)? as u64,
                        mtime_ns: r.get(3)?,
                        embedding: bytes_to_f32s(&r.get::<_, Vec<u8>>(4)?),
                        thumbnail: r.get(5)?,
                        label: Some(r.get(6)?),
                        sha256: None,
                    },
                ))
            })
            .map_err(self.sqlite_err())?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.sqlite_err())
    }

    fn prompts(&self) -> Result<Vec<(String, String, Vec<f32>)>, IndexError> {
        self.read_prompts(&self.db)
    }

    fn describe(&self) -> Result<Vec<(&'static str, String)>, IndexError> {
        let n = self.len()?;
        let search = if n <= EXACT_SEARCH_MAX {
            format!("exact scan (up to {EXACT_SEARCH_MAX} images)")
        } else {
            "HNSW graph (usearch, cosine), cached in vectors.usearch".to_string()
        };
        Ok(vec![
            ("store", "directory (SQLite + usearch)".to_string()),
            ("search", search),
        ])
    }

    fn watch(&self) -> Result<Box<dyn ChangeWatch>, IndexError> {
        Ok(Box::new(DirWatch {
            db: self.dir.join(DB_FILE),
            conn: None,
            seen: Some((
                self.meta_i64("generation")?,
                self.meta_i64("labels_generation")?,
            )),
            next: Instant::now(),
        }))
    }
}

/// A directory's change counters, read from its database at most every [`DIR_WATCH_EVERY`].
struct DirWatch {
    db: PathBuf,
    conn: Option<Connection>,
    seen: Option<(i64, i64)>,
    next: Instant,
}

/// How often a directory watch reads the counters (a local read; a window never waits on it).
const DIR_WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl ChangeWatch for DirWatch {
    fn poll(&mut self) -> WatchEvent {
        if Instant::now() < self.next {
            return WatchEvent::Quiet;
        }
        self.next = Instant::now() + DIR_WATCH_EVERY;
        if self.conn.is_none() {
            self.conn =
                Connection::open_with_flags(&self.db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok();
        }
        let Some(db) = &self.conn else {
            return WatchEvent::Quiet;
        };
        // A failed read (the directory being replaced) is seen by the next use of the index.
        let Ok(now) =
            generation_in(db).and_then(|g| Ok((g, meta_i64_in(db, "labels_generation")?)))
        else {
            self.conn = None;
            return WatchEvent::Quiet;
        };
        if self.seen.replace(now) == Some(now) {
            WatchEvent::Quiet
        } else {
            WatchEvent::Changed
        }
    }
}

/// Write `ann` as the graph of `generation`, only if the database is still at that generation
/// with exactly the graph's number of rows (checked and recorded while holding SQLite's write
/// lock, so no other writer can commit in between). Returns whether it was saved.
fn persist_graph(
    db: &Connection,
    dir: &Path,
    ann: &Ann,
    generation: i64,
) -> Result<bool, IndexError> {
    let path = dir.join(ANN_FILE);
    let sql = |e| classify(dir, e);
    let io = |reason: String| IndexError::Io {
        dir: dir.to_path_buf(),
        reason,
    };
    let tx = rusqlite::Transaction::new_unchecked(db, rusqlite::TransactionBehavior::Immediate)
        .map_err(sql)?;
    let now = generation_in(&tx).map_err(sql)?;
    let rows: i64 = tx
        .query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0))
        .map_err(sql)?;
    if now != generation || rows as usize != ann.len() {
        tracing::debug!(
            generation,
            now,
            rows,
            graph = ann.len(),
            "not saving a graph that does not hold the database's rows"
        );
        return Ok(false);
    }
    let (tmp, sha) = ann.save_temp(&path).map_err(|e| io(e.to_string()))?;
    // Test hook: die between the complete temp file and the rename, as a kill there would.
    if crate::fault::is_set(crate::fault::ABORT_BEFORE_GRAPH_RENAME) {
        std::process::abort();
    }
    crate::util::fsync_and_rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e.to_string())
    })?;
    for (k, v) in [
        ("ann_generation", generation.to_string()),
        ("ann_sha256", sha),
    ] {
        set_meta_in(&tx, k, &v).map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(true)
}

/// A value kept in the meta table, read through `db` (or a transaction on it). Cached: every
/// search reads the generation (and matching the labels' one too).
fn meta_text_in(db: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    db.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// Set a value in the meta table (inside the caller's transaction).
fn set_meta_in(db: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    db.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute([key, value])
        .map(|_| ())
}

/// An integer kept in the meta table (0 when absent).
fn meta_i64_in(db: &Connection, key: &str) -> rusqlite::Result<i64> {
    Ok(meta_text_in(db, key)?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

fn generation_in(db: &Connection) -> rusqlite::Result<i64> {
    meta_i64_in(db, "generation")
}

/// A path as stored: TEXT when it is UTF-8 (every index before this stays valid), else a BLOB
/// of its exact bytes, so two names that differ only in invalid bytes never collapse into one
/// key and a stored path always opens the file it names.
fn path_value(path: &Path) -> Value {
    let bytes = path.as_os_str().as_encoded_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::Text(s.to_owned()),
        Err(_) => Value::Blob(bytes.to_vec()),
    }
}

fn path_from_value(v: Value) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    match v {
        Value::Text(s) => PathBuf::from(s),
        Value::Blob(b) => PathBuf::from(std::ffi::OsString::from_vec(b)),
        other => PathBuf::from(format!("{other:?}")),
    }
}

/// How an index is opened.
#[derive(Clone, Copy)]
enum Access<'a> {
    /// Searching, stats: never writes, works on a read-only gallery.
    Read,
    /// Changing an existing index.
    Write,
    /// Adding, creating the index for this model if there is none.
    Create(&'a IndexMeta),
}

/// Open `path` read-only. A WAL database needs its `-shm` file; in a directory this user may
/// not write (a read-only mount, another user's gallery) that file cannot be created, so the
/// database is then opened as immutable (no WAL at all) with a warning saying what that means.
fn open_read_only(dir: &Path, path: &Path) -> Result<Connection, IndexError> {
    let plain = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| classify(dir, e))?;
    let probe = |db: &Connection| {
        db.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
    };
    match probe(&plain) {
        Ok(_) => return Ok(plain),
        Err(e)
            if !matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
            ) =>
        {
            return Err(classify(dir, e));
        }
        Err(_) => {}
    }
    drop(plain);
    let mut uri = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                uri.push(char::from(*b));
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push_str("?immutable=1");
    let db = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| classify(dir, e))?;
    probe(&db).map_err(|e| classify(dir, e))?;
    eprintln!(
        "warning: {} is not writable by this user, so its write-ahead log cannot be shared; it is read as a snapshot (changes another process makes meanwhile are not seen). Fix, if that matters: give this user write access to the directory",
        dir.display()
    );
    Ok(db)
}

/// Give the images table its `label` column (version 2) unless it has one.
fn add_label_column(db: &Connection) -> rusqlite::Result<()> {
    let has_label = db
        .prepare("SELECT 1 FROM pragma_table_info('items') WHERE name = 'label'")?
        .exists([])?;
    if !has_label {
        db.execute_batch("ALTER TABLE items ADD COLUMN label TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

/// The item of each image of a version-1 index (`sql` selects id and path): each image its own
/// item, named by its stem, or by its whole path where stems collide.
fn legacy_labels(db: &Connection, sql: &str) -> rusqlite::Result<Vec<(i64, String)>> {
    let named: Vec<(i64, PathBuf, String)> = db
        .prepare(sql)?
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Value>(1)?)))?
        .map(|row| {
            row.map(|(id, v)| {
                let path = path_from_value(v);
                let stem = label_from_stem(&path);
                (id, path, stem)
            })
        })
        .collect::<rusqlite::Result<_>>()?;
    let mut stems: HashMap<&str, usize> = HashMap::new();
    for (_, _, stem) in &named {
        *stems.entry(stem.as_str()).or_default() += 1;
    }
    Ok(named
        .iter()
        .map(|(id, path, stem)| {
            let label = if stems.get(stem.as_str()) == Some(&1) {
                stem.clone()
            } else {
                check_label(&display_path(path)).unwrap_or_else(|_| stem.clone())
            };
            (*id, label)
        })
        .collect())
}

/// Read a version-1 index that this user cannot upgrade as version 2 would show it, without
/// writing a byte: temporary (per-connection, in memory) objects named like version 2's shadow
/// the old table — `items` gains each image's label, `texts` is empty.
fn read_as_upgraded(db: &Connection) -> rusqlite::Result<()> {
    let labels = legacy_labels(db, "SELECT id, path FROM main.items")?;
    db.execute_batch(
        "CREATE TEMP TABLE legacy_labels (id INTEGER PRIMARY KEY, label TEXT NOT NULL);
         CREATE TEMP TABLE texts (
             id INTEGER PRIMARY KEY, label TEXT NOT NULL, prompt TEXT NOT NULL,
             embedding BLOB NOT NULL, UNIQUE (label, prompt));",
    )?;
    {
        let mut put = db.prepare("INSERT INTO temp.legacy_labels (id, label) VALUES (?1, ?2)")?;
        for (id, label) in labels {
            put.execute(params![id, label])?;
        }
    }
    db.execute_batch(
        "CREATE TEMP VIEW items AS
             SELECT m.id, m.path, m.size, m.mtime_ns, m.embedding, m.thumbnail, l.label
             FROM main.items m JOIN temp.legacy_labels l ON l.id = m.id;",
    )
}

/// Upgrade a version-1 index to version 2 in one transaction: every image becomes its own item,
/// named by its file stem; embeddings, thumbnails and paths are untouched (so the vector graph
/// stays valid). A kill before the commit leaves version 1 as it was; the next open redoes it.
fn upgrade(db: &Connection) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(db, rusqlite::TransactionBehavior::Immediate)?;
    // Another process may have upgraded it while this one waited for the write lock.
    if meta_i64_in(&tx, "format_version")? >= FORMAT_VERSION {
        return Ok(());
    }
    add_label_column(&tx)?;
    // Test hook: die between the upgrade's statements, as a kill there would.
    if crate::fault::is_set(crate::fault::ABORT_MID_UPGRADE) {
        std::process::abort();
    }
    let labels = legacy_labels(&tx, "SELECT id, path FROM items WHERE label = ''")?;
    {
        let mut set = tx.prepare("UPDATE items SET label = ?2 WHERE id = ?1")?;
        for (id, label) in labels {
            set.execute(params![id, label])?;
        }
    }
    tx.execute_batch(SCHEMA_V2)?;
    set_meta_in(&tx, "format_version", &FORMAT_VERSION.to_string())?;
    tx.commit()
}

/// Count one more change in meta counter `key` (created at 1).
fn bump_counter(tx: &rusqlite::Transaction<'_>, key: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, '1')
         ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [key],
    )
    .map(|_| ())
}

/// A change to the images' embeddings (the vector graph follows the generation).
fn bump_generation(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    bump_counter(tx, "generation")
}

/// Label changes do not touch embeddings (the vector graph stays valid), so they move their own
/// counter; caches of labels key on both.
fn bump_labels_generation(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    bump_counter(tx, "labels_generation")
}

/// SQLite's "not a database" / "malformed" errors mean a damaged file: say so with the fix.
fn classify(dir: &Path, e: rusqlite::Error) -> IndexError {
    let corrupt = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    );
    if corrupt {
        IndexError::Corrupt {
            path: dir.join(DB_FILE),
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        }
    } else {
        IndexError::Sqlite {
            dir: dir.to_path_buf(),
            source: e,
        }
    }
}
