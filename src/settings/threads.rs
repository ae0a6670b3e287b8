//! Intra-op thread counts: how many, and the machine facts behind the default.

use std::sync::OnceLock;

/// How many intra-op threads each session gets (`ARVIS_ORT_THREADS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntraOpThreads {
    /// This many, unpinned (the default: one per physical core this process may use).
    Unpinned(usize),
    /// `ARVIS_ORT_THREADS=0`: ONNX Runtime's own default, which has the same count but pins
    /// each pool thread to a core while the calling thread stays unpinned.
    OrtDefault,
}

impl IntraOpThreads {
    /// From the variable's value (`None`: unset).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None => Ok(IntraOpThreads::Unpinned(physical_cores())),
            Some(v) => match v.parse::<usize>() {
                Ok(0) => Ok(IntraOpThreads::OrtDefault),
                Ok(n) => Ok(IntraOpThreads::Unpinned(n)),
                Err(_) => Err(format!(
                    "ARVIS_ORT_THREADS={v:?} is not valid: a thread count, or 0 for ONNX Runtime's default"
                )),
            },
        }
    }

    /// The value for `SetIntraOpNumThreads` (0 = ONNX Runtime decides, and pins).
    pub fn count(self) -> usize {
        match self {
            IntraOpThreads::Unpinned(n) => n,
            IntraOpThreads::OrtDefault => 0,
        }
    }
}

impl std::fmt::Display for IntraOpThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntraOpThreads::Unpinned(n) => write!(f, "{n} per session, unpinned"),
            IntraOpThreads::OrtDefault => {
                write!(f, "ONNX Runtime's default (one per core, pinned)")
            }
        }
    }
}

/// Physical cores this process may run on (SMT siblings counted once), never more than the
/// parallelism the OS grants it (affinity, cgroup quota). Read once: every session asks.
pub fn physical_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
        #[cfg(target_os = "linux")]
        if let Some(n) = linux_physical_cores() {
            return n.clamp(1, logical);
        }
        logical
    })
}

#[cfg(target_os = "linux")]
fn linux_physical_cores() -> Option<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size is the set's own.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    let mut cores = std::collections::HashSet::new();
    for cpu in 0..libc::CPU_SETSIZE as usize {
        // SAFETY: cpu < CPU_SETSIZE, the set's capacity.
        if !unsafe { libc::CPU_ISSET(cpu, &set) } {
            continue;
        }
        let read = |file: &str| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{file}"))
                .ok()
                .map(|s| s.trim().to_string())
        };
        cores.insert((read("physical_package_id")?, read("core_id")?));
    }
    (!cores.is_empty()).then_some(cores.len())
}
