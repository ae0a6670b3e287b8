//! Loading models onto a device: which file each model is (manifest id, path, or the device's
//! default), on which execution provider, and the fallback rule (`auto` may fall back to the
//! CPU, saying so; an explicit `cuda` never does). Every front end (CLI, app, benchmarks) loads
//! through here.

use std::path::PathBuf;

use anyhow::Context;

use crate::detect::Detector;
use crate::embed::{CLIP_PREPROCESS_VERSION, ClipTokenizer, ImageEncoder, TextEncoder};
use crate::models::{content_id, manifest, resolve_model};
use crate::runtime::{Device, DeviceRequest, Runtime};
use crate::search::IndexMeta;

/// The CLIP towers to use: manifest ids or paths to any export with CLIP's interface (`None`:
/// the manifest's default).
#[derive(Debug, Clone, Default)]
pub struct ClipModels {
    /// The image tower: a manifest id or an .onnx path (None: the manifest default).
    pub image: Option<String>,
    /// The text tower: a manifest id or an .onnx path (None: the manifest default).
    pub text: Option<String>,
}

/// A loaded image encoder and the index identity it implies.
pub struct LoadedImageEncoder {
    /// The encoder.
    pub encoder: ImageEncoder,
    /// The identity an index built with it records.
    pub meta: IndexMeta,
    /// Where it runs.
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

impl ClipModels {
    /// Load the image tower on the requested device (falling back as `on_device` does).
    pub fn load_image_encoder(&self, request: DeviceRequest) -> anyhow::Result<LoadedImageEncoder> {
        let manifest = manifest()?;
        let (path, spec) = resolve_or_default(
            self.image.as_deref(),
            &manifest.defaults.clip_image,
            "CLIP image model",
        )?;
        let (encoder, device) = on_device(request, |runtime, device| {
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

    /// Load the text tower and its tokenizer on the requested device.
    pub fn load_text_encoder(&self, request: DeviceRequest) -> anyhow::Result<TextEncoder> {
        let manifest = manifest()?;
        let (path, spec) = resolve_or_default(
            self.text.as_deref(),
            &manifest.defaults.clip_text,
            "CLIP text model",
        )?;
        let (vocab, _) = resolve_or_default(
            None,
            &manifest.defaults.clip_tokenizer,
            "CLIP tokenizer vocabulary",
        )?;
        let (encoder, _) = on_device(request, |runtime, device| {
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

/// Run `load` on the requested device. `auto` falls back to the CPU with a visible warning when
/// anything about the GPU attempt fails (runtime, provider registration, session); an explicit
/// `cuda` never falls back.
pub fn on_device<T>(
    request: DeviceRequest,
    load: impl Fn(&'static Runtime, Device) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Device)> {
    let device = request.resolve();
    let attempt = |device: Device| load(Runtime::get(device.flavor())?, device);
    match attempt(device) {
        Ok(t) => Ok((t, device)),
        Err(e) if request == DeviceRequest::Auto && device != Device::Cpu => {
            eprintln!("warning: CUDA unavailable ({e:#}); running on the CPU");
            attempt(Device::Cpu).map(|t| (t, Device::Cpu))
        }
        Err(e) => Err(e.context(format!("on {device}"))),
    }
}

/// The detector's file and display name (a manifest id or a path; the device's default when `None`).
pub fn resolve_detector(
    model: Option<&str>,
    device: Device,
) -> anyhow::Result<(std::path::PathBuf, String)> {
    let manifest = crate::models::manifest()?;
    let (path, spec) = match (model, device, &manifest.defaults.detector_cuda) {
        (Some(named), _, _) => crate::models::resolve_model(named)?,
        (None, Device::Cuda(_), Some(cuda)) => match crate::models::resolve_model(cuda) {
            Ok(found) => found,
            Err(e) => {
                eprintln!(
                    "warning: the CUDA default detector {cuda} is unavailable ({e:#}); using {}, whose int8 layers run on the CPU",
                    manifest.defaults.detector
                );
                crate::models::resolve_model(&manifest.defaults.detector)?
            }
        },
        (None, _, _) => crate::models::resolve_model(&manifest.defaults.detector)?,
    };
    let name = spec.map_or_else(|| path.display().to_string(), |s| s.id.clone());
    Ok((path, name))
}

/// The default detector for `device` if it is already in the cache (never downloads).
pub fn resolve_detector_cached(device: Device) -> anyhow::Result<(std::path::PathBuf, String)> {
    let manifest = crate::models::manifest()?;
    let id = match (device, &manifest.defaults.detector_cuda) {
        (Device::Cuda(_), Some(cuda)) => cuda.clone(),
        _ => manifest.defaults.detector.clone(),
    };
    let spec = manifest
        .get(&id)
        .ok_or_else(|| anyhow::anyhow!("{id} is not in the manifest"))?;
    let path = crate::models::models_dir().join(&spec.file);
    anyhow::ensure!(path.is_file(), "{id} is not cached");
    Ok((path, id))
}

/// Load the detector (a manifest id or a path) on the requested device.
pub fn load_detector(
    model: Option<&str>,
    request: DeviceRequest,
) -> anyhow::Result<(Detector, Device)> {
    on_device(request, |runtime, device| {
        let (path, name) = resolve_detector(model, device)?;
        Detector::load(runtime, &path, &name, device)
            .with_context(|| format!("loading detector {name}"))
    })
}

/// Load the detector for a front end that runs it beside other threads (the app, `arvis video`,
/// `bench video`). CUDA graph capture needs the device to itself while it records, which those
/// threads cannot promise: graph mode is refused there with the mode that works instead.
pub fn load_threaded_detector(
    model: Option<&str>,
    request: DeviceRequest,
    front_end: &str,
) -> anyhow::Result<(Detector, Device)> {
    let (detector, device) = load_detector(model, request)?;
    if detector.io_mode() == crate::detect::IoMode::Graph {
        anyhow::bail!(
            "ARVIS_DETECTOR_IO=graph cannot be used by {front_end}: CUDA graph capture needs the GPU to itself while it records, and {front_end} runs the detector beside other threads. Fix: use ARVIS_DETECTOR_IO=bound (the CUDA default) here; graphs are for `arvis detect` and `arvis bench detect`"
        );
    }
    Ok((detector, device))
}

/// A text tower only means something beside the image tower it was trained with: embeddings of
/// any other model of the same width compare to meaningless scores. Both towers name their CLIP
/// export (manifest `family`, or the ONNX metadata `arvis.clip_family`); a known mismatch is
/// refused, and a pairing that cannot be checked needs the user's `--trust-text-model`.
pub fn check_text_pairing(
    index: &crate::search::IndexMeta,
    text_family: Option<&str>,
    trusted: bool,
    gallery: &crate::search::GalleryLocation,
) -> anyhow::Result<()> {
    match (index.clip_family.as_deref(), text_family) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (Some(a), Some(b)) => anyhow::bail!(
            "the text model belongs to CLIP {b}, but index {gallery} was built with an image model of CLIP {a}: their embeddings cannot be compared. Fix: pass --clip-text-model with the text tower of {a}"
        ),
        _ if trusted => Ok(()),
        (index_family, text_family) => anyhow::bail!(
            "cannot check that the text model belongs with the image model index {} was built with ({}): {} no CLIP family recorded. Fix: use the text tower from the same CLIP export and confirm with --trust-text-model (or mark both ONNX files with the metadata key {} set to one name)",
            gallery,
            index.model_id,
            match (index_family, text_family) {
                (None, None) => "neither has",
                (None, Some(_)) => "the index has",
                _ => "the text model has",
            },
            crate::embed::CLIP_FAMILY_KEY
        ),
    }
}
