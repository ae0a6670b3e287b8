//! `arvis detect`: detections for images, as text or JSON Lines, optionally saved annotated.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::clip::{ClipArgs, IndexArg};
use super::search::MatchJson;
use crate::detect::{DetectOptions, Detection, Detector, StageTimings};
use crate::pipeline::{Prefetch, PrefetchPriority};
use crate::render::{Annotator, BoxLabel};
use crate::runtime::DeviceRequest;
use crate::search::{GalleryIndex, RegionMatcher};
use crate::source::DecodeLimits;
pub use crate::source::files::expand_inputs;

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Image files or directories (searched recursively for images).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Print one JSON object per input (JSON Lines) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write annotated copies of the images into this directory.
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    #[command(flatten)]
    pub detector: DetectorArgs,
    #[command(flatten)]
    pub matching: MatchArgs,
}

/// The detector and its filters (shared by `detect` and `video`).
#[derive(Debug, Args)]
pub struct DetectorArgs {
    /// Minimum confidence.
    #[arg(long, default_value_t = 0.25)]
    pub conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.45)]
    pub iou: f32,
    /// Keep only these classes (names or ids, comma-separated), e.g. person,bus.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Most detections per image.
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Detector: a manifest id (see `arvis models list`) or a path to an .onnx file.
    #[arg(long, env = "ARVIS_DETECTOR")]
    pub model: Option<String>,
}

impl DetectorArgs {
    /// Load the detector and turn the filters into options (class names checked against it).
    pub fn load(
        &self,
        request: DeviceRequest,
    ) -> anyhow::Result<(Detector, crate::runtime::Device, DetectOptions)> {
        let (detector, device) = super::load_detector(self.model.as_deref(), request)?;
        let classes = match &self.classes {
            Some(names) => Some(detector.class_ids(names).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let opts = DetectOptions {
            conf: self.conf,
            iou: self.iou,
            max_det: self.max_det,
            classes,
        };
        Ok((detector, device, opts))
    }
}

/// `--match` and its settings (shared by `detect` and `video`).
#[derive(Debug, Args)]
pub struct MatchArgs {
    /// Match every detected region against the gallery index (see `arvis index add`).
    #[arg(long = "match")]
    pub match_regions: bool,
    /// Gallery matches per region.
    #[arg(long, default_value_t = 3)]
    pub match_k: usize,
    /// Drop matches below this cosine similarity.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    pub min_score: f32,
    #[command(flatten)]
    pub index: IndexArg,
    #[command(flatten)]
    pub clip: ClipArgs,
}

impl MatchArgs {
    /// The CLIP encoder and gallery index, opened once, when `--match` was given.
    pub fn matcher(&self, request: DeviceRequest) -> anyhow::Result<Option<RegionMatcher>> {
        if !self.match_regions {
            return Ok(None);
        }
        let loaded = self.clip.load_image_encoder(request)?;
        let index = GalleryIndex::open(&self.index.dir(), &loaded.meta)?;
        Ok(Some(RegionMatcher {
            encoder: loaded.encoder,
            index,
            k: self.match_k,
        }))
    }
}

/// The JSON shape of one detection.
#[derive(Debug, Serialize)]
pub struct DetectionJson<'a> {
    pub class_id: usize,
    pub label: &'a str,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Track id (only for videos: `null` until a track is confirmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_id: Option<Option<u64>>,
    /// Gallery matches (only with --match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<MatchJson>>,
}

/// The JSON shape of one successfully processed image.
#[derive(Debug, Serialize)]
pub struct ImageJson<'a> {
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub detections: Vec<DetectionJson<'a>>,
    pub timings_ms: StageTimings,
}

/// The JSON shape of a failed input.
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    pub path: String,
    pub error: String,
}

fn round_to(v: f32, places: i32) -> f32 {
    let f = 10f32.powi(places);
    (v * f).round() / f
}

/// JSON form of detections (scores to 4 places, boxes to 0.1 px).
pub fn detections_json<'a>(labels: &'a [String], dets: &[Detection]) -> Vec<DetectionJson<'a>> {
    dets.iter()
        .map(|d| DetectionJson {
            class_id: d.class_id,
            label: labels.get(d.class_id).map_or("?", String::as_str),
            score: round_to(d.score, 4),
            bbox: d.bbox.map(|v| round_to(v, 1)),
            track_id: None,
            matches: None,
        })
        .collect()
}

/// The gallery side of `--match`: encoder and index, opened once.
struct Matcher {
    regions: RegionMatcher,
    min_score: f32,
}

impl Matcher {
    /// Top matches for each detection's region, embedded as one batch.
    fn match_regions(
        &mut self,
        img: &image::RgbImage,
        dets: &[Detection],
    ) -> anyhow::Result<Vec<Vec<MatchJson>>> {
        Ok(self
            .regions
            .match_regions(img, dets)?
            .into_iter()
            .map(|hits| MatchJson::from_hits(hits, self.min_score))
            .collect())
    }
}

pub fn run(args: DetectArgs, device_request: DeviceRequest) -> anyhow::Result<ExitCode> {
    let (inputs, skipped) = expand_inputs(&args.inputs);
    if skipped > 0 && !args.json {
        eprintln!("note: skipped {skipped} non-image file(s) found in the given directories");
    }
    if inputs.is_empty() {
        anyhow::bail!("no images found in {:?}", args.inputs);
    }
    let priority = PrefetchPriority::from_env().map_err(anyhow::Error::msg)?;
    // Decoding starts now, while ONNX Runtime and the model load.
    let prefetch = Prefetch::start(
        inputs.into_iter().map(|i| i.path).collect(),
        DecodeLimits::default(),
        priority,
    );
    let (mut detector, device, opts) = args.detector.load(device_request)?;
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let annotator = Annotator::new().context("the built-in label font failed to load")?;
    let mut matcher = args
        .matching
        .matcher(device_request)?
        .map(|regions| Matcher {
            regions,
            min_score: args.matching.min_score,
        });
    if !args.json {
        eprintln!("detector {} on {device}", detector.model_name);
    }

    let mut failures = 0usize;
    let mut saved_names = HashSet::new();
    let stdout = std::io::stdout();
    for staged in prefetch.with_preprocessor(detector.preprocessor()) {
        let path_str = staged.path.display().to_string();
        let outcome = staged.result.map_err(|e| e.to_string()).and_then(|s| {
            let (dets, infer, postprocess) = detector
                .run(&s.prepared, &opts)
                .map_err(|e| e.to_string())?;
            let timings = StageTimings {
                decode: s.decode_ms,
                preprocess: s.preprocess_ms,
                infer,
                postprocess,
            };
            Ok((s.image, dets, timings))
        });
        let mut out = stdout.lock();
        match outcome {
            Ok((img, dets, timings)) => {
                let matches = match matcher.as_mut() {
                    Some(m) => Some(m.match_regions(&img, &dets)?),
                    None => None,
                };
                if let Some(dir) = &args.save {
                    save_annotated(
                        &annotator,
                        &detector,
                        img.clone(),
                        &dets,
                        &staged.path,
                        dir,
                        &mut saved_names,
                    )?;
                }
                if args.json {
                    let mut detections = detections_json(detector.labels(), &dets);
                    for (d, m) in detections.iter_mut().zip(matches.into_iter().flatten()) {
                        d.matches = Some(m);
                    }
                    let line = ImageJson {
                        path: path_str,
                        width: img.width(),
                        height: img.height(),
                        detections,
                        timings_ms: timings,
                    };
                    writeln!(out, "{}", serde_json::to_string(&line)?)?;
                } else {
                    write_text(
                        &mut out,
                        &detector,
                        &path_str,
                        &img,
                        &dets,
                        matches.as_deref(),
                        &timings,
                    )?;
                }
                // With ARVIS_LOG=arvis=debug its uptime stamp times the run (docs/PERFORMANCE.md).
                tracing::debug!(path = %staged.path.display(), "image done");
            }
            Err(error) => {
                failures += 1;
                if args.json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string(&ErrorJson {
                            path: path_str,
                            error
                        })?
                    )?;
                } else {
                    eprintln!("{path_str}: error: {error}");
                }
            }
        }
    }
    Ok(if failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_text(
    out: &mut impl Write,
    detector: &Detector,
    path: &str,
    img: &image::RgbImage,
    dets: &[Detection],
    matches: Option<&[Vec<MatchJson>]>,
    t: &StageTimings,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{path} ({}x{}): {} detection(s)  [decode {:.1} ms, preprocess {:.1} ms, infer {:.1} ms, postprocess {:.1} ms]",
        img.width(),
        img.height(),
        dets.len(),
        t.decode,
        t.preprocess,
        t.infer,
        t.postprocess
    )?;
    for (i, d) in dets.iter().enumerate() {
        let [x1, y1, x2, y2] = d.bbox;
        writeln!(
            out,
            "  {:<14} {:.2}  [{x1:.0}, {y1:.0}, {x2:.0}, {y2:.0}]",
            detector.label(d.class_id),
            d.score
        )?;
        for m in matches.and_then(|all| all.get(i)).into_iter().flatten() {
            writeln!(out, "      resembles {} ({:.3})", m.path, m.score)?;
        }
    }
    Ok(())
}

/// Annotated copy next to its siblings in `dir`; name clashes from different folders get a suffix.
fn save_annotated(
    annotator: &Annotator,
    detector: &Detector,
    mut img: image::RgbImage,
    dets: &[Detection],
    source: &Path,
    dir: &Path,
    used: &mut HashSet<String>,
) -> anyhow::Result<()> {
    let labels: Vec<BoxLabel> = dets
        .iter()
        .map(|d| BoxLabel {
            class_id: d.class_id,
            bbox: d.bbox,
            text: format!("{} {:.2}", detector.label(d.class_id), d.score),
        })
        .collect();
    annotator.draw(&mut img, &labels);
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image");
    let ext = match source
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "jpg",
        _ => "png",
    };
    let mut name = format!("{stem}.{ext}");
    let mut n = 1;
    while !used.insert(name.clone()) {
        n += 1;
        name = format!("{stem}_{n}.{ext}");
    }
    let path = dir.join(name);
    img.save(&path)
        .with_context(|| format!("saving {}", path.display()))?;
    Ok(())
}
