//! Matching detected regions against the gallery: crop each box, embed the crops as one batch,
//! search the index for each.

use std::collections::HashMap;

use image::RgbImage;

use super::index::{GalleryIndex, Hit};
use super::ingest::IngestError;
use crate::detect::{Detection, iou};
use crate::embed::{ImageEncoder, crop_region};
use crate::track::Tracked;

/// One detected region of a frame: the detection, its track, and its gallery hits (best first;
/// empty when the frame was not matched). The one record every front end reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// The detector's box, class and score.
    pub detection: Detection,
    /// None until the tracker confirms a track (and always for still images).
    pub track_id: Option<u64>,
    /// Gallery hits, best first (empty: not matched).
    pub hits: Vec<Hit>,
}

impl Region {
    /// A region of `tracked`, not matched yet.
    pub fn from_tracked(tracked: &Tracked) -> Region {
        Region {
            detection: tracked.detection,
            track_id: tracked.track_id,
            hits: Vec::new(),
        }
    }

    /// The best hit if it scores at least `min_score`.
    pub fn best_hit(&self, min_score: f32) -> Option<&Hit> {
        self.hits.first().filter(|h| h.score >= min_score)
    }

    fn tracked(&self) -> Tracked {
        Tracked {
            detection: self.detection,
            track_id: self.track_id,
        }
    }
}

/// Top gallery hits per region, best first.
pub type RegionHits = Result<Vec<Vec<Hit>>, IngestError>;

/// A CLIP encoder and a gallery index together: matches for the regions of one image.
pub struct RegionMatcher {
    /// The image tower.
    pub encoder: ImageEncoder,
    /// The gallery.
    pub index: GalleryIndex,
    /// Matches kept per region.
    pub k: usize,
}

impl RegionMatcher {
    /// The top `k` gallery hits for each detection's region, best first (unfiltered by score).
    pub fn match_regions(
        &mut self,
        img: &RgbImage,
        dets: &[Detection],
    ) -> Result<Vec<Vec<Hit>>, IngestError> {
        Self::match_with(&mut self.encoder, &mut self.index, self.k, img, dets)
    }

    /// [`Self::match_regions`] for an encoder and an index held apart (the app swaps indexes
    /// under one loaded encoder).
    pub fn match_with(
        encoder: &mut ImageEncoder,
        index: &mut GalleryIndex,
        k: usize,
        img: &RgbImage,
        dets: &[Detection],
    ) -> Result<Vec<Vec<Hit>>, IngestError> {
        if dets.is_empty() {
            return Ok(Vec::new());
        }
        let crops: Vec<RgbImage> = dets.iter().map(|d| crop_region(img, d.bbox)).collect();
        let embeddings = encoder.embed(&crops.iter().collect::<Vec<_>>())?;
        embeddings
            .iter()
            .map(|e| Ok(index.search(e, k, false)?))
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
    hits: Vec<Hit>,
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
    ) -> Result<Vec<Vec<Hit>>, IngestError> {
        let due: Vec<usize> = (0..tracked.len())
            .filter(
                |&i| match tracked[i].track_id.and_then(|id| self.cache.get(&id)) {
                    None => true,
                    Some(c) => {
                        frame.saturating_sub(c.frame) >= self.refresh_frames
                            || iou(&c.bbox, &tracked[i].detection.bbox) < self.min_iou
                    }
                },
            )
            .collect();
        let dets: Vec<Detection> = due.iter().map(|&i| tracked[i].detection).collect();
        let fresh = embed(&dets)?;
        self.embedded += dets.len() as u64;
        self.regions += tracked.len() as u64;
        let mut out: Vec<Vec<Hit>> = vec![Vec::new(); tracked.len()];
        for (&i, hits) in due.iter().zip(fresh) {
            if let Some(id) = tracked[i].track_id {
                self.cache.insert(
                    id,
                    Cached {
                        hits: hits.clone(),
                        frame,
                        bbox: tracked[i].detection.bbox,
                    },
                );
            }
            out[i] = hits;
        }
        for (i, t) in tracked.iter().enumerate() {
            if out[i].is_empty() {
                if let Some(c) = t.track_id.and_then(|id| self.cache.get(&id)) {
                    out[i] = c.hits.clone();
                }
            }
        }
        self.forget_old(frame);
        Ok(out)
    }

    /// [`Self::match_frame`] for regions: their `hits` are filled in.
    pub fn match_regions(
        &mut self,
        frame: u64,
        regions: &mut [Region],
        embed: &mut dyn FnMut(&[Detection]) -> RegionHits,
    ) -> Result<(), IngestError> {
        let tracked: Vec<Tracked> = regions.iter().map(Region::tracked).collect();
        for (region, hits) in regions
            .iter_mut()
            .zip(self.match_frame(frame, &tracked, embed)?)
        {
            region.hits = hits;
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
