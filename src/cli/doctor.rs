//! `arvis doctor`: what is installed, what runs where, and what is broken (with the fix).

use std::process::ExitCode;

use crate::models::{manifest, models_dir};
use crate::runtime::{Device, DeviceRequest, Runtime, nvidia_driver_present};

/// `settings`: the tuning settings as read at start-up, or what was wrong with them.
pub fn run(
    request: DeviceRequest,
    settings: Result<&crate::settings::Settings, &crate::settings::SettingsError>,
) -> anyhow::Result<ExitCode> {
    let mut problems = 0;
    println!("arvis {}", env!("CARGO_PKG_VERSION"));
    println!("  cache:  {}", crate::paths::cache_dir().display());
    println!("  data:   {}", crate::paths::data_dir().display());
    let features: Vec<&str> = [
        ("gui", cfg!(feature = "gui")),
        ("camera", cfg!(feature = "camera")),
        ("video", cfg!(feature = "video")),
    ]
    .into_iter()
    .filter_map(|(n, on)| on.then_some(n))
    .collect();
    println!(
        "  features: {}",
        if features.is_empty() {
            "none (headless)".into()
        } else {
            features.join(", ")
        }
    );

    let device = request.resolve();
    println!("\nONNX Runtime (device {device}, requested {request})");
    match Runtime::get(device.flavor()) {
        Ok(rt) => {
            println!("  version:   {}", rt.version);
            println!("  library:   {}", rt.library.display());
            println!("  build:     {}", rt.flavor);
            println!("  providers: {}", rt.available_providers().join(", "));
            println!("  {}", crate::runtime::telemetry_report());
            // The tuning settings, as read once at start-up; what is wrong counts as a problem.
            match settings {
                Ok(s) => {
                    println!("  CUDA EP:   {} (applies to CUDA sessions)", s.cuda);
                    println!(
                        "  intra-op spinning: {} (ARVIS_ORT_SPIN)",
                        if s.ort_spin { "on" } else { "off" }
                    );
                    println!("  intra-op threads: {} (ARVIS_ORT_THREADS)", s.ort_threads);
                    let io = s
                        .detector_io
                        .unwrap_or_else(|| crate::detect::IoMode::default_for(device));
                    match io.check(device) {
                        Ok(()) => println!(
                            "  detector I/O: {io} (ARVIS_DETECTOR_IO: plain, bound, graph)"
                        ),
                        Err(e) => {
                            problems += 1;
                            println!("  PROBLEM: {e}");
                        }
                    }
                    println!(
                        "  prefetch priority: {} (ARVIS_PREFETCH_PRIORITY) · CLIP batch ceiling: {} (ARVIS_CLIP_MAX_BATCH)",
                        serde_json::to_value(s.prefetch_priority)?
                            .as_str()
                            .unwrap_or("?"),
                        s.clip_max_batch
                            .map_or_else(|| "32 on the CPU, 256 on CUDA".into(), |n| n.to_string())
                    );
                }
                Err(e) => {
                    for p in &e.0 {
                        problems += 1;
                        println!("  PROBLEM: {p}");
                    }
                }
            }
            if let Device::Cuda(_) = device
                && !rt
                    .available_providers()
                    .iter()
                    .any(|p| p == device.provider_name())
            {
                problems += 1;
                println!("  PROBLEM: {} is not in this build", device.provider_name());
            }
            // Compiled in is not working: build and run real sessions on the device.
            for line in probe_sessions(rt, device) {
                if line.starts_with("PROBLEM") {
                    problems += 1;
                }
                println!("  {line}");
            }
        }
        Err(e) => {
            problems += 1;
            println!("  PROBLEM: {e}");
        }
    }

    println!("\nModels ({})", models_dir().display());
    let mirror = crate::settings::non_empty(crate::settings::var::MODEL_MIRROR);
    println!(
        "  mirror:  {}",
        mirror.as_deref().unwrap_or("(none: public URLs)")
    );
    let manifest = manifest()?;
    for m in &manifest.models {
        let status = super::models::model_status(m);
        if status.starts_with("CORRUPT") {
            problems += 1;
        }
        println!("  {:<16} {status}", m.id);
    }

    println!("\nGallery");
    problems += gallery_report();

    println!("\nCameras");
    for line in cameras() {
        println!("  {line}");
    }

    println!("\nGPUs");
    for line in gpus() {
        println!("  {line}");
    }

    if problems > 0 {
        println!(
            "\n{problems} problem(s) found; each line marked PROBLEM or CORRUPT says what to do."
        );
        Ok(ExitCode::from(1))
    } else {
        println!("\nAll good.");
        Ok(ExitCode::SUCCESS)
    }
}

/// Build and run a small CLIP-shaped model on `device` (generated once into the cache), and
/// say where the cached default detector's nodes would run there. A CUDA provider that is
/// compiled in but cannot run, or a model that would silently fall back to the CPU, shows here.
fn probe_sessions(rt: &Runtime, device: Device) -> Vec<String> {
    let mut lines = Vec::new();
    let probe = || -> anyhow::Result<String> {
        let path = crate::paths::cache_dir()
            .join("generated")
            .join("doctor-probe-vision.onnx");
        if !path.is_file() {
            use crate::models::generate::{ClipConfig, clip_vision};
            std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
            crate::util::write_atomic(&path, &clip_vision(&ClipConfig::TINY, 1).to_bytes())?;
        }
        let t = std::time::Instant::now();
        let mut enc = crate::embed::ImageEncoder::load(rt, &path, device)?;
        let img = image::RgbImage::from_pixel(224, 224, image::Rgb([128, 128, 128]));
        let v = enc.embed(&[&img])?;
        anyhow::ensure!(
            v.len() == 1 && v[0].iter().all(|x| x.is_finite()),
            "the probe model returned no or non-finite output"
        );
        Ok(format!(
            "probe:     a small CLIP-shaped model built and ran on {device} ({}) in {} ms",
            enc.placement,
            t.elapsed().as_millis()
        ))
    };
    match probe() {
        Ok(line) => lines.push(line),
        Err(e) => lines.push(format!("PROBLEM: no session runs on {device}: {e:#}")),
    }
    if let Ok((path, name)) = super::resolve_detector_cached(device) {
        match crate::detect::Detector::load(rt, &path, &name, device) {
            Ok(mut d) => {
                let note = match &d.placement {
                    crate::runtime::Placement::Mixed(why) => format!(
                        ": its figures on {device} are partly CPU figures ({})",
                        why.lines().next().unwrap_or_default()
                    ),
                    _ => String::new(),
                };
                lines.push(format!("detector:  {name} runs on {}{note}", d.placement));
                // What several sources get (`arvis watch`): derived and checked as watch does.
                let batching = d.enable_batching(rt, device).clone();
                let schedule = crate::pipeline::multi::Schedule::auto(&batching, device);
                lines.push(format!(
                    "sources:   several run {schedule} (--schedule auto); batched detection: {batching}"
                ));
            }
            Err(e) => lines.push(format!("PROBLEM: detector {name} on {device}: {e}")),
        }
    }
    lines
}

#[cfg(feature = "camera")]
fn cameras() -> Vec<String> {
    match nokhwa::query(nokhwa::utils::ApiBackend::Auto) {
        Ok(list) if list.is_empty() => {
            vec!["none found (arvis can still open videos and images)".into()]
        }
        Ok(list) => list
            .iter()
            .map(|c| format!("{}: {} ({})", c.index(), c.human_name(), c.description()))
            .collect(),
        Err(e) => vec![format!("could not list cameras: {e}")],
    }
}

#[cfg(not(feature = "camera"))]
fn cameras() -> Vec<String> {
    vec!["camera support not built (feature `camera`)".into()]
}

fn gpus() -> Vec<String> {
    let mut lines = Vec::new();
    if nvidia_driver_present() {
        match std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=index,name,memory.used,memory.total,driver_version",
                "--format=csv,noheader",
            ])
            .output()
        {
            Ok(out) if out.status.success() => {
                lines.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(|l| format!("NVIDIA {l}")),
                );
            }
            _ => lines.push("NVIDIA driver loaded, but nvidia-smi did not answer".into()),
        }
    } else {
        lines.push("no NVIDIA driver: CUDA unavailable, models run on the CPU".into());
    }
    lines.extend(render_adapters());
    lines
}

#[cfg(feature = "gui")]
fn render_adapters() -> Vec<String> {
    use eframe::wgpu;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    // GL probing without a display only prints noise; WGPU_BACKEND=gl still lists it on request.
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    if adapters.is_empty() {
        return vec!["no wgpu adapter: the desktop window cannot open on this machine".into()];
    }
    adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            format!(
                "render adapter: {} ({:?}, {:?})",
                info.name, info.backend, info.device_type
            )
        })
        .collect()
}

#[cfg(not(feature = "gui"))]
fn render_adapters() -> Vec<String> {
    Vec::new()
}

/// The gallery `ARVIS_INDEX` names (or the default directory): where, what store, how big,
/// how it is searched. A gallery that cannot be opened is a problem, with the fix.
fn gallery_report() -> usize {
    let location = match std::env::var_os(crate::settings::var::INDEX).filter(|v| !v.is_empty()) {
        Some(v) => match crate::search::GalleryLocation::parse(&v) {
            Ok(l) => l,
            Err(e) => {
                println!("  PROBLEM: {e}");
                return 1;
            }
        },
        None => crate::search::GalleryLocation::Dir(crate::paths::data_dir().join("gallery")),
    };
    println!("  index:     {location}");
    if !crate::search::store::exists(&location) {
        println!("  none yet:  `arvis index add FOLDER` makes it");
        return 0;
    }
    let report = crate::search::store::open_any(&location).and_then(|g| {
        let stats = g.stats()?;
        Ok((g.describe()?, stats))
    });
    match report {
        Ok((lines, stats)) => {
            for (what, value) in lines {
                println!("  {:<11}{value}", format!("{what}:"));
            }
            println!(
                "  holds:     {} image(s), {} item(s), {} text prompt(s), {:.1} MB",
                stats.count,
                stats.items,
                stats.prompts,
                stats.bytes_on_disk as f64 / 1e6
            );
            println!("  model:     {} ({}-d)", stats.model_id, stats.dim);
            0
        }
        Err(crate::search::IndexError::Missing(_)) => {
            println!("  none yet:  `arvis index add FOLDER` makes it");
            0
        }
        Err(e) => {
            println!("  PROBLEM: {e}");
            1
        }
    }
}
