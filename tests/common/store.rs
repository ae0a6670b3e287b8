//! One index suite, two stores: a test written as `fn name(store: Store)` and listed in
//! [`on_both_stores!`] runs once on a gallery directory and once on a PostgreSQL catalogue of
//! its own on the test binary's server (tests/common/pg.rs).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::pg::shared_server;

/// Where a test's gallery lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// A gallery directory (SQLite + usearch).
    Directory,
    /// A catalogue on PostgreSQL + pgvector.
    Postgres,
}

/// A gallery of one test's own, on `store`; a directory is removed when dropped, a catalogue
/// goes with the test binary's server.
pub struct TestIndex {
    store: Store,
    _dir: tempfile::TempDir,
    /// The `--index` value: the gallery directory or the catalogue's URL.
    value: PathBuf,
    schema: String,
}

impl TestIndex {
    pub fn new(store: Store) -> TestIndex {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::tempdir().unwrap();
        let schema = format!("suite_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let value = match store {
            Store::Directory => dir.path().join("index"),
            Store::Postgres => PathBuf::from(shared_server().url(&schema)),
        };
        TestIndex {
            store,
            _dir: dir,
            value,
            schema,
        }
    }

    /// What `--index` / `ARVIS_INDEX` is given (a URL reads as a path; arvis parses it).
    pub fn path(&self) -> &Path {
        &self.value
    }

    pub fn store(&self) -> Store {
        self.store
    }

    /// Whether anything has been written: the directory or the catalogue's schema.
    pub fn exists(&self) -> bool {
        match self.store {
            Store::Directory => self.value.exists(),
            Store::Postgres => shared_server()
                .admin()
                .query_one(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                    &[&self.schema],
                )
                .unwrap()
                .get::<_, i64>(0)
                .eq(&1),
        }
    }

    /// Set (or with `None`, delete) a key of the gallery's meta table behind arvis's back, as
    /// another release would have left it.
    pub fn set_meta(&self, key: &str, value: Option<&str>) {
        match self.store {
            Store::Directory => {
                let db = rusqlite::Connection::open(self.value.join("index.sqlite")).unwrap();
                match value {
                    Some(v) => db
                        .execute("UPDATE meta SET value = ?1 WHERE key = ?2", (v, key))
                        .unwrap(),
                    None => db
                        .execute("DELETE FROM meta WHERE key = ?1", [key])
                        .unwrap(),
                };
            }
            Store::Postgres => {
                let mut db = shared_server().admin();
                let schema = &self.schema;
                let n = match value {
                    Some(v) => db.execute(
                        &format!("UPDATE {schema}.meta SET value = $1 WHERE key = $2"),
                        &[&v, &key],
                    ),
                    None => db.execute(
                        &format!("DELETE FROM {schema}.meta WHERE key = $1"),
                        &[&key],
                    ),
                }
                .unwrap();
                assert_eq!(n, 1, "meta key {key}");
            }
        }
    }

    /// The catalogue's schema (Postgres only).
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

/// For each `name`, a module `name` with the tests `directory` and `postgres`, both calling
/// `fn name(store: Store)`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn directory() {
                    super::$name($crate::common::store::Store::Directory)
                }
                #[test]
                fn postgres() {
                    super::$name($crate::common::store::Store::Postgres)
                }
            }
        )+
    };
}
