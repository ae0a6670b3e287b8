//! The visual-search index: a gallery of images embedded with CLIP, persisted per directory.
//!
//! SQLite (bundled) is the source of truth: model identity, one row per image (path, size,
//! mtime, embedding, thumbnail) and a generation counter bumped by every committed change. The
//! HNSW graph (`vectors.usearch`) is a cache of those embeddings, saved atomically and trusted
//! only when its recorded generation, size and sha256 match; otherwise it is rebuilt. A crash or
//! kill at any moment therefore leaves the old or the new state, never a corrupt one.

pub mod ann;
pub mod catalogue;
pub mod copy;
pub mod index;
pub mod ingest;
pub mod items;
pub mod matcher;
pub mod store;
pub mod teach;

pub use ann::{Ann, Neighbour, exact_search};
pub use catalogue::{CatalogueError, CatalogueUrl, PgCatalogue};
pub use index::{
    GalleryIndex, Hit, IndexError, IndexMeta, IndexStats, ItemSummary, NewItem, WriteLock,
};
pub use ingest::{IngestError, IngestObserver, IngestReport, add_to_index, canonical_key};
pub use items::{Decision, ItemMatch, KnownItem, MatchView, TextItem, TextMatch};
pub use matcher::{Region, RegionMatch, RegionMatcher, TrackMatches, match_embedding};
pub use store::{GalleryLocation, GalleryStore};
