//! `arvis detect`: detections for images, as text or JSON Lines, optionally saved annotated.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::clip::{ClipArgs, IndexArg};
use crate::detect::{DetectOptions, Detection, Detector, StageTimings};
use crate::pipeline::{Prefetch, PrefetchPriority};
use crate::render::{Annotator, BoxLabel};
use crate::report::MatchJson;
use crate::runtime::DeviceRequest;
use crate::search::{Decision, MatchView, Region, RegionMatcher, store};
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
    /// Minimum confidence, 0 to 1.
    #[arg(long, default_value_t = 0.25, allow_negative_numbers = true, value_parser = super::args::unit_interval)]
    pub conf: f32,
    /// NMS IoU threshold, 0 to 1: overlapping boxes of one class above it are merged.
    #[arg(long, default_value_t = 0.45, allow_negative_numbers = true, value_parser = super::args::unit_interval)]
    pub iou: f32,
    /// Keep only these classes (names or ids, comma-separated), e.g. person,bus.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Most detections per image, 1 to 10000.
    #[arg(long, default_value_t = 300, value_parser = super::args::count::<10_000>)]
    pub max_det: usize,
    /// Detector: a manifest id (see `arvis models list`) or a path to an .onnx file.
    #[arg(long, env = crate::settings::var::DETECTOR)]
    pub model: Option<String>,
}

impl DetectorArgs {
    /// Load the detector and turn the filters into options (class names checked against it).
    pub fn load(
        &self,
        request: DeviceRequest,
    ) -> anyhow::Result<(Detector, crate::runtime::Device, DetectOptions)> {
        self.load_for(request, None)
    }

    /// [`Self::load`] for a front end that runs the detector beside other threads (named).
    pub fn load_for(
        &self,
        request: DeviceRequest,
        threaded: Option<&str>,
    ) -> anyhow::Result<(Detector, crate::runtime::Device, DetectOptions)> {
        let (detector, device) = match threaded {
            Some(front_end) => {
                super::load_threaded_detector(self.model.as_deref(), request, front_end)?
            }
            None => super::load_detector(self.model.as_deref(), request)?,
        };
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
    /// Gallery matches per region, 1 to 1000.
    #[arg(long, default_value_t = crate::pipeline::frame::MATCH_K, value_parser = super::args::count::<1000>)]
    pub match_k: usize,
    /// Drop image matches below this cosine similarity, -1 to 1.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true, value_parser = super::args::cosine)]
    pub min_score: f32,
    #[command(flatten)]
    pub decision: DecisionArgs,
    #[command(flatten)]
    pub index: IndexArg,
    #[command(flatten)]
    pub clip: ClipArgs,
}

/// When a region is named as a known item (defaults: what `arvis index calibrate --save` stored
/// in the gallery, else built-in starting points).
#[derive(Debug, Clone, Args)]
pub struct DecisionArgs {
    /// Name a region as its best item only when the item's score is at least this (cosine,
    /// -1 to 1; default: the gallery's calibrated value, else 0.80).
    #[arg(long, allow_negative_numbers = true, value_parser = super::args::cosine)]
    pub item_threshold: Option<f32>,
    /// … and it beats the best other item by at least this (cosine difference, -1 to 1;
    /// default: calibrated, else 0.02).
    #[arg(long, allow_negative_numbers = true, value_parser = super::args::cosine)]
    pub item_margin: Option<f32>,
    /// Show a text-defined item when the region scores at least this against it (cosine, -1 to
    /// 1; image-to-text scores run far lower than image-to-image; default: stored, else 0.25).
    #[arg(long, allow_negative_numbers = true, value_parser = super::args::cosine)]
    pub text_threshold: Option<f32>,
}

impl DecisionArgs {
    /// The decision: these flags over the gallery's stored one over the built-in defaults.
    pub fn resolve(&self, stored: Option<Decision>) -> Decision {
        let base = stored.unwrap_or_default();
        Decision {
            threshold: self.item_threshold.unwrap_or(base.threshold),
            margin: self.item_margin.unwrap_or(base.margin),
            text_threshold: self.text_threshold.unwrap_or(base.text_threshold),
        }
    }
}

impl MatchArgs {
    /// The CLIP encoder and gallery index, opened once, when `--match` was given; with how
    /// matches are shown.
    pub fn matcher(
        &self,
        request: DeviceRequest,
    ) -> anyhow::Result<Option<(RegionMatcher, MatchView)>> {
        if !self.match_regions {
            return Ok(None);
        }
        let loaded = self.clip.load_image_encoder(request)?;
        let index = store::open(&self.index.location()?, &loaded.meta)?;
        let view = MatchView {
            min_score: self.min_score,
            decision: self.decision.resolve(index.stored_decision()?),
        };
        Ok(Some((
            RegionMatcher {
                encoder: loaded.encoder,
                index,
                k: self.match_k,
            },
            view,
        )))
    }
}

use crate::report::{ErrorJson, ImageJson, detections_json};

/// The gallery side of `--match`: encoder and index, opened once.
struct Matcher {
    regions: RegionMatcher,
    view: MatchView,
}

impl Matcher {
    /// Each detection's region with what the gallery says about it, embedded as one batch.
    fn match_regions(
        &mut self,
        img: &image::RgbImage,
        dets: &[Detection],
    ) -> anyhow::Result<Vec<Region>> {
        Ok(dets
            .iter()
            .zip(self.regions.match_regions(img, dets)?)
            .map(|(d, found)| {
                let mut r = Region::from_tracked(&crate::track::Tracked {
                    detection: *d,
                    track_id: None,
                });
                r.set_match(found);
                r
            })
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
    let paths: Vec<PathBuf> = inputs.into_iter().map(|i| i.path).collect();
    // Every annotated copy's name is fixed, and checked against the inputs, before anything runs.
    let save_targets = match &args.save {
        Some(dir) => Some(save_targets(&paths, dir)?),
        None => None,
    };
    let priority = PrefetchPriority::from_settings().map_err(anyhow::Error::msg)?;
    // Decoding starts now, while ONNX Runtime and the model load.
    let prefetch = Prefetch::start(paths, DecodeLimits::default(), priority);
    let (mut detector, device, opts) = args.detector.load(device_request)?;
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let annotator = Annotator::new().context("the built-in label font failed to load")?;
    let mut matcher = args
        .matching
        .matcher(device_request)?
        .map(|(regions, view)| Matcher { regions, view });
    if !args.json {
        eprintln!("detector {} on {device}", detector.model_name);
    }

    let mut failures = 0usize;
    let stdout = std::io::stdout();
    for (n, staged) in prefetch
        .with_preprocessor(detector.preprocessor())
        .enumerate()
    {
        let path_str = crate::paths::display_path(&staged.path);
        let outcome = staged.result.map_err(|e| e.to_string()).and_then(|s| {
            let out = detector
                .run(&s.prepared, &opts)
                .map_err(|e| e.to_string())?;
            let timings = StageTimings {
                decode: s.decode_ms,
                preprocess: s.preprocess_ms,
                ..out.timings
            };
            Ok((s.image, out.detections, timings))
        });
        let mut out = stdout.lock();
        match outcome {
            Ok((img, dets, timings)) => {
                let matches = match matcher.as_mut() {
                    Some(m) => Some(m.match_regions(&img, &dets)?),
                    None => None,
                };
                if let Some(target) = save_targets.as_ref().and_then(|t| t.get(n)) {
                    save_annotated(&annotator, &detector, img.clone(), &dets, target)?;
                }
                let view = matcher.as_ref().map(|m| m.view).unwrap_or_default();
                if args.json {
                    let mut detections = detections_json(detector.labels(), &dets);
                    for (d, r) in detections.iter_mut().zip(matches.iter().flatten()) {
                        d.set_matches(r, &view);
                    }
                    let line = ImageJson {
                        path: path_str,
                        width: img.width(),
                        height: img.height(),
                        detections,
                        timings_ms: timings,
                    };
                    crate::report::write_json_line(&mut out, &line)?;
                } else {
                    write_text(
                        &mut out,
                        &detector,
                        &path_str,
                        &img,
                        &dets,
                        matches.as_deref().map(|m| (m, &view)),
                        &timings,
                    )?;
                }
                // With ARVIS_LOG=arvis=debug its uptime stamp times the run (docs/PERFORMANCE.md).
                tracing::debug!(path = %staged.path.display(), "image done");
            }
            Err(error) => {
                failures += 1;
                if args.json {
                    crate::report::write_json_line(
                        &mut out,
                        &ErrorJson {
                            path: path_str,
                            error,
                        },
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
    matches: Option<(&[Region], &MatchView)>,
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
        let Some((region, view)) = matches.and_then(|(all, view)| all.get(i).map(|r| (r, view)))
        else {
            continue;
        };
        match region.known_item(&view.decision) {
            Some(k) => writeln!(
                out,
                "      is {} ({:.3}, leads by {:.3}; best image {})",
                k.label, k.score, k.margin, k.best.path
            )?,
            None => match region.items.first() {
                Some(best) => writeln!(
                    out,
                    "      unknown (closest item {} {:.3}, leads by {:.3})",
                    best.label, best.score, best.margin
                )?,
                None => writeln!(out, "      unknown (the gallery is empty)")?,
            },
        }
        if let Some(t) = region.text_item(&view.decision) {
            writeln!(out, "      looks like \"{}\" ({:.3})", t.label, t.score)?;
        }
        for m in MatchJson::from_hits(region.hits.clone(), view.min_score) {
            writeln!(
                out,
                "      resembles {} [{}] ({:.3})",
                m.path, m.item, m.score
            )?;
        }
    }
    Ok(())
}

/// Where each input's annotated copy goes: `dir/<stem>.<jpg|png>`, with `_2`, `_3`… for
/// names that clash (same stem from different folders). An input is never overwritten: if a
/// target is one of the inputs (the same file by device and inode, e.g. `--save` naming the
/// input folder) the run is refused before anything is written. Refusing, rather than writing
/// beside it under another name, keeps a re-run from detecting its own annotated copies.
fn save_targets(inputs: &[PathBuf], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let ids: std::collections::HashMap<crate::sink::FileId, &PathBuf> = inputs
        .iter()
        .filter_map(|p| crate::sink::FileId::of(p).map(|id| (id, p)))
        .collect();
    let mut used = HashSet::new();
    let mut targets = Vec::with_capacity(inputs.len());
    for source in inputs {
        let stem = source
            .file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy());
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
        let target = dir.join(name);
        if let Some(input) = crate::sink::FileId::of(&target).and_then(|id| ids.get(&id)) {
            anyhow::bail!(
                "--save {} would overwrite the input {} with its annotated copy; arvis never writes over an input. Fix: choose a --save directory outside the folders being detected",
                dir.display(),
                input.display(),
            );
        }
        targets.push(target);
    }
    Ok(targets)
}

/// Draw the detections on `img` and write it to `target` (temp file and rename: a reader never
/// sees half an image, and a failed write leaves whatever was there).
fn save_annotated(
    annotator: &Annotator,
    detector: &Detector,
    mut img: image::RgbImage,
    dets: &[Detection],
    target: &Path,
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
    let out = crate::sink::AtomicOutput::new("--save", target)?;
    img.save(out.temp_path())
        .with_context(|| format!("saving {}", target.display()))?;
    out.commit()
        .with_context(|| format!("saving {}", target.display()))?;
    Ok(())
}
