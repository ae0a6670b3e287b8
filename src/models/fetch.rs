//! Download (or copy from a mirror) a model into the cache, verifying size and sha256.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{Mismatch, ModelError, ModelSpec, models_dir};
use crate::settings::non_empty;

/// One place a model's bytes can come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchSource {
    /// A file on disk (a directory mirror).
    File(PathBuf),
    /// An http(s) URL (a public home or a URL mirror).
    Url(String),
}

impl std::fmt::Display for FetchSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchSource::File(p) => write!(f, "{}", p.display()),
            FetchSource::Url(u) => f.write_str(u),
        }
    }
}

fn mirror_path(spec: &ModelSpec) -> String {
    spec.mirror_path
        .clone()
        .unwrap_or_else(|| spec.file.clone())
}

/// Where `spec` would be fetched from now: the mirror (which replaces public URLs) or the public URLs.
pub fn model_sources(spec: &ModelSpec) -> Result<Vec<FetchSource>, ModelError> {
    if let Some(mirror) = non_empty(crate::settings::var::MODEL_MIRROR) {
        let rel = mirror_path(spec);
        if mirror.starts_with("http://") || mirror.starts_with("https://") {
            let base = mirror.trim_end_matches('/');
            return Ok(vec![FetchSource::Url(format!("{base}/{rel}"))]);
        }
        let dir = PathBuf::from(mirror);
        // A flat directory of model files is accepted too.
        return Ok(vec![
            FetchSource::File(dir.join(&rel)),
            FetchSource::File(dir.join(&spec.file)),
        ]);
    }
    if non_empty(crate::settings::var::OFFLINE).is_some() {
        return Err(ModelError::Offline {
            id: spec.id.clone(),
            mirror_path: mirror_path(spec),
            flag: spec.own_file_hint().into(),
        });
    }
    if spec.urls.is_empty() {
        return Err(ModelError::NoSource {
            id: spec.id.clone(),
            note: if spec.note.is_empty() {
                "no public URL".into()
            } else {
                spec.note.clone()
            },
            mirror_path: mirror_path(spec),
            flag: spec.own_file_hint().into(),
        });
    }
    Ok(spec.urls.iter().cloned().map(FetchSource::Url).collect())
}

/// The model's file in the cache, fetching and verifying it first if needed.
pub fn ensure_model(spec: &ModelSpec) -> Result<PathBuf, ModelError> {
    let path = models_dir().join(&spec.file);
    if path.is_file() {
        verify_cached(spec, &path)?;
        return Ok(path);
    }
    fetch_model(spec, false)
}

/// Verify a cached file: full hash when it changed since the last verification, else trust the stamp.
pub fn verify_cached(spec: &ModelSpec, path: &Path) -> Result<(), ModelError> {
    let fix = format!(" Fix: run `arvis models fetch --force {}`.", spec.id);
    let meta = fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    let stamp = stamp_of(&meta);
    let stamp_path = stamp_path(path);
    if fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == stamp) {
        return Ok(());
    }
    check_size(spec, "cached model", path, meta.len(), &fix)?;
    let actual = sha256_file(path)?;
    check_hash(spec, "cached model", path, &actual, &fix)?;
    // A failed stamp write only costs a re-hash next time.
    let _ = fs::write(&stamp_path, stamp);
    Ok(())
}

/// Hash a cached file in full, ignoring (and refreshing) its verification stamp.
pub fn full_verify(spec: &ModelSpec, path: &Path) -> Result<(), ModelError> {
    let _ = fs::remove_file(stamp_path(path));
    verify_cached(spec, path)
}

/// Fetch `spec` into the cache (again, with `force`), verifying it before it becomes visible.
pub fn fetch_model(spec: &ModelSpec, force: bool) -> Result<PathBuf, ModelError> {
    let dir = models_dir();
    let path = dir.join(&spec.file);
    if !force && path.is_file() {
        verify_cached(spec, &path)?;
        return Ok(path);
    }
    fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
    let mut attempts = Vec::new();
    for source in model_sources(spec)? {
        match fetch_from(spec, &source, &path) {
            Ok(()) => return Ok(path),
            // A source that served the wrong bytes is an answer, not a network hiccup: say so.
            Err(e @ (ModelError::HashMismatch(_) | ModelError::SizeMismatch(_))) => {
                return Err(e);
            }
            Err(e) => attempts.push(format!("{source}: {e}")),
        }
    }
    let hint = if non_empty(crate::settings::var::MODEL_MIRROR).is_some() {
        format!(
            "Fix: make sure ARVIS_MODEL_MIRROR holds {}",
            mirror_path(spec)
        )
    } else {
        format!(
            "No network? Set ARVIS_MODEL_MIRROR to a directory or http URL holding {} (an offline mirror){}",
            mirror_path(spec),
            spec.own_file_hint()
        )
    };
    Err(ModelError::Fetch {
        id: spec.id.clone(),
        attempts: attempts.join("; "),
        hint,
    })
}

fn fetch_from(spec: &ModelSpec, source: &FetchSource, dest: &Path) -> Result<(), ModelError> {
    let partial = dest.with_file_name(format!(".{}.partial-{}", spec.file, std::process::id()));
    let result = (|| {
        let (reader, total): (Box<dyn Read>, Option<u64>) = match source {
            FetchSource::File(p) => {
                let f = File::open(p).map_err(|e| ModelError::io(p, e))?;
                let len = f.metadata().ok().map(|m| m.len());
                (Box::new(f), len)
            }
            FetchSource::Url(url) => http_get(url)?,
        };
        eprintln!("arvis: fetching model {} from {source}", spec.id);
        let actual = copy_verified(reader, total.or(spec.size), &partial)?;
        let len = fs::metadata(&partial)
            .map_err(|e| ModelError::io(&partial, e))?
            .len();
        let what = "downloaded file from";
        let src = source.to_string();
        check_size(spec, what, Path::new(&src), len, "")?;
        check_hash(spec, what, Path::new(&src), &actual, "")?;
        fs::rename(&partial, dest).map_err(|e| ModelError::io(dest, e))?;
        let meta = fs::metadata(dest).map_err(|e| ModelError::io(dest, e))?;
        let _ = fs::write(stamp_path(dest), stamp_of(&meta));
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn http_get(url: &str) -> Result<(Box<dyn Read>, Option<u64>), ModelError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .map_err(|e| ModelError::Transfer(e.to_string()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((Box::new(response.into_body().into_reader()), total))
}

/// Stream into `dest` with a progress bar, hashing on the way; fsync before returning the sha256.
fn copy_verified(
    mut reader: Box<dyn Read>,
    total: Option<u64>,
    dest: &Path,
) -> Result<String, ModelError> {
    let bar = crate::progress::bytes_bar(total);
    let mut out = File::create(dest).map_err(|e| ModelError::io(dest, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ModelError::io(dest, e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| ModelError::io(dest, e))?;
        bar.inc(n as u64);
    }
    out.sync_all().map_err(|e| ModelError::io(dest, e))?;
    bar.finish_and_clear();
    Ok(crate::util::hex(&hasher.finalize()))
}

fn check_size(
    spec: &ModelSpec,
    what: &'static str,
    path: &Path,
    actual: u64,
    fix: &str,
) -> Result<(), ModelError> {
    match spec.size {
        Some(expected) if expected != actual => Err(ModelError::SizeMismatch(Box::new(Mismatch {
            id: spec.id.clone(),
            what,
            path: path.display().to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
            fix: fix.to_string(),
        }))),
        _ => Ok(()),
    }
}

fn check_hash(
    spec: &ModelSpec,
    what: &'static str,
    path: &Path,
    actual: &str,
    fix: &str,
) -> Result<(), ModelError> {
    match &spec.sha256 {
        Some(expected) if !expected.eq_ignore_ascii_case(actual) => {
            Err(ModelError::HashMismatch(Box::new(Mismatch {
                id: spec.id.clone(),
                what,
                path: path.display().to_string(),
                expected: expected.clone(),
                actual: actual.to_string(),
                fix: fix.to_string(),
            })))
        }
        _ => Ok(()),
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut hasher).map_err(|e| ModelError::io(path, e))?;
    Ok(crate::util::hex(&hasher.finalize()))
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    path.with_file_name(name)
}

/// Size and modification time: if either changes, the file is hashed again.
fn stamp_of(meta: &fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("verified size={} mtime_ns={mtime}", meta.len())
}
