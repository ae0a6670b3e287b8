//! One gallery index directory: `index.sqlite` (truth) + `vectors.usearch` (HNSW cache).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sha2::Digest;

use super::ann::{Ann, Neighbour, exact_search};

const DB_FILE: &str = "index.sqlite";
const ANN_FILE: &str = "vectors.usearch";
const FORMAT_VERSION: i64 = 1;
/// Up to this many vectors, queries scan every embedding exactly (fast enough, and no recall loss).
pub const EXACT_SEARCH_MAX: usize = 10_000;

/// The embedding model an index was built with. Opening with another is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexMeta {
    /// Identity of the image encoder (name and content hash).
    pub model_id: String,
    pub preprocess_version: u32,
    pub dim: usize,
}

/// Why an index could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("no index at {0}. Fix: build one with `arvis index add --index {0} <folders>`")]
    Missing(PathBuf),
    #[error(
        "index {path} is damaged ({reason}). Fix: move it aside and rebuild with `arvis index add --index {dir} <folders>`"
    )]
    Corrupt {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    #[error(
        "index {dir} was built with CLIP model {index_model} (preprocessing v{index_pre}, {index_dim}-d), but the current model is {model} (v{pre}, {dim}-d); embeddings of different models cannot be compared. Fix: pass --clip-model for {index_model}, or use another --index directory"
    )]
    ModelMismatch {
        dir: PathBuf,
        index_model: String,
        index_pre: u32,
        index_dim: usize,
        model: String,
        pre: u32,
        dim: usize,
    },
    #[error("index {dir}: {source}")]
    Sqlite {
        dir: PathBuf,
        source: rusqlite::Error,
    },
    #[error("index {dir}: {reason}")]
    Io { dir: PathBuf, reason: String },
}

/// One image to add: where it is, its identity on disk, its embedding and thumbnail.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub embedding: Vec<f32>,
    /// Small JPEG for the UI.
    pub thumbnail: Vec<u8>,
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: i64,
    pub path: String,
    pub score: f32,
}

/// What `arvis index stats` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexStats {
    pub dir: String,
    pub count: usize,
    pub model_id: String,
    pub preprocess_version: u32,
    pub dim: usize,
    pub bytes_on_disk: u64,
    pub generation: i64,
}

/// An open gallery index.
pub struct GalleryIndex {
    dir: PathBuf,
    db: Connection,
    meta: IndexMeta,
    ann: Option<Ann>,
    /// Embeddings loaded for exact search (keys, row-major vectors), dropped on change.
    exact_cache: Option<(Vec<u64>, Vec<f32>)>,
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

    pub fn open(dir: &Path, meta: &IndexMeta) -> Result<GalleryIndex, IndexError> {
        if !dir.join(DB_FILE).is_file() {
            return Err(IndexError::Missing(dir.to_path_buf()));
        }
        let index = Self::open_db(dir, None)?;
        index.check_model(meta)?;
        Ok(index)
    }

    /// Open for adding, creating the index (for `meta`'s model) if it does not exist.
    pub fn open_or_create(dir: &Path, meta: &IndexMeta) -> Result<GalleryIndex, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Io {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let index = Self::open_db(dir, Some(meta))?;
        index.check_model(meta)?;
        Ok(index)
    }

    /// Open without a model check (stats, rm, prune need no encoder).
    pub fn open_any(dir: &Path) -> Result<GalleryIndex, IndexError> {
        if !dir.join(DB_FILE).is_file() {
            return Err(IndexError::Missing(dir.to_path_buf()));
        }
        Self::open_db(dir, None)
    }

    fn open_db(dir: &Path, create_for: Option<&IndexMeta>) -> Result<GalleryIndex, IndexError> {
        let path = dir.join(DB_FILE);
        let flags = if create_for.is_some() {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let db = Connection::open_with_flags(&path, flags).map_err(|e| classify(dir, e))?;
        let setup = || -> rusqlite::Result<()> {
            // WAL + synchronous=FULL: each committed batch survives a crash; readers never block.
            db.pragma_update(None, "journal_mode", "WAL")?;
            db.pragma_update(None, "synchronous", "FULL")?;
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS items (
                     id INTEGER PRIMARY KEY,
                     path TEXT NOT NULL UNIQUE,
                     size INTEGER NOT NULL,
                     mtime_ns INTEGER NOT NULL,
                     embedding BLOB NOT NULL,
                     thumbnail BLOB NOT NULL
                 );",
            )
        };
        setup().map_err(|e| classify(dir, e))?;
        let get = |key: &str| -> Result<Option<String>, IndexError> {
            db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(|e| classify(dir, e))
        };
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
                }
            }
            _ => match create_for {
                Some(m) => {
                    let tx = || -> rusqlite::Result<()> {
                        db.execute_batch("BEGIN IMMEDIATE")?;
                        for (k, v) in [
                            ("format_version", FORMAT_VERSION.to_string()),
                            ("model_id", m.model_id.clone()),
                            ("preprocess_version", m.preprocess_version.to_string()),
                            ("dim", m.dim.to_string()),
                            ("generation", "0".into()),
                        ] {
                            db.execute(
                                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                                params![k, v],
                            )?;
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
        Ok(GalleryIndex {
            dir: dir.to_path_buf(),
            db,
            meta,
            ann: None,
            exact_cache: None,
        })
    }

    fn check_model(&self, meta: &IndexMeta) -> Result<(), IndexError> {
        if self.meta == *meta {
            return Ok(());
        }
        Err(IndexError::ModelMismatch {
            dir: self.dir.clone(),
            index_model: self.meta.model_id.clone(),
            index_pre: self.meta.preprocess_version,
            index_dim: self.meta.dim,
            model: meta.model_id.clone(),
            pre: meta.preprocess_version,
            dim: meta.dim,
        })
    }

    /// The model this index was built with.
    pub fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn meta_i64(&self, key: &str) -> Result<i64, IndexError> {
        let v: Option<String> = self
            .db
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.sqlite_err())?;
        Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// Number of images.
    pub fn len(&self) -> Result<usize, IndexError> {
        let n: i64 = self
            .db
            .query_row("SELECT COUNT(*) FROM items", [], |r| r.get(0))
            .map_err(self.sqlite_err())?;
        Ok(n as usize)
    }

    pub fn is_empty(&self) -> Result<bool, IndexError> {
        Ok(self.len()? == 0)
    }

    /// Size and mtime recorded for `path`, if indexed.
    pub fn lookup(&self, path: &str) -> Result<Option<(u64, i64)>, IndexError> {
        self.db
            .query_row(
                "SELECT size, mtime_ns FROM items WHERE path = ?1",
                [path],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()
            .map_err(self.sqlite_err())
    }

    /// Insert or replace a batch in one transaction (all or nothing), then update the HNSW cache
    /// in memory. Call [`GalleryIndex::save`] to persist the cache.
    pub fn upsert_batch(&mut self, items: &[NewItem]) -> Result<(), IndexError> {
        if let Some(bad) = items.iter().find(|i| i.embedding.len() != self.meta.dim) {
            return Err(IndexError::Io {
                dir: self.dir.clone(),
                reason: format!(
                    "embedding of {} has {} dimensions, index has {}",
                    bad.path,
                    bad.embedding.len(),
                    self.meta.dim
                ),
            });
        }
        let tx = self.db.transaction().map_err(|e| classify(&self.dir, e))?;
        let mut ids = Vec::with_capacity(items.len());
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO items (path, size, mtime_ns, embedding, thumbnail) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                         embedding = excluded.embedding, thumbnail = excluded.thumbnail
                     RETURNING id",
                )
                .map_err(|e| classify(&self.dir, e))?;
            for item in items {
                let id: i64 = stmt
                    .query_row(
                        params![
                            item.path,
                            item.size as i64,
                            item.mtime_ns,
                            f32s_to_bytes(&item.embedding),
                            item.thumbnail
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
        if let Some(ann) = self.ann.as_mut() {
            for (id, item) in ids.iter().zip(items) {
                ann.upsert(*id as u64, &item.embedding)
                    .map_err(|e| IndexError::Io {
                        dir: self.dir.clone(),
                        reason: e.to_string(),
                    })?;
            }
        }
        Ok(())
    }

    /// Remove one image by path; true if it was there.
    pub fn remove(&mut self, path: &str) -> Result<bool, IndexError> {
        let tx = self.db.transaction().map_err(|e| classify(&self.dir, e))?;
        let id: Option<i64> = tx
            .query_row(
                "DELETE FROM items WHERE path = ?1 RETURNING id",
                [path],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| classify(&self.dir, e))?;
        if id.is_some() {
            bump_generation(&tx).map_err(|e| classify(&self.dir, e))?;
        }
        tx.commit().map_err(|e| classify(&self.dir, e))?;
        if let (Some(id), Some(ann)) = (id, self.ann.as_mut()) {
            let _ = ann.remove(id as u64);
        }
        self.exact_cache = None;
        Ok(id.is_some())
    }

    /// Every indexed path.
    pub fn paths(&self) -> Result<Vec<String>, IndexError> {
        let mut stmt = self
            .db
            .prepare("SELECT path FROM items ORDER BY path")
            .map_err(self.sqlite_err())?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(self.sqlite_err())?;
        rows.collect::<Result<_, _>>().map_err(self.sqlite_err())
    }

    /// Thumbnail JPEG of an item.
    pub fn thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>, IndexError> {
        self.db
            .query_row("SELECT thumbnail FROM items WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.sqlite_err())
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
        if self.ann.is_none() {
            self.ann = Some(self.load_or_rebuild_ann()?);
        }
        self.ann.as_ref().ok_or_else(|| IndexError::Io {
            dir: self.dir.clone(),
            reason: "vector index unavailable".into(),
        })
    }

    fn load_or_rebuild_ann(&mut self) -> Result<Ann, IndexError> {
        let path = self.dir.join(ANN_FILE);
        let generation = self.meta_i64("generation")?;
        let recorded = self.meta_i64("ann_generation")?;
        let expected_sha: Option<String> = self
            .db
            .query_row("SELECT value FROM meta WHERE key = 'ann_sha256'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.sqlite_err())?;
        if recorded == generation
            && let Some(expected) = expected_sha
            && path.is_file()
            // Verify the bytes before the C++ loader sees them: a damaged file must never crash us.
            && sha256_file(&path).is_ok_and(|actual| actual == expected)
            && let Ok(ann) = Ann::load(&path, self.meta.dim)
        {
            return Ok(ann);
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
        self.persist_ann(&ann, generation)?;
        Ok(ann)
    }

    fn persist_ann(&self, ann: &Ann, generation: i64) -> Result<(), IndexError> {
        let path = self.dir.join(ANN_FILE);
        let io = |reason: String| IndexError::Io {
            dir: self.dir.clone(),
            reason,
        };
        ann.save_atomic(&path).map_err(|e| io(e.to_string()))?;
        let sha = sha256_file(&path).map_err(|e| io(e.to_string()))?;
        // Recorded after the file is in place: a crash in between just means a rebuild next time.
        self.db
            .execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 INSERT OR REPLACE INTO meta (key, value) VALUES ('ann_generation', '{generation}');
                 INSERT OR REPLACE INTO meta (key, value) VALUES ('ann_sha256', '{sha}');
                 COMMIT;"
            ))
            .map_err(self.sqlite_err())
    }

    /// Persist the HNSW cache for the current generation (after a batch of changes).
    pub fn save(&mut self) -> Result<(), IndexError> {
        let generation = self.meta_i64("generation")?;
        if self.meta_i64("ann_generation")? == generation && self.dir.join(ANN_FILE).is_file() {
            return Ok(());
        }
        if let Some(ann) = self.ann.take() {
            let result = self.persist_ann(&ann, generation);
            self.ann = Some(ann);
            result
        } else {
            self.ann().map(|_| ())
        }
    }

    /// Load the HNSW cache now (so later upserts update it in memory).
    pub fn prepare_ann(&mut self) -> Result<(), IndexError> {
        self.ann().map(|_| ())
    }

    /// The `k` most similar images to a unit query. Exact for small indexes or when asked.
    pub fn search(&mut self, query: &[f32], k: usize, exact: bool) -> Result<Vec<Hit>, IndexError> {
        let count = self.len()?;
        let neighbours: Vec<Neighbour> = if exact || count <= EXACT_SEARCH_MAX {
            if self.exact_cache.is_none() {
                self.exact_cache = Some(self.all_embeddings()?);
            }
            let (keys, matrix) = self
                .exact_cache
                .as_ref()
                .map(|(k, m)| (k.as_slice(), m.as_slice()))
                .unwrap_or_default();
            exact_search(matrix, keys, self.meta.dim, query, k)
        } else {
            let dir = self.dir.clone();
            self.ann()?.search(query, k).map_err(|e| IndexError::Io {
                dir,
                reason: e.to_string(),
            })?
        };
        let mut stmt = self
            .db
            .prepare_cached("SELECT path FROM items WHERE id = ?1")
            .map_err(|e| classify(&self.dir, e))?;
        neighbours
            .into_iter()
            .map(|n| {
                let path: String = stmt
                    .query_row([n.key as i64], |r| r.get(0))
                    .map_err(|e| classify(&self.dir, e))?;
                Ok(Hit {
                    id: n.key as i64,
                    path,
                    score: n.score,
                })
            })
            .collect()
    }

    /// Counts and sizes for `arvis index stats`.
    pub fn stats(&self) -> Result<IndexStats, IndexError> {
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
        })
    }
}

fn bump_generation(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'",
        [],
    )
    .map(|_| ())
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

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
