//! A real window under Xvfb: `arvis app` plays the shared video clip with detections, saves a
//! screenshot of its own window and exits. Needs `Xvfb` (installed by scripts/system-deps).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic
#![cfg(all(feature = "gui", feature = "video"))]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An X server on a free display, stopped on drop.
struct Xvfb {
    child: Child,
    display: String,
}

/// The process id in display `n`'s lock file, if there is one.
fn lock_pid(n: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/tmp/.X{n}-lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Xvfb {
    fn start() -> Xvfb {
        for n in 90..140 {
            // A lock naming a live process is a running server; a stale one (a server that was
            // killed) Xvfb replaces itself.
            if lock_pid(n).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
                continue;
            }
            let display = format!(":{n}");
            let mut child = Command::new("Xvfb")
                .args([
                    display.as_str(),
                    "-screen",
                    "0",
                    "1280x800x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb is needed for this test (scripts/system-deps installs it)");
            // Up once the lock is ours and the socket is there (a stale socket alone proves nothing).
            let socket = format!("/tmp/.X11-unix/X{n}");
            let ours = || lock_pid(n) == Some(child.id()) && Path::new(&socket).exists();
            if wait_until(Duration::from_secs(10), ours) {
                return Xvfb { child, display };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("no free X display found for Xvfb");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove its lock and socket; SIGKILL left them behind, one display
        // per test run, until no display in the range was free.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let exited = wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Run `arvis app --fresh ARGS --screenshot window.png` in its own home under `x` until it exits
/// (it must, within `limit`, with status 0); returns the screenshot.
fn run_app(x: &Xvfb, args: &[&std::ffi::OsStr], limit: Duration) -> image::RgbImage {
    let home = tempfile::tempdir().unwrap();
    let shot = home.path().join("window.png");
    let t0 = Instant::now();
    let mut cmd = arvis();
    in_window(&mut cmd, x, home.path());
    let child = cmd
        .args(["app", "--fresh"])
        .args(args)
        .arg("--screenshot")
        .arg(&shot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (finished, out) = finish_within(child, limit);
    assert!(finished, "the app did not finish: {}", stderr(&out));
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(&out)
    );
    eprintln!("window run took {:.1} s", t0.elapsed().as_secs_f64());
    image::open(&shot)
        .unwrap_or_else(|e| panic!("screenshot {}: {e}\n{}", shot.display(), stderr(&out)))
        .to_rgb8()
}

/// Wait up to `limit` for `child` to exit, killing it if it does not; whether it exited in time,
/// and its output.
fn finish_within(mut child: Child, limit: Duration) -> (bool, std::process::Output) {
    let finished = wait_until(limit, || child.try_wait().ok().flatten().is_some());
    if !finished {
        let _ = child.kill();
    }
    (finished, child.wait_with_output().unwrap())
}

/// A private XDG_RUNTIME_DIR under `home` (mode 0700, as the spec requires).
fn runtime_dir(home: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = home.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Point `cmd` at the virtual display, with its runtime, data and config dirs under `home`.
fn in_window(cmd: &mut Command, x: &Xvfb, home: &std::path::Path) {
    cmd.env("DISPLAY", &x.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_RUNTIME_DIR", runtime_dir(home))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"));
}

/// Pixels within 30 per channel of a class's overlay colour.
fn pixels_in_class_colour(img: &image::RgbImage, class_id: usize) -> usize {
    let c = arvis::render::palette::class_color(class_id);
    img.pixels()
        .filter(|p| (0..3).all(|i| (i32::from(p.0[i]) - i32::from(c[i])).abs() <= 30))
        .count()
}

#[test]
fn the_window_plays_the_clip_with_boxes_under_xvfb() {
    provisioned();
    let x = Xvfb::start();
    let video = walking_video();
    let img = run_app(
        &x,
        &[
            "--exit-after-frames".as_ref(),
            "15".as_ref(),
            "--source".as_ref(),
            video.as_os_str(),
        ],
        Duration::from_secs(240),
    );

    // The screenshot is the window: the video frame with the person's box in its class colour.
    assert!(
        img.width() >= 640 && img.height() >= 400,
        "{:?}",
        img.dimensions()
    );
    let boxed = pixels_in_class_colour(&img, 0);
    assert!(
        boxed > 300,
        "only {boxed} pixels in the person class colour: no box drawn?"
    );
    // Not a blank window: plenty of distinct colours from the video frame.
    let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 1000, "{} colours", distinct.len());
}

/// A still image never gives more than one frame with detections: a scripted run asking for
/// more must still finish once the image has been shown with its boxes.
#[test]
fn a_scripted_run_on_a_still_image_finishes() {
    provisioned();
    let x = Xvfb::start();
    let bus = images_dir().join("ultralytics_bus.jpg");
    let img = run_app(
        &x,
        &[
            "--exit-after-frames".as_ref(),
            "5".as_ref(),
            "--source".as_ref(),
            bus.as_os_str(),
        ],
        Duration::from_secs(120),
    );
    let bus_boxes = pixels_in_class_colour(&img, 5);
    assert!(bus_boxes > 300, "{bus_boxes} pixels in the bus colour");
}

#[test]
fn the_demo_prepares_its_clip_and_gallery_once_and_plays_in_the_window() {
    provisioned();
    let home = tempfile::tempdir().unwrap();
    let (clip, _) = clip_tiny();
    let demo = || {
        let mut c = arvis();
        // Settings (eframe storage) stay in the temporary home too.
        c.env("ARVIS_DATA_DIR", home.path().join("data"))
            .env("XDG_DATA_HOME", home.path().join("xdg-data"))
            .env("XDG_CONFIG_HOME", home.path().join("xdg-config"))
            .env("ARVIS_CLIP_MODEL", clip)
            .arg("demo");
        c
    };
    let first = demo().arg("--prepare-only").output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("indexed 4 gallery image(s)"),
        "{}",
        stderr(&first)
    );
    let out = stdout(&first);
    let clip = out
        .lines()
        .find_map(|l| l.strip_prefix("clip:"))
        .map(|p| std::path::PathBuf::from(p.trim()))
        .unwrap();
    let index = out
        .lines()
        .find_map(|l| l.strip_prefix("index:"))
        .map(|p| std::path::PathBuf::from(p.trim()))
        .unwrap();
    let mut video = arvis::source::video::VideoSource::open(&clip).unwrap();
    let mut frames = 0;
    while arvis::source::FrameSource::next_frame(&mut video)
        .unwrap()
        .is_some()
    {
        frames += 1;
    }
    assert_eq!(
        frames,
        4 * 3 * 24,
        "four images, three seconds each at 24 fps"
    );
    let stats = arvis()
        .args(["index", "stats", "--json", "--index"])
        .arg(&index)
        .output()
        .unwrap();
    assert!(stdout(&stats).contains("\"count\":4"), "{}", stdout(&stats));

    // Second run: nothing to redo.
    let modified = std::fs::metadata(&clip).unwrap().modified().unwrap();
    let second = demo().arg("--prepare-only").output().unwrap();
    assert!(second.status.success());
    assert!(!stderr(&second).contains("indexed"), "{}", stderr(&second));
    assert_eq!(
        std::fs::metadata(&clip).unwrap().modified().unwrap(),
        modified
    );

    // And the window plays it.
    let x = Xvfb::start();
    let runtime_dir = runtime_dir(home.path());
    let shot = home.path().join("demo.png");
    let run = demo()
        .env("DISPLAY", &x.display)
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        // Every frame in order: the tenth detected frame is the clip's tenth (the astronaut),
        // however slowly a loaded machine detects.
        .args(["--every-frame", "--exit-after-frames", "10", "--screenshot"])
        .arg(&shot)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let img = image::open(&shot)
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&run)))
        .to_rgb8();
    // The clip opens on the astronaut: her box is drawn in the person colour, over a frame
    // (not a blank window).
    let boxed = pixels_in_class_colour(&img, 0);
    assert!(
        boxed > 300,
        "only {boxed} pixels in the person colour: no box drawn?"
    );
    let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 1000, "{} colours", distinct.len());
    let _ = std::fs::copy(
        &shot,
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-window.png"),
    );
}

/// Offline with no model mirror: the detector cannot load. A scripted run must end with the
/// whole error (and its fix) and a non-zero status, instead of waiting to be killed, and the
/// window must show that error whole.
#[test]
fn a_scripted_run_whose_detector_cannot_load_ends_with_the_error() {
    provisioned();
    let x = Xvfb::start();
    let home = tempfile::tempdir().unwrap();
    let empty_mirror = tempfile::tempdir().unwrap();
    let shot = home.path().join("failed.png");
    let bus = images_dir().join("ultralytics_bus.jpg");
    let mut cmd = arvis_with_cache(&home.path().join("cache"));
    in_window(&mut cmd, &x, home.path());
    let child = cmd
        .env("ORT_DYLIB_PATH", provisioned_library())
        .env("ARVIS_MODEL_MIRROR", empty_mirror.path())
        .env("ARVIS_OFFLINE", "1")
        .args(["app", "--fresh", "--exit-after-frames", "3", "--source"])
        .arg(&bus)
        .arg("--screenshot")
        .arg(&shot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (finished, out) = finish_within(child, Duration::from_secs(120));
    assert!(
        finished,
        "the app waited instead of ending: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("scripted run stopped: the detector could not be loaded")
            && err.contains("ARVIS_MODEL_MIRROR"),
        "{err}"
    );
    let img = image::open(&shot)
        .unwrap_or_else(|e| panic!("screenshot {}: {e}\n{err}", shot.display()))
        .to_rgb8();
    assert!(img.width() >= 640, "{:?}", img.dimensions());
    // Keep a copy to look at.
    let _ = std::fs::copy(
        &shot,
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("detector-failed-window.png"),
    );
}

/// Settings persist across runs (the last source and the confidence here) and `--fresh`
/// ignores them: three real runs of the window sharing one home.
#[test]
fn settings_persist_across_runs_and_fresh_ignores_them() {
    provisioned();
    let x = Xvfb::start();
    let home = tempfile::tempdir().unwrap();
    let bus = images_dir().join("ultralytics_bus.jpg");
    let run = |args: &[&std::ffi::OsStr], shot: &str| -> image::RgbImage {
        let shot = home.path().join(shot);
        let mut cmd = arvis();
        in_window(&mut cmd, &x, home.path());
        let child = cmd
            .arg("app")
            .args(args)
            .args(["--exit-after-frames", "1", "--screenshot"])
            .arg(&shot)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (finished, out) = finish_within(child, Duration::from_secs(120));
        assert!(
            finished && out.status.success(),
            "{args:?}: {}",
            stderr(&out)
        );
        image::open(&shot).unwrap().to_rgb8()
    };
    // 1: fresh, on the bus photo: boxes drawn; the settings are saved on exit.
    let first = run(
        &["--fresh".as_ref(), "--source".as_ref(), bus.as_os_str()],
        "1.png",
    );
    assert!(pixels_in_class_colour(&first, 5) > 300, "the bus box");
    let store = home.path().join("data/arvis/app.ron");
    let saved = std::fs::read_to_string(&store).unwrap();
    assert!(
        saved.contains("conf:0.25") && saved.contains("ultralytics_bus.jpg"),
        "{saved}"
    );
    // The user raises the confidence above every detection's score.
    std::fs::write(&store, saved.replace("conf:0.25", "conf:0.93")).unwrap();
    // 2: no source given: the last one reopens (the run could not finish otherwise), and with
    // the saved confidence nothing is drawn.
    let second = run(&[], "2.png");
    assert!(
        pixels_in_class_colour(&second, 5) < 50 && pixels_in_class_colour(&second, 0) < 50,
        "boxes drawn despite conf 0.93"
    );
    assert!(
        std::fs::read_to_string(&store)
            .unwrap()
            .contains("conf:0.93")
    );
    // 3: --fresh ignores the saved settings: default confidence, boxes again.
    let third = run(
        &["--fresh".as_ref(), "--source".as_ref(), bus.as_os_str()],
        "3.png",
    );
    assert!(
        pixels_in_class_colour(&third, 5) > 300,
        "the bus box with --fresh"
    );
}
