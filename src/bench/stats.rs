//! Summary statistics for benchmark samples.

use serde::Serialize;

/// Median and 95th percentile of a sample, in ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median_ms: f64,
    pub p95_ms: f64,
}

pub fn stat(samples: &[f64]) -> Stat {
    let mut s = samples.to_vec();
    Stat {
        median_ms: percentile(&mut s, 0.5),
        p95_ms: percentile(&mut s, 0.95),
    }
}

/// The `q` quantile (0 to 1) of `samples`, nearest rank; 0 for no samples.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples
        .get(((samples.len().saturating_sub(1)) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
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
