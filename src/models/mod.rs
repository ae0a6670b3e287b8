//! The model manifest (`models/manifest.toml`), and getting each model's verified bytes into the cache.

pub mod fetch;
pub mod fp16;
pub mod generate;
pub mod onnx;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

pub use fetch::{FetchSource, ensure_model, fetch_model, model_sources, verify_cached};

/// The manifest compiled into the binary.
pub const MANIFEST_TOML: &str = include_str!("../../models/manifest.toml");

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    Detect,
    EmbedImage,
    EmbedText,
    Tokenizer,
}

/// One tensor of a model's contract.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Dimensions; -1 is dynamic.
    pub shape: Vec<i64>,
}

/// One model in the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub id: String,
    pub task: Task,
    /// File name in the cache.
    pub file: String,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    #[serde(default)]
    pub urls: Vec<String>,
    /// Path inside an offline mirror.
    pub mirror_path: Option<String>,
    #[serde(default)]
    pub license: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub preprocess: String,
    /// For CLIP towers: the export both towers of one pair share (text ↔ image pairing).
    #[serde(default)]
    pub family: Option<String>,
}

/// Which model each task uses when none is named.
#[derive(Debug, Clone, Deserialize)]
pub struct Defaults {
    pub detector: String,
    /// The detector on a CUDA device, where it differs.
    #[serde(default)]
    pub detector_cuda: Option<String>,
    pub clip_image: String,
    pub clip_text: String,
    pub clip_tokenizer: String,
}

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub defaults: Defaults,
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
}

impl ModelSpec {
    /// ", or pass --flag PATH": how a user brings their own file for this model's role.
    pub fn own_file_hint(&self) -> &'static str {
        match self.task {
            Task::Detect => ", or pass --model PATH",
            Task::EmbedImage => ", or pass --clip-model PATH",
            Task::EmbedText => ", or pass --clip-text-model PATH",
            Task::Tokenizer => "",
        }
    }
}

impl Manifest {
    /// Parse a manifest from TOML text.
    pub fn parse(text: &str) -> Result<Manifest, ModelError> {
        toml::from_str(text).map_err(|e| ModelError::Manifest(e.to_string()))
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The entry with this id, or an error listing the known ids.
    pub fn require(&self, id: &str) -> Result<&ModelSpec, ModelError> {
        self.get(id).ok_or_else(|| self.unknown(id))
    }

    fn unknown(&self, id: &str) -> ModelError {
        ModelError::Unknown {
            id: id.to_string(),
            known: self
                .models
                .iter()
                .map(|m| m.id.clone())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The built-in manifest.
pub fn manifest() -> Result<&'static Manifest, ModelError> {
    static MANIFEST: OnceLock<Result<Manifest, ModelError>> = OnceLock::new();
    MANIFEST
        .get_or_init(|| Manifest::parse(MANIFEST_TOML))
        .as_ref()
        .map_err(Clone::clone)
}

/// `<cache>/models`.
pub fn models_dir() -> PathBuf {
    crate::paths::cache_dir().join("models")
}

/// Everything that can go wrong finding, fetching or verifying a model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("the built-in model manifest is invalid: {0}")]
    Manifest(String),
    #[error("model file {0} does not exist")]
    NotFound(String),
    #[error("unknown model `{id}`: not a file, and not one of the manifest's models ({known})")]
    Unknown { id: String, known: String },
    #[error(
        "{} {} has sha256 {}, but the manifest expects {} for {}: the file is corrupt or not this model.{}",
        .0.what, .0.path, .0.actual, .0.expected, .0.id, .0.fix
    )]
    HashMismatch(Box<Mismatch>),
    #[error(
        "{} {} is {} bytes, but the manifest expects {} for {}: the file is truncated or not this model.{}",
        .0.what, .0.path, .0.actual, .0.expected, .0.id, .0.fix
    )]
    SizeMismatch(Box<Mismatch>),
    #[error(
        "cannot download {id}: ARVIS_OFFLINE is set and no mirror is configured. Fix: set ARVIS_MODEL_MIRROR to a directory or http URL holding {mirror_path}{flag}"
    )]
    Offline {
        id: String,
        mirror_path: String,
        flag: String,
    },
    #[error(
        "{id} has no public download ({note}). Fix: set ARVIS_MODEL_MIRROR to a directory or http URL holding {mirror_path}{flag}"
    )]
    NoSource {
        id: String,
        note: String,
        mirror_path: String,
        flag: String,
    },
    #[error("could not fetch {id}: {attempts}. {hint}")]
    Fetch {
        id: String,
        attempts: String,
        hint: String,
    },
    #[error("{0}")]
    Transfer(String),
    #[error("I/O error on {path}: {reason}")]
    Io { path: String, reason: String },
}

/// A file that is not the bytes the manifest describes.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub id: String,
    /// "cached model", "downloaded file from", ...
    pub what: &'static str,
    pub path: String,
    pub expected: String,
    pub actual: String,
    /// Sentence telling the user how to fix it (may be empty).
    pub fix: String,
}

impl ModelError {
    pub(crate) fn io(path: &Path, err: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.display().to_string(),
            reason: err.to_string(),
        }
    }
}

/// A model reference given by a user: a manifest id, or a path to an `.onnx` file.
pub fn resolve_model(reference: &str) -> Result<(PathBuf, Option<&'static ModelSpec>), ModelError> {
    let manifest = manifest()?;
    if let Some(spec) = manifest.get(reference) {
        return ensure_model(spec).map(|p| (p, Some(spec)));
    }
    let path = PathBuf::from(reference);
    if path.is_file() {
        return Ok((path, None));
    }
    if reference.contains(std::path::MAIN_SEPARATOR) || reference.ends_with(".onnx") {
        return Err(ModelError::NotFound(reference.to_string()));
    }
    Err(manifest.unknown(reference))
}

/// A stable identity for a model file: its name and content hash (cached by path, size and
/// mtime so a 350 MB model is hashed once). Indexes record it to refuse mixing models.
pub fn content_id(path: &Path) -> Result<String, ModelError> {
    use sha2::Digest;
    let canonical = path.canonicalize().map_err(|e| ModelError::io(path, e))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| ModelError::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key: String =
        sha2::Sha256::digest(format!("{}|{}|{mtime}", canonical.display(), meta.len()))
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
    let cache = crate::paths::cache_dir().join("model-ids").join(key);
    let hash = match std::fs::read_to_string(&cache) {
        Ok(h) if h.len() == 64 => h,
        _ => {
            let h = fetch::sha256_file(&canonical)?;
            // Only a speed-up: failing to cache it costs a re-hash next time.
            let _ = std::fs::create_dir_all(cache.parent().unwrap_or(Path::new(".")))
                .and_then(|_| std::fs::write(&cache, &h));
            h
        }
    };
    let name = canonical
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    Ok(format!("{name}@sha256:{}", &hash[..16]))
}
