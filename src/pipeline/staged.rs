//! Still images in batch: decode and letterbox image N+1 on a helper thread while image N is
//! inferred, so the CPU-side stages hide behind `session.run` (and the first image's behind
//! loading the model).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use image::RgbImage;

use crate::detect::{Prepared, Preprocessor};
use crate::source::{DecodeLimits, ImageLoadError, load_image};

/// An image decoded and letterboxed, with how long each took.
pub struct StagedImage {
    pub image: RgbImage,
    pub prepared: Prepared,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
}

/// One input after the CPU stages: ready for inference, or why it is not.
pub struct Staged {
    pub path: PathBuf,
    pub result: Result<StagedImage, ImageLoadError>,
}

/// Decode + letterbox images in order on a helper thread that starts before the model is
/// loaded: the first image is decoded while the session builds, then each next image while the
/// current one is inferred. At most one staged image waits, so memory stays flat however many
/// inputs there are.
pub struct Prefetch {
    preprocessor: mpsc::SyncSender<Preprocessor>,
    staged: mpsc::Receiver<Staged>,
}

/// The staged images, in input order (see [`Prefetch::with_preprocessor`]).
pub struct StagedImages {
    staged: mpsc::Receiver<Staged>,
}

impl Prefetch {
    /// Start decoding `paths` now; letterboxing waits for [`Prefetch::with_preprocessor`].
    /// Dropping either end stops the helper after the image in hand.
    pub fn start(paths: Vec<PathBuf>, limits: DecodeLimits, priority: PrefetchPriority) -> Self {
        let (pre_tx, pre_rx) = mpsc::sync_channel::<Preprocessor>(1);
        let (tx, rx) = mpsc::sync_channel::<Staged>(1);
        std::thread::spawn(move || {
            priority.apply_to_this_thread();
            let mut preprocessor = None;
            for path in paths {
                let t0 = Instant::now();
                let decoded = load_image(&path, limits);
                let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
                let pre = match preprocessor {
                    Some(pre) => pre,
                    // The consumer gave up before the model loaded.
                    None => match pre_rx.recv() {
                        Ok(pre) => *preprocessor.insert(pre),
                        Err(_) => return,
                    },
                };
                let result = decoded.map(|image| {
                    let t1 = Instant::now();
                    let prepared = pre.prepare(&image);
                    StagedImage {
                        image,
                        prepared,
                        decode_ms,
                        preprocess_ms: t1.elapsed().as_secs_f64() * 1e3,
                    }
                });
                // The receiver is gone when the consumer stopped early: stop too.
                if tx.send(Staged { path, result }).is_err() {
                    return;
                }
            }
        });
        Prefetch {
            preprocessor: pre_tx,
            staged: rx,
        }
    }

    /// Letterbox for this model from now on and hand out the staged images. Taking `self`
    /// makes it impossible to wait for images before the helper can finish one.
    pub fn with_preprocessor(self, preprocessor: Preprocessor) -> StagedImages {
        // A send error means the helper already stopped (no inputs): the iterator is then empty.
        let _ = self.preprocessor.send(preprocessor);
        StagedImages {
            staged: self.staged,
        }
    }
}

impl Iterator for StagedImages {
    type Item = Staged;

    fn next(&mut self) -> Option<Staged> {
        self.staged.recv().ok()
    }
}

/// How the helper thread competes with inference for the CPU (`ARVIS_PREFETCH_PRIORITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchPriority {
    /// The same priority as inference (the default).
    Normal,
    /// SCHED_IDLE: the helper only gets cycles nothing else wants, so it never preempts an
    /// intra-op thread. About 3 % faster per image on an otherwise idle machine, but 3.3× slower
    /// with other work on the CPU, which then starves the helper (docs/PERFORMANCE.md): opt-in.
    Idle,
}

impl PrefetchPriority {
    pub const VAR: &'static str = "ARVIS_PREFETCH_PRIORITY";

    /// The priority from the environment; `normal` unless set.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(Self::VAR) {
            Err(_) => Ok(Self::Normal),
            Ok(v) => Self::parse(&v),
        }
    }

    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "normal" | "" => Ok(Self::Normal),
            "idle" => Ok(Self::Idle),
            other => Err(format!(
                "{}={other:?} is not a priority: use normal or idle",
                Self::VAR
            )),
        }
    }

    fn apply_to_this_thread(self) {
        if self != Self::Idle {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE.
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            if rc != 0 {
                // Only a speed matter: the helper then runs at normal priority.
                tracing::debug!(
                    "SCHED_IDLE for the prefetch thread refused: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_images(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for (i, (w, h)) in [(64u32, 48u32), (30, 90), (200, 100)]
            .into_iter()
            .enumerate()
        {
            let path = dir.join(format!("{i}.png"));
            RgbImage::from_pixel(w, h, image::Rgb([i as u8 * 40, 10, 200]))
                .save(&path)
                .expect("write test image");
            paths.push(path);
        }
        // A broken one in the middle: its error must arrive in its place.
        let broken = dir.join("broken.png");
        std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").expect("write broken image");
        paths.insert(1, broken);
        paths
    }

    #[test]
    fn images_arrive_in_order_letterboxed_with_errors_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = write_images(dir.path());
        let prefetch = Prefetch::start(
            paths.clone(),
            DecodeLimits::default(),
            PrefetchPriority::Idle,
        );
        let pre = Preprocessor {
            input_size: (32, 32),
        };
        let staged: Vec<Staged> = prefetch.with_preprocessor(pre).collect();
        let got: Vec<&PathBuf> = staged.iter().map(|s| &s.path).collect();
        assert_eq!(got, paths.iter().collect::<Vec<_>>());
        assert!(staged[1].result.is_err(), "the broken file fails in place");
        for s in [&staged[0], &staged[2], &staged[3]] {
            let img = s.result.as_ref().expect("decodes");
            assert_eq!(img.prepared.tensor.len(), 3 * 32 * 32);
            assert_eq!(img.prepared.letterbox.image_size, img.image.dimensions());
        }
        assert_eq!(
            staged[3]
                .result
                .as_ref()
                .expect("decodes")
                .image
                .dimensions(),
            (200, 100)
        );
    }

    #[test]
    fn giving_up_early_or_before_the_model_loads_does_not_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = write_images(dir.path());
        // The model never loaded: the helper must stop instead of waiting forever.
        drop(Prefetch::start(
            paths.clone(),
            DecodeLimits::default(),
            PrefetchPriority::Normal,
        ));
        // The consumer stopped after one image.
        let mut staged = Prefetch::start(paths, DecodeLimits::default(), PrefetchPriority::Idle)
            .with_preprocessor(Preprocessor {
                input_size: (32, 32),
            });
        assert!(staged.next().is_some());
        drop(staged);
        // No inputs at all: an empty iterator, not a hang.
        let empty = Prefetch::start(Vec::new(), DecodeLimits::default(), PrefetchPriority::Idle)
            .with_preprocessor(Preprocessor {
                input_size: (32, 32),
            });
        assert_eq!(empty.count(), 0);
    }

    #[test]
    fn priorities_parse_and_bad_values_say_what_is_allowed() {
        assert_eq!(PrefetchPriority::parse("idle"), Ok(PrefetchPriority::Idle));
        assert_eq!(
            PrefetchPriority::parse(" normal "),
            Ok(PrefetchPriority::Normal)
        );
        let err = PrefetchPriority::parse("high").expect_err("not a priority");
        assert!(
            err.contains("ARVIS_PREFETCH_PRIORITY") && err.contains("normal or idle"),
            "{err}"
        );
    }
}
