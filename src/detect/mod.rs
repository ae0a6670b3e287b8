//! YOLOv8 object detection: letterbox → ONNX Runtime → decode + NMS.

mod io;
mod labels;
pub mod letterbox;
pub mod postprocess;

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;

pub use io::IoMode;
pub use labels::COCO_LABELS;
pub use letterbox::Letterbox;
pub use postprocess::{DetectOptions, Detection, iou};

use crate::runtime::contract::{custom_metadata, describe, dims};
use crate::runtime::{Device, Runtime, RuntimeError};

/// Why detection could not run.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// ONNX Runtime is not available.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The model file could not be loaded as a session.
    #[error("cannot load model {path}: {reason}")]
    Load {
        /// The model file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model's inputs or outputs are not a YOLOv8 detector's.
    #[error("{path} is not a YOLOv8 detector: {reason}")]
    Contract {
        /// The model file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// ONNX Runtime failed while running the model.
    #[error("inference failed: {0}")]
    Inference(#[from] ort::Error),
    /// A setting cannot be used (e.g. an I/O mode the device cannot run).
    #[error("{0}")]
    Config(String),
}

/// Stage timings for one image, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimings {
    /// Reading and decoding the file.
    pub decode: f64,
    /// Letterboxing into the input tensor.
    pub preprocess: f64,
    /// The session run (with the I/O copies it needs).
    pub infer: f64,
    /// Decoding the output and NMS.
    pub postprocess: f64,
}

/// What one detector run returns: the detections and the time each stage took.
#[derive(Debug, Clone, Default)]
pub struct DetectOutput {
    /// Detections in source-image pixels, best first.
    pub detections: Vec<Detection>,
    /// What each stage took.
    pub timings: StageTimings,
}

/// What a frame pipeline needs of a detector: its class names, and detections for one frame.
/// Implemented by [`Detector`]; tests wrap the real one to hold it at a known moment.
pub trait FrameDetector: Send {
    /// The detector's class names, by class id.
    fn labels(&self) -> &[String];
    /// Detections for `image` with the time each stage took.
    fn detect_frame(
        &mut self,
        image: &RgbImage,
        opts: &DetectOptions,
    ) -> Result<DetectOutput, DetectError>;

    /// Detections for several frames (one per live source), in order. The default runs them
    /// one after another; a detector with a batch-capable model runs them as one batch.
    fn detect_frames(
        &mut self,
        images: &[&RgbImage],
        opts: &DetectOptions,
    ) -> Result<Vec<DetectOutput>, DetectError> {
        images.iter().map(|i| self.detect_frame(i, opts)).collect()
    }

    /// Whether [`FrameDetector::detect_frames`] runs several frames as one batch.
    fn batched(&self) -> bool {
        false
    }
}

impl FrameDetector for Detector {
    fn labels(&self) -> &[String] {
        Detector::labels(self)
    }

    fn detect_frame(
        &mut self,
        image: &RgbImage,
        opts: &DetectOptions,
    ) -> Result<DetectOutput, DetectError> {
        self.detect(image, opts)
    }

    fn detect_frames(
        &mut self,
        images: &[&RgbImage],
        opts: &DetectOptions,
    ) -> Result<Vec<DetectOutput>, DetectError> {
        if self.batch.is_some() && images.len() > 1 {
            let mut out = Vec::with_capacity(images.len());
            for chunk in images.chunks(MAX_BATCH) {
                out.extend(self.detect_batch(chunk, opts)?);
            }
            return Ok(out);
        }
        images.iter().map(|i| self.detect(i, opts)).collect()
    }

    fn batched(&self) -> bool {
        self.batch.is_some()
    }
}

/// The most frames one batched run takes (more are split into several runs).
pub const MAX_BATCH: usize = 8;

/// How a detector runs the frames of several sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batching {
    /// As one session run through the model's batch twin (validated against batch 1).
    Batched {
        /// The twin's file.
        twin: PathBuf,
    },
    /// One run per frame in the same session, and why.
    Sequential(String),
}

impl Batching {
    /// True when frames go through the batch twin.
    pub fn is_batched(&self) -> bool {
        matches!(self, Batching::Batched { .. })
    }
}

impl std::fmt::Display for Batching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Batching::Batched { .. } => write!(f, "batched (up to {MAX_BATCH} frames per run)"),
            Batching::Sequential(why) => write!(f, "one frame per run ({why})"),
        }
    }
}

/// The batch twin's session.
struct BatchSession {
    session: Session,
    input_name: String,
    output_name: String,
}

/// Run a plain session on an NCHW float batch; the output's shape and values.
fn run_raw(
    session: &mut Session,
    (input, output): (&str, &str),
    shape: [usize; 4],
    data: &[f32],
) -> Result<(Vec<i64>, Vec<f32>), ort::Error> {
    let tensor = TensorRef::from_array_view((shape, data))?;
    let outputs = session.run(ort::inputs![input => tensor])?;
    let (shape, values) = outputs[output].try_extract_tensor::<f32>()?;
    Ok((shape.to_vec(), values.to_vec()))
}

/// Two deterministic frames of different sizes with edges and colour, to compare the batch
/// twin's raw output with batch 1's over every anchor and class.
fn probe_frames() -> [RgbImage; 2] {
    let a = RgbImage::from_fn(320, 240, |x, y| {
        let on = ((x / 40) + (y / 40)) % 2 == 0;
        image::Rgb([(x % 256) as u8, if on { 220 } else { 30 }, (y % 256) as u8])
    });
    let b = RgbImage::from_fn(200, 300, |x, y| {
        let r = (x as i32 - 100).pow(2) + (y as i32 - 150).pow(2);
        image::Rgb([if r < 4900 { 250 } else { 10 }, (x * y % 256) as u8, 128])
    });
    [a, b]
}

/// A letterboxed input ready for the session; cheap to build on another thread.
pub struct Prepared {
    /// How the image was scaled and padded (to map boxes back).
    pub letterbox: Letterbox,
    /// The NCHW float tensor.
    pub tensor: Vec<f32>,
}

/// Everything needed to preprocess for a model, without the model (Send + Copy).
#[derive(Debug, Clone, Copy)]
pub struct Preprocessor {
    /// The model's input width and height.
    pub input_size: (u32, u32),
}

impl Preprocessor {
    /// Letterbox `image` into a fresh NCHW tensor.
    pub fn prepare(&self, image: &RgbImage) -> Prepared {
        let letterbox = Letterbox::new(image.dimensions(), self.input_size);
        let mut tensor = vec![0.0; 3 * (self.input_size.0 * self.input_size.1) as usize];
        letterbox.fill_nchw(image, &mut tensor);
        Prepared { letterbox, tensor }
    }
}

/// Decode YOLOv8's `[1, 4 + classes, anchors]` output into detections in image pixels; also
/// returns the postprocess ms.
fn decode_output(
    shape: &[i64],
    data: &[f32],
    opts: &DetectOptions,
    letterbox: &Letterbox,
) -> (Result<Vec<Detection>, ort::Error>, f64) {
    let t = Instant::now();
    let dets = match *shape {
        [1, rows, anchors] if rows >= 5 => Ok(postprocess::decode(
            data,
            rows as usize,
            anchors as usize,
            opts,
            letterbox.image_from_model(),
            letterbox.image_size,
        )),
        _ => Err(ort::Error::new(format!(
            "unexpected output shape {shape:?}"
        ))),
    };
    (dets, t.elapsed().as_secs_f64() * 1e3)
}

/// A loaded YOLOv8 detector session.
pub struct Detector {
    session: Session,
    /// `None`: plain `session.run`.
    bound: Option<io::BoundIo>,
    input_name: String,
    output_name: String,
    input_size: (u32, u32),
    /// Class names, index = class id.
    pub labels: Vec<String>,
    /// Human name of the model (manifest id or file name).
    pub model_name: String,
    /// Where the session's nodes run (CPU, all on CUDA, or mixed).
    pub placement: crate::runtime::Placement,
    /// Graph mode's explicit host ↔ device copies in the last run.
    last_copies: io::Copies,
    /// The model file the session was loaded from.
    model_path: PathBuf,
    /// The batch twin's session, once [`Detector::enable_batching`] has validated one.
    batch: Option<BatchSession>,
    batching: Batching,
}

impl Detector {
    /// Load and validate a detector from an ONNX file, with the I/O mode `ARVIS_DETECTOR_IO` asks for.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        model_name: &str,
        device: Device,
    ) -> Result<Detector, DetectError> {
        Self::load_with(
            runtime,
            path,
            model_name,
            device,
            IoMode::from_settings(device).map_err(DetectError::Config)?,
        )
    }

    /// Load with an explicit I/O mode (benchmarks compare them).
    pub fn load_with(
        runtime: &Runtime,
        path: &Path,
        model_name: &str,
        device: Device,
        io: IoMode,
    ) -> Result<Detector, DetectError> {
        io.check(device).map_err(DetectError::Config)?;
        let (session, placement) = runtime
            .session_with(path, device, io == IoMode::Graph)
            .map_err(|e| DetectError::Load {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mut detector = Self::from_session(session, path, model_name)?;
        detector.placement = placement;
        detector.set_io(io, device)?;
        Ok(detector)
    }

    /// Validate the session's inputs/outputs against the YOLOv8 detect contract.
    pub fn from_session(
        session: Session,
        path: &Path,
        model_name: &str,
    ) -> Result<Detector, DetectError> {
        let contract = |reason: String| DetectError::Contract {
            path: path.to_path_buf(),
            reason,
        };
        let (inputs, outputs) = (session.inputs(), session.outputs());
        let expect = "expected one input `images` [1, 3, H, W] float32 and one output [1, 4 + classes, anchors] (YOLOv8n COCO: [1, 84, 8400])";
        if inputs.len() != 1 || outputs.is_empty() {
            return Err(contract(format!(
                "{expect}; found inputs [{}] and outputs [{}]",
                describe(inputs),
                describe(outputs)
            )));
        }
        let in_dims = dims(inputs[0].dtype());
        let in_type = inputs[0].dtype().tensor_type();
        let square = |d: i64| if d > 0 { Some(d as u32) } else { None };
        let input_size = match in_dims.as_slice() {
            [n, 3, h, w]
                if (*n == 1 || *n < 0)
                    && in_type == Some(ort::value::TensorElementType::Float32) =>
            {
                (square(*w).unwrap_or(640), square(*h).unwrap_or(640))
            }
            _ => {
                return Err(contract(format!(
                    "{expect}; input `{}` is {:?} of {:?}",
                    inputs[0].name(),
                    in_dims,
                    in_type
                )));
            }
        };
        let out_dims = dims(outputs[0].dtype());
        let ok_output = matches!(out_dims.as_slice(), [n, rows, _] if (*n == 1 || *n < 0) && (*rows < 0 || *rows >= 5));
        if !ok_output {
            return Err(contract(format!(
                "{expect}; output `{}` is {:?}",
                outputs[0].name(),
                out_dims
            )));
        }
        let labels = custom_metadata(&session, "names")
            .map(|names| labels::parse_names(&names))
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| COCO_LABELS.iter().map(|s| s.to_string()).collect());
        Ok(Detector {
            bound: None,
            input_name: inputs[0].name().to_string(),
            output_name: outputs[0].name().to_string(),
            session,
            input_size,
            labels,
            model_name: model_name.to_string(),
            placement: crate::runtime::Placement::Cpu,
            last_copies: io::Copies::default(),
            model_path: path.to_path_buf(),
            batch: None,
            batching: Batching::Sequential("batching was not asked for".into()),
        })
    }

    /// How this detector runs several sources' frames.
    pub fn batching(&self) -> &Batching {
        &self.batching
    }

    /// Derive (once, into the cache) the model's batch twin, load it on `device`, and check on
    /// two probe frames that its output matches batch 1's; then [`FrameDetector::detect_frames`]
    /// runs several frames as one batch. Any failure leaves the detector running frames one
    /// after another, with the reason in [`Detector::batching`].
    pub fn enable_batching(&mut self, runtime: &Runtime, device: Device) -> &Batching {
        let dir = crate::paths::cache_dir().join("converted");
        self.enable_batching_in(runtime, device, &dir)
    }

    /// [`Detector::enable_batching`] with the twin kept in `dir`.
    pub fn enable_batching_in(
        &mut self,
        runtime: &Runtime,
        device: Device,
        dir: &Path,
    ) -> &Batching {
        self.batching = match self.load_batch_twin(runtime, device, dir) {
            Ok((twin, session)) => {
                self.batch = Some(session);
                Batching::Batched { twin }
            }
            Err(why) => {
                self.batch = None;
                Batching::Sequential(why)
            }
        };
        &self.batching
    }

    fn load_batch_twin(
        &mut self,
        runtime: &Runtime,
        device: Device,
        dir: &Path,
    ) -> Result<(PathBuf, BatchSession), String> {
        if self.io_mode() == IoMode::Graph {
            return Err("a CUDA graph replays batch 1 only".into());
        }
        let twin = crate::models::batch::ensure_twin(&self.model_path, dir)
            .map_err(|e| format!("{e:#}"))?;
        let (session, _) = runtime
            .session_with(&twin, device, false)
            .map_err(|e| format!("loading the batch twin {}: {e}", twin.display()))?;
        let mut batch = BatchSession {
            input_name: session.inputs()[0].name().to_string(),
            output_name: session.outputs()[0].name().to_string(),
            session,
        };
        let (w, h) = self.input_size;
        let prepared: Vec<Prepared> = probe_frames()
            .iter()
            .map(|f| self.preprocessor().prepare(f))
            .collect();
        let names = (self.input_name.as_str(), self.output_name.as_str());
        let mut single = Vec::new();
        for p in &prepared {
            let (_, v) = run_raw(
                &mut self.session,
                names,
                [1, 3, h as usize, w as usize],
                &p.tensor,
            )
            .map_err(|e| format!("probing batch 1: {e}"))?;
            single.extend(v);
        }
        let stacked: Vec<f32> = prepared
            .iter()
            .flat_map(|p| p.tensor.iter().copied())
            .collect();
        let (shape, batched) = run_raw(
            &mut batch.session,
            (&batch.input_name, &batch.output_name),
            [prepared.len(), 3, h as usize, w as usize],
            &stacked,
        )
        .map_err(|e| format!("probing the batch twin: {e}"))?;
        if shape.first() != Some(&(prepared.len() as i64)) || batched.len() != single.len() {
            return Err(format!("the batch twin returned shape {shape:?}"));
        }
        // Box coordinates are model pixels (up to 640) and scores 0..1: a tolerance relative to
        // each value covers FP16 kernels while a real batching bug (frames mixed) is far off.
        let worst = single
            .iter()
            .zip(&batched)
            .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
            .fold(0.0f32, f32::max);
        if worst.is_nan() || worst > 2e-3 {
            return Err(format!(
                "the batch twin's output differs from batch 1 (relative error {worst:.2e})"
            ));
        }
        tracing::debug!(twin = %twin.display(), worst, "batch twin validated");
        Ok((twin, batch))
    }

    /// Detections for several frames in one run of the batch twin (at most [`MAX_BATCH`]).
    /// Each frame's `infer` is the whole run: what the frame waited for.
    fn detect_batch(
        &mut self,
        images: &[&RgbImage],
        opts: &DetectOptions,
    ) -> Result<Vec<DetectOutput>, DetectError> {
        let Some(batch) = self.batch.as_mut() else {
            return Err(DetectError::Config("the detector has no batch twin".into()));
        };
        let t0 = Instant::now();
        let pre = Preprocessor {
            input_size: self.input_size,
        };
        let prepared: Vec<Prepared> = images.iter().map(|i| pre.prepare(i)).collect();
        let stacked: Vec<f32> = prepared
            .iter()
            .flat_map(|p| p.tensor.iter().copied())
            .collect();
        let preprocess = t0.elapsed().as_secs_f64() * 1e3;
        let (w, h) = self.input_size;
        let (shape, data) = run_raw(
            &mut batch.session,
            (&batch.input_name, &batch.output_name),
            [prepared.len(), 3, h as usize, w as usize],
            &stacked,
        )?;
        let infer = t0.elapsed().as_secs_f64() * 1e3 - preprocess;
        let [n, rows, anchors] = *shape.as_slice() else {
            return Err(ort::Error::new(format!("unexpected output shape {shape:?}")).into());
        };
        if n as usize != prepared.len() || data.len() != (n * rows * anchors) as usize {
            return Err(ort::Error::new(format!("unexpected output shape {shape:?}")).into());
        }
        let per = (rows * anchors) as usize;
        prepared
            .iter()
            .zip(data.chunks_exact(per))
            .map(|(p, values)| {
                let (dets, postprocess) =
                    decode_output(&[1, rows, anchors], values, opts, &p.letterbox);
                Ok(DetectOutput {
                    detections: dets?,
                    timings: StageTimings {
                        decode: 0.0,
                        preprocess,
                        infer,
                        postprocess,
                    },
                })
            })
            .collect()
    }

    /// Switch how frames reach the session (`Graph` needs a session built with CUDA graphs on,
    /// which [`Detector::load_with`] does).
    pub fn set_io(&mut self, mode: IoMode, device: Device) -> Result<(), DetectError> {
        mode.check(device).map_err(DetectError::Config)?;
        self.bound = match mode {
            IoMode::Plain => None,
            IoMode::Bound | IoMode::Graph => {
                let (w, h) = self.input_size;
                let output_shape = match dims(self.session.outputs()[0].dtype()).as_slice() {
                    &[n, rows, anchors] if n > 0 && rows > 0 && anchors > 0 => {
                        Some([n as usize, rows as usize, anchors as usize])
                    }
                    _ => None,
                };
                Some(io::BoundIo::new(
                    &self.session,
                    mode,
                    device,
                    (&self.input_name, [1, 3, h as usize, w as usize]),
                    (&self.output_name, output_shape),
                )?)
            }
        };
        Ok(())
    }

    /// How frames reach the session.
    pub fn io_mode(&self) -> IoMode {
        self.bound.as_ref().map_or(IoMode::Plain, io::BoundIo::mode)
    }

    /// The matching preprocessor, to run on another thread.
    pub fn preprocessor(&self) -> Preprocessor {
        Preprocessor {
            input_size: self.input_size,
        }
    }

    /// Model input width and height.
    pub fn input_size(&self) -> (u32, u32) {
        self.input_size
    }

    /// Class names, index = class id.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Label of a class id.
    pub fn label(&self, class_id: usize) -> &str {
        self.labels.get(class_id).map_or("?", String::as_str)
    }

    /// Class ids for names like "person" (errors on unknown names, listing a few known ones).
    pub fn class_ids(&self, names: &[String]) -> Result<Vec<usize>, String> {
        names
            .iter()
            .map(|n| {
                let n = n.trim();
                self.labels
                    .iter()
                    .position(|l| l.eq_ignore_ascii_case(n))
                    .or_else(|| n.parse::<usize>().ok().filter(|&i| i < self.labels.len()))
                    .ok_or_else(|| {
                        format!(
                            "unknown class `{n}` (classes are e.g. {})",
                            self.labels[..5.min(self.labels.len())].join(", ")
                        )
                    })
            })
            .collect()
    }

    /// Run the session on a prepared input and decode (timings: inference and postprocessing).
    /// In a bound mode the tensor is first copied into the bound buffer; that host copy is not
    /// counted as inference ([`Detector::detect`] letterboxes into the buffer instead).
    pub fn run(
        &mut self,
        prepared: &Prepared,
        opts: &DetectOptions,
    ) -> Result<DetectOutput, DetectError> {
        let t0 = Instant::now();
        let decode =
            |shape: &[i64], data: &[f32]| decode_output(shape, data, opts, &prepared.letterbox);
        let (dets, infer_ms, post_ms) = match self.bound.as_mut() {
            Some(bound) => {
                let mut staged_ms = 0.0;
                let ((dets, post), copies) = bound.run_with(
                    &mut self.session,
                    |host| {
                        io::copy_input(host, &prepared.tensor)?;
                        staged_ms = t0.elapsed().as_secs_f64() * 1e3;
                        Ok(())
                    },
                    decode,
                )?;
                self.last_copies = copies;
                (
                    dets,
                    t0.elapsed().as_secs_f64() * 1e3 - post - staged_ms,
                    post,
                )
            }
            None => {
                let input = self.input_tensor(prepared)?;
                let outputs = self
                    .session
                    .run(ort::inputs![self.input_name.as_str() => input])?;
                let infer_ms = t0.elapsed().as_secs_f64() * 1e3;
                let (shape, data) =
                    outputs[self.output_name.as_str()].try_extract_tensor::<f32>()?;
                let (dets, post) = decode(shape, data);
                (dets, infer_ms, post)
            }
        };
        Ok(DetectOutput {
            detections: dets?,
            timings: StageTimings {
                infer: infer_ms,
                postprocess: post_ms,
                ..StageTimings::default()
            },
        })
    }

    /// The graph-mode host ↔ device copies of the last run (zero in the other modes).
    pub fn last_copies(&self) -> io::Copies {
        self.last_copies
    }

    fn input_tensor<'a>(&self, prepared: &'a Prepared) -> Result<TensorRef<'a, f32>, ort::Error> {
        let (w, h) = self.input_size;
        TensorRef::from_array_view((
            [1usize, 3, h as usize, w as usize],
            prepared.tensor.as_slice(),
        ))
    }

    /// Bare run on a prepared input (the benchmark's floor): `session.run`, or for a bound or
    /// graph session its binding with nothing decoded. A graph session must never go through a
    /// plain `session.run`: once captured, ONNX Runtime only replays the graph into its bound
    /// outputs and a plain run gets nothing back.
    pub fn run_bare(&mut self, prepared: &Prepared) -> Result<(), DetectError> {
        if let Some(bound) = self.bound.as_mut() {
            bound.run(&mut self.session, &prepared.tensor, |_, _| ())?;
            return Ok(());
        }
        let input = self.input_tensor(prepared)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])?;
        drop(outputs);
        Ok(())
    }

    /// Detect objects in an RGB image. In a bound mode the letterbox is written straight into
    /// the bound (on CUDA, pinned) input buffer: no intermediate tensor, no copy.
    pub fn detect(
        &mut self,
        image: &RgbImage,
        opts: &DetectOptions,
    ) -> Result<DetectOutput, DetectError> {
        let t0 = Instant::now();
        if let Some(bound) = self.bound.as_mut() {
            let letterbox = Letterbox::new(image.dimensions(), self.input_size);
            let mut preprocess = 0.0;
            let ((dets, postprocess), copies) = bound.run_with(
                &mut self.session,
                |host| {
                    letterbox.fill_nchw(image, host);
                    preprocess = t0.elapsed().as_secs_f64() * 1e3;
                    Ok(())
                },
                |shape, data| decode_output(shape, data, opts, &letterbox),
            )?;
            self.last_copies = copies;
            let infer = t0.elapsed().as_secs_f64() * 1e3 - preprocess - postprocess;
            return Ok(DetectOutput {
                detections: dets?,
                timings: StageTimings {
                    decode: 0.0,
                    preprocess,
                    infer,
                    postprocess,
                },
            });
        }
        let prepared = self.preprocessor().prepare(image);
        let preprocess = t0.elapsed().as_secs_f64() * 1e3;
        let mut out = self.run(&prepared, opts)?;
        out.timings.preprocess = preprocess;
        Ok(out)
    }
}
