//! The records arvis writes for other programs: one image's detections (`arvis detect --json`,
//! app snapshots), gallery matches (`search --json`, `--match`), failed inputs. Their field
//! names are the JSON format users' scripts read: change them only compatibly.

use serde::Serialize;

use crate::detect::{Detection, StageTimings};
use crate::search::{Hit, Region};

/// The JSON shape of one detection.
#[derive(Debug, Serialize)]
pub struct DetectionJson<'a> {
    /// Index into the detector's classes.
    pub class_id: usize,
    /// The class name.
    pub label: &'a str,
    /// Confidence (4 places).
    pub score: f32,
    /// `[x1, y1, x2, y2]` in image pixels (0.1 px).
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
    /// The image as given.
    pub path: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// What was found.
    pub detections: Vec<DetectionJson<'a>>,
    /// Stage times, ms.
    pub timings_ms: StageTimings,
}

/// The JSON shape of a failed input.
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    /// The input as given.
    pub path: String,
    /// Why it failed.
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

/// JSON form of a frame's regions. `with_tracks` adds each region's `track_id` (videos);
/// `matched` (matching ran on the frame) adds its `matches`, those scoring at least `min_score`.
pub fn regions_json<'a>(
    labels: &'a [String],
    regions: &[&Region],
    with_tracks: bool,
    matched: bool,
    min_score: f32,
) -> Vec<DetectionJson<'a>> {
    let dets: Vec<Detection> = regions.iter().map(|r| r.detection).collect();
    let mut json = detections_json(labels, &dets);
    for (j, r) in json.iter_mut().zip(regions) {
        if with_tracks {
            j.track_id = Some(r.track_id);
        }
        if matched {
            j.matches = Some(MatchJson::from_hits(r.hits.clone(), min_score));
        }
    }
    json
}

/// One result in JSON.
#[derive(Debug, Serialize)]
pub struct MatchJson {
    /// The gallery image.
    pub path: String,
    /// Cosine similarity (4 places).
    pub score: f32,
}

impl MatchJson {
    /// Hits scoring at least `min_score`, in JSON form.
    pub fn from_hits(hits: Vec<Hit>, min_score: f32) -> Vec<MatchJson> {
        hits.into_iter()
            .filter(|h| h.score >= min_score)
            .map(|h| MatchJson {
                path: h.path,
                score: (h.score * 10_000.0).round() / 10_000.0,
            })
            .collect()
    }
}

/// Write `record` as one line of JSON (JSON Lines).
pub fn write_json_line<W: std::io::Write + ?Sized>(
    out: &mut W,
    record: &impl Serialize,
) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}
