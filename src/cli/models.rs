//! `arvis models`: list, fetch and verify the manifest's models.

use std::process::ExitCode;

use clap::Subcommand;

use crate::models::{self, ModelSpec, fetch_model, manifest, model_sources, models_dir};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the models arvis knows, and whether each is in the cache.
    List,
    /// Download models into the cache (default: the default detector), verifying sha256.
    Fetch {
        /// Model ids (see `arvis models list`).
        ids: Vec<String>,
        /// Fetch every model that has a source (public URL or mirror).
        #[arg(long)]
        all: bool,
        /// Download again even when a verified copy is cached.
        #[arg(long)]
        force: bool,
    },
    /// Re-hash every cached model against the manifest.
    Verify,
    /// Convert a model to FP16 (weights and activations; inputs and outputs stay FP32) and check
    /// it against the FP32 original on images: detectors must find the same objects (same class,
    /// box IoU ≥ 0.95 for scores ≥ 0.4), image encoders the same embeddings (cosine ≥ 0.999).
    Convert {
        /// A manifest id or an .onnx path.
        model: String,
        /// Convert to FP16 (the only conversion for now; required so the command says what it does).
        #[arg(long, required = true)]
        fp16: bool,
        /// Where to write it (default: the cache's `converted/` folder, `<name>-fp16.onnx`).
        #[arg(short, long)]
        out: Option<std::path::PathBuf>,
        /// Images or folders to validate on (recommended).
        #[arg(long, num_args = 1..)]
        validate: Vec<std::path::PathBuf>,
        /// Do not convert: validate this existing FP16 model (e.g. a published FP16 export)
        /// against MODEL on the --validate images; exit 1 if it differs beyond tolerance.
        #[arg(
            long,
            value_name = "FP16.onnx",
            requires = "validate",
            conflicts_with = "out"
        )]
        check: Option<std::path::PathBuf>,
    },
    /// Write CLIP-interface models with seeded RANDOM weights (for tests and benchmarks only).
    Generate {
        /// `clip-tiny` (small, for tests) or `clip-vit-b32` (full ViT-B/32 shapes, for benchmarks).
        #[arg(value_parser = ["clip-tiny", "clip-vit-b32"])]
        kind: String,
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(cmd: ModelsCommand, device: crate::runtime::DeviceRequest) -> anyhow::Result<ExitCode> {
    let manifest = manifest()?;
    match cmd {
        ModelsCommand::Convert {
            model,
            fp16: _,
            out,
            validate,
            check,
        } => super::convert::run(&model, out, check, &validate, device),
        ModelsCommand::List => {
            println!("cache: {}", models_dir().display());
            for m in &manifest.models {
                let present = models_dir().join(&m.file).is_file();
                let default = if manifest.defaults.detector == m.id {
                    " (default detector)"
                } else if manifest.defaults.detector_cuda.as_ref() == Some(&m.id) {
                    " (default detector on CUDA)"
                } else {
                    ""
                };
                println!(
                    "{:<16} {:<8} {}{default}",
                    m.id,
                    if present { "cached" } else { "-" },
                    m.description
                );
                if !m.note.is_empty() {
                    println!("{:<16} {:<8} note: {}", "", "", m.note);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Fetch { ids, all, force } => {
            let specs: Vec<&ModelSpec> = if all {
                manifest
                    .models
                    .iter()
                    .filter(|m| model_sources(m).is_ok())
                    .collect()
            } else if ids.is_empty() {
                vec![manifest.require(&manifest.defaults.detector)?]
            } else {
                ids.iter()
                    .map(|id| manifest.require(id))
                    .collect::<Result<_, _>>()?
            };
            let mut failed = 0;
            for spec in specs {
                match fetch_model(spec, force) {
                    Ok(path) => println!("{:<16} ok  {}", spec.id, path.display()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{:<16} error: {e}", spec.id);
                    }
                }
            }
            Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        ModelsCommand::Generate { kind, out, seed } => {
            use crate::models::generate::{ClipConfig, clip_text, clip_vision};
            let cfg = if kind == "clip-tiny" {
                ClipConfig::TINY
            } else {
                ClipConfig::VIT_B32
            };
            std::fs::create_dir_all(&out)?;
            // Both towers carry one family: `search --text` checks the pairing by it.
            let family = format!("generated:{}:seed{seed}", cfg.name);
            for (tower, mut model) in [
                ("vision", clip_vision(&cfg, seed)),
                ("text", clip_text(&cfg, seed + 1)),
            ] {
                model
                    .metadata
                    .push((crate::embed::CLIP_FAMILY_KEY.into(), family.clone()));
                let path = out.join(format!("{}-{tower}.onnx", cfg.name));
                crate::util::write_atomic(&path, &model.to_bytes())?;
                println!("{}", path.display());
            }
            eprintln!(
                "note: these models have random weights: use them to test and benchmark arvis, not to search real photos"
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Verify => {
            let mut failed = 0;
            for m in &manifest.models {
                let path = models_dir().join(&m.file);
                if !path.is_file() {
                    println!("{:<16} not cached", m.id);
                    continue;
                }
                match models::fetch::full_verify(m, &path) {
                    Ok(()) => println!("{:<16} ok", m.id),
                    Err(e) => {
                        failed += 1;
                        println!("{:<16} BAD: {e}", m.id);
                    }
                }
            }
            Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// One line about a model for `arvis doctor`.
pub fn model_status(m: &ModelSpec) -> String {
    let path = models_dir().join(&m.file);
    if !path.is_file() {
        return match model_sources(m) {
            Ok(sources) => format!("not cached (would fetch from {})", sources[0]),
            Err(e) => format!("not cached: {e}"),
        };
    }
    match models::fetch::full_verify(m, &path) {
        Ok(()) => format!("cached, sha256 ok ({})", path.display()),
        Err(e) => format!("CORRUPT: {e}"),
    }
}
