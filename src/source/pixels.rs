//! Raw camera pixel layouts to RGB. A buffer shorter than its size needs is an error, never a
//! read past its end (the converters take whatever bytes a driver hands over).

use image::RgbImage;

fn yuv_to_rgb(y: f32, u: f32, v: f32) -> [u8; 3] {
    // BT.601 limited range, as webcams send.
    let c = 1.164 * (y - 16.0);
    let (d, e) = (u - 128.0, v - 128.0);
    [
        (c + 1.596 * e).round().clamp(0.0, 255.0) as u8,
        (c - 0.392 * d - 0.813 * e).round().clamp(0.0, 255.0) as u8,
        (c + 2.017 * d).round().clamp(0.0, 255.0) as u8,
    ]
}

/// Packed 4:2:2 (Y0 U Y1 V) to RGB; a short buffer is an error, not a read past the end.
pub fn yuyv_to_rgb(bytes: &[u8], w: u32, h: u32) -> Result<RgbImage, String> {
    let need = w as usize * h as usize * 2;
    if w % 2 != 0 || bytes.len() < need {
        return Err(format!(
            "YUYV frame of {} bytes, expected {need} for {w}×{h}",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for px in bytes[..need].chunks_exact(4) {
        let (y0, u, y1, v) = (px[0], px[1], px[2], px[3]);
        out.extend_from_slice(&yuv_to_rgb(y0.into(), u.into(), v.into()));
        out.extend_from_slice(&yuv_to_rgb(y1.into(), u.into(), v.into()));
    }
    RgbImage::from_raw(w, h, out).ok_or_else(|| "short YUYV frame".into())
}

/// Planar Y + interleaved UV at half resolution to RGB.
pub fn nv12_to_rgb(bytes: &[u8], w: u32, h: u32) -> Result<RgbImage, String> {
    let (wu, hu) = (w as usize, h as usize);
    let need = wu * hu + wu * hu.div_ceil(2);
    if w % 2 != 0 || bytes.len() < need {
        return Err(format!(
            "NV12 frame of {} bytes, expected {need} for {w}×{h}",
            bytes.len()
        ));
    }
    let (luma, chroma) = bytes.split_at(wu * hu);
    let mut out = Vec::with_capacity(wu * hu * 3);
    for y in 0..hu {
        for x in 0..wu {
            let c = (y / 2) * wu + (x & !1);
            out.extend_from_slice(&yuv_to_rgb(
                luma[y * wu + x].into(),
                chroma[c].into(),
                chroma[c + 1].into(),
            ));
        }
    }
    RgbImage::from_raw(w, h, out).ok_or_else(|| "short NV12 frame".into())
}
