//! A gallery shared by many machines: one catalogue in a PostgreSQL database with pgvector.
//!
//! Each catalogue is a schema (`?catalogue=NAME`, default `arvis`) holding `meta` (model
//! identity, format version, change counters), `images` (one row per distinct file content:
//! sha256, item label, `vector(D)` embedding under an HNSW index with cosine distance,
//! thumbnail, the host and path it was first added from), `sources` (every host and path an
//! image was added from, with the size and mtime that let a re-run skip it) and `texts`. Every
//! change is one transaction that bumps a counter and sends `NOTIFY arvis_catalogue` so that
//! other windows reload. There is no writer lock: two machines adding the same photo meet in
//! the `images.sha256` unique constraint and the photo is stored once.

mod tls;
pub mod url;
mod watch;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pgvector::Vector;
use postgres::Client;
use postgres::error::SqlState;

pub use url::{CatalogueUrl, DEFAULT_CATALOGUE, DEFAULT_EF_SEARCH, TlsMode};

use super::index::{Hit, IndexError, IndexMeta, IndexStats, ItemSummary, NewItem, WriteLock};
use super::items::{Decision, TextItem, check_label, label_from_stem};
use super::store::{ChangeWatch, GalleryLocation, GalleryStore};
use crate::paths::display_path;

/// The catalogue schema this build writes; a newer one is refused.
pub const CATALOGUE_FORMAT: i64 = 1;
/// The channel every change is announced on (the payload names the catalogue).
pub const CHANGE_CHANNEL: &str = "arvis_catalogue";

/// Why a catalogue could not be reached, opened or changed. Every message names the server
/// and database with the password masked, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The URL is not one arvis can use.
    #[error("bad catalogue URL {url}: {reason}")]
    BadUrl {
        /// The URL, masked.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached.
    #[error(
        "cannot reach the catalogue server {server} ({reason}). Fix: check that PostgreSQL is running there and that the host and port in {url} are right"
    )]
    Unreachable {
        /// The URL, masked.
        url: String,
        /// host:port.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server refused the role or its password.
    #[error(
        "the catalogue server {server} refused user {user} ({reason}). Fix: check the user and password (in the URL, PGPASSWORD or ~/.pgpass) and the server's pg_hba.conf"
    )]
    Auth {
        /// host:port.
        server: String,
        /// The role.
        user: String,
        /// The server's words.
        reason: String,
    },
    /// The database does not exist.
    #[error(
        "database {database} does not exist on {server}. Fix: create it (`createdb {database}`) or name an existing one in {url}"
    )]
    NoDatabase {
        /// The URL, masked.
        url: String,
        /// host:port.
        server: String,
        /// The database.
        database: String,
    },
    /// pgvector is not installed or may not be enabled by this role.
    #[error(
        "the pgvector extension is not available in database {database} on {server} ({reason}). Fix: install pgvector on the server and run `CREATE EXTENSION vector;` in {database} as its owner or a superuser"
    )]
    NoExtension {
        /// host:port.
        server: String,
        /// The database.
        database: String,
        /// The server's words.
        reason: String,
    },
    /// The role may read but not change the catalogue.
    #[error(
        "user {user} may not change catalogue {catalogue} on {server} ({reason}); searching it still works. Fix: use a role with write rights, or `GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {catalogue} TO {user}`"
    )]
    ReadOnly {
        /// host:port.
        server: String,
        /// The role.
        user: String,
        /// The catalogue (schema).
        catalogue: String,
        /// The server's words.
        reason: String,
    },
    /// The connection was lost during a command.
    #[error(
        "lost the connection to the catalogue server {server} ({reason}); a change in progress was rolled back as a whole. Fix: run the command again once the server is back"
    )]
    Lost {
        /// host:port.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server refused a statement.
    #[error("catalogue {url}: {reason}")]
    Server {
        /// The URL, masked.
        url: String,
        /// The server's words.
        reason: String,
    },
}

/// How a catalogue is opened.
#[derive(Clone, Copy)]
pub enum Access<'a> {
    /// Searching with this model.
    Read(&'a IndexMeta),
    /// Reading without a model check.
    ReadAny,
    /// Changing an existing catalogue.
    Write,
    /// Adding, creating the catalogue for this model when it does not exist.
    Create(&'a IndexMeta),
}

/// Images per item and the text items, keyed by the (generation, labels generation) they hold.
type LabelsCache = ((i64, i64), HashMap<String, usize>, Vec<TextItem>);

/// An open catalogue.
pub struct PgCatalogue {
    url: CatalogueUrl,
    /// The connection; `None` after it was lost, reconnected by the next call.
    db: RefCell<Option<Client>>,
    meta: IndexMeta,
    read_only: bool,
    /// This machine's name, recorded with every path added from it.
    host: String,
    labels_cache: Option<LabelsCache>,
}

impl PgCatalogue {
    /// Connect and open the catalogue `url` names.
    pub fn open(url: &CatalogueUrl, access: Access<'_>) -> Result<PgCatalogue, IndexError> {
        let mut db = connect(url)?;
        let s = &url.schema;
        let table = |db: &mut Client| -> Result<bool, postgres::Error> {
            let row = db.query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{s}.meta")],
            )?;
            row.try_get(0)
        };
        let mut exists = table(&mut db).map_err(|e| classify(url, e))?;
        if !exists && let Access::Create(meta) = access {
            create(url, &mut db, meta)?;
            exists = true;
        }
        if !exists {
            return Err(IndexError::Missing(url.masked()));
        }
        let meta = read_meta(url, &mut db)?;
        if let Access::Read(wanted) | Access::Create(wanted) = access {
            meta.require_same(wanted, url.masked())?;
        }
        Ok(PgCatalogue {
            url: url.clone(),
            db: RefCell::new(Some(db)),
            meta,
            read_only: matches!(access, Access::Read(_) | Access::ReadAny),
            host: host_name(),
            labels_cache: None,
        })
    }

    /// The catalogue's URL.
    pub fn url(&self) -> &CatalogueUrl {
        &self.url
    }

    /// `f` on the connection (reconnecting first when the last one was lost). An error that
    /// means the connection is gone drops it, so the next call reconnects: a restarted server
    /// is picked up without reopening the catalogue.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&mut Client, &str) -> Result<T, postgres::Error>,
    ) -> Result<T, IndexError> {
        let mut slot = self.db.borrow_mut();
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            *slot = Some(connect(&self.url).map_err(IndexError::from)?);
        }
        let Some(db) = slot.as_mut() else {
            return Err(lost(&self.url, "no connection".into()).into());
        };
        match f(db, &self.url.schema) {
            Ok(v) => Ok(v),
            Err(e) => {
                if db.is_closed() || e.is_closed() || e.as_db_error().is_none() {
                    *slot = None;
                }
                Err(classify(&self.url, e).into())
            }
        }
    }

    fn refuse_if_read_only(&self) -> Result<(), IndexError> {
        if self.read_only {
            return Err(IndexError::Io {
                dir: PathBuf::from(self.url.masked()),
                reason: "opened read-only; this change needs the catalogue opened for writing"
                    .into(),
            });
        }
        Ok(())
    }

    /// A change: `f` in one transaction that also bumps `counter` and announces the change.
    fn change<T>(
        &mut self,
        counter: &[&str],
        f: impl FnOnce(&mut postgres::Transaction<'_>, &str, &str) -> Result<T, postgres::Error>,
    ) -> Result<T, IndexError> {
        self.refuse_if_read_only()?;
        let host = self.host.clone();
        self.with_db(|db, s| {
            let mut tx = db.transaction()?;
            let out = f(&mut tx, s, &host)?;
            for key in counter {
                tx.execute(
                    &format!(
                        "UPDATE {s}.meta SET value = (value::bigint + 1)::text WHERE key = $1"
                    ),
                    &[key],
                )?;
            }
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANGE_CHANNEL, &s])?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn meta_value(&self, key: &str) -> Result<Option<String>, IndexError> {
        self.with_db(|db, s| {
            let row = db.query_opt(
                &format!("SELECT value FROM {s}.meta WHERE key = $1"),
                &[&key],
            )?;
            row.map(|r| r.try_get(0)).transpose()
        })
    }

    /// (generation, labels generation): what caches of this catalogue key on.
    fn generations(&self) -> Result<(i64, i64), IndexError> {
        self.with_db(|db, s| {
            let row = db.query_one(
                &format!(
                    "SELECT (SELECT value FROM {s}.meta WHERE key = 'generation')::bigint,
                            (SELECT value FROM {s}.meta WHERE key = 'labels_generation')::bigint"
                ),
                &[],
            )?;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })
    }

    /// A stored path for display: as it is when it was added on this machine, else `host:path`.
    fn shown(&self, host: &str, path: &[u8]) -> String {
        let path = display_path(&path_from_bytes(path));
        if host == self.host {
            path
        } else {
            format!("{host}:{path}")
        }
    }

    /// An image's path from a row whose columns 1–3 are (this machine's source path or NULL,
    /// added_host, added_path): a path on this machine opens the file; another machine's is
    /// only a name (`host:path`).
    fn local_path(&self, r: &postgres::Row) -> Result<PathBuf, postgres::Error> {
        Ok(match r.try_get::<_, Option<Vec<u8>>>(1)? {
            Some(p) => path_from_bytes(p),
            None => {
                PathBuf::from(self.shown(&r.try_get::<_, String>(2)?, &r.try_get::<_, Vec<u8>>(3)?))
            }
        })
    }

    fn check_dim(&self, what: &str, len: usize) -> Result<(), IndexError> {
        if len == self.meta.dim {
            return Ok(());
        }
        Err(IndexError::Io {
            dir: PathBuf::from(self.url.masked()),
            reason: format!(
                "{what} has {len} dimensions, the catalogue holds {}-d embeddings. Fix: use the catalogue's CLIP model",
                self.meta.dim
            ),
        })
    }
}

impl GalleryStore for PgCatalogue {
    fn location(&self) -> GalleryLocation {
        GalleryLocation::Catalogue(Box::new(self.url.clone()))
    }

    fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    fn wants_content_hash(&self) -> bool {
        true
    }

    fn lock_for_writing(
        &self,
        _on_wait: &mut dyn FnMut(),
    ) -> Result<Option<WriteLock>, IndexError> {
        Ok(None)
    }

    fn len(&self) -> Result<usize, IndexError> {
        self.with_db(|db, s| {
            let n: i64 = db
                .query_one(&format!("SELECT count(*) FROM {s}.images"), &[])?
                .try_get(0)?;
            Ok(n as usize)
        })
    }

    fn lookup(&self, path: &Path) -> Result<Option<(u64, i64)>, IndexError> {
        let key = path_bytes(path);
        self.with_db(|db, s| {
            let row = db.query_opt(
                &format!("SELECT size, mtime_ns FROM {s}.sources WHERE host = $1 AND path = $2"),
                &[&self.host, &key],
            )?;
            row.map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?)))
                .transpose()
        })
    }

    fn label_of(&self, path: &Path) -> Result<Option<String>, IndexError> {
        let key = path_bytes(path);
        self.with_db(|db, s| {
            let row = db.query_opt(
                &format!(
                    "SELECT i.label FROM {s}.sources src JOIN {s}.images i ON i.id = src.image_id
                     WHERE src.host = $1 AND src.path = $2"
                ),
                &[&self.host, &key],
            )?;
            row.map(|r| r.try_get(0)).transpose()
        })
    }

    fn upsert_batch(&mut self, items: &[NewItem]) -> Result<(), IndexError> {
        let mut rows = Vec::with_capacity(items.len());
        for item in items {
            self.check_dim(
                &format!("the embedding of {}", display_path(&item.path)),
                item.embedding.len(),
            )?;
            let Some(sha) = item.sha256.clone() else {
                return Err(IndexError::Io {
                    dir: PathBuf::from(self.url.masked()),
                    reason: format!("{} has no content hash", display_path(&item.path)),
                });
            };
            let label = match &item.label {
                Some(l) => check_label(l)?,
                None => label_from_stem(&item.path),
            };
            rows.push((sha, label, item));
        }
        // One order for every writer's row locks: two batches sharing photos never deadlock.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        self.change(&["generation"], |tx, s, host| {
            let insert = tx.prepare(&format!(
                "INSERT INTO {s}.images (sha256, label, embedding, thumbnail, added_host, added_path)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (sha256) DO UPDATE
                     SET label = CASE WHEN $7 THEN excluded.label ELSE {s}.images.label END
                 RETURNING id"
            ))?;
            let previous = tx.prepare(&format!(
                "SELECT image_id FROM {s}.sources WHERE host = $1 AND path = $2 FOR UPDATE"
            ))?;
            let source = tx.prepare(&format!(
                "INSERT INTO {s}.sources (host, path, image_id, size, mtime_ns) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (host, path) DO UPDATE
                     SET image_id = excluded.image_id, size = excluded.size, mtime_ns = excluded.mtime_ns"
            ))?;
            let orphan = tx.prepare(&format!(
                "DELETE FROM {s}.images i WHERE i.id = $1
                 AND NOT EXISTS (SELECT 1 FROM {s}.sources WHERE image_id = $1)"
            ))?;
            for (sha, label, item) in &rows {
                let path = path_bytes(&item.path);
                let id: i64 = tx
                    .query_one(
                        &insert,
                        &[
                            sha,
                            label,
                            &Vector::from(item.embedding.clone()),
                            &item.thumbnail,
                            &host,
                            &path,
                            &item.label.is_some(),
                        ],
                    )?
                    .try_get(0)?;
                let before: Option<i64> = tx
                    .query_opt(&previous, &[&host, &path])?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                tx.execute(&source, &[&host, &path, &id, &(item.size as i64), &item.mtime_ns])?;
                // The file at this path changed: its old content goes unless another path has it.
                if let Some(old) = before.filter(|old| *old != id) {
                    tx.execute(&orphan, &[&old])?;
                }
            }
            Ok(())
        })
    }

    fn remove(&mut self, path: &Path) -> Result<bool, IndexError> {
        let key = path_bytes(path);
        // This file's record goes; the image goes with its last one (the same photo may still
        // be in another folder, or on another machine that has not pruned it).
        self.change(&["generation"], |tx, s, host| {
            let Some(row) = tx.query_opt(
                &format!(
                    "DELETE FROM {s}.sources WHERE host = $1 AND path = $2 RETURNING image_id"
                ),
                &[&host, &key],
            )?
            else {
                return Ok(false);
            };
            let id: i64 = row.try_get(0)?;
            tx.execute(
                &format!(
                    "DELETE FROM {s}.images WHERE id = $1
                       AND NOT EXISTS (SELECT 1 FROM {s}.sources WHERE image_id = $1)"
                ),
                &[&id],
            )?;
            // Shown from a file that is still there.
            tx.execute(
                &format!(
                    "UPDATE {s}.images i SET (added_host, added_path) =
                         (SELECT host, path FROM {s}.sources WHERE image_id = i.id
                          ORDER BY host, path LIMIT 1)
                     WHERE i.id = $1 AND i.added_host = $2 AND i.added_path = $3"
                ),
                &[&id, &host, &key],
            )?;
            Ok(true)
        })
    }

    fn paths(&self) -> Result<Vec<PathBuf>, IndexError> {
        self.with_db(|db, s| {
            db.query(
                &format!("SELECT path FROM {s}.sources WHERE host = $1 ORDER BY path"),
                &[&self.host],
            )?
            .iter()
            .map(|r| Ok(path_from_bytes(r.try_get::<_, Vec<u8>>(0)?)))
            .collect()
        })
    }

    fn thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>, IndexError> {
        self.with_db(|db, s| {
            db.query_opt(
                &format!("SELECT thumbnail FROM {s}.images WHERE id = $1"),
                &[&id],
            )?
            .map(|r| r.try_get(0))
            .transpose()
        })
    }

    fn prepare_ann(&mut self) -> Result<(), IndexError> {
        Ok(())
    }

    fn save(&mut self) -> Result<(), IndexError> {
        Ok(())
    }

    fn search(&mut self, query: &[f32], k: usize, exact: bool) -> Result<Vec<Hit>, IndexError> {
        self.check_dim("the query", query.len())?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let ef = self.url.ef_search.max(k as u32);
        let query = Vector::from(query.to_vec());
        let rows = self.with_db(|db, s| {
            let sql = format!(
                "SELECT id, label, added_host, added_path, (embedding <=> $1)::real
                 FROM {s}.images ORDER BY embedding <=> $1 LIMIT $2"
            );
            // The connection's own ef_search (set when it was opened) serves most queries.
            if !exact && ef == self.url.ef_search {
                return db.query(&sql, &[&query, &(k as i64)]);
            }
            // Settings that hold for this query only.
            let mut tx = db.transaction()?;
            if exact {
                tx.batch_execute("SET LOCAL enable_indexscan = off")?;
            } else {
                tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}"))?;
            }
            let rows = tx.query(&sql, &[&query, &(k as i64)])?;
            tx.commit()?;
            Ok(rows)
        })?;
        rows.iter()
            .map(|r| {
                let host: String = r.try_get(2)?;
                let path: Vec<u8> = r.try_get(3)?;
                let distance: f32 = r.try_get(4)?;
                Ok(Hit {
                    id: r.try_get(0)?,
                    label: r.try_get(1)?,
                    path: self.shown(&host, &path),
                    score: 1.0 - distance,
                })
            })
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| classify(&self.url, e).into())
    }

    fn stats(&self) -> Result<IndexStats, IndexError> {
        let (count, items, prompts, bytes, generation) = self.with_db(|db, s| {
            let r = db.query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {s}.images),
                            (SELECT count(*) FROM (SELECT label FROM {s}.images
                                                   UNION SELECT label FROM {s}.texts) l),
                            (SELECT count(*) FROM {s}.texts),
                            (SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint
                               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE n.nspname = $1 AND c.relkind = 'r'),
                            (SELECT value FROM {s}.meta WHERE key = 'generation')::bigint"
                ),
                &[&s],
            )?;
            Ok((
                r.try_get::<_, i64>(0)?,
                r.try_get::<_, i64>(1)?,
                r.try_get::<_, i64>(2)?,
                r.try_get::<_, i64>(3)?,
                r.try_get::<_, i64>(4)?,
            ))
        })?;
        Ok(IndexStats {
            dir: self.url.masked(),
            count: count as usize,
            model_id: self.meta.model_id.clone(),
            preprocess_version: self.meta.preprocess_version,
            dim: self.meta.dim,
            bytes_on_disk: bytes as u64,
            generation,
            items: items as usize,
            prompts: prompts as usize,
            decision: self.stored_decision()?,
        })
    }

    fn items(&self) -> Result<Vec<ItemSummary>, IndexError> {
        let rows = self.with_db(|db, s| {
            db.query(
                &format!(
                    "SELECT g.label, g.images, g.prompts, g.first, i.added_host, i.added_path FROM (
                         SELECT label, sum(images)::bigint AS images, sum(prompts)::bigint AS prompts,
                                min(first) AS first FROM (
                             SELECT label, count(*) AS images, 0::bigint AS prompts, min(id) AS first
                                 FROM {s}.images GROUP BY label
                             UNION ALL
                             SELECT label, 0, count(*), NULL FROM {s}.texts GROUP BY label
                         ) u GROUP BY label
                     ) g LEFT JOIN {s}.images i ON i.id = g.first ORDER BY g.label COLLATE \"C\""
                ),
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                let host: Option<String> = r.try_get(4)?;
                let path: Option<Vec<u8>> = r.try_get(5)?;
                Ok(ItemSummary {
                    label: r.try_get(0)?,
                    images: r.try_get::<_, i64>(1)? as usize,
                    prompts: r.try_get::<_, i64>(2)? as usize,
                    thumbnail_id: r.try_get(3)?,
                    thumbnail: host.zip(path).map(|(h, p)| self.shown(&h, &p)),
                })
            })
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| classify(&self.url, e).into())
    }

    fn item_images(&self, label: &str) -> Result<Vec<(i64, PathBuf)>, IndexError> {
        let rows = self.with_db(|db, s| {
            db.query(
                &format!(
                    "SELECT i.id, local.path, i.added_host, i.added_path FROM {s}.images i
                     LEFT JOIN LATERAL (SELECT path FROM {s}.sources
                                        WHERE image_id = i.id AND host = $2
                                        ORDER BY path LIMIT 1) local ON true
                     WHERE i.label = $1 ORDER BY i.id"
                ),
                &[&label, &self.host],
            )
        })?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, self.local_path(r)?)))
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| classify(&self.url, e).into())
    }

    fn labels(&mut self) -> Result<(&HashMap<String, usize>, &[TextItem]), IndexError> {
        let key = self.generations()?;
        if self.labels_cache.as_ref().is_none_or(|(k, _, _)| *k != key) {
            let dim = self.meta.dim;
            let (key, counts, prompts) = self.with_db(|db, s| {
                // One snapshot: the counts, prompts and generations agree.
                let mut tx = db
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                let g = tx.query_one(
                    &format!(
                        "SELECT (SELECT value FROM {s}.meta WHERE key = 'generation')::bigint,
                                (SELECT value FROM {s}.meta WHERE key = 'labels_generation')::bigint"
                    ),
                    &[],
                )?;
                let counts = tx
                    .query(&format!("SELECT label, count(*) FROM {s}.images GROUP BY label"), &[])?
                    .iter()
                    .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)? as usize)))
                    .collect::<Result<HashMap<_, _>, postgres::Error>>()?;
                let prompts = tx
                    .query(
                        &format!(
                            "SELECT label, prompt, embedding FROM {s}.texts
                             ORDER BY label COLLATE \"C\", id"
                        ),
                        &[],
                    )?
                    .iter()
                    .map(|r| {
                        let v: Vector = r.try_get(2)?;
                        Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?, v.to_vec()))
                    })
                    .collect::<Result<Vec<_>, postgres::Error>>()?;
                tx.commit()?;
                Ok(((g.try_get(0)?, g.try_get(1)?), counts, prompts))
            })?;
            if let Some((label, _, v)) = prompts.iter().find(|(_, _, v)| v.len() != dim) {
                return Err(IndexError::Io {
                    dir: PathBuf::from(self.url.masked()),
                    reason: format!("text item {label:?} has a {}-d embedding", v.len()),
                });
            }
            self.labels_cache = Some((key, counts, TextItem::from_prompts(prompts)));
        }
        match &self.labels_cache {
            Some((_, counts, texts)) => Ok((counts, texts.as_slice())),
            None => Err(lost(&self.url, "item labels unavailable".into()).into()),
        }
    }

    fn add_text(&mut self, label: &str, prompt: &str, embedding: &[f32]) -> Result<(), IndexError> {
        let label = check_label(label)?;
        self.check_dim("the text embedding", embedding.len())?;
        let v = Vector::from(embedding.to_vec());
        self.change(&["labels_generation"], |tx, s, _| {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.texts (label, prompt, embedding) VALUES ($1, $2, $3)
                     ON CONFLICT (label, prompt) DO UPDATE SET embedding = excluded.embedding"
                ),
                &[&label, &prompt, &v],
            )?;
            Ok(())
        })
    }

    fn set_label(&mut self, paths: &[PathBuf], label: &str) -> Result<Vec<bool>, IndexError> {
        let label = check_label(label)?;
        self.change(&["labels_generation"], |tx, s, host| {
            let stmt = tx.prepare(&format!(
                "UPDATE {s}.images SET label = $3 WHERE id =
                     (SELECT image_id FROM {s}.sources WHERE host = $1 AND path = $2)"
            ))?;
            paths
                .iter()
                .map(|p| Ok(tx.execute(&stmt, &[&host, &path_bytes(p), &label])? > 0))
                .collect()
        })
    }

    fn rename_item(&mut self, old: &str, new: &str) -> Result<usize, IndexError> {
        let new = check_label(new)?;
        self.change(&["labels_generation"], |tx, s, _| {
            let mut n = tx.execute(
                &format!("UPDATE {s}.images SET label = $2 WHERE label = $1"),
                &[&old, &new],
            )?;
            // A prompt both items have is kept once (as SQLite's UPDATE OR REPLACE does).
            tx.execute(
                &format!(
                    "DELETE FROM {s}.texts t WHERE t.label = $2
                     AND EXISTS (SELECT 1 FROM {s}.texts o WHERE o.label = $1 AND o.prompt = t.prompt)"
                ),
                &[&old, &new],
            )?;
            n += tx.execute(
                &format!("UPDATE {s}.texts SET label = $2 WHERE label = $1"),
                &[&old, &new],
            )?;
            Ok(n as usize)
        })
    }

    fn remove_item(&mut self, label: &str) -> Result<usize, IndexError> {
        self.change(&["generation", "labels_generation"], |tx, s, _| {
            let images = tx.execute(
                &format!("DELETE FROM {s}.images WHERE label = $1"),
                &[&label],
            )?;
            let texts = tx.execute(
                &format!("DELETE FROM {s}.texts WHERE label = $1"),
                &[&label],
            )?;
            Ok((images + texts) as usize)
        })
    }

    fn labelled_embeddings(&self) -> Result<(Vec<String>, Vec<f32>), IndexError> {
        let rows = self.with_db(|db, s| {
            db.query(
                &format!("SELECT label, embedding FROM {s}.images ORDER BY id"),
                &[],
            )
        })?;
        let mut labels = Vec::with_capacity(rows.len());
        let mut matrix = Vec::with_capacity(rows.len() * self.meta.dim);
        for r in &rows {
            let v: Vector = r.try_get(1).map_err(|e| classify(&self.url, e))?;
            labels.push(r.try_get(0).map_err(|e| classify(&self.url, e))?);
            matrix.extend_from_slice(v.as_slice());
        }
        Ok((labels, matrix))
    }

    fn stored_decision(&self) -> Result<Option<Decision>, IndexError> {
        Ok(self
            .meta_value("decision")?
            .and_then(|r| serde_json::from_str(&r).ok()))
    }

    fn store_decision(&mut self, decision: &Decision) -> Result<(), IndexError> {
        let value = serde_json::to_string(decision).map_err(|e| IndexError::Io {
            dir: PathBuf::from(self.url.masked()),
            reason: e.to_string(),
        })?;
        self.change(&[], |tx, s, _| {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.meta (key, value) VALUES ('decision', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                &[&value],
            )?;
            Ok(())
        })
    }

    fn export(&self, after: i64, limit: usize) -> Result<Vec<(i64, NewItem)>, IndexError> {
        let rows = self.with_db(|db, s| {
            db.query(
                &format!(
                    "SELECT i.id, local.path, i.added_host, i.added_path,
                            COALESCE(local.size, added.size, 0), COALESCE(local.mtime_ns, added.mtime_ns, 0),
                            i.embedding, i.thumbnail, i.label, i.sha256
                     FROM {s}.images i
                     LEFT JOIN LATERAL (SELECT path, size, mtime_ns FROM {s}.sources
                                        WHERE image_id = i.id AND host = $3
                                        ORDER BY path LIMIT 1) local ON true
                     LEFT JOIN {s}.sources added
                            ON added.host = i.added_host AND added.path = i.added_path
                     WHERE i.id > $1 ORDER BY i.id LIMIT $2"
                ),
                &[&after, &(limit as i64), &self.host],
            )
        })?;
        rows.iter()
            .map(|r| {
                let path = self.local_path(r)?;
                let embedding: Vector = r.try_get(6)?;
                Ok((
                    r.try_get(0)?,
                    NewItem {
                        path,
                        size: r.try_get::<_, i64>(4)? as u64,
                        mtime_ns: r.try_get(5)?,
                        embedding: embedding.to_vec(),
                        thumbnail: r.try_get(7)?,
                        label: Some(r.try_get(8)?),
                        sha256: Some(r.try_get(9)?),
                    },
                ))
            })
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| classify(&self.url, e).into())
    }

    fn prompts(&self) -> Result<Vec<(String, String, Vec<f32>)>, IndexError> {
        self.with_db(|db, s| {
            db.query(
                &format!(
                    "SELECT label, prompt, embedding FROM {s}.texts ORDER BY label COLLATE \"C\", id"
                ),
                &[],
            )?
            .iter()
            .map(|r| {
                let v: Vector = r.try_get(2)?;
                Ok((r.try_get(0)?, r.try_get(1)?, v.to_vec()))
            })
            .collect()
        })
    }

    fn describe(&self) -> Result<Vec<(&'static str, String)>, IndexError> {
        let (server, vector, index) = self.with_db(|db, s| {
            let r = db.query_one(
                "SELECT current_setting('server_version'),
                        (SELECT extversion FROM pg_extension WHERE extname = 'vector'),
                        (SELECT indexdef FROM pg_indexes
                          WHERE schemaname = $1 AND indexname = 'images_embedding')",
                &[&s],
            )?;
            Ok((
                r.try_get::<_, String>(0)?,
                r.try_get::<_, Option<String>>(1)?,
                r.try_get::<_, Option<String>>(2)?,
            ))
        })?;
        // "CREATE INDEX images_embedding ON s.images USING hnsw (embedding vector_cosine_ops)"
        let index = index
            .as_deref()
            .and_then(|d| d.split_once(" USING "))
            .map_or("none (every query scans)".to_string(), |(_, how)| {
                how.to_string()
            });
        Ok(vec![
            ("store", "catalogue on PostgreSQL + pgvector".to_string()),
            (
                "server",
                format!("{} (PostgreSQL {server})", self.url.server()),
            ),
            ("catalogue", self.url.schema.clone()),
            ("pgvector", vector.unwrap_or_else(|| "not installed".into())),
            (
                "search",
                format!("{index}, ef_search {}", self.url.ef_search),
            ),
        ])
    }

    fn watch(&self) -> Result<Box<dyn ChangeWatch>, IndexError> {
        let watch = watch::PgWatch::start(&self.url).map_err(|e| IndexError::Io {
            dir: PathBuf::from(self.url.masked()),
            reason: format!("cannot start the change watch: {e}"),
        })?;
        Ok(Box::new(watch))
    }
}

/// Connect with the TLS the URL asks for.
pub fn connect(url: &CatalogueUrl) -> Result<Client, CatalogueError> {
    probe(url)?;
    let result = match url.tls {
        TlsMode::Disable => url.config.connect(postgres::NoTls),
        _ => url.config.connect(tls::connector(url)?),
    };
    let mut db = result.map_err(|e| classify_connect(url, e))?;
    db.batch_execute(&format!("SET hnsw.ef_search = {}", url.ef_search))
        .map_err(|e| classify(url, e))?;
    Ok(db)
}

/// How long a server that accepted the connection may take to say anything.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The driver bounds only the TCP connect, not the handshake after it: a listener that accepts
/// and then says nothing (a hung server, a wrong service on the port) would hang the command
/// for ever. So first ask what libpq's `sslmode=prefer` asks (an SSLRequest, answered with one
/// byte by any PostgreSQL) within [`ANSWER_TIMEOUT`]. Other failures are left to the driver,
/// whose errors name them.
fn probe(url: &CatalogueUrl) -> Result<(), CatalogueError> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let Some(postgres::config::Host::Tcp(host)) = url.config.get_hosts().first() else {
        return Ok(());
    };
    let port = url.config.get_ports().first().copied().unwrap_or(5432);
    let Some(addr) = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return Ok(());
    };
    let timeout = url
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(ANSWER_TIMEOUT);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return Ok(());
    };
    // Length 8, then the SSLRequest code 80877103.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
    let mut answer = [0u8; 1];
    let result = stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.write_all(&SSL_REQUEST))
        .and_then(|()| stream.read_exact(&mut answer));
    match result {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(CatalogueError::Unreachable {
                url: url.masked(),
                server: url.server(),
                reason: format!(
                    "it accepted the connection but answered nothing within {} s: a hung server, or not PostgreSQL on that port",
                    ANSWER_TIMEOUT.as_secs()
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Create the catalogue (extension, schema, tables, model identity) in one transaction, under
/// an advisory lock so that two first writers do not race.
fn create(url: &CatalogueUrl, db: &mut Client, meta: &IndexMeta) -> Result<(), IndexError> {
    let no_extension = |e: postgres::Error| {
        let reason = server_words(&e);
        IndexError::from(CatalogueError::NoExtension {
            server: url.server(),
            database: url.database().to_string(),
            reason,
        })
    };
    // Only when it is missing: a role that may not create extensions can still use one that
    // an administrator enabled.
    let has_vector: bool = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')",
            &[],
        )
        .and_then(|r| r.try_get(0))
        .map_err(|e| classify(url, e))?;
    if !has_vector {
        match db.batch_execute("CREATE EXTENSION IF NOT EXISTS vector") {
            Ok(()) => {}
            // Another first writer (of another catalogue in the same database) created it at
            // the same moment: IF NOT EXISTS does not cover that race, but it is there now.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(no_extension(e)),
        }
    }
    let s = &url.schema;
    let d = meta.dim;
    let ddl = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.images (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             sha256 text NOT NULL UNIQUE,
             label text NOT NULL,
             embedding vector({d}) NOT NULL,
             thumbnail bytea NOT NULL,
             added_host text NOT NULL,
             added_path bytea NOT NULL,
             added_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE INDEX IF NOT EXISTS images_label ON {s}.images (label);
         CREATE INDEX IF NOT EXISTS images_embedding ON {s}.images
             USING hnsw (embedding vector_cosine_ops);
         CREATE TABLE IF NOT EXISTS {s}.sources (
             host text NOT NULL,
             path bytea NOT NULL,
             image_id bigint NOT NULL REFERENCES {s}.images (id) ON DELETE CASCADE,
             size bigint NOT NULL,
             mtime_ns bigint NOT NULL,
             PRIMARY KEY (host, path)
         );
         CREATE INDEX IF NOT EXISTS sources_image ON {s}.sources (image_id);
         CREATE TABLE IF NOT EXISTS {s}.texts (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             label text NOT NULL,
             prompt text NOT NULL,
             embedding vector({d}) NOT NULL,
             UNIQUE (label, prompt)
         );"
    );
    let run = |db: &mut Client| -> Result<(), postgres::Error> {
        let mut tx = db.transaction()?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("arvis:{s}")],
        )?;
        let exists: bool = tx
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{s}.meta")],
            )?
            .try_get(0)?;
        if exists {
            return tx.commit();
        }
        tx.batch_execute(&ddl)?;
        let mut values = vec![
            ("format_version", CATALOGUE_FORMAT.to_string()),
            ("model_id", meta.model_id.clone()),
            ("preprocess_version", meta.preprocess_version.to_string()),
            ("dim", meta.dim.to_string()),
            ("generation", "0".into()),
            ("labels_generation", "0".into()),
        ];
        if let Some(family) = &meta.clip_family {
            values.push(("clip_family", family.clone()));
        }
        for (k, v) in values {
            tx.execute(
                &format!("INSERT INTO {s}.meta (key, value) VALUES ($1, $2)"),
                &[&k, &v],
            )?;
        }
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGE_CHANNEL, &s])?;
        tx.commit()
    };
    // A role that may not create the schema gets `classify`'s read-only error.
    run(db).map_err(|e| classify(url, e))?;
    tracing::info!(catalogue = %url, "created the catalogue");
    Ok(())
}

fn read_meta(url: &CatalogueUrl, db: &mut Client) -> Result<IndexMeta, IndexError> {
    let rows = db
        .query(&format!("SELECT key, value FROM {}.meta", url.schema), &[])
        .map_err(|e| classify(url, e))?;
    let mut values = HashMap::new();
    for r in &rows {
        let (k, v): (String, String) = (
            r.try_get(0).map_err(|e| classify(url, e))?,
            r.try_get(1).map_err(|e| classify(url, e))?,
        );
        values.insert(k, v);
    }
    let damaged = |what: &str| {
        IndexError::from(CatalogueError::Server {
            url: url.masked(),
            reason: format!(
                "the catalogue's meta table has no valid {what}. Fix: drop schema {} and rebuild it with `arvis index add`",
                url.schema
            ),
        })
    };
    let version: i64 = values
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| damaged("format_version"))?;
    if version > CATALOGUE_FORMAT {
        return Err(IndexError::NewerFormat {
            index: url.masked(),
            found: version,
            supported: CATALOGUE_FORMAT,
        });
    }
    Ok(IndexMeta {
        model_id: values
            .get("model_id")
            .cloned()
            .ok_or_else(|| damaged("model_id"))?,
        preprocess_version: values
            .get("preprocess_version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| damaged("preprocess_version"))?,
        dim: values
            .get("dim")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| damaged("dim"))?,
        clip_family: values.get("clip_family").cloned(),
    })
}

/// What the server said (its message alone, without the driver's "db error: ERROR:" prefix).
fn server_words(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            crate::util::mask_urls(&text)
        }
    }
}

fn lost(url: &CatalogueUrl, reason: String) -> CatalogueError {
    CatalogueError::Lost {
        server: url.server(),
        reason,
    }
}

/// An error while connecting, named for what it means.
fn classify_connect(url: &CatalogueUrl, e: postgres::Error) -> CatalogueError {
    let reason = server_words(&e);
    match e.code() {
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            CatalogueError::Auth {
                server: url.server(),
                user: url.user().to_string(),
                reason,
            }
        }
        // Starting up, shutting down or full: there, but not taking sessions for now.
        Some(c)
            if *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
        {
            CatalogueError::Unreachable {
                url: url.masked(),
                server: url.server(),
                reason,
            }
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => CatalogueError::NoDatabase {
            url: url.masked(),
            server: url.server(),
            database: url.database().to_string(),
        },
        Some(_) => CatalogueError::Server {
            url: url.masked(),
            reason,
        },
        // The driver's own "password missing" is a configuration error, not a network one.
        None if reason.contains("password missing") => CatalogueError::Auth {
            server: url.server(),
            user: url.user().to_string(),
            reason: "the server asks for a password and none was given".into(),
        },
        None => CatalogueError::Unreachable {
            url: url.masked(),
            server: url.server(),
            reason,
        },
    }
}

/// An error after connecting.
fn classify(url: &CatalogueUrl, e: postgres::Error) -> CatalogueError {
    let reason = server_words(&e);
    match e.code() {
        Some(c)
            if *c == SqlState::INSUFFICIENT_PRIVILEGE
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            CatalogueError::ReadOnly {
                server: url.server(),
                user: url.user().to_string(),
                catalogue: url.schema.clone(),
                reason,
            }
        }
        // The server shutting down ends sessions with an admin-shutdown error.
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW =>
        {
            lost(url, reason)
        }
        Some(_) => CatalogueError::Server {
            url: url.masked(),
            reason,
        },
        None => lost(url, reason),
    }
}

fn path_bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_encoded_bytes().to_vec()
}

fn path_from_bytes(bytes: impl Into<Vec<u8>>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes.into()))
}

/// This machine's name, as `hostname` prints it.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into a buffer this function owns.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
