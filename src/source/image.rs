//! Decode still images into RGB8, defensively: content-sniffed format, EXIF orientation applied,
//! alpha dropped, grey/16-bit/CMYK/palette converted, and huge dimensions refused before any
//! pixel buffer is allocated (a decompression-bomb guard).

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Largest image arvis will decode.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Longest accepted side, in pixels.
    pub max_side_px: u32,
    /// Largest accepted pixel count.
    pub max_pixels: u64,
    /// Largest file read, in bytes (nothing past it is read).
    pub max_file_bytes: u64,
}

impl DecodeLimits {
    /// What the decoders may allocate at once: the largest admitted image at 8 bytes a pixel
    /// (16-bit RGBA) and 64 MiB of tables, never more than the image crate's own 512 MiB.
    pub fn max_decoder_alloc(&self) -> u64 {
        self.max_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20)
            .min(512 << 20)
    }

    fn decoder_limits(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(self.max_decoder_alloc());
        limits
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 16k per side covers every camera and panorama users bring; 16384² pixels (268 MP) caps
        // memory at ~1 GiB RGBA, and makes the per-side limit reachable for a square image.
        // The largest uncompressed 16384² RGB file (BMP/TIFF) is ~805 MB, under the 1 GiB read cap.
        DecodeLimits {
            max_side_px: 16_384,
            max_pixels: 16_384 * 16_384,
            max_file_bytes: 1 << 30,
        }
    }
}

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageLoadError {
    /// No file at the path.
    #[error("no such file")]
    NotFound,
    /// Reading failed.
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is empty.
    #[error("empty file (0 bytes)")]
    Empty,
    /// Not a regular file (a FIFO, a device, a directory).
    #[error("not a regular file ({kind}): only image files are read")]
    NotAFile {
        /// What it is.
        kind: &'static str,
    },
    /// The file is larger than an image file may be.
    #[error("the file is {bytes} bytes, over the {max} byte limit for an image file")]
    FileTooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The content is no image format arvis reads.
    #[error("not a recognised image format (the content is not JPEG, PNG, GIF, BMP, TIFF or WebP)")]
    UnknownFormat,
    /// The image is larger than the decode limit.
    #[error(
        "image is {width}x{height} pixels, over the decode limit of {max_side} px per side and {max_pixels} pixels in all (decompression-bomb guard)"
    )]
    TooLarge {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The limit per side.
        max_side: u32,
        /// The limit in pixels.
        max_pixels: u64,
    },
    /// Decoding would take more memory than the decoders may use.
    #[error(
        "decoding this {format} would need more than {limit_mib} MiB (the decoder's memory limit, a decompression-bomb guard)"
    )]
    OverMemoryLimit {
        /// The format.
        format: String,
        /// The limit, MiB.
        limit_mib: u64,
    },
    /// The data is damaged.
    #[error("corrupt or truncated {format} data: {reason}")]
    Corrupt {
        /// The format it claims.
        format: String,
        /// The decoder's message.
        reason: String,
    },
}

/// Decode the image file at `path` into upright RGB8.
pub fn load_image(path: &Path, limits: DecodeLimits) -> Result<RgbImage, ImageLoadError> {
    let bytes = read_regular_file(path, limits.max_file_bytes)?;
    decode_image_bytes(&bytes, limits)
}

/// The bytes of the regular file at `path`, at most `max` of them (see [`open_regular_file`]).
pub fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, ImageLoadError> {
    use std::io::Read;
    let (file, len) = open_regular_file(path)?;
    if len > max {
        return Err(ImageLoadError::FileTooLarge { bytes: len, max });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // A file that grows while read still stops at the limit.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ImageLoadError::FileTooLarge {
            bytes: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// Open `path` for reading if it is a regular file, with its length. A FIFO, socket or device
/// (also behind a symlink: `x.jpg -> /dev/zero`) is refused without blocking or reading: the
/// file is opened non-blocking and checked through its own descriptor, so a FIFO cannot stall
/// the open and a swapped-in file cannot slip past the check.
pub fn open_regular_file(path: &Path) -> Result<(std::fs::File, u64), ImageLoadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageLoadError::NotFound,
            _ => ImageLoadError::Io(e),
        })?;
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a named pipe"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a plain file"
        };
        return Err(ImageLoadError::NotAFile { kind });
    }
    Ok((file, meta.len()))
}

/// Decode encoded image bytes into upright RGB8.
pub fn decode_image_bytes(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, ImageLoadError> {
    if bytes.is_empty() {
        return Err(ImageLoadError::Empty);
    }
    // The JPEG decoder pads a cut-off scan with grey instead of failing; catch that here.
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_has_end_marker(bytes) {
        return Err(ImageLoadError::Corrupt {
            format: "JPEG".into(),
            reason: "the file is truncated (no end-of-image marker after the image data)".into(),
        });
    }
    // The TIFF decoder reads a tag's values into memory before any limit applies: a tag that
    // claims more data than the file holds is refused first (found by fuzzing: a 209-byte TIFF
    // made it allocate 128 MiB).
    if let Err(reason) = tiff_tags_fit(bytes) {
        return Err(ImageLoadError::Corrupt {
            format: "TIFF".into(),
            reason,
        });
    }
    decode_reader(Cursor::new(bytes), limits)
}

/// For a TIFF (classic or BigTIFF): every entry of its first directory declares no more data
/// than the file holds. Anything else passes (other formats, or a TIFF too short to have a
/// directory, which the decoder refuses itself).
fn tiff_tags_fit(bytes: &[u8]) -> Result<(), String> {
    let little = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Ok(()),
    };
    let uint = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(n)?)?;
        Some(b.iter().enumerate().fold(0u64, |v, (i, &x)| {
            let shift = if little { 8 * i } else { 8 * (n - 1 - i) };
            v | (u64::from(x) << shift)
        }))
    };
    let (big, entry_len, count_len) = match uint(2, 2) {
        Some(42) => (false, 12, 2),
        Some(43) => (true, 20, 8),
        _ => return Ok(()),
    };
    let ifd = if big { uint(8, 8) } else { uint(4, 4) };
    let Some(ifd) = ifd.and_then(|o| usize::try_from(o).ok()) else {
        return Ok(());
    };
    let Some(entries) = uint(ifd, count_len) else {
        return Ok(());
    };
    let len = bytes.len() as u64;
    let inline = if big { 8 } else { 4 };
    for i in 0..entries.min(len / entry_len as u64) {
        let at = ifd + count_len + i as usize * entry_len;
        let (Some(tag), Some(kind)) = (uint(at, 2), uint(at + 2, 2)) else {
            break;
        };
        let count = if big {
            uint(at + 4, 8)
        } else {
            uint(at + 4, 4)
        };
        let Some(count) = count else { break };
        // Bytes per value of each TIFF field type; an unknown type counts one byte a value.
        let size: u64 = match kind {
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16 | 17 | 18 => 8,
            _ => 1,
        };
        let data = count.saturating_mul(size);
        if data > inline {
            let offset = if big {
                uint(at + 12, 8)
            } else {
                uint(at + 8, 4)
            }
            .unwrap_or(u64::MAX);
            if offset.saturating_add(data) > len {
                return Err(format!(
                    "TIFF tag {tag} declares {data} bytes of values, past the end of the {len}-byte file"
                ));
            }
        }
    }
    Ok(())
}

/// Whether an end-of-image marker follows the main image's first scan. Segments before the scan
/// (EXIF thumbnails hold a whole JPEG of their own) are skipped by length; inside entropy-coded
/// data 0xFF is always followed by 0x00 or a restart marker, so 0xFFD9 there is the real end.
/// Data after the marker (e.g. a motion photo's video) is allowed.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        match marker {
            0xFF => i += 1, // fill byte
            0xD0..=0xD7 | 0x01 => i += 2,
            0xD9 => return true,
            0xDA => return bytes[i + 2..].windows(2).any(|w| w == [0xFF, 0xD9]),
            _ => {
                let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
                i += 2 + len;
            }
        }
    }
    false
}

fn decode_reader<R: BufRead + Seek>(
    reader: R,
    limits: DecodeLimits,
) -> Result<RgbImage, ImageLoadError> {
    // Sniff the format from the bytes: a file's extension says nothing reliable about its content.
    let mut reader = ImageReader::new(reader).with_guessed_format()?;
    // The decoders' own buffers are capped too, not only the image they return: a tiny file
    // can claim huge strips or chunks (found by fuzzing: a 209-byte TIFF held 128 MiB).
    reader.limits(limits.decoder_limits());
    let Some(format) = reader.format() else {
        return Err(ImageLoadError::UnknownFormat);
    };
    let format_name = format!("{format:?}").to_uppercase();
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => ImageLoadError::OverMemoryLimit {
            format: format_name.clone(),
            limit_mib: limits.max_decoder_alloc() >> 20,
        },
        e => ImageLoadError::Corrupt {
            format: format_name.clone(),
            reason: e.to_string(),
        },
    };

    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width.max(height) > limits.max_side_px
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(ImageLoadError::TooLarge {
            width,
            height,
            max_side: limits.max_side_px,
            max_pixels: limits.max_pixels,
        });
    }
    // Orientation lives in EXIF; a missing or unreadable tag means "as stored".
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // Alpha is dropped (not composited): detectors see the stored colour, as Ultralytics does.
        other => other.to_rgb8(),
    })
}

impl From<image::ImageError> for ImageLoadError {
    fn from(e: image::ImageError) -> Self {
        match e {
            image::ImageError::IoError(io) => ImageLoadError::Io(io),
            image::ImageError::Unsupported(_) => ImageLoadError::UnknownFormat,
            other => ImageLoadError::Corrupt {
                format: "image".into(),
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};

    fn jpeg_of(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .expect("encode");
        out
    }

    /// Insert an EXIF APP1 segment with the given orientation right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian TIFF header, IFD at 8
        tiff.extend(1u16.to_be_bytes()); // one entry
        tiff.extend(0x0112u16.to_be_bytes()); // Orientation
        tiff.extend(3u16.to_be_bytes()); // SHORT
        tiff.extend(1u32.to_be_bytes());
        tiff.extend(orientation.to_be_bytes());
        tiff.extend([0, 0]);
        tiff.extend(0u32.to_be_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend(tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend([0xFF, 0xE1]);
        out.extend(((app1.len() + 2) as u16).to_be_bytes());
        out.extend(app1);
        out.extend(&jpeg[2..]);
        out
    }

    fn left_red_right_blue(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        })
    }

    #[test]
    fn exif_orientation_is_applied() {
        let jpeg = with_exif_orientation(&jpeg_of(&left_red_right_blue(64, 32)), 6);
        let img = decode_image_bytes(&jpeg, DecodeLimits::default()).expect("decode");
        // Orientation 6: rotate 90° clockwise to display; the red left half ends up on top.
        assert_eq!(img.dimensions(), (32, 64));
        let top = img.get_pixel(16, 5).0;
        let bottom = img.get_pixel(16, 58).0;
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    }

    #[test]
    fn cmyk_jpeg_becomes_rgb() {
        // Pure cyan in CMYK (Adobe-style inverted, as Photoshop writes it): C=255, M=Y=K=0.
        let mut data = Vec::new();
        for _ in 0..16 * 16 {
            data.extend([255u8, 0, 0, 0]);
        }
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 95)
            .encode(&data, 16, 16, jpeg_encoder::ColorType::Cmyk)
            .expect("encode cmyk");
        let img = decode_image_bytes(&out, DecodeLimits::default()).expect("decode cmyk");
        assert_eq!(img.dimensions(), (16, 16));
        let p = img.get_pixel(8, 8).0;
        // Cyan: red low, green and blue high — whatever the exact conversion, not grey or garbage.
        assert!(
            p[0] < 80 && p[1] > 170 && p[2] > 170,
            "cyan came out as {p:?}"
        );
    }

    #[test]
    fn grey_sixteen_bit_palette_and_alpha_pngs_become_rgb8() {
        // 16-bit grey.
        let grey16 =
            image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(8, 4, image::Luma([0x80FFu16]));
        let mut png16 = Vec::new();
        image::DynamicImage::ImageLuma16(grey16)
            .write_to(&mut Cursor::new(&mut png16), image::ImageFormat::Png)
            .expect("png16");
        assert_eq!(
            decode_image_bytes(&png16, DecodeLimits::default())
                .expect("decode")
                .get_pixel(1, 1)
                .0,
            // 0x80FF scales to 128; keeping the low byte instead would give 255.
            [128, 128, 128]
        );

        // RGBA: alpha dropped, colour kept.
        let rgba = image::RgbaImage::from_pixel(4, 4, image::Rgba([10, 20, 30, 0]));
        let mut png_rgba = Vec::new();
        image::DynamicImage::ImageRgba8(rgba)
            .write_to(&mut Cursor::new(&mut png_rgba), image::ImageFormat::Png)
            .expect("rgba");
        assert_eq!(
            decode_image_bytes(&png_rgba, DecodeLimits::default())
                .expect("decode")
                .get_pixel(0, 0)
                .0,
            [10, 20, 30]
        );

        // Palette.
        let mut pal = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut pal, 2, 1);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(vec![200, 100, 50, 1, 2, 3]);
            let mut writer = enc.write_header().expect("header");
            writer.write_image_data(&[0, 1]).expect("data");
        }
        let img = decode_image_bytes(&pal, DecodeLimits::default()).expect("decode palette");
        assert_eq!(img.get_pixel(0, 0).0, [200, 100, 50]);
        assert_eq!(img.get_pixel(1, 0).0, [1, 2, 3]);
    }

    #[test]
    fn limits_refuse_before_decoding() {
        let img = left_red_right_blue(300, 200);
        let jpeg = jpeg_of(&img);
        let small = DecodeLimits {
            max_side_px: 256,
            max_pixels: u64::MAX,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_image_bytes(&jpeg, small),
            Err(ImageLoadError::TooLarge {
                width: 300,
                height: 200,
                ..
            })
        ));
        let few = DecodeLimits {
            max_side_px: 1000,
            max_pixels: 50_000,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_image_bytes(&jpeg, few),
            Err(ImageLoadError::TooLarge { .. })
        ));
        assert!(decode_image_bytes(&jpeg, DecodeLimits::default()).is_ok());
    }

    #[test]
    fn jpeg_end_marker_detection() {
        let jpeg = jpeg_of(&left_red_right_blue(40, 40));
        assert!(jpeg_has_end_marker(&jpeg));
        assert!(!jpeg_has_end_marker(&jpeg[..jpeg.len() - 2]));
        // Trailing data after the end (motion photos) is fine.
        let mut trailing = jpeg.clone();
        trailing.extend(b"ftypmp42 and a video");
        assert!(decode_image_bytes(&trailing, DecodeLimits::default()).is_ok());
        // An EXIF block holding a complete thumbnail does not hide truncation of the main image.
        let with_exif = with_exif_orientation(&jpeg, 1);
        let cut = &with_exif[..with_exif.len() / 2];
        assert!(matches!(
            decode_image_bytes(cut, DecodeLimits::default()),
            Err(ImageLoadError::Corrupt { .. })
        ));
    }

    /// A PNG whose header claims `w`×`h`, with too little data for it (as a bomb has).
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 1, 1);
        enc.set_color(png::ColorType::Rgb);
        enc.write_header()
            .expect("header")
            .write_image_data(&[0, 0, 0])
            .expect("data");
        // Patch IHDR's width and height (bytes 16..24) and its CRC.
        out[16..20].copy_from_slice(&w.to_be_bytes());
        out[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&out[12..29]);
        out[29..33].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn default_limits_admit_a_16384_square_and_refuse_one_pixel_more() {
        let limits = DecodeLimits::default();
        // The square at the per-side limit passes the guard (and then fails on its missing data).
        match decode_image_bytes(&png_claiming(16_384, 16_384), limits) {
            Err(ImageLoadError::Corrupt { .. }) => {}
            other => panic!("16384² should pass the guard, got {other:?}"),
        }
        for (w, h) in [(16_385, 1), (1, 16_385), (16_384, 16_385)] {
            let err = decode_image_bytes(&png_claiming(w, h), limits).expect_err("refused");
            assert!(matches!(err, ImageLoadError::TooLarge { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains("16384 px per side") && msg.contains("268435456 pixels"),
                "{msg}"
            );
        }
    }

    #[test]
    fn special_files_are_refused_without_blocking_or_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("x.jpg");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("cstr");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Without the non-blocking open this call would wait forever for a writer.
        let err = load_image(&fifo, DecodeLimits::default()).expect_err("fifo");
        assert!(
            matches!(
                err,
                ImageLoadError::NotAFile {
                    kind: "a named pipe"
                }
            ),
            "{err}"
        );
        let zero = dir.path().join("zero.jpg");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        let err = load_image(&zero, DecodeLimits::default()).expect_err("device");
        assert!(
            matches!(err, ImageLoadError::NotAFile { kind: "a device" }),
            "{err}"
        );
        let big = dir.path().join("big.png");
        std::fs::write(&big, vec![0u8; 4096]).expect("write");
        let tight = DecodeLimits {
            max_file_bytes: 1000,
            ..DecodeLimits::default()
        };
        let err = load_image(&big, tight).expect_err("too big");
        assert!(
            matches!(
                err,
                ImageLoadError::FileTooLarge {
                    bytes: 4096,
                    max: 1000
                }
            ),
            "{err}"
        );
        let err = load_image(dir.path(), DecodeLimits::default()).expect_err("dir");
        assert!(matches!(err, ImageLoadError::NotAFile { .. }), "{err}");
    }
}
