//! The records arvis writes for other programs: one image's detections (`arvis detect --json`,
//! app snapshots), gallery matches (`search --json`, `--match`), failed inputs. Their field
//! names are the JSON format users' scripts read: change them only compatibly.

use serde::Serialize;

use crate::detect::{Detection, StageTimings};
use crate::search::{Decision, Hit, MatchView, Region};

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
    /// The known item the region is (only with --match: `null` when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<Option<ItemJson>>,
    /// The best text-defined item above its threshold (only with --match and when the gallery
    /// has text items: `null` when none clears it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_item: Option<Option<TextItemJson>>,
}

/// The JSON shape of a region's known item.
#[derive(Debug, Serialize)]
pub struct ItemJson {
    /// The item's label.
    pub label: String,
    /// Its aggregated score (4 places).
    pub score: f32,
    /// How far it beats the best other item (4 places).
    pub margin: f32,
    /// Its best image.
    pub path: String,
}

/// The JSON shape of a region's text-defined item.
#[derive(Debug, Serialize)]
pub struct TextItemJson {
    /// The item's label.
    pub label: String,
    /// Image-to-text cosine similarity (4 places).
    pub score: f32,
}

impl ItemJson {
    /// The JSON of `region`'s matches under `decision`: (item, text item).
    pub fn of_region(
        region: &Region,
        decision: &Decision,
    ) -> (Option<ItemJson>, Option<Option<TextItemJson>>) {
        let item = region.known_item(decision).map(|k| ItemJson {
            label: k.label.to_string(),
            score: round_to(k.score, 4),
            margin: round_to(k.margin, 4),
            path: k.best.path.clone(),
        });
        let text = region.text.as_ref().map(|_| {
            region.text_item(decision).map(|t| TextItemJson {
                label: t.label.clone(),
                score: round_to(t.score, 4),
            })
        });
        (item, text)
    }
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
            item: None,
            text_item: None,
        })
        .collect()
}

/// JSON form of a frame's regions. `with_tracks` adds each region's `track_id` (videos);
/// `matched` (matching ran on the frame) adds its `matches`, `item` and `text_item`.
pub fn regions_json<'a>(
    labels: &'a [String],
    regions: &[&Region],
    with_tracks: bool,
    matched: bool,
    view: &MatchView,
) -> Vec<DetectionJson<'a>> {
    let dets: Vec<Detection> = regions.iter().map(|r| r.detection).collect();
    let mut json = detections_json(labels, &dets);
    for (j, r) in json.iter_mut().zip(regions) {
        if with_tracks {
            j.track_id = Some(r.track_id);
        }
        if matched {
            j.set_matches(r, view);
        }
    }
    json
}

impl DetectionJson<'_> {
    /// Add `region`'s matches, items and text item under `view`.
    pub fn set_matches(&mut self, region: &Region, view: &MatchView) {
        let (item, text) = ItemJson::of_region(region, &view.decision);
        self.matches = Some(MatchJson::from_hits(region.hits.clone(), view.min_score));
        self.item = Some(item);
        self.text_item = text;
    }
}

/// One result in JSON.
#[derive(Debug, Serialize)]
pub struct MatchJson {
    /// The gallery image.
    pub path: String,
    /// Cosine similarity (4 places).
    pub score: f32,
    /// The item the image belongs to.
    pub item: String,
}

impl MatchJson {
    /// Hits scoring at least `min_score`, in JSON form.
    pub fn from_hits(hits: Vec<Hit>, min_score: f32) -> Vec<MatchJson> {
        hits.into_iter()
            .filter(|h| h.score >= min_score)
            .map(|h| MatchJson {
                path: h.path,
                score: (h.score * 10_000.0).round() / 10_000.0,
                item: h.label,
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
