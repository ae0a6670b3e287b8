//! `arvis bench video`: end-to-end video throughput (decode → detect → track → per-track CLIP
//! embedding) run serially and pipelined — detector and embedder on their own threads with their
//! own sessions, frame N+1 detected while frame N's tracks are embedded — with each stage's time
//! measured in the same run, so the pipelined rate can be set against 1 / max(stage).

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use anyhow::Context;

use image::RgbImage;
use serde::Serialize;

use crate::detect::{DetectOptions, Detector};
use crate::pipeline::frame::{FrameProcessor, ProcessorConfig};
use crate::runtime::DeviceRequest;
use crate::search::{Region, RegionMatcher};

#[derive(Debug, Serialize)]
struct VideoBench {
    video: String,
    frames: usize,
    device: String,
    detector: String,
    clip_model: String,
    decode_ms_per_frame: f64,
    detect_ms_per_frame: f64,
    embed_ms_per_frame: f64,
    crops_embedded: u64,
    regions: u64,
    serial_fps: f64,
    pipelined_fps: f64,
    /// 1000 / max(detect, embed): what perfect overlap of the two stages would give.
    bound_fps: f64,
    /// pipelined_fps / bound_fps.
    pipeline_efficiency: f64,
    /// pipelined_fps / serial_fps.
    speedup_over_serial: f64,
    /// Pipelined with a decode thread too, frames read from the input: end to end.
    pipelined_with_decode_fps: f64,
    /// 1000 / max(decode, detect, embed).
    bound_with_decode_fps: f64,
    /// Peak resident memory of this process (Linux), MB.
    peak_rss_mb: Option<f64>,
    /// GPU memory in use at the end (all processes; nvidia-smi), MiB.
    vram_used_mib: Option<u64>,
}

/// Hand the first `max_frames` frames of a video, or of a directory of frame images in name
/// order, to `each` as they are decoded; `each` returns false to stop early.
fn for_each_frame(
    input: &Path,
    max_frames: usize,
    mut each: impl FnMut(RgbImage) -> bool,
) -> anyhow::Result<()> {
    if input.is_dir() {
        // expand_inputs lists a directory in file-name order.
        let (inputs, _) = crate::source::files::expand_inputs(&[input.to_path_buf()]);
        for i in inputs.into_iter().take(max_frames) {
            let frame = crate::source::load_image(&i.path, crate::source::DecodeLimits::default())
                .with_context(|| i.path.display().to_string())?;
            if !each(frame) {
                break;
            }
        }
        return Ok(());
    }
    #[cfg(feature = "video")]
    {
        use crate::source::FrameSource;
        let mut source = crate::source::video::VideoSource::open(input)?;
        for _ in 0..max_frames {
            match source.next_frame()? {
                Some(f) if each((*f.image).clone()) => {}
                _ => break,
            }
        }
        Ok(())
    }
    #[cfg(not(feature = "video"))]
    anyhow::bail!(
        "{}: this build has no video support (feature `video`); pass a directory of the video's frames as images instead",
        input.display()
    )
}

/// One pipelined run: `produce` feeds frames from its own thread, detection + tracking run on a
/// second with the detector's session, per-track CLIP on this one (frame N+1 detected while N's
/// tracks are embedded). Returns the seconds taken; every one of `expected` frames must arrive.
fn run_pipelined(
    detector: &mut Detector,
    matcher: &mut RegionMatcher,
    opts: &DetectOptions,
    expected: usize,
    produce: impl FnOnce(&mut dyn FnMut(Arc<RgbImage>) -> bool) -> anyhow::Result<()> + Send,
) -> anyhow::Result<f64> {
    std::thread::scope(|scope| {
        let (frame_tx, frame_rx) = mpsc::sync_channel::<Arc<RgbImage>>(2);
        let (tx, rx) = mpsc::sync_channel::<(usize, Arc<RgbImage>, Vec<Region>)>(2);
        let t = Instant::now();
        let FrameProcessor {
            mut tracking,
            mut matching,
        } = FrameProcessor::new(ProcessorConfig::default());
        let producer = scope.spawn(move || produce(&mut |f| frame_tx.send(f).is_ok()));
        let detect = scope.spawn(move || -> anyhow::Result<()> {
            for (i, frame) in frame_rx.into_iter().enumerate() {
                let (regions, _) = tracking.detect(detector, &frame, opts)?;
                if tx.send((i, frame, regions)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut done = 0;
        for (i, frame, mut regions) in rx {
            matching.match_regions(
                i as u64,
                &frame,
                &mut regions,
                &mut matcher.encoder,
                matcher.index.as_mut(),
            )?;
            done += 1;
        }
        detect
            .join()
            .map_err(|_| anyhow::anyhow!("the detection thread panicked"))??;
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("the frame thread panicked"))??;
        let elapsed = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            done == expected,
            "the pipelined run processed {done} frames, the serial run {expected}"
        );
        Ok(elapsed)
    })
}

pub fn bench_video(
    input: &Path,
    detector_model: Option<&str>,
    clip_model: Option<String>,
    max_frames: usize,
    json: bool,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    // Decode up front (timed on its own), so the serial and first pipelined runs see the same
    // frames from memory.
    let t = Instant::now();
    let mut frames = Vec::new();
    for_each_frame(input, max_frames, |f| {
        frames.push(Arc::new(f));
        true
    })?;
    anyhow::ensure!(!frames.is_empty(), "{}: no frames", input.display());
    let decode_ms = t.elapsed().as_secs_f64() * 1e3 / frames.len() as f64;

    let (mut detector, device) =
        crate::load::load_threaded_detector(detector_model, request, "arvis bench video")?;
    let model = match clip_model {
        Some(m) => m,
        None => super::generated_vit_b32()?.display().to_string(),
    };
    let clip = crate::load::ClipModels {
        image: Some(model.clone()),
        text: None,
    };
    let loaded = clip.load_image_encoder(request)?;
    // An empty gallery: the search itself is microseconds; the cost measured is CLIP's.
    let index_dir = std::env::temp_dir().join(format!("arvis-bench-video-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&index_dir);
    let index = crate::search::store::open_or_create(&index_dir.clone().into(), &loaded.meta)?;
    let mut matcher = RegionMatcher {
        encoder: loaded.encoder,
        index,
        k: ProcessorConfig::default().match_k,
    };
    let opts = DetectOptions::default();

    // Serial: one thread does everything, stage by stage. Run twice and timed the second time:
    // the first pass warms every shape the run uses (each CLIP batch size a frame's crops make:
    // on CUDA, cuDNN's exhaustive search for a new size would otherwise land inside the timing
    // and flatter the pipelined runs that follow).
    let mut serial_pass = || -> anyhow::Result<(f64, f64, f64, u64, u64)> {
        let mut processor = FrameProcessor::new(ProcessorConfig::default());
        let (mut detect_ms, mut embed_ms) = (0.0, 0.0);
        let t = Instant::now();
        for (i, frame) in frames.iter().enumerate() {
            let done =
                processor.process(i as u64, frame, &mut detector, &opts, Some(&mut matcher))?;
            detect_ms += done.detect_ms;
            embed_ms += done.match_ms;
        }
        Ok((
            t.elapsed().as_secs_f64(),
            detect_ms,
            embed_ms,
            processor.matching.embedded(),
            processor.matching.regions(),
        ))
    };
    serial_pass()?;
    let (serial_s, detect_ms, embed_ms, crops, regions) = serial_pass()?;

    // Pipelined: detection and embedding on their own threads and sessions, frames from memory.
    let pipelined_s = run_pipelined(&mut detector, &mut matcher, &opts, frames.len(), |send| {
        for f in &frames {
            if !send(f.clone()) {
                break;
            }
        }
        Ok(())
    })?;
    // Pipelined from the file: a decode thread feeds it instead, so the rate includes decoding
    // (what `arvis video` and the app do).
    let with_decode_s = run_pipelined(&mut detector, &mut matcher, &opts, frames.len(), |send| {
        for_each_frame(input, max_frames, |f| send(Arc::new(f)))
    })?;
    let _ = std::fs::remove_dir_all(&index_dir);

    let n = frames.len() as f64;
    let (detect_per, embed_per) = (detect_ms / n, embed_ms / n);
    let bound_fps = 1e3 / detect_per.max(embed_per);
    let pipelined_fps = n / pipelined_s;
    let serial_fps = n / serial_s;
    let with_decode_fps = n / with_decode_s;
    let bound_with_decode_fps = 1e3 / detect_per.max(embed_per).max(decode_ms);
    let result = VideoBench {
        video: input.display().to_string(),
        frames: frames.len(),
        device: device.to_string(),
        detector: detector.model_name.clone(),
        clip_model: model,
        decode_ms_per_frame: decode_ms,
        detect_ms_per_frame: detect_per,
        embed_ms_per_frame: embed_per,
        crops_embedded: crops,
        regions,
        serial_fps,
        pipelined_fps,
        bound_fps,
        pipeline_efficiency: pipelined_fps / bound_fps,
        peak_rss_mb: super::peak_rss_mb(),
        vram_used_mib: super::vram_used_mib(),
        speedup_over_serial: pipelined_fps / serial_fps,
        pipelined_with_decode_fps: with_decode_fps,
        bound_with_decode_fps,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "arvis bench video: {} ({} frames) on {}, detector {}, CLIP {}",
        result.video, result.frames, result.device, result.detector, result.clip_model
    );
    println!(
        "per frame: decode {:.2} ms (separate), detect+track {:.2} ms, per-track CLIP {:.2} ms ({} crops for {} regions)",
        decode_ms, detect_per, embed_per, crops, regions
    );
    println!(
        "serial {:.1} fps · pipelined {:.1} fps · bound 1/max(stage) {:.1} fps → efficiency {:.2}, {:.2}× serial",
        serial_fps,
        pipelined_fps,
        bound_fps,
        result.pipeline_efficiency,
        result.speedup_over_serial
    );
    println!(
        "end to end from the input (decode thread too): {:.1} fps · bound 1/max(decode, detect, embed) {:.1} fps → efficiency {:.2}",
        result.pipelined_with_decode_fps,
        result.bound_with_decode_fps,
        result.pipelined_with_decode_fps / result.bound_with_decode_fps
    );
    if let Some(mb) = result.peak_rss_mb {
        println!(
            "peak RSS {mb:.0} MB (detector + CLIP + {} decoded frames)",
            result.frames
        );
    }
    if let Some(mib) = result.vram_used_mib {
        println!("GPU memory held by this process (detector + CLIP sessions): {mib} MiB");
    }
    Ok(ExitCode::SUCCESS)
}
