//! arvis: live object detection matched against a local visual-search index.
//!
//! Pipeline stages, one module each: `source → preprocess → detect → embed/search → render`, joined
//! by `pipeline` (batch and live threads), with `runtime` (ONNX Runtime) and `models` (manifest,
//! fetch, verify) underneath. `cli` is the command-line edge and `app` the desktop window.

#[cfg(feature = "gui")]
pub mod app;
pub(crate) mod bench;
pub mod cli;
pub mod detect;
pub mod embed;
pub(crate) mod fault;
pub mod load;
pub mod models;
pub(crate) mod paths;
pub mod pipeline;
pub mod preprocess;
pub(crate) mod progress;
pub mod render;
pub mod report;
pub mod runtime;
pub mod search;
pub mod settings;
pub mod sink;
pub mod source;
pub mod track;
pub(crate) mod util;
