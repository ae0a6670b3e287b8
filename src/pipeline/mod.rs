//! Worker threads between stages.
//!
//! - [`staged`]: still images in batch (CLI): decode + letterbox image N+1 while N is inferred.
//! - [`frame`]: the frame processor (detect → track → per-track gallery match) all front ends use.
//! - [`live`]: the app's pipeline: capture → latest-frame slot → detection → embedding →
//!   immutable per-frame snapshots for the UI.
//! - [`multi`]: many sources, one detector: a capture thread per source, rounds of every
//!   source's newest frame detected as one batch, each source tracked and matched on its own.

pub mod events;
pub mod frame;
pub mod live;
pub mod multi;
pub mod slot;
pub mod staged;

pub use slot::LatestSlot;
pub use staged::{Prefetch, PrefetchPriority, Staged, StagedImage, StagedImages};
