//! The model manifest (`models/manifest.toml`), and getting each model's verified bytes into the cache.

pub mod batch;
pub mod fetch;
pub mod fp16;
pub mod generate;
pub mod onnx;
pub mod proto;

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
    /// An object detector.
    Detect,
    /// A CLIP image tower.
    EmbedImage,
    /// A CLIP text tower.
    EmbedText,
    /// A tokenizer vocabulary.
    Tokenizer,
}

/// One tensor of a model's contract.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    /// The tensor's name in the graph.
    pub name: String,
    /// Its element type (`float32`, `int64`).
    pub dtype: String,
    /// Dimensions; -1 is dynamic.
    pub shape: Vec<i64>,
}

/// One model in the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    /// The id commands accept (`yolov8n-int8`).
    pub id: String,
    /// What the model is for.
    pub task: Task,
    /// File name in the cache.
    pub file: String,
    /// Expected sha256 of the file (None: not pinned).
    pub sha256: Option<String>,
    /// Expected size in bytes.
    pub size: Option<u64>,
    /// Where it can be downloaded, tried in order.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Path inside an offline mirror.
    pub mirror_path: Option<String>,
    /// Its license.
    #[serde(default)]
    pub license: String,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Anything a user should know (e.g. why there is no download).
    #[serde(default)]
    pub note: String,
    /// The inputs the model must have.
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    /// The outputs the model must have.
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// The preprocessing it expects.
    #[serde(default)]
    pub preprocess: String,
    /// For CLIP towers: the export both towers of one pair share (text ↔ image pairing).
    #[serde(default)]
    pub family: Option<String>,
}

/// Which model each task uses when none is named.
#[derive(Debug, Clone, Deserialize)]
pub struct Defaults {
    /// The detector used when none is named.
    pub detector: String,
    /// The detector on a CUDA device, where it differs.
    #[serde(default)]
    pub detector_cuda: Option<String>,
    /// The CLIP image tower used when none is named.
    pub clip_image: String,
    /// The CLIP text tower used when none is named.
    pub clip_text: String,
    /// The CLIP tokenizer.
    pub clip_tokenizer: String,
}

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The defaults.
    pub defaults: Defaults,
    /// Every known model.
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
    /// The built-in manifest could not be parsed.
    #[error("the built-in model manifest is invalid: {0}")]
    Manifest(String),
    /// A model path that does not exist.
    #[error("model file {0} does not exist")]
    NotFound(String),
    /// Neither a file nor a manifest id.
    #[error("unknown model `{id}`: not a file, and not one of the manifest's models ({known})")]
    Unknown {
        /// What was asked for.
        id: String,
        /// The manifest's ids.
        known: String,
    },
    /// The file's sha256 is not the manifest's.
    #[error(
        "{} {} has sha256 {}, but the manifest expects {} for {}: the file is corrupt or not this model.{}",
        .0.what, .0.path, .0.actual, .0.expected, .0.id, .0.fix
    )]
    HashMismatch(Box<Mismatch>),
    /// The file's size is not the manifest's.
    #[error(
        "{} {} is {} bytes, but the manifest expects {} for {}: the file is truncated or not this model.{}",
        .0.what, .0.path, .0.actual, .0.expected, .0.id, .0.fix
    )]
    SizeMismatch(Box<Mismatch>),
    /// Downloads are off and no mirror is set.
    #[error(
        "cannot download {id}: ARVIS_OFFLINE is set and no mirror is configured. Fix: set ARVIS_MODEL_MIRROR to a directory or http URL holding {mirror_path}{flag}"
    )]
    Offline {
        /// The model.
        id: String,
        /// Where the mirror should hold it.
        mirror_path: String,
        /// How to allow downloads.
        flag: String,
    },
    /// The model has no public download and no mirror is set.
    #[error(
        "{id} has no public download ({note}). Fix: set ARVIS_MODEL_MIRROR to a directory or http URL holding {mirror_path}{flag}"
    )]
    NoSource {
        /// The model.
        id: String,
        /// Why there is no download.
        note: String,
        /// Where the mirror should hold it.
        mirror_path: String,
        /// How to allow downloads.
        flag: String,
    },
    /// Every download attempt failed.
    #[error("could not fetch {id}: {attempts}. {hint}")]
    Fetch {
        /// The model.
        id: String,
        /// What each attempt got.
        attempts: String,
        /// What to do about it.
        hint: String,
    },
    /// A transfer failed.
    #[error("{0}")]
    Transfer(String),
    /// A file could not be read or written.
    #[error("I/O error on {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A file that is not the bytes the manifest describes.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// The model.
    pub id: String,
    /// "cached model", "downloaded file from", ...
    pub what: &'static str,
    /// The file.
    pub path: String,
    /// What the manifest expects.
    pub expected: String,
    /// What the file has.
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
    let digest = sha2::Sha256::digest(format!("{}|{}|{mtime}", canonical.display(), meta.len()));
    let key = crate::util::hex(&digest[..12]);
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

/// Where a model derived from `src` (its FP16 or batch twin: `kind`) lives in `dir`: named by
/// the source's file stem and hash, so a changed source gets a new twin.
pub fn converted_path(src: &Path, dir: &Path, kind: &str) -> Result<PathBuf, ModelError> {
    let hash = fetch::sha256_file(src)?;
    let stem = src
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    Ok(dir.join(format!("{stem}-{}-{kind}.onnx", &hash[..12])))
}
