//! The Grafana dashboard and the Prometheus alert rules in
//! `infra/observability/` name only metrics herald really exports (a
//! `"herald_..."` name in the source of some crate), the rules pass
//! `promtool check rules` (Debian's prometheus package, installed by
//! test.sh), and every exported metric is documented in docs/metrics.md.
//! No broker needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `herald_...` identifiers in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("herald_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Not the tail of a longer identifier.
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// Every metric name that appears as a string literal in a crate's source.
fn exported() -> BTreeSet<String> {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(format!("{ROOT}/crates"))
        .expect("crates")
        .flatten()
    {
        let src = krate.path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.starts_with("herald_") && names(piece).len() == 1 && !piece.contains(' ') {
                out.insert(piece.to_owned());
            }
        }
    }
    out
}

/// The metric a query name refers to: histograms are queried through their
/// `_bucket`, `_sum` and `_count` series.
fn base<'a>(name: &'a str, known: &BTreeSet<String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(b) = name.strip_suffix(suffix) {
            if known.contains(b) {
                return b;
            }
        }
    }
    name
}

fn exprs_of(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs_of(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs_of(v, out)),
        _ => {}
    }
}

fn check(what: &str, exprs: &[String], known: &BTreeSet<String>) -> usize {
    let mut used = 0;
    for e in exprs {
        for n in names(e) {
            assert!(
                known.contains(base(&n, known)),
                "{what}: `{n}` in `{e}` is not a metric herald exports"
            );
            used += 1;
        }
    }
    used
}

#[test]
fn the_dashboard_queries_only_metrics_herald_exports() {
    let known = exported();
    assert!(known.len() > 40, "found only {} metric names", known.len());
    let text =
        std::fs::read_to_string(format!("{ROOT}/infra/observability/grafana-dashboard.json"))
            .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
    }
    let mut exprs = Vec::new();
    exprs_of(&dash, &mut exprs);
    let used = check("dashboard", &exprs, &known);
    assert!(used >= panels.len(), "every panel names a metric");
}

#[test]
fn the_alert_rules_name_only_metrics_herald_exports() {
    let known = exported();
    let text =
        std::fs::read_to_string(format!("{ROOT}/infra/observability/alerts.yml")).expect("alerts");
    let alerts = text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let exprs: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect();
    assert_eq!(exprs.len(), alerts, "one single-line expr per alert");
    assert!(alerts >= 8);
    check("alerts", &exprs, &known);
}

#[test]
fn the_alert_rules_pass_promtool() {
    let promtool = std::env::var("HERALD_PROMTOOL").unwrap_or_else(|_| "/usr/bin/promtool".into());
    assert!(
        Path::new(&promtool).is_file(),
        "promtool not found at {promtool} (infra/dev/install-promtool.sh installs it)"
    );
    let out = std::process::Command::new(&promtool)
        .args([
            "check",
            "rules",
            &format!("{ROOT}/infra/observability/alerts.yml"),
        ])
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_exported_metric_is_documented() {
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/metrics.md")).expect("metrics doc");
    let documented = names(&doc);
    let missing: Vec<String> = exported()
        .into_iter()
        .filter(|n| !documented.contains(n))
        .collect();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
}
