//! Output files that can never destroy an input or leave a half-written result: every output is
//! checked against the inputs (the same file by device and inode, not by path text), written to a
//! temporary file beside its target and renamed over it only once it is complete.

use std::fs::File;
use std::path::{Path, PathBuf};

/// Why an output was refused.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// An output is one of the inputs.
    #[error(
        "{what} {} is the input {}: arvis never writes over an input. Fix: write the {what} to another path",
        output.display(),
        input.display()
    )]
    IsInput {
        /// Which option (`-o`, `--jsonl`, `--save`).
        what: String,
        /// The output path.
        output: PathBuf,
        /// The input it is.
        input: PathBuf,
    },
    /// Two outputs name one file.
    #[error(
        "{first} and {second} are the same file ({}): each output needs a path of its own",
        path.display()
    )]
    SameOutput {
        /// The first option.
        first: String,
        /// The second option.
        second: String,
        /// The file.
        path: PathBuf,
    },
    /// An output names a directory.
    #[error("{what} {} is a directory, not a file", path.display())]
    IsDirectory {
        /// Which option.
        what: String,
        /// The directory.
        path: PathBuf,
    },
    /// The output cannot be checked or written.
    #[error("{what} {}: {reason}", path.display())]
    Io {
        /// Which option.
        what: String,
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

pub use crate::util::FileId;

/// The absolute path `path` will have once it exists: its parent resolved (symlinks, `..`), its
/// name kept. Two outputs that do not exist yet are the same file exactly when these agree.
pub fn resolved_target(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if let Ok(real) = absolute.canonicalize() {
        return real;
    }
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map_or_else(|_| absolute.clone(), |p| p.join(name)),
        _ => absolute,
    }
}

/// Refuse outputs that are an input, a directory, or the same file as another output, before
/// anything is opened for writing. `outputs` are (what, path) pairs, e.g. ("-o", out.mp4).
pub fn check_outputs(inputs: &[&Path], outputs: &[(&str, &Path)]) -> Result<(), OutputError> {
    let input_ids: Vec<(FileId, &Path)> = inputs
        .iter()
        .filter_map(|p| FileId::of(p).map(|id| (id, *p)))
        .collect();
    for (i, (what, out)) in outputs.iter().enumerate() {
        if out.is_dir() {
            return Err(OutputError::IsDirectory {
                what: what.to_string(),
                path: out.to_path_buf(),
            });
        }
        if let Some(id) = FileId::of(out)
            && let Some((_, input)) = input_ids.iter().find(|(i, _)| *i == id)
        {
            return Err(OutputError::IsInput {
                what: what.to_string(),
                output: out.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
        for (other_what, other) in &outputs[..i] {
            let same = match (FileId::of(out), FileId::of(other)) {
                (Some(a), Some(b)) => a == b,
                _ => resolved_target(out) == resolved_target(other),
            };
            if same {
                return Err(OutputError::SameOutput {
                    first: other_what.to_string(),
                    second: what.to_string(),
                    path: out.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

/// A file being written: the bytes go to a hidden temporary file beside `target` (same directory,
/// so the final rename is atomic; same extension, so tools that pick a format by it still do),
/// which replaces `target` on [`AtomicOutput::commit`] and is removed if dropped uncommitted.
pub struct AtomicOutput {
    target: PathBuf,
    temp: PathBuf,
    committed: bool,
}

impl AtomicOutput {
    /// Reserve a temporary path for `target`, creating its parent directory. `what` names the
    /// output in errors ("-o", "--jsonl").
    pub fn new(what: &str, target: &Path) -> Result<AtomicOutput, OutputError> {
        let io = |reason: String| OutputError::Io {
            what: what.to_string(),
            path: target.to_path_buf(),
            reason,
        };
        let name = target
            .file_name()
            .ok_or_else(|| io("has no file name".into()))?
            .to_string_lossy()
            .into_owned();
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| io(format!("creating {}: {e}", parent.display())))?;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The extension stays last: FFmpeg chooses the container from it.
        let temp = parent.join(format!(
            ".arvis-partial-{}-{seq}-{name}",
            std::process::id()
        ));
        Ok(AtomicOutput {
            target: target.to_path_buf(),
            temp,
            committed: false,
        })
    }

    /// Where to write the bytes now.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The path the file will have once committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Create the temporary file for writing.
    pub fn create(&self) -> std::io::Result<File> {
        File::create(&self.temp)
    }

    /// fsync the finished temporary file and rename it over the target.
    pub fn commit(mut self) -> std::io::Result<()> {
        crate::util::fsync_and_rename(&self.temp, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_naming_an_input_by_another_path_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.mp4");
        std::fs::write(&input, b"video").expect("write");
        let link = dir.path().join("link.mp4");
        std::os::unix::fs::symlink(&input, &link).expect("symlink");
        let hard = dir.path().join("hard.mp4");
        std::fs::hard_link(&input, &hard).expect("hard link");
        let dotted = dir.path().join(".").join("in.mp4");
        for out in [&input, &link, &hard, &dotted] {
            let err = check_outputs(&[&input], &[("-o", out)]).expect_err("refused");
            assert!(matches!(err, OutputError::IsInput { .. }), "{err}");
        }
        let fresh = dir.path().join("out.mp4");
        check_outputs(&[&input], &[("-o", &fresh)]).expect("a new file is fine");
        let same = dir.path().join("sub/../out.mp4");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let err = check_outputs(&[&input], &[("-o", &fresh), ("--jsonl", &same)])
            .expect_err("two outputs at one path");
        assert!(matches!(err, OutputError::SameOutput { .. }), "{err}");
        let err = check_outputs(&[&input], &[("-o", dir.path())]).expect_err("a directory");
        assert!(matches!(err, OutputError::IsDirectory { .. }), "{err}");
    }

    #[test]
    fn an_uncommitted_output_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("deep/er/out.jsonl");
        let out = AtomicOutput::new("--jsonl", &target).expect("new");
        std::fs::write(out.temp_path(), b"half").expect("write temp");
        assert!(out.temp_path().extension().is_some_and(|e| e == "jsonl"));
        drop(out);
        assert!(!target.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("deep/er"))
            .expect("read dir")
            .collect();
        assert!(left.is_empty(), "temp file left behind: {left:?}");

        std::fs::write(&target, b"old").expect("write");
        let out = AtomicOutput::new("--jsonl", &target).expect("new");
        std::fs::write(out.temp_path(), b"new").expect("write temp");
        assert_eq!(std::fs::read(&target).expect("read"), b"old");
        out.commit().expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"new");
    }
}
