//! Provision the ONNX Runtime shared library from its official Python wheel, fetched with pip.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::ORT_VERSION;

/// Which ONNX Runtime build: the CPU wheel or the CUDA (13) GPU wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LibraryFlavor {
    /// The CPU-only build.
    Cpu,
    /// The CUDA build.
    Cuda,
}

impl std::fmt::Display for LibraryFlavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LibraryFlavor::Cpu => "CPU",
            LibraryFlavor::Cuda => "CUDA",
        })
    }
}

impl LibraryFlavor {
    fn wheel(self) -> &'static str {
        match self {
            LibraryFlavor::Cpu => "onnxruntime",
            LibraryFlavor::Cuda => "onnxruntime-gpu",
        }
    }

    fn dir_name(self) -> String {
        match self {
            LibraryFlavor::Cpu => format!("{ORT_VERSION}-cpu"),
            LibraryFlavor::Cuda => format!("{ORT_VERSION}-cuda"),
        }
    }
}

/// Errors while provisioning; wrapped into `RuntimeError::Provision` with the fix.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("could not run `{python} -m pip`: {source}")]
    NoPython { python: String, source: io::Error },
    #[error("`pip download {0}=={ORT_VERSION}` failed (exit status {1}); its output is above")]
    PipFailed(&'static str, String),
    #[error("pip produced no wheel in {0}")]
    NoWheel(PathBuf),
    #[error("the wheel {wheel} holds no {lib}")]
    NoLibraryInWheel { wheel: PathBuf, lib: String },
    #[error("could not unpack {wheel}: {source}")]
    Unzip {
        wheel: PathBuf,
        source: zip::result::ZipError,
    },
    #[error("I/O error in {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "`pip download` of NVIDIA's CUDA 13 runtime wheels failed (exit status {0}); its output is above. Fix: give pip network access (or a mirror via PIP_INDEX_URL), or install CUDA 13 + cuDNN 9 yourself and point ORT_DYLIB_PATH at an onnxruntime-gpu 1.31 library"
    )]
    CudaWheels(String),
    #[error(transparent)]
    CudaLibs(#[from] super::cuda_libs::CudaLibsError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<cache>/onnxruntime`.
pub fn runtime_cache_root() -> PathBuf {
    crate::paths::cache_dir().join("onnxruntime")
}

/// File name of the main library inside the wheel and in the cache.
fn library_file_name() -> String {
    if cfg!(target_os = "macos") {
        format!("libonnxruntime.{ORT_VERSION}.dylib")
    } else if cfg!(windows) {
        "onnxruntime.dll".to_string()
    } else {
        format!("libonnxruntime.so.{ORT_VERSION}")
    }
}

/// The provisioned library in the cache, if it is there.
pub fn cached_library(flavor: LibraryFlavor) -> Option<PathBuf> {
    let path = runtime_cache_root()
        .join(flavor.dir_name())
        .join(library_file_name());
    path.is_file().then_some(path)
}

/// Download the wheel with pip and unpack its shared libraries into the cache.
pub fn provision_library(flavor: LibraryFlavor) -> Result<PathBuf, ProvisionError> {
    let root = runtime_cache_root();
    let final_dir = root.join(flavor.dir_name());
    let staging = root.join(format!(
        ".staging-{}-{}",
        flavor.dir_name(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    let result = fetch_and_unpack(flavor, &staging, &final_dir);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn fetch_and_unpack(
    flavor: LibraryFlavor,
    staging: &Path,
    final_dir: &Path,
) -> Result<PathBuf, ProvisionError> {
    let python = python();
    eprintln!(
        "arvis: first run: provisioning ONNX Runtime {ORT_VERSION} ({flavor}) with pip into {}",
        final_dir.display()
    );
    let wheel_dir = staging.join("wheel");
    let status = pip_download(
        &python,
        &wheel_dir,
        &[format!("{}=={ORT_VERSION}", flavor.wheel())],
    )?;
    if !status.success() {
        return Err(ProvisionError::PipFailed(
            flavor.wheel(),
            status.to_string(),
        ));
    }
    let wheel = fs::read_dir(&wheel_dir)
        .map_err(io_err(&wheel_dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| ProvisionError::NoWheel(wheel_dir.clone()))?;

    let lib_dir = staging.join("lib");
    fs::create_dir_all(&lib_dir).map_err(io_err(&lib_dir))?;
    unpack_libraries(&wheel, &lib_dir)?;
    if flavor == LibraryFlavor::Cuda {
        fetch_cuda_libraries(&python, staging, &lib_dir)?;
    }
    let main_lib = library_file_name();
    if !lib_dir.join(&main_lib).is_file() {
        return Err(ProvisionError::NoLibraryInWheel {
            wheel,
            lib: main_lib,
        });
    }
    // Atomic publish: a concurrent or interrupted run never sees a half-unpacked directory.
    // Another arvis that provisioned at the same time and published first wins: its library
    // may already be loaded, so it is used, not replaced; only a broken directory is.
    let published = |dir: &Path| dir.join(&main_lib).is_file();
    if !published(final_dir) {
        if final_dir.exists() {
            fs::remove_dir_all(final_dir).map_err(io_err(final_dir))?;
        }
        if let Err(e) = fs::rename(&lib_dir, final_dir)
            && !published(final_dir)
        {
            return Err(io_err(final_dir)(e));
        }
    }
    eprintln!(
        "arvis: ONNX Runtime {ORT_VERSION} ready in {}",
        final_dir.display()
    );
    Ok(final_dir.join(main_lib))
}

/// The Python interpreter whose pip arvis uses: `ARVIS_PYTHON`, else `python3`.
pub fn python() -> String {
    crate::settings::non_empty(crate::settings::var::PYTHON).unwrap_or_else(|| "python3".into())
}

/// `python -m pip download --no-deps` of binary wheels into `dest`. pip's progress goes to our
/// stderr so that stdout stays clean for --json output. (The tests fetch their PostgreSQL
/// server's wheel through this too.)
pub fn pip_download(
    python: &str,
    dest: &Path,
    specs: &[impl AsRef<std::ffi::OsStr>],
) -> Result<std::process::ExitStatus, ProvisionError> {
    Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .arg("--dest")
        .arg(dest)
        .args(specs)
        .stdin(Stdio::null())
        .stdout(stderr_stdio())
        .status()
        .map_err(|source| ProvisionError::NoPython {
            python: python.to_string(),
            source,
        })
}

/// The CUDA 13 runtime libraries from NVIDIA's wheels, unpacked beside the GPU build.
fn fetch_cuda_libraries(
    python: &str,
    staging: &Path,
    lib_dir: &Path,
) -> Result<(), ProvisionError> {
    eprintln!(
        "arvis: fetching the CUDA 13 runtime libraries (cuBLAS, cuDNN, cuFFT, cuRAND) with pip"
    );
    let wheel_dir = staging.join("cuda-wheels");
    let status = pip_download(python, &wheel_dir, super::cuda_libs::CUDA_WHEELS)?;
    if !status.success() {
        return Err(ProvisionError::CudaWheels(status.to_string()));
    }
    for entry in fs::read_dir(&wheel_dir).map_err(io_err(&wheel_dir))? {
        let path = entry.map_err(io_err(&wheel_dir))?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            super::cuda_libs::unpack_wheel(&path, lib_dir)?;
        }
    }
    Ok(())
}

/// Extract `onnxruntime/capi/*onnxruntime*.so*` (the runtime and its provider plugins), nothing else.
fn unpack_libraries(wheel: &Path, dest: &Path) -> Result<(), ProvisionError> {
    let unzip_err = |source| ProvisionError::Unzip {
        wheel: wheel.to_path_buf(),
        source,
    };
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(unzip_err)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(unzip_err)?;
        let name = entry.name().to_string();
        let Some(file_name) = name.strip_prefix("onnxruntime/capi/") else {
            continue;
        };
        let is_library = file_name.contains("onnxruntime")
            && !file_name.contains("pybind")
            && (file_name.contains(".so")
                || file_name.ends_with(".dylib")
                || file_name.ends_with(".dll"));
        if !is_library || file_name.contains('/') {
            continue;
        }
        let out_path = dest.join(file_name);
        let mut out = File::create(&out_path).map_err(io_err(&out_path))?;
        io::copy(&mut entry, &mut out).map_err(io_err(&out_path))?;
        out.flush().map_err(io_err(&out_path))?;
        out.sync_all().map_err(io_err(&out_path))?;
    }
    Ok(())
}

fn stderr_stdio() -> Stdio {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() {
            return Stdio::from(fd);
        }
    }
    Stdio::inherit()
}
