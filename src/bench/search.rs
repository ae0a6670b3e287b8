//! `arvis bench search`: HNSW against an exact scan on synthetic clustered unit vectors.

use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;

use super::procfs::rss_mb;
use super::stats::percentile;

#[derive(Debug, Serialize)]
struct SearchBenchRow {
    vectors: usize,
    ef_search: usize,
    build_s: f64,
    build_vectors_per_s: f64,
    size_on_disk_mb: f64,
    rss_mb: f64,
    hnsw_p50_ms: f64,
    hnsw_p99_ms: f64,
    exact_p50_ms: f64,
    exact_p99_ms: f64,
    recall_at_10: f64,
}

/// Unit vectors around `centres` random cluster centres (images of a gallery cluster by content).
fn clustered(
    rng: &mut crate::util::Rng,
    centres: &[f32],
    n: usize,
    dim: usize,
    spread: f32,
) -> Vec<f32> {
    let k = centres.len() / dim;
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = (rng.next_u64() % k as u64) as usize;
        let noise = rng.normals(dim, spread / (dim as f32).sqrt());
        let mut v: Vec<f32> = centres[c * dim..(c + 1) * dim]
            .iter()
            .zip(noise)
            .map(|(a, b)| a + b)
            .collect();
        crate::embed::l2_normalize(&mut v);
        out.extend(v);
    }
    out
}

/// `store`: a catalogue server to measure beside the local HNSW, on the same vectors and
/// queries.
pub fn bench_search(
    sizes: &[usize],
    queries: usize,
    dim: usize,
    store: Option<&crate::search::CatalogueUrl>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::search::{Ann, exact_search};
    let mut rng = crate::util::Rng(42);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let mut store_rows = Vec::new();
    for &n in sizes {
        let mut centres = Vec::new();
        for _ in 0..(n / 100).max(10) {
            let mut c = rng.normals(dim, 1.0);
            crate::embed::l2_normalize(&mut c);
            centres.extend(c);
        }
        let matrix = clustered(&mut rng, &centres, n, dim, 0.6);
        let keys: Vec<u64> = (0..n as u64).collect();
        let t = Instant::now();
        let mut ann = Ann::new(dim)?;
        ann.add_parallel(&keys, &matrix, threads)?;
        let build_s = t.elapsed().as_secs_f64();
        let dir = tempfile_dir()?;
        let path = dir.join("bench.usearch");
        ann.save_atomic(&path)?;
        let size_on_disk_mb = std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1e6);
        let _ = std::fs::remove_dir_all(&dir);
        let (rss, _) = rss_mb();

        let qs = clustered(&mut rng, &centres, queries, dim, 0.6);
        // The exact answers once, then each ef_search on the same graph and queries.
        let mut exact = Vec::new();
        let truths: Vec<_> = qs
            .chunks_exact(dim)
            .map(|q| {
                let t = Instant::now();
                let truth = exact_search(&matrix, &keys, dim, q, 10);
                exact.push(t.elapsed().as_secs_f64() * 1e3);
                truth
            })
            .collect();
        let (exact_p50_ms, exact_p99_ms) =
            (percentile(&mut exact, 0.5), percentile(&mut exact, 0.99));
        for ef in [64, 128, 256] {
            ann.set_expansion_search(ef);
            let (mut hnsw, mut recall) = (Vec::new(), 0.0);
            for (q, truth) in qs.chunks_exact(dim).zip(&truths) {
                let t = Instant::now();
                let approx = ann.search(q, 10)?;
                hnsw.push(t.elapsed().as_secs_f64() * 1e3);
                let hits = approx
                    .iter()
                    .filter(|a| truth.iter().any(|t| t.key == a.key))
                    .count();
                recall += hits as f64 / truth.len().max(1) as f64;
            }
            rows.push(SearchBenchRow {
                vectors: n,
                ef_search: ef,
                build_s,
                build_vectors_per_s: n as f64 / build_s,
                size_on_disk_mb,
                rss_mb: rss,
                hnsw_p50_ms: percentile(&mut hnsw, 0.5),
                hnsw_p99_ms: percentile(&mut hnsw, 0.99),
                exact_p50_ms,
                exact_p99_ms,
                recall_at_10: recall / queries as f64,
            });
        }
        if let Some(url) = store {
            if !json {
                eprintln!("loading {n} vectors into {}", url.masked());
            }
            let keys: Vec<Vec<u64>> = truths
                .iter()
                .map(|t| t.iter().map(|h| h.key).collect())
                .collect();
            store_rows.extend(super::search_store::bench_catalogue(
                url, &matrix, dim, &qs, &keys,
            )?);
        }
        if !json {
            eprintln!("measured {n} vectors");
        }
    }
    if json {
        if store.is_some() {
            let both = serde_json::json!({ "local": rows, "postgres": store_rows });
            println!("{}", serde_json::to_string_pretty(&both)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "arvis bench search: {dim}-d clustered unit vectors, HNSW (usearch, cosine, f16, M=16, ef_construction=128) vs exact scan, {queries} queries, {threads} build threads"
    );
    println!(
        "{:>9} {:>4} {:>9} {:>11} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8}",
        "vectors",
        "ef",
        "build s",
        "build vec/s",
        "disk MB",
        "RSS MB",
        "hnsw p50",
        "hnsw p99",
        "exact p50",
        "exact p99",
        "speed-up",
        "recall@10"
    );
    for r in &rows {
        println!(
            "{:>9} {:>4} {:>9.1} {:>11.0} {:>9.1} {:>9.0} {:>9.3}ms {:>9.3}ms {:>9.2}ms {:>9.2}ms {:>8.0}x {:>8.3}",
            r.vectors,
            r.ef_search,
            r.build_s,
            r.build_vectors_per_s,
            r.size_on_disk_mb,
            r.rss_mb,
            r.hnsw_p50_ms,
            r.hnsw_p99_ms,
            r.exact_p50_ms,
            r.exact_p99_ms,
            r.exact_p50_ms / r.hnsw_p50_ms.max(1e-9),
            r.recall_at_10
        );
    }
    if let Some(url) = store {
        print_store(url, &rows, &store_rows, queries);
    }
    Ok(ExitCode::SUCCESS)
}

/// The catalogue's rows, and per size the comparison the issue sets: query p50 against the
/// local HNSW's at the lowest ef_search that reaches recall@10 0.95 on each, and how four
/// clients scale.
fn print_store(
    url: &crate::search::CatalogueUrl,
    local: &[SearchBenchRow],
    pg: &[super::search_store::StoreBenchRow],
    queries: usize,
) {
    println!(
        "\nPostgreSQL + pgvector at {} (HNSW vector_cosine_ops, m=16, ef_construction=64; {queries} queries per client; 1 and 4 clients)",
        url.masked()
    );
    println!(
        "{:>9} {:>4} {:>9} {:>11} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "vectors", "ef", "build s", "build vec/s", "p50", "p99", "recall@10", "QPS 1", "QPS 4"
    );
    for r in pg {
        println!(
            "{:>9} {:>4} {:>9.1} {:>11.0} {:>9.3}ms {:>9.3}ms {:>9.3} {:>9.0} {:>9.0}",
            r.vectors,
            r.ef_search,
            r.build_s,
            r.build_vectors_per_s,
            r.p50_ms,
            r.p99_ms,
            r.recall_at_10,
            r.qps_1,
            r.qps_4
        );
    }
    let mut sizes: Vec<usize> = pg.iter().map(|r| r.vectors).collect();
    sizes.dedup();
    for n in sizes {
        let l = local
            .iter()
            .find(|r| r.vectors == n && r.recall_at_10 >= 0.95);
        let p = pg.iter().find(|r| r.vectors == n && r.recall_at_10 >= 0.95);
        match (l, p) {
            (Some(l), Some(p)) => println!(
                "{n} vectors at recall@10 >= 0.95: PostgreSQL p50 {:.3} ms (ef {}) = {:.2}x the local HNSW's {:.3} ms (ef {}) (target <= 5x); 4 clients {:.2}x one client's QPS (target >= 2.5x)",
                p.p50_ms,
                p.ef_search,
                p.p50_ms / l.hnsw_p50_ms.max(1e-9),
                l.hnsw_p50_ms,
                l.ef_search,
                p.qps_4 / p.qps_1.max(1e-9)
            ),
            _ => println!(
                "{n} vectors: recall@10 0.95 not reached at the ef_search values measured (local {}, PostgreSQL {})",
                l.is_some(),
                p.is_some()
            ),
        }
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("arvis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
