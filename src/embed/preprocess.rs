//! CLIP image preprocessing, as Hugging Face's `CLIPImageProcessor` does it: shortest side to 224
//! (Pillow bicubic), centre crop 224×224, ×1/255, normalise with CLIP's mean and std, CHW.

use image::RgbImage;

use crate::preprocess::{Filter, resize_rgb};

/// CLIP's input side in pixels.
pub const CLIP_INPUT_PX: u32 = 224;
/// Per-channel mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// Per-channel standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// Version of this preprocessing, stored with every index: embeddings made by different
/// preprocessing are never mixed in one index.
pub const CLIP_PREPROCESS_VERSION: u32 = 1;
/// Longest aspect ratio resized whole; longer images are centre-cropped to it first.
const MAX_ASPECT: u32 = 8;
/// Floats in one preprocessed image.
pub const CLIP_TENSOR_LEN: usize = 3 * (CLIP_INPUT_PX * CLIP_INPUT_PX) as usize;

/// Size after "shortest side to 224" (the long side truncated, as HF computes it).
pub fn clip_resize_dims(width: u32, height: u32) -> (u32, u32) {
    let (w, h) = (u64::from(width.max(1)), u64::from(height.max(1)));
    let side = u64::from(CLIP_INPUT_PX);
    if w <= h {
        (CLIP_INPUT_PX, ((side * h) / w).max(side) as u32)
    } else {
        (((side * w) / h).max(side) as u32, CLIP_INPUT_PX)
    }
}

/// Preprocess `image` into `out` (length [`CLIP_TENSOR_LEN`], CHW).
pub fn clip_preprocess_into(image: &RgbImage, out: &mut [f32]) {
    debug_assert_eq!(out.len(), CLIP_TENSOR_LEN);
    // The centre crop only ever sees the middle of a very elongated image, and resizing all of it
    // would allocate without bound (a 1×5000 crop becomes 224×1,120,000): cut it to 8:1 first.
    // Identical to HF for every aspect ratio up to 8:1.
    let (w, h) = image.dimensions();
    let limited;
    let image = if w > MAX_ASPECT * h.max(1) || h > MAX_ASPECT * w.max(1) {
        let (cw, ch) = (w.min(MAX_ASPECT * h.max(1)), h.min(MAX_ASPECT * w.max(1)));
        limited = image::imageops::crop_imm(image, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
        &limited
    } else {
        image
    };
    let (rw, rh) = clip_resize_dims(image.width(), image.height());
    let resized = resize_rgb(image, rw, rh, Filter::Bicubic);
    let left = ((rw - CLIP_INPUT_PX) / 2) as usize;
    let top = ((rh - CLIP_INPUT_PX) / 2) as usize;
    let side = CLIP_INPUT_PX as usize;
    let plane = side * side;
    let raw = resized.as_raw();
    let stride = rw as usize * 3;
    for y in 0..side {
        let row = &raw[(top + y) * stride + left * 3..(top + y) * stride + (left + side) * 3];
        for (x, px) in row.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // HF rescales in f64 then casts to f32, then normalises in f32.
                let v = (f64::from(px[c]) * (1.0 / 255.0)) as f32;
                out[c * plane + y * side + x] = (v - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
}

/// Cut the region `[x1, y1, x2, y2]` (image pixels) out of `image`, at least 1×1 and inside it.
pub fn crop_region(image: &RgbImage, bbox: [f32; 4]) -> RgbImage {
    let (w, h) = image.dimensions();
    let x1 = (bbox[0].floor().max(0.0) as u32).min(w.saturating_sub(1));
    let y1 = (bbox[1].floor().max(0.0) as u32).min(h.saturating_sub(1));
    let x2 = (bbox[2].ceil().max(0.0) as u32).clamp(x1 + 1, w.max(x1 + 1));
    let y2 = (bbox[3].ceil().max(0.0) as u32).clamp(y1 + 1, h.max(y1 + 1));
    image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_dims_follow_hf() {
        assert_eq!(clip_resize_dims(810, 1080), (224, 298));
        assert_eq!(clip_resize_dims(1280, 720), (398, 224));
        assert_eq!(clip_resize_dims(500, 500), (224, 224));
    }

    #[test]
    fn extreme_aspect_ratios_do_not_allocate_without_bound() {
        let img = RgbImage::from_pixel(2, 20_000, image::Rgb([200, 10, 10]));
        let mut out = vec![0.0; CLIP_TENSOR_LEN];
        clip_preprocess_into(&img, &mut out);
        let red = (200.0 / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        assert!((out[0] - red).abs() < 1e-5);
    }

    #[test]
    fn crops_stay_inside_the_image() {
        let img = RgbImage::new(100, 50);
        assert_eq!(
            crop_region(&img, [10.2, 5.7, 20.1, 30.0]).dimensions(),
            (11, 25)
        );
        assert_eq!(
            crop_region(&img, [-20.0, -5.0, 500.0, 500.0]).dimensions(),
            (100, 50)
        );
        assert_eq!(
            crop_region(&img, [99.5, 49.5, 99.6, 49.6]).dimensions(),
            (1, 1)
        );
        assert_eq!(
            crop_region(&img, [300.0, 300.0, 400.0, 400.0]).dimensions(),
            (1, 1)
        );
    }
}
