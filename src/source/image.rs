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
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 16k per side covers every camera and panorama users bring; 256 MP caps memory at ~1 GB RGBA.
        DecodeLimits { max_side_px: 16_384, max_pixels: 256_000_000 }
    }
}

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageLoadError {
    #[error("no such file")]
    NotFound,
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("not a recognised image format (the content is not JPEG, PNG, GIF, BMP, TIFF or WebP)")]
    UnknownFormat,
    #[error(
        "image is {width}x{height} pixels, over the decode limit of {max_side} px per side / {max_mp} MP (decompression-bomb guard)"
    )]
    TooLarge { width: u32, height: u32, max_side: u32, max_mp: u64 },
    #[error("corrupt or truncated {format} data: {reason}")]
    Corrupt { format: String, reason: String },
}

/// Decode the image file at `path` into upright RGB8.
pub fn load_image(path: &Path, limits: DecodeLimits) -> Result<RgbImage, ImageLoadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ImageLoadError::NotFound),
        Err(e) => return Err(ImageLoadError::Io(e)),
    };
    decode_image_bytes(&bytes, limits)
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
    decode_reader(Cursor::new(bytes), limits)
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

fn decode_reader<R: BufRead + Seek>(reader: R, limits: DecodeLimits) -> Result<RgbImage, ImageLoadError> {
    // Sniff the format from the bytes: a file's extension says nothing reliable about its content.
    let reader = ImageReader::new(reader).with_guessed_format()?;
    let Some(format) = reader.format() else {
        return Err(ImageLoadError::UnknownFormat);
    };
    let format_name = format!("{format:?}").to_uppercase();
    let corrupt = |e: image::ImageError| ImageLoadError::Corrupt { format: format_name.clone(), reason: e.to_string() };

    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width.max(height) > limits.max_side_px || u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageLoadError::TooLarge {
            width,
            height,
            max_side: limits.max_side_px,
            max_mp: limits.max_pixels / 1_000_000,
        });
    }
    // Orientation lives in EXIF; a missing or unreadable tag means "as stored".
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
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
            other => ImageLoadError::Corrupt { format: "image".into(), reason: other.to_string() },
        }
    }
}
