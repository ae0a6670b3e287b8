//! `arvis bench …`: argument parsing and dispatch; the benchmarks live in [`crate::bench`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::bench;
use crate::bench::detect::DetectBenchOptions;
use crate::runtime::DeviceRequest;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Detector: per-stage times, and end-to-end ÷ bare `session.run` on the same inputs.
    Detect {
        /// Images or directories to run on.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Detector model (manifest id or .onnx path).
        #[arg(long, env = crate::settings::var::DETECTOR)]
        model: Option<String>,
        /// Timed passes over all the images (after one warm-up pass).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Print the results as one JSON object.
        #[arg(long)]
        json: bool,
        /// Also run the Python reference (onnxruntime + NumPy + Pillow, installed with pip into
        /// the cache on first use) on the same images and model, and time both whole processes.
        #[arg(long)]
        python: bool,
        /// Skip the comparison of detector I/O modes (plain, bound, graph).
        #[arg(long)]
        no_io_modes: bool,
    },
    /// Every tuning switch (TF32, cuDNN conv search, detector I/O and CUDA graphs, memory limit,
    /// FP16 models; on the CPU: intra-op spinning, detector I/O, FP16) against the defaults,
    /// each in its own process on the same images; the defaults run first and last.
    Switches {
        /// Images or a directory of them.
        images: PathBuf,
        /// FP32 detector (its FP16 twin is converted into the cache).
        #[arg(long)]
        model: Option<String>,
        /// FP32 image encoder (default: the generated full-size ViT-B/32, as for `bench embed`).
        #[arg(long)]
        clip_model: Option<String>,
        /// Timed detector passes over the images per variant.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// CLIP batch sizes per variant.
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        batches: Vec<usize>,
        /// Measure every variant this many times, round-robin, and report medians.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// CLIP image embedding throughput per batch size, against bare `session.run` on the same tensors.
    Embed {
        /// Images or directories to embed.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Image encoder (default: the full ViT-B/32 architecture with random weights, generated
        /// into the cache on first use; speed does not depend on weight values).
        #[arg(long, env = crate::settings::var::CLIP_MODEL)]
        clip_model: Option<String>,
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        batches: Vec<usize>,
        /// Images per measurement (the inputs are cycled).
        #[arg(long, default_value_t = 32)]
        images: usize,
        /// Also auto-tune the batch size (1, 2, 4 … 64, backing off on out-of-memory) as arvis
        /// does on a GPU, and print the choice.
        #[arg(long)]
        tune: bool,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Video end to end (detect + track + per-track CLIP): serial vs pipelined on two threads,
    /// against 1 / max(stage) measured in the same run.
    Video {
        /// A video file, or a directory of its frames as images (taken in file-name order; for
        /// builds without video support).
        input: PathBuf,
        /// Detector model (manifest id or .onnx path).
        #[arg(long, env = crate::settings::var::DETECTOR)]
        model: Option<String>,
        /// Image encoder (default: the generated full-size ViT-B/32, as for `bench embed`).
        #[arg(long, env = crate::settings::var::CLIP_MODEL)]
        clip_model: Option<String>,
        /// Frames to use from the start of the video.
        #[arg(long, default_value_t = 100)]
        frames: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Many live sources on one detector: 1, 2 and 4 synthetic cameras (the given photos at a
    /// fixed frame rate), one frame at a time and batched, against one source in the same run.
    Streams {
        /// Images or directories of images the cameras show (scaled to the first one's size).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Detector model (manifest id or .onnx path); a dynamically quantised one (the CPU
        /// default) cannot batch, so only one-at-a-time runs are measured with it.
        #[arg(long, env = crate::settings::var::DETECTOR)]
        model: Option<String>,
        /// Frame rate of each synthetic camera.
        #[arg(long, default_value_t = 30.0)]
        fps: f64,
        /// Measured seconds per run (after 1.5 s of warm-up).
        #[arg(long, default_value_t = 8.0)]
        seconds: f64,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every benchmark in turn (detect with the Python reference, embed with batch tuning,
    /// search at 10k and 100k vectors, and video when built with video support).
    All {
        /// Images or directories (detect, embed).
        images: PathBuf,
        /// A video (video bench).
        video: Option<PathBuf>,
        /// Detector model for the detect bench (the issue targets use yolov8n-fp32).
        #[arg(long, env = crate::settings::var::DETECTOR)]
        model: Option<String>,
        /// Skip the Python reference (it needs pip the first time).
        #[arg(long)]
        no_python: bool,
        /// One JSON object with every result.
        #[arg(long)]
        json: bool,
    },
    /// Matching a region against known items (nearest images aggregated per item) vs per-image
    /// matching, on one real index of synthetic embeddings, in the same run.
    Items {
        /// Items in the gallery.
        #[arg(long, default_value_t = 10_000)]
        items: usize,
        /// Images per item.
        #[arg(long, default_value_t = 2)]
        images_per_item: usize,
        /// Regions matched.
        #[arg(long, default_value_t = 300)]
        queries: usize,
        /// Vector dimensions (CLIP ViT-B/32: 512).
        #[arg(long, default_value_t = 512)]
        dim: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Vector search: HNSW vs exact scan on synthetic clustered unit vectors, in the same run.
    Search {
        /// Index sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        sizes: Vec<usize>,
        /// Queries per size.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Vector dimensions (CLIP ViT-B/32: 512).
        #[arg(long, default_value_t = 512)]
        dim: usize,
        /// Also measure a PostgreSQL + pgvector server (`postgres://user@host/db`) on the same
        /// vectors and queries, in a catalogue of the bench's own that it drops afterwards.
        #[arg(long, value_name = "URL")]
        store: Option<std::ffi::OsString>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: BenchCommand, request: DeviceRequest) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::All {
            images,
            video,
            model,
            no_python,
            json,
        } => bench::bench_all(&images, video.as_deref(), model, !no_python, json, request),
        BenchCommand::Streams {
            images,
            model,
            fps,
            seconds,
            json,
        } => bench::streams::bench_streams(
            &images,
            model.as_deref(),
            fps.clamp(1.0, 240.0),
            seconds,
            json,
            request,
        ),
        BenchCommand::Video {
            input,
            model,
            clip_model,
            frames,
            json,
        } => bench::video::bench_video(
            &input,
            model.as_deref(),
            clip_model,
            frames.max(1),
            json,
            request,
        ),
        BenchCommand::Items {
            items,
            images_per_item,
            queries,
            dim,
            json,
        } => bench::items::bench_items(
            items.max(1),
            images_per_item.max(1),
            queries.max(1),
            dim.max(1),
            json,
        ),
        BenchCommand::Search {
            sizes,
            queries,
            dim,
            store,
            json,
        } => {
            let store = match store.as_deref().map(crate::search::GalleryLocation::parse) {
                None => None,
                Some(Ok(crate::search::GalleryLocation::Catalogue(url))) => Some(url),
                Some(Ok(crate::search::GalleryLocation::Dir(d))) => anyhow::bail!(
                    "--store takes a catalogue URL (postgres://…), not {}: the local HNSW is always measured",
                    crate::paths::display_path(&d)
                ),
                Some(Err(e)) => return Err(e.into()),
            };
            bench::search::bench_search(&sizes, queries.max(1), dim, store.as_deref(), json)
        }
        BenchCommand::Embed {
            inputs,
            clip_model,
            batches,
            images,
            tune,
            json,
        } => bench::embed::bench_embed(
            &inputs,
            clip_model,
            &batches,
            images.max(1),
            tune,
            json,
            request,
        ),
        BenchCommand::Detect {
            inputs,
            model,
            rounds,
            json,
            python,
            no_io_modes,
        } => bench::detect::bench_detect(
            &inputs,
            model.as_deref(),
            DetectBenchOptions {
                rounds: rounds.max(1),
                json,
                python,
                io_modes: !no_io_modes,
            },
            request,
        ),
        BenchCommand::Switches {
            images,
            model,
            clip_model,
            rounds,
            batches,
            repeat,
            json,
        } => bench::switches::bench_switches(
            &images,
            model,
            clip_model,
            rounds.max(1),
            repeat.max(1),
            &batches,
            json,
            request,
        ),
    }
}
