//! Ultralytics letterbox: scale the long side to the model size, centre, pad with grey 114.

use glam::{Affine2, Vec2};
use image::RgbImage;

use crate::preprocess::{Filter, resize_rgb};

/// Grey used for padding, as in Ultralytics.
pub const PAD_VALUE: u8 = 114;

/// The geometry of one letterboxed image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Model input width and height.
    pub model_size: (u32, u32),
    /// Source image width and height.
    pub image_size: (u32, u32),
    /// Size of the resized image inside the model input.
    pub resized: (u32, u32),
    /// Left and top padding in model pixels.
    pub pad: (u32, u32),
    /// Model pixels per image pixel.
    pub scale: f32,
}

/// Python's `round` (half to even), as Ultralytics' arithmetic uses it.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

impl Letterbox {
    /// Geometry for an image of `image_size` fed to a model of `model_size`.
    pub fn new(image_size: (u32, u32), model_size: (u32, u32)) -> Letterbox {
        let (w, h) = (
            f64::from(image_size.0.max(1)),
            f64::from(image_size.1.max(1)),
        );
        let (mw, mh) = (f64::from(model_size.0), f64::from(model_size.1));
        let r = (mw / w).min(mh / h);
        let new_w = (round_half_even(w * r) as u32).clamp(1, model_size.0);
        let new_h = (round_half_even(h * r) as u32).clamp(1, model_size.1);
        let dw = (mw - f64::from(new_w)) / 2.0;
        let dh = (mh - f64::from(new_h)) / 2.0;
        let left = round_half_even(dw - 0.1).max(0.0) as u32;
        let top = round_half_even(dh - 0.1).max(0.0) as u32;
        Letterbox {
            model_size,
            image_size,
            resized: (new_w, new_h),
            pad: (left, top),
            scale: r as f32,
        }
    }

    /// Map model-input pixels back to source-image pixels (undo pad, then scale).
    pub fn image_from_model(&self) -> Affine2 {
        // One gain for both axes, as Ultralytics' scale_boxes does.
        Affine2::from_scale(Vec2::splat(1.0 / self.scale))
            * Affine2::from_translation(-Vec2::new(self.pad.0 as f32, self.pad.1 as f32))
    }

    /// Resize `image` and write it as planar RGB floats in [0, 1] (NCHW, batch 1) into `out`.
    pub fn fill_nchw(&self, image: &RgbImage, out: &mut [f32]) {
        let (mw, mh) = (self.model_size.0 as usize, self.model_size.1 as usize);
        let plane = mw * mh;
        debug_assert_eq!(out.len(), 3 * plane);
        let resized = resize_rgb(image, self.resized.0, self.resized.1, Filter::Bilinear);
        let pad = f32::from(PAD_VALUE) / 255.0;
        let (rw, rh) = (self.resized.0 as usize, self.resized.1 as usize);
        let (left, top) = (self.pad.0 as usize, self.pad.1 as usize);
        let src = resized.as_raw();
        let (r_plane, rest) = out.split_at_mut(plane);
        let (g_plane, b_plane) = rest.split_at_mut(plane);
        // Padding only where the image is not: every value is written exactly once.
        for p in [&mut *r_plane, &mut *g_plane, &mut *b_plane] {
            p[..top * mw].fill(pad);
            p[(top + rh) * mw..].fill(pad);
            for y in top..top + rh {
                p[y * mw..y * mw + left].fill(pad);
                p[y * mw + left + rw..(y + 1) * mw].fill(pad);
            }
        }
        for y in 0..rh {
            let row = &src[y * rw * 3..(y + 1) * rw * 3];
            let base = (y + top) * mw + left;
            let r = &mut r_plane[base..base + rw];
            let g = &mut g_plane[base..base + rw];
            let b = &mut b_plane[base..base + rw];
            for (x, px) in row.chunks_exact(3).enumerate() {
                r[x] = f32::from(px[0]) * (1.0 / 255.0);
                g[x] = f32::from(px[1]) * (1.0 / 255.0);
                b[x] = f32::from(px[2]) * (1.0 / 255.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_geometry_matches_ultralytics() {
        // 810x1080 → r = 640/1080; 480x640, padded 80 px left and right.
        let lb = Letterbox::new((810, 1080), (640, 640));
        assert_eq!(lb.resized, (480, 640));
        assert_eq!(lb.pad, (80, 0));
        let p = lb.image_from_model().transform_point2(Vec2::new(80.0, 0.0));
        assert!(p.abs_diff_eq(Vec2::ZERO, 1e-4));
        let p = lb
            .image_from_model()
            .transform_point2(Vec2::new(560.0, 640.0));
        assert!(p.abs_diff_eq(Vec2::new(810.0, 1080.0), 1e-3));
    }

    #[test]
    fn odd_padding_rounds_like_ultralytics() {
        // 1280x720 → 640x360, dh = 140 exactly.
        let lb = Letterbox::new((1280, 720), (640, 640));
        assert_eq!((lb.resized, lb.pad), ((640, 360), (0, 140)));
        // 773x512 → 640x424 (423.9 rounds up), dh = 108.
        let lb = Letterbox::new((773, 512), (640, 640));
        assert_eq!((lb.resized, lb.pad), ((640, 424), (0, 108)));
    }

    #[test]
    fn tiny_and_extreme_aspect_images_stay_inside_the_input() {
        for size in [(1, 1), (1, 5000), (5000, 1), (3, 2)] {
            let lb = Letterbox::new(size, (640, 640));
            assert!(
                lb.resized.0 + lb.pad.0 <= 640 && lb.resized.1 + lb.pad.1 <= 640,
                "{size:?}"
            );
            let img = RgbImage::new(size.0, size.1);
            let mut out = vec![0.0; 3 * 640 * 640];
            lb.fill_nchw(&img, &mut out);
        }
    }

    #[test]
    fn padding_is_grey_114_and_pixels_are_scaled() {
        let img = RgbImage::from_pixel(64, 32, image::Rgb([255, 0, 51]));
        let lb = Letterbox::new((64, 32), (64, 64));
        let mut out = vec![0.0; 3 * 64 * 64];
        lb.fill_nchw(&img, &mut out);
        assert_eq!(lb.pad, (0, 16));
        assert!((out[0] - 114.0 / 255.0).abs() < 1e-6, "top-left is padding");
        let centre = 32 * 64 + 32;
        assert!((out[centre] - 1.0).abs() < 1e-6);
        assert!(out[64 * 64 + centre].abs() < 1e-6);
        assert!((out[2 * 64 * 64 + centre] - 0.2).abs() < 1e-6);
    }

    #[test]
    fn every_value_outside_the_image_is_padding_and_inside_is_not() {
        // Tall and wide images (left/right and top/bottom padding); buffers start dirty.
        for (w, h) in [(30, 64), (64, 30), (63, 17)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([0, 0, 0]));
            let lb = Letterbox::new((w, h), (64, 64));
            let mut out = vec![-1.0; 3 * 64 * 64];
            lb.fill_nchw(&img, &mut out);
            let pad = 114.0 / 255.0;
            let (rw, rh) = (lb.resized.0 as usize, lb.resized.1 as usize);
            let (left, top) = (lb.pad.0 as usize, lb.pad.1 as usize);
            for c in 0..3 {
                for y in 0..64 {
                    for x in 0..64 {
                        let v = out[c * 64 * 64 + y * 64 + x];
                        let inside = (left..left + rw).contains(&x) && (top..top + rh).contains(&y);
                        let want = if inside { 0.0 } else { pad };
                        assert!((v - want).abs() < 1e-6, "{w}x{h} c{c} ({x},{y}) = {v}");
                    }
                }
            }
        }
    }
}
