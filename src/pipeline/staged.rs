//! Still images in batch: decode and letterbox image N+1 on a helper thread while image N is
//! inferred, so the CPU-side stages hide behind `session.run`.

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

/// Decode + preprocess `paths` in order on a helper thread, handing each to `consume` on this
/// thread. At most one staged image waits, so memory stays flat however many inputs there are.
/// Stops early (and returns the error) if `consume` fails.
pub fn for_each_staged<E>(
    paths: impl IntoIterator<Item = PathBuf> + Send,
    preprocessor: Preprocessor,
    limits: DecodeLimits,
    mut consume: impl FnMut(Staged) -> Result<(), E>,
) -> Result<(), E> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Staged>(1);
        scope.spawn(move || {
            for path in paths {
                let t0 = Instant::now();
                let result = load_image(&path, limits).map(|image| {
                    let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
                    let t1 = Instant::now();
                    let prepared = preprocessor.prepare(&image);
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
        for staged in rx {
            consume(staged)?;
        }
        Ok(())
    })
}
