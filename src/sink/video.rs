//! Writing annotated frames as an H.264 MP4 through FFmpeg (libx264), keeping the input's time
//! base and timestamps so the output has the same frame count, rate and duration.

use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;

use crate::source::video::Scaler;
use ffmpeg_next as ffmpeg;
use image::RgbImage;

/// Why a video could not be written.
#[derive(Debug, thiserror::Error)]
pub enum VideoWriteError {
    /// Encoding or writing failed.
    #[error("{}: {message}", path.display())]
    Write {
        /// The output.
        path: PathBuf,
        /// FFmpeg's message.
        message: String,
    },
    /// This FFmpeg has no H.264 encoder.
    #[error("no H.264 encoder in this FFmpeg build (libx264 is needed to write MP4 files)")]
    NoEncoder,
    /// The output's extension is no MP4 container.
    #[error(
        "{}: arvis writes H.264 video into .mp4, .m4v, .mov or .mkv files, not {ext}. Fix: name the output e.g. {}",
        path.display(),
        path.with_extension("mp4").display()
    )]
    Container {
        /// The output.
        path: PathBuf,
        /// Its extension.
        ext: String,
    },
}

/// File extensions whose containers take H.264 (FFmpeg chooses the muxer by the extension).
const CONTAINERS: &[&str] = &["mp4", "m4v", "mov", "mkv"];

/// Refuse an output whose extension names no container arvis can write (before anything is
/// opened, so the message says what to do instead of FFmpeg's "Invalid argument").
pub fn check_container(path: &Path) -> Result<(), VideoWriteError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext {
        Some(e) if CONTAINERS.contains(&e.as_str()) => Ok(()),
        other => Err(VideoWriteError::Container {
            path: path.to_path_buf(),
            ext: other.map_or_else(|| "a file without an extension".into(), |e| format!(".{e}")),
        }),
    }
}

/// An H.264 MP4 writer: frames in, a playable file out (once finished).
pub struct VideoWriter {
    path: PathBuf,
    output: ffmpeg::format::context::Output,
    encoder: ffmpeg::encoder::Video,
    scaler: Scaler,
    time_base: ffmpeg::Rational,
    stream_time_base: ffmpeg::Rational,
    /// One frame's duration in `time_base` units.
    frame_duration: i64,
    size: (u32, u32),
    frames: u64,
}

impl VideoWriter {
    /// Create `path` for `width`×`height` frames timed in `time_base` at `frame_rate`.
    pub fn create(
        path: &Path,
        size: (u32, u32),
        time_base: (i32, i32),
        frame_rate: (i32, i32),
    ) -> Result<VideoWriter, VideoWriteError> {
        Self::open(path, path, size, time_base, frame_rate)
    }

    /// Write into `out`'s temporary file (errors name its target); commit `out` after
    /// [`VideoWriter::finish`] to put the finished file in place.
    pub fn create_for(
        out: &crate::sink::AtomicOutput,
        size: (u32, u32),
        time_base: (i32, i32),
        frame_rate: (i32, i32),
    ) -> Result<VideoWriter, VideoWriteError> {
        Self::open(out.temp_path(), out.target(), size, time_base, frame_rate)
    }

    fn open(
        write_to: &Path,
        shown: &Path,
        size: (u32, u32),
        time_base: (i32, i32),
        frame_rate: (i32, i32),
    ) -> Result<VideoWriter, VideoWriteError> {
        check_container(shown)?;
        let path = shown;
        let err = |message: String| VideoWriteError::Write {
            path: path.to_path_buf(),
            message,
        };
        crate::source::video::init();
        // H.264 with 4:2:0 needs even dimensions; odd inputs lose their last row/column.
        let (w, h) = (size.0 & !1, size.1 & !1);
        if w == 0 || h == 0 {
            return Err(err(format!("cannot encode {}×{} frames", size.0, size.1)));
        }
        let mut output = ffmpeg::format::output(write_to).map_err(|e| err(e.to_string()))?;
        let codec = ffmpeg::encoder::find_by_name("libx264")
            .or_else(|| ffmpeg::encoder::find(ffmpeg::codec::Id::H264))
            .ok_or(VideoWriteError::NoEncoder)?;
        let global_header = output
            .format()
            .flags()
            .contains(ffmpeg::format::Flags::GLOBAL_HEADER);
        let mut stream = output.add_stream(codec).map_err(|e| err(e.to_string()))?;
        let stream_index = stream.index();
        let mut encoder = ffmpeg::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| err(e.to_string()))?;
        let time_base = ffmpeg::Rational::new(time_base.0, time_base.1);
        let rate = ffmpeg::Rational::new(frame_rate.0, frame_rate.1);
        encoder.set_width(w);
        encoder.set_height(h);
        encoder.set_format(Pixel::YUV420P);
        encoder.set_time_base(time_base);
        encoder.set_frame_rate(Some(rate));
        if global_header {
            encoder.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
        }
        let mut options = ffmpeg::Dictionary::new();
        options.set("preset", "veryfast");
        options.set("crf", "20");
        let encoder = encoder
            .open_with(options)
            .map_err(|e| err(format!("opening the H.264 encoder: {e}")))?;
        stream.set_parameters(&encoder);
        stream.set_time_base(time_base);
        output
            .write_header()
            .map_err(|e| err(format!("writing the header: {e}")))?;
        let stream_time_base = output
            .stream(stream_index)
            .map_or(time_base, |s| s.time_base());
        let scaler = scaling::Context::get(
            Pixel::RGB24,
            w,
            h,
            Pixel::YUV420P,
            w,
            h,
            scaling::Flags::BILINEAR,
        )
        .map_err(|e| err(format!("colour conversion: {e}")))?;
        // Frame duration in the time base: (1 / rate) / time_base.
        let frame_duration = (f64::from(time_base.denominator()) * f64::from(rate.denominator())
            / (f64::from(time_base.numerator()) * f64::from(rate.numerator())))
        .round()
        .max(1.0) as i64;
        Ok(VideoWriter {
            path: path.to_path_buf(),
            output,
            encoder,
            scaler: Scaler(scaler),
            time_base,
            stream_time_base,
            frame_duration,
            size: (w, h),
            frames: 0,
        })
    }

    fn err(&self, message: String) -> VideoWriteError {
        VideoWriteError::Write {
            path: self.path.clone(),
            message,
        }
    }

    /// Encode one frame shown at `pts` (in the writer's time base).
    pub fn write(&mut self, image: &RgbImage, pts: i64) -> Result<(), VideoWriteError> {
        let (w, h) = self.size;
        if image.width() < w || image.height() < h {
            return Err(self.err(format!(
                "frame {}×{} is smaller than the video's {w}×{h}",
                image.width(),
                image.height()
            )));
        }
        let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, w, h);
        let stride = rgb.stride(0);
        let row = 3 * w as usize;
        let src = image.as_raw();
        let src_stride = 3 * image.width() as usize;
        let data = rgb.data_mut(0);
        for y in 0..h as usize {
            data[y * stride..y * stride + row]
                .copy_from_slice(&src[y * src_stride..y * src_stride + row]);
        }
        let mut yuv = ffmpeg::frame::Video::empty();
        self.scaler
            .0
            .run(&rgb, &mut yuv)
            .map_err(|e| self.err(format!("colour conversion: {e}")))?;
        yuv.set_pts(Some(pts));
        self.encoder
            .send_frame(&yuv)
            .map_err(|e| self.err(format!("encoding frame {}: {e}", self.frames)))?;
        self.frames += 1;
        self.drain()
    }

    fn drain(&mut self) -> Result<(), VideoWriteError> {
        let mut packet = ffmpeg::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            // Without a duration the muxer cannot know how long the last frame lasts.
            packet.set_duration(self.frame_duration);
            packet.rescale_ts(self.time_base, self.stream_time_base);
            packet
                .write_interleaved(&mut self.output)
                .map_err(|e| self.err(format!("writing: {e}")))?;
        }
        Ok(())
    }

    /// Flush the encoder and finish the file. Returns the number of frames written.
    pub fn finish(mut self) -> Result<u64, VideoWriteError> {
        self.encoder
            .send_eof()
            .map_err(|e| self.err(format!("flushing the encoder: {e}")))?;
        self.drain()?;
        self.output
            .write_trailer()
            .map_err(|e| self.err(format!("finishing the file: {e}")))?;
        Ok(self.frames)
    }
}
