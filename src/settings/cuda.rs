//! CUDA execution-provider switches, read from the environment so every command (and the app)
//! honours them the same way; each maps onto one ONNX Runtime CUDA option. They only apply to
//! sessions on a CUDA device and are shown by `arvis doctor`.
//!
//! | variable | values (default first) | CUDA EP option |
//! |---|---|---|
//! | `ARVIS_CUDA_TF32` | `1`, `0` | `use_tf32` |
//! | `ARVIS_CUDNN_CONV_SEARCH` | `exhaustive`, `heuristic`, `default` | `cudnn_conv_algo_search` |
//! | `ARVIS_GPU_MEM_LIMIT` | unlimited, bytes or `2GB`/`512MB` | `gpu_mem_limit` |
//! | `ARVIS_CUDA_ARENA` | `next-power-of-two`, `same-as-requested` | `arena_extend_strategy` |

use std::fmt;

use ort::ep::{ArenaExtendStrategy, cuda::ConvAlgorithmSearch};

/// cuDNN's convolution algorithm search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvSearch {
    /// Try every algorithm once per shape (the fastest, slower to start).
    Exhaustive,
    /// cuDNN's heuristic choice.
    Heuristic,
    /// cuDNN's default algorithm.
    Default,
}

/// The CUDA execution provider's switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaTuning {
    /// TF32 math on Ampere and newer.
    pub tf32: bool,
    /// How convolution algorithms are chosen.
    pub conv_search: ConvSearch,
    /// A cap on the memory arena, bytes.
    pub mem_limit: Option<usize>,
    /// Grow the memory arena by exactly what is requested (tighter) instead of doubling.
    pub arena_same_as_requested: bool,
}

impl Default for CudaTuning {
    fn default() -> Self {
        CudaTuning {
            tf32: true,
            conv_search: ConvSearch::Exhaustive,
            mem_limit: None,
            arena_same_as_requested: false,
        }
    }
}

/// A CUDA switch with a value it does not take.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?} is not valid: {expected}")]
pub struct TuningError {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// What it takes.
    pub expected: &'static str,
}

fn size(text: &str) -> Option<usize> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("gb") {
        (n, 1usize << 30)
    } else if let Some(n) = t.strip_suffix("mb") {
        (n, 1 << 20)
    } else {
        (t.as_str(), 1)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some((v * mult as f64) as usize)
}

impl CudaTuning {
    /// Parse from `lookup(name)` (the environment in real use).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<CudaTuning, TuningError> {
        let mut t = CudaTuning::default();
        let err = |var, value: &str, expected| TuningError {
            var,
            value: value.to_string(),
            expected,
        };
        if let Some(v) = lookup(crate::settings::var::CUDA_TF32) {
            t.tf32 = match v.as_str() {
                "1" | "on" | "true" => true,
                "0" | "off" | "false" => false,
                _ => return Err(err(crate::settings::var::CUDA_TF32, &v, "1 or 0")),
            };
        }
        if let Some(v) = lookup(crate::settings::var::CUDNN_CONV_SEARCH) {
            t.conv_search = match v.as_str() {
                "exhaustive" => ConvSearch::Exhaustive,
                "heuristic" => ConvSearch::Heuristic,
                "default" => ConvSearch::Default,
                _ => {
                    return Err(err(
                        "ARVIS_CUDNN_CONV_SEARCH",
                        &v,
                        "exhaustive, heuristic or default",
                    ));
                }
            };
        }
        if let Some(v) = lookup(crate::settings::var::GPU_MEM_LIMIT) {
            t.mem_limit = Some(size(&v).ok_or_else(|| {
                err(
                    crate::settings::var::GPU_MEM_LIMIT,
                    &v,
                    "bytes, or e.g. 2GB, 512MB",
                )
            })?);
        }
        if let Some(v) = lookup(crate::settings::var::CUDA_ARENA) {
            t.arena_same_as_requested = match v.as_str() {
                "next-power-of-two" => false,
                "same-as-requested" => true,
                _ => {
                    return Err(err(
                        "ARVIS_CUDA_ARENA",
                        &v,
                        "next-power-of-two or same-as-requested",
                    ));
                }
            };
        }
        Ok(t)
    }

    /// Apply to a CUDA execution provider.
    pub fn apply(&self, mut cuda: ort::ep::CUDA) -> ort::ep::CUDA {
        cuda = cuda
            .with_tf32(self.tf32)
            .with_conv_algorithm_search(match self.conv_search {
                ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
                ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
                ConvSearch::Default => ConvAlgorithmSearch::Default,
            });
        if let Some(limit) = self.mem_limit {
            cuda = cuda.with_memory_limit(limit);
        }
        if self.arena_same_as_requested {
            cuda = cuda.with_arena_extend_strategy(ArenaExtendStrategy::SameAsRequested);
        }
        cuda
    }
}

impl fmt::Display for CudaTuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TF32 {}, cuDNN conv search {}, memory limit {}, arena {}",
            if self.tf32 { "on" } else { "off" },
            match self.conv_search {
                ConvSearch::Exhaustive => "exhaustive",
                ConvSearch::Heuristic => "heuristic",
                ConvSearch::Default => "default",
            },
            self.mem_limit.map_or_else(
                || "none".to_string(),
                |b| format!("{:.0} MB", b as f64 / 1e6)
            ),
            if self.arena_same_as_requested {
                "same-as-requested"
            } else {
                "next-power-of-two"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<CudaTuning, TuningError> {
        CudaTuning::from_lookup(super::super::lookup_in(pairs))
    }

    #[test]
    fn defaults_match_onnx_runtime_and_switches_parse() {
        assert_eq!(parse(&[]).unwrap(), CudaTuning::default());
        let t = parse(&[
            ("ARVIS_CUDA_TF32", "0"),
            ("ARVIS_CUDNN_CONV_SEARCH", "heuristic"),
            ("ARVIS_GPU_MEM_LIMIT", "1.5GB"),
            ("ARVIS_CUDA_ARENA", "same-as-requested"),
        ])
        .unwrap();
        assert!(!t.tf32 && t.arena_same_as_requested);
        assert_eq!(t.conv_search, ConvSearch::Heuristic);
        assert_eq!(t.mem_limit, Some(1_610_612_736));
        assert_eq!(
            parse(&[("ARVIS_GPU_MEM_LIMIT", "4096")]).unwrap().mem_limit,
            Some(4096)
        );
        for (k, v) in [
            ("ARVIS_CUDA_TF32", "maybe"),
            ("ARVIS_CUDNN_CONV_SEARCH", "fast"),
            ("ARVIS_GPU_MEM_LIMIT", "-2GB"),
            ("ARVIS_CUDA_ARENA", "grow"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
        assert!(t.to_string().contains("TF32 off"));
    }
}
