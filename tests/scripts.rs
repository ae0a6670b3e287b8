//! The set-up scripts a new user runs first, with apt and dpkg replaced by stand-ins on PATH
//! (the real ones would install packages on this machine).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::Path;
use std::process::Command;

fn stand_in(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run the script; returns its output, its log's path, and the temp dirs holding both.
fn system_deps(
    apt_exit: i32,
) -> (
    std::process::Output,
    std::path::PathBuf,
    [tempfile::TempDir; 2],
) {
    let (bin_dir, home_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bin, home) = (bin_dir.path(), home_dir.path());
    // Nothing is installed, and apt is as chatty as on a fresh machine.
    stand_in(bin, "dpkg-query", "exit 1");
    stand_in(
        bin,
        "apt-get",
        &format!(
            "i=0; while [ $i -lt 400 ]; do echo \"Unpacking package-$i (1.0) ...\"; i=$((i+1)); done; exit {apt_exit}"
        ),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/system-deps"))
        .env("PATH", path)
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    let log = home.join(".cache/arvis/system-deps.log");
    (out, log, [bin_dir, home_dir])
}

#[test]
fn system_deps_prints_a_line_per_step_and_keeps_apt_output_in_a_log() {
    let (out, log, _dirs) = system_deps(0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines = err.lines().count();
    assert!(lines <= 5, "{lines} lines on the terminal:\n{err}");
    assert!(
        err.contains("installing") && err.contains(&log.display().to_string()),
        "{err}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.lines().count() >= 800,
        "both apt steps are in the log"
    );
}

#[test]
fn a_failing_system_deps_step_names_its_log_and_shows_its_end() {
    let (out, log, _dirs) = system_deps(100);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("failed: updating the package lists")
            && err.contains(&log.display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("Unpacking package-399"),
        "the last lines are shown: {err}"
    );
    assert!(err.lines().count() < 25, "{err}");
}

#[test]
fn a_failing_gpu_kit_step_is_recorded_and_the_next_still_runs() {
    // The kit's CPU dry run, with the test binary and the shared models as the kit.
    let lib = common::provisioned_library();
    let kit = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_arvis"), kit.path().join("arvis")).unwrap();
    let results = kit.path().join("results");
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-kit"))
        .args(["run", "no-such-step", "doctor"])
        .env("KIT_DIR", kit.path())
        .env("KIT_DEVICE", "cpu")
        .env("OUT", &results)
        .env("ORT_DYLIB_PATH", &lib)
        .env("ARVIS_CACHE_DIR", common::test_cache())
        .env("ARVIS_MODEL_MIRROR", common::models_mirror())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let failures = std::fs::read_to_string(results.join("failures.txt")).unwrap();
    assert!(failures.contains("no-such-step"), "{failures}");
    let doctor = std::fs::read_to_string(results.join("doctor.txt")).unwrap();
    assert!(
        doctor.contains("1.31.1"),
        "doctor ran after the failed step: {doctor}"
    );
    assert!(err.contains("these failed"), "{err}");
}
