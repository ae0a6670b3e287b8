//! Video files through FFmpeg: decode to RGB frames with their timestamps, seek, and report
//! what the file is. Pacing (native rate, pause, loop) is the caller's job.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::network::{Deadline, StreamOptions};
use super::stream::{Frame, FrameSource, SourceError, SourceInfo, SourceKind, file_name};

/// Frames larger than this are refused rather than allocated (same bound as still images).
const MAX_PIXELS: u64 = 256 * 1024 * 1024;

/// Initialise FFmpeg once, with its console logging off (errors reach users through arvis).
pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Errors reach the user through our own messages; FFmpeg's console chatter would not.
        let _ = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    });
}

/// Whether FFmpeg finds a decodable video stream in the file.
pub fn probe(path: &Path) -> bool {
    init();
    let Ok(input) = ffmpeg::format::input(path) else {
        return false;
    };
    input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .is_some_and(|s| ffmpeg::codec::decoder::find(s.parameters().id()).is_some())
}

/// A swscale context that can move between threads. The context is a plain heap object with
/// no thread affinity; each one is owned by one decoder or writer and only used by the thread
/// that currently owns it (it is never shared, so it need not be `Sync`).
pub(crate) struct Scaler(pub(crate) scaling::Context);
// SAFETY: see above: never shared, only moved with its owner.
unsafe impl Send for Scaler {}

/// Where a [`VideoSource`] reads from.
enum Origin {
    /// A file.
    File(PathBuf),
    /// A network stream: its URL as shown (masked), the deadline FFmpeg's interrupt callback
    /// checks, and how long each packet may take.
    Stream {
        shown: String,
        deadline: Arc<Deadline>,
        read_timeout: std::time::Duration,
    },
}

/// A video file or network stream decoded frame by frame.
pub struct VideoSource {
    origin: Origin,
    info: SourceInfo,
    input: ffmpeg::format::context::Input,
    stream_index: usize,
    decoder: ffmpeg::decoder::Video,
    scaler: Option<Scaler>,
    time_base: f64,
    /// The stream's time base and average frame rate as FFmpeg rationals (for re-encoding).
    time_base_q: ffmpeg::Rational,
    rate_q: ffmpeg::Rational,
    start_pts: i64,
    /// Raw pts of the last frame returned.
    last_pts: Option<i64>,
    next_index: u64,
    /// After a seek: frames before this position are decoded but not returned.
    skip_before_ms: Option<f64>,
    flushed: bool,
    /// Clockwise quarter turns that make decoded frames upright (the stream's display matrix).
    quarter_turns: u8,
}

/// Clockwise quarter turns (0–3) a player applies to show a stream with this display matrix
/// upright, as FFmpeg's own autorotation computes it (`av_display_rotation_get`, negated and
/// rounded); a mirrored or non-right-angle matrix counts as its nearest rotation.
pub fn quarter_turns_from_display_matrix(raw: &[u8]) -> u8 {
    if raw.len() < 36 {
        return 0;
    }
    let m: Vec<f64> = raw
        .chunks_exact(4)
        .take(9)
        .map(|c| f64::from(i32::from_ne_bytes([c[0], c[1], c[2], c[3]])) / 65536.0)
        .collect();
    let (s0, s1) = (m[0].hypot(m[3]), m[1].hypot(m[4]));
    if s0 == 0.0 || s1 == 0.0 {
        return 0;
    }
    let counterclockwise = -(m[1] / s1).atan2(m[0] / s0).to_degrees();
    let clockwise = (-counterclockwise).rem_euclid(360.0);
    ((clockwise / 90.0).round() as u32 % 4) as u8
}

impl VideoSource {
    /// Open a video file and its best video stream.
    pub fn open(path: &Path) -> Result<VideoSource, SourceError> {
        init();
        let open_err = |message: String| SourceError::VideoOpen {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(open_err("no such file".into()));
        }
        let input = ffmpeg::format::input(path).map_err(|e| open_err(e.to_string()))?;
        let mut source =
            VideoSource::from_input(input, Origin::File(path.to_path_buf()), open_err)?;
        source.info.name = file_name(path);
        Ok(source)
    }

    /// Open a network stream (see [`super::network`]); the URL's credentials are used to
    /// connect and shown nowhere.
    pub fn open_url(url: &str, options: &StreamOptions) -> Result<VideoSource, SourceError> {
        init();
        let shown = crate::util::mask_urls(url);
        let open_err = |message: String| SourceError::StreamOpen {
            url: shown.clone(),
            message,
        };
        let scheme = super::network::scheme(url).unwrap_or_default();
        let mut dict = ffmpeg::Dictionary::new();
        for (key, value) in options.dictionary(&scheme) {
            dict.set(key, &value);
        }
        let deadline = Deadline::new();
        deadline.arm(options.open_timeout);
        let watch = deadline.clone();
        let input =
            ffmpeg::format::input_with_interrupt_and_dictionary(url, move || watch.passed(), dict)
                .map_err(|e| {
                    open_err(match e {
                        ffmpeg::Error::Exit => format!(
                            "no answer within {:.0} s (timed out)",
                            options.open_timeout.as_secs_f64()
                        ),
                        ffmpeg::Error::ProtocolNotFound => format!(
                            "this FFmpeg cannot read {scheme}:// streams (protocol not built in)"
                        ),
                        other => other.to_string(),
                    })
                })?;
        let origin = Origin::Stream {
            shown: shown.clone(),
            deadline,
            read_timeout: options.read_timeout,
        };
        let mut source = VideoSource::from_input(input, origin, open_err)?;
        source.info.kind = SourceKind::Stream;
        source.info.name = shown;
        source.info.duration_ms = None;
        Ok(source)
    }

    fn from_input(
        input: ffmpeg::format::context::Input,
        origin: Origin,
        open_err: impl Fn(String) -> SourceError,
    ) -> Result<VideoSource, SourceError> {
        let stream = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| open_err("no video stream".into()))?;
        let stream_index = stream.index();
        let tb = stream.time_base();
        let time_base = if tb.denominator() != 0 {
            f64::from(tb.numerator()) / f64::from(tb.denominator())
        } else {
            1.0 / 90_000.0
        };
        let start_pts = if stream.start_time() == ffmpeg::ffi::AV_NOPTS_VALUE {
            0
        } else {
            stream.start_time()
        };
        let rate = stream.avg_frame_rate();
        let fps = (rate.denominator() != 0 && rate.numerator() > 0)
            .then(|| f64::from(rate.numerator()) / f64::from(rate.denominator()));
        let duration_ms = if stream.duration() > 0 {
            Some(stream.duration() as f64 * time_base * 1e3)
        } else if input.duration() > 0 {
            Some(input.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE) * 1e3)
        } else {
            None
        };
        let context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| open_err(e.to_string()))?;
        let codec_name = context.id().name().to_string();
        let decoder = context
            .decoder()
            .video()
            .map_err(|e| open_err(format!("no decoder for {codec_name}: {e}")))?;
        let quarter_turns = stream
            .side_data()
            .find(|d| d.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix)
            .map_or(0, |d| quarter_turns_from_display_matrix(d.data()));
        let (width, height) = (decoder.width(), decoder.height());
        if width == 0 || height == 0 {
            return Err(open_err("video stream without a frame size".into()));
        }
        if u64::from(width) * u64::from(height) > MAX_PIXELS {
            return Err(open_err(format!("{width}×{height} frames are too large")));
        }
        let pix = format!("{:?}", decoder.format()).to_lowercase();
        // Frames are delivered upright: a phone's portrait video is portrait.
        let (shown_w, shown_h) = if quarter_turns % 2 == 1 {
            (height, width)
        } else {
            (width, height)
        };
        let rotated = match quarter_turns {
            0 => String::new(),
            n => format!(", shown rotated {}°", u32::from(n) * 90),
        };
        Ok(VideoSource {
            origin,
            info: SourceInfo {
                kind: SourceKind::Video,
                name: String::new(),
                width: shown_w,
                height: shown_h,
                fps,
                format: format!("{codec_name} {pix} {width}×{height}{rotated}"),
                duration_ms,
            },
            input,
            stream_index,
            decoder,
            scaler: None,
            time_base,
            time_base_q: tb,
            rate_q: rate,
            start_pts,
            last_pts: None,
            next_index: 0,
            skip_before_ms: None,
            flushed: false,
            quarter_turns,
        })
    }

    /// The stream's time base (numerator, denominator).
    pub fn time_base(&self) -> (i32, i32) {
        (self.time_base_q.numerator(), self.time_base_q.denominator())
    }

    /// The stream's average frame rate (numerator, denominator), if it declares one.
    pub fn frame_rate(&self) -> Option<(i32, i32)> {
        (self.rate_q.numerator() > 0 && self.rate_q.denominator() > 0)
            .then(|| (self.rate_q.numerator(), self.rate_q.denominator()))
    }

    /// Raw timestamp (in [`Self::time_base`] units) of the frame last returned.
    pub fn last_pts(&self) -> Option<i64> {
        self.last_pts
    }

    fn decode_err(&self, message: impl Into<String>) -> SourceError {
        match &self.origin {
            Origin::File(path) => SourceError::VideoDecode {
                path: path.clone(),
                frame: self.next_index,
                message: message.into(),
            },
            Origin::Stream { shown, .. } => SourceError::StreamLost {
                url: shown.clone(),
                message: message.into(),
            },
        }
    }

    /// Before a read that may block: give it its time (streams only).
    fn arm(&self) {
        if let Origin::Stream {
            deadline,
            read_timeout,
            ..
        } = &self.origin
        {
            deadline.arm(*read_timeout);
        }
    }

    /// What a read cut short by the interrupt callback means.
    fn read_err(&self, e: ffmpeg::Error) -> SourceError {
        match (&self.origin, e) {
            (Origin::Stream { read_timeout, .. }, ffmpeg::Error::Exit) => self.decode_err(format!(
                "no data for {:.1} s (timed out)",
                read_timeout.as_secs_f64()
            )),
            (Origin::Stream { .. }, e) => self.decode_err(e.to_string()),
            (Origin::File(_), e) => self.decode_err(format!("reading the file: {e}")),
        }
    }

    /// Pull one decoded frame out of the decoder, feeding it packets as needed.
    fn receive(&mut self) -> Result<Option<ffmpeg::frame::Video>, SourceError> {
        let mut decoded = ffmpeg::frame::Video::empty();
        loop {
            match self.decoder.receive_frame(&mut decoded) {
                Ok(()) => return Ok(Some(decoded)),
                Err(ffmpeg::Error::Eof) => return Ok(None),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {}
                Err(e) => return Err(self.decode_err(e.to_string())),
            }
            if self.flushed {
                return Ok(None);
            }
            let mut packet = ffmpeg::Packet::empty();
            self.arm();
            match packet.read(&mut self.input) {
                Ok(()) => {
                    if packet.stream() != self.stream_index {
                        continue;
                    }
                    if let Err(e) = self.decoder.send_packet(&packet) {
                        // One damaged packet: skip it and keep going, as players do.
                        if !matches!(e, ffmpeg::Error::InvalidData) {
                            return Err(self.decode_err(e.to_string()));
                        }
                    }
                }
                Err(ffmpeg::Error::Eof) => {
                    self.flushed = true;
                    self.decoder
                        .send_eof()
                        .map_err(|e| self.decode_err(e.to_string()))?;
                }
                Err(ffmpeg::Error::InvalidData) => {}
                Err(e) => return Err(self.read_err(e)),
            }
        }
    }

    fn convert_to_rgb(&mut self, frame: &ffmpeg::frame::Video) -> Result<RgbImage, SourceError> {
        let (w, h) = (frame.width(), frame.height());
        if w == 0 || h == 0 || u64::from(w) * u64::from(h) > MAX_PIXELS {
            return Err(self.decode_err(format!("bad frame size {w}×{h}")));
        }
        let stale = self.scaler.as_ref().is_none_or(|s| {
            let i = s.0.input();
            i.width != w || i.height != h || i.format != frame.format()
        });
        if stale {
            let ctx = scaling::Context::get(
                frame.format(),
                w,
                h,
                Pixel::RGB24,
                w,
                h,
                scaling::Flags::BILINEAR,
            )
            .map_err(|e| self.decode_err(format!("pixel format conversion: {e}")))?;
            self.scaler = Some(Scaler(ctx));
        }
        let mut rgb = ffmpeg::frame::Video::empty();
        if let Some(scaler) = self.scaler.as_mut() {
            scaler.0.run(frame, &mut rgb).map_err(|e| {
                let message = format!("pixel format conversion: {e}");
                match &self.origin {
                    Origin::File(path) => SourceError::VideoDecode {
                        path: path.clone(),
                        frame: self.next_index,
                        message,
                    },
                    Origin::Stream { shown, .. } => SourceError::StreamLost {
                        url: shown.clone(),
                        message,
                    },
                }
            })?;
        }
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let row = 3 * w as usize;
        let mut out = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            out.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        RgbImage::from_raw(w, h, out).ok_or_else(|| self.decode_err("short frame"))
    }
}

impl FrameSource for VideoSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            let Some(decoded) = self.receive()? else {
                return Ok(None);
            };
            let pts_ms = decoded
                .timestamp()
                .or(decoded.pts())
                .map(|t| (t - self.start_pts) as f64 * self.time_base * 1e3);
            if let (Some(skip), Some(t)) = (self.skip_before_ms, pts_ms) {
                // Half a frame of slack: timestamps are rounded to the time base.
                if t + 1.0 < skip {
                    continue;
                }
            }
            self.skip_before_ms = None;
            self.last_pts = decoded.timestamp().or(decoded.pts());
            let image = match self.quarter_turns {
                1 => image::imageops::rotate90(&self.convert_to_rgb(&decoded)?),
                2 => image::imageops::rotate180(&self.convert_to_rgb(&decoded)?),
                3 => image::imageops::rotate270(&self.convert_to_rgb(&decoded)?),
                _ => self.convert_to_rgb(&decoded)?,
            };
            let index = match (pts_ms, self.info.fps) {
                (Some(t), Some(fps)) => (t / 1e3 * fps).round().max(0.0) as u64,
                _ => self.next_index,
            };
            self.next_index = index + 1;
            return Ok(Some(Frame {
                image: Arc::new(image),
                pts_ms,
                index,
            }));
        }
    }

    fn seek(&mut self, ms: f64) -> Result<(), SourceError> {
        let ms = ms.max(0.0);
        // Container-level seek lands on the keyframe at or before the target; frames up to
        // the target are then decoded and skipped so the result is frame-exact.
        let ts = (ms / 1e3 * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64;
        self.input
            .seek(ts, ..ts + 1)
            .map_err(|e| self.decode_err(format!("seeking to {ms:.0} ms: {e}")))?;
        self.decoder.flush();
        self.flushed = false;
        self.skip_before_ms = Some(ms);
        self.next_index = self.info.fps.map_or(0, |fps| (ms / 1e3 * fps) as u64);
        Ok(())
    }
}
