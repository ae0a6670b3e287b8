//! The gallery index through the real binary: add/stats/rm/prune, queries, --match, and
//! robustness (kill mid-add, damaged files, model mismatch, bad images). Uses the generated tiny
//! CLIP-interface model (real CLIP weights are not available here).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::store::{Store, TestIndex};
use common::*;
use common::{arvis_tiny_clip as cmd, gallery_count as count, run_tiny_clip as run};

/// A gallery folder holding copies of the shared photos (so tests may modify them).
fn gallery() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(images_dir()).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn an_indexed_image_finds_itself_first_with_score_one(store: Store) {
    let g = gallery();
    let idx = TestIndex::new(store);
    let out = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("generated test model"),
        "random-weight models are flagged: {}",
        stderr(&out)
    );
    assert_eq!(count(idx.path()), 15);

    let stats = json_lines(&run(idx.path(), &["index", "stats", "--json"]))[0].clone();
    assert_eq!(stats["dim"], 512);
    assert!(
        stats["model_id"]
            .as_str()
            .unwrap()
            .starts_with("clip-tiny-random-vision@sha256:")
    );
    assert!(
        stats["bytes_on_disk"].as_u64().unwrap() > 15 * 2048,
        "embeddings and thumbnails stored"
    );

    let queries: Vec<PathBuf> = std::fs::read_dir(g.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let out = cmd(idx.path())
        .args(["search", "--json", "-k", "3"])
        .args(&queries)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 15, "one line per query");
    for l in &lines {
        let keys: Vec<_> = l.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["query", "results"]);
        let top = &l["results"][0];
        assert_eq!(
            Path::new(top["path"].as_str().unwrap()).file_name(),
            Path::new(l["query"].as_str().unwrap()).file_name()
        );
        assert!(top["score"].as_f64().unwrap() >= 0.999, "{l}");
        assert_eq!(l["results"].as_array().unwrap().len(), 3);
    }

    // --min-score filters.
    let out = cmd(idx.path())
        .args(["search", "--json", "--min-score", "0.999"])
        .arg(&queries[0])
        .output()
        .unwrap();
    assert_eq!(json_lines(&out)[0]["results"].as_array().unwrap().len(), 1);
}

fn half_size_jpeg_q50_copies_find_their_originals(store: Store) {
    let g = gallery();
    let idx = TestIndex::new(store);
    assert!(
        cmd(idx.path())
            .args(["index", "add"])
            .arg(g.path())
            .output()
            .unwrap()
            .status
            .success()
    );
    let copies = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(g.path()).unwrap().flatten() {
        let jpeg = half_size_jpeg_q50(&image::open(e.path()).unwrap().to_rgb8());
        let stem = e.path().file_stem().unwrap().to_string_lossy().into_owned();
        std::fs::write(copies.path().join(format!("{stem}.copy.jpg")), jpeg).unwrap();
    }
    let queries: Vec<PathBuf> = std::fs::read_dir(copies.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let out = cmd(idx.path())
        .args(["search", "--json", "-k", "1"])
        .args(&queries)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 15, "one result line per query");
    for l in lines {
        let q = Path::new(l["query"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".copy.jpg", "");
        let found = Path::new(l["results"][0]["path"].as_str().unwrap())
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(found, q, "{l}");
    }
}

fn text_queries_and_detect_match_run_end_to_end(store: Store) {
    let g = gallery();
    let idx = TestIndex::new(store);
    assert!(
        cmd(idx.path())
            .args(["index", "add"])
            .arg(g.path())
            .output()
            .unwrap()
            .status
            .success()
    );

    let out = run(
        idx.path(),
        &[
            "search",
            "--json",
            "-k",
            "4",
            "--text",
            "a red bus",
            "--text",
            "a cat",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["query"], "a red bus");
    assert_eq!(lines[1]["results"].as_array().unwrap().len(), 4);

    let cat = images_dir().join("skimage_chelsea_cat.png");
    let bus = images_dir().join("ultralytics_bus.jpg");
    let out = cmd(idx.path())
        .args(["detect", "--json", "--match", "--match-k", "2"])
        .arg(&cat)
        .arg(&bus)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    for l in &lines {
        for d in l["detections"].as_array().unwrap() {
            let keys: Vec<_> = d.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                ["box", "class_id", "item", "label", "matches", "score"]
            );
            let m = d["matches"].as_array().unwrap();
            assert_eq!(m.len(), 2);
            assert!(m[0]["score"].as_f64().unwrap() >= m[1]["score"].as_f64().unwrap());
        }
    }
    // The cat fills its photo: its region's best match is that photo.
    let cat_match = lines[0]["detections"][0]["matches"][0]["path"]
        .as_str()
        .unwrap();
    assert!(
        cat_match.ends_with("skimage_chelsea_cat.png"),
        "{cat_match}"
    );

    // Without --match the shape is unchanged.
    let out = cmd(idx.path())
        .args(["detect", "--json"])
        .arg(&cat)
        .output()
        .unwrap();
    assert!(
        json_lines(&out)[0]["detections"][0]
            .get("matches")
            .is_none()
    );
}

fn adding_is_incremental_and_rm_prune_keep_it_in_step(store: Store) {
    let g = gallery();
    let idx = TestIndex::new(store);
    assert!(
        cmd(idx.path())
            .args(["index", "add"])
            .arg(g.path())
            .output()
            .unwrap()
            .status
            .success()
    );
    let again = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(
        stdout(&again).contains("indexed 0 image(s), 15 unchanged"),
        "{}",
        stdout(&again)
    );

    // Change one file's content (size changes): only it is re-embedded.
    let coffee = g.path().join("skimage_coffee.png");
    let img = image::open(&coffee).unwrap().to_rgb8();
    image::imageops::flip_horizontal(&img)
        .save(&coffee)
        .unwrap();
    let changed = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(
        stdout(&changed).contains("indexed 1 image(s), 14 unchanged"),
        "{}",
        stdout(&changed)
    );
    assert_eq!(count(idx.path()), 15);

    let rm = cmd(idx.path())
        .args(["index", "rm"])
        .arg(g.path().join("darknet_dog.jpg"))
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert_eq!(count(idx.path()), 14);
    let rm_again = cmd(idx.path())
        .args(["index", "rm"])
        .arg(g.path().join("darknet_dog.jpg"))
        .output()
        .unwrap();
    assert_eq!(
        rm_again.status.code(),
        Some(1),
        "removing what is not there is reported"
    );

    std::fs::remove_file(g.path().join("darknet_eagle.jpg")).unwrap();
    std::fs::remove_file(g.path().join("darknet_kite.jpg")).unwrap();
    let prune = run(idx.path(), &["index", "prune"]);
    assert!(
        stdout(&prune).contains("pruned 2 missing file(s); 12 remain"),
        "{}",
        stdout(&prune)
    );
    // Searches never return removed files.
    let out = cmd(idx.path())
        .args(["search", "--json", "-k", "20"])
        .arg(images_dir().join("darknet_dog.jpg"))
        .output()
        .unwrap();
    let paths: Vec<String> = json_lines(&out)[0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths.len(), 12);
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with("darknet_dog.jpg") || p.ends_with("darknet_eagle.jpg"))
    );
}

/// `index add` of two 15-image folders with a test hook that stops it after its first batch.
fn add_two_stopped_by(idx: &Path, g: &Path, g2: &Path, hook: &str) -> Output {
    cmd(idx)
        .env(hook, "1")
        .args(["index", "add"])
        .arg(g)
        .arg(g2)
        .output()
        .unwrap()
}

/// After an add of two 15-image folders stopped at its first batch of 16: the same command
/// adds exactly the 14 left.
fn resumes_with_the_other_14(idx: &Path, g: &Path, g2: &Path) {
    let resumed = cmd(idx)
        .args(["index", "add"])
        .arg(g)
        .arg(g2)
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stdout(&resumed).contains("indexed 14 image(s), 16 unchanged"),
        "{}",
        stdout(&resumed)
    );
    assert_eq!(count(idx), 30);
}

fn a_kill_during_add_leaves_a_consistent_index_that_resumes(store: Store) {
    // Two folders of 15: the tiny model embeds 16 per batch, so there are two batches.
    let g = gallery();
    let g2 = mirrored_gallery();
    let idx = TestIndex::new(store);
    let killed = add_two_stopped_by(
        idx.path(),
        g.path(),
        g2.path(),
        "ARVIS_TEST_ABORT_AFTER_BATCHES",
    );
    assert!(!killed.status.success(), "the process was aborted");
    assert_eq!(
        count(idx.path()),
        16,
        "the committed batch is there, nothing more"
    );
    let out = cmd(idx.path())
        .args(["search", "--json", "-k", "1"])
        .arg(g.path().join("darknet_dog.jpg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the index is usable after the kill: {}",
        stderr(&out)
    );
    resumes_with_the_other_14(idx.path(), g.path(), g2.path());
}

#[test]
fn damaged_index_files_give_clear_errors_never_panics() {
    let g = gallery();
    let idx = tempfile::tempdir().unwrap();
    assert!(
        cmd(idx.path())
            .args(["index", "add"])
            .arg(g.path())
            .output()
            .unwrap()
            .status
            .success()
    );
    let query = images_dir().join("darknet_dog.jpg");

    // A damaged HNSW file is only a cache: it is detected (sha256) and rebuilt from the database.
    let vectors = idx.path().join("vectors.usearch");
    let bytes = std::fs::read(&vectors).unwrap();
    std::fs::write(&vectors, &bytes[..bytes.len() / 2]).unwrap();
    let out = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&vectors).unwrap().len(),
        bytes.len(),
        "rebuilt in full"
    );

    // A truncated database is damage: say so, with the fix.
    let db = idx.path().join("index.sqlite");
    let _ = cmd(idx.path()).args(["index", "stats"]).output(); // checkpoint the WAL into the main file
    let len = std::fs::metadata(&db).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    for f in ["index.sqlite-wal", "index.sqlite-shm"] {
        let _ = std::fs::remove_file(idx.path().join(f));
    }
    let out = cmd(idx.path())
        .args(["search"])
        .arg(&query)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("is damaged") && err.contains("rebuild"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Not a database at all.
    std::fs::write(
        &db,
        b"this is not sqlite, just text that happens to be long enough to have a header",
    )
    .unwrap();
    let out = run(idx.path(), &["index", "stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is damaged"), "{}", stderr(&out));

    // No index at all.
    let empty = tempfile::tempdir().unwrap();
    let out = cmd(&empty.path().join("nothing"))
        .args(["search"])
        .arg(&query)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("no index at") && stderr(&out).contains("arvis index add"),
        "{}",
        stderr(&out)
    );
}

fn another_model_is_refused_and_bad_images_are_skipped(store: Store) {
    let g = gallery();
    std::fs::write(g.path().join("zero.jpg"), b"").unwrap();
    std::fs::write(g.path().join("corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let idx = TestIndex::new(store);
    let out = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "failures make the exit status non-zero"
    );
    let err = stderr(&out);
    assert!(
        err.contains("zero.jpg: skipped: empty file") && err.contains("corrupt.png: skipped"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("indexed 15 image(s), 0 unchanged, 2 failed"),
        "{}",
        stdout(&out)
    );

    let (other_vision, _) = clip_tiny_other();
    let out = cmd(idx.path())
        .args(["search", "--clip-model"])
        .arg(other_vision)
        .arg(images_dir().join("darknet_dog.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("embeddings of different models cannot be compared"),
        "{}",
        stderr(&out)
    );
    let out = cmd(idx.path())
        .args(["index", "add", "--clip-model"])
        .arg(other_vision)
        .arg(g.path())
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("embeddings of different models cannot be compared"),
        "adding with another model is refused too"
    );
    assert_eq!(count(idx.path()), 15);
}

fn ctrl_c_during_add_commits_the_batch_in_flight_and_resumes(store: Store) {
    // 15 + 15 images, 16 per batch: SIGINT after the first batch leaves 14 for the resume.
    let g = gallery();
    let g2 = mirrored_gallery();
    let idx = TestIndex::new(store);
    let out = add_two_stopped_by(
        idx.path(),
        g.path(),
        g2.path(),
        "ARVIS_TEST_SIGINT_AFTER_BATCHES",
    );
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted: 14 image(s) not indexed yet"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("indexed 16 image(s)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(count(idx.path()), 16);
    resumes_with_the_other_14(idx.path(), g.path(), g2.path());
}

#[test]
fn a_kill_between_saving_the_graph_and_renaming_it_loses_nothing() {
    let g = gallery();
    let g2 = gallery();
    let idx = tempfile::tempdir().unwrap();
    let first = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    // The second add commits its 15 images, then dies with the new graph saved but not renamed.
    let killed = cmd(idx.path())
        .env("ARVIS_TEST_ABORT_BEFORE_GRAPH_RENAME", "1")
        .args(["index", "add"])
        .arg(g2.path())
        .output()
        .unwrap();
    assert!(!killed.status.success());
    let leftovers = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vectors.tmp-"))
            .collect()
    };
    assert_eq!(
        leftovers(idx.path()).len(),
        1,
        "the kill left its temp file"
    );
    // Every committed image is there and found (the old graph file is not trusted for them).
    assert_eq!(count(idx.path()), 30);
    let out = cmd(idx.path())
        .args(["search", "--json", "-k", "1"])
        .arg(g2.path().join("darknet_dog.jpg"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let top = json_lines(&out)[0]["results"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(top.ends_with("darknet_dog.jpg"), "{top}");
    // The next writer removes the leftover and saves a current graph.
    let out = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        leftovers(idx.path()).is_empty(),
        "{:?}",
        leftovers(idx.path())
    );
    assert!(idx.path().join("vectors.usearch").is_file());
}

#[test]
fn a_read_only_gallery_is_searched_by_another_user() {
    let g = gallery();
    let root = tempfile::tempdir().unwrap();
    let idx = root.path().join("gallery");
    let out = cmd(&idx)
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Readable by everyone, writable by nobody but root: another user's gallery.
    chmod_r("a+rX,go-w", root.path());
    chmod_r("a+rX", g.path());
    let home = tempfile::tempdir().unwrap();
    let kit = NobodyKit::new();
    let as_nobody = |args: &[&str]| -> Output {
        kit.arvis(home.path())
            .args(args)
            .env("ARVIS_INDEX", &idx)
            .output()
            .unwrap()
    };
    let before: Vec<_> = std::fs::read_dir(&idx)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let stats = as_nobody(&["index", "stats", "--json"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    assert_eq!(json_lines(&stats)[0]["count"], 15);
    let query = g.path().join("darknet_dog.jpg");
    let search = as_nobody(&["search", "--json", "-k", "1", query.to_str().unwrap()]);
    assert!(search.status.success(), "{}", stderr(&search));
    assert!(
        json_lines(&search)[0]["results"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("darknet_dog.jpg")
    );
    // Writing is refused with a clear error, not a raw SQLite message, and nothing changed.
    let rm = as_nobody(&["index", "rm", query.to_str().unwrap()]);
    assert_eq!(rm.status.code(), Some(2), "{}", stderr(&rm));
    let after: Vec<_> = std::fs::read_dir(&idx)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "reading wrote nothing into the gallery");
}

#[test]
fn an_empty_or_directory_database_file_is_named_for_what_it_is() {
    let idx = tempfile::tempdir().unwrap();
    std::fs::write(idx.path().join("index.sqlite"), b"").unwrap();
    let out = run(idx.path(), &["index", "stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("empty (0 bytes)"), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(idx.path().join("index.sqlite"))
            .unwrap()
            .len(),
        0,
        "stats wrote nothing into it"
    );
    let idx2 = tempfile::tempdir().unwrap();
    std::fs::create_dir(idx2.path().join("index.sqlite")).unwrap();
    let out = run(idx2.path(), &["index", "stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is a directory, not a database file"),
        "{}",
        stderr(&out)
    );
}

fn a_text_model_from_another_clip_pair_is_refused(store: Store) {
    let g = gallery();
    let idx = TestIndex::new(store);
    let out = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let paired = run(idx.path(), &["search", "--json", "--text", "a dog"]);
    assert!(paired.status.success(), "{}", stderr(&paired));
    assert_eq!(json_lines(&paired).len(), 1);

    // Same interface and width, other weights: the scores would mean nothing.
    let foreign = &clip_tiny_other().1;
    let out = cmd(idx.path())
        .env("ARVIS_CLIP_TEXT_MODEL", foreign)
        .args(["search", "--text", "a dog"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("belongs to CLIP generated:clip-tiny-random:seed7")
            && stderr(&out).contains("--clip-text-model"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "no scores were printed");

    // An index from before pairings were recorded: the user must vouch for the pairing.
    idx.set_meta("clip_family", None);
    let out = run(idx.path(), &["search", "--text", "a dog"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot check") && stderr(&out).contains("--trust-text-model"),
        "{}",
        stderr(&out)
    );
    let out = run(
        idx.path(),
        &["search", "--text", "a dog", "--trust-text-model"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

fn non_utf8_file_names_are_kept_exactly_and_shown_escaped(store: Store) {
    use std::os::unix::ffi::OsStrExt;
    let g = tempfile::tempdir().unwrap();
    // Two names that a lossy conversion would both turn into "a\u{FFFD}.jpg", and one with an
    // escape sequence that would recolour a terminal.
    let names: [&[u8]; 3] = [b"a\xff.jpg", b"a\xfe.jpg", b"x\x1b[31mred.jpg"];
    for (name, photo) in names.iter().zip([
        "darknet_dog.jpg",
        "ultralytics_bus.jpg",
        "skimage_coffee.png",
    ]) {
        std::fs::copy(
            images_dir().join(photo),
            g.path().join(std::ffi::OsStr::from_bytes(name)),
        )
        .unwrap();
    }
    let idx = TestIndex::new(store);
    let out = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        count(idx.path()),
        3,
        "no two names collapsed into one entry"
    );
    let out = run(idx.path(), &["index", "prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pruned 0 missing"),
        "{}",
        stdout(&out)
    );
    assert_eq!(count(idx.path()), 3);
    let again = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(
        stdout(&again).contains("indexed 0 image(s), 3 unchanged"),
        "{}",
        stdout(&again)
    );

    let query = g.path().join(std::ffi::OsStr::from_bytes(b"a\xfe.jpg"));
    let out = cmd(idx.path())
        .args(["search", "-k", "3"])
        .arg(&query)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("a\\xFE.jpg"), "{text}");
    assert!(text.contains("x\\x1B[31mred.jpg"), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{FFFD}'),
        "{text:?}"
    );

    // rm removes exactly that file's entry.
    let out = cmd(idx.path())
        .args(["index", "rm"])
        .arg(&query)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count(idx.path()), 2);
}

#[test]
fn peak_memory_of_an_add_does_not_grow_with_the_batch_of_large_photos() {
    // 12 MP photos: a batch of 16 held at full resolution would be ~580 MB of pixels.
    let big = image::RgbImage::from_fn(4000, 3000, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&big)
        .unwrap();
    drop(big);
    let peak = |n: usize| -> f64 {
        let photos = tempfile::tempdir().unwrap();
        for i in 0..n {
            std::fs::write(photos.path().join(format!("big{i:02}.jpg")), &jpeg).unwrap();
        }
        let idx = tempfile::tempdir().unwrap();
        let out = cmd(idx.path())
            .env("ARVIS_LOG", "arvis=info")
            .args(["index", "add"])
            .arg(photos.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("indexed {n} image(s)")),
            "{}",
            stdout(&out)
        );
        stderr(&out)
            .lines()
            .find_map(|l| l.split("peak_rss_mb=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no peak_rss_mb in: {}", stderr(&out)))
    };
    let (one, sixteen) = (peak(1), peak(16));
    assert!(
        sixteen - one < 100.0,
        "peak {sixteen:.0} MB for a batch of 16 vs {one:.0} MB for one photo"
    );
}

fn an_index_built_with_other_preprocessing_is_refused(store: Store) {
    let g = gallery();
    let idx = TestIndex::new(store);
    let out = cmd(idx.path())
        .args(["index", "add"])
        .arg(g.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // As if built by an arvis whose CLIP preprocessing differed: same model, other pixels.
    idx.set_meta("preprocess_version", Some("0"));
    let query = g.path().join("darknet_dog.jpg");
    for args in [
        vec!["search".as_ref(), query.as_os_str()],
        vec!["index".as_ref(), "add".as_ref(), g.path().as_os_str()],
    ] {
        let out = cmd(idx.path()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("preprocessing v0")
                && stderr(&out).contains("cannot be compared"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
}

on_both_stores!(
    an_indexed_image_finds_itself_first_with_score_one,
    half_size_jpeg_q50_copies_find_their_originals,
    text_queries_and_detect_match_run_end_to_end,
    adding_is_incremental_and_rm_prune_keep_it_in_step,
    a_kill_during_add_leaves_a_consistent_index_that_resumes,
    another_model_is_refused_and_bad_images_are_skipped,
    ctrl_c_during_add_commits_the_batch_in_flight_and_resumes,
    a_text_model_from_another_clip_pair_is_refused,
    non_utf8_file_names_are_kept_exactly_and_shown_escaped,
    an_index_built_with_other_preprocessing_is_refused,
);
