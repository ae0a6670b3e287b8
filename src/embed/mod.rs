//! CLIP embeddings: the image and text encoders, their preprocessing, and the BPE tokenizer.

pub mod encoder;
pub mod preprocess;
pub mod tokenizer;

pub use encoder::{
    CLIP_FAMILY_KEY, EmbedError, Embedding, ImageEncoder, TextEncoder, cosine, l2_normalize,
};
pub use preprocess::{CLIP_PREPROCESS_VERSION, CLIP_TENSOR_LEN, clip_preprocess_into, crop_region};
pub use tokenizer::ClipTokenizer;
