//! docs/ARCHITECTURE.md names code by `file::function` so that it can be read
//! beside the code; this fails when a name it gives no longer exists.
//!
//! Every backtick span of the doc that names Rust code is checked:
//! `crate/src/file.rs::Type::function` (the last name must be defined in that
//! file, or in the file a bare `file.rs` resolves to), `file.rs` alone (the
//! file must exist), and `Type::function` or `crate::module::Item` (the last
//! name must be defined somewhere in the workspace's sources).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, by path relative to the root.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// True when `name` is defined in `text`: an item, or an enum variant.
fn defines(text: &str, name: &str) -> bool {
    let items = [
        "fn ", "struct ", "enum ", "trait ", "type ", "const ", "static ", "mod ",
    ];
    text.lines().any(|line| {
        let l = line.trim_start();
        let l = l
            .strip_prefix("pub(crate) ")
            .or_else(|| l.strip_prefix("pub(super) "))
            .or_else(|| l.strip_prefix("pub "))
            .unwrap_or(l);
        let l = l.strip_prefix("async ").unwrap_or(l);
        let item = items.iter().any(|kw| {
            l.strip_prefix(kw).is_some_and(|rest| {
                rest.starts_with(name)
                    && !rest[name.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            })
        });
        let variant = l.starts_with(name)
            && l[name.len()..].trim_start().starts_with(['{', '(', ','])
            && name.starts_with(|c: char| c.is_uppercase());
        item || variant
    })
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

#[test]
fn every_name_in_the_architecture_doc_exists() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("the doc");
    let mut files = Vec::new();
    for dir in ["crates", "loadtest/src"] {
        sources(&root.join(dir), &mut files);
    }
    let texts: HashMap<PathBuf, String> = files
        .iter()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap_or_default()))
        .collect();
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    // The files a path written in the doc may mean: `herald-hub/src/x.rs`
    // is `crates/herald-hub/src/x.rs`; a bare `x.rs` any file of that name.
    let resolve = |written: &str| -> Vec<PathBuf> {
        files
            .iter()
            .filter(|p| {
                let r = rel(p);
                r == written || r.ends_with(&format!("/{written}"))
            })
            .cloned()
            .collect()
    };

    let mut checked = 0;
    let mut problems = Vec::new();
    for span in doc.split('`').skip(1).step_by(2) {
        let span = span.split_whitespace().next().unwrap_or("");
        let span = span.trim_end_matches("()");
        if let Some((file, path)) = span.split_once(".rs") {
            let file = format!("{file}.rs");
            let candidates = resolve(&file);
            if candidates.is_empty() {
                problems.push(format!("`{span}`: no file {file}"));
                continue;
            }
            checked += 1;
            let Some(name) = path.strip_prefix("::").and_then(|p| p.rsplit("::").next()) else {
                continue;
            };
            if !is_ident(name) {
                continue;
            }
            if !candidates.iter().any(|c| defines(&texts[c], name)) {
                problems.push(format!("`{span}`: {file} defines no `{name}`"));
            }
        } else if span.contains("::") {
            let parts: Vec<&str> = span.split("::").collect();
            if !parts.iter().all(|p| is_ident(p)) {
                continue;
            }
            checked += 1;
            let name = parts[parts.len() - 1];
            if !texts.values().any(|t| defines(t, name)) {
                problems.push(format!("`{span}`: nothing defines `{name}`"));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} names found: is the doc's format changed?"
    );
    assert!(
        problems.is_empty(),
        "docs/ARCHITECTURE.md names code that does not exist:\n{}",
        problems.join("\n")
    );
}
