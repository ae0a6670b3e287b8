//! The dependency direction the code follows, checked: the command line is an edge that nothing
//! else stands on. (Everything the app and the commands share — model loading, the JSON
//! records — lives in library modules.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn nothing_outside_the_cli_imports_the_cli() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 30, "found the sources: {}", files.len());
    let edge = [src.join("cli"), src.join("main.rs")];
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !edge.iter().any(|e| f.starts_with(e)))
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines: Vec<String> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains("crate::cli") || l.contains("arvis::cli"))
                .map(|(i, l)| format!("{}:{}: {}", f.display(), i + 1, l.trim()))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "library code must not import the CLI:\n{}",
        offenders.join("\n")
    );
}
