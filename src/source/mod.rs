//! Where frames come from: still images now; cameras and video files behind the same types later.

pub mod image;

pub use self::image::{DecodeLimits, ImageLoadError, decode_image_bytes, load_image};
