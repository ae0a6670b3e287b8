//! The desktop app rendered headless with wgpu (Vulkan on lavapipe, pinned) through
//! egui_kittest: real detector, real pipeline threads, a gallery index built with the generated
//! tiny CLIP. Asserts overlay pixels at the box edges, the matches panel, the HUD, bad input
//! handling and folder drops; compares a committed snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic
#![cfg(feature = "gui")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arvis::app::{AppOptions, ArvisApp};
use arvis::pipeline::live::{SourceState, Stage};
use arvis::runtime::{Device, DeviceRequest};
use eframe::egui;
use eframe::egui_wgpu::{self, wgpu};
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};

use common::*;

fn bus() -> PathBuf {
    images_dir().join("ultralytics_bus.jpg")
}

/// One backend everywhere so snapshots compare: Vulkan (lavapipe on these machines).
fn vulkan() -> egui_wgpu::WgpuSetup {
    let mut setup = egui_kittest::wgpu::default_wgpu_setup();
    if let egui_wgpu::WgpuSetup::CreateNew(s) = &mut setup {
        s.instance_descriptor.backends = wgpu::Backends::VULKAN;
    }
    setup
}

fn harness(source: Option<PathBuf>, index: PathBuf) -> Harness<'static, ArvisApp> {
    // Crops taught from the view go to a folder of the test's own, never the user's.
    let images = tempfile::tempdir().unwrap().keep();
    harness_with(source, index, images)
}

fn harness_with(
    source: Option<PathBuf>,
    index: PathBuf,
    gallery_images: PathBuf,
) -> Harness<'static, ArvisApp> {
    let sources = source
        .map(|p| p.display().to_string())
        .into_iter()
        .collect();
    harness_sources(sources, index, gallery_images)
}

fn harness_sources(
    sources: Vec<String>,
    index: PathBuf,
    gallery_images: PathBuf,
) -> Harness<'static, ArvisApp> {
    runtime();
    let (clip, _) = tiny_gallery();
    let mut loaders = arvis::app::loaders(
        Some(yolo_int8().display().to_string()),
        arvis::load::ClipModels {
            image: Some(clip.display().to_string()),
            text: None,
        },
        DeviceRequest::Exact(Device::Cpu),
    );
    // The app's text loader fetches the tokenizer through the model cache; a test process has
    // no mirror setting, so this one reads the shared mirror's vocabulary directly and checks
    // the pairing as the app's does.
    loaders.text = Box::new(|index, dir| {
        let tokenizer = arvis::embed::ClipTokenizer::from_gz_file(
            &models_mirror().join("clip-vit-b32/tokenizer/bpe_simple_vocab_16e6.txt.gz"),
        )?;
        let text =
            arvis::embed::TextEncoder::load(runtime(), &clip_tiny().1, tokenizer, Device::Cpu)?;
        arvis::load::check_text_pairing(index, text.family.as_deref(), false, dir)?;
        Ok(text)
    });
    let options = AppOptions {
        sources,
        index: Some(index),
        gallery_images: Some(gallery_images),
        fresh_settings: true,
        ..AppOptions::default()
    };
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .wgpu_setup(vulkan())
        .build_eframe(move |cc| ArvisApp::new(cc, loaders, options))
}

/// Step the UI (the pipeline runs on its own threads) until `cond` holds.
fn step_until(
    h: &mut Harness<'static, ArvisApp>,
    what: &str,
    mut cond: impl FnMut(&ArvisApp) -> bool,
) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        h.step();
        if cond(h.state()) {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; status: {:?}; messages: {:?}",
            h.state().status(),
            h.state().messages()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// A real click (hover, press, release) at `pos`, then the pointer leaves.
fn click_at(h: &mut Harness<'static, ArvisApp>, pos: egui::Pos2) {
    h.hover_at(pos);
    h.step();
    for pressed in [true, false] {
        h.event(egui::Event::PointerButton {
            pos,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::NONE,
        });
    }
    h.step();
    h.remove_cursor();
    h.step();
    h.step();
}

/// Click region `i` of the frame on screen.
fn click_region(h: &mut Harness<'static, ArvisApp>, i: usize) {
    let app = h.state();
    let shown = app.shown().unwrap().clone();
    let view = app.view_rect().expect("the frame is on screen");
    let scale = view.width() / shown.frame.image.width() as f32;
    let b = shown.regions[i].detection.bbox;
    let pos = egui::pos2(
        view.min.x + (b[0] + b[2]) / 2.0 * scale,
        view.min.y + (b[1] + b[3]) / 2.0 * scale,
    );
    click_at(h, pos);
}

/// Focus the text field labelled `label` and type `text` into it.
fn type_into(h: &mut Harness<'static, ArvisApp>, label: &str, text: &str) {
    h.get_by_role_and_label(egui::accesskit::Role::TextInput, label)
        .focus();
    h.step();
    h.get_by_role_and_label(egui::accesskit::Role::TextInput, label)
        .type_text(text);
    h.step();
}

/// Scroll the button (or header) labelled `label` into view and click it.
fn press(h: &mut Harness<'static, ArvisApp>, label: &str) {
    h.get_by_label(label).scroll_to_me();
    // Scrolling is animated: let it settle before reading where the button is.
    for _ in 0..20 {
        h.step();
    }
    // Through accesskit (as assistive technology clicks): a pointer click at the button's
    // centre misses when the layout moves under it between two frames, as it does when a
    // status message fades out after its 8 s (real time: slow machines hit it).
    h.get_by_label(label).click_accesskit();
    // One frame handles the click, the next shows what it opened.
    h.step();
    h.step();
}

/// Region `i`'s label plate as the overlay draws it now.
fn plate(app: &ArvisApp, i: usize) -> String {
    let shown = app.shown().unwrap();
    arvis::render::region_plate(
        &shown.regions[i],
        &app.status().class_names,
        app.settings().plate_parts(app.status().gallery_decision),
    )
}

fn crops_in(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for folder in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(folder.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "jpg") {
                found.push(f.path());
            }
        }
    }
    found
}

/// The first region of the frame on screen that the detector calls a bus.
fn bus_region(app: &ArvisApp) -> usize {
    let names = &app.status().class_names;
    app.shown()
        .unwrap()
        .regions
        .iter()
        .position(|r| names[r.detection.class_id] == "bus")
        .expect("a bus")
}

#[test]
fn a_box_added_to_the_gallery_is_recognised_on_the_next_frame_and_forgotten_again() {
    let dir = tempfile::tempdir().unwrap();
    let (index, images) = (dir.path().join("index"), dir.path().join("gallery-images"));
    let mut h = harness_with(Some(bus()), index.clone(), images.clone());
    step_until(&mut h, "detections", |app| {
        app.shown()
            .is_some_and(|s| s.detected && !s.regions.is_empty())
    });
    let bus = bus_region(h.state());
    assert!(!plate(h.state(), bus).contains('≈'), "no gallery yet");
    click_region(&mut h, bus);
    assert_eq!(h.state().selected(), Some(bus));

    // An empty label is refused with a message; nothing is written.
    h.get_by_label("Add to gallery").click_accesskit();
    h.step();
    h.step();
    assert!(
        h.state()
            .messages()
            .iter()
            .any(|m| m.contains("cannot be empty")),
        "{:?}",
        h.state().messages()
    );
    assert!(crops_in(&images).is_empty());

    // Select the bus → "Add as:" a new item → Add to gallery.
    type_into(&mut h, "Add as:", "Line 27 bus");
    h.get_by_label("Add to gallery").click_accesskit();
    h.step();
    step_until(&mut h, "the plate to name the new item", |app| {
        app.shown().is_some_and(|s| s.matched) && plate(app, bus).contains("≈ Line 27 bus")
    });
    let crops = crops_in(&images);
    assert_eq!(crops.len(), 1, "{crops:?}");
    assert!(
        crops[0].starts_with(images.join("Line 27 bus")),
        "{crops:?}"
    );
    let items = &h.state().status().items;
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].label.as_str(), items[0].images),
        ("Line 27 bus", 1)
    );
    h.step();
    h.get_by_label_contains("added to \"Line 27 bus\"");
    h.get_by_label_contains("is Line 27 bus");

    // The gallery panel renames it: the plate follows, and the crop folder records the name.
    press(&mut h, "Gallery items (1)");
    press(&mut h, "Rename");
    let new_name = (egui::accesskit::Role::TextInput, "New name:");
    h.get_by_role_and_label(new_name.0, new_name.1).focus();
    h.step();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.step();
    h.get_by_role_and_label(new_name.0, new_name.1)
        .type_text("Line 27");
    h.step();
    press(&mut h, "OK");
    step_until(&mut h, "the plate to name the renamed item", |app| {
        app.status().items.iter().any(|i| i.label == "Line 27")
            && plate(app, bus).contains("≈ Line 27 ")
            && !plate(app, bus).contains("Line 27 bus")
    });
    assert_eq!(
        std::fs::read_to_string(images.join("Line 27 bus").join(".label")).unwrap(),
        "Line 27"
    );

    // "Forget this image" on its match thumbnail: back to unknown, the crop file gone.
    h.get_by_label("Forget this image").click_accesskit();
    h.step();
    step_until(&mut h, "the region to be unknown again", |app| {
        app.status().items.is_empty()
            && app.shown().is_some_and(|s| s.matched)
            && !plate(app, bus).contains('≈')
    });
    assert!(crops_in(&images).is_empty());
    let out = common::arvis()
        .args(["index", "stats", "--json", "--index"])
        .arg(&index)
        .output()
        .unwrap();
    assert_eq!(common::json_lines(&out)[0]["count"].as_u64(), Some(0));

    // Taught again, then deleted as an item from the gallery panel: rows and crop both gone.
    type_into(&mut h, "Add as:", "again");
    h.get_by_label("Add to gallery").click_accesskit();
    step_until(&mut h, "the second item", |app| {
        app.status().items.iter().any(|i| i.label == "again")
    });
    assert_eq!(crops_in(&images).len(), 1);
    h.step();
    press(&mut h, "Delete");
    step_until(&mut h, "the item to be deleted", |app| {
        app.status().items.is_empty() && !plate(app, bus).contains('≈')
    });
    assert!(crops_in(&images).is_empty());
}

#[test]
fn a_text_label_typed_in_the_window_names_regions_above_its_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let (index, images) = (dir.path().join("index"), dir.path().join("gallery-images"));
    let mut h = harness_with(Some(bus()), index.clone(), images);
    step_until(&mut h, "detections", |app| {
        app.shown()
            .is_some_and(|s| s.detected && !s.regions.is_empty())
    });
    type_into(&mut h, "Prompt:", "a red fire extinguisher");
    type_into(&mut h, "Label:", "extinguisher");
    h.get_by_label("Add text item").click_accesskit();
    h.step();
    step_until(&mut h, "the text item in the gallery", |app| {
        app.status()
            .items
            .iter()
            .any(|i| i.label == "extinguisher" && i.prompts == 1 && i.images == 0)
    });
    // Its own threshold decides: at -1 every region shows it, at 1 none.
    let mut d = arvis::search::Decision::DEFAULT;
    d.text_threshold = -1.0;
    h.state_mut().settings_mut().decision = Some(d);
    let bus = bus_region(h.state());
    step_until(&mut h, "plates with the text item", |app| {
        app.shown().is_some_and(|s| s.matched) && plate(app, bus).contains("\"extinguisher\"")
    });
    d.text_threshold = 1.0;
    h.state_mut().settings_mut().decision = Some(d);
    h.step();
    assert!(!plate(h.state(), bus).contains("extinguisher"));
}

/// The child half of the kill test: teach the gallery with the abort hook set, as the app's
/// worker does (the hook kills this process between the crop's file and its commit).
#[test]
fn teach_child_killed_between_crop_and_commit() {
    let Some(dir) = std::env::var_os("ARVIS_TEST_TEACH_CHILD_DIR").map(PathBuf::from) else {
        return; // only as the child of the test below
    };
    runtime();
    // The parent's model: building this binary's shared gallery or models again here would
    // rewrite files the parent's other tests are using.
    let clip = std::env::var("ARVIS_TEST_TEACH_CHILD_CLIP").unwrap();
    let mut loaded = arvis::load::ClipModels {
        image: Some(clip),
        text: None,
    }
    .load_image_encoder(DeviceRequest::Exact(Device::Cpu))
    .unwrap();
    let img = image::open(bus()).unwrap().to_rgb8();
    let crop = image::imageops::crop_imm(&img, 30, 230, 760, 530).to_image();
    arvis::search::teach::add_crop(
        &dir.join("index").into(),
        &loaded.meta,
        &mut loaded.encoder,
        &dir.join("gallery-images"),
        "Line 27 bus",
        &crop,
    )
    .unwrap();
    unreachable!("the hook aborts before the commit");
}

#[test]
fn a_kill_between_saving_the_crop_and_committing_it_is_finished_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "teach_child_killed_between_crop_and_commit",
            "--nocapture",
        ])
        .env("ARVIS_TEST_TEACH_CHILD_DIR", dir.path())
        .env("ARVIS_TEST_TEACH_CHILD_CLIP", &clip_tiny().0)
        .env("ARVIS_TEST_ABORT_AFTER_CROP_WRITTEN", "1")
        .output()
        .unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            child.status.signal(),
            Some(6),
            "the child should die of the abort hook (SIGABRT); stderr: {}",
            String::from_utf8_lossy(&child.stderr)
        );
    }
    let (index, images) = (dir.path().join("index"), dir.path().join("gallery-images"));
    // Killed after the file and before the row: a crop and no index.
    assert_eq!(crops_in(&images).len(), 1);
    assert!(!index.join("index.sqlite").exists());

    // Restart: the app finishes the add, so the gallery has both.
    let mut h = harness_with(Some(bus()), index.clone(), images.clone());
    step_until(&mut h, "the unfinished add to be committed", |app| {
        app.status()
            .items
            .iter()
            .any(|i| i.label == "Line 27 bus" && i.images == 1)
    });
    let out = common::arvis()
        .args(["index", "items", "--json", "--index"])
        .arg(&index)
        .output()
        .unwrap();
    let items = common::json_lines(&out);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        PathBuf::from(items[0]["thumbnail"].as_str().unwrap()),
        crops_in(&images)[0].canonicalize().unwrap()
    );
}

fn close(a: [u8; 4], b: [u8; 3], tol: i32) -> bool {
    (0..3).all(|i| (i32::from(a[i]) - i32::from(b[i])).abs() <= tol)
}

#[test]
fn still_image_overlay_matches_hud_and_snapshot() {
    let (_, index) = tiny_gallery();
    let mut h = harness(Some(bus()), index.clone());
    step_until(&mut h, "detections with matches", |app| {
        app.shown()
            .is_some_and(|s| s.detected && !s.regions.is_empty() && s.matched)
    });
    h.step();
    let app = h.state();
    let shown = app.shown().unwrap().clone();
    let names = app.status().class_names.clone();
    let labels: Vec<&str> = shown
        .regions
        .iter()
        .map(|r| r.detection)
        .map(|d| names[d.class_id].as_str())
        .collect();
    assert!(labels.contains(&"bus"), "{labels:?}");
    assert!(
        labels.iter().filter(|l| **l == "person").count() >= 3,
        "{labels:?}"
    );
    let view = app.view_rect().expect("the frame is on screen");
    let (w, _) = shown.frame.image.dimensions();
    let scale = view.width() / w as f32;
    let to_px = |x: f32, y: f32| {
        (
            (view.min.x + x * scale).round() as u32,
            (view.min.y + y * scale).round() as u32,
        )
    };

    // Overlay pixels (HUD hidden: it may cover a corner): the bus box's left and top edges
    // are drawn in its class colour, its label plate sits above it, and the inside of the box
    // is still the photo.
    h.state_mut().settings_mut().show_hud = false;
    h.step();
    h.step();
    let img = h.render().expect("render");
    let bus_det = shown
        .regions
        .iter()
        .map(|r| r.detection)
        .find(|d| names[d.class_id] == "bus")
        .unwrap();
    let color = arvis::render::palette::class_color(bus_det.class_id);
    let [x1, y1, x2, y2] = bus_det.bbox;
    let mut edge_hits = 0;
    let samples = 20;
    for k in 0..samples {
        let y = y1 + (y2 - y1) * (k as f32 + 0.5) / samples as f32;
        let (px, py) = to_px(x1, y);
        if (px..px + 2).any(|x| close(img.get_pixel(x, py).0, color, 40)) {
            edge_hits += 1;
        }
    }
    assert!(
        edge_hits >= samples * 3 / 4,
        "left edge: {edge_hits}/{samples} samples in the class colour"
    );
    let (px, py) = to_px((x1 + x2) / 2.0, y1);
    assert!(
        (py..py + 2).any(|y| close(img.get_pixel(px, y).0, color, 40)),
        "top edge at ({px}, {py}) is {:?}",
        img.get_pixel(px, py)
    );
    // The plate's margin left of the text, just above the box.
    let (px, py) = to_px(x1, y1);
    assert!(
        close(img.get_pixel(px + 1, py - 3).0, color, 40),
        "label plate above the box at ({}, {}) is {:?}",
        px + 1,
        py - 3,
        img.get_pixel(px + 1, py - 3)
    );
    let inside = to_px(x1 + (x2 - x1) * 0.3, y1 + (y2 - y1) * 0.1);
    assert!(
        !close(img.get_pixel(inside.0, inside.1).0, color, 25),
        "inside the box is the photo"
    );

    // HUD: rates, per-stage latency, provider and model.
    h.state_mut().settings_mut().show_hud = true;
    h.step();
    for line in [
        "fps · inference",
        "ms: queue",
        "capture→screen",
        "dropped: 0 before detection",
        "detector: yolov8n_coco_int8_dynamic.onnx · CPUExecutionProvider",
        "CLIP: clip-tiny-random-vision@sha256:",
        "index: 15 items, 15 images in",
        "source: ultralytics_bus.jpg (still image)",
    ] {
        assert!(
            h.query_all_by_label_contains(line).next().is_some(),
            "HUD line `{line}` missing"
        );
    }

    // Click a person: it is selected and its gallery matches (thumbnail, score, file) appear.
    h.state_mut().settings_mut().match_threshold = -1.0;
    let person = shown
        .regions
        .iter()
        .map(|r| r.detection)
        .position(|d| names[d.class_id] == "person")
        .unwrap();
    let b = shown.regions[person].detection.bbox;
    let (cx, cy) = to_px((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    click_at(&mut h, egui::pos2(cx as f32, cy as f32));
    assert_eq!(h.state().selected(), Some(person));
    h.get_by_label_contains("person 0.");
    // Exactly the three matches per region are listed in the matches panel: file names below
    // its heading (the status bar and HUD also name files, elsewhere in the window).
    // ("Matches" is also the toolbar's toggle: the heading is the one in the side panel.)
    let heading = h
        .query_all_by_label("Matches")
        .map(|n| n.rect())
        .max_by(|a, b| a.min.x.total_cmp(&b.min.x))
        .expect("the Matches heading");
    let listed = h
        .query_all_by_label_contains(".jpg")
        .chain(h.query_all_by_label_contains(".png"))
        .filter(|n| {
            let r = n.rect();
            r.min.y > heading.max.y && r.min.x >= heading.min.x - 1.0
        })
        .count();
    assert_eq!(listed, 3, "{listed} match rows in the matches panel");

    // Snapshot (HUD off: its timings vary); the index path differs per checkout: masked.
    h.state_mut().settings_mut().show_hud = false;
    h.step();
    h.step();
    let masks: Vec<egui::Rect> = [index.display().to_string(), bus().display().to_string()]
        .iter()
        .flat_map(|p| {
            h.query_all_by_label_contains(p)
                .chain(h.query_all_by_value(p))
                // To the window's right edge: a path's width differs between checkouts.
                .map(|n| {
                    let r = n.rect();
                    egui::Rect::from_min_max(r.min, egui::pos2(1280.0, r.max.y))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for m in masks {
        h.mask(m);
    }
    h.snapshot_options(
        "app_still_image",
        &SnapshotOptions::new().max_failed_pixels(400),
    );

    // S saves the view: PNG with the overlay, JSON in `arvis detect --json`'s shape.
    let out = tempfile::tempdir().unwrap();
    h.state_mut().settings_mut().snapshot_dir = out.path().to_path_buf();
    h.key_press(egui::Key::S);
    h.step();
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(
        (json["width"].as_u64(), json["height"].as_u64()),
        (Some(810), Some(1080))
    );
    let dets = json["detections"].as_array().unwrap();
    assert_eq!(dets.len(), shown.regions.len());
    for d in dets {
        assert!(d["label"].is_string() && d["score"].is_f64() && d["box"].is_array());
        assert_eq!(d["matches"].as_array().unwrap().len(), 3, "{d}");
    }
    // The same shape as `arvis detect --json --match` on the same image and gallery: the same
    // keys at every level (image, detection, match), and the same detections.
    let (clip, _) = tiny_gallery();
    let cli = common::arvis()
        .env("ARVIS_CLIP_MODEL", clip)
        .args(["detect", "--json", "--match", "--index"])
        .arg(index)
        .arg(bus())
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", common::stderr(&cli));
    let reference = &common::json_lines(&cli)[0];
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&json), keys(reference), "image keys");
    let ref_dets = reference["detections"].as_array().unwrap();
    assert_eq!(dets.len(), ref_dets.len(), "{json}\n{reference}");
    assert_eq!(keys(&dets[0]), keys(&ref_dets[0]), "detection keys");
    assert_eq!(
        keys(&dets[0]["matches"][0]),
        keys(&ref_dets[0]["matches"][0]),
        "match keys"
    );
    for (a, b) in dets.iter().zip(ref_dets) {
        assert_eq!(
            (&a["label"], &a["box"]),
            (&b["label"], &b["box"]),
            "{a} vs {b}"
        );
    }
    let png = image::open(&files[1]).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (810, 1080));
    let edge = png.get_pixel(x1 as u32 + 1, ((y1 + y2) / 2.0) as u32).0;
    assert!(
        close([edge[0], edge[1], edge[2], 255], color, 10),
        "{edge:?}"
    );
    h.get_by_label_contains("snapshot saved");
}

#[test]
fn bad_inputs_show_messages_and_the_app_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let (_, index) = tiny_gallery();
    let mut h = harness(None, index.clone());
    h.step();
    h.get_by_label_contains("no source");

    // A text file named like a video.
    let junk = dir.path().join("holiday.mp4");
    std::fs::write(&junk, "not a video").unwrap();
    h.state_mut().open_path(&junk);
    h.step();
    h.get_by_label_contains("holiday.mp4: not an image or video arvis can read");

    // An image that fails to decode: shown as the source's error.
    let jpeg = std::fs::read(bus()).unwrap();
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, &jpeg[..jpeg.len() / 3]).unwrap();
    h.state_mut().open_path(&broken);
    step_until(
        &mut h,
        "the decode failure",
        |app| matches!(&app.status().source, SourceState::Failed { error, .. } if error.contains("broken.jpg")),
    );
    h.step();
    h.get_by_label_contains("error: ");

    // A corrupt video (the clip cut after its header): opens or fails, but never takes the
    // app down, and a good image still works afterwards.
    let video = std::fs::read(walking_video()).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &video[..4096]).unwrap();
    h.state_mut().open_path(&cut);
    // Refused when opened (its index is gone), or failed once its frames run out: either way
    // a message naming the file, never a silent end.
    let named = |app: &arvis::app::ArvisApp| {
        matches!(&app.status().source, SourceState::Failed { error, .. } if error.contains("cut.mp4"))
            || app.messages().iter().any(|m| m.contains("cut.mp4"))
    };
    step_until(&mut h, "a message naming cut.mp4", named);
    h.state_mut().open_path(&bus());
    step_until(&mut h, "detections after the bad inputs", |app| {
        app.shown().is_some_and(|s| {
            s.detected && s.frame.image.dimensions() == (810, 1080) && !s.regions.is_empty()
        })
    });
}

/// A file dropped on the window, as the windowing layer hands it over.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn dropping_a_folder_builds_the_index_and_dropping_an_image_looks_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for name in [
        "ultralytics_bus.jpg",
        "skimage_coffee.png",
        "darknet_dog.jpg",
    ] {
        std::fs::copy(images_dir().join(name), photos.join(name)).unwrap();
    }
    let index = dir.path().join("new-index");
    let mut h = harness(None, index.clone());
    h.step();
    h.input_mut()
        .dropped_files
        .push(Arc::new(Dropped(photos.clone())));
    step_until(&mut h, "the folder to be indexed", |app| {
        app.status().indexing.as_ref().is_some_and(|j| j.finished)
    });
    let job = h.state().status().indexing.clone().unwrap();
    assert_eq!((job.added, job.failed, job.error), (3, 0, None));
    h.step();
    h.get_by_label_contains("indexed 3 image(s)");
    assert!(matches!(&h.state().status().index, Stage::Ready(m) if m == "3 items, 3 images"));

    // Now an image dropped on the window: lookup mode with matches from the new index.
    h.input_mut()
        .dropped_files
        .push(Arc::new(Dropped(photos.join("darknet_dog.jpg"))));
    step_until(&mut h, "matches for the dropped image", |app| {
        app.shown()
            .is_some_and(|s| s.detected && s.matched && !s.regions.is_empty())
    });
    let shown = h.state().shown().unwrap().clone();
    let hits = &shown.regions[0].hits;
    assert!(hits.len() <= 3 && !hits.is_empty());
    assert!(hits.iter().all(|h| {
        h.path
            .starts_with(photos.canonicalize().unwrap().to_str().unwrap())
    }));
}

#[test]
fn a_wrong_model_file_is_reported_and_frames_still_show() {
    runtime();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("detector.onnx");
    std::fs::write(&junk, b"this is not an ONNX model").unwrap();
    let loaders = arvis::app::loaders(
        Some(junk.display().to_string()),
        arvis::load::ClipModels::default(),
        DeviceRequest::Exact(Device::Cpu),
    );
    let options = AppOptions {
        sources: vec![bus().display().to_string()],
        index: Some(dir.path().join("no-index")),
        fresh_settings: true,
        ..AppOptions::default()
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .wgpu_setup(vulkan())
        .build_eframe(move |cc| ArvisApp::new(cc, loaders, options));
    step_until(
        &mut h,
        "the detector failure",
        |app| matches!(&app.status().detector, Stage::Failed(m) if m.contains("detector.onnx")),
    );
    step_until(&mut h, "the frame without boxes", |app| {
        app.shown()
            .is_some_and(|s| !s.detected && s.regions.is_empty())
    });
    h.step();
    assert!(
        h.query_all_by_label_contains("detector: unavailable:")
            .next()
            .is_some(),
        "the HUD says the detector is unavailable"
    );
}

#[test]
fn a_shared_catalogue_shows_what_another_process_adds_and_rides_out_a_server_restart() {
    let server = common::pg::PgServer::start();
    // Trust authentication ignores the password: it stands in the URL to be kept off screen.
    let url = format!(
        "postgresql://{}:hunter2@127.0.0.1:{}/postgres?catalogue=counter",
        common::pg::SUPERUSER,
        server.port
    );
    let photos = tempfile::tempdir().unwrap();
    for name in [
        "ultralytics_bus.jpg",
        "skimage_coffee.png",
        "darknet_dog.jpg",
    ] {
        std::fs::copy(images_dir().join(name), photos.path().join(name)).unwrap();
    }
    let add = |dir: &Path| {
        let out = run_tiny_clip(Path::new(&url), &["index", "add", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    add(photos.path());
    let mut h = harness(Some(bus()), PathBuf::from(&url));
    step_until(
        &mut h,
        "the catalogue to open and the photo matched",
        |app| {
            matches!(&app.status().index, Stage::Ready(m) if m == "3 items, 3 images")
                && app
                    .shown()
                    .is_some_and(|s| s.matched && !s.regions.is_empty())
        },
    );

    // Another process (standing in for another machine) adds an item.
    let more = tempfile::tempdir().unwrap();
    std::fs::copy(
        images_dir().join("skimage_chelsea_cat.png"),
        more.path().join("skimage_chelsea_cat.png"),
    )
    .unwrap();
    add(more.path());
    let t = Instant::now();
    step_until(&mut h, "the other process's item", |app| {
        app.status().items.len() == 4
    });
    let seen = t.elapsed();
    eprintln!("the window showed the item added elsewhere {seen:?} after that add finished");
    assert!(seen < Duration::from_secs(2), "{seen:?}");

    // The server goes away: the window says so, keeps showing frames, and comes back by itself.
    server.stop();
    step_until(&mut h, "the outage to be shown", |app| {
        matches!(&app.status().index,
            Stage::Failed(m) if m.starts_with("catalogue unreachable, retrying"))
    });
    // The still image is shown again, detected and unmatched, while the catalogue is away.
    step_until(&mut h, "the frame shown without matches", |app| {
        app.shown()
            .is_some_and(|s| s.detected && !s.matched && !s.regions.is_empty())
    });
    h.step();
    h.get_by_label_contains("index: catalogue unreachable, retrying");
    if let Some(dir) = std::env::var_os("ARVIS_TEST_SHOT") {
        let img = h.render().unwrap();
        img.save(std::path::Path::new(&dir).join("outage.png"))
            .unwrap();
    }
    server.start_again();
    step_until(
        &mut h,
        "the catalogue to be back and matching again",
        |app| {
            matches!(&app.status().index, Stage::Ready(m) if m == "4 items, 4 images")
                && app
                    .shown()
                    .is_some_and(|s| s.matched && !s.regions.is_empty())
        },
    );
    h.step();
    assert!(
        h.query_by_label_contains("hunter2").is_none(),
        "the password is never on screen"
    );
}

/// Four sources side by side: each view has its frame, its boxes from the one detector and a
/// HUD line of its own; a click focuses one, Esc shows them all again; the list is saved.
#[test]
fn four_sources_show_as_a_grid_with_overlays_and_a_click_focuses_one() {
    let (_, index) = tiny_gallery();
    let names = [
        "ultralytics_bus.jpg",
        "ultralytics_zidane.jpg",
        "intel_parking_lot_frame20.png",
        "darknet_horses.jpg",
    ];
    let sources: Vec<String> = names
        .iter()
        .map(|n| images_dir().join(n).display().to_string())
        .collect();
    let images = tempfile::tempdir().unwrap().keep();
    let mut h = harness_sources(sources.clone(), index.clone(), images);
    step_until(&mut h, "every view detected and matched", |app| {
        app.grid().is_some_and(|g| {
            g.cells.len() == 4
                && g.cells.iter().all(|c| {
                    c.shot
                        .as_ref()
                        .is_some_and(|s| s.detected && !s.regions.is_empty() && s.matched)
                })
        })
    });
    h.step();
    h.step();
    let app = h.state();
    assert_eq!(
        app.settings().grid_sources,
        sources,
        "the grid is saved to reopen"
    );
    let grid = app.grid().unwrap().clone();
    assert_eq!(grid.schedule.as_deref(), Some("one at a time"));
    let class_names = app.status().class_names.clone();
    let mut tracked = 0;
    for (cell, name) in grid.cells.iter().zip(names) {
        assert!(cell.name.ends_with(name), "{} vs {name}", cell.name);
        let labels: Vec<&str> = cell
            .shot
            .as_ref()
            .unwrap()
            .regions
            .iter()
            .map(|r| class_names[r.detection.class_id].as_str())
            .collect();
        let expect = match name {
            "ultralytics_bus.jpg" => "bus",
            "darknet_horses.jpg" => "horse",
            "intel_parking_lot_frame20.png" => "car",
            _ => "person",
        };
        assert!(labels.contains(&expect), "{name}: {labels:?}");
        // Every region was matched against the gallery, per source (k = 3 by default).
        for r in &cell.shot.as_ref().unwrap().regions {
            assert_eq!(r.hits.len(), 3, "{name}: {:?}", r.detection);
        }
        // Each source has its own tracker: track ids start at 1 in every view that has tracks.
        let ids: Vec<u64> = cell
            .shot
            .as_ref()
            .unwrap()
            .regions
            .iter()
            .filter_map(|r| r.track_id)
            .collect();
        assert!(ids.is_empty() || ids.contains(&1), "{name}: {ids:?}");
        tracked += usize::from(!ids.is_empty());
    }
    assert!(tracked >= 3, "tracks in {tracked} views");
    // The views' HUD lines are what the pipeline measured (their figures change: masked).
    for cell in &grid.cells {
        let line = arvis::app::grid_hud_line(cell);
        assert!(
            line.contains("dropped 0") && line.contains("ended"),
            "{line}"
        );
    }

    // The bus view's top-left: the bus box's outline is drawn there in its class colour.
    let img = h.render().expect("render");
    let bus_cell = &grid.cells[0];
    let shot = bus_cell.shot.as_ref().unwrap();
    let bus = shot
        .regions
        .iter()
        .map(|r| r.detection)
        .find(|d| class_names[d.class_id] == "bus")
        .unwrap();
    let cells = arvis::app::grid_cell_rects(h.state().grid_rect().unwrap(), 4);
    let (w, hgt) = shot.frame.image.dimensions();
    let view = arvis::app::fit_rect(cells[0], (w, hgt));
    let scale = view.width() / w as f32;
    let colour = arvis::render::palette::class_color(bus.class_id);
    let mut hits = 0;
    for k in 0..20 {
        let y = bus.bbox[1] + (bus.bbox[3] - bus.bbox[1]) * (k as f32 + 0.5) / 20.0;
        let (px, py) = (
            (view.min.x + bus.bbox[0] * scale).round() as u32,
            (view.min.y + y * scale).round() as u32,
        );
        let near =
            (px.saturating_sub(2)..=px + 2).any(|x| close(img.get_pixel(x, py).0, colour, 40));
        hits += usize::from(near);
    }
    assert!(
        hits >= 15,
        "the bus box's left edge is drawn in the grid view ({hits}/20)"
    );

    for r in &cells {
        h.mask(egui::Rect::from_min_size(
            r.min,
            egui::vec2(r.width(), 22.0),
        ));
    }
    // The side panel (models loading) and the bottom line (the detector's state) vary too.
    h.mask(egui::Rect::from_min_max(
        egui::pos2(955.0, 0.0),
        egui::pos2(1280.0, 800.0),
    ));
    h.mask(egui::Rect::from_min_max(
        egui::pos2(0.0, 740.0),
        egui::pos2(960.0, 800.0),
    ));
    h.snapshot_options(
        "app_grid_2x2",
        &SnapshotOptions::new().max_failed_pixels(600),
    );

    // A click on the third view focuses it; Esc shows all four again.
    click_at(&mut h, cells[2].center());
    h.step();
    assert_eq!(h.state().grid_focused(), Some(2));
    h.key_press(egui::Key::Escape);
    h.step();
    assert_eq!(h.state().grid_focused(), None);
    // "Single view" leaves the grid and opens its first source; the saved grid is cleared.
    press(&mut h, "Single view");
    step_until(&mut h, "the single view", |app| {
        app.grid().is_none() && app.shown().is_some()
    });
    assert!(h.state().settings().grid_sources.is_empty());
}

/// "Add source…" beside an open photo: the two are shown side by side, both detected; a source
/// that cannot be named is a message and the grid stays as it was.
#[test]
fn add_source_puts_a_second_source_beside_the_first() {
    let (_, index) = tiny_gallery();
    let mut h = harness(Some(bus()), index.clone());
    step_until(&mut h, "the photo detected", |app| {
        app.shown()
            .is_some_and(|s| s.detected && !s.regions.is_empty())
    });
    press(&mut h, "Add source…");
    let zidane = images_dir().join("ultralytics_zidane.jpg");
    type_into(&mut h, "Source:", &zidane.display().to_string());
    press(&mut h, "Add");
    step_until(&mut h, "two views, both detected", |app| {
        app.grid().is_some_and(|g| {
            g.cells.len() == 2
                && g.cells.iter().all(|c| {
                    c.shot
                        .as_ref()
                        .is_some_and(|s| s.detected && !s.regions.is_empty())
                })
        })
    });
    let cells = &h.state().grid().unwrap().cells;
    assert!(
        cells[0].name.ends_with("ultralytics_bus.jpg"),
        "{}",
        cells[0].name
    );
    assert!(
        cells[1].name.ends_with("ultralytics_zidane.jpg"),
        "{}",
        cells[1].name
    );
    assert_eq!(h.state().settings().grid_sources.len(), 2);

    press(&mut h, "Add source…");
    type_into(&mut h, "Source:", "/no/such/file.mp4");
    press(&mut h, "Add");
    assert!(
        h.state()
            .messages()
            .iter()
            .any(|m| m.contains("/no/such/file.mp4")),
        "{:?}",
        h.state().messages()
    );
    assert_eq!(
        h.state().grid().map(|g| g.cells.len()),
        Some(2),
        "the grid is unchanged"
    );
}
