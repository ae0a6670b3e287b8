//! A hostile user's runs, each through the real binary: outputs that would destroy inputs,
//! interrupted and failing writes, symlink loops, special files, absurd values.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn sha(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file under `dir` with its sha256, sorted.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.push((
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha(&p),
            ));
        }
    }
    out.sort();
    out
}

/// Run `cmd`, killing it and failing the test if it has not finished within `limit`.
fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr so far: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn two_photos() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for name in ["ultralytics_bus.jpg", "skimage_coffee.png"] {
        std::fs::copy(images_dir().join(name), d.path().join(name)).unwrap();
    }
    d
}

#[test]
fn detect_never_saves_over_its_inputs() {
    provisioned();
    let d = two_photos();
    let before = tree(d.path());
    // The input folder itself, the same folder through a symlink, and a hard link to a photo.
    let link = tempfile::tempdir().unwrap();
    let alias = link.path().join("alias");
    std::os::unix::fs::symlink(d.path(), &alias).unwrap();
    for save in [d.path().to_path_buf(), alias.clone()] {
        let out = arvis()
            .arg("detect")
            .arg(d.path())
            .arg("--save")
            .arg(&save)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("would overwrite the input")
                && stderr(&out).contains("never writes over an input"),
            "{}",
            stderr(&out)
        );
        assert_eq!(tree(d.path()), before, "the photos are untouched");
    }
    let hard = tempfile::tempdir().unwrap();
    std::fs::hard_link(
        d.path().join("ultralytics_bus.jpg"),
        hard.path().join("ultralytics_bus.jpg"),
    )
    .unwrap();
    let out = arvis()
        .arg("detect")
        .arg(d.path().join("ultralytics_bus.jpg"))
        .arg("--save")
        .arg(hard.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(tree(d.path()), before);

    // A save folder inside the inputs works once; a re-run would read its own copies as inputs
    // and overwrite them, so it is refused too.
    let sub = d.path().join("annotated");
    let first = arvis()
        .arg("detect")
        .arg(d.path())
        .arg("--save")
        .arg(&sub)
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(tree(&sub).len(), 2);
    assert_eq!(tree(d.path()), before);
    let again = arvis()
        .arg("detect")
        .arg(d.path())
        .arg("--save")
        .arg(&sub)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert_eq!(tree(d.path()), before);
    assert!(
        std::fs::read_dir(&sub).unwrap().count() == 2,
        "no temporary files are left in the save folder"
    );
}

#[test]
fn absurd_option_values_are_refused_with_their_range() {
    let img = images_dir().join("ultralytics_bus.jpg");
    for (flag, value, range) in [
        ("--conf", "-1", "from 0 to 1"),
        ("--conf", "2", "from 0 to 1"),
        ("--conf", "nan", "from 0 to 1"),
        ("--iou", "nan", "from 0 to 1"),
        ("--iou", "-1", "from 0 to 1"),
        ("--iou", "5", "from 0 to 1"),
        ("--max-det", "0", "from 1 to 10000"),
        ("--match-k", "18446744073709551615", "from 1 to 1000"),
        ("--min-score", "3", "from -1 to 1"),
    ] {
        let out = arvis()
            .arg("detect")
            .arg(&img)
            .arg(flag)
            .arg(value)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {value}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(range) && stderr(&out).contains(flag),
            "{flag} {value}: {}",
            stderr(&out)
        );
    }
    let out = arvis()
        .args(["search", "-k", "18446744073709551615", "--text", "a bus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("from 1 to 100000"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn symlink_loops_and_special_files_never_hang_or_repeat() {
    provisioned();
    let d = two_photos();
    std::os::unix::fs::symlink(d.path(), d.path().join("loop")).unwrap();
    std::os::unix::fs::symlink(d.path(), d.path().join("loop2")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.path().join("zero.jpg")).unwrap();
    let fifo = d.path().join("x.jpg");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = run_within(
        arvis().args(["detect", "--json"]).arg(d.path()),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "each photo once: {lines:?}");

    // Named explicitly, a FIFO and a device are clear per-file errors, and the photo still runs.
    let out = run_within(
        arvis()
            .args(["detect", "--json"])
            .arg(&fifo)
            .arg(d.path().join("zero.jpg"))
            .arg(d.path().join("ultralytics_bus.jpg")),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("a named pipe"),
        "{lines:?}"
    );
    assert!(
        lines[1]["error"].as_str().unwrap().contains("a device"),
        "{lines:?}"
    );
    assert!(lines[2]["detections"].is_array());
}

#[cfg(feature = "video")]
mod video {
    use super::*;
    use std::path::PathBuf;

    /// A 2-second 320×240 clip made with the ffmpeg CLI.
    fn short_clip(dir: &Path) -> PathBuf {
        let clip = dir.join("clip.mp4");
        let ok = Command::new("ffmpeg")
            .args(["-v", "error", "-f", "lavfi", "-i"])
            .arg("testsrc=size=320x240:rate=25:duration=2")
            .args(["-pix_fmt", "yuv420p", "-c:v", "libx264"])
            .arg(&clip)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ffmpeg made the clip");
        clip
    }

    fn partial_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".arvis-partial"))
            .collect()
    }

    #[test]
    fn video_outputs_never_replace_the_input_or_each_other() {
        provisioned();
        let d = tempfile::tempdir().unwrap();
        let clip = short_clip(d.path());
        let before = sha(&clip);
        let hard = d.path().join("same.mp4");
        std::fs::hard_link(&clip, &hard).unwrap();
        let out_mp4 = d.path().join("out.mp4");
        let cases: Vec<Vec<&Path>> = vec![
            vec![Path::new("-o"), &clip],
            vec![Path::new("-o"), &hard],
            vec![Path::new("-o"), &out_mp4, Path::new("--jsonl"), &clip],
            vec![Path::new("-o"), &out_mp4, Path::new("--jsonl"), &out_mp4],
        ];
        for args in cases {
            let out = arvis()
                .arg("video")
                .arg(&clip)
                .args(&args)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            let e = stderr(&out);
            assert!(
                e.contains("never writes over an input") || e.contains("are the same file"),
                "{args:?}: {e}"
            );
            assert_eq!(sha(&clip), before, "{args:?}: the input is untouched");
            assert!(!out_mp4.exists(), "{args:?}: nothing was written");
        }
        let out = arvis()
            .arg("video")
            .arg(&clip)
            .arg("-o")
            .arg(d.path().join("out.txt"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains(".mp4, .m4v, .mov or .mkv"),
            "{}",
            stderr(&out)
        );
    }

    #[test]
    fn a_video_cut_after_its_header_is_an_error_that_writes_nothing() {
        provisioned();
        let d = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(walking_video()).unwrap();
        let cut = d.path().join("cut.mp4");
        std::fs::write(&cut, &bytes[..4096]).unwrap();
        let out_mp4 = d.path().join("out.mp4");
        std::fs::write(&out_mp4, b"an earlier result").unwrap();
        let out = run_within(
            arvis().arg("video").arg(&cut).arg("-o").arg(&out_mp4),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("cut.mp4: no frame could be decoded")
                && stderr(&out).contains("nothing was written"),
            "{}",
            stderr(&out)
        );
        assert_eq!(std::fs::read(&out_mp4).unwrap(), b"an earlier result");
        assert!(partial_files(d.path()).is_empty());
    }

    #[test]
    fn a_failing_run_keeps_the_previous_outputs_and_leaves_no_temporaries() {
        provisioned();
        let d = tempfile::tempdir().unwrap();
        let clip = short_clip(d.path());
        let out_mp4 = d.path().join("out.mp4");
        let out_jsonl = d.path().join("deeper/new/out.jsonl");
        // A good run first: the --jsonl folder is created like -o's.
        let good = arvis()
            .arg("video")
            .arg(&clip)
            .arg("-o")
            .arg(&out_mp4)
            .arg("--jsonl")
            .arg(&out_jsonl)
            .output()
            .unwrap();
        assert!(good.status.success(), "{}", stderr(&good));
        assert_eq!(
            std::fs::read_to_string(&out_jsonl).unwrap().lines().count(),
            50
        );
        let (mp4_before, jsonl_before) = (sha(&out_mp4), sha(&out_jsonl));
        // Then one whose --jsonl cannot be created (its "folder" is a file).
        let blocker = d.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let bad = arvis()
            .arg("video")
            .arg(&clip)
            .arg("-o")
            .arg(&out_mp4)
            .arg("--jsonl")
            .arg(blocker.join("out.jsonl"))
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
        assert_eq!(sha(&out_mp4), mp4_before, "the earlier video is intact");
        assert_eq!(sha(&out_jsonl), jsonl_before);
        assert!(
            partial_files(d.path()).is_empty(),
            "{:?}",
            partial_files(d.path())
        );
    }

    #[test]
    fn sigterm_and_sigint_finish_a_playable_shorter_video() {
        provisioned();
        let d = tempfile::tempdir().unwrap();
        let input = walking_video();
        let total = {
            use arvis::source::FrameSource;
            let mut v = arvis::source::video::VideoSource::open(&input).unwrap();
            let mut n = 0u64;
            while v.next_frame().unwrap().is_some() {
                n += 1;
            }
            n
        };
        for signal in [libc::SIGTERM, libc::SIGINT] {
            let out_mp4 = d.path().join(format!("out-{signal}.mp4"));
            let out_jsonl = d.path().join(format!("out-{signal}.jsonl"));
            let child = arvis()
                .arg("video")
                .arg(&input)
                .arg("-o")
                .arg(&out_mp4)
                .arg("--jsonl")
                .arg(&out_jsonl)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Once encoded frames reach the temporary MP4, the run is well under way.
            let started = wait_until(Duration::from_secs(120), || {
                std::fs::read_dir(d.path()).unwrap().any(|e| {
                    let e = e.unwrap();
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(".arvis-partial")
                        && n.ends_with(&format!("out-{signal}.mp4"))
                        && e.metadata().unwrap().len() > 20_000
                })
            });
            assert!(started, "the run wrote frames");
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
            assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
            let mut v = arvis::source::video::VideoSource::open(&out_mp4)
                .unwrap_or_else(|e| panic!("the shorter video opens: {e}"));
            let mut frames = 0u64;
            {
                use arvis::source::FrameSource;
                while v.next_frame().unwrap().is_some() {
                    frames += 1;
                }
            }
            let lines = std::fs::read_to_string(&out_jsonl).unwrap().lines().count() as u64;
            assert!(frames > 0 && frames < total, "{frames} of {total} frames");
            assert_eq!(lines, frames, "the JSON Lines hold the same frames");
            assert!(partial_files(d.path()).is_empty());
        }
    }
}
