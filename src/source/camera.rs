//! Cameras through nokhwa. The format is negotiated explicitly (MJPEG or YUYV preferred, the
//! resolution nearest 1280×720, the highest rate up to 30 fps) and frames are decoded by arvis
//! itself with size checks, so a glitching device yields an error, never a panic.

use std::sync::Arc;

use image::RgbImage;
use nokhwa::Camera;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
};

use super::image::{DecodeLimits, decode_image_bytes};
use super::pixels::{nv12_to_rgb, yuyv_to_rgb};
use super::stream::{Frame, FrameSource, SourceError, SourceInfo, SourceKind};

/// A camera the system lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraDevice {
    /// The index `camera:N` opens.
    pub index: u32,
    /// The name the system gives it.
    pub name: String,
}

/// The cameras present now (an empty list when there are none or the backend is unavailable).
pub fn list() -> Vec<CameraDevice> {
    nokhwa::query(ApiBackend::Auto)
        .map(|cams| {
            cams.iter()
                .enumerate()
                .map(|(i, c)| CameraDevice {
                    index: c.index().as_index().unwrap_or(i as u32),
                    name: c.human_name(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Preference order for the negotiated format: lower is better.
fn rank(f: &CameraFormat) -> (u8, u64, u32) {
    let codec = match f.format() {
        FrameFormat::MJPEG => 0,
        FrameFormat::YUYV => 1,
        FrameFormat::NV12 => 2,
        _ => 3,
    };
    let pixels = i64::from(f.width()) * i64::from(f.height());
    let distance = (pixels - 1280 * 720).unsigned_abs();
    let rate_penalty = 30u32.abs_diff(f.frame_rate().min(30));
    (codec, distance, rate_penalty)
}

/// Choose the format to ask for from what the device offers.
pub fn negotiate(offered: &[CameraFormat]) -> Option<CameraFormat> {
    offered
        .iter()
        .filter(|f| {
            matches!(
                f.format(),
                FrameFormat::MJPEG | FrameFormat::YUYV | FrameFormat::NV12
            ) && f.width() > 0
                && f.height() > 0
        })
        .min_by_key(|f| rank(f))
        .copied()
}

/// A camera delivering RGB frames.
pub struct CameraSource {
    index: u32,
    camera: Camera,
    format: CameraFormat,
    info: SourceInfo,
    next_index: u64,
    started: std::time::Instant,
}

impl CameraSource {
    /// Open camera `index` at its best format.
    pub fn open(index: u32) -> Result<CameraSource, SourceError> {
        let err = |message: String| SourceError::Camera { index, message };
        let devices = list();
        if devices.is_empty() {
            return Err(SourceError::NoCamera);
        }
        let name = devices
            .iter()
            .find(|d| d.index == index)
            .map(|d| d.name.clone())
            .ok_or_else(|| {
                err(format!(
                    "not present (cameras: {})",
                    devices
                        .iter()
                        .map(|d| format!("{}: {}", d.index, d.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let mut camera = Camera::new(
            CameraIndex::Index(index),
            RequestedFormat::new::<RgbFormat>(RequestedFormatType::None),
        )
        .map_err(|e| err(e.to_string()))?;
        let offered = camera
            .compatible_camera_formats()
            .map_err(|e| err(format!("listing formats: {e}")))?;
        let wanted = negotiate(&offered).ok_or_else(|| {
            err(format!(
                "offers no format arvis can decode (MJPEG, YUYV, NV12): {offered:?}"
            ))
        })?;
        camera
            .set_camera_requset(RequestedFormat::new::<RgbFormat>(
                RequestedFormatType::Exact(wanted),
            ))
            .map_err(|e| err(format!("setting {wanted}: {e}")))?;
        camera
            .open_stream()
            .map_err(|e| err(format!("starting the stream: {e}")))?;
        // The driver may adjust the request: report what it actually runs.
        let format = camera.camera_format();
        Ok(CameraSource {
            index,
            info: SourceInfo {
                kind: SourceKind::Camera,
                name,
                width: format.width(),
                height: format.height(),
                fps: Some(f64::from(format.frame_rate())),
                format: format!(
                    "{} {}×{} @ {} fps",
                    format.format(),
                    format.width(),
                    format.height(),
                    format.frame_rate()
                ),
                duration_ms: None,
            },
            camera,
            format,
            next_index: 0,
            started: std::time::Instant::now(),
        })
    }

    fn decode(&self, bytes: &[u8]) -> Result<RgbImage, String> {
        let (w, h) = (self.format.width(), self.format.height());
        match self.format.format() {
            FrameFormat::MJPEG => decode_image_bytes(bytes, DecodeLimits::default())
                .map_err(|e| format!("bad MJPEG frame: {e}")),
            FrameFormat::YUYV => yuyv_to_rgb(bytes, w, h),
            FrameFormat::NV12 => nv12_to_rgb(bytes, w, h),
            other => Err(format!("unsupported frame format {other}")),
        }
    }
}

impl FrameSource for CameraSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let buffer = self.camera.frame().map_err(|e| SourceError::Camera {
            index: self.index,
            message: format!("capture failed: {e}"),
        })?;
        let image = self
            .decode(buffer.buffer())
            .map_err(|message| SourceError::Camera {
                index: self.index,
                message,
            })?;
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(Frame {
            image: Arc::new(image),
            pts_ms: Some(self.started.elapsed().as_secs_f64() * 1e3),
            index,
        }))
    }
}

impl Drop for CameraSource {
    fn drop(&mut self) {
        // Releasing an unplugged device can fail; nothing else to do about it here.
        let _ = self.camera.stop_stream();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokhwa::utils::Resolution;

    fn fmt(f: FrameFormat, w: u32, h: u32, fps: u32) -> CameraFormat {
        CameraFormat::new(Resolution::new(w, h), f, fps)
    }

    #[test]
    fn negotiation_prefers_mjpeg_near_720p_at_30() {
        let offered = [
            fmt(FrameFormat::YUYV, 1280, 720, 10),
            fmt(FrameFormat::MJPEG, 1920, 1080, 30),
            fmt(FrameFormat::MJPEG, 1280, 720, 30),
            fmt(FrameFormat::MJPEG, 1280, 720, 15),
            fmt(FrameFormat::GRAY, 1280, 720, 30),
        ];
        assert_eq!(negotiate(&offered), Some(offered[2]));
        let yuyv_only = [
            fmt(FrameFormat::YUYV, 640, 480, 30),
            fmt(FrameFormat::YUYV, 1280, 720, 10),
        ];
        assert_eq!(negotiate(&yuyv_only), Some(yuyv_only[1]));
        assert_eq!(negotiate(&[fmt(FrameFormat::RAWRGB, 640, 480, 30)]), None);
    }

    #[test]
    fn yuyv_decodes_and_rejects_short_buffers() {
        // Two pixels of mid grey and white-ish.
        let img = yuyv_to_rgb(&[126, 128, 235, 128], 2, 1).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        assert!(yuyv_to_rgb(&[0; 7], 2, 2).is_err());
        assert!(yuyv_to_rgb(&[0; 12], 3, 2).is_err());
        assert!(nv12_to_rgb(&[0; 5], 2, 2).is_err());
        assert_eq!(
            nv12_to_rgb(&[16; 6], 2, 2).unwrap().get_pixel(1, 1).0[1],
            135
        );
    }
}
