//! Matching detected regions against the gallery: crop each box, embed the crops as one batch,
//! search the index for each.

use image::RgbImage;

use super::index::{GalleryIndex, Hit};
use super::ingest::IngestError;
use crate::detect::Detection;
use crate::embed::{ImageEncoder, crop_region};

pub struct RegionMatcher {
    pub encoder: ImageEncoder,
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
        if dets.is_empty() {
            return Ok(Vec::new());
        }
        let crops: Vec<RgbImage> = dets.iter().map(|d| crop_region(img, d.bbox)).collect();
        let embeddings = self.encoder.embed(&crops.iter().collect::<Vec<_>>())?;
        embeddings
            .iter()
            .map(|e| Ok(self.index.search(e, self.k, false)?))
            .collect()
    }
}
