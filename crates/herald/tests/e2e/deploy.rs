//! The container setup (`infra/docker/`) cannot be started here (no Docker
//! on these machines); this checks what can be checked without it: every
//! file the compose file mounts exists and parses (herald's TOML through
//! `herald checkconfig`, HAProxy's through `haproxy -c` with the compose
//! file's environment, the JSON-syntax YAML of Prometheus and Grafana), the
//! services are wired as documented, and the Dockerfile has the shape the
//! docs promise (multi-stage, non-root, a health check, SIGTERM drain).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const DOCKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/docker");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(DOCKER).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The compose file's top-level service names (two-space indented keys
/// under `services:`).
fn services(compose: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            inside = line.trim_end() == "services:";
            continue;
        }
        if inside {
            if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
                if !name.starts_with(' ') && !name.starts_with('#') {
                    out.insert(name.to_owned());
                }
            }
        }
    }
    out
}

/// Host paths of bind mounts: `- ./x:/y[:ro]` or `- ../x:/y[:ro]`.
fn mounts(compose: &str) -> Vec<(String, String)> {
    compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|l| l.starts_with("./") || l.starts_with("../"))
        .filter_map(|l| {
            let mut parts = l.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

#[test]
fn the_compose_file_mounts_files_that_exist_and_parse() {
    let compose = read("compose.yaml");
    let names = services(&compose);
    let want: BTreeSet<String> = [
        "kafka1",
        "kafka2",
        "kafka3",
        "herald1",
        "herald2",
        "herald3",
        "haproxy",
        "prometheus",
        "grafana",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
    let mounts = mounts(&compose);
    assert!(mounts.len() >= 7, "{mounts:?}");
    for (host, _) in &mounts {
        let p = Path::new(DOCKER).join(host);
        assert!(p.is_file(), "{host} is mounted but does not exist");
        let text = std::fs::read_to_string(&p).expect("read");
        if host.ends_with(".json") || host.ends_with("prometheus.yml") || host.contains("grafana/")
        {
            // JSON syntax (valid YAML too), so that it can be checked here.
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{host} does not parse: {e}"));
        }
    }
    // Prometheus reads the alert rules where compose mounts them.
    let prom: serde_json::Value = serde_json::from_str(&read("prometheus.yml")).expect("json");
    let rules = prom["rule_files"][0].as_str().expect("a rule file");
    assert!(
        mounts
            .iter()
            .any(|(h, c)| h.ends_with("alerts.yml") && c == rules),
        "the alert rules are mounted at {rules}"
    );
    let targets = prom["scrape_configs"][0]["static_configs"][0]["targets"].to_string();
    for n in ["herald1:8080", "herald2:8080", "herald3:8080"] {
        assert!(targets.contains(n), "Prometheus scrapes {n}");
    }
}

#[test]
fn the_containers_herald_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["checkconfig", &format!("{DOCKER}/herald.toml")])
        .output()
        .expect("herald checkconfig");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = read("herald.toml");
    assert!(text.contains("replication = 3") && text.contains("min_insync_replicas = 2"));
    assert!(
        !text.contains("hs256_secret"),
        "secrets come from the environment"
    );
}

#[test]
fn haproxy_accepts_its_config_with_the_compose_environment() {
    let Some(bin) = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("haproxy is not installed (infra/dev/test.sh installs Debian's `haproxy`)");
    };
    let out = Command::new(bin)
        .args(["-c", "-f", &format!("{DOCKER}/../haproxy/haproxy.cfg")])
        .env("HERALD_LB_BIND", ":8080")
        .env("HERALD_LB_MAXCONN", "5000")
        .env("HERALD_EDGE_1", "127.0.0.1:18081")
        .env("HERALD_EDGE_2", "127.0.0.1:18082")
        .env("HERALD_EDGE_3", "127.0.0.1:18083")
        .output()
        .expect("haproxy -c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose = read("compose.yaml");
    for v in [
        "HERALD_LB_BIND",
        "HERALD_EDGE_1",
        "HERALD_EDGE_2",
        "HERALD_EDGE_3",
    ] {
        assert!(compose.contains(v), "compose sets {v}");
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let d = read("Dockerfile");
    let froms = d.lines().filter(|l| l.starts_with("FROM ")).count();
    assert_eq!(froms, 2, "multi-stage");
    assert!(d.contains("--locked"), "built from Cargo.lock");
    let user = d
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert!(
        user.trim() != "root" && user.trim() != "0",
        "runs as {user}"
    );
    assert!(d.contains("HEALTHCHECK") && d.contains("/readyz"));
    assert!(d.contains("STOPSIGNAL SIGTERM"));
    // The compose file gives the drain its time.
    let compose = read("compose.yaml");
    assert!(compose.contains("stop_grace_period: 20s"));
}
