//! ONNX Runtime: find or provision the shared library, load it once, and build sessions.
//!
//! Lookup order: `ORT_DYLIB_PATH` → arvis's cache → provision the official wheel with pip into the
//! cache. Every failure is one [`RuntimeError`] that names the fix; nothing here panics (`ort::init`
//! would, so it is never called).

pub mod contract;
pub mod cuda_libs;
pub mod gpu_info;
mod provision;

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::ep;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

pub use crate::settings::{CudaTuning, IntraOpThreads, physical_cores};
pub use provision::{LibraryFlavor, cached_library, pip_download, provision_library, python};

/// The ONNX Runtime release arvis provisions and is tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// Oldest minor version the `ort` bindings accept (its `api-31` feature).
pub const ORT_MIN_MINOR: u32 = 31;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// CUDA execution provider on this GPU index.
    Cuda(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Device {
    /// The ONNX Runtime build this device needs.
    pub fn flavor(self) -> LibraryFlavor {
        match self {
            Device::Cpu => LibraryFlavor::Cpu,
            Device::Cuda(_) => LibraryFlavor::Cuda,
        }
    }

    /// Execution provider name as ONNX Runtime reports it.
    pub fn provider_name(self) -> &'static str {
        match self {
            Device::Cpu => "CPUExecutionProvider",
            Device::Cuda(_) => "CUDAExecutionProvider",
        }
    }
}

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA when an NVIDIA GPU is present, else CPU (with a visible warning).
    Auto,
    /// This device and no other.
    Exact(Device),
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Exact(Device::Cpu)),
            "cuda" | "gpu" => Ok(DeviceRequest::Exact(Device::Cuda(0))),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(|n| DeviceRequest::Exact(Device::Cuda(n)))
                .ok_or_else(|| format!("unknown device `{s}`: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceRequest::Auto => f.write_str("auto"),
            DeviceRequest::Exact(d) => d.fmt(f),
        }
    }
}

impl DeviceRequest {
    /// Resolve to a concrete device. `Auto` picks CUDA only when an NVIDIA driver is present.
    pub fn resolve(self) -> Device {
        self.resolve_with(nvidia_driver_present())
    }

    /// The device for this request on a machine with or without an NVIDIA driver.
    pub fn resolve_with(self, driver: bool) -> Device {
        match self {
            DeviceRequest::Exact(d) => d,
            DeviceRequest::Auto if driver => Device::Cuda(0),
            DeviceRequest::Auto => Device::Cpu,
        }
    }
}

/// Whether ONNX Runtime may keep its usage-event store, as `arvis doctor` reports it. arvis sets
/// `ORT_DISABLE_TELEMETRY=1` at start-up unless the user set the variable, so any other value
/// here is the user's own choice.
pub fn telemetry_report() -> String {
    match std::env::var(crate::settings::var::ORT_DISABLE_TELEMETRY) {
        Ok(v) if v == "1" => "telemetry: off (ORT_DISABLE_TELEMETRY=1)".to_owned(),
        Ok(v) => format!(
            "telemetry: left to ONNX Runtime (ORT_DISABLE_TELEMETRY={v:?} from your environment)"
        ),
        Err(_) => "telemetry: left to ONNX Runtime (ORT_DISABLE_TELEMETRY unset)".to_owned(),
    }
}

/// Whether an NVIDIA kernel driver is loaded (no CUDA libraries needed to tell).
pub fn nvidia_driver_present() -> bool {
    crate::fault::nvidia_driver()
        .unwrap_or_else(|| Path::new("/proc/driver/nvidia/version").exists())
}

/// Where a session's nodes run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Every node on the CPU.
    Cpu,
    /// Every node on the GPU (built with ONNX Runtime's CPU fallback disabled).
    Cuda,
    /// On CUDA, but some nodes fell back to the CPU; ONNX Runtime's reason.
    Mixed(String),
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::Cpu => "CPU",
            Placement::Cuda => "CUDA (every node)",
            Placement::Mixed(_) => "CUDA with some nodes on the CPU (mixed)",
        })
    }
}

/// Why ONNX Runtime could not be made available. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `ORT_DYLIB_PATH` names no file.
    #[error(
        "ORT_DYLIB_PATH is set to {0}, but no file is there. Fix: point ORT_DYLIB_PATH at libonnxruntime.so (version 1.{ORT_MIN_MINOR} or newer), or unset it so arvis provisions ONNX Runtime {ORT_VERSION} itself"
    )]
    DylibPathMissing(PathBuf),
    /// The library does not load.
    #[error("could not load ONNX Runtime from {path}: {reason}. Fix: {fix}")]
    Unloadable {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        reason: String,
        /// What to do.
        fix: String,
    },
    /// The library is older than arvis needs.
    #[error(
        "ONNX Runtime at {path} is version {found}, but arvis needs 1.{ORT_MIN_MINOR} or newer. Fix: {fix}"
    )]
    TooOld {
        /// The library.
        path: PathBuf,
        /// Its version.
        found: String,
        /// What to do.
        fix: String,
    },
    /// Provisioning from the wheels failed.
    #[error(
        "ONNX Runtime {ORT_VERSION} is not installed and could not be provisioned: {0}. Fix: make `python3 -m pip download onnxruntime=={ORT_VERSION}` work (network or a pip mirror via PIP_INDEX_URL; ARVIS_PYTHON picks the interpreter), or set ORT_DYLIB_PATH to an unpacked libonnxruntime.so"
    )]
    Provision(String),
    /// A library of the other flavour is already loaded.
    #[error(
        "ONNX Runtime was already loaded from {loaded} ({loaded_flavor}); a {wanted} build cannot be loaded into the same process. Fix: choose the device before anything else runs"
    )]
    FlavorConflict {
        /// The loaded library.
        loaded: PathBuf,
        /// Its flavour.
        loaded_flavor: LibraryFlavor,
        /// The flavour asked for now.
        wanted: LibraryFlavor,
    },
    /// CUDA asked for on a machine without an NVIDIA driver.
    #[error(
        "CUDA was requested, but this machine has no NVIDIA driver (/proc/driver/nvidia/version is missing). Fix: install the NVIDIA driver, or use --device cpu (or auto, which falls back to the CPU)"
    )]
    NoNvidiaDriver,
    /// The CUDA provider's libraries are missing.
    #[error(transparent)]
    CudaLibs(#[from] cuda_libs::CudaLibsError),
    /// ONNX Runtime reported an error.
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
}

/// The loaded ONNX Runtime: one per process.
pub struct Runtime {
    env: ort::environment::Environment,
    /// Library that was loaded.
    pub library: PathBuf,
    /// Version string the library reports, e.g. "1.31.1".
    pub version: String,
    /// CPU-only or GPU build.
    pub flavor: LibraryFlavor,
    /// CUDA runtime libraries loaded for the GPU build; kept loaded for the process's life.
    _cuda_libs: Vec<libloading::Library>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

impl Runtime {
    /// Load ONNX Runtime (provisioning it on first use) or return the already loaded one.
    pub fn get(flavor: LibraryFlavor) -> Result<&'static Runtime, RuntimeError> {
        if let Some(rt) = RUNTIME.get() {
            return check_flavor(rt, flavor);
        }
        // Provisioning shells out to pip: serialise it so two threads never race on the cache.
        let _guard = INIT_LOCK
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(rt) = RUNTIME.get() {
            return check_flavor(rt, flavor);
        }
        // Fail before provisioning a ~300 MB GPU build that could never run here.
        if flavor == LibraryFlavor::Cuda && !nvidia_driver_present() {
            return Err(RuntimeError::NoNvidiaDriver);
        }
        let (library, from_env) = locate_library(flavor)?;
        Self::init(library, from_env, flavor)
    }

    /// Load ONNX Runtime from this exact file (embedding applications and tests).
    pub fn from_library(
        library: &Path,
        flavor: LibraryFlavor,
    ) -> Result<&'static Runtime, RuntimeError> {
        let _guard = INIT_LOCK
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(rt) = RUNTIME.get() {
            return check_flavor(rt, flavor);
        }
        Self::init(library.to_path_buf(), true, flavor)
    }

    fn init(
        library: PathBuf,
        from_env: bool,
        flavor: LibraryFlavor,
    ) -> Result<&'static Runtime, RuntimeError> {
        let started = std::time::Instant::now();
        let version = probe_library(&library, from_env)?;
        // The CUDA provider links against cuBLAS, cuDNN …: load them first (provisioned beside
        // the library, or installed on the system), so a missing one is named here.
        let cuda_libs = if flavor == LibraryFlavor::Cuda {
            cuda_libs::preload(library.parent().unwrap_or(Path::new(".")))?
        } else {
            Vec::new()
        };
        let env = ort::init_from(&library)
            .map_err(|e| RuntimeError::Unloadable {
                path: library.clone(),
                reason: e.to_string(),
                fix: load_fix(from_env),
            })?
            .with_name("arvis")
            // No usage events from a local app (see cli::opt_out_of_ort_telemetry for the store).
            .with_telemetry(false)
            .build()?;
        tracing::info!(library = %library.display(), %version, ms = started.elapsed().as_millis(), "loaded ONNX Runtime");
        let rt = Runtime {
            env,
            library,
            version,
            flavor,
            _cuda_libs: cuda_libs,
        };
        Ok(RUNTIME.get_or_init(|| rt))
    }

    /// The runtime if it has been loaded, without loading it.
    pub fn loaded() -> Option<&'static Runtime> {
        RUNTIME.get()
    }

    fn builder(&self, device: Device, cuda_graph: bool) -> Result<SessionBuilder, ort::Error> {
        let settings = crate::settings::current().map_err(|e| ort::Error::new(e.to_string()))?;
        let builder = Session::builder(&self.env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| -> ort::Error { e.into() })?
            .with_intra_op_spinning(settings.ort_spin)
            .map_err(|e| -> ort::Error { e.into() })?
            .with_intra_threads(settings.ort_threads.count())
            .map_err(|e| -> ort::Error { e.into() })?;
        match device {
            Device::Cpu => Ok(builder),
            // error_on_failure: a CUDA request that cannot be honoured must fail, never run on the CPU.
            Device::Cuda(id) => builder
                .with_execution_providers([settings
                    .cuda
                    .apply(ep::CUDA::default().with_device_id(id))
                    .with_cuda_graph(cuda_graph)
                    .build()
                    .error_on_failure()])
                .map_err(|e| -> ort::Error { e.into() }),
        }
    }

    /// Build a session for `model` on `device`, and where its nodes run.
    pub fn session(
        &self,
        model: &Path,
        device: Device,
    ) -> Result<(Session, Placement), ort::Error> {
        self.session_with(model, device, false)
    }

    /// Build a session, with CUDA graph capture on where asked (fixed-shape models on CUDA
    /// only; its inputs and outputs must then be bound at fixed device addresses).
    ///
    /// On CUDA the session is first built with ONNX Runtime's CPU fallback disabled: if that
    /// succeeds every node runs on the GPU. If it fails but an ordinary build succeeds, some
    /// nodes (int8's ConvInteger, an op without a CUDA kernel) run on the CPU: the session is
    /// used, and labelled [`Placement::Mixed`] so that doctor, the HUD and the benchmarks say so
    /// instead of reporting a CPU-bound run as a GPU figure.
    pub fn session_with(
        &self,
        model: &Path,
        device: Device,
        cuda_graph: bool,
    ) -> Result<(Session, Placement), ort::Error> {
        let started = std::time::Instant::now();
        let placed = match device {
            Device::Cpu => (
                self.builder(device, cuda_graph)?.commit_from_file(model)?,
                Placement::Cpu,
            ),
            Device::Cuda(_) => {
                let strict = self
                    .builder(device, cuda_graph)?
                    .with_config_entry("session.disable_cpu_ep_fallback", "1")
                    .map_err(|e| -> ort::Error { e.into() })?
                    .commit_from_file(model);
                match strict {
                    Ok(session) => (session, Placement::Cuda),
                    Err(strict_error) => {
                        let session = self.builder(device, cuda_graph)?.commit_from_file(model)?;
                        let why = strict_error.to_string();
                        tracing::warn!(model = %model.display(), "some nodes run on the CPU: {why}");
                        (session, Placement::Mixed(why))
                    }
                }
            }
        };
        tracing::debug!(model = %model.display(), ms = started.elapsed().as_millis(), placement = %placed.1, "session ready");
        Ok(placed)
    }

    /// Build a session from in-memory ONNX bytes (tests and generated models).
    pub fn session_from_memory(&self, onnx: &[u8], device: Device) -> Result<Session, ort::Error> {
        self.builder(device, false)?.commit_from_memory(onnx)
    }

    /// Names of the execution providers this library was built with.
    pub fn available_providers(&self) -> Vec<String> {
        available_providers()
    }
}

fn check_flavor(
    rt: &'static Runtime,
    wanted: LibraryFlavor,
) -> Result<&'static Runtime, RuntimeError> {
    // A GPU build also runs on the CPU, so a CPU request is always satisfied.
    if wanted == LibraryFlavor::Cpu || rt.flavor == wanted {
        Ok(rt)
    } else {
        Err(RuntimeError::FlavorConflict {
            loaded: rt.library.clone(),
            loaded_flavor: rt.flavor,
            wanted,
        })
    }
}

/// Where the library comes from; the flag says it was named by `ORT_DYLIB_PATH`.
fn locate_library(flavor: LibraryFlavor) -> Result<(PathBuf, bool), RuntimeError> {
    if let Some(path) = crate::settings::non_empty(crate::settings::var::ORT_DYLIB_PATH) {
        let path = PathBuf::from(path);
        if !path.exists() {
            return Err(RuntimeError::DylibPathMissing(path));
        }
        return Ok((path, true));
    }
    if let Some(path) = cached_library(flavor) {
        return Ok((path, false));
    }
    provision_library(flavor)
        .map(|p| (p, false))
        .map_err(|e| RuntimeError::Provision(e.to_string()))
}

fn load_fix(from_env: bool) -> String {
    if from_env {
        format!(
            "point ORT_DYLIB_PATH at a working libonnxruntime.so (1.{ORT_MIN_MINOR} or newer), or unset it so arvis provisions ONNX Runtime {ORT_VERSION} itself"
        )
    } else {
        format!(
            "delete {} and run again so arvis provisions ONNX Runtime {ORT_VERSION} afresh",
            provision::runtime_cache_root().display()
        )
    }
}

/// Open the library ourselves first, so a broken or old one gives our error, not a panic deep in `ort`.
fn probe_library(path: &Path, from_env: bool) -> Result<String, RuntimeError> {
    let unloadable = |reason: String| RuntimeError::Unloadable {
        path: path.to_path_buf(),
        reason,
        fix: load_fix(from_env),
    };
    // SAFETY: loading ONNX Runtime runs only its static initialisers, which have no preconditions.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| unloadable(e.to_string()))?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: the symbol has this signature in every ONNX Runtime release.
    let get_base: libloading::Symbol<GetApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }.map_err(|_| {
            unloadable("it does not export OrtGetApiBase, so it is not ONNX Runtime".into())
        })?;
    // SAFETY: OrtGetApiBase returns a pointer to a static struct (or null, checked).
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(unloadable("OrtGetApiBase returned null".into()));
    }
    // SAFETY: base is non-null and points to the library's static OrtApiBase; the string is static.
    let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) }
        .to_string_lossy()
        .into_owned();
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor < ORT_MIN_MINOR {
        return Err(RuntimeError::TooOld {
            path: path.to_path_buf(),
            found: version,
            fix: load_fix(from_env),
        });
    }
    Ok(version)
}

fn available_providers() -> Vec<String> {
    let mut names: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut count: std::ffi::c_int = 0;
    let api = ort::api();
    // SAFETY: the C API fills `names` with `count` C strings that we release below.
    let status = unsafe { (api.GetAvailableProviders)(&mut names, &mut count) };
    if !status.0.is_null() || names.is_null() {
        return Vec::new();
    }
    let list = (0..count as isize)
        // SAFETY: index within the `count` entries returned above; each is a NUL-terminated string.
        .map(|i| {
            unsafe { CStr::from_ptr(*names.offset(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: releasing exactly what GetAvailableProviders allocated.
    let _ = unsafe { (api.ReleaseAvailableProviders)(names, count) };
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_requests_parse() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceRequest::Exact(Device::Cpu)));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Exact(Device::Cuda(0))));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Exact(Device::Cuda(3))));
        assert!("cuda:-1".parse::<DeviceRequest>().is_err());
        assert!(
            "tpu"
                .parse::<DeviceRequest>()
                .unwrap_err()
                .contains("use auto, cpu, cuda or cuda:N")
        );
        assert_eq!(DeviceRequest::Exact(Device::Cuda(2)).to_string(), "cuda:2");
    }

    #[test]
    fn thread_counts_parse_and_default_to_physical_cores() {
        let cores = physical_cores();
        assert!(cores >= 1);
        assert!(cores <= std::thread::available_parallelism().map_or(1, |n| n.get()));
        assert_eq!(
            IntraOpThreads::parse(None),
            Ok(IntraOpThreads::Unpinned(cores))
        );
        assert_eq!(
            IntraOpThreads::parse(Some(" 3 ")),
            Ok(IntraOpThreads::Unpinned(3))
        );
        assert_eq!(IntraOpThreads::parse(Some("3")).map(|t| t.count()), Ok(3));
        let ort_default = IntraOpThreads::parse(Some("0"));
        assert_eq!(ort_default, Ok(IntraOpThreads::OrtDefault));
        assert_eq!(
            ort_default.map(|t| t.count()),
            Ok(0),
            "0 lets ONNX Runtime pick"
        );
        let err = IntraOpThreads::parse(Some("many")).expect_err("not a count");
        assert!(
            err.contains("ARVIS_ORT_THREADS") && err.contains("many"),
            "{err}"
        );
    }

    #[test]
    fn auto_only_picks_cuda_with_a_driver() {
        assert_eq!(DeviceRequest::Auto.resolve_with(true), Device::Cuda(0));
        assert_eq!(DeviceRequest::Auto.resolve_with(false), Device::Cpu);
        // An explicit request is kept either way: `cuda` never silently becomes the CPU.
        for driver in [true, false] {
            assert_eq!(
                DeviceRequest::Exact(Device::Cuda(1)).resolve_with(driver),
                Device::Cuda(1)
            );
            assert_eq!(
                DeviceRequest::Exact(Device::Cpu).resolve_with(driver),
                Device::Cpu
            );
        }
    }
}
