//! Settings from the environment. Every variable arvis reads is named once here ([`var`]); the
//! tuning switches are parsed once, at start-up, into one typed [`Settings`] that `main`
//! installs and `arvis doctor` prints. Library code reads that value, never the environment.
//!
//! Locations (cache, data, mirror) and the CLI's own defaults (`--device`, `--index`, model
//! choices) are read where they are used — by `crate::paths`, `crate::models::fetch` and the
//! argument parser — through the same names.

mod cuda;
mod threads;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

pub use cuda::{ConvSearch, CudaTuning, TuningError};
pub use threads::{IntraOpThreads, physical_cores};

/// The environment variables arvis reads.
pub mod var {
    /// Download cache (ONNX Runtime, models): default `$XDG_CACHE_HOME/arvis`.
    pub const CACHE_DIR: &str = "ARVIS_CACHE_DIR";
    /// User data (indexes, settings): default `$XDG_DATA_HOME/arvis`.
    pub const DATA_DIR: &str = "ARVIS_DATA_DIR";
    /// A directory holding the model files, used instead of downloading them.
    pub const MODEL_MIRROR: &str = "ARVIS_MODEL_MIRROR";
    /// Never download: a missing model is an error.
    pub const OFFLINE: &str = "ARVIS_OFFLINE";
    /// The Python used to provision ONNX Runtime from its wheels.
    pub const PYTHON: &str = "ARVIS_PYTHON";
    /// An ONNX Runtime library to use instead of the provisioned one (ort's own name).
    pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
    /// ONNX Runtime's usage-event store; arvis sets it to 1 unless the user did.
    pub const ORT_DISABLE_TELEMETRY: &str = "ORT_DISABLE_TELEMETRY";
    /// Where the shared test models live (tests and the tokenizer's offline copy).
    pub const SHARED_DIR: &str = "ARVIS_SHARED_DIR";
    /// `--device`.
    pub const DEVICE: &str = "ARVIS_DEVICE";
    /// `--model` (detector).
    pub const DETECTOR: &str = "ARVIS_DETECTOR";
    /// `--clip-model`.
    pub const CLIP_MODEL: &str = "ARVIS_CLIP_MODEL";
    /// `--clip-text-model`.
    pub const CLIP_TEXT_MODEL: &str = "ARVIS_CLIP_TEXT_MODEL";
    /// `--index`.
    pub const INDEX: &str = "ARVIS_INDEX";
    /// libpq's password variable, honoured for catalogue URLs without a password.
    pub const PGPASSWORD: &str = "PGPASSWORD";
    /// libpq's password file (default `~/.pgpass`).
    pub const PGPASSFILE: &str = "PGPASSFILE";
    /// libpq's default user, for catalogue URLs without one.
    pub const PGUSER: &str = "PGUSER";
    /// Log filter (tracing's `EnvFilter` syntax).
    pub const LOG: &str = "ARVIS_LOG";
    /// Tuning: intra-op threads per session (0: ONNX Runtime's pinned default).
    pub const ORT_THREADS: &str = "ARVIS_ORT_THREADS";
    /// Tuning: intra-op threads spin between parallel sections (1) or sleep (0, default).
    pub const ORT_SPIN: &str = "ARVIS_ORT_SPIN";
    /// Tuning: the detector's I/O (plain, bound, graph).
    pub const DETECTOR_IO: &str = "ARVIS_DETECTOR_IO";
    /// Tuning: the still-image prefetch thread's priority (normal, idle).
    pub const PREFETCH_PRIORITY: &str = "ARVIS_PREFETCH_PRIORITY";
    /// Tuning: the largest CLIP batch tried.
    pub const CLIP_MAX_BATCH: &str = "ARVIS_CLIP_MAX_BATCH";
    /// Tuning (CUDA): TF32 math.
    pub const CUDA_TF32: &str = "ARVIS_CUDA_TF32";
    /// Tuning (CUDA): cuDNN's convolution algorithm search.
    pub const CUDNN_CONV_SEARCH: &str = "ARVIS_CUDNN_CONV_SEARCH";
    /// Tuning (CUDA): the memory arena's limit.
    pub const GPU_MEM_LIMIT: &str = "ARVIS_GPU_MEM_LIMIT";
    /// Tuning (CUDA): how the memory arena grows.
    pub const CUDA_ARENA: &str = "ARVIS_CUDA_ARENA";
}

/// The value of an environment variable, treating "set but empty" as unset.
pub fn non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// How a frame's tensor reaches the detector session (see `crate::detect::io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// `session.run` on a borrowed input.
    Plain,
    /// Input and output bound once and reused (pinned on CUDA).
    Bound,
    /// A captured CUDA graph replayed per frame (CUDA only).
    Graph,
}

impl FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plain" => Ok(IoMode::Plain),
            "bound" => Ok(IoMode::Bound),
            "graph" => Ok(IoMode::Graph),
            other => Err(format!(
                "unknown detector I/O mode `{other}`: use plain, bound or graph"
            )),
        }
    }
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoMode::Plain => "plain",
            IoMode::Bound => "bound",
            IoMode::Graph => "graph",
        })
    }
}

/// How the still-image prefetch thread competes with inference for the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefetchPriority {
    /// The same priority as inference (the default).
    Normal,
    /// SCHED_IDLE: the helper only gets cycles nothing else wants, so it never preempts an
    /// intra-op thread: about 5 % faster per image on an otherwise idle machine. Beside other
    /// CPU work the starved helper's images are staged by the consumer, but a helper still
    /// alive at exit makes the kernel tear the process down at idle priority, which can take
    /// seconds (docs/PERFORMANCE.md): an opt-in for dedicated machines.
    Idle,
}

impl PrefetchPriority {
    /// From the variable's value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "normal" | "" => Ok(Self::Normal),
            "idle" => Ok(Self::Idle),
            other => Err(format!(
                "{}={other:?} is not a priority: use normal or idle",
                var::PREFETCH_PRIORITY
            )),
        }
    }
}

/// The tuning switches, parsed once. Each only changes speed or memory, never a result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    /// `ARVIS_ORT_THREADS`: intra-op threads per session. Why not ONNX Runtime's default: it
    /// pins its pool threads to cores 1…n-1 and leaves the calling thread unpinned, so two
    /// sessions (detector and embedder) pin their workers to the same cores. Same count,
    /// unpinned, leaves placement to the scheduler (docs/PERFORMANCE.md).
    #[serde(serialize_with = "as_text")]
    pub ort_threads: IntraOpThreads,
    /// `ARVIS_ORT_SPIN`: off by default: on a small CPU the spinning threads take cycles from
    /// the decode, capture and UI threads running beside inference.
    pub ort_spin: bool,
    /// `ARVIS_CUDA_*`, `ARVIS_CUDNN_CONV_SEARCH`, `ARVIS_GPU_MEM_LIMIT` (CUDA sessions only).
    #[serde(serialize_with = "as_text")]
    pub cuda: CudaTuning,
    /// `ARVIS_DETECTOR_IO`; None: the device's default (plain on the CPU, bound on CUDA).
    pub detector_io: Option<IoMode>,
    /// `ARVIS_PREFETCH_PRIORITY`.
    pub prefetch_priority: PrefetchPriority,
    /// `ARVIS_CLIP_MAX_BATCH`; None: 32 on the CPU, 256 on CUDA.
    pub clip_max_batch: Option<usize>,
}

fn as_text<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ort_threads: IntraOpThreads::Unpinned(physical_cores()),
            ort_spin: false,
            cuda: CudaTuning::default(),
            detector_io: None,
            prefetch_priority: PrefetchPriority::Normal,
            clip_max_batch: None,
        }
    }
}

/// Tuning variables with values that cannot be used; each message names the variable and the
/// values it takes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct SettingsError(pub Vec<String>);

impl Settings {
    /// From the environment.
    pub fn from_env() -> Result<Settings, SettingsError> {
        Self::from_lookup(non_empty)
    }

    /// From `lookup(name)`; every bad value is reported, not just the first.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let mut problems = Vec::new();
        let mut s = Settings::default();
        match IntraOpThreads::parse(lookup(var::ORT_THREADS).as_deref()) {
            Ok(t) => s.ort_threads = t,
            Err(e) => problems.push(e),
        }
        match lookup(var::ORT_SPIN).as_deref() {
            None | Some("0" | "off" | "false") => {}
            Some("1" | "on" | "true") => s.ort_spin = true,
            Some(other) => {
                problems.push(format!("{}={other:?} is not valid: 1 or 0", var::ORT_SPIN))
            }
        }
        match CudaTuning::from_lookup(&lookup) {
            Ok(t) => s.cuda = t,
            Err(e) => problems.push(e.to_string()),
        }
        if let Some(v) = lookup(var::DETECTOR_IO) {
            match v.parse() {
                Ok(m) => s.detector_io = Some(m),
                Err(e) => problems.push(format!("{}: {e}", var::DETECTOR_IO)),
            }
        }
        if let Some(v) = lookup(var::PREFETCH_PRIORITY) {
            match PrefetchPriority::parse(&v) {
                Ok(p) => s.prefetch_priority = p,
                Err(e) => problems.push(e),
            }
        }
        if let Some(v) = lookup(var::CLIP_MAX_BATCH) {
            match v.trim().parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => s.clip_max_batch = Some(n),
                _ => problems.push(format!(
                    "{}={v:?}: give a whole number from 1 to 4096",
                    var::CLIP_MAX_BATCH
                )),
            }
        }
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(SettingsError(problems))
        }
    }
}

static INSTALLED: OnceLock<Settings> = OnceLock::new();

/// Make `settings` the process's settings (done once by `main`; later calls keep the first).
pub fn install(settings: Settings) -> &'static Settings {
    INSTALLED.get_or_init(|| settings)
}

/// The installed settings; a program that did not install any (a test, another crate using
/// the library) gets them read from the environment once, on first use.
pub fn current() -> Result<&'static Settings, SettingsError> {
    if let Some(s) = INSTALLED.get() {
        return Ok(s);
    }
    Ok(install(Settings::from_env()?))
}

/// An environment made of `pairs`, for the parsers' tests.
#[cfg(test)]
pub(crate) fn lookup_in(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_lookup(lookup_in(pairs))
    }

    #[test]
    fn nothing_set_is_the_defaults() {
        assert_eq!(parse(&[]).unwrap(), Settings::default());
    }

    #[test]
    fn each_switch_parses_into_its_field() {
        let s = parse(&[
            (var::ORT_THREADS, "3"),
            (var::ORT_SPIN, "1"),
            (var::DETECTOR_IO, "bound"),
            (var::PREFETCH_PRIORITY, "idle"),
            (var::CLIP_MAX_BATCH, "512"),
            (var::CUDA_TF32, "0"),
        ])
        .unwrap();
        assert_eq!(s.ort_threads, IntraOpThreads::Unpinned(3));
        assert!(s.ort_spin && !s.cuda.tf32);
        assert_eq!(s.detector_io, Some(IoMode::Bound));
        assert_eq!(s.prefetch_priority, PrefetchPriority::Idle);
        assert_eq!(s.clip_max_batch, Some(512));
        assert_eq!(
            parse(&[(var::ORT_THREADS, "0")]).unwrap().ort_threads,
            IntraOpThreads::OrtDefault
        );
    }

    #[test]
    fn every_bad_value_is_named_with_what_it_takes() {
        let e = parse(&[
            (var::ORT_SPIN, "maybe"),
            (var::DETECTOR_IO, "fast"),
            (var::PREFETCH_PRIORITY, "high"),
            (var::ORT_THREADS, "many"),
        ])
        .unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
        let text = e.to_string();
        for part in [
            "ARVIS_ORT_SPIN=\"maybe\" is not valid: 1 or 0",
            "ARVIS_DETECTOR_IO",
            "plain, bound or graph",
            "ARVIS_PREFETCH_PRIORITY",
            "normal or idle",
            "ARVIS_ORT_THREADS",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        for bad in ["0", "-1", "lots", "5000"] {
            let e = parse(&[(var::CLIP_MAX_BATCH, bad)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("ARVIS_CLIP_MAX_BATCH") && e.contains("1 to 4096"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_settings_serialise_for_doctor() {
        let json = serde_json::to_value(Settings::default()).unwrap();
        assert_eq!(json["ort_spin"], false);
        assert_eq!(json["prefetch_priority"], "normal");
        assert!(json["cuda"].as_str().unwrap().contains("TF32 on"));
    }
}
