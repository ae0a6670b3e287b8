//! Still images in batch: decode and letterbox image N+1 on a helper thread while image N is
//! inferred, so the CPU-side stages hide behind `session.run` (and the first image's behind
//! loading the model).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::detect::{Prepared, Preprocessor};
use crate::source::{DecodeLimits, ImageLoadError, load_image};

/// An image decoded and letterboxed, with how long each took.
pub struct StagedImage {
    /// The decoded image.
    pub image: RgbImage,
    /// Its letterboxed tensor.
    pub prepared: Prepared,
    /// Reading and decoding, ms.
    pub decode_ms: f64,
    /// Letterboxing, ms.
    pub preprocess_ms: f64,
}

/// One input after the CPU stages: ready for inference, or why it is not.
pub struct Staged {
    /// The input file.
    pub path: PathBuf,
    /// The staged image, or why it could not be read.
    pub result: Result<StagedImage, ImageLoadError>,
}

/// Decode + letterbox images in order on a helper thread that starts before the model is
/// loaded: the first image is decoded while the session builds, then each next image while the
/// current one is inferred. At most one staged image waits, so memory stays flat however many
/// inputs there are.
///
/// The consumer never depends on the helper getting the CPU: an image the helper has not
/// started is staged by the consumer itself, and one the helper is late with (starved at idle
/// priority by other work) is staged again by the consumer after a short grace. So an idle
/// helper uses the cycles inference leaves free and costs nothing when there are none.
pub struct Prefetch {
    end: ConsumerEnd,
}

/// The staged images, in input order (see [`Prefetch::with_preprocessor`]).
pub struct StagedImages {
    end: ConsumerEnd,
    preprocessor: Preprocessor,
    by_consumer: usize,
}

struct Shared {
    paths: Vec<PathBuf>,
    limits: DecodeLimits,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    preprocessor: Option<Preprocessor>,
    /// The first input nobody has started.
    next_unclaimed: usize,
    /// The input the consumer hands out next; staged results below it are stale.
    consumer_next: usize,
    /// The one image the helper staged ahead (its input index), waiting for the consumer.
    ready: Option<(usize, Staged)>,
    /// The quickest staging seen (decode + letterbox), to size the wait for a late helper.
    quickest: Option<Duration>,
    consumer_gone: bool,
    /// Tests: the helper claims an input and then gets no CPU, as under SCHED_IDLE beside
    /// busy processes.
    #[cfg(test)]
    helper_starved: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bookkeeping behind: keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Decode and letterbox input `index`. `pre` is the consumer's preprocessor; the helper
    /// passes `None` and waits for it after decoding (it starts before the model loads).
    fn stage(&self, index: usize, pre: Option<Preprocessor>) -> Option<Staged> {
        let path = self.paths[index].clone();
        let t0 = Instant::now();
        let decoded = load_image(&path, self.limits);
        let decode = t0.elapsed();
        let pre = match pre {
            Some(pre) => pre,
            None => {
                let mut st = self.lock();
                loop {
                    if st.consumer_gone {
                        return None;
                    }
                    if let Some(pre) = st.preprocessor {
                        break pre;
                    }
                    st = self.wait(st);
                }
            }
        };
        let t1 = Instant::now();
        let result = decoded.map(|image| StagedImage {
            prepared: pre.prepare(&image),
            image,
            decode_ms: decode.as_secs_f64() * 1e3,
            preprocess_ms: t1.elapsed().as_secs_f64() * 1e3,
        });
        let work = decode + t1.elapsed();
        let mut st = self.lock();
        st.quickest = Some(st.quickest.map_or(work, |q| q.min(work)));
        Some(Staged { path, result })
    }

    fn helper(&self) {
        loop {
            let index = {
                let mut st = self.lock();
                while !st.consumer_gone && st.ready.is_some() {
                    st = self.wait(st);
                }
                if st.consumer_gone || st.next_unclaimed >= self.paths.len() {
                    return;
                }
                st.next_unclaimed += 1;
                #[cfg(test)]
                while st.helper_starved && !st.consumer_gone {
                    st = self.wait(st);
                }
                st.next_unclaimed - 1
            };
            let Some(staged) = self.stage(index, None) else {
                return;
            };
            let mut st = self.lock();
            // The consumer staged it itself meanwhile: drop this copy.
            if index >= st.consumer_next {
                st.ready = Some((index, staged));
            }
            self.changed.notify_all();
        }
    }
}

/// Tells the helper to stop when the consumer's side is dropped.
struct ConsumerEnd(Arc<Shared>);

impl Drop for ConsumerEnd {
    fn drop(&mut self) {
        self.0.lock().consumer_gone = true;
        self.0.changed.notify_all();
    }
}

impl Prefetch {
    /// Start decoding `paths` now; letterboxing waits for [`Prefetch::with_preprocessor`].
    /// Dropping either end stops the helper after the image in hand.
    pub fn start(paths: Vec<PathBuf>, limits: DecodeLimits, priority: PrefetchPriority) -> Self {
        Self::start_with(paths, limits, priority, State::default())
    }

    fn start_with(
        paths: Vec<PathBuf>,
        limits: DecodeLimits,
        priority: PrefetchPriority,
        state: State,
    ) -> Self {
        let shared = Arc::new(Shared {
            paths,
            limits,
            state: Mutex::new(state),
            changed: Condvar::new(),
        });
        let helper = Arc::clone(&shared);
        std::thread::spawn(move || {
            priority.apply_to_this_thread();
            helper.helper();
        });
        Prefetch {
            end: ConsumerEnd(shared),
        }
    }

    /// Letterbox for this model from now on and hand out the staged images. Taking `self`
    /// makes it impossible to ask for images before any can be letterboxed.
    pub fn with_preprocessor(self, preprocessor: Preprocessor) -> StagedImages {
        self.end.0.lock().preprocessor = Some(preprocessor);
        self.end.0.changed.notify_all();
        StagedImages {
            end: self.end,
            preprocessor,
            by_consumer: 0,
        }
    }
}

impl Iterator for StagedImages {
    type Item = Staged;

    fn next(&mut self) -> Option<Staged> {
        let shared = &self.end.0;
        let mut st = shared.lock();
        let index = st.consumer_next;
        if index >= shared.paths.len() {
            return None;
        }
        let mut waited_since: Option<Instant> = None;
        loop {
            if st.ready.as_ref().is_some_and(|(i, _)| *i == index)
                && let Some((_, staged)) = st.ready.take()
            {
                st.consumer_next += 1;
                shared.changed.notify_all();
                return Some(staged);
            }
            // Nobody started it, or the helper is late with it (starved by other work): stage
            // it here, at the consumer's priority. The helper's copy, if it comes, is dropped.
            // Waiting twice the quickest staging seen lets a helper that is merely mid-image
            // (it gets the CPU as soon as inference stops) finish instead.
            let grace = st.quickest.map_or(Duration::from_millis(30), |q| q * 2);
            let waited = waited_since.get_or_insert_with(Instant::now).elapsed();
            let unclaimed = st.next_unclaimed == index;
            if unclaimed || waited >= grace {
                if unclaimed {
                    st.next_unclaimed += 1;
                }
                st.consumer_next += 1;
                drop(st);
                shared.changed.notify_all();
                self.by_consumer += 1;
                return shared.stage(index, Some(self.preprocessor));
            }
            st = shared
                .changed
                .wait_timeout(st, grace - waited)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Drop for StagedImages {
    fn drop(&mut self) {
        tracing::debug!(
            "prefetch: {} of {} images staged by the consumer itself",
            self.by_consumer,
            self.end.0.paths.len()
        );
    }
}

pub use crate::settings::PrefetchPriority;

impl PrefetchPriority {
    /// The priority from the settings (`ARVIS_PREFETCH_PRIORITY`); `normal` unless set.
    pub fn from_settings() -> Result<Self, String> {
        Ok(crate::settings::current()
            .map_err(|e| e.to_string())?
            .prefetch_priority)
    }

    fn apply_to_this_thread(self) {
        #[cfg(target_os = "linux")]
        {
            let policy = match self {
                Self::Normal => return,
                Self::Idle => libc::SCHED_IDLE,
            };
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE.
            let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
            if rc != 0 {
                // Only a speed matter: the helper then runs at normal priority.
                tracing::debug!(
                    "{self:?} scheduling for the prefetch thread refused: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRE: Preprocessor = Preprocessor {
        input_size: (32, 32),
    };

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
        let staged: Vec<Staged> = prefetch.with_preprocessor(PRE).collect();
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
    fn a_starved_helper_never_holds_the_consumer_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = write_images(dir.path());
        let prefetch = Prefetch::start_with(
            paths.clone(),
            DecodeLimits::default(),
            PrefetchPriority::Idle,
            State {
                helper_starved: true,
                ..State::default()
            },
        );
        let mut staged = prefetch.with_preprocessor(PRE);
        let (tx, rx) = std::sync::mpsc::channel();
        let consumer = std::thread::spawn(move || {
            let got: Vec<(PathBuf, bool)> = staged
                .by_ref()
                .map(|s| (s.path, s.result.is_ok()))
                .collect();
            tx.send((got, staged.by_consumer)).expect("send");
            staged
        });
        let (got, by_consumer) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the consumer waited on a helper that never ran");
        let want: Vec<(PathBuf, bool)> = paths
            .iter()
            .map(|p| (p.clone(), !p.ends_with("broken.png")))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            by_consumer,
            paths.len(),
            "every image staged by the consumer"
        );
        // The helper wakes up late: its copy of the first image is dropped, nothing breaks.
        let staged = consumer.join().expect("consumer");
        staged.end.0.lock().helper_starved = false;
        staged.end.0.changed.notify_all();
        drop(staged);
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
            .with_preprocessor(PRE);
        assert!(staged.next().is_some());
        drop(staged);
        // No inputs at all: an empty iterator, not a hang.
        let empty = Prefetch::start(Vec::new(), DecodeLimits::default(), PrefetchPriority::Idle)
            .with_preprocessor(PRE);
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
