//! Shared CLI arguments for everything that embeds: the CLIP model flags and the index location
//! (loading itself is the library's, in `crate::load`).

use clap::Args;

use crate::embed::TextEncoder;
pub use crate::load::{ClipModels, LoadedImageEncoder};
use crate::runtime::DeviceRequest;
use crate::search::GalleryLocation;

/// `--index`, with a per-user default.
#[derive(Debug, Clone, Args)]
pub struct IndexArg {
    /// The gallery: an index directory (default: the per-user data directory's `gallery`) or
    /// a shared catalogue, `postgres://user@host/db[?catalogue=NAME&ef_search=N&sslmode=…]`.
    #[arg(long, env = crate::settings::var::INDEX, value_name = "DIR|URL")]
    pub index: Option<std::ffi::OsString>,
}

impl IndexArg {
    /// The gallery named (a bad catalogue URL is refused with why, its password masked).
    pub fn location(&self) -> anyhow::Result<GalleryLocation> {
        Ok(match &self.index {
            Some(v) => GalleryLocation::parse(v)?,
            None => GalleryLocation::Dir(crate::paths::data_dir().join("gallery")),
        })
    }
}

/// `--clip-model` / `--clip-text-model`: manifest ids or paths to any export with CLIP's interface.
#[derive(Debug, Clone, Default, Args)]
pub struct ClipArgs {
    /// CLIP image encoder: a manifest id or an .onnx path (pixel_values [N,3,224,224] → [N,D]).
    #[arg(long, env = crate::settings::var::CLIP_MODEL, value_name = "ID|PATH")]
    pub clip_model: Option<String>,
    /// CLIP text encoder: a manifest id or an .onnx path (input_ids [N,77] → [N,D]).
    #[arg(long, env = crate::settings::var::CLIP_TEXT_MODEL, value_name = "ID|PATH")]
    pub clip_text_model: Option<String>,
}

impl ClipArgs {
    /// The models these arguments name, for the library's loaders.
    pub fn models(&self) -> ClipModels {
        ClipModels {
            image: self.clip_model.clone(),
            text: self.clip_text_model.clone(),
        }
    }

    pub fn load_image_encoder(&self, request: DeviceRequest) -> anyhow::Result<LoadedImageEncoder> {
        self.models().load_image_encoder(request)
    }

    pub fn load_text_encoder(&self, request: DeviceRequest) -> anyhow::Result<TextEncoder> {
        self.models().load_text_encoder(request)
    }
}
