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

/// Each module's place in the one dependency direction: a module may use those at its own rank
/// or below, never one above (utilities/settings → runtime → models → source/preprocess →
/// detect/embed → track → search → render/report/sink → pipeline → load → bench/app; `cli` is
/// checked above).
const LAYERS: &[(&str, u32)] = &[
    ("util", 0),
    ("settings", 0),
    ("fault", 0),
    ("paths", 0),
    ("progress", 0),
    ("runtime", 1),
    ("models", 2),
    ("source", 3),
    ("preprocess", 3),
    ("detect", 4),
    ("embed", 4),
    ("track", 5),
    ("search", 6),
    ("render", 7),
    ("report", 7),
    ("sink", 7),
    ("pipeline", 8),
    ("load", 9),
    ("bench", 10),
    ("app", 10),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

#[test]
fn modules_only_use_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offenders = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs");
        let Some(own) = rank(module) else {
            continue; // cli, main.rs, lib.rs
        };
        checked += 1;
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            // Code only: a doc comment may mention any module.
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (pos, _) in line.match_indices("crate::") {
                let used: String = line[pos + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if let Some(r) = rank(&used)
                    && r > own
                {
                    offenders.push(format!(
                        "{}:{}: {module} (rank {own}) uses {used} (rank {r})",
                        rel.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(checked > 60, "checked {checked} files");
    assert!(
        offenders.is_empty(),
        "a module uses one above it:\n{}",
        offenders.join("\n")
    );
}
