//! The CLIP byte-level BPE tokenizer, built from OpenAI's `bpe_simple_vocab_16e6.txt.gz` exactly
//! as `clip/simple_tokenizer.py` builds it (and as Hugging Face's `tokenizer.json` encodes it).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// `<|startoftext|>`.
pub const START_OF_TEXT: i64 = 49406;
/// `<|endoftext|>`.
pub const END_OF_TEXT: i64 = 49407;
/// CLIP's text context length.
pub const CONTEXT_LENGTH: usize = 77;
/// Word pieces whose merges are remembered.
const BPE_CACHE_ENTRIES: usize = 4096;
/// Merges used from the vocabulary file (OpenAI uses lines 1..=48894 after the header).
const MERGES_USED: usize = 49152 - 256 - 2;

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The vocabulary file could not be read.
    #[error("cannot read the CLIP vocabulary {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The vocabulary file is not a CLIP BPE vocabulary.
    #[error("the CLIP vocabulary {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A CLIP BPE tokenizer.
pub struct ClipTokenizer {
    encoder: HashMap<String, i64>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    pattern: Regex,
    cache: Mutex<HashMap<String, Vec<i64>>>,
}

/// GPT-2's reversible byte → printable-unicode map.
fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    map
}

impl ClipTokenizer {
    /// Build from the gzipped merges file (`bpe_simple_vocab_16e6.txt.gz`).
    pub fn from_gz_file(path: &std::path::Path) -> Result<ClipTokenizer, TokenizerError> {
        let read_err = |e: std::io::Error| TokenizerError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        Self::from_merges_text(&text).map_err(|reason| TokenizerError::Malformed {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Build from the merges text (header line, then one "a b" merge per line).
    pub fn from_merges_text(text: &str) -> Result<ClipTokenizer, String> {
        let merges: Vec<(String, String)> = text
            .lines()
            .skip(1)
            .take(MERGES_USED)
            .map(|l| {
                let mut parts = l.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                    _ => Err(format!("bad merge line {l:?}")),
                }
            })
            .collect::<Result<_, _>>()?;
        if merges.len() != MERGES_USED {
            return Err(format!(
                "expected {MERGES_USED} merges, found {}",
                merges.len()
            ));
        }
        let byte_encoder = bytes_to_unicode();
        // The vocabulary lists byte symbols in the map's insertion order: printable bytes (whose
        // symbol is the byte itself) first, then the remapped ones, i.e. sorted by symbol.
        let mut symbols: Vec<char> = byte_encoder.to_vec();
        symbols.sort_unstable();
        let mut vocab: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        vocab.extend(symbols.iter().map(|c| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let encoder = vocab
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as i64))
            .collect();
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        let pattern = Regex::new(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| e.to_string())?;
        Ok(ClipTokenizer {
            encoder,
            ranks,
            byte_encoder,
            pattern,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Token ids with start/end markers, unpadded.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        self.encode_up_to(text, usize::MAX)
    }

    /// [`Self::encode`], stopping once more than `max` ids are known (the rest would be cut).
    fn encode_up_to(&self, text: &str, max: usize) -> Vec<i64> {
        // NFC, collapse whitespace, lowercase: the normaliser of CLIP's tokenizer.json.
        let normalized: String = text.nfc().collect::<String>();
        let normalized = normalized
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let mut ids = vec![START_OF_TEXT];
        for m in self.pattern.find_iter(&normalized) {
            if ids.len() > max {
                break;
            }
            let piece = m.as_str();
            match piece {
                "<|startoftext|>" => ids.push(START_OF_TEXT),
                "<|endoftext|>" => ids.push(END_OF_TEXT),
                _ => ids.extend(self.bpe(piece)),
            }
        }
        ids.push(END_OF_TEXT);
        ids
    }

    /// Ids padded (with 0, OpenAI's convention) or truncated to 77, end marker kept last.
    pub fn encode_padded(&self, text: &str) -> [i64; CONTEXT_LENGTH] {
        let mut ids = self.encode_up_to(text, CONTEXT_LENGTH);
        if ids.len() > CONTEXT_LENGTH {
            ids.truncate(CONTEXT_LENGTH);
            ids[CONTEXT_LENGTH - 1] = END_OF_TEXT;
        }
        let mut out = [0i64; CONTEXT_LENGTH];
        out[..ids.len()].copy_from_slice(&ids);
        out
    }

    fn bpe(&self, piece: &str) -> Vec<i64> {
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(piece).cloned()) {
            return hit;
        }
        let chars: Vec<char> = piece
            .bytes()
            .map(|b| self.byte_encoder[usize::from(b)])
            .collect();
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|r| (*r, i))
                })
                .min();
            let Some((_, at)) = best else { break };
            let (a, b) = (word[at].clone(), word[at + 1].clone());
            // Merge every occurrence of the best pair, left to right, as the reference does.
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        let ids: Vec<i64> = word
            .iter()
            .filter_map(|t| self.encoder.get(t).copied())
            .collect();
        if let Ok(mut c) = self.cache.lock() {
            // Bounded: an app that takes prompts for days, or any text at all, must not grow
            // without end; starting over costs only re-merging the next pieces.
            if c.len() >= BPE_CACHE_ENTRIES {
                c.clear();
            }
            c.insert(piece.to_string(), ids.clone());
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of the shared CLIP tokenizer folder: `../shared` beside the checkout, or
    /// `ARVIS_SHARED_DIR` (as the integration tests find it).
    fn shared_tokenizer_file(name: &str) -> std::path::PathBuf {
        std::env::var_os(crate::settings::var::SHARED_DIR)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
            .join("models/clip-vit-b32/tokenizer")
            .join(name)
    }

    fn tokenizer() -> ClipTokenizer {
        ClipTokenizer::from_gz_file(&shared_tokenizer_file("bpe_simple_vocab_16e6.txt.gz"))
            .expect("shared CLIP vocabulary")
    }

    #[test]
    fn the_piece_cache_stays_bounded_and_long_texts_stop_at_77_ids_unchanged() {
        let t = tokenizer();
        // Many distinct words: the cache starts over instead of growing with them.
        for i in 0..(BPE_CACHE_ENTRIES + 500) {
            t.encode(&format!("w{i:x}q"));
        }
        assert!(t.cache.lock().unwrap().len() <= BPE_CACHE_ENTRIES);
        // Stopping early gives exactly the truncated full encoding.
        let long = "a photo of a very small red rocket on a wooden table ".repeat(40);
        let mut full = t.encode(&long);
        assert!(full.len() > CONTEXT_LENGTH);
        full.truncate(CONTEXT_LENGTH);
        full[CONTEXT_LENGTH - 1] = END_OF_TEXT;
        assert_eq!(t.encode_padded(&long).to_vec(), full);
    }

    #[test]
    fn matches_every_reference_case() {
        let path = shared_tokenizer_file("reference_token_ids.json");
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).expect("json");
        let tok = tokenizer();
        let cases = reference["cases"].as_array().expect("cases");
        assert_eq!(cases.len(), 15);
        for case in cases {
            let text = case["text"].as_str().expect("text");
            let expected: Vec<i64> = case["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_i64().expect("id"))
                .collect();
            assert_eq!(tok.encode(text), expected, "{text:?}");
        }
    }

    #[test]
    fn vocabulary_has_clip_size_and_specials() {
        let tok = tokenizer();
        assert_eq!(tok.encoder.len(), 49408);
        assert_eq!(tok.encoder["<|startoftext|>"], START_OF_TEXT);
        assert_eq!(tok.encoder["<|endoftext|>"], END_OF_TEXT);
    }

    #[test]
    fn padding_and_truncation_keep_the_end_marker() {
        let tok = tokenizer();
        let short = tok.encode_padded("a photo of a cat");
        assert_eq!(&short[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
        assert!(short[7..].iter().all(|&i| i == 0));
        let long = tok.encode_padded(&"cat ".repeat(200));
        assert_eq!(long[0], START_OF_TEXT);
        assert_eq!(long[CONTEXT_LENGTH - 1], END_OF_TEXT);
        assert!(long[1..CONTEXT_LENGTH - 1].iter().all(|&i| i == 2368));
    }

    #[test]
    fn malformed_vocabulary_is_an_error() {
        assert!(ClipTokenizer::from_merges_text("#version\na b\n").is_err());
        assert!(ClipTokenizer::from_merges_text("#version\na b c\n").is_err());
    }
}
