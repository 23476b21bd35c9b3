//! The Helm chart (`infra/helm/herald`), rendered with a real Helm
//! (`infra/dev/install-helm.sh` builds it from the Go module proxy; test.sh
//! runs it and passes its path in `HERALD_HELM`): it lints, its herald
//! config passes `herald checkconfig`, the pod's termination grace covers
//! herald's drain, probes and the PDB are there, autoscaling renders only
//! when enabled, and a missing secret is refused.

use std::process::Command;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/helm/herald");
const SECRET: &str = "auth.hs256Secret=0123456789abcdef0123456789abcdef";

fn helm() -> String {
    let path = std::env::var("HERALD_HELM").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/herald/bin/helm-v3.22.0")
    });
    assert!(
        std::path::Path::new(&path).is_file(),
        "helm not found at {path} (infra/dev/install-helm.sh builds it)"
    );
    path
}

fn render(sets: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "t", CHART]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm template");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The documents of a rendered chart whose `kind:` is `kind`.
fn docs<'a>(rendered: &'a str, kind: &str) -> Vec<&'a str> {
    rendered
        .split("\n---")
        .filter(|d| d.lines().any(|l| l == format!("kind: {kind}")))
        .collect()
}

/// The integer after `key: ` in a document.
fn int(doc: &str, key: &str) -> i64 {
    doc.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no integer {key} in\n{doc}"))
}

#[test]
fn the_chart_lints() {
    let out = Command::new(helm())
        .args(["lint", CHART, "--set", SECRET])
        .output()
        .expect("helm lint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_rendered_config_is_a_valid_herald_config() {
    let rendered = render(&[SECRET, "extraConfig=[limits]\npublish_rate = 50"]).expect("renders");
    let cm = docs(&rendered, "ConfigMap");
    assert_eq!(cm.len(), 1);
    let toml: String = cm[0]
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("herald.toml: |"))
        .skip(1)
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(toml.contains("min_insync_replicas = 2"), "{toml}");
    assert!(
        toml.contains("publish_rate = 50"),
        "extraConfig is appended: {toml}"
    );
    let file = std::env::temp_dir().join(format!("herald-helm-{}.toml", std::process::id()));
    std::fs::write(&file, &toml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("checkconfig")
        .arg(&file)
        .output()
        .expect("checkconfig");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{toml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_termination_grace_covers_the_drain() {
    let rendered = render(&[
        SECRET,
        "drain.preStopSleepSecs=7",
        "drain.drainDelayMs=2500",
        "drain.shutdownGraceSecs=20",
        "drain.terminationSlackSecs=5",
    ])
    .expect("renders");
    let dep = docs(&rendered, "Deployment");
    assert_eq!(dep.len(), 1);
    // 7 + ceil(2.5) + 20 + 5.
    assert_eq!(int(dep[0], "terminationGracePeriodSeconds"), 35);
    assert!(
        dep[0].contains(r#"command: ["sleep", "7"]"#),
        "preStop sleeps"
    );
    assert!(dep[0].contains("path: /readyz"), "readiness on /readyz");
    assert!(dep[0].contains("runAsNonRoot: true"));
    assert!(
        dep[0].contains("secretKeyRef"),
        "the secret comes from a Secret"
    );
    let cm = docs(&rendered, "ConfigMap");
    assert!(cm[0].contains("drain_delay_ms = 2500") && cm[0].contains("shutdown_grace_secs = 20"));
    assert_eq!(docs(&rendered, "PodDisruptionBudget").len(), 1);
    assert_eq!(docs(&rendered, "Service").len(), 1);
}

#[test]
fn autoscaling_renders_only_when_enabled() {
    let off = render(&[SECRET]).expect("renders");
    assert!(docs(&off, "HorizontalPodAutoscaler").is_empty());
    assert_eq!(int(docs(&off, "Deployment")[0], "replicas"), 3);
    let on = render(&[SECRET, "autoscaling.enabled=true"]).expect("renders");
    let hpa = docs(&on, "HorizontalPodAutoscaler");
    assert_eq!(hpa.len(), 1);
    assert!(hpa[0].contains("name: herald_edge_connections"));
    assert!(
        !docs(&on, "Deployment")[0].contains("replicas:"),
        "the autoscaler owns the replica count"
    );
}

#[test]
fn a_missing_secret_is_refused_and_an_existing_one_is_used() {
    let err = render(&[]).expect_err("no secret");
    assert!(err.contains("auth.hs256Secret"), "{err}");
    let ok = render(&["auth.existingSecret=herald-keys"]).expect("renders");
    assert!(docs(&ok, "Secret").is_empty(), "no Secret is created");
    assert!(docs(&ok, "Deployment")[0].contains("name: herald-keys"));
}
