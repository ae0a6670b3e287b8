//! Approximate nearest neighbours (usearch HNSW, cosine, f16 storage) and exact search.

use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// One neighbour: key and cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    /// The item's key.
    pub key: u64,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// Why the ANN structure failed.
#[derive(Debug, thiserror::Error)]
#[error("vector index: {0}")]
pub struct AnnError(pub String);

fn err(e: impl std::fmt::Display) -> AnnError {
    AnnError(e.to_string())
}

/// An HNSW graph over unit vectors.
pub struct Ann {
    index: Index,
    dim: usize,
}

impl Ann {
    /// An empty index for `dim`-dimensional vectors.
    pub fn new(dim: usize) -> Result<Ann, AnnError> {
        let options = IndexOptions {
            dimensions: dim,
            metric: MetricKind::Cos,
            quantization: ScalarKind::F16,
            connectivity: 16,
            expansion_add: 128,
            // 128 keeps recall@10 ≥ 0.99 up to 1M vectors (ef 64 fell to 0.92–0.97 there) for
            // ~0.3 ms more per query: `arvis bench search` sweeps it (docs/PERFORMANCE.md).
            expansion_search: 128,
            multi: false,
        };
        Ok(Ann {
            index: Index::new(&options).map_err(err)?,
            dim,
        })
    }

    /// Load a saved index; it must hold `dim`-dimensional vectors.
    pub fn load(path: &Path, dim: usize) -> Result<Ann, AnnError> {
        let ann = Ann::new(dim)?;
        ann.index.load(&path.to_string_lossy()).map_err(err)?;
        if ann.index.dimensions() != dim {
            return Err(AnnError(format!(
                "{} holds {}-d vectors, expected {dim}",
                path.display(),
                ann.index.dimensions()
            )));
        }
        Ok(ann)
    }

    /// Vectors in the graph.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// Whether the graph holds no vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Insert (or replace) a vector.
    pub fn upsert(&mut self, key: u64, vector: &[f32]) -> Result<(), AnnError> {
        if vector.len() != self.dim {
            return Err(AnnError(format!(
                "vector has {} dimensions, index has {}",
                vector.len(),
                self.dim
            )));
        }
        if self.index.contains(key) {
            self.index.remove(key).map_err(err)?;
        }
        if self.index.size() + 1 > self.index.capacity() {
            let grow = (self.index.capacity() * 2).max(1024);
            self.index.reserve(grow).map_err(err)?;
        }
        self.index.add(key, vector).map_err(err)
    }

    /// Bulk-insert `keys` with row-major `matrix` using `threads` threads (for large builds).
    pub fn add_parallel(
        &mut self,
        keys: &[u64],
        matrix: &[f32],
        threads: usize,
    ) -> Result<(), AnnError> {
        let threads = threads.max(1);
        self.index
            .reserve_capacity_and_threads(self.index.size() + keys.len(), threads)
            .map_err(err)?;
        let dim = self.dim;
        let index = &self.index;
        let chunk = keys.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = keys
                .chunks(chunk)
                .zip(matrix.chunks(chunk * dim))
                .map(|(ks, vs)| {
                    scope.spawn(move || -> Result<(), AnnError> {
                        for (k, v) in ks.iter().zip(vs.chunks_exact(dim)) {
                            index.add(*k, v).map_err(err)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| AnnError("an insert thread panicked".into()))?
            })
        })
    }

    /// Remove the vector stored under `key`.
    pub fn remove(&mut self, key: u64) -> Result<(), AnnError> {
        self.index.remove(key).map(|_| ()).map_err(err)
    }

    /// Candidates examined per query (HNSW's ef_search): higher is slower and more exact.
    pub fn set_expansion_search(&self, ef: usize) {
        self.index.change_expansion_search(ef);
    }

    /// The `k` nearest neighbours of a unit query.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbour>, AnnError> {
        let m = self.index.search(query, k).map_err(err)?;
        Ok(m.keys
            .iter()
            .zip(&m.distances)
            .map(|(&key, &d)| Neighbour {
                key,
                score: 1.0 - d,
            })
            .collect())
    }

    /// Save to `path` atomically (temp file, fsync, rename, fsync the directory) and return the
    /// sha256 of the bytes saved.
    pub fn save_atomic(&self, path: &Path) -> Result<String, AnnError> {
        let (tmp, sha) = self.save_temp(path)?;
        crate::util::fsync_and_rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })?;
        Ok(sha)
    }

    /// Save to a temporary file beside `path` (`vectors.tmp-PID`) and return it with the sha256
    /// of its bytes, taken before any rename: it describes this graph's file even if another
    /// process replaces the file afterwards. A failed save leaves no temp file behind.
    pub fn save_temp(&self, path: &Path) -> Result<(std::path::PathBuf, String), AnnError> {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let result = self
            .index
            .save(&tmp.to_string_lossy())
            .map_err(err)
            .and_then(|()| crate::util::sha256_file(&tmp).map_err(err));
        match result {
            Ok(sha) => Ok((tmp, sha)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

/// Exact cosine top-k over unit vectors stored back to back in `matrix`.
pub fn exact_search(
    matrix: &[f32],
    keys: &[u64],
    dim: usize,
    query: &[f32],
    k: usize,
) -> Vec<Neighbour> {
    let mut scored: Vec<Neighbour> = matrix
        .chunks_exact(dim)
        .zip(keys)
        .map(|(v, &key)| Neighbour {
            key,
            score: v.iter().zip(query).map(|(a, b)| a * b).sum(),
        })
        .collect();
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(k - 1, |a, b| b.score.total_cmp(&a.score));
    scored.truncate(k);
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn exact_search_ranks_by_cosine() {
        let vs = [
            unit(&[1.0, 0.0, 0.0]),
            unit(&[0.7, 0.7, 0.0]),
            unit(&[0.0, 0.0, 1.0]),
        ];
        let matrix: Vec<f32> = vs.iter().flatten().copied().collect();
        let hits = exact_search(&matrix, &[10, 20, 30], 3, &unit(&[1.0, 0.1, 0.0]), 2);
        assert_eq!(hits.iter().map(|h| h.key).collect::<Vec<_>>(), vec![10, 20]);
        assert!(hits[0].score > 0.99);
        assert_eq!(exact_search(&matrix, &[10, 20, 30], 3, &vs[0], 10).len(), 3);
    }

    #[test]
    fn hnsw_recall_at_10_against_exact_is_high() {
        // Clustered unit vectors, like a gallery's embeddings; the bench measures 10k–1M.
        let (dim, n) = (64, 5000);
        let mut rng = crate::util::Rng(7);
        let centres: Vec<Vec<f32>> = (0..50).map(|_| unit(&rng.normals(dim, 1.0))).collect();
        let sample = |rng: &mut crate::util::Rng| {
            let c = &centres[(rng.next_u64() % 50) as usize];
            let noise = rng.normals(dim, 0.6 / (dim as f32).sqrt());
            unit(&c.iter().zip(noise).map(|(a, b)| a + b).collect::<Vec<_>>())
        };
        let matrix: Vec<f32> = (0..n).flat_map(|_| sample(&mut rng)).collect();
        let keys: Vec<u64> = (0..n as u64).collect();
        let mut ann = Ann::new(dim).expect("ann");
        ann.add_parallel(&keys, &matrix, 2).expect("build");
        assert_eq!(ann.len(), n);
        let mut recall = 0.0;
        for _ in 0..100 {
            let q = sample(&mut rng);
            let truth = exact_search(&matrix, &keys, dim, &q, 10);
            let approx = ann.search(&q, 10).expect("search");
            recall += approx
                .iter()
                .filter(|a| truth.iter().any(|t| t.key == a.key))
                .count() as f64
                / 10.0;
        }
        assert!(recall / 100.0 >= 0.95, "recall@10 = {}", recall / 100.0);
    }

    #[test]
    fn a_failed_save_leaves_no_temp_file_and_the_old_file_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ann = Ann::new(4).expect("ann");
        ann.upsert(1, &unit(&[1.0, 0.0, 0.0, 0.0])).expect("add");
        // The target is a non-empty directory: the temp file is written, the rename fails.
        let target = dir.path().join("vectors.usearch");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::write(target.join("keep"), b"x").expect("write");
        assert!(ann.save_atomic(&target).is_err());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["vectors.usearch"], "no temp file left: {names:?}");
        assert!(target.join("keep").exists());
    }

    #[test]
    fn ann_finds_inserted_vectors_and_survives_save_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ann = Ann::new(4).expect("ann");
        ann.upsert(1, &unit(&[1.0, 0.0, 0.0, 0.0])).expect("add");
        ann.upsert(2, &unit(&[0.0, 1.0, 0.0, 0.0])).expect("add");
        ann.upsert(2, &unit(&[0.0, 0.0, 1.0, 0.0]))
            .expect("replace");
        assert_eq!(ann.len(), 2);
        let path = dir.path().join("v.usearch");
        ann.save_atomic(&path).expect("save");
        let loaded = Ann::load(&path, 4).expect("load");
        let hits = loaded
            .search(&unit(&[0.0, 0.1, 1.0, 0.0]), 1)
            .expect("search");
        assert_eq!(hits[0].key, 2);
        assert!(
            Ann::load(&path, 8).is_err(),
            "dimension mismatch is refused"
        );
        std::fs::write(&path, b"garbage").expect("write");
        assert!(
            Ann::load(&path, 4).is_err(),
            "garbage is an error, not a panic"
        );
    }
}
