//! Fault injection for the tests, all in one place: each hook is an `ARVIS_TEST_*` variable
//! that makes the real binary fail, or see the machine, the way a test needs (a kill at a chosen
//! moment, a real signal after a chosen batch, a driver that is or is not there). Unset, none of
//! them changes anything; they are not user settings and are not listed in the README.

/// `ARVIS_TEST_ABORT_AFTER_BATCHES=N`: `index add` aborts (no unwinding, as a kill would) right
/// after its Nth committed batch.
pub const ABORT_AFTER_BATCHES: &str = "ARVIS_TEST_ABORT_AFTER_BATCHES";
/// `ARVIS_TEST_SIGINT_AFTER_BATCHES=N`: `index add` sends itself a real SIGINT after its Nth
/// committed batch and waits for the handler to see it.
pub const SIGINT_AFTER_BATCHES: &str = "ARVIS_TEST_SIGINT_AFTER_BATCHES";
/// `ARVIS_TEST_PAUSE_AFTER_BATCHES=N:FILE`: `index add` creates FILE after its Nth committed
/// batch and waits (at most 60 s) until the test removes it, so that a test can change the world
/// (stop the catalogue's server) between two batches.
pub const PAUSE_AFTER_BATCHES: &str = "ARVIS_TEST_PAUSE_AFTER_BATCHES";
/// `ARVIS_TEST_COPY_PAGE=N`: `index copy` moves N images per committed batch (a test's
/// gallery is smaller than one real page).
pub const COPY_PAGE: &str = "ARVIS_TEST_COPY_PAGE";
/// `ARVIS_TEST_ABORT_BEFORE_GRAPH_RENAME=1`: abort between writing the HNSW graph's temporary
/// file and renaming it into place.
pub const ABORT_BEFORE_GRAPH_RENAME: &str = "ARVIS_TEST_ABORT_BEFORE_GRAPH_RENAME";
/// `ARVIS_TEST_ABORT_MID_UPGRADE=1`: abort in the middle of upgrading an index's format, after
/// its first statement and before the commit.
pub const ABORT_MID_UPGRADE: &str = "ARVIS_TEST_ABORT_MID_UPGRADE";
/// `ARVIS_TEST_ABORT_AFTER_CROP_WRITTEN=1`: when the app teaches the gallery, abort with the
/// crop's file written and its index row not yet committed.
pub const ABORT_AFTER_CROP_WRITTEN: &str = "ARVIS_TEST_ABORT_AFTER_CROP_WRITTEN";
/// `ARVIS_TEST_NVIDIA_DRIVER=present|absent`: what the driver check reports, so the CUDA paths
/// are tested alike on machines with and without a GPU.
pub const NVIDIA_DRIVER: &str = "ARVIS_TEST_NVIDIA_DRIVER";

/// A batch-count hook's value.
pub fn after_batches(hook: &str) -> Option<usize> {
    std::env::var(hook).ok().and_then(|v| v.parse().ok())
}

/// Whether a switch hook is set.
pub fn is_set(hook: &str) -> bool {
    std::env::var_os(hook).is_some()
}

/// The driver override: `Some(true|false)` when a test sets one.
pub fn nvidia_driver() -> Option<bool> {
    match std::env::var(NVIDIA_DRIVER).as_deref() {
        Ok("present") => Some(true),
        Ok("absent") => Some(false),
        _ => None,
    }
}

/// The batch hooks of an ingestion job, read once when it starts.
#[derive(Debug, Clone, Default)]
pub struct BatchHooks {
    abort_after: Option<usize>,
    interrupt_after: Option<usize>,
    pause_after: Option<(usize, std::path::PathBuf)>,
}

impl BatchHooks {
    /// The hooks the environment sets (none, in real use).
    pub fn from_env() -> BatchHooks {
        BatchHooks {
            abort_after: after_batches(ABORT_AFTER_BATCHES),
            interrupt_after: after_batches(SIGINT_AFTER_BATCHES),
            pause_after: std::env::var(PAUSE_AFTER_BATCHES).ok().and_then(|v| {
                let (n, file) = v.split_once(':')?;
                Some((n.parse().ok()?, file.into()))
            }),
        }
    }

    /// Called after the `batches`th committed batch: abort like a kill, or raise a real SIGINT
    /// and wait (at most 5 s) until the handler has set `stop`.
    pub fn after_batch(&self, batches: usize, stop: &std::sync::atomic::AtomicBool) {
        if self.abort_after == Some(batches) {
            std::process::abort();
        }
        if let Some((_, file)) = self.pause_after.as_ref().filter(|(n, _)| *n == batches) {
            if std::fs::write(file, b"").is_ok() {
                let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while file.exists() && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        if self.interrupt_after == Some(batches) {
            // SAFETY: raising a signal in this process; its handler only sets a flag.
            unsafe { libc::raise(libc::SIGINT) };
            let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < until
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}
