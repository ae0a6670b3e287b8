//! The gallery past the exact-scan limit (10,000 images), where queries go through the HNSW
//! graph: concurrent writers, the default search against `--exact`, and a stale graph file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// `n` small PNGs, each a distinct 4×4 grid of random colours (distinct embeddings even under
/// the tiny random-weight CLIP), named `{prefix}{i:05}.png` under `dir`.
fn synthetic_images(dir: &Path, prefix: &str, seed: u64, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n)
        .map(|i| {
            let colours: Vec<[u8; 3]> = (0..16)
                .map(|_| {
                    let v = next();
                    [v as u8, (v >> 8) as u8, (v >> 16) as u8]
                })
                .collect();
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb(colours[(y / 8 * 4 + x / 8) as usize])
            });
            let path = dir.join(format!("{prefix}{i:05}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

fn cmd(index: &Path) -> Command {
    let mut c = arvis();
    c.env("ARVIS_CLIP_MODEL", &clip_tiny().0)
        .env("ARVIS_INDEX", index);
    c
}

fn add(index: &Path, dir: &Path) -> Output {
    cmd(index).args(["index", "add"]).arg(dir).output().unwrap()
}

/// Rank-1 path of every query image (default search, or `--exact`), in two processes at once.
fn top_hits(index: &Path, queries: &[PathBuf], exact: bool) -> Vec<String> {
    let halves: Vec<&[PathBuf]> = queries.chunks(queries.len().div_ceil(2)).collect();
    let children: Vec<_> = halves
        .iter()
        .map(|chunk| {
            let mut c = cmd(index);
            c.args(["search", "--json", "-k", "1"]);
            if exact {
                c.arg("--exact");
            }
            c.args(chunk.iter())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut hits = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "search failed: {}", stderr(&out));
        for line in json_lines(&out) {
            let results = line["results"].as_array().expect("results");
            hits.push(
                results
                    .first()
                    .and_then(|r| r["path"].as_str())
                    .unwrap_or("(none)")
                    .to_string(),
            );
        }
    }
    assert_eq!(hits.len(), queries.len(), "one result line per query");
    hits
}

fn missed(queries: &[PathBuf], hits: &[String]) -> Vec<String> {
    queries
        .iter()
        .zip(hits)
        .filter(|(q, h)| q.canonicalize().unwrap().display().to_string() != **h)
        .map(|(q, h)| format!("{} -> {h}", q.display()))
        .collect()
}

#[test]
fn concurrent_adds_past_the_exact_limit_lose_no_image() {
    let root = tempfile::tempdir().unwrap();
    let index = root.path().join("index");
    let base = synthetic_images(&root.path().join("base"), "base", 1, 10_050);
    let out = add(&index, &root.path().join("base"));
    assert!(out.status.success(), "{}", stderr(&out));

    // Two writers at once (as the app's folder drop beside a terminal `index add`).
    let a = synthetic_images(&root.path().join("a"), "a", 2, 120);
    let b = synthetic_images(&root.path().join("b"), "b", 3, 120);
    let spawn = |dir: &str| {
        cmd(&index)
            .args(["index", "add"])
            .arg(root.path().join(dir))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn("a"), spawn("b"));
    for child in [ca, cb] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("indexed 120 image(s)"),
            "{}",
            stdout(&out)
        );
    }

    let all: Vec<PathBuf> = base.into_iter().chain(a).chain(b).collect();
    assert_eq!(all.len(), 10_290);
    // The default search (HNSW above 10,000) finds every image at rank 1, as --exact does.
    let hits = top_hits(&index, &all, false);
    let lost = missed(&all, &hits);
    assert!(
        lost.is_empty(),
        "{} of {} images not found first by the default search, e.g. {:?}",
        lost.len(),
        all.len(),
        &lost[..lost.len().min(5)]
    );
    let exact = top_hits(&index, &all[all.len() - 300..], true);
    assert!(missed(&all[all.len() - 300..], &exact).is_empty());
    // A huge -k is clamped to the index size (it used to abort inside usearch).
    let out = cmd(&index)
        .args(["search", "--json", "-k", "100000"])
        .arg(&all[0])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let n = json_lines(&out)[0]["results"].as_array().unwrap().len();
    assert!(n <= all.len() && n > 10_000, "{n} results for -k 100000");

    // A valid but older graph file (from before the last 240 adds) is rebuilt, never trusted.
    let graph = index.join("vectors.usearch");
    let older = root.path().join("older.usearch");
    std::fs::copy(&graph, &older).unwrap();
    let c = synthetic_images(&root.path().join("c"), "c", 4, 20);
    let out = add(&index, &root.path().join("c"));
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(&older, &graph).unwrap();
    // First by another user who may not write the gallery: the stale graph is rebuilt in memory
    // (it cannot be saved) and the search still answers, without changing any file.
    chmod_r("a+rX,go-w", root.path());
    let before = std::fs::read(&graph).unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = NobodyKit::new()
        .arvis(home.path())
        .args(["search", "--json", "-k", "1"])
        .arg(&c[0])
        .env("ARVIS_INDEX", &index)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json_lines(&out)[0]["results"][0]["path"].as_str().unwrap(),
        c[0].canonicalize().unwrap().display().to_string()
    );
    assert_eq!(
        std::fs::read(&graph).unwrap(),
        before,
        "a reader wrote the graph"
    );
    let hits = top_hits(&index, &c, false);
    assert!(missed(&c, &hits).is_empty(), "{hits:?}");
}
