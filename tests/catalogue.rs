//! A shared catalogue on a real PostgreSQL 16 + pgvector server that the test starts itself
//! (tests/common/pg.rs), through the real binary. Uses the generated tiny CLIP-interface model
//! (real CLIP weights are not available here).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pg::{PgServer, SUPERUSER, shared_server};
use common::*;

fn count(index: &str) -> u64 {
    let out = run_tiny_clip(Path::new(index), &["index", "stats", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&out)[0]["count"].as_u64().unwrap()
}

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
    assert_eq!(count(&server.socket_url("basic")), 15);
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
