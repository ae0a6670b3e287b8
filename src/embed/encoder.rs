//! CLIP image and text encoders over ONNX Runtime. Input and output names are read from the
//! session, so any export with CLIP's interface works (HF/optimum exports, open_clip, ours).

use std::path::{Path, PathBuf};

use image::RgbImage;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::preprocess::{CLIP_INPUT_PX, CLIP_TENSOR_LEN, clip_preprocess_into};
use super::tokenizer::{CONTEXT_LENGTH, ClipTokenizer};
use crate::models::generate::GENERATED_KEY;
use crate::runtime::{Device, Runtime, RuntimeError};

/// Why an encoder could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot load CLIP model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{path} does not have the CLIP {tower} interface: {reason}")]
    Contract {
        path: PathBuf,
        tower: &'static str,
        reason: String,
    },
    #[error("embedding failed: {0}")]
    Inference(#[from] ort::Error),
}

/// A unit-length embedding.
pub type Embedding = Vec<f32>;

/// Scale to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn dims(vt: &ValueType) -> Vec<i64> {
    vt.tensor_shape()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

fn describe(outlets: &[ort::value::Outlet]) -> String {
    outlets
        .iter()
        .map(|o| format!("{} {:?}", o.name(), dims(o.dtype())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The output holding `[N, D]` embeddings: the one named `preferred`, else the only 2-D float one.
fn pick_embedding_output(session: &Session, preferred: &str) -> Option<(String, usize)> {
    let candidates: Vec<_> = session
        .outputs()
        .iter()
        .filter(|o| {
            o.dtype().tensor_type() == Some(TensorElementType::Float32)
                && dims(o.dtype()).len() == 2
        })
        .collect();
    let chosen =
        candidates
            .iter()
            .find(|o| o.name() == preferred)
            .or(if candidates.len() == 1 {
                candidates.first()
            } else {
                None
            })?;
    let d = dims(chosen.dtype());
    Some((
        chosen.name().to_string(),
        usize::try_from(d[1]).unwrap_or(0),
    ))
}

fn open_session(runtime: &Runtime, path: &Path, device: Device) -> Result<Session, EmbedError> {
    runtime.session(path, device).map_err(|e| EmbedError::Load {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Split `[N, dim]` output rows into unit vectors.
fn unit_rows(data: &[f32], dim: usize) -> Vec<Embedding> {
    data.chunks_exact(dim)
        .map(|row| {
            let mut v = row.to_vec();
            l2_normalize(&mut v);
            v
        })
        .collect()
}

/// A note when a model carries arvis's "generated, random weights" label.
fn generated_label(session: &Session) -> Option<String> {
    session
        .metadata()
        .ok()
        .and_then(|m| m.custom(GENERATED_KEY))
}

/// The CLIP image tower: RGB images → unit embeddings, in batches.
pub struct ImageEncoder {
    session: Session,
    input_name: String,
    output_name: String,
    /// Embedding dimensions (512 for ViT-B/32).
    pub dim: usize,
    /// Largest batch the model accepts (1 for fixed-batch exports).
    pub max_batch: usize,
    /// Set for arvis-generated random-weight models.
    pub generated: Option<String>,
}

impl ImageEncoder {
    /// Load and validate `pixel_values [N,3,224,224] → [N,D]`.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        device: Device,
    ) -> Result<ImageEncoder, EmbedError> {
        let session = open_session(runtime, path, device)?;
        let contract = |reason: String| EmbedError::Contract {
            path: path.into(),
            tower: "image",
            reason,
        };
        let inputs = session.inputs();
        let expect = "expected pixel_values [N, 3, 224, 224] float32 → image_embeds [N, D]";
        let [input] = inputs else {
            return Err(contract(format!(
                "{expect}; found inputs [{}]",
                describe(inputs)
            )));
        };
        let in_dims = dims(input.dtype());
        let side = i64::from(CLIP_INPUT_PX);
        let batch = match in_dims.as_slice() {
            [n, 3, h, w]
                if *h == side
                    && *w == side
                    && input.dtype().tensor_type() == Some(TensorElementType::Float32) =>
            {
                *n
            }
            _ => {
                return Err(contract(format!(
                    "{expect}; input `{}` is {:?}",
                    input.name(),
                    in_dims
                )));
            }
        };
        let Some((output_name, dim)) = pick_embedding_output(&session, "image_embeds") else {
            return Err(contract(format!(
                "{expect}; outputs are [{}]",
                describe(session.outputs())
            )));
        };
        if dim == 0 {
            return Err(contract(format!(
                "{expect}; output `{output_name}` has no fixed dimension"
            )));
        }
        Ok(ImageEncoder {
            input_name: input.name().to_string(),
            output_name,
            dim,
            max_batch: if batch > 0 { batch as usize } else { 32 },
            generated: generated_label(&session),
            session,
        })
    }

    /// Embed images (any sizes), `max_batch` at a time.
    pub fn embed(&mut self, images: &[&RgbImage]) -> Result<Vec<Embedding>, EmbedError> {
        let mut out = Vec::with_capacity(images.len());
        let mut tensor = Vec::new();
        for chunk in images.chunks(self.max_batch.max(1)) {
            tensor.clear();
            tensor.resize(chunk.len() * CLIP_TENSOR_LEN, 0.0);
            for (img, slot) in chunk.iter().zip(tensor.chunks_exact_mut(CLIP_TENSOR_LEN)) {
                clip_preprocess_into(img, slot);
            }
            out.extend(self.run(&tensor, chunk.len())?);
        }
        Ok(out)
    }

    /// Run on already-preprocessed CHW tensors (`n` of them, back to back).
    pub fn run(&mut self, tensor: &[f32], n: usize) -> Result<Vec<Embedding>, EmbedError> {
        let side = CLIP_INPUT_PX as usize;
        let input = TensorRef::from_array_view(([n, 3, side, side], tensor))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])?;
        let (_, data) = outputs[self.output_name.as_str()].try_extract_tensor::<f32>()?;
        Ok(unit_rows(data, self.dim))
    }
}

/// The CLIP text tower: strings → unit embeddings.
pub struct TextEncoder {
    session: Session,
    ids_name: String,
    mask_name: Option<String>,
    output_name: String,
    tokenizer: ClipTokenizer,
    /// Embedding dimensions.
    pub dim: usize,
    /// Set for arvis-generated random-weight models.
    pub generated: Option<String>,
}

impl TextEncoder {
    /// Load and validate `input_ids [N,77] (+ attention_mask) → [N,D]`.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        tokenizer: ClipTokenizer,
        device: Device,
    ) -> Result<TextEncoder, EmbedError> {
        let session = open_session(runtime, path, device)?;
        let contract = |reason: String| EmbedError::Contract {
            path: path.into(),
            tower: "text",
            reason,
        };
        let expect = "expected input_ids [N, 77] int64 (+ attention_mask) → text_embeds [N, D]";
        let inputs = session.inputs();
        let find = |name: &str| inputs.iter().find(|i| i.name() == name);
        let Some(ids) = find("input_ids").or_else(|| inputs.first()) else {
            return Err(contract(format!("{expect}; the model has no inputs")));
        };
        let ids_ok = matches!(dims(ids.dtype()).as_slice(), [_, l] if *l == CONTEXT_LENGTH as i64 || *l < 0)
            && ids.dtype().tensor_type() == Some(TensorElementType::Int64);
        let mask = find("attention_mask");
        if !ids_ok || inputs.len() > 1 + usize::from(mask.is_some()) {
            return Err(contract(format!(
                "{expect}; found inputs [{}]",
                describe(inputs)
            )));
        }
        let Some((output_name, dim)) = pick_embedding_output(&session, "text_embeds") else {
            return Err(contract(format!(
                "{expect}; outputs are [{}]",
                describe(session.outputs())
            )));
        };
        Ok(TextEncoder {
            ids_name: ids.name().to_string(),
            mask_name: mask.map(|m| m.name().to_string()),
            output_name,
            tokenizer,
            dim,
            generated: generated_label(&session),
            session,
        })
    }

    /// Embed texts.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError> {
        let n = texts.len();
        let mut ids = Vec::with_capacity(n * CONTEXT_LENGTH);
        for t in texts {
            ids.extend(self.tokenizer.encode_padded(t));
        }
        let mask: Vec<i64> = ids.iter().map(|&i| i64::from(i != 0)).collect();
        let ids_t = TensorRef::from_array_view(([n, CONTEXT_LENGTH], ids.as_slice()))?;
        let outputs = match &self.mask_name {
            Some(m) => {
                let mask_t = TensorRef::from_array_view(([n, CONTEXT_LENGTH], mask.as_slice()))?;
                self.session
                    .run(ort::inputs![self.ids_name.as_str() => ids_t, m.as_str() => mask_t])?
            }
            None => self
                .session
                .run(ort::inputs![self.ids_name.as_str() => ids_t])?,
        };
        let (_, data) = outputs[self.output_name.as_str()].try_extract_tensor::<f32>()?;
        Ok(unit_rows(data, self.dim))
    }
}
