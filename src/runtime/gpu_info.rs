//! What the GPU is doing, for the HUD and benchmarks: name and memory in use, from nvidia-smi.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One GPU as nvidia-smi reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// nvidia-smi's index.
    pub index: u32,
    /// The model name.
    pub name: String,
    /// Memory in use, MiB.
    pub memory_used_mib: u64,
    /// Memory in all, MiB.
    pub memory_total_mib: u64,
}

/// Parse `nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader,nounits`.
pub fn parse_nvidia_smi(text: &str) -> Vec<GpuInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name, used, total] = f.as_slice() else {
                return None;
            };
            Some(GpuInfo {
                index: index.parse().ok()?,
                name: (*name).to_string(),
                memory_used_mib: used.parse().ok()?,
                memory_total_mib: total.parse().ok()?,
            })
        })
        .collect()
}

/// GPU memory this process holds (MiB, over all GPUs) from
/// `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits` output.
pub fn parse_process_memory(text: &str, pid: u32) -> Option<u64> {
    let mut total = None;
    for line in text.lines() {
        let mut fields = line.split(',').map(str::trim);
        let (Some(p), Some(mib)) = (fields.next(), fields.next()) else {
            continue;
        };
        if p.parse::<u32>().ok() == Some(pid)
            && let Ok(mib) = mib.parse::<u64>()
        {
            total = Some(total.unwrap_or(0) + mib);
        }
    }
    total
}

/// GPU memory this process holds now, MiB (None without nvidia-smi, or when it holds none).
pub fn process_memory_mib() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    parse_process_memory(&String::from_utf8_lossy(&out.stdout), std::process::id())
}

/// Query the GPUs now (empty without a driver or nvidia-smi).
pub fn query() -> Vec<GpuInfo> {
    if !super::nvidia_driver_present() {
        return Vec::new();
    }
    std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// Polls the GPUs every `period` on a background thread (only where an NVIDIA driver is loaded).
pub struct GpuMonitor {
    latest: Arc<Mutex<Vec<GpuInfo>>>,
}

impl GpuMonitor {
    /// Poll nvidia-smi every `period` on a thread of its own (nothing without an NVIDIA driver).
    pub fn start(period: Duration) -> GpuMonitor {
        let latest = Arc::new(Mutex::new(Vec::new()));
        if super::nvidia_driver_present() {
            let shared = Arc::downgrade(&latest);
            let _ = std::thread::Builder::new()
                .name("arvis-gpu-monitor".into())
                .spawn(move || {
                    // Ends once the monitor (and its owner) is gone.
                    while let Some(slot) = shared.upgrade() {
                        let now = query();
                        *slot.lock().unwrap_or_else(PoisonError::into_inner) = now;
                        drop(slot);
                        std::thread::sleep(period);
                    }
                });
        }
        GpuMonitor { latest }
    }

    /// The GPUs as last polled.
    pub fn latest(&self) -> Vec<GpuInfo> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_memory_counts_only_this_process() {
        let text = "1234, 800\n99, 4000\n1234, 200\nbad line\n";
        assert_eq!(parse_process_memory(text, 1234), Some(1000));
        assert_eq!(parse_process_memory(text, 7), None);
        assert_eq!(parse_process_memory("", 1234), None);
    }

    #[test]
    fn parses_nvidia_smi_csv() {
        let text = "0, NVIDIA H100 80GB HBM3, 1234, 81559\n1, NVIDIA H200, 0, 143771\nbogus line\n";
        let gpus = parse_nvidia_smi(text);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(
            (gpus[0].memory_used_mib, gpus[0].memory_total_mib),
            (1234, 81559)
        );
        assert_eq!(gpus[1].index, 1);
        assert!(parse_nvidia_smi("").is_empty());
    }
}
