//! `arvis search`: image → image and text → image queries against a gallery index.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::clip::{ClipArgs, IndexArg};
use crate::runtime::DeviceRequest;
use crate::search::{Hit, store};
use crate::source::{DecodeLimits, load_image};

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Query images.
    pub images: Vec<PathBuf>,
    /// Query texts (repeatable), e.g. --text "a red bus".
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    /// Results per query, 1 to 100000 (never more than the index holds).
    #[arg(short = 'k', long, default_value_t = 10, value_parser = super::args::count::<100_000>)]
    pub k: usize,
    /// Drop results below this cosine similarity, -1 to 1.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true, value_parser = super::args::cosine)]
    pub min_score: f32,
    /// Scan every vector instead of the HNSW graph (slower, exact).
    #[arg(long)]
    pub exact: bool,
    /// Use a text model whose pairing with the index's image model cannot be checked (neither
    /// carries a CLIP family): you vouch that both towers come from one CLIP export.
    #[arg(long)]
    pub trust_text_model: bool,
    /// One JSON object per query: {"query": ..., "results": [{"path": ..., "score": ...}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub index: IndexArg,
    #[command(flatten)]
    pub clip: ClipArgs,
}

use crate::report::MatchJson;

#[derive(Debug, Serialize)]
struct QueryJson {
    query: String,
    results: Vec<MatchJson>,
}

#[derive(Debug, Serialize)]
struct QueryErrorJson {
    query: String,
    error: String,
}

pub fn run(args: SearchArgs, device: DeviceRequest) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !args.images.is_empty() || !args.texts.is_empty(),
        "give query images, or --text \"...\""
    );
    let dir = args.index.location()?;
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    let mut emit = |query: String,
                    result: Result<Vec<Hit>, String>,
                    out: &mut dyn Write|
     -> anyhow::Result<()> {
        match result {
            Ok(hits) => {
                let results = MatchJson::from_hits(hits, args.min_score);
                if args.json {
                    crate::report::write_json_line(out, &QueryJson { query, results })?;
                } else {
                    writeln!(out, "{query}:")?;
                    for r in &results {
                        writeln!(out, "  {:.4}  {}", r.score, r.path)?;
                    }
                }
            }
            Err(error) => {
                failures += 1;
                if args.json {
                    crate::report::write_json_line(out, &QueryErrorJson { query, error })?;
                } else {
                    eprintln!("{query}: error: {error}");
                }
            }
        }
        Ok(())
    };

    if !args.images.is_empty() {
        let mut loaded = args.clip.load_image_encoder(device)?;
        let mut index = store::open(&dir, &loaded.meta)?;
        for path in &args.images {
            let result = load_image(path, DecodeLimits::default())
                .map_err(|e| e.to_string())
                .and_then(|img| {
                    let q = loaded.encoder.embed(&[&img]).map_err(|e| e.to_string())?;
                    index
                        .search(&q[0], args.k, args.exact)
                        .map_err(|e| e.to_string())
                });
            emit(crate::paths::display_path(path), result, &mut out)?;
        }
    }
    if !args.texts.is_empty() {
        let mut text = args.clip.load_text_encoder(device)?;
        let mut index = store::open_any(&dir)?;
        anyhow::ensure!(
            index.meta().dim == text.dim,
            "the text model makes {}-d embeddings but index {} holds {}-d image embeddings: use the text tower that belongs to the index's image model ({})",
            text.dim,
            dir,
            index.meta().dim,
            index.meta().model_id
        );
        crate::load::check_text_pairing(
            index.meta(),
            text.family.as_deref(),
            args.trust_text_model,
            &dir,
        )?;
        let refs: Vec<&str> = args.texts.iter().map(String::as_str).collect();
        let embeddings = text.embed(&refs)?;
        for (t, q) in args.texts.iter().zip(embeddings) {
            let result = index
                .search(&q, args.k, args.exact)
                .map_err(|e| e.to_string());
            emit(t.clone(), result, &mut out)?;
        }
    }
    Ok(if failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
