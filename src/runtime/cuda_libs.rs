//! The CUDA 13 runtime libraries ONNX Runtime's CUDA provider links against (cuBLAS, cuDNN,
//! cuFFT, cuRAND, the CUDA runtime, nvJitLink) or opens at run time (NVRTC). They come from NVIDIA's pip wheels, unpacked
//! beside `libonnxruntime` when the GPU build is provisioned, and are loaded (globally, in
//! dependency order) before the provider is registered, so the provider finds them without
//! `LD_LIBRARY_PATH`. Libraries already installed on the system are used as they are.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// NVIDIA's wheels for CUDA 13, and the major versions that go with it.
pub const CUDA_WHEELS: &[&str] = &[
    "nvidia-cuda-runtime>=13,<14",
    // Not linked: the provider dlopens libnvrtc.so.13 when it compiles kernels at run time.
    "nvidia-cuda-nvrtc>=13,<14",
    "nvidia-nvjitlink>=13,<14",
    "nvidia-cublas>=13,<14",
    "nvidia-cufft>=12,<13",
    "nvidia-curand>=10.4,<11",
    "nvidia-cudnn-cu13>=9,<10",
];

/// Libraries to load, in dependency order (file-name prefixes; `libcudnn` loads every cuDNN part).
const LOAD_ORDER: &[&str] = &[
    "libcudart.so",
    "libnvrtc-builtins.so",
    "libnvrtc.so",
    "libnvJitLink.so",
    "libcublasLt.so",
    "libcublas.so",
    "libcufft.so",
    "libcurand.so",
    "libcudnn",
];

/// The ones the CUDA provider cannot start without.
const REQUIRED: &[&str] = &[
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcufft.so.12",
    "libcurand.so.10",
    "libcudnn.so.9",
];

/// Why the CUDA provider's libraries could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CudaLibsError {
    /// A library is in neither place.
    #[error(
        "the CUDA provider needs {lib}, which is neither in {dir} nor on the library path. Fix: let arvis provision it (delete {dir} and run again with network access for pip), or install the CUDA 13 runtime and cuDNN 9 and add their folders to LD_LIBRARY_PATH"
    )]
    Missing {
        /// The library's file name.
        lib: &'static str,
        /// Where arvis provisions them.
        dir: PathBuf,
    },
    /// A library is there but does not load.
    #[error("{path} could not be loaded: {reason}")]
    Unloadable {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// A provisioned wheel could not be unpacked.
    #[error("could not unpack {wheel}: {reason}")]
    Unpack {
        /// The wheel file.
        wheel: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Extract `nvidia/<dir>/lib/*.so*` (`nvidia/cu13/lib/` in the CUDA 13 wheels) from an NVIDIA
/// wheel into `dest`; returns the files.
pub fn unpack_wheel(wheel: &Path, dest: &Path) -> Result<Vec<PathBuf>, CudaLibsError> {
    let err = |reason: String| CudaLibsError::Unpack {
        wheel: wheel.to_path_buf(),
        reason,
    };
    let file = File::open(wheel).map_err(|e| err(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| err(e.to_string()))?;
    let mut written = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| err(e.to_string()))?;
        let name = entry.name().to_string();
        let parts: Vec<&str> = name.split('/').collect();
        // Exactly nvidia/<package>/lib/<file>: nothing nested, nothing outside.
        let ["nvidia", package, "lib", file_name] = parts.as_slice() else {
            continue;
        };
        if package.is_empty()
            || !file_name.starts_with("lib")
            || !file_name.contains(".so")
            || file_name.contains("..")
        {
            continue;
        }
        let out_path = dest.join(file_name);
        let mut out = File::create(&out_path).map_err(|e| err(e.to_string()))?;
        io::copy(&mut entry, &mut out).map_err(|e| err(e.to_string()))?;
        out.sync_all().map_err(|e| err(e.to_string()))?;
        written.push(out_path);
    }
    Ok(written)
}

/// Load the CUDA libraries from `dir` (or the system), dependency order first, globally so the
/// provider resolves its symbols against them. The handles must live as long as the process.
pub fn preload(dir: &Path) -> Result<Vec<libloading::Library>, CudaLibsError> {
    let present: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    let mut handles = Vec::new();
    for prefix in LOAD_ORDER {
        let mut matching: Vec<&PathBuf> = present
            .iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        matching.sort();
        for path in matching {
            handles.push(open_global(path)?);
        }
    }
    for lib in REQUIRED {
        let in_dir = present
            .iter()
            .any(|p| p.file_name().and_then(|n| n.to_str()) == Some(lib));
        if !in_dir {
            // Not provisioned: maybe installed system-wide.
            handles.push(
                open_global(Path::new(lib)).map_err(|_| CudaLibsError::Missing {
                    lib,
                    dir: dir.to_path_buf(),
                })?,
            );
        }
    }
    Ok(handles)
}

fn open_global(path: &Path) -> Result<libloading::Library, CudaLibsError> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
        // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's runtime
        // libraries, loaded the same way the CUDA provider itself would load them.
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
            .map(libloading::Library::from)
            .map_err(|e| CudaLibsError::Unloadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above.
        unsafe { libloading::Library::new(path) }.map_err(|e| CudaLibsError::Unloadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("nvidia_fake-13.0.0-py3-none-manylinux_2_27_x86_64.whl");
        let mut z = zip::ZipWriter::new(File::create(&path).unwrap());
        for (name, bytes) in files {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
        path
    }

    #[test]
    fn only_the_libraries_of_a_wheel_are_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let w = wheel(
            dir.path(),
            &[
                ("nvidia/cu13/lib/libcublas.so.13", b"a"),
                ("nvidia/cu13/lib/libcublasLt.so.13", b"b"),
                ("nvidia/cu13/include/cublas.h", b"c"),
                ("nvidia/cu13/lib/sub/libx.so", b"d"),
                ("nvidia_cublas-13.0.dist-info/METADATA", b"e"),
                ("../../evil/libcublas.so.13", b"f"),
            ],
        );
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let mut got: Vec<String> = unpack_wheel(&w, &out)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(got, ["libcublas.so.13", "libcublasLt.so.13"]);
        let junk = dir.path().join("junk.whl");
        std::fs::write(&junk, b"not a zip").unwrap();
        assert!(matches!(
            unpack_wheel(&junk, &out),
            Err(CudaLibsError::Unpack { .. })
        ));
    }

    #[test]
    fn a_missing_or_broken_cuda_library_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing provisioned and (on this machine) nothing installed: the first required
        // library is named with the fix.
        match preload(dir.path()) {
            Err(CudaLibsError::Missing { lib, .. }) => assert_eq!(lib, "libcudart.so.13"),
            Err(e) => panic!("{e}"),
            Ok(_) => {} // a machine with CUDA 13 installed system-wide
        }
        // A damaged file where a library should be.
        std::fs::write(dir.path().join("libcudart.so.13"), b"not ELF").unwrap();
        let e = preload(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("libcudart.so.13") && e.contains("could not be loaded"),
            "{e}"
        );
    }
}
