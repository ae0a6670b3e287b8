//! One frame-source trait for cameras, video files and still images, so the live pipeline (and
//! its tests) drive them all the same way.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use super::image::{DecodeLimits, ImageLoadError, load_image};

/// One decoded frame.
#[derive(Clone)]
pub struct Frame {
    /// The pixels (shared: the pipeline passes frames on without copying).
    pub image: Arc<RgbImage>,
    /// Position in the media (None for cameras without timestamps).
    pub pts_ms: Option<f64>,
    /// Frame number within the source, from 0.
    pub index: u64,
}

/// What kind of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SourceKind {
    /// A camera.
    Camera,
    /// A video file.
    Video,
    /// A still image.
    Image,
    /// A network camera or stream (RTSP, HTTP, UDP, …).
    Stream,
}

/// What a source is and what was negotiated with it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// What it is.
    pub kind: SourceKind,
    /// A short human name: the camera's name or the file name.
    pub name: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Nominal frame rate, where known.
    pub fps: Option<f64>,
    /// What was negotiated or found, e.g. "MJPEG 1280×720 @ 30 fps" or "h264 yuv420p".
    pub format: String,
    /// Length of a file, where known.
    pub duration_ms: Option<f64>,
}

/// Why a source could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No camera is connected.
    #[error(
        "no camera found; open a video file or an image instead (drop it on the window, or pass --source PATH)"
    )]
    NoCamera,
    /// A camera failed.
    #[error("camera {index}: {message}")]
    Camera {
        /// Which.
        index: u32,
        /// What went wrong.
        message: String,
    },
    /// A video file could not be opened.
    #[error("{}: not a video arvis can read: {message}", path.display())]
    VideoOpen {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Decoding failed mid-file.
    #[error("{}: decoding failed at frame {frame}: {message}", path.display())]
    VideoDecode {
        /// The file.
        path: PathBuf,
        /// The frame it failed at.
        frame: u64,
        /// What went wrong.
        message: String,
    },
    /// A network stream could not be opened.
    #[error(
        "{url}: could not open the stream: {message}; check the address and that the camera or server is up and reachable"
    )]
    StreamOpen {
        /// The URL, masked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An open stream stopped delivering.
    #[error("{url}: stream lost: {message}")]
    StreamLost {
        /// The URL, masked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An image could not be loaded.
    #[error("{}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ImageLoadError,
    },
    /// Neither an image nor a video.
    #[error("{}: not an image or video arvis can read", .0.display())]
    Unsupported(PathBuf),
    /// The build lacks this feature.
    #[error("this build has no {0} support (rebuild with the `{0}` feature)")]
    NotBuilt(&'static str),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

/// A source of frames. Files decode as fast as asked (the caller paces them by `pts_ms`);
/// cameras block until the device delivers.
pub trait FrameSource: Send {
    /// What the source is.
    fn info(&self) -> &SourceInfo;

    /// The next frame; `Ok(None)` at the end of a file.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;

    /// Jump to a position (files only); the next frame is the first at or after it.
    fn seek(&mut self, _ms: f64) -> Result<(), SourceError> {
        Err(SourceError::Other(format!(
            "{} cannot seek",
            self.info().name
        )))
    }
}

/// What the user asked to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A camera by index.
    Camera(u32),
    /// A video file.
    Video(PathBuf),
    /// An image file.
    Image(PathBuf),
    /// A network camera or stream: the URL as given (credentials included; shown masked).
    Stream {
        /// The URL.
        url: String,
        /// How it is opened and read.
        options: super::network::StreamOptions,
    },
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Camera(i) => write!(f, "camera:{i}"),
            SourceSpec::Video(p) | SourceSpec::Image(p) => write!(f, "{}", p.display()),
            SourceSpec::Stream { url, .. } => f.write_str(&crate::util::mask_urls(url)),
        }
    }
}

impl SourceSpec {
    /// `camera`, `camera:N`, a stream URL (`rtsp://`, `http://`, `udp://`, … opened with the
    /// default [`super::network::StreamOptions`]), or a path classified by its content: image,
    /// video or unsupported.
    pub fn parse(s: &str) -> Result<SourceSpec, SourceError> {
        SourceSpec::parse_with(s, super::network::StreamOptions::default())
    }

    /// [`Self::parse`], with streams opened with `options`.
    pub fn parse_with(
        s: &str,
        options: super::network::StreamOptions,
    ) -> Result<SourceSpec, SourceError> {
        if super::network::is_stream_url(s) {
            return Ok(SourceSpec::Stream {
                url: s.trim().to_string(),
                options,
            });
        }
        if s == "camera" {
            return Ok(SourceSpec::Camera(0));
        }
        if let Some(n) = s.strip_prefix("camera:") {
            return n
                .parse()
                .map(SourceSpec::Camera)
                .map_err(|_| SourceError::Other(format!("bad camera index in `{s}`")));
        }
        SourceSpec::classify(Path::new(s))
    }

    /// Decide what a file is from its first bytes (extensions lie), falling back to asking
    /// FFmpeg whether it has a video stream.
    pub fn classify(path: &Path) -> Result<SourceSpec, SourceError> {
        let image_err = |source: ImageLoadError| SourceError::Image {
            path: path.to_path_buf(),
            source,
        };
        let head = read_head(path).map_err(image_err)?;
        if !head.is_empty() && ::image::guess_format(&head).is_ok() {
            return Ok(SourceSpec::Image(path.to_path_buf()));
        }
        // Named as an image but not one: say what is wrong with it as an image, not as a video.
        if super::files::has_image_extension(path) {
            return Err(match load_image(path, DecodeLimits::default()) {
                Err(e) => image_err(e),
                Ok(_) => SourceError::Unsupported(path.to_path_buf()),
            });
        }
        #[cfg(feature = "video")]
        if super::video::probe(path) {
            return Ok(SourceSpec::Video(path.to_path_buf()));
        }
        Err(SourceError::Unsupported(path.to_path_buf()))
    }

    /// What reopens this source later (saved settings): [`SourceSpec::parse`] of it gives it
    /// back. Unlike the shown form, a stream URL keeps its credentials here.
    pub fn to_arg(&self) -> String {
        match self {
            SourceSpec::Stream { url, .. } => url.clone(),
            other => other.to_string(),
        }
    }

    /// Whether frames arrive on the source's clock (cameras, streams): read as they come,
    /// never paced or looped, reopened with back-off after a failure.
    pub fn is_live(&self) -> bool {
        matches!(self, SourceSpec::Camera(_) | SourceSpec::Stream { .. })
    }

    /// Open the source.
    pub fn open(&self) -> Result<Box<dyn FrameSource>, SourceError> {
        match self {
            SourceSpec::Image(p) => Ok(Box::new(ImageSource::open(p)?)),
            #[cfg(feature = "video")]
            SourceSpec::Video(p) => Ok(Box::new(super::video::VideoSource::open(p)?)),
            #[cfg(not(feature = "video"))]
            SourceSpec::Video(_) => Err(SourceError::NotBuilt("video")),
            #[cfg(feature = "video")]
            SourceSpec::Stream { url, options } => {
                Ok(Box::new(super::video::VideoSource::open_url(url, options)?))
            }
            #[cfg(not(feature = "video"))]
            SourceSpec::Stream { .. } => Err(SourceError::NotBuilt("video")),
            #[cfg(feature = "camera")]
            SourceSpec::Camera(i) => Ok(Box::new(super::camera::CameraSource::open(*i)?)),
            #[cfg(not(feature = "camera"))]
            SourceSpec::Camera(_) => Err(SourceError::NotBuilt("camera")),
        }
    }
}

/// Why a video that stopped after `frames` frames, the last at `last_pts_ms`, was cut short, if
/// it was: it gave no frame at all, or it declares a duration more than 2.5 frames past its last
/// frame (a truncated or damaged file, which decoders otherwise end silently).
pub fn truncation(info: &SourceInfo, frames: u64, last_pts_ms: Option<f64>) -> Option<String> {
    if frames == 0 {
        return Some(format!(
            "{}: no frame could be decoded{}: the file is truncated or damaged",
            info.name,
            info.duration_ms.map_or(String::new(), |d| format!(
                ", though it declares {:.1} s",
                d / 1e3
            ))
        ));
    }
    let (Some(last), Some(duration), Some(fps)) = (last_pts_ms, info.duration_ms, info.fps) else {
        return None;
    };
    (last + 2.5 * 1e3 / fps < duration).then(|| {
        format!(
            "{}: the video ends at {:.1} s but declares {:.1} s: the file is truncated or damaged",
            info.name,
            last / 1e3,
            duration / 1e3
        )
    })
}

/// The first bytes of a regular file, without blocking on a FIFO or reading a device.
fn read_head(path: &Path) -> Result<Vec<u8>, ImageLoadError> {
    use std::io::Read;
    let (file, _) = super::image::open_regular_file(path)?;
    let mut head = Vec::with_capacity(64);
    file.take(64).read_to_end(&mut head)?;
    Ok(head)
}

/// A still image: one frame, then end of stream.
pub struct ImageSource {
    info: SourceInfo,
    image: Option<Arc<RgbImage>>,
}

impl ImageSource {
    /// Load the image at `path` (a one-frame source).
    pub fn open(path: &Path) -> Result<ImageSource, SourceError> {
        let image =
            load_image(path, DecodeLimits::default()).map_err(|source| SourceError::Image {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(ImageSource::from_image(file_name(path), image))
    }

    /// An already decoded image as a one-frame source.
    pub fn from_image(name: String, image: RgbImage) -> ImageSource {
        ImageSource {
            info: SourceInfo {
                kind: SourceKind::Image,
                name,
                width: image.width(),
                height: image.height(),
                fps: None,
                format: "still image".into(),
                duration_ms: None,
            },
            image: Some(Arc::new(image)),
        }
    }
}

impl FrameSource for ImageSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        Ok(self.image.take().map(|image| Frame {
            image,
            pts_ms: Some(0.0),
            index: 0,
        }))
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Replays another source in real time at a fixed rate as a live source, looping at its end:
/// frames arrive on the clock whether or not anyone keeps up, as from a camera. Used to exercise
/// the live path where no camera exists.
pub struct Replay {
    inner: Box<dyn FrameSource>,
    info: SourceInfo,
    period: std::time::Duration,
    started: Option<std::time::Instant>,
    next_index: u64,
}

impl Replay {
    /// Deliver `inner`'s frames at `fps`, as a camera would.
    pub fn new(inner: Box<dyn FrameSource>, fps: f64) -> Replay {
        let mut info = inner.info().clone();
        info.kind = SourceKind::Camera;
        info.fps = Some(fps);
        info.format = format!("replay of {} at {fps} fps", info.format);
        Replay {
            inner,
            info,
            period: std::time::Duration::from_secs_f64(1.0 / fps.max(0.001)),
            started: None,
            next_index: 0,
        }
    }
}

impl FrameSource for Replay {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let start = *self.started.get_or_insert_with(std::time::Instant::now);
        let due = start + self.period * self.next_index as u32;
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        let frame = match self.inner.next_frame()? {
            Some(f) => f,
            None => {
                self.inner.seek(0.0)?;
                self.inner
                    .next_frame()?
                    .ok_or_else(|| SourceError::Other("replayed source has no frames".into()))?
            }
        };
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(Frame {
            image: frame.image,
            pts_ms: Some(index as f64 * self.period.as_secs_f64() * 1e3),
            index,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_image_or_a_fifo_opened_as_a_source_is_named_for_what_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broken = dir.path().join("photo.jpg");
        std::fs::write(&broken, b"definitely not a picture, nor a video").expect("write");
        let msg = SourceSpec::classify(&broken)
            .expect_err("broken")
            .to_string();
        assert!(msg.contains("not a recognised image format"), "{msg}");
        assert!(!msg.contains("video"), "{msg}");
        let fifo = dir.path().join("x.jpg");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("cstr");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Without the non-blocking open this would wait for a writer forever.
        let msg = SourceSpec::classify(&fifo).expect_err("fifo").to_string();
        assert!(msg.contains("a named pipe"), "{msg}");
    }

    #[test]
    fn a_stream_is_shown_masked_and_saved_whole() {
        let spec = SourceSpec::parse("rtsp://admin:hunter2@10.0.0.9:554/live").expect("url");
        assert!(spec.is_live());
        assert_eq!(spec.to_string(), "rtsp://admin:***@10.0.0.9:554/live");
        assert_eq!(spec.to_arg(), "rtsp://admin:hunter2@10.0.0.9:554/live");
        assert_eq!(SourceSpec::parse(&spec.to_arg()).expect("again"), spec);
        assert!(!SourceSpec::Camera(1).to_arg().contains("***"));
    }
}
