//! A shared catalogue on a real PostgreSQL 16 + pgvector server that the test starts itself
//! (tests/common/pg.rs), through the real binary. Uses the generated tiny CLIP-interface model
//! (real CLIP weights are not available here).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::gallery_count as count;
use common::pg::{PgServer, SUPERUSER, shared_server};
use common::*;

#[test]
fn a_catalogue_is_built_searched_and_re_added_without_showing_its_password() {
    let server = shared_server();
    // Trust authentication ignores the password, so it can stand in a URL that must never
    // print it.
    let url = format!(
        "postgresql://{SUPERUSER}:topsecret@127.0.0.1:{}/postgres?catalogue=basic",
        server.port
    );
    let idx = Path::new(&url);
    let add = run_tiny_clip(idx, &["index", "add", images_dir().to_str().unwrap()]);
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(
        stdout(&add).contains("indexed 15 image(s)"),
        "{}",
        stdout(&add)
    );
    assert_eq!(count(&url), 15);

    let again = run_tiny_clip(idx, &["index", "add", images_dir().to_str().unwrap()]);
    assert!(
        stdout(&again).contains("indexed 0 image(s), 15 unchanged"),
        "{}",
        stdout(&again)
    );
    let query = images_dir().join("darknet_dog.jpg");
    let search = run_tiny_clip(
        idx,
        &["search", "--json", "-k", "3", query.to_str().unwrap()],
    );
    assert!(search.status.success(), "{}", stderr(&search));
    let top = &json_lines(&search)[0]["results"][0];
    assert!(
        top["path"].as_str().unwrap().ends_with("darknet_dog.jpg"),
        "{top}"
    );
    assert!(top["score"].as_f64().unwrap() >= 0.999, "{top}");

    for out in [&add, &again, &search] {
        let all = format!("{}{}", stdout(out), stderr(out));
        assert!(!all.contains("topsecret"), "{all}");
    }
    assert!(
        stdout(&add).contains(&format!("{SUPERUSER}:***@")),
        "{}",
        stdout(&add)
    );

    // The same catalogue through the server's Unix socket.
    assert_eq!(count(server.socket_url("basic")), 15);
}

#[test]
fn the_same_photo_from_two_folders_is_one_image() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(images_dir()).unwrap().flatten() {
        std::fs::copy(e.path(), a.path().join(e.file_name())).unwrap();
        std::fs::copy(e.path(), b.path().join(e.file_name())).unwrap();
    }
    let url = shared_server().url("dedup");
    let out = arvis_tiny_clip(Path::new(&url))
        .args(["index", "add"])
        .arg(a.path())
        .arg(b.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count(&url), 15, "identity is the content, not the path");

    // One folder's copy removed, the other folder's gone from disk and pruned: an image stays
    // while any file of it is indexed.
    let rm = |path: &Path| {
        let out = arvis_tiny_clip(Path::new(&url))
            .args(["index", "rm"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    rm(&a.path().join("darknet_dog.jpg"));
    assert_eq!(count(&url), 15, "b's dog is still indexed");
    let dog = images_dir().join("darknet_dog.jpg");
    let out = run_tiny_clip(
        Path::new(&url),
        &["search", "--json", "-k", "1", dog.to_str().unwrap()],
    );
    let shown = json_lines(&out)[0]["results"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        shown.starts_with(b.path().to_str().unwrap()),
        "shown from the file still indexed: {shown}"
    );
    rm(&b.path().join("darknet_dog.jpg"));
    assert_eq!(count(&url), 14, "the last file of it removed");
    std::fs::remove_file(b.path().join("ultralytics_bus.jpg")).unwrap();
    let prune = run_tiny_clip(Path::new(&url), &["index", "prune"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    assert_eq!(count(&url), 14, "a's bus is still there");
}

#[test]
fn an_unreachable_server_is_named_quickly_and_a_missing_catalogue_is_missing() {
    let gone = PgServer::start();
    let url = format!(
        "postgresql://{SUPERUSER}:topsecret@127.0.0.1:{}/postgres",
        gone.port
    );
    gone.stop();
    let t = Instant::now();
    let out = run_tiny_clip(Path::new(&url), &["index", "stats"]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the catalogue server 127.0.0.1:")
            && err.contains("Fix:")
            && !err.contains("topsecret"),
        "{err}"
    );

    let absent = shared_server().url("never_made");
    let out = run_tiny_clip(Path::new(&absent), &["index", "stats"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no index at"), "{}", stderr(&out));
}

/// A folder holding copies of `files`.
fn folder_of(files: &[std::path::PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    dir
}

fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// One row of numbers from the server, as its administrator would ask.
fn admin_count(sql: &str) -> i64 {
    shared_server()
        .admin()
        .query_one(sql, &[])
        .unwrap()
        .get::<_, i64>(0)
}

#[test]
fn two_writers_on_overlapping_folders_and_a_reader_end_with_every_image_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let originals = files_in(&images_dir());
    let mirrored = mirrored_gallery();
    let mirrored = files_in(mirrored.path());
    // 30 contents: each writer has 23 or 25 of them, 18 in both; two are there before either.
    let a = folder_of(&[&originals[..], &mirrored[..8]].concat());
    let b = folder_of(&[&originals[5..], &mirrored[..]].concat());
    let seed = folder_of(&originals[..2]);
    let url = shared_server().url("together");
    let add = |dir: &Path| {
        arvis_tiny_clip(Path::new(&url))
            .args(["index", "add"])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = add(seed.path()).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // A reader searching all the while, through the library as the app's matcher does.
    let done = AtomicBool::new(false);
    let (searches, failures) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let location = arvis::search::GalleryLocation::parse(url.as_ref()).unwrap();
            let mut store = arvis::search::store::open_any(&location).unwrap();
            let mut query: Vec<f32> = (0..512).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
            let norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
            query.iter_mut().for_each(|v| *v /= norm);
            let (mut searches, mut failures) = (0, Vec::new());
            let until = Instant::now() + Duration::from_secs(300);
            while !done.load(Ordering::SeqCst) && Instant::now() < until {
                match store.search(&query, 5, false) {
                    Ok(hits) if hits.len() >= 2 => searches += 1,
                    Ok(hits) => failures.push(format!("{} hit(s)", hits.len())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (searches, failures)
        });
        let (wa, wb) = (add(a.path()), add(b.path()));
        let (oa, ob) = (
            wa.wait_with_output().unwrap(),
            wb.wait_with_output().unwrap(),
        );
        done.store(true, Ordering::SeqCst);
        for out in [&oa, &ob] {
            assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
        }
        reader.join().unwrap()
    });
    eprintln!("reader: {searches} searches while the two writers ran");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(searches > 0);
    assert_eq!(count(&url), 30, "every content once");
    assert_eq!(
        admin_count("SELECT count(*) - count(DISTINCT sha256) FROM together.images"),
        0
    );
    assert_eq!(
        admin_count("SELECT count(*) FROM together.sources"),
        2 + 23 + 25,
        "every file where it was found"
    );
}

#[test]
fn a_server_stopped_mid_add_leaves_whole_batches_and_a_rerun_completes() {
    let server = PgServer::start();
    let url = server.url("midway");
    let originals = folder_of(&files_in(&images_dir()));
    let mirrored = mirrored_gallery();
    let tmp = tempfile::tempdir().unwrap();
    let paused = tmp.path().join("paused");
    // 30 images, 16 per batch: the server goes away between the first and second batch.
    let child = arvis_tiny_clip(Path::new(&url))
        .env(
            "ARVIS_TEST_PAUSE_AFTER_BATCHES",
            format!("1:{}", paused.display()),
        )
        .args(["index", "add"])
        .arg(originals.path())
        .arg(mirrored.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(120), || paused.exists()));
    server.stop();
    std::fs::remove_file(&paused).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        (err.contains("lost the connection") || err.contains("cannot reach"))
            && err.contains("Fix:")
            && !err.contains("panicked"),
        "{err}"
    );

    server.start_again();
    assert_eq!(count(&url), 16, "the committed batch, nothing of the next");
    let again = run_tiny_clip(
        Path::new(&url),
        &[
            "index",
            "add",
            originals.path().to_str().unwrap(),
            mirrored.path().to_str().unwrap(),
        ],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("indexed 14 image(s), 16 unchanged"),
        "{}",
        stdout(&again)
    );
    assert_eq!(count(&url), 30);
}

#[test]
fn passwords_are_checked_and_come_from_the_url_pgpassword_or_pgpass() {
    let server = shared_server();
    server.exec(
        "CREATE EXTENSION IF NOT EXISTS vector;
         CREATE ROLE pw_user LOGIN PASSWORD 'right-horse';
         GRANT CREATE ON DATABASE postgres TO pw_user;",
    );
    server.require_password("pw_user");
    let url = |password: &str| {
        format!(
            "postgresql://pw_user{password}@127.0.0.1:{}/postgres?catalogue=pw",
            server.port
        )
    };
    let home = tempfile::tempdir().unwrap();
    let stats = |url: &str, env: &[(&str, &str)]| {
        let mut c = arvis_tiny_clip(Path::new(url));
        c.env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env("HOME", home.path())
            .args(["index", "add", images_dir().to_str().unwrap()]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };

    let wrong = stats(&url(":wrong-horse"), &[]);
    assert!(!wrong.status.success());
    let err = stderr(&wrong);
    assert!(
        err.contains("refused user pw_user") && err.contains("Fix:"),
        "{err}"
    );
    assert!(!format!("{}{err}", stdout(&wrong)).contains("wrong-horse"));
    let none = stats(&url(""), &[]);
    assert!(
        stderr(&none).contains("asks for a password"),
        "{}",
        stderr(&none)
    );

    let by_env = stats(&url(""), &[("PGPASSWORD", "right-horse")]);
    assert!(by_env.status.success(), "{}", stderr(&by_env));
    assert!(!format!("{}{}", stdout(&by_env), stderr(&by_env)).contains("right-horse"));

    // ~/.pgpass, only when no one else may read it (as libpq does).
    let pgpass = home.path().join(".pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{}:postgres:pw_user:right-horse\n", server.port),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let by_file = stats(&url(""), &[]);
    assert!(by_file.status.success(), "{}", stderr(&by_file));
    assert!(
        stdout(&by_file).contains("0 image(s), 15 unchanged"),
        "{}",
        stdout(&by_file)
    );
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        !stats(&url(""), &[]).status.success(),
        "a readable .pgpass is ignored"
    );
}

#[test]
fn a_read_only_role_searches_but_cannot_change_the_catalogue() {
    let server = shared_server();
    let owner = server.url("shelf");
    let add = run_tiny_clip(
        Path::new(&owner),
        &["index", "add", images_dir().to_str().unwrap()],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    server.exec(
        "CREATE ROLE ro_user LOGIN;
         GRANT USAGE ON SCHEMA shelf TO ro_user;
         GRANT SELECT ON ALL TABLES IN SCHEMA shelf TO ro_user;",
    );
    let reader = format!(
        "postgresql://ro_user@127.0.0.1:{}/postgres?catalogue=shelf",
        server.port
    );
    let dog = images_dir().join("darknet_dog.jpg");
    let search = run_tiny_clip(
        Path::new(&reader),
        &["search", "--json", dog.to_str().unwrap()],
    );
    assert!(search.status.success(), "{}", stderr(&search));
    assert!(
        json_lines(&search)[0]["results"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("darknet_dog.jpg")
    );
    let mirrored = mirrored_gallery();
    for args in [
        vec!["index", "add", mirrored.path().to_str().unwrap()],
        vec!["index", "rm", dog.to_str().unwrap()],
    ] {
        let out = run_tiny_clip(Path::new(&reader), &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("user ro_user may not change catalogue shelf"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(count(&owner), 15, "nothing changed");
}

#[test]
fn a_server_without_pgvector_or_the_database_is_named_with_the_fix() {
    let bare = PgServer::start_without_pgvector();
    let url = bare.url("plain");
    let out = run_tiny_clip(
        Path::new(&url),
        &["index", "add", images_dir().to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the pgvector extension is not available in database postgres")
            && err.contains("CREATE EXTENSION vector"),
        "{err}"
    );

    let nodb = format!(
        "postgresql://{SUPERUSER}@127.0.0.1:{}/nowhere",
        shared_server().port
    );
    let out = run_tiny_clip(Path::new(&nodb), &["index", "stats"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("database nowhere does not exist") && stderr(&out).contains("Fix:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_catalogue_from_a_newer_arvis_is_refused_and_left_alone() {
    let server = shared_server();
    let url = server.url("future");
    let add = run_tiny_clip(
        Path::new(&url),
        &["index", "add", images_dir().to_str().unwrap()],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    server.exec("UPDATE future.meta SET value = '2' WHERE key = 'format_version'");
    let dog = images_dir().join("darknet_dog.jpg");
    for args in [
        vec!["index", "stats"],
        vec!["index", "add", images_dir().to_str().unwrap()],
        vec!["search", dog.to_str().unwrap()],
    ] {
        let out = run_tiny_clip(Path::new(&url), &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("format version 2")
                && stderr(&out).contains("reads up to version 1"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        admin_count("SELECT value::bigint FROM future.meta WHERE key = 'format_version'"),
        2
    );
    assert_eq!(admin_count("SELECT count(*) FROM future.images"), 15);
}

/// `arvis index items --json` as (label, images, prompts), for comparing two stores.
fn items_of(index: &str) -> Vec<(String, u64, u64)> {
    let out = run_tiny_clip(Path::new(index), &["index", "items", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&out)
        .iter()
        .map(|i| {
            (
                i["label"].as_str().unwrap().to_string(),
                i["images"].as_u64().unwrap(),
                i["prompts"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The top result of searching `index` for `photo`: (file name, score).
fn top_hit(index: &str, photo: &Path) -> (String, f64) {
    let out = run_tiny_clip(
        Path::new(index),
        &["search", "--json", "-k", "1", photo.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let top = &json_lines(&out)[0]["results"][0];
    let path = top["path"].as_str().unwrap();
    (
        path.rsplit('/').next().unwrap().to_string(),
        top["score"].as_f64().unwrap(),
    )
}

#[test]
fn a_gallery_is_copied_to_a_catalogue_and_back_without_embedding_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    let dir = dir.to_str().unwrap();
    let photos = folder_of(&files_in(&images_dir()));
    let add = run_tiny_clip(
        Path::new(dir),
        &["index", "add", photos.path().to_str().unwrap()],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let text = run_tiny_clip(
        Path::new(dir),
        &["index", "add-text", "a red bus", "--label", "bus"],
    );
    assert!(text.status.success(), "{}", stderr(&text));

    // Directory → catalogue. No CLIP model is given: nothing is embedded.
    let url = shared_server().url("moved");
    let copy = arvis().args(["index", "copy", dir, &url]).output().unwrap();
    assert!(copy.status.success(), "{}", stderr(&copy));
    assert!(
        stdout(&copy).contains("copied 15 image(s), 0 already there, 1 prompt(s)"),
        "{}",
        stdout(&copy)
    );
    assert_eq!(items_of(&url), items_of(dir));
    let dog = photos.path().join("darknet_dog.jpg");
    let (name, score) = top_hit(&url, &dog);
    assert_eq!(name, "darknet_dog.jpg");
    assert!(score >= 0.999, "the same embedding: {score}");
    let again = arvis().args(["index", "copy", dir, &url]).output().unwrap();
    assert!(
        stdout(&again).contains("copied 0 image(s), 15 already there"),
        "{}",
        stdout(&again)
    );
    assert_eq!(count(&url), 15);

    // Catalogue → a new directory, interrupted after its first batch of 4, then resumed.
    let back = tmp.path().join("back");
    let back = back.to_str().unwrap();
    let stopped = arvis()
        .env("ARVIS_TEST_COPY_PAGE", "4")
        .env("ARVIS_TEST_SIGINT_AFTER_BATCHES", "1")
        .args(["index", "copy", &url, back])
        .output()
        .unwrap();
    assert_eq!(stopped.status.code(), Some(130), "{}", stderr(&stopped));
    assert!(
        stderr(&stopped).contains("interrupted: 11 image(s) not copied yet"),
        "{}",
        stderr(&stopped)
    );
    assert_eq!(count(back), 4);
    let resumed = arvis()
        .env("ARVIS_TEST_COPY_PAGE", "4")
        .args(["index", "copy", &url, back])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stdout(&resumed).contains("copied 11 image(s), 4 already there, 1 prompt(s)"),
        "{}",
        stdout(&resumed)
    );
    assert_eq!(items_of(back), items_of(dir));
    assert_eq!(top_hit(back, &dog).0, "darknet_dog.jpg");

    // A destination made with another model is refused, and left as it was.
    let foreign = tmp.path().join("foreign");
    let made = arvis()
        .env("ARVIS_CLIP_MODEL", &clip_tiny_other().0)
        .args(["index", "add", "--index"])
        .arg(&foreign)
        .arg(&dog)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let refused = arvis()
        .args(["index", "copy", &url])
        .arg(&foreign)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("embeddings of different models cannot be compared"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(count(foreign.to_str().unwrap()), 1);
}

#[test]
fn doctor_reports_the_catalogue_without_its_password() {
    let server = shared_server();
    let url = format!(
        "postgresql://{SUPERUSER}:topsecret@127.0.0.1:{}/postgres?catalogue=checked",
        server.port
    );
    let add = run_tiny_clip(
        Path::new(&url),
        &["index", "add", images_dir().to_str().unwrap()],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let out = arvis()
        .env("ARVIS_INDEX", &url)
        .arg("doctor")
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    for want in [
        "catalogue on PostgreSQL + pgvector",
        "(PostgreSQL 16.",
        "pgvector:  0.",
        "hnsw (embedding vector_cosine_ops)",
        "15 image(s), 15 item(s)",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    assert!(!text.contains("topsecret"), "{text}");
}

#[test]
fn bench_search_measures_the_catalogue_beside_the_local_hnsw() {
    let url = shared_server().url("unused");
    let out = arvis()
        .args([
            "bench",
            "search",
            "--sizes",
            "3000",
            "--queries",
            "20",
            "--store",
            &url,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("PostgreSQL + pgvector at") && text.contains("3000 vectors at recall@10"),
        "{text}"
    );
    assert_eq!(
        admin_count("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'arvis_bench_%'"),
        0,
        "the bench's catalogue is dropped"
    );
}

#[test]
fn encrypted_connections_are_made_and_certificates_checked_as_sslmode_asks() {
    let server = PgServer::start_tls();
    let url = |params: &str| {
        format!(
            "postgresql://{SUPERUSER}:topsecret@127.0.0.1:{}/postgres?catalogue=sealed&{params}",
            server.port
        )
    };
    let stats = |url: &str| {
        let out = run_tiny_clip(Path::new(url), &["index", "stats"]);
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!out.status.success(), "{all}");
        assert!(!all.contains("topsecret"), "{all}");
        stderr(&out)
    };
    let ca = server.ca();
    // A session is had (the server has no catalogue: "no index at"), encrypted, as the server
    // allows nothing else.
    for params in [
        String::from("sslmode=prefer"),
        String::from("sslmode=require"),
        format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
        format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ] {
        let err = stats(&url(&params));
        assert!(err.contains("no index at"), "{params}: {err}");
    }
    let err = stats(&url("sslmode=disable"));
    assert!(
        err.contains("refused user") && err.contains("no encryption"),
        "{err}"
    );
    // verify-full without the test's CA: the public roots do not vouch for it.
    let err = stats(&url("sslmode=verify-full"));
    assert!(
        err.contains("cannot reach the catalogue server") && err.contains("certificate"),
        "{err}"
    );
}
