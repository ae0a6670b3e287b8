//! Benchmarks (`arvis bench …`): speed and memory figures, each reported as a ratio against a
//! reference measured in the same run (these machines are noisy). One module per benchmark;
//! statistics, memory readings and synthetic models once, here.

pub mod detect;
pub mod embed;
pub mod items;
pub mod procfs;
mod reference;
pub mod search;
mod search_store;
pub mod stats;
pub mod streams;
pub mod switches;
pub mod video;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::runtime::DeviceRequest;
use crate::source::files::expand_inputs;
use crate::source::{DecodeLimits, load_image};

pub use embed::generated_vit_b32;
pub use procfs::{peak_rss_mb, vram_used_mib};

/// Run each benchmark as its own `arvis bench …` process (so each starts clean and its peak
/// RSS is its own), printing their tables, or one combined JSON object.
pub fn bench_all(
    images: &std::path::Path,
    video: Option<&std::path::Path>,
    model: Option<String>,
    python: bool,
    json: bool,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the arvis binary")?;
    let model = model.unwrap_or_else(|| "yolov8n-fp32".into());
    let image_arg = images.display().to_string();
    let mut runs: Vec<(&str, Vec<String>)> = vec![
        (
            "detect",
            ["detect", &image_arg, "--model", &model, "--rounds", "3"]
                .iter()
                .map(|s| s.to_string())
                .chain(python.then(|| "--python".to_string()))
                .collect(),
        ),
        (
            "embed",
            ["embed", &image_arg, "--batches", "1,8,32", "--tune"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        (
            "search",
            ["search", "--sizes", "10000,100000"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
    ];
    if let Some(v) = video {
        runs.push(("video", vec!["video".into(), v.display().to_string()]));
    }
    let mut combined = serde_json::Map::new();
    for (name, args) in runs {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--device", &request.to_string(), "bench"])
            .args(&args);
        if json {
            cmd.arg("--json");
            combined.insert(name.to_string(), run_json(cmd, &format!("bench {name}"))?);
        } else {
            println!("\n== arvis bench {} ==", args.join(" "));
            let status = cmd
                .status()
                .with_context(|| format!("running bench {name}"))?;
            anyhow::ensure!(status.success(), "bench {name} failed ({status})");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&combined)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Run an `arvis … --json` child (its progress on our stderr) and parse what it printed.
pub fn run_json(mut cmd: std::process::Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {what}"))?;
    anyhow::ensure!(out.status.success(), "{what} failed ({})", out.status);
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading {what}'s JSON"))
}

/// Expand and decode every input up front (benchmarks time inference, not the disk).
fn load_inputs(
    paths: &[PathBuf],
) -> anyhow::Result<(Vec<crate::source::files::Input>, Vec<image::RgbImage>)> {
    let loaded = decode_all(paths)?;
    anyhow::ensure!(!loaded.1.is_empty(), "no images to benchmark");
    Ok(loaded)
}

/// Expand files and folders into images and decode them all; the first failure is the error.
pub fn decode_all(
    paths: &[PathBuf],
) -> anyhow::Result<(Vec<crate::source::files::Input>, Vec<image::RgbImage>)> {
    let (inputs, _) = expand_inputs(paths);
    let images: Vec<_> = inputs
        .iter()
        .map(|i| {
            load_image(&i.path, DecodeLimits::default())
                .with_context(|| i.path.display().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((inputs, images))
}
