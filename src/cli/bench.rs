//! `arvis bench`: speed measured against a reference taken in the same run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

use super::detect::expand_inputs;
use crate::detect::{DetectOptions, Prepared};
use crate::pipeline::for_each_staged;
use crate::runtime::DeviceRequest;
use crate::source::{DecodeLimits, load_image};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Detector: per-stage times, and end-to-end ÷ bare `session.run` on the same inputs.
    Detect {
        /// Images or directories to run on.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Detector model (manifest id or .onnx path).
        #[arg(long, env = "ARVIS_DETECTOR")]
        model: Option<String>,
        /// Timed passes over all the images (after one warm-up pass).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Print the results as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Median and 95th percentile of a sample, in ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median_ms: f64,
    pub p95_ms: f64,
}

pub fn stat(samples: &[f64]) -> Stat {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return Stat {
            median_ms: 0.0,
            p95_ms: 0.0,
        };
    }
    let pick = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    Stat {
        median_ms: pick(0.5),
        p95_ms: pick(0.95),
    }
}

#[derive(Debug, Serialize)]
struct DetectBench {
    model: String,
    device: String,
    images: usize,
    rounds: usize,
    decode: Stat,
    preprocess: Stat,
    infer: Stat,
    postprocess: Stat,
    bare_session_run: Stat,
    /// Mean wall time per image of the pipelined end-to-end loop (decode → … → postprocess).
    end_to_end_per_image_ms: f64,
    /// Mean bare `session.run` time per image over the same images.
    bare_per_image_ms: f64,
    /// end_to_end_per_image_ms / bare_per_image_ms.
    ratio_end_to_end_over_bare: f64,
}

pub fn run(cmd: BenchCommand, request: DeviceRequest) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Detect {
            inputs,
            model,
            rounds,
            json,
        } => bench_detect(&inputs, model.as_deref(), rounds.max(1), json, request),
    }
}

fn bench_detect(
    inputs: &[PathBuf],
    model: Option<&str>,
    rounds: usize,
    json: bool,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    let (inputs, _) = expand_inputs(inputs);
    let images: Vec<_> = inputs
        .iter()
        .map(|i| {
            load_image(&i.path, DecodeLimits::default())
                .with_context(|| i.path.display().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!images.is_empty(), "no images to benchmark");
    let (mut detector, device) = super::load_detector(model, request)?;
    let opts = DetectOptions::default();
    let pre = detector.preprocessor();
    let prepared: Vec<Prepared> = images.iter().map(|img| pre.prepare(img)).collect();

    // Warm-up: first runs allocate arenas and pick kernels.
    for p in &prepared {
        detector.run(p, &opts)?;
    }

    let (mut decode, mut preprocess, mut infer, mut post, mut bare) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut e2e_total = 0.0;
    let mut bare_total = 0.0;
    for _ in 0..rounds {
        // Reference: bare session.run on already-prepared inputs.
        for p in &prepared {
            let t = Instant::now();
            detector.run_bare(p)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            bare.push(ms);
            bare_total += ms;
        }
        // End to end, as `arvis detect` runs it: decode + letterbox of image N+1 overlaps inference of N.
        let t = Instant::now();
        for_each_staged(
            inputs.iter().map(|i| i.path.clone()),
            pre,
            DecodeLimits::default(),
            |staged| -> anyhow::Result<()> {
                let s = staged
                    .result
                    .with_context(|| staged.path.display().to_string())?;
                let (_, i, po) = detector.run(&s.prepared, &opts)?;
                decode.push(s.decode_ms);
                preprocess.push(s.preprocess_ms);
                infer.push(i);
                post.push(po);
                Ok(())
            },
        )?;
        e2e_total += t.elapsed().as_secs_f64() * 1e3;
    }
    let n = (images.len() * rounds) as f64;
    let result = DetectBench {
        model: detector.model_name.clone(),
        device: device.to_string(),
        images: images.len(),
        rounds,
        decode: stat(&decode),
        preprocess: stat(&preprocess),
        infer: stat(&infer),
        postprocess: stat(&post),
        bare_session_run: stat(&bare),
        end_to_end_per_image_ms: e2e_total / n,
        bare_per_image_ms: bare_total / n,
        ratio_end_to_end_over_bare: e2e_total / bare_total,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "arvis bench detect: {} on {}, {} images x {} rounds (after 1 warm-up pass)",
            result.model, result.device, result.images, rounds
        );
        println!("{:<28} {:>10} {:>10}", "stage", "median ms", "p95 ms");
        for (name, s) in [
            ("decode (overlapped)", result.decode),
            ("preprocess (overlapped)", result.preprocess),
            ("infer (session.run + I/O)", result.infer),
            ("postprocess", result.postprocess),
            ("reference: bare session.run", result.bare_session_run),
        ] {
            println!("{name:<28} {:>10.2} {:>10.2}", s.median_ms, s.p95_ms);
        }
        println!(
            "end-to-end {:.2} ms/image vs bare session.run {:.2} ms/image: ratio {:.3}",
            result.end_to_end_per_image_ms,
            result.bare_per_image_ms,
            result.ratio_end_to_end_over_bare
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_picks_median_and_p95() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let st = stat(&s);
        assert_eq!(st.median_ms, 51.0);
        assert_eq!(st.p95_ms, 95.0);
    }
}
