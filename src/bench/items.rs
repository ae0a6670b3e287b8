//! `arvis bench items`: the cost per region of matching against a gallery of known items (the
//! nearest [`IMAGE_K`] images aggregated per item, plus the text items) against per-image
//! matching (the nearest [`MATCH_K`] images, what matching was before items), on one real index
//! in the same run. The region's CLIP embedding, the same for both, is left out, so the ratio
//! is the strictest one.

use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;

use super::stats::percentile;
use crate::pipeline::frame::MATCH_K;
use crate::search::items::IMAGE_K;
use crate::search::{GalleryIndex, GalleryStore, IndexMeta, NewItem, match_embedding};

#[derive(Debug, Serialize)]
struct ItemsBench {
    items: usize,
    images: usize,
    text_items: usize,
    queries: usize,
    per_image_p50_ms: f64,
    per_image_p99_ms: f64,
    per_item_p50_ms: f64,
    per_item_p99_ms: f64,
    /// The per-item path's image search alone (what aggregation adds is the difference).
    search_alone_p50_ms: f64,
    ratio_p50: f64,
}

/// `items` items of `images_per_item` images each: every image a noisy view of its item's centre.
pub fn bench_items(
    items: usize,
    images_per_item: usize,
    queries: usize,
    dim: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut rng = crate::util::Rng(7);
    let dir = std::env::temp_dir().join(format!("arvis-bench-items-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let meta = IndexMeta {
        model_id: "bench-synthetic".into(),
        preprocess_version: 1,
        dim,
        clip_family: None,
    };
    let mut index = GalleryIndex::open_or_create(&dir, &meta)?;
    let mut centres = Vec::with_capacity(items);
    let view = |rng: &mut crate::util::Rng, c: &[f32]| {
        let mut v: Vec<f32> = c
            .iter()
            .zip(rng.normals(dim, 0.5 / (dim as f32).sqrt()))
            .map(|(a, b)| a + b)
            .collect();
        crate::embed::l2_normalize(&mut v);
        v
    };
    let t = Instant::now();
    let mut batch = Vec::new();
    for i in 0..items {
        let mut c = rng.normals(dim, 1.0);
        crate::embed::l2_normalize(&mut c);
        for j in 0..images_per_item {
            batch.push(NewItem {
                path: format!("/bench/item-{i}/{j}.jpg").into(),
                size: 1,
                mtime_ns: 1,
                embedding: view(&mut rng, &c),
                thumbnail: Vec::new(),
                label: Some(format!("item {i}")),
                sha256: None,
            });
        }
        centres.push(c);
        if batch.len() >= 4096 {
            index.upsert_batch(&batch)?;
            batch.clear();
        }
    }
    index.upsert_batch(&batch)?;
    let mut text = rng.normals(dim, 1.0);
    crate::embed::l2_normalize(&mut text);
    index.add_text("a text item", "a text item", &text)?;
    index.save()?;
    let build_s = t.elapsed().as_secs_f64();
    let images = index.len()?;
    let qs: Vec<Vec<f32>> = (0..queries)
        .map(|q| view(&mut rng, &centres[q % items.max(1)]))
        .collect();
    // Each once untimed: the graph and caches are loaded.
    index.search(&qs[0], MATCH_K, false)?;
    match_embedding(&mut index, &qs[0], MATCH_K)?;
    let (mut per_image, mut per_item, mut search_only) = (Vec::new(), Vec::new(), Vec::new());
    // The first search for a new query pays for the graph's cold memory, the second not: the
    // three are measured in a rotating order, so each comes first equally often.
    for (n, q) in qs.iter().enumerate() {
        for step in 0..3 {
            let t = Instant::now();
            let times = match (n + step) % 3 {
                0 => {
                    std::hint::black_box(index.search(q, MATCH_K, false)?);
                    &mut per_image
                }
                1 => {
                    std::hint::black_box(match_embedding(&mut index, q, MATCH_K)?);
                    &mut per_item
                }
                _ => {
                    std::hint::black_box(index.search(q, IMAGE_K, false)?);
                    &mut search_only
                }
            };
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    drop(index);
    let _ = std::fs::remove_dir_all(&dir);
    let row = ItemsBench {
        items,
        images,
        text_items: 1,
        queries,
        per_image_p50_ms: percentile(&mut per_image, 0.5),
        per_image_p99_ms: percentile(&mut per_image, 0.99),
        per_item_p50_ms: percentile(&mut per_item, 0.5),
        per_item_p99_ms: percentile(&mut per_item, 0.99),
        search_alone_p50_ms: percentile(&mut search_only, 0.5),
        ratio_p50: 0.0,
    };
    let row = ItemsBench {
        ratio_p50: row.per_item_p50_ms / row.per_image_p50_ms.max(1e-9),
        ..row
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&row)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "arvis bench items: {items} items x {images_per_item} images ({images} images, {dim}-d synthetic embeddings, built in {build_s:.1} s), 1 text item, {queries} regions"
    );
    println!(
        "per-image matching (nearest {MATCH_K} images):      p50 {:.3} ms  p99 {:.3} ms",
        row.per_image_p50_ms, row.per_image_p99_ms
    );
    println!(
        "per-item matching (nearest {IMAGE_K} images → items): p50 {:.3} ms  p99 {:.3} ms",
        row.per_item_p50_ms, row.per_item_p99_ms
    );
    println!(
        "  of which the search for {IMAGE_K} images:       p50 {:.3} ms",
        row.search_alone_p50_ms
    );
    println!(
        "per-item / per-image at p50: {:.2}x (the region's CLIP embedding, the same for both, is not included)",
        row.ratio_p50
    );
    Ok(ExitCode::SUCCESS)
}
