//! Matching detected regions against the gallery: crop each box, embed the crops as one batch,
//! search the index for each.

use std::collections::HashMap;

use image::RgbImage;

use super::index::Hit;
use super::ingest::IngestError;
use super::items::{
    Decision, IMAGE_K, ITEMS_KEPT, ItemMatch, KnownItem, TextMatch, aggregate, best_text, decide,
};
use super::store::GalleryStore;
use crate::detect::{Detection, iou};
use crate::embed::{ImageEncoder, crop_region};
use crate::track::Tracked;

/// What the gallery says about one region: its nearest images, its items, its best text item.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionMatch {
    /// The nearest gallery images, best first (each names its item).
    pub hits: Vec<Hit>,
    /// Per-item scores, best first ([`aggregate`]).
    pub items: Vec<ItemMatch>,
    /// The best text-defined item, when the gallery has any.
    pub text: Option<TextMatch>,
}

/// One detected region of a frame: the detection, its track, and what the gallery says about
/// it (empty when the frame was not matched). The one record every front end reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// The detector's box, class and score.
    pub detection: Detection,
    /// None until the tracker confirms a track (and always for still images).
    pub track_id: Option<u64>,
    /// Gallery hits, best first (empty: not matched).
    pub hits: Vec<Hit>,
    /// Per-item matches, best first.
    pub items: Vec<ItemMatch>,
    /// The best text-defined item.
    pub text: Option<TextMatch>,
}

impl Region {
    /// A region of `tracked`, not matched yet.
    pub fn from_tracked(tracked: &Tracked) -> Region {
        Region {
            detection: tracked.detection,
            track_id: tracked.track_id,
            hits: Vec::new(),
            items: Vec::new(),
            text: None,
        }
    }

    /// The best hit if it scores at least `min_score`.
    pub fn best_hit(&self, min_score: f32) -> Option<&Hit> {
        self.hits.first().filter(|h| h.score >= min_score)
    }

    /// The known item this region is, by `decision` (None: unknown, or not matched).
    pub fn known_item(&self, decision: &Decision) -> Option<KnownItem<'_>> {
        decide(&self.items, decision)
    }

    /// The best text item if it clears `decision`'s text threshold.
    pub fn text_item(&self, decision: &Decision) -> Option<&TextMatch> {
        self.text
            .as_ref()
            .filter(|t| t.score >= decision.text_threshold)
    }

    /// Fill in what the gallery said.
    pub fn set_match(&mut self, m: RegionMatch) {
        self.hits = m.hits;
        self.items = m.items;
        self.text = m.text;
    }

    /// Forget the gallery's answer (the gallery changed).
    pub fn clear_match(&mut self) {
        self.set_match(RegionMatch::default());
    }

    /// The region as the tracker reported it (detection and track id).
    pub fn tracked(&self) -> Tracked {
        Tracked {
            detection: self.detection,
            track_id: self.track_id,
        }
    }
}

/// What the gallery says about each region.
pub type RegionHits = Result<Vec<RegionMatch>, IngestError>;

/// A CLIP encoder and a gallery index together: matches for the regions of one image.
pub struct RegionMatcher {
    /// The image tower.
    pub encoder: ImageEncoder,
    /// The gallery.
    pub index: Box<dyn GalleryStore>,
    /// Image hits kept per region.
    pub k: usize,
}

/// What the gallery says about a region embedded as `embedding`: the nearest [`IMAGE_K`]
/// images aggregated per item, `k` of them kept as hits, and the best text item.
pub fn match_embedding(
    index: &mut dyn GalleryStore,
    embedding: &[f32],
    k: usize,
) -> Result<RegionMatch, IngestError> {
    let mut hits = index.search(embedding, IMAGE_K.max(k), false)?;
    let (counts, texts) = index.labels()?;
    let mut items = aggregate(&hits, counts);
    items.truncate(ITEMS_KEPT);
    let text = best_text(embedding, texts);
    hits.truncate(k);
    Ok(RegionMatch { hits, items, text })
}

impl RegionMatcher {
    /// What the gallery says about each detection's region (hits unfiltered by score).
    pub fn match_regions(&mut self, img: &RgbImage, dets: &[Detection]) -> RegionHits {
        Self::match_with(&mut self.encoder, self.index.as_mut(), self.k, img, dets)
    }

    /// [`Self::match_regions`] for an encoder and an index held apart (the app swaps indexes
    /// under one loaded encoder).
    pub fn match_with(
        encoder: &mut ImageEncoder,
        index: &mut dyn GalleryStore,
        k: usize,
        img: &RgbImage,
        dets: &[Detection],
    ) -> RegionHits {
        if dets.is_empty() {
            return Ok(Vec::new());
        }
        let crops: Vec<RgbImage> = dets.iter().map(|d| crop_region(img, d.bbox)).collect();
        let embeddings = encoder.embed(&crops.iter().collect::<Vec<_>>())?;
        embeddings
            .iter()
            .map(|e| match_embedding(index, e, k))
            .collect()
    }
}

/// Gallery matches per track: a track is embedded when it appears, every `refresh_frames`
/// frames, or when its box changes a lot; in between its matches carry over. Detections without
/// a track are embedded every time.
pub struct TrackMatches {
    /// Frames after which a track is embedded again.
    pub refresh_frames: u64,
    /// Below this IoU between the box now and when it was embedded, embed again.
    pub min_iou: f32,
    cache: HashMap<u64, Cached>,
    /// Crops sent to CLIP.
    pub embedded: u64,
    /// Regions that were given matches (what embedding every box would have cost).
    pub regions: u64,
}

struct Cached {
    found: RegionMatch,
    frame: u64,
    bbox: [f32; 4],
}

impl TrackMatches {
    /// Embed each track every `refresh_frames` frames (at least 1).
    pub fn new(refresh_frames: u64) -> TrackMatches {
        TrackMatches {
            refresh_frames: refresh_frames.max(1),
            min_iou: 0.6,
            cache: HashMap::new(),
            embedded: 0,
            regions: 0,
        }
    }

    /// Matches for each detection of frame `frame` (same order as `tracked`); `embed` matches
    /// the regions that are due (e.g. [`RegionMatcher::match_regions`] on the frame).
    pub fn match_frame(
        &mut self,
        frame: u64,
        tracked: &[Tracked],
        embed: &mut dyn FnMut(&[Detection]) -> RegionHits,
    ) -> RegionHits {
        let due = self.due(frame, tracked);
        let dets: Vec<Detection> = due.iter().map(|&i| tracked[i].detection).collect();
        let fresh = embed(&dets)?;
        Ok(self.complete(frame, tracked, &due, fresh))
    }

    /// Which of frame `frame`'s detections are to be embedded (by index into `tracked`): new
    /// tracks, tracks due for a refresh, boxes that changed a lot, untracked detections.
    pub fn due(&self, frame: u64, tracked: &[Tracked]) -> Vec<usize> {
        (0..tracked.len())
            .filter(
                |&i| match tracked[i].track_id.and_then(|id| self.cache.get(&id)) {
                    None => true,
                    Some(c) => {
                        frame.saturating_sub(c.frame) >= self.refresh_frames
                            || iou(&c.bbox, &tracked[i].detection.bbox) < self.min_iou
                    }
                },
            )
            .collect()
    }

    /// Finish frame `frame` with `fresh`, the matches of its `due` detections (in that
    /// order): those are cached per track, the others carry their track's last matches.
    pub fn complete(
        &mut self,
        frame: u64,
        tracked: &[Tracked],
        due: &[usize],
        fresh: Vec<RegionMatch>,
    ) -> Vec<RegionMatch> {
        self.embedded += due.len() as u64;
        self.regions += tracked.len() as u64;
        let mut out: Vec<Option<RegionMatch>> = vec![None; tracked.len()];
        for (&i, found) in due.iter().zip(fresh) {
            if let Some(id) = tracked[i].track_id {
                self.cache.insert(
                    id,
                    Cached {
                        found: found.clone(),
                        frame,
                        bbox: tracked[i].detection.bbox,
                    },
                );
            }
            out[i] = Some(found);
        }
        let out = out
            .into_iter()
            .zip(tracked)
            .map(|(found, t)| {
                found
                    .or_else(|| {
                        t.track_id
                            .and_then(|id| self.cache.get(&id))
                            .map(|c| c.found.clone())
                    })
                    .unwrap_or_default()
            })
            .collect();
        self.forget_old(frame);
        out
    }

    /// [`Self::match_frame`] for regions: their `hits` are filled in.
    pub fn match_regions(
        &mut self,
        frame: u64,
        regions: &mut [Region],
        embed: &mut dyn FnMut(&[Detection]) -> RegionHits,
    ) -> Result<(), IngestError> {
        let tracked: Vec<Tracked> = regions.iter().map(Region::tracked).collect();
        for (region, found) in regions
            .iter_mut()
            .zip(self.match_frame(frame, &tracked, embed)?)
        {
            region.set_match(found);
        }
        Ok(())
    }

    fn forget_old(&mut self, frame: u64) {
        // Forget tracks not refreshed for a long time (ended ones).
        let horizon = 10 * self.refresh_frames;
        self.cache
            .retain(|_, c| frame.saturating_sub(c.frame) <= horizon);
    }
}
