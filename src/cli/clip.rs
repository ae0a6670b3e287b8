//! Shared CLI plumbing for everything that embeds: model arguments, loading, the index location.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::embed::{CLIP_PREPROCESS_VERSION, ClipTokenizer, ImageEncoder, TextEncoder};
use crate::models::{content_id, manifest, resolve_model};
use crate::runtime::DeviceRequest;
use crate::search::IndexMeta;

/// `--index`, with a per-user default.
#[derive(Debug, Clone, Args)]
pub struct IndexArg {
    /// Gallery index directory (default: the per-user data directory's `gallery`).
    #[arg(long, env = "ARVIS_INDEX", value_name = "DIR")]
    pub index: Option<PathBuf>,
}

impl IndexArg {
    pub fn dir(&self) -> PathBuf {
        self.index
            .clone()
            .unwrap_or_else(|| crate::paths::data_dir().join("gallery"))
    }
}

/// `--clip-model` / `--clip-text-model`: manifest ids or paths to any export with CLIP's interface.
#[derive(Debug, Clone, Default, Args)]
pub struct ClipArgs {
    /// CLIP image encoder: a manifest id or an .onnx path (pixel_values [N,3,224,224] → [N,D]).
    #[arg(long, env = "ARVIS_CLIP_MODEL", value_name = "ID|PATH")]
    pub clip_model: Option<String>,
    /// CLIP text encoder: a manifest id or an .onnx path (input_ids [N,77] → [N,D]).
    #[arg(long, env = "ARVIS_CLIP_TEXT_MODEL", value_name = "ID|PATH")]
    pub clip_text_model: Option<String>,
}

/// A loaded image encoder and the index identity it implies.
pub struct LoadedImageEncoder {
    pub encoder: ImageEncoder,
    pub meta: IndexMeta,
    pub device: crate::runtime::Device,
}

/// A user's model reference, or the manifest default, resolved to a file.
fn resolve_or_default(
    reference: Option<&str>,
    default: &str,
    what: &str,
) -> anyhow::Result<(PathBuf, Option<&'static crate::models::ModelSpec>)> {
    let reference = reference.unwrap_or(default);
    resolve_model(reference).with_context(|| format!("{what} `{reference}`"))
}

fn warn_if_generated(label: &Option<String>, what: &str) {
    if let Some(label) = label {
        eprintln!(
            "warning: the CLIP {what} model is a generated test model ({label}): similarities are not semantically meaningful"
        );
    }
}

impl ClipArgs {
    pub fn load_image_encoder(&self, request: DeviceRequest) -> anyhow::Result<LoadedImageEncoder> {
        let manifest = manifest()?;
        let (path, spec) = resolve_or_default(
            self.clip_model.as_deref(),
            &manifest.defaults.clip_image,
            "CLIP image model",
        )?;
        let (encoder, device) = super::on_device(request, |runtime, device| {
            Ok(ImageEncoder::load(runtime, &path, device)?)
        })?;
        warn_if_generated(&encoder.generated, "image");
        let meta = IndexMeta {
            model_id: content_id(&path)?,
            preprocess_version: CLIP_PREPROCESS_VERSION,
            dim: encoder.dim,
            clip_family: encoder
                .family
                .clone()
                .or_else(|| spec.and_then(|s| s.family.clone())),
        };
        let mut encoder = encoder;
        // On a GPU the best batch depends on the card: measure it once (cheap there), backing
        // off if memory runs out. On the CPU the model's own maximum is used.
        if let crate::runtime::Device::Cuda(_) = device {
            let tried = encoder.tune_batch(&[1, 2, 4, 8, 16, 32, 64, 128, 256])?;
            tracing::info!(
                "CLIP batch auto-tuned to {} ({tried:?} crops/s)",
                encoder.batch
            );
        }
        Ok(LoadedImageEncoder {
            encoder,
            meta,
            device,
        })
    }

    pub fn load_text_encoder(&self, request: DeviceRequest) -> anyhow::Result<TextEncoder> {
        let manifest = manifest()?;
        let (path, spec) = resolve_or_default(
            self.clip_text_model.as_deref(),
            &manifest.defaults.clip_text,
            "CLIP text model",
        )?;
        let (vocab, _) = resolve_or_default(
            None,
            &manifest.defaults.clip_tokenizer,
            "CLIP tokenizer vocabulary",
        )?;
        let (encoder, _) = super::on_device(request, |runtime, device| {
            let tokenizer = ClipTokenizer::from_gz_file(&vocab)?;
            Ok(TextEncoder::load(runtime, &path, tokenizer, device)?)
        })?;
        warn_if_generated(&encoder.generated, "text");
        let mut encoder = encoder;
        if encoder.family.is_none() {
            encoder.family = spec.and_then(|s| s.family.clone());
        }
        Ok(encoder)
    }
}
