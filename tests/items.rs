//! Known items through the real binary and the library's matching path: labelled galleries,
//! per-item aggregation against per-image matching, the threshold/margin decision, calibration,
//! text items, and upgrading indexes made before items existed. Uses the generated random-weight
//! CLIP (real CLIP weights are not available here), so the figures show the mechanism, not
//! CLIP's accuracy; the galleries are augmented copies of the shared photos.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use arvis::embed::ImageEncoder;
use arvis::runtime::Device;
use arvis::search::{Decision, GalleryLocation, GalleryStore, match_embedding};
use common::store::{Store, TestIndex};
use common::*;
use common::{arvis_tiny_clip as cmd, run_tiny_clip as run};
use image::RgbImage;

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// `arvis index add --label-from folder GALLERY`: one item per folder.
fn add_folders(index: &Path, gallery: &Path) -> Output {
    run(
        index,
        &[
            "index",
            "add",
            "--label-from",
            "folder",
            gallery.to_str().unwrap(),
        ],
    )
}

/// xorshift: the same copies on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f32 {
        (self.next() % 10_000) as f32 / 10_000.0
    }
}

/// A copy as a user's gallery holds them: a random crop, maybe mirrored, colour-shifted and
/// re-encoded as JPEG at a random quality; `strength` scales how far it strays.
fn augment(img: &RgbImage, rng: &mut Rng, strength: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = (1.0 - strength * rng.unit() * 0.5).max(0.25);
    let (cw, ch) = ((w as f32 * s) as u32, (h as f32 * s) as u32);
    let x = ((w - cw) as f32 * rng.unit()) as u32;
    let y = ((h - ch) as f32 * rng.unit()) as u32;
    let mut out = image::imageops::crop_imm(img, x, y, cw, ch).to_image();
    if rng.next() % 2 == 0 {
        out = image::imageops::flip_horizontal(&out);
    }
    let brightness = (1.0 + strength * (rng.unit() - 0.5) * 0.8).max(0.2);
    let tint = [0; 3].map(|_: u8| 1.0 + strength * (rng.unit() - 0.5) * 0.4);
    for p in out.pixels_mut() {
        for (c, t) in p.0.iter_mut().zip(tint) {
            *c = (f32::from(*c) * brightness * t).clamp(0.0, 255.0) as u8;
        }
    }
    let quality = 20 + (rng.next() % 60) as u8;
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality)
        .encode_image(&out)
        .unwrap();
    image::load_from_memory(&jpeg).unwrap().to_rgb8()
}

/// The shared photos, 320 px wide, sorted by name: (item name, image).
fn photos() -> Vec<(String, RgbImage)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(images_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let img = image::open(p).unwrap().to_rgb8();
            let h = 320 * img.height() / img.width();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, image::imageops::thumbnail(&img, 320, h))
        })
        .collect()
}

/// Gallery strengths of an item's six images: from near-copies to badly lit, tight crops (the
/// stray views a real gallery has); held-out queries are moderate (0.8).
const GALLERY_STRENGTHS: [f32; 6] = [0.3, 0.6, 1.0, 1.5, 2.0, 2.5];
const HELD_OUT: usize = 4;

/// Write each photo's gallery copies to `dir/<item>/<n>.jpg`; return the held-out copies.
fn make_gallery(dir: &Path, photos: &[(String, RgbImage)], seed: u64) -> Vec<(String, RgbImage)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut held = Vec::new();
    for (name, img) in photos {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        for (n, strength) in GALLERY_STRENGTHS.iter().enumerate() {
            augment(img, &mut rng, *strength)
                .save(folder.join(format!("{n}.jpg")))
                .unwrap();
        }
        for _ in 0..HELD_OUT {
            held.push((name.clone(), augment(img, &mut rng, 0.8)));
        }
    }
    held
}

fn encoder() -> ImageEncoder {
    ImageEncoder::load(runtime(), &clip_tiny().0, Device::Cpu).unwrap()
}

fn open(index: &Path) -> Box<dyn GalleryStore> {
    arvis::search::store::open_any(&GalleryLocation::parse(index.as_os_str()).unwrap()).unwrap()
}

fn per_item_aggregation_beats_per_image_matching(store: Store) {
    let photos = photos();
    let mut enc = encoder();
    let (mut per_image, mut per_item, mut total) = (0, 0, 0);
    for seed in 1..=3u64 {
        let tmp = tempfile::tempdir().unwrap();
        let index = TestIndex::new(store);
        let (gallery, index) = (tmp.path().join("gallery"), index.path());
        let held = make_gallery(&gallery, &photos, seed);
        ok(&add_folders(index, &gallery));
        let mut idx = open(index);
        assert_eq!(idx.items().unwrap().len(), photos.len());
        let (mut img_right, mut item_right) = (0, 0);
        for (name, copy) in &held {
            let e = enc.embed(&[copy]).unwrap().remove(0);
            // The path every region takes: nearest images, aggregated per item.
            let found = match_embedding(&mut *idx, &e, 3).unwrap();
            img_right += usize::from(&found.hits[0].label == name);
            item_right += usize::from(&found.items[0].label == name);
        }
        eprintln!(
            "seed {seed}: {} held-out copies; nearest image's item right {img_right}, per-item (mean of top-2) right {item_right}",
            held.len()
        );
        per_image += img_right;
        per_item += item_right;
        total += held.len();
    }
    eprintln!(
        "all seeds: {total} held-out copies; per-image {per_image} ({:.1} %), per-item {per_item} ({:.1} %)",
        100.0 * per_image as f64 / total as f64,
        100.0 * per_item as f64 / total as f64
    );
    assert!(
        per_item > per_image,
        "per-item {per_item} vs per-image {per_image} of {total}"
    );
}

fn absent_items_come_out_unknown_at_the_calibrated_decision(store: Store) {
    let photos = photos();
    let (known, absent) = photos.split_at(10);
    let tmp = tempfile::tempdir().unwrap();
    let test_index = TestIndex::new(store);
    let (gallery, index) = (tmp.path().join("gallery"), test_index.path().to_path_buf());
    let held_known = make_gallery(&gallery, known, 7);
    let absent_dir = tmp.path().join("absent");
    let held_absent = make_gallery(&absent_dir, absent, 8);
    ok(&add_folders(&index, &gallery));

    // Calibration says what it measured, and that the model makes the figures mechanics only.
    let out = run(&index, &["index", "calibrate"]);
    ok(&out);
    let text = stdout(&out);
    assert!(text.contains("generated random weights"), "{text}");
    assert!(
        text.contains("suggested threshold") && text.contains("suggested margin"),
        "{text}"
    );
    assert!(text.contains("equal error rate"), "{text}");
    assert!(
        open(&index).stored_decision().unwrap().is_none(),
        "stored without --save"
    );
    let out = run(&index, &["index", "calibrate", "--save", "--json"]);
    ok(&out);
    let cal = &json_lines(&out)[0];
    eprintln!("calibration: {cal}");
    assert_eq!(cal["held_out_images"].as_u64(), Some(60));
    assert!(cal["generated_model"].is_string());
    let mut idx = open(&index);
    let decision = idx.stored_decision().unwrap().expect("saved");
    assert!((f64::from(decision.threshold) - cal["threshold"].as_f64().unwrap()).abs() < 1e-6);

    let mut enc = encoder();
    let mut named = |held: &[(String, RgbImage)]| -> (usize, usize) {
        let (mut right, mut any) = (0, 0);
        for (name, copy) in held {
            let e = enc.embed(&[copy]).unwrap().remove(0);
            let found = match_embedding(&mut *idx, &e, 3).unwrap();
            if let Some(k) = arvis::search::items::decide(&found.items, &decision) {
                any += 1;
                right += usize::from(k.label == name);
            }
        }
        (right, any)
    };
    let (_, absent_named) = named(&held_absent);
    let (known_right, known_named) = named(&held_known);
    let unknown_share = 1.0 - absent_named as f64 / held_absent.len() as f64;
    eprintln!(
        "held out, calibrated decision {decision:?}: absent items unknown {:.1} % ({absent_named} of {} named); known items named right {known_right} of {} ({known_named} named)",
        100.0 * unknown_share,
        held_absent.len(),
        held_known.len()
    );
    // Most regions of items not in the gallery come out unknown, and the calibration's own
    // leave-one-out estimate predicts the held-out rate.
    assert!(unknown_share > 0.5, "{unknown_share}");
    let predicted = 1.0 - cal["unknown_named"].as_f64().unwrap();
    assert!(
        (unknown_share - predicted).abs() < 0.3,
        "{unknown_share} vs {predicted}"
    );
    // Named ones are mostly right.
    assert!(
        known_right * 2 >= known_named,
        "{known_right} of {known_named}"
    );

    // The built-in decision is replaced by the stored one in `detect --match`; flags override it.
    let bus = images_dir().join("ultralytics_bus.jpg");
    let item_of = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["detect", "--json", "--match"];
        args.extend_from_slice(extra);
        args.push(bus.to_str().unwrap());
        let out = run(&index, &args);
        ok(&out);
        json_lines(&out)[0]["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["item"].clone())
            .collect()
    };
    let everything = item_of(&["--item-threshold", "-1", "--item-margin", "-1"]);
    assert!(
        everything.iter().all(|i| i["label"].is_string()),
        "{everything:?}"
    );
    // Each of the two alone turns every region to unknown.
    let by_margin = item_of(&["--item-threshold", "-1", "--item-margin", "1"]);
    assert!(
        by_margin.iter().all(serde_json::Value::is_null),
        "{by_margin:?}"
    );
    let by_threshold = item_of(&["--item-threshold", "1", "--item-margin", "-1"]);
    assert!(
        by_threshold.iter().all(serde_json::Value::is_null),
        "{by_threshold:?}"
    );
}

fn items_are_labelled_listed_renamed_and_removed(store: Store) {
    let tmp = tempfile::tempdir().unwrap();
    let test_index = TestIndex::new(store);
    let (gallery, index) = (tmp.path().join("gallery"), test_index.path().to_path_buf());
    let photos = photos();
    make_gallery(&gallery, &photos[..3], 3);
    let loose = tmp.path().join("loose.jpg");
    photos[3].1.save(&loose).unwrap();

    // A blank label is refused before anything is written.
    let out = run(
        &index,
        &["index", "add", "--label", " \t ", loose.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot be empty"), "{}", stderr(&out));
    assert!(!test_index.exists(), "nothing written for a refused label");

    ok(&add_folders(&index, &gallery));
    ok(&run(&index, &["index", "add", loose.to_str().unwrap()]));
    let items = |index: &Path| -> Vec<(String, u64)> {
        let out = run(index, &["index", "items", "--json"]);
        ok(&out);
        json_lines(&out)
            .iter()
            .map(|i| {
                assert!(i["thumbnail"].is_string(), "{i}");
                (
                    i["label"].as_str().unwrap().to_string(),
                    i["images"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let names: Vec<&str> = photos[..4].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        items(&index),
        vec![
            (names[0].to_string(), 6),
            (names[1].to_string(), 6),
            (names[2].to_string(), 6),
            ("loose".to_string(), 1),
        ]
    );

    // Two images of the first item move to "Анна 🙂" (any text is a label).
    let first = gallery.join(names[0]);
    let moved = [first.join("0.jpg"), first.join("1.jpg")];
    let mut args = vec!["index", "label"];
    args.extend(moved.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--set", "Анна 🙂"]);
    ok(&run(&index, &args));
    let now = items(&index);
    assert!(now.contains(&("Анна 🙂".to_string(), 2)), "{now:?}");
    assert!(now.contains(&(names[0].to_string(), 4)), "{now:?}");
    let out = run(
        &index,
        &["index", "label", moved[0].to_str().unwrap(), "--set", ""],
    );
    assert!(!out.status.success() && stderr(&out).contains("cannot be empty"));

    // Re-adding with --label moves unchanged images without re-embedding them.
    let out = run(
        &index,
        &["index", "add", "--label", "mug", loose.to_str().unwrap()],
    );
    ok(&out);
    assert!(
        stdout(&out).contains("indexed 0 image(s), 1 unchanged"),
        "{}",
        stdout(&out)
    );
    assert!(items(&index).contains(&("mug".to_string(), 1)));

    // Rename into an existing item merges them; rm --item removes one whole.
    let out = run(&index, &["index", "rename", "Анна 🙂", names[0]]);
    ok(&out);
    assert!(stdout(&out).contains("merged"), "{}", stdout(&out));
    assert!(items(&index).contains(&(names[0].to_string(), 6)));
    let out = run(&index, &["index", "rename", "no-such-item", "x"]);
    assert_eq!(out.status.code(), Some(1));
    ok(&run(&index, &["index", "rm", "--item", names[1]]));
    let after = items(&index);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!after.iter().any(|(n, _)| n == names[1]));
    let out = run(&index, &["index", "stats", "--json"]);
    ok(&out);
    assert_eq!(json_lines(&out)[0]["count"].as_u64(), Some(13));
    assert_eq!(json_lines(&out)[0]["items"].as_u64(), Some(3));

    // A text item: listed with its prompts, matched with its own threshold.
    let out = run(
        &index,
        &[
            "index",
            "add-text",
            "a red fire extinguisher",
            "--label",
            "extinguisher",
        ],
    );
    ok(&out);
    assert!(stdout(&out).contains("6 phrasings"), "{}", stdout(&out));
    ok(&run(
        &index,
        &[
            "index",
            "add-text",
            "a fire extinguisher on a wall",
            "--label",
            "extinguisher",
        ],
    ));
    let out = run(&index, &["index", "items", "--json"]);
    let ext = json_lines(&out)
        .into_iter()
        .find(|i| i["label"] == "extinguisher")
        .unwrap();
    assert_eq!(
        (ext["images"].as_u64(), ext["prompts"].as_u64()),
        (Some(0), Some(2))
    );
    let bus = images_dir().join("ultralytics_bus.jpg");
    let text_items = |threshold: &str| -> Vec<serde_json::Value> {
        let out = run(
            &index,
            &[
                "detect",
                "--json",
                "--match",
                "--text-threshold",
                threshold,
                bus.to_str().unwrap(),
            ],
        );
        ok(&out);
        json_lines(&out)[0]["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["text_item"].clone())
            .collect()
    };
    assert!(
        text_items("-1")
            .iter()
            .all(|t| t["label"] == "extinguisher")
    );
    assert!(text_items("1").iter().all(serde_json::Value::is_null));
}

/// An image row: id, path bytes, embedding, thumbnail.
type Row = (i64, Vec<u8>, Vec<u8>, Vec<u8>);

/// An index exactly as releases before items wrote it (format 1): the v1 schema, filled from a
/// current index's rows (same embeddings, thumbnails and paths).
fn make_v1_index(from: &Path, to: &Path) -> Vec<Row> {
    std::fs::create_dir_all(to).unwrap();
    let src = rusqlite::Connection::open(from.join("index.sqlite")).unwrap();
    let db = rusqlite::Connection::open(to.join("index.sqlite")).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE items (
             id INTEGER PRIMARY KEY,
             path TEXT NOT NULL UNIQUE,
             size INTEGER NOT NULL,
             mtime_ns INTEGER NOT NULL,
             embedding BLOB NOT NULL,
             thumbnail BLOB NOT NULL
         );",
    )
    .unwrap();
    for key in ["model_id", "preprocess_version", "dim", "clip_family"] {
        let v: Option<String> = src
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .ok();
        if let Some(v) = v {
            db.execute("INSERT INTO meta VALUES (?1, ?2)", [key, &v])
                .unwrap();
        }
    }
    db.execute_batch("INSERT INTO meta VALUES ('format_version', '1'), ('generation', '3');")
        .unwrap();
    let mut rows: Vec<Row> = src
        .prepare("SELECT id, CAST(path AS BLOB), embedding, thumbnail FROM items ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Two files with one stem in different folders: each must stay its own item.
    let mut twin = rows[0].clone();
    twin.0 = 1000;
    let name = Path::new(std::str::from_utf8(&twin.1).unwrap())
        .file_name()
        .unwrap()
        .to_owned();
    twin.1 = format!("/elsewhere/{}", name.to_string_lossy()).into_bytes();
    rows.push(twin);
    for (id, path, e, t) in &rows {
        db.execute(
            "INSERT INTO items VALUES (?1, ?2, 1, 1, ?3, ?4)",
            rusqlite::params![id, std::str::from_utf8(path).unwrap(), e, t],
        )
        .unwrap();
    }
    rows
}

fn rows_of(index: &Path) -> Vec<Row> {
    let db = rusqlite::Connection::open(index.join("index.sqlite")).unwrap();
    db.prepare("SELECT id, CAST(path AS BLOB), embedding, thumbnail FROM items ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn format_version(index: &Path) -> String {
    let db = rusqlite::Connection::open(index.join("index.sqlite")).unwrap();
    db.query_row(
        "SELECT value FROM meta WHERE key = 'format_version'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn an_index_from_before_items_upgrades_in_place_and_keeps_every_row() {
    let (_, current) = tiny_gallery();
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    let before = make_v1_index(current, &old);

    // Killed between the upgrade's statements: the old index is as it was and still works for
    // a reader of version 1.
    let out = cmd(&old)
        .env("ARVIS_TEST_ABORT_MID_UPGRADE", "1")
        .args(["index", "stats"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hook aborts");
    assert_eq!(format_version(&old), "1");
    assert_eq!(rows_of(&old), before);
    let db = rusqlite::Connection::open(old.join("index.sqlite")).unwrap();
    let has_label: bool = db
        .prepare("SELECT 1 FROM pragma_table_info('items') WHERE name = 'label'")
        .unwrap()
        .exists([])
        .unwrap();
    assert!(!has_label, "the added column was rolled back");
    drop(db);

    // The next open redoes it: every row kept byte for byte, each image its own item.
    let out = run(&old, &["index", "stats", "--json"]);
    ok(&out);
    let stats = &json_lines(&out)[0];
    assert_eq!(stats["count"].as_u64(), Some(before.len() as u64));
    assert_eq!(
        stats["items"].as_u64(),
        Some(before.len() as u64),
        "{stats}"
    );
    assert_eq!(format_version(&old), "2");
    assert_eq!(rows_of(&old), before);
    let items = json_lines(&run(&old, &["index", "items", "--json"]));
    assert!(
        items.iter().any(|i| i["label"] == "skimage_coffee"),
        "{items:?}"
    );
    assert!(
        items
            .iter()
            .any(|i| i["label"].as_str().unwrap().starts_with("/elsewhere/")),
        "a stem two images share names each by its path: {items:?}"
    );
    // And it searches as before: a photo finds itself first, now naming its item.
    let coffee = images_dir().join("skimage_coffee.png");
    let out = run(&old, &["search", "--json", coffee.to_str().unwrap()]);
    ok(&out);
    let first = &json_lines(&out)[0]["results"][0];
    assert_eq!(first["item"], "skimage_coffee", "{first}");
    assert!(first["score"].as_f64().unwrap() > 0.999);
}

#[test]
fn an_index_from_a_newer_arvis_is_refused() {
    let (_, current) = tiny_gallery();
    let tmp = tempfile::tempdir().unwrap();
    let newer = tmp.path().join("newer");
    make_v1_index(current, &newer);
    let db = rusqlite::Connection::open(newer.join("index.sqlite")).unwrap();
    db.execute(
        "UPDATE meta SET value = '3' WHERE key = 'format_version'",
        [],
    )
    .unwrap();
    drop(db);
    for args in [
        &["index", "stats"][..],
        &["index", "add", images_dir().to_str().unwrap()],
        &["search", "--text", "a bus"],
    ] {
        let out = run(&newer, args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("format version 3") && err.contains("reads up to version 2"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(format_version(&newer), "3", "left untouched");
}

#[test]
fn the_built_in_decision_is_documented_in_help() {
    let out = arvis().args(["detect", "--help"]).output().unwrap();
    let help = stdout(&out);
    for flag in ["--item-threshold", "--item-margin", "--text-threshold"] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    let d = Decision::DEFAULT;
    assert!(help.contains(&format!("{:.2}", d.threshold)), "{help}");
}

#[test]
fn an_old_index_nobody_may_write_is_read_as_upgraded_without_writing() {
    let (_, current) = tiny_gallery();
    let root = tempfile::tempdir().unwrap();
    let old = root.path().join("old");
    let before = make_v1_index(current, &old);
    // Another user's gallery: readable by everyone, writable only by its owner (root).
    chmod_r("a+rX,go-w", root.path());
    let listing = || -> Vec<(std::ffi::OsString, u64)> {
        let mut l: Vec<_> = std::fs::read_dir(&old)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().len())
            })
            .collect();
        l.sort();
        l
    };
    let files = listing();
    let home = tempfile::tempdir().unwrap();
    let kit = NobodyKit::new();
    let as_nobody = |args: &[&str]| -> Output {
        let out = kit
            .arvis(home.path())
            .args(args)
            .env("ARVIS_INDEX", &old)
            .output()
            .unwrap();
        ok(&out);
        out
    };
    let stats = &json_lines(&as_nobody(&["index", "stats", "--json"]))[0];
    assert_eq!(stats["count"].as_u64(), Some(before.len() as u64));
    assert_eq!(
        stats["items"].as_u64(),
        Some(before.len() as u64),
        "{stats}"
    );
    let items = json_lines(&as_nobody(&["index", "items", "--json"]));
    assert!(
        items.iter().any(|i| i["label"] == "skimage_coffee"),
        "{items:?}"
    );
    let coffee = images_dir().join("skimage_coffee.png");
    let found = json_lines(&as_nobody(&["search", "--json", coffee.to_str().unwrap()]));
    assert_eq!(found[0]["results"][0]["item"], "skimage_coffee");
    // Nothing was written: still version 1, the same files, the same rows.
    assert_eq!(format_version(&old), "1");
    assert_eq!(listing(), files);
    assert_eq!(rows_of(&old), before);
    // Its owner's next open upgrades it.
    ok(&run(&old, &["index", "stats"]));
    assert_eq!(format_version(&old), "2");
}

#[test]
fn index_rename_and_rm_treat_crops_the_app_saved_as_the_app_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, index) = (tmp.path().join("data"), tmp.path().join("index"));
    // A crop as the app's "Add to gallery" leaves it, and one of the user's own photos.
    let folder = data.join("gallery-images").join("mug");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(".label"), "mug").unwrap();
    let photos = photos();
    let crop = folder.join("crop-1.jpg");
    photos[0].1.save(&crop).unwrap();
    let own = tmp.path().join("own.jpg");
    photos[1].1.save(&own).unwrap();
    let with_data = |args: &[&str]| -> Output {
        let out = cmd(&index)
            .env("ARVIS_DATA_DIR", &data)
            .args(args)
            .output()
            .unwrap();
        ok(&out);
        out
    };
    with_data(&["index", "add", "--label", "mug", crop.to_str().unwrap()]);
    with_data(&["index", "add", "--label", "mine", own.to_str().unwrap()]);

    // Renamed: the crop folder records the new name, so a rebuild from it keeps it.
    with_data(&["index", "rename", "mug", "cup"]);
    assert_eq!(
        std::fs::read_to_string(folder.join(".label")).unwrap(),
        "cup"
    );
    // Removed: the crop goes with its row (else the app's next start would add it back); the
    // user's own photo is only taken out of the index.
    with_data(&["index", "rm", "--item", "cup"]);
    assert!(!crop.exists());
    with_data(&["index", "rm", own.to_str().unwrap()]);
    assert!(own.exists(), "a user's photo is never deleted");
    let stats = &json_lines(&with_data(&["index", "stats", "--json"]))[0];
    assert_eq!(
        (stats["count"].as_u64(), stats["items"].as_u64()),
        (Some(0), Some(0))
    );
}

on_both_stores!(
    per_item_aggregation_beats_per_image_matching,
    absent_items_come_out_unknown_at_the_calibrated_decision,
    items_are_labelled_listed_renamed_and_removed,
);
