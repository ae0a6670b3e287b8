//! Network cameras and streams through FFmpeg: RTSP (TCP by default, UDP selectable), HTTP(S)
//! (MPEG-TS, MJPEG, HLS), UDP and, where this FFmpeg has it, SRT.
//!
//! A dead or silent peer never blocks a thread: every open and every packet read runs under a
//! deadline that FFmpeg's interrupt callback checks while it waits (`open_timeout`, then
//! `read_timeout` per packet), so a blocking call returns within its deadline whatever the
//! protocol. The protocols' own socket timeouts (`timeout`, `rw_timeout`) are set as well so
//! that the socket calls themselves wake up. Credentials in the URL go to FFmpeg and nowhere
//! else: every name, message and record shows the URL masked ([`crate::util::mask_urls`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// URL schemes opened as network streams.
pub const SCHEMES: &[&str] = &[
    "rtsp", "rtsps", "http", "https", "udp", "srt", "rtmp", "rtmps", "tcp", "rtp",
];

/// Whether `s` names a network stream (a URL with one of [`SCHEMES`]).
pub fn is_stream_url(s: &str) -> bool {
    scheme(s).is_some_and(|sc| SCHEMES.contains(&sc.as_str()))
}

/// The URL's scheme, lower case.
pub fn scheme(s: &str) -> Option<String> {
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+'))
    .then(|| scheme.to_ascii_lowercase())
}

/// How RTSP carries the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtspTransport {
    /// Interleaved in the RTSP connection: no packet loss, works through NAT and firewalls.
    #[default]
    Tcp,
    /// RTP over UDP: lower latency on a clean network, frames dropped when packets are lost.
    Udp,
}

impl FromStr for RtspTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(RtspTransport::Tcp),
            "udp" => Ok(RtspTransport::Udp),
            other => Err(format!("unknown RTSP transport `{other}`: use tcp or udp")),
        }
    }
}

impl fmt::Display for RtspTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RtspTransport::Tcp => "tcp",
            RtspTransport::Udp => "udp",
        })
    }
}

/// How network streams are opened and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// RTSP's media transport.
    pub rtsp_transport: RtspTransport,
    /// Longest wait for a stream to open (connect, handshake, first packets probed).
    pub open_timeout: Duration,
    /// Longest wait for the next packet of an open stream before it counts as lost.
    pub read_timeout: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            rtsp_transport: RtspTransport::Tcp,
            open_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
        }
    }
}

impl StreamOptions {
    /// FFmpeg's options for opening `scheme`.
    pub fn dictionary(&self, scheme: &str) -> Vec<(&'static str, String)> {
        let micros = |d: Duration| d.as_micros().to_string();
        // Probing a live stream need not read seconds of it before the first frame.
        let mut options = vec![
            ("analyzeduration", "1000000".to_string()),
            ("probesize", "2000000".to_string()),
            ("rw_timeout", micros(self.read_timeout)),
        ];
        match scheme {
            "rtsp" | "rtsps" => {
                options.push(("rtsp_transport", self.rtsp_transport.to_string()));
                options.push(("timeout", micros(self.read_timeout)));
            }
            "udp" | "rtp" => {
                // A burst larger than the socket buffer drops packets, not the stream.
                options.push(("overrun_nonfatal", "1".to_string()));
                options.push(("fifo_size", "500000".to_string()));
                options.push(("timeout", micros(self.read_timeout)));
            }
            "http" | "https" | "tcp" | "rtmp" | "rtmps" | "srt" => {
                options.push(("timeout", micros(self.read_timeout)));
            }
            _ => {}
        }
        options
    }
}

/// A deadline FFmpeg's interrupt callback checks while it blocks; re-armed before every open
/// and read, and pushed to "now" to abandon a read at shutdown.
#[derive(Debug)]
pub struct Deadline {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    at_ms: AtomicU64,
}

impl Deadline {
    /// A deadline not armed yet (never passes).
    pub fn new() -> Arc<Deadline> {
        Arc::new(Deadline {
            epoch: Instant::now(),
            at_ms: AtomicU64::new(u64::MAX),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Give the next blocking call `within` to finish.
    pub fn arm(&self, within: Duration) {
        let at = self.now_ms().saturating_add(within.as_millis() as u64);
        self.at_ms.store(at, Ordering::Relaxed);
    }

    /// Whether the current call is over its time.
    pub fn passed(&self) -> bool {
        self.now_ms() > self.at_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_are_told_from_paths_and_cameras() {
        for url in [
            "rtsp://cam.local/stream1",
            "RTSP://user:pw@10.0.0.2:554/h264",
            "http://127.0.0.1:8080/live.ts",
            "https://example.org/hls/index.m3u8",
            "udp://127.0.0.1:5000",
            "srt://127.0.0.1:9000?mode=caller",
        ] {
            assert!(is_stream_url(url), "{url}");
        }
        for not in [
            "camera:0",
            "/home/me/video.mp4",
            "C:/x.mp4",
            "file:///tmp/a.mp4",
            "://x",
            "weird scheme://x",
        ] {
            assert!(!is_stream_url(not), "{not}");
        }
    }

    #[test]
    fn every_open_is_bounded_by_the_protocols_own_timeouts_too() {
        let options = StreamOptions {
            rtsp_transport: RtspTransport::Udp,
            open_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_millis(1500),
        };
        let rtsp = options.dictionary("rtsp");
        assert!(rtsp.contains(&("rtsp_transport", "udp".into())));
        assert!(rtsp.contains(&("timeout", "1500000".into())));
        assert!(
            options
                .dictionary("http")
                .contains(&("rw_timeout", "1500000".into()))
        );
        assert!("TCP".parse::<RtspTransport>() == Ok(RtspTransport::Tcp));
        let bad = "quic".parse::<RtspTransport>().expect_err("bad");
        assert!(bad.contains("use tcp or udp"), "{bad}");
    }

    #[test]
    fn a_deadline_passes_only_after_its_time() {
        let d = Deadline::new();
        assert!(!d.passed());
        d.arm(Duration::from_secs(60));
        assert!(!d.passed());
        d.arm(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(d.passed());
    }
}
