//! Saving what is on screen: the frame with its overlay as PNG (drawn by the CPU annotator in the
//! app's palette and font) and the detections as JSON in `arvis detect --json`'s shape.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::settings::Settings;
use crate::detect::StageTimings;
use crate::pipeline::live::{PipelineStatus, Snapshot};
use crate::render::{Annotator, region_labels};
use crate::report::{ImageJson, regions_json};
use crate::search::Region;

/// Write `<stem>.png` and `<stem>.json` into `dir`; returns the PNG's path.
pub fn save(
    shown: &Snapshot,
    status: &PipelineStatus,
    settings: &Settings,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = status
        .source_info
        .as_ref()
        .map_or_else(|| "frame".to_string(), |i| i.name.clone());
    let stem_base = Path::new(&name)
        .file_stem()
        .map_or_else(|| "frame".into(), |s| s.to_string_lossy().into_owned());
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let stem = format!("arvis-{stem_base}-{millis}");

    let kept: Vec<&Region> = shown
        .regions
        .iter()
        .filter(|r| settings.class_enabled(r.detection.class_id))
        .collect();
    let names = &status.class_names;

    let mut image = (*shown.frame.image).clone();
    Annotator::new()
        .context("the built-in label font failed to load")?
        .draw(
            &mut image,
            &region_labels(&kept, names, settings.plate_parts(status.gallery_decision)),
        );
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the PNG")?;
    let png_path = dir.join(format!("{stem}.png"));
    crate::util::write_atomic(&png_path, &png)
        .with_context(|| format!("writing {}", png_path.display()))?;

    let detections = regions_json(
        names,
        &kept,
        false,
        shown.matched,
        &settings.match_view(status.gallery_decision),
    );
    let t = shown.timings;
    let json = ImageJson {
        path: status
            .source_info
            .as_ref()
            .map_or(name.clone(), |_| status.source_label.clone()),
        width: shown.frame.image.width(),
        height: shown.frame.image.height(),
        detections,
        timings_ms: StageTimings {
            decode: 0.0,
            preprocess: t.preprocess_ms,
            infer: t.infer_ms,
            postprocess: t.postprocess_ms,
        },
    };
    let json_path = dir.join(format!("{stem}.json"));
    let mut text = serde_json::to_string(&json)?;
    text.push('\n');
    crate::util::write_atomic(&json_path, text.as_bytes())
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(png_path)
}
