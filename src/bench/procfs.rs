//! Memory figures of this process: `/proc/self/status` (Linux) and the GPU's per-process use.

/// A memory field of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in MB (Linux only).
pub fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Peak resident set size of this process in MB (`VmHWM`; Linux only).
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// Resident and peak memory of this process, MB (Linux; 0 elsewhere).
pub fn rss_mb() -> (f64, f64) {
    (
        proc_status_mb("VmRSS:").unwrap_or(0.0),
        proc_status_mb("VmHWM:").unwrap_or(0.0),
    )
}

/// GPU memory this process holds right now (nvidia-smi's per-process figure), MiB; None on
/// the CPU or without an NVIDIA GPU (other processes' memory is never counted in).
pub fn vram_used_mib() -> Option<u64> {
    crate::runtime::gpu_info::process_memory_mib()
}
