//! CLIP image and text encoders over ONNX Runtime. Input and output names are read from the
//! session, so any export with CLIP's interface works (HF/optimum exports, open_clip, ours).

use std::path::{Path, PathBuf};

use image::RgbImage;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};

use super::preprocess::{CLIP_INPUT_PX, CLIP_TENSOR_LEN, clip_preprocess_into};
use super::tokenizer::{CONTEXT_LENGTH, ClipTokenizer};
use crate::models::generate::GENERATED_KEY;
use crate::runtime::contract::{custom_metadata, describe, dims};
use crate::runtime::{Device, Placement, Runtime, RuntimeError};

/// Why an encoder could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// ONNX Runtime is not available.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The model file could not be loaded as a session.
    #[error("cannot load CLIP model {path}: {reason}")]
    Load {
        /// The model file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model's interface is not a CLIP tower's.
    #[error("{path} does not have the CLIP {tower} interface: {reason}")]
    Contract {
        /// The model file.
        path: PathBuf,
        /// Which tower: image or text.
        tower: &'static str,
        /// What does not match.
        reason: String,
    },
    /// ONNX Runtime failed while running the model.
    #[error("embedding failed: {0}")]
    Inference(#[from] ort::Error),
    /// A setting cannot be used.
    #[error("{0}")]
    Setting(String),
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

fn open_session(
    runtime: &Runtime,
    path: &Path,
    device: Device,
) -> Result<(Session, Placement), EmbedError> {
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
/// Timed runs per batch size when tuning (their median counts).
pub const TUNE_RUNS: usize = 5;

/// ONNX metadata naming the CLIP export a tower belongs to; the image and text towers of one
/// pair carry the same value (arvis's generated models, and any export a user marks).
pub const CLIP_FAMILY_KEY: &str = "arvis.clip_family";

fn family_label(session: &Session) -> Option<String> {
    custom_metadata(session, CLIP_FAMILY_KEY).filter(|f| !f.trim().is_empty())
}

fn generated_label(session: &Session) -> Option<String> {
    custom_metadata(session, GENERATED_KEY)
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
    /// Crops per `session.run`: `max_batch` at first, lowered when the device runs out of
    /// memory, or chosen by [`ImageEncoder::tune_batch`].
    pub batch: usize,
    /// Set for arvis-generated random-weight models.
    pub generated: Option<String>,
    /// The CLIP export this tower belongs to, when known (see [`CLIP_FAMILY_KEY`]).
    pub family: Option<String>,
    /// Where the session's nodes run (CPU, all on CUDA, or mixed).
    pub placement: Placement,
}

/// Whether an inference error is the device running out of memory (worth a smaller batch).
pub fn is_out_of_memory(e: &EmbedError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    [
        "out of memory",
        "failed to allocate",
        "alloc_failed",
        "memoryallocation",
        "bad_alloc",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Run `total` items through `run` in batches of at most `*batch`, halving `*batch` and retrying
/// when `is_oom` says a batch did not fit. Results come back in order.
pub(crate) fn run_batched<T, E>(
    total: usize,
    batch: &mut usize,
    mut run: impl FnMut(std::ops::Range<usize>) -> Result<Vec<T>, E>,
    is_oom: impl Fn(&E) -> bool,
) -> Result<Vec<T>, E> {
    let mut out = Vec::with_capacity(total);
    let mut i = 0;
    while i < total {
        let n = (*batch).max(1).min(total - i);
        match run(i..i + n) {
            Ok(v) => {
                out.extend(v);
                i += n;
            }
            Err(e) if n > 1 && is_oom(&e) => {
                *batch = n / 2;
                tracing::warn!(
                    "out of device memory at batch {n}: continuing with batches of {}",
                    *batch
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The largest CLIP batch tried on `device` for a model with a dynamic batch: `ARVIS_CLIP_MAX_BATCH`,
/// else 32 on the CPU (larger batches only cost memory there) and 256 on CUDA (where the best
/// batch is often above 64).
pub fn max_batch_for(device: Device) -> Result<usize, EmbedError> {
    let settings = crate::settings::current().map_err(|e| EmbedError::Setting(e.to_string()))?;
    Ok(settings.clip_max_batch.unwrap_or(match device {
        Device::Cpu => 32,
        Device::Cuda(_) => 256,
    }))
}

impl ImageEncoder {
    /// Load and validate `pixel_values [N,3,224,224] → [N,D]`.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        device: Device,
    ) -> Result<ImageEncoder, EmbedError> {
        let (session, placement) = open_session(runtime, path, device)?;
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
            max_batch: if batch > 0 {
                batch as usize
            } else {
                max_batch_for(device)?
            },
            batch: if batch > 0 { batch as usize } else { 32 },
            generated: generated_label(&session),
            family: family_label(&session),
            placement: placement.clone(),
            session,
        })
    }

    /// Embed images (any sizes), `batch` at a time (smaller if the device runs out of memory).
    pub fn embed(&mut self, images: &[&RgbImage]) -> Result<Vec<Embedding>, EmbedError> {
        let mut tensor = Vec::new();
        let mut batch = self.batch;
        let result = run_batched(
            images.len(),
            &mut batch,
            |range| {
                tensor.clear();
                tensor.resize(range.len() * CLIP_TENSOR_LEN, 0.0);
                for (img, slot) in images[range.clone()]
                    .iter()
                    .zip(tensor.chunks_exact_mut(CLIP_TENSOR_LEN))
                {
                    clip_preprocess_into(img, slot);
                }
                self.run(&tensor, range.len())
            },
            is_out_of_memory,
        );
        self.batch = batch;
        result
    }

    /// Embed images already preprocessed with [`clip_preprocess_into`] (`n` CHW tensors back to
    /// back), `batch` at a time with the same out-of-memory back-off as [`Self::embed`]. Lets a
    /// caller drop each decoded image as soon as its tensor is made.
    pub fn embed_preprocessed(
        &mut self,
        tensor: &[f32],
        n: usize,
    ) -> Result<Vec<Embedding>, EmbedError> {
        let mut batch = self.batch;
        let result = run_batched(
            n,
            &mut batch,
            |range| {
                let slice = &tensor[range.start * CLIP_TENSOR_LEN..range.end * CLIP_TENSOR_LEN];
                self.run(slice, range.len())
            },
            is_out_of_memory,
        );
        self.batch = batch;
        result
    }

    /// Measure crops/s for each candidate batch size (ascending, up to `max_batch`) on a
    /// synthetic input and keep the fastest as `batch`. Each size is warmed up, then timed as
    /// the median of [`TUNE_RUNS`] runs (one sample is too noisy to rank by); only running out
    /// of device memory stops the sweep. Returns (batch, crops/s) for each size measured.
    pub fn tune_batch(&mut self, candidates: &[usize]) -> Result<Vec<(usize, f64)>, EmbedError> {
        let mut tried = Vec::new();
        let mut best = (self.batch.min(self.max_batch).max(1), 0.0f64);
        for &n in candidates {
            let n = n.clamp(1, self.max_batch);
            if tried.iter().any(|&(b, _)| b == n) {
                continue;
            }
            let tensor = vec![0.5f32; n * CLIP_TENSOR_LEN];
            let mut timed = || -> Result<f64, EmbedError> {
                self.run(&tensor, n)?; // warm-up at this shape
                let mut secs = Vec::with_capacity(TUNE_RUNS);
                for _ in 0..TUNE_RUNS {
                    let t = std::time::Instant::now();
                    self.run(&tensor, n)?;
                    secs.push(t.elapsed().as_secs_f64());
                }
                secs.sort_by(f64::total_cmp);
                Ok(n as f64 / secs[secs.len() / 2].max(1e-9))
            };
            match timed() {
                Ok(rate) => {
                    tried.push((n, rate));
                    if rate > best.1 {
                        best = (n, rate);
                    }
                }
                Err(e) if is_out_of_memory(&e) => break,
                Err(e) => return Err(e),
            }
        }
        self.batch = best.0;
        Ok(tried)
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
    /// The CLIP export this tower belongs to, when known (see [`CLIP_FAMILY_KEY`]).
    pub family: Option<String>,
    /// Where the session's nodes run (CPU, all on CUDA, or mixed).
    pub placement: Placement,
}

impl TextEncoder {
    /// Load and validate `input_ids [N,77] (+ attention_mask) → [N,D]`.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        tokenizer: ClipTokenizer,
        device: Device,
    ) -> Result<TextEncoder, EmbedError> {
        let (session, placement) = open_session(runtime, path, device)?;
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
            family: family_label(&session),
            placement: placement.clone(),
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_clip_batch_ceiling_is_per_device() {
        if std::env::var_os(crate::settings::var::CLIP_MAX_BATCH).is_none() {
            assert_eq!(super::max_batch_for(Device::Cpu).unwrap(), 32);
            assert_eq!(super::max_batch_for(Device::Cuda(0)).unwrap(), 256);
        }
    }

    use super::*;

    #[test]
    fn batches_shrink_on_out_of_memory_and_results_stay_in_order() {
        // A "device" that cannot take more than 5 items at once.
        let mut batch = 32;
        let mut calls = Vec::new();
        let out = run_batched(
            23,
            &mut batch,
            |r| {
                calls.push(r.len());
                if r.len() > 5 {
                    Err("CUDA failure 2: out of memory")
                } else {
                    Ok(r.collect::<Vec<_>>())
                }
            },
            |e| e.contains("out of memory"),
        )
        .unwrap();
        assert_eq!(out, (0..23).collect::<Vec<_>>());
        assert_eq!(batch, 5);
        assert_eq!(&calls[..4], &[23, 11, 5, 5]);
        // Other errors, and running out at batch 1, are errors.
        let mut b = 8;
        assert!(run_batched(3, &mut b, |_| Err::<Vec<u8>, _>("bad input"), |_| false).is_err());
        let mut b = 1;
        assert!(run_batched(3, &mut b, |_| Err::<Vec<u8>, _>("out of memory"), |_| true).is_err());
    }
}
