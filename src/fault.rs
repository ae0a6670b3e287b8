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
/// `ARVIS_TEST_ABORT_BEFORE_GRAPH_RENAME=1`: abort between writing the HNSW graph's temporary
/// file and renaming it into place.
pub const ABORT_BEFORE_GRAPH_RENAME: &str = "ARVIS_TEST_ABORT_BEFORE_GRAPH_RENAME";
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
