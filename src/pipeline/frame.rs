//! The frame processor every front end shares (the app's live view, `arvis video`,
//! `arvis bench video`, `arvis demo`): a frame in, one [`Region`] per detected object out —
//! detection, track id and gallery hits — with one set of defaults.
//!
//! It has two halves so that a pipelined front end can run them on two threads (frame N+1 is
//! detected while N's tracks are embedded): [`TrackStage`] (detector + tracker) and
//! [`MatchStage`] (per-track CLIP matching). [`FrameProcessor::process`] runs both in turn.

use std::time::Instant;

use image::RgbImage;

use crate::detect::{DetectError, DetectOptions, Detection, FrameDetector, StageTimings};
use crate::embed::ImageEncoder;
use crate::search::{GalleryStore, IngestError, Region, RegionMatcher, TrackMatches};
use crate::track::{Tracker, TrackerConfig};

/// Frames (at the detector's rate) after which a track is embedded again; also when its box
/// changes a lot. Half a second at 30 fps: a new object's identity settles quickly, and most
/// CLIP calls are still saved.
pub const REFRESH_FRAMES: u64 = 15;
/// Gallery hits kept per region.
pub const MATCH_K: usize = 3;

/// The processor's settings; [`Default`] is what every front end uses unless told otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessorConfig {
    /// The tracker's thresholds.
    pub tracker: TrackerConfig,
    /// Frames after which a track is embedded again.
    pub refresh_frames: u64,
    /// Gallery hits kept per region.
    pub match_k: usize,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            tracker: TrackerConfig::default(),
            refresh_frames: REFRESH_FRAMES,
            match_k: MATCH_K,
        }
    }
}

/// Why a frame could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The detector failed.
    #[error("detection failed: {0}")]
    Detect(#[from] DetectError),
    /// Embedding or searching the regions failed.
    #[error("matching failed: {0}")]
    Match(#[from] IngestError),
}

/// The first half: detect, then track.
#[derive(Debug)]
pub struct TrackStage {
    config: TrackerConfig,
    tracker: Tracker,
}

impl TrackStage {
    /// A tracker with `config`'s thresholds.
    pub fn new(config: TrackerConfig) -> TrackStage {
        TrackStage {
            config,
            tracker: Tracker::new(config),
        }
    }

    /// Forget every track (another source was opened).
    pub fn reset(&mut self) {
        self.tracker = Tracker::new(self.config);
    }

    /// The frame's regions (not matched yet) and the detector's stage timings.
    pub fn detect(
        &mut self,
        detector: &mut dyn FrameDetector,
        image: &RgbImage,
        opts: &DetectOptions,
    ) -> Result<(Vec<Region>, StageTimings), DetectError> {
        let out = detector.detect_frame(image, opts)?;
        Ok((self.track(&out.detections), out.timings))
    }

    /// Regions for detections found elsewhere, in the same order.
    pub fn track(&mut self, detections: &[Detection]) -> Vec<Region> {
        self.tracker
            .update(detections)
            .iter()
            .map(Region::from_tracked)
            .collect()
    }
}

/// One frame for [`match_frames`]: which stage (its source's per-track match state) it goes
/// with, its frame number in that source, the image and its regions.
pub struct MatchJob<'a> {
    /// Index of its source's stage in the slice given to [`match_frames`].
    pub stage: usize,
    /// The frame's number in its source (for the per-track refresh).
    pub frame: u64,
    /// The frame.
    pub image: &'a RgbImage,
    /// Its tracked regions; their hits are filled in.
    pub regions: &'a mut [Region],
}

/// What [`match_frames`] did when its CLIP batch ran (or was not needed).
pub struct FramesMatched {
    /// Per job: matched, or the gallery search error of that frame alone.
    pub per_frame: Vec<Result<(), IngestError>>,
    /// Crops embedded in the one batch (0: every track carried its matches over).
    pub crops: usize,
}

/// The CLIP batch of [`match_frames`] failed: no frame was finished.
pub struct BatchFailed {
    /// Why.
    pub error: crate::embed::EmbedError,
    /// Per job: whether it had crops in the batch.
    pub held: Vec<bool>,
}

/// Match several frames (of different sources, one each) with the crops due in all of them
/// in one CLIP batch; each frame is then finished with its own stage's per-track state. A job
/// whose stage is not in `stages` is left as it is.
pub fn match_frames<S: AsMut<MatchStage>>(
    stages: &mut [S],
    jobs: &mut [MatchJob<'_>],
    encoder: &mut ImageEncoder,
    index: &mut dyn GalleryStore,
) -> Result<FramesMatched, BatchFailed> {
    let mut due: Vec<Vec<usize>> = Vec::with_capacity(jobs.len());
    let mut crops: Vec<RgbImage> = Vec::new();
    let mut owner: Vec<usize> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let (d, c) = match stages.get_mut(job.stage) {
            Some(stage) => stage.as_mut().due_crops(job.frame, job.image, job.regions),
            None => (Vec::new(), Vec::new()),
        };
        owner.extend(std::iter::repeat_n(i, c.len()));
        crops.extend(c);
        due.push(d);
    }
    let embeddings = if crops.is_empty() {
        Vec::new()
    } else {
        encoder
            .embed(&crops.iter().collect::<Vec<_>>())
            .map_err(|error| BatchFailed {
                error,
                held: (0..jobs.len()).map(|i| owner.contains(&i)).collect(),
            })?
    };
    let mut fresh: Vec<Vec<crate::search::RegionMatch>> = vec![Vec::new(); jobs.len()];
    let mut per_frame: Vec<Result<(), IngestError>> = (0..jobs.len()).map(|_| Ok(())).collect();
    for (e, &i) in embeddings.iter().zip(&owner) {
        let k = stages.get_mut(jobs[i].stage).map_or(1, |s| s.as_mut().k());
        match crate::search::match_embedding(index, e, k) {
            Ok(m) => fresh[i].push(m),
            Err(err) => per_frame[i] = Err(err),
        }
    }
    for (((job, due), fresh), result) in jobs.iter_mut().zip(due).zip(fresh).zip(&per_frame) {
        if let (Ok(()), Some(stage)) = (result, stages.get_mut(job.stage)) {
            stage.as_mut().finish(job.frame, job.regions, &due, fresh);
        }
    }
    Ok(FramesMatched {
        per_frame,
        crops: crops.len(),
    })
}

impl AsMut<MatchStage> for MatchStage {
    fn as_mut(&mut self) -> &mut MatchStage {
        self
    }
}

/// The second half: gallery hits per track, embedded when a track appears, every
/// `refresh_frames` frames or when its box changes a lot, carried over in between.
pub struct MatchStage {
    per_track: TrackMatches,
    k: usize,
}

impl MatchStage {
    /// Embed each track every `refresh_frames` frames; keep `k` hits per region.
    pub fn new(refresh_frames: u64, k: usize) -> MatchStage {
        MatchStage {
            per_track: TrackMatches::new(refresh_frames),
            k: k.max(1),
        }
    }

    /// Fill in the hits of frame `frame`'s regions (frame numbers increase by one per frame).
    pub fn match_regions(
        &mut self,
        frame: u64,
        image: &RgbImage,
        regions: &mut [Region],
        encoder: &mut ImageEncoder,
        index: &mut dyn GalleryStore,
    ) -> Result<(), IngestError> {
        let k = self.k;
        self.per_track.match_regions(frame, regions, &mut |dets| {
            RegionMatcher::match_with(encoder, index, k, image, dets)
        })
    }

    /// Which of frame `frame`'s regions are due for embedding, and their crops: several
    /// frames' crops can then go to CLIP as one batch ([`MatchStage::finish`] takes the hits).
    pub fn due_crops(
        &self,
        frame: u64,
        image: &RgbImage,
        regions: &[Region],
    ) -> (Vec<usize>, Vec<RgbImage>) {
        let tracked: Vec<_> = regions.iter().map(Region::tracked).collect();
        let due = self.per_track.due(frame, &tracked);
        let crops = due
            .iter()
            .map(|&i| crate::embed::crop_region(image, regions[i].detection.bbox))
            .collect();
        (due, crops)
    }

    /// Fill in frame `frame`'s regions from `fresh`, the matches of its [`Self::due_crops`].
    pub fn finish(
        &mut self,
        frame: u64,
        regions: &mut [Region],
        due: &[usize],
        fresh: Vec<crate::search::RegionMatch>,
    ) {
        let tracked: Vec<_> = regions.iter().map(Region::tracked).collect();
        let found = self.per_track.complete(frame, &tracked, due, fresh);
        for (region, found) in regions.iter_mut().zip(found) {
            region.set_match(found);
        }
    }

    /// Image hits kept per region.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Crops sent to CLIP so far.
    pub fn embedded(&self) -> u64 {
        self.per_track.embedded
    }

    /// Regions given matches so far (what embedding every box would have cost).
    pub fn regions(&self) -> u64 {
        self.per_track.regions
    }
}

/// One processed frame.
#[derive(Debug, Clone, Default)]
pub struct ProcessedFrame {
    /// One record per detected region.
    pub regions: Vec<Region>,
    /// Whether gallery matching ran (regions' hits are meaningful).
    pub matched: bool,
    /// The detector's stage timings.
    pub timings: StageTimings,
    /// Detection and tracking, wall clock.
    pub detect_ms: f64,
    /// Crop + embed + search of the regions due, wall clock.
    pub match_ms: f64,
}

/// Both halves, run in turn on one thread.
pub struct FrameProcessor {
    /// Detection and tracking.
    pub tracking: TrackStage,
    /// Per-track gallery matching.
    pub matching: MatchStage,
}

impl FrameProcessor {
    /// Both halves with `config`'s settings.
    pub fn new(config: ProcessorConfig) -> FrameProcessor {
        FrameProcessor {
            tracking: TrackStage::new(config.tracker),
            matching: MatchStage::new(config.refresh_frames, config.match_k),
        }
    }

    /// Detect, track and (with a gallery) match frame `frame`.
    pub fn process(
        &mut self,
        frame: u64,
        image: &RgbImage,
        detector: &mut dyn FrameDetector,
        opts: &DetectOptions,
        gallery: Option<&mut RegionMatcher>,
    ) -> Result<ProcessedFrame, ProcessError> {
        let t0 = Instant::now();
        let (mut regions, timings) = self.tracking.detect(detector, image, opts)?;
        let detect_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let matched = match gallery {
            Some(g) => {
                self.matching.match_regions(
                    frame,
                    image,
                    &mut regions,
                    &mut g.encoder,
                    g.index.as_mut(),
                )?;
                true
            }
            None => false,
        };
        Ok(ProcessedFrame {
            regions,
            matched,
            timings,
            detect_ms,
            match_ms: t1.elapsed().as_secs_f64() * 1e3,
        })
    }
}
