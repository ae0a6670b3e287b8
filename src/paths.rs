//! Where arvis keeps its cache (runtime libraries, models) and data (indexes, settings).

use std::path::{Path, PathBuf};

use crate::settings::non_empty as non_empty_env;

/// Root of the download cache: `ARVIS_CACHE_DIR`, else `$XDG_CACHE_HOME/arvis`, else `~/.cache/arvis`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = non_empty_env(crate::settings::var::CACHE_DIR) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("arvis");
    }
    home_dir().join(".cache").join("arvis")
}

/// Root of user data: `ARVIS_DATA_DIR`, else `$XDG_DATA_HOME/arvis`, else `~/.local/share/arvis`.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = non_empty_env(crate::settings::var::DATA_DIR) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = non_empty_env("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("arvis");
    }
    home_dir().join(".local").join("share").join("arvis")
}

/// Where crops taught from the app's view are saved, one folder per item
/// (`<data dir>/gallery-images`).
pub fn gallery_images_dir() -> PathBuf {
    data_dir().join("gallery-images")
}

fn home_dir() -> PathBuf {
    // A process without HOME (some service managers) still gets a usable, writable place.
    non_empty_env("HOME").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A path for people to read: as is when it is UTF-8 without control characters; otherwise
/// invalid bytes as `\xNN`, control characters as `\n`, `\t`, `\xNN` and backslashes doubled,
/// so a terminal never receives raw escape sequences from a file name.
pub fn display_path(path: &Path) -> String {
    let bytes = path.as_os_str().as_encoded_bytes();
    if let Ok(s) = std::str::from_utf8(bytes)
        && !s.chars().any(char::is_control)
    {
        return s.to_owned();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02X}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_path_escapes_only_what_a_terminal_must_not_see() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(display_path(Path::new("/a/ü b.jpg")), "/a/ü b.jpg");
        let raw = std::ffi::OsStr::from_bytes(b"/a/x\xff\x1b[31m\\n.jpg");
        assert_eq!(display_path(Path::new(raw)), "/a/x\\xFF\\x1B[31m\\\\n.jpg");
        let newline = std::ffi::OsStr::from_bytes(b"a\nb");
        assert_eq!(display_path(Path::new(newline)), "a\\nb");
    }
}
