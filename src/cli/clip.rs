//! Shared CLI plumbing for everything that embeds: model arguments, loading, the index location.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::embed::{CLIP_PREPROCESS_VERSION, ClipTokenizer, ImageEncoder, TextEncoder};
use crate::models::{content_id, manifest, resolve_model};
use crate::runtime::{Device, DeviceRequest, Runtime};
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
#[derive(Debug, Clone, Args)]
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
}

fn runtime_for(request: DeviceRequest) -> anyhow::Result<(&'static Runtime, Device)> {
    let device = request.resolve();
    match Runtime::get(device.flavor()) {
        Ok(rt) => Ok((rt, device)),
        Err(e) if request == DeviceRequest::Auto && device != Device::Cpu => {
            eprintln!("warning: CUDA unavailable ({e}); running on the CPU");
            Ok((Runtime::get(Device::Cpu.flavor())?, Device::Cpu))
        }
        Err(e) => Err(e.into()),
    }
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
        let reference = self
            .clip_model
            .as_deref()
            .unwrap_or(&manifest.defaults.clip_image);
        let (path, _) =
            resolve_model(reference).with_context(|| format!("CLIP image model `{reference}`"))?;
        let (runtime, device) = runtime_for(request)?;
        let encoder = ImageEncoder::load(runtime, &path, device)?;
        warn_if_generated(&encoder.generated, "image");
        let meta = IndexMeta {
            model_id: content_id(&path)?,
            preprocess_version: CLIP_PREPROCESS_VERSION,
            dim: encoder.dim,
        };
        Ok(LoadedImageEncoder { encoder, meta })
    }

    pub fn load_text_encoder(&self, request: DeviceRequest) -> anyhow::Result<TextEncoder> {
        let manifest = manifest()?;
        let reference = self
            .clip_text_model
            .as_deref()
            .unwrap_or(&manifest.defaults.clip_text);
        let (path, _) =
            resolve_model(reference).with_context(|| format!("CLIP text model `{reference}`"))?;
        let (vocab, _) = resolve_model(&manifest.defaults.clip_tokenizer)
            .context("CLIP tokenizer vocabulary")?;
        let tokenizer = ClipTokenizer::from_gz_file(&vocab)?;
        let (runtime, device) = runtime_for(request)?;
        let encoder = TextEncoder::load(runtime, &path, tokenizer, device)?;
        warn_if_generated(&encoder.generated, "text");
        Ok(encoder)
    }
}
