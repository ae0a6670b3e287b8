//! What the user set, persisted across runs through eframe's storage.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Storage key for the settings.
pub const KEY: &str = "arvis-settings";

/// What the user chose in the app, kept between runs (`settings.json` in the data folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Minimum detection confidence.
    pub conf: f32,
    /// NMS IoU threshold.
    pub iou: f32,
    /// Gallery images below this cosine similarity are not listed.
    pub match_threshold: f32,
    /// When a region is named as an item; None: the gallery's calibrated decision (else the
    /// built-in one) until the user moves a slider.
    pub decision: Option<crate::search::Decision>,
    /// Matches kept per region.
    pub match_k: usize,
    /// Classes shown (None: all).
    pub classes: Option<Vec<usize>>,
    /// Show the class name on each box's plate.
    pub show_labels: bool,
    /// Show the detection score on each box's plate.
    pub show_scores: bool,
    /// Show the best gallery match on each box's plate.
    pub show_matches: bool,
    /// Show the heads-up display (rates, stage times).
    pub show_hud: bool,
    /// Match regions against the index.
    pub matching: bool,
    /// The gallery matched against: an index directory or a catalogue URL (as typed; see
    /// [`Settings::gallery`]).
    pub index_dir: PathBuf,
    /// Where crops added from the view are saved, one folder per item.
    pub gallery_images_dir: PathBuf,
    /// Start a video over when it ends.
    pub loop_video: bool,
    /// Where snapshots (PNG + JSON) are saved.
    pub snapshot_dir: PathBuf,
    /// Reopened at start when no source is given.
    pub last_source: Option<String>,
    /// The grid's sources, reopened at start when no source is given (empty: no grid).
    pub grid_sources: Vec<String>,
    /// Where the file browser starts.
    pub browse_dir: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            conf: 0.25,
            iou: 0.45,
            match_threshold: 0.5,
            decision: None,
            match_k: crate::pipeline::frame::MATCH_K,
            classes: None,
            show_labels: true,
            show_scores: true,
            show_matches: true,
            show_hud: true,
            matching: true,
            index_dir: crate::paths::data_dir().join("gallery"),
            gallery_images_dir: crate::paths::gallery_images_dir(),
            loop_video: true,
            snapshot_dir: crate::paths::data_dir().join("snapshots"),
            last_source: None,
            grid_sources: Vec::new(),
            browse_dir: None,
        }
    }
}

impl Settings {
    /// The gallery [`Settings::index_dir`] names, or why it names none.
    pub fn gallery(&self) -> Result<crate::search::GalleryLocation, String> {
        crate::search::GalleryLocation::parse(self.index_dir.as_os_str()).map_err(|e| e.to_string())
    }

    /// [`Settings::index_dir`] as shown on screen: a catalogue's password masked.
    pub fn gallery_shown(&self) -> String {
        crate::util::mask_urls(&crate::paths::display_path(&self.index_dir))
    }

    /// The decision in force: the user's, else the gallery's (`gallery`), else the default.
    pub fn decision(&self, gallery: Option<crate::search::Decision>) -> crate::search::Decision {
        self.decision.or(gallery).unwrap_or_default()
    }

    /// How matches are shown, by these settings and the gallery's stored decision.
    pub fn match_view(&self, gallery: Option<crate::search::Decision>) -> crate::search::MatchView {
        crate::search::MatchView {
            min_score: self.match_threshold,
            decision: self.decision(gallery),
        }
    }

    /// What the label plates show, by these settings.
    pub fn plate_parts(
        &self,
        gallery: Option<crate::search::Decision>,
    ) -> crate::render::PlateParts {
        crate::render::PlateParts {
            class: self.show_labels,
            score: self.show_scores,
            best_match: self.show_matches,
            view: self.match_view(gallery),
        }
    }

    /// Values a hand-edited or older settings file may hold, brought into range.
    pub fn sanitized(mut self) -> Settings {
        let clamp01 = |v: f32, d: f32| if v.is_finite() { v.clamp(0.0, 1.0) } else { d };
        self.conf = clamp01(self.conf, 0.25);
        self.iou = clamp01(self.iou, 0.45);
        self.match_threshold = if self.match_threshold.is_finite() {
            self.match_threshold.clamp(-1.0, 1.0)
        } else {
            0.5
        };
        self.match_k = self.match_k.clamp(1, 10);
        let cosine = |v: f32, d: f32| if v.is_finite() { v.clamp(-1.0, 1.0) } else { d };
        if let Some(d) = self.decision.as_mut() {
            let base = crate::search::Decision::DEFAULT;
            d.threshold = cosine(d.threshold, base.threshold);
            d.margin = cosine(d.margin, base.margin);
            d.text_threshold = cosine(d.text_threshold, base.text_threshold);
        }
        self
    }

    /// Whether boxes of `class_id` are shown (all when no class filter is set).
    pub fn class_enabled(&self, class_id: usize) -> bool {
        self.classes.as_ref().is_none_or(|c| c.contains(&class_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_fills_missing_fields() {
        let s = Settings {
            conf: 0.4,
            classes: Some(vec![0, 5]),
            ..Settings::default()
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Settings>(&text).unwrap(), s);
        // An older file with fewer fields still loads, with defaults for the rest.
        let old: Settings = serde_json::from_str(r#"{"conf": 0.6}"#).unwrap();
        assert_eq!(old.conf, 0.6);
        assert_eq!(old.iou, 0.45);
        let bad = Settings {
            conf: f32::NAN,
            match_k: 0,
            ..Settings::default()
        }
        .sanitized();
        assert_eq!((bad.conf, bad.match_k), (0.25, 1));
        assert!(s.class_enabled(5) && !s.class_enabled(1));
    }
}
