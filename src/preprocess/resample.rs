//! Image resampling that reproduces Pillow's `Image.resize` bit for bit (8-bit, two separable
//! passes, 22-bit fixed-point weights, antialiased when shrinking). The reference detections and
//! CLIP's preprocessing were both produced with Pillow, so matching it removes a source of drift.

use image::RgbImage;

/// Resampling filter, as Pillow defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow `BILINEAR` (triangle, support 1).
    Bilinear,
    /// Pillow `BICUBIC` (Keys cubic with a = -0.5, support 2).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, and fixed-point weights (padded to `ksize`).
struct Coeffs {
    ksize: usize,
    starts: Vec<usize>,
    counts: Vec<usize>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[in0, in1)` of an `in_size` axis.
fn precompute(in_size: usize, in0: f64, in1: f64, out_size: usize, filter: Filter) -> Coeffs {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut starts = Vec::with_capacity(out_size);
    let mut counts = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero; the clamps make that equal to floor here.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(count) {
            *w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *w;
        }
        for x in 0..count {
            let w = if total != 0.0 { k[x] / total } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        starts.push(xmin);
        counts.push(count);
    }
    Coeffs {
        ksize,
        starts,
        counts,
        weights,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize an RGB8 image to `width`×`height` exactly as Pillow's `resize(..., box=None)` does.
pub fn resize_rgb(src: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) || out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return if (in_w, in_h) == (out_w, out_h) {
            src.clone()
        } else {
            RgbImage::new(width, height)
        };
    }
    let horiz = precompute(in_w, 0.0, in_w as f64, out_w, filter);
    let vert = precompute(in_h, 0.0, in_h as f64, out_h, filter);

    // Horizontal pass over just the rows the vertical pass will read (as Pillow does).
    let (row_first, row_last) = if out_h > 0 {
        let last = out_h - 1;
        (vert.starts[0], vert.starts[last] + vert.counts[last])
    } else {
        (0, 0)
    };
    let src_raw = src.as_raw();
    let temp_rows = row_last - row_first;
    let mut temp = vec![0u8; temp_rows * out_w * 3];
    if in_w != out_w {
        for (ty, temp_row) in temp.chunks_exact_mut(out_w * 3).enumerate() {
            let row = &src_raw[(ty + row_first) * in_w * 3..(ty + row_first + 1) * in_w * 3];
            for xx in 0..out_w {
                let start = horiz.starts[xx];
                let ks = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + horiz.counts[xx]];
                let px = &row[start * 3..(start + ks.len()) * 3];
                let half = 1i32 << (PRECISION_BITS - 1);
                let (mut r, mut g, mut b) = (half, half, half);
                for (w, p) in ks.iter().zip(px.chunks_exact(3)) {
                    r += i32::from(p[0]) * w;
                    g += i32::from(p[1]) * w;
                    b += i32::from(p[2]) * w;
                }
                temp_row[xx * 3] = clip8(r);
                temp_row[xx * 3 + 1] = clip8(g);
                temp_row[xx * 3 + 2] = clip8(b);
            }
        }
    } else {
        temp.copy_from_slice(&src_raw[row_first * in_w * 3..row_last * in_w * 3]);
    }
    if in_h == out_h {
        return RgbImage::from_raw(width, height, temp)
            .unwrap_or_else(|| RgbImage::new(width, height));
    }

    // Vertical pass: accumulate whole rows at once so the inner loop runs along memory.
    let stride = out_w * 3;
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        acc.fill(1i32 << (PRECISION_BITS - 1));
        let start = vert.starts[yy] - row_first;
        let ks = &vert.weights[yy * vert.ksize..yy * vert.ksize + vert.counts[yy]];
        for (i, &w) in ks.iter().enumerate() {
            let row = &temp[(start + i) * stride..(start + i + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(resize_rgb(&img, 5, 4, Filter::Bilinear), img);
    }

    #[test]
    fn flat_colour_stays_flat() {
        let img = RgbImage::from_pixel(97, 61, image::Rgb([10, 200, 99]));
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (w, h) in [(40, 25), (200, 150), (97, 30)] {
                let out = resize_rgb(&img, w, h, filter);
                assert!(
                    out.pixels().all(|p| p.0 == [10, 200, 99]),
                    "{filter:?} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            let c = precompute(1000, 0.0, 1000.0, 333, filter);
            for i in 0..333 {
                let s: i32 = c.weights[i * c.ksize..i * c.ksize + c.counts[i]]
                    .iter()
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= c.ksize as i32,
                    "{filter:?} {i}: {s}"
                );
            }
        }
    }

    #[test]
    fn matches_pillow_on_a_known_gradient() {
        // Reference from Pillow 13.0: Image.frombytes('RGB',(8,1),bytes(range(24))).resize((3,1), BILINEAR)
        let img = RgbImage::from_raw(8, 1, (0u8..24).collect()).expect("8x1 RGB");
        let out = resize_rgb(&img, 3, 1, Filter::Bilinear);
        assert_eq!(out.as_raw(), &[3, 4, 5, 11, 12, 13, 18, 19, 20]);
    }
}
