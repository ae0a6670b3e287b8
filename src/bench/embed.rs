//! `arvis bench embed`: CLIP image embedding throughput per batch size, against bare
//! `session.run` on the same tensors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;

use super::load_inputs;
use super::procfs::{peak_rss_mb, vram_used_mib};
use crate::runtime::DeviceRequest;

#[derive(Debug, Serialize)]
struct EmbedBenchRow {
    batch: usize,
    images: usize,
    preprocess_ms_per_image: f64,
    session_ms_per_image: f64,
    end_to_end_images_per_s: f64,
    bare_images_per_s: f64,
    ratio_end_to_end_over_bare: f64,
    /// GPU memory this process holds after this batch size ran (None on the CPU).
    vram_mib: Option<u64>,
}

/// The full ViT-B/32 vision tower with random weights, generated into the cache once.
pub fn generated_vit_b32() -> anyhow::Result<PathBuf> {
    use crate::models::generate::{ClipConfig, clip_vision};
    let path = crate::paths::cache_dir()
        .join("generated")
        .join("clip-vit-b32-random-vision.onnx");
    if !path.is_file() {
        eprintln!(
            "generating the ViT-B/32 architecture with random weights (benchmark only) into {}",
            path.display()
        );
        std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
        crate::util::write_atomic(&path, &clip_vision(&ClipConfig::VIT_B32, 1).to_bytes())?;
    }
    Ok(path)
}

pub fn bench_embed(
    inputs: &[PathBuf],
    clip_model: Option<String>,
    batches: &[usize],
    count: usize,
    tune: bool,
    json: bool,
    request: DeviceRequest,
) -> anyhow::Result<ExitCode> {
    use crate::embed::preprocess::CLIP_TENSOR_LEN;
    let (_, images) = load_inputs(inputs)?;
    let model = match clip_model {
        Some(m) => m,
        None => generated_vit_b32()?.display().to_string(),
    };
    let clip = crate::load::ClipModels {
        image: Some(model.clone()),
        text: None,
    };
    let mut loaded = clip.load_image_encoder(request)?;
    let enc = &mut loaded.encoder;
    let mut rows = Vec::new();
    for &batch in batches {
        let batch = batch.clamp(1, enc.max_batch);
        let pool: Vec<&image::RgbImage> = images.iter().cycle().take(count.max(batch)).collect();
        enc.embed(&pool[..batch])?; // warm-up at this shape
        // End to end: preprocess + run, as `arvis index add` does.
        let t = Instant::now();
        let mut pre_ms = 0.0;
        let mut run_ms = 0.0;
        let mut tensor = vec![0f32; batch * CLIP_TENSOR_LEN];
        for chunk in pool.chunks(batch) {
            let t0 = Instant::now();
            for (img, slot) in chunk.iter().zip(tensor.chunks_exact_mut(CLIP_TENSOR_LEN)) {
                crate::embed::clip_preprocess_into(img, slot);
            }
            pre_ms += t0.elapsed().as_secs_f64() * 1e3;
            let t1 = Instant::now();
            enc.run(&tensor[..chunk.len() * CLIP_TENSOR_LEN], chunk.len())?;
            run_ms += t1.elapsed().as_secs_f64() * 1e3;
        }
        let e2e_s = t.elapsed().as_secs_f64();
        // Reference: bare session.run on the already-preprocessed tensor, same batches.
        let t = Instant::now();
        for chunk in pool.chunks(batch) {
            enc.run(&tensor[..chunk.len() * CLIP_TENSOR_LEN], chunk.len())?;
        }
        let bare_s = t.elapsed().as_secs_f64();
        let n = pool.len() as f64;
        rows.push(EmbedBenchRow {
            batch,
            images: pool.len(),
            preprocess_ms_per_image: pre_ms / n,
            session_ms_per_image: run_ms / n,
            end_to_end_images_per_s: n / e2e_s,
            bare_images_per_s: n / bare_s,
            ratio_end_to_end_over_bare: e2e_s / bare_s,
            vram_mib: vram_used_mib(),
        });
    }
    let tuned = if tune {
        let tried = enc.tune_batch(&[1, 2, 4, 8, 16, 32, 64, 128, 256])?;
        Some((enc.batch, tried))
    } else {
        None
    };
    if json {
        let tuned_json = tuned.as_ref().map(|(best, tried)| {
            serde_json::json!({
                "chosen_batch": best,
                "tried": tried.iter().map(|(b, r)| serde_json::json!({"batch": b, "images_per_s": r})).collect::<Vec<_>>(),
            })
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "rows": rows,
                "tuning": tuned_json,
                "peak_rss_mb": peak_rss_mb(),
                "vram_used_mib": vram_used_mib(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some((best, tried)) = &tuned {
        let list: Vec<String> = tried
            .iter()
            .map(|(b, r)| format!("{b}: {r:.1}/s"))
            .collect();
        println!(
            "batch auto-tuning (bare session.run): {} → batch {best}",
            list.join(", ")
        );
    }
    println!("arvis bench embed: {model}");
    println!(
        "{:>6} {:>7} {:>14} {:>12} {:>12} {:>12} {:>8} {:>9}",
        "batch",
        "images",
        "preprocess ms",
        "session ms",
        "e2e img/s",
        "bare img/s",
        "ratio",
        "VRAM MiB"
    );
    for r in &rows {
        println!(
            "{:>6} {:>7} {:>14.2} {:>12.2} {:>12.1} {:>12.1} {:>8.3} {:>9}",
            r.batch,
            r.images,
            r.preprocess_ms_per_image,
            r.session_ms_per_image,
            r.end_to_end_images_per_s,
            r.bare_images_per_s,
            r.ratio_end_to_end_over_bare,
            r.vram_mib.map_or("-".into(), |m| m.to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}
