//! CLIP embeddings: the image and text encoders and the BPE tokenizer.

pub mod tokenizer;

pub use tokenizer::ClipTokenizer;
