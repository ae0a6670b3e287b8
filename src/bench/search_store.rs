//! `arvis bench search --store postgres://…`: the same vectors and queries as the local HNSW
//! rows, loaded into a catalogue of the bench's own on that server through the store arvis uses
//! (batched, committed inserts into an HNSW-indexed `vector` column), then searched at several
//! `ef_search` with 1 and 4 concurrent clients. The catalogue is dropped afterwards.

use std::time::Instant;

use serde::Serialize;

use super::stats::percentile;
use crate::search::GalleryStore;
use crate::search::catalogue::{Access, CatalogueUrl, PgCatalogue, connect};
use crate::search::index::{IndexMeta, NewItem};

/// Rows per committed insert batch while loading.
const LOAD_BATCH: usize = 1000;

/// One (size, ef_search) measured on the server.
#[derive(Debug, Serialize)]
pub struct StoreBenchRow {
    /// `postgres`.
    pub store: &'static str,
    pub vectors: usize,
    pub ef_search: u32,
    pub build_s: f64,
    pub build_vectors_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub recall_at_10: f64,
    /// Queries per second, one client.
    pub qps_1: f64,
    /// Queries per second, all four clients together.
    pub qps_4: f64,
}

/// The bench's own catalogue on `url`'s server, named after this process.
fn bench_url(url: &CatalogueUrl, ef: u32) -> CatalogueUrl {
    let mut u = url.clone();
    u.schema = format!("arvis_bench_{}", std::process::id());
    u.ef_search = ef;
    u
}

/// Load `matrix` (row i is vector i) and measure `queries` against `truths` (the exact top-10
/// keys of each query).
pub fn bench_catalogue(
    url: &CatalogueUrl,
    matrix: &[f32],
    dim: usize,
    queries: &[f32],
    truths: &[Vec<u64>],
) -> anyhow::Result<Vec<StoreBenchRow>> {
    let n = matrix.len() / dim;
    let meta = IndexMeta {
        model_id: "bench:synthetic-clustered".into(),
        preprocess_version: 0,
        dim,
        clip_family: None,
    };
    let load_url = bench_url(url, 40);
    let dropped = || -> anyhow::Result<()> {
        let mut db = connect(&load_url)?;
        db.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            load_url.schema
        ))?;
        Ok(())
    };
    dropped()?;
    let result: anyhow::Result<Vec<StoreBenchRow>> = (|| {
        let t = Instant::now();
        let mut store = PgCatalogue::open(&load_url, Access::Create(&meta))?;
        for (b, rows) in matrix.chunks(LOAD_BATCH * dim).enumerate() {
            let batch: Vec<NewItem> = rows
                .chunks_exact(dim)
                .enumerate()
                .map(|(j, v)| {
                    let i = b * LOAD_BATCH + j;
                    NewItem {
                        path: format!("/bench/{i}").into(),
                        size: 0,
                        mtime_ns: 0,
                        embedding: v.to_vec(),
                        thumbnail: Vec::new(),
                        label: Some(format!("v{i}")),
                        sha256: Some(format!("bench-{i:09}")),
                    }
                })
                .collect();
            store.upsert_batch(&batch)?;
        }
        let build_s = t.elapsed().as_secs_f64();
        let mut rows = Vec::new();
        for ef in [40u32, 64, 100, 200] {
            let url = bench_url(url, ef);
            let one = run_clients(&url, &meta, queries, dim, truths, 1)?;
            let four = run_clients(&url, &meta, queries, dim, truths, 4)?;
            let (mut latencies, recall) = (one.latencies_ms, one.recall);
            rows.push(StoreBenchRow {
                store: "postgres",
                vectors: n,
                ef_search: ef,
                build_s,
                build_vectors_per_s: n as f64 / build_s,
                p50_ms: percentile(&mut latencies, 0.5),
                p99_ms: percentile(&mut latencies, 0.99),
                recall_at_10: recall,
                qps_1: one.qps,
                qps_4: four.qps,
            });
        }
        Ok(rows)
    })();
    let cleaned = dropped();
    let rows = result?;
    cleaned?;
    Ok(rows)
}

struct ClientRun {
    latencies_ms: Vec<f64>,
    recall: f64,
    qps: f64,
}

/// `clients` connections at once, each running every query (so each client's work is the
/// one-client run's): aggregate queries per second over the wall time.
fn run_clients(
    url: &CatalogueUrl,
    meta: &IndexMeta,
    queries: &[f32],
    dim: usize,
    truths: &[Vec<u64>],
    clients: usize,
) -> anyhow::Result<ClientRun> {
    let mut stores = (0..clients)
        .map(|_| PgCatalogue::open(url, Access::Read(meta)))
        .collect::<Result<Vec<_>, _>>()?;
    // One warm-up pass, so that the first client does not pay for reading the index from disk.
    for q in queries.chunks_exact(dim).take(20) {
        stores[0].search(q, 10, false)?;
    }
    let t = Instant::now();
    let runs = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter_mut()
            .map(|store| {
                s.spawn(move || -> anyhow::Result<(Vec<f64>, f64)> {
                    let (mut latencies, mut recall) = (Vec::new(), 0.0);
                    for (q, truth) in queries.chunks_exact(dim).zip(truths) {
                        let t = Instant::now();
                        let hits = store.search(q, 10, false)?;
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                        let found = hits
                            .iter()
                            .filter_map(|h| h.path.strip_prefix("/bench/")?.parse::<u64>().ok())
                            .filter(|k| truth.contains(k))
                            .count();
                        recall += found as f64 / truth.len().max(1) as f64;
                    }
                    Ok((latencies, recall / truths.len().max(1) as f64))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a bench client panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let wall = t.elapsed().as_secs_f64();
    let total = (queries.len() / dim * clients) as f64;
    let (latencies, recall) = runs.into_iter().next().unwrap_or_default();
    Ok(ClientRun {
        latencies_ms: latencies,
        recall,
        qps: total / wall.max(1e-9),
    })
}
