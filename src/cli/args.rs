//! Value parsers for numeric options: a value outside its meaning is refused with the valid
//! range, instead of silently giving junk (`--conf -1`), nothing (`--conf nan`) or a crash
//! (`-k 18446744073709551615`).

/// A finite number from 0 to 1 (confidence, IoU).
pub fn unit_interval(s: &str) -> Result<f32, String> {
    bounded(s, 0.0, 1.0)
}

/// A cosine similarity: a finite number from -1 to 1.
pub fn cosine(s: &str) -> Result<f32, String> {
    bounded(s, -1.0, 1.0)
}

fn bounded(s: &str, lo: f32, hi: f32) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number; give a value from {lo} to {hi}"))?;
    if !v.is_finite() || v < lo || v > hi {
        return Err(format!(
            "{s} is out of range; give a value from {lo} to {hi}"
        ));
    }
    Ok(v)
}

/// A whole number from 1 to `MAX`.
pub fn count<const MAX: usize>(s: &str) -> Result<usize, String> {
    let v: u128 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number; give one from 1 to {MAX}"))?;
    if v < 1 || v > MAX as u128 {
        return Err(format!(
            "{s} is out of range; give a number from 1 to {MAX}"
        ));
    }
    Ok(v as usize)
}

/// A duration in seconds: finite, above 0, at most a day.
#[cfg(feature = "video")]
pub fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(format!(
            "{s} is out of range; give seconds above 0, at most 86400"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_are_refused_with_the_range() {
        for bad in ["-1", "2", "nan", "inf", "-0.01", "x"] {
            let e = unit_interval(bad).expect_err(bad);
            assert!(e.contains("from 0 to 1"), "{e}");
        }
        assert_eq!(unit_interval("0"), Ok(0.0));
        assert_eq!(unit_interval("1"), Ok(1.0));
        assert_eq!(cosine("-1"), Ok(-1.0));
        assert!(cosine("1.5").is_err());
        for bad in ["0", "18446744073709551615", "-3", "1.5", "1001"] {
            let e = count::<1000>(bad).expect_err(bad);
            assert!(e.contains("from 1 to 1000"), "{e}");
        }
        assert_eq!(count::<1000>("1000"), Ok(1000));
    }
}
