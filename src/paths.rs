//! Where arvis keeps its cache (runtime libraries, models) and data (indexes, settings).

use std::path::PathBuf;

/// Root of the download cache: `ARVIS_CACHE_DIR`, else `$XDG_CACHE_HOME/arvis`, else `~/.cache/arvis`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("ARVIS_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("arvis");
    }
    home_dir().join(".cache").join("arvis")
}

/// Root of user data: `ARVIS_DATA_DIR`, else `$XDG_DATA_HOME/arvis`, else `~/.local/share/arvis`.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("ARVIS_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = non_empty_env("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("arvis");
    }
    home_dir().join(".local").join("share").join("arvis")
}

fn home_dir() -> PathBuf {
    // A process without HOME (some service managers) still gets a usable, writable place.
    non_empty_env("HOME").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// The value of an environment variable, treating "set but empty" as unset.
pub fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
