//! The Python reference for `arvis bench detect --python`: the minimal onnxruntime + NumPy +
//! Pillow pipeline a user would write instead (benches/reference_detect.py), installed with pip
//! into the cache on first use and run on the same images and model in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use serde::Deserialize;

use crate::runtime::python;

const SCRIPT: &str = include_str!("../../benches/reference_detect.py");
const PACKAGES: [&str; 3] = ["onnxruntime==1.31.1", "numpy", "pillow"];

#[derive(Debug, Deserialize)]
pub struct PythonResult {
    pub onnxruntime: String,
    pub end_to_end_per_image_ms: f64,
    pub bare_per_image_ms: f64,
    /// Median over rounds of end to end ÷ the bare round before it (as arvis measures it).
    pub ratio_median_of_rounds: f64,
    pub detections_per_round: u64,
}

/// The reference's packages and script, installed once into the cache.
pub fn prepare() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = crate::paths::cache_dir().join("python-reference");
    let site = dir.join("site-packages");
    let stamp = site.join(".arvis-ready");
    if !stamp.is_file() {
        eprintln!(
            "arvis: installing the Python reference ({}) with pip into {}",
            PACKAGES.join(", "),
            site.display()
        );
        let status = Command::new(python())
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&site)
            .args(PACKAGES)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("running {} -m pip", python()))?;
        anyhow::ensure!(
            status.success(),
            "pip install of the Python reference failed ({status})"
        );
        std::fs::write(&stamp, PACKAGES.join("\n"))?;
    }
    let script = dir.join("reference_detect.py");
    if std::fs::read_to_string(&script).ok().as_deref() != Some(SCRIPT) {
        crate::util::write_atomic(&script, SCRIPT.as_bytes())?;
    }
    Ok((site, script))
}

fn command(site: &Path, script: &Path) -> Command {
    let mut c = Command::new(python());
    c.env("PYTHONPATH", site)
        .env("OMP_NUM_THREADS", "2")
        .arg(script);
    c
}

/// Per-image end-to-end and bare `session.run` times of the Python pipeline.
pub fn per_image(model: &Path, rounds: usize, images: &[PathBuf]) -> anyhow::Result<PythonResult> {
    let (site, script) = prepare()?;
    let out = command(&site, &script)
        .arg(model)
        .arg(rounds.to_string())
        .args(images)
        .stderr(Stdio::inherit())
        .output()
        .context("running the Python reference")?;
    anyhow::ensure!(
        out.status.success(),
        "the Python reference failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("reading its output: {text}"))
}

/// Wall times in ms of whole processes (start-up included): each command `runs` times, the
/// commands alternated run by run so that drift on a noisy machine hits them alike.
pub fn whole_processes_ms(
    makers: &mut [&mut dyn FnMut() -> Command],
    runs: usize,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(runs); makers.len()];
    for _ in 0..runs {
        for (make, times) in makers.iter_mut().zip(&mut times) {
            let mut cmd = make();
            let t = Instant::now();
            let status = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("running {cmd:?}"))?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(status.success(), "{cmd:?} failed ({status})");
        }
    }
    Ok(times)
}

/// `python reference_detect.py --once MODEL IMAGES...` as a command.
pub fn once_command(model: &Path, images: &[PathBuf]) -> anyhow::Result<impl FnMut() -> Command> {
    let (site, script) = prepare()?;
    let model = model.to_path_buf();
    let images = images.to_vec();
    Ok(move || {
        let mut c = command(&site, &script);
        c.arg("--once").arg(&model).args(&images);
        c
    })
}
