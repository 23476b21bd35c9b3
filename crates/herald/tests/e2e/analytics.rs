//! The analytics recipes in `docs/analytics.md`, run against the real broker:
//! the Python (confluent-kafka) script and the Rust example must both count
//! messages per channel per minute exactly, and skip a foreign record.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

type Counts = BTreeMap<(String, String), i64>;

fn parse(stdout: &[u8]) -> Counts {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            (
                (
                    v["minute"].as_str().unwrap().to_owned(),
                    v["channel"].as_str().unwrap().to_owned(),
                ),
                v["messages"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The Python interpreter with confluent-kafka (installed by infra/dev/test.sh).
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_PYTHON") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = PathBuf::from(home).join(".cache/herald/venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run infra/dev/test.sh (it installs confluent-kafka) or set HERALD_PYTHON",
        p.display()
    );
    p
}

/// Builds the Rust example and returns its path.
fn rust_example() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "herald",
            "--example",
            "messages_per_minute",
            "--message-format",
            "json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo build --example");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"]["name"] == "messages_per_minute")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("the example's executable in cargo's output")
}

/// What the recipes must print, computed from the raw records.
fn expected(topic: &str) -> Counts {
    use rdkafka::Message;
    let mut c = Counts::new();
    for m in read_topic(topic) {
        let Ok(env) = herald_proto::Envelope::decode(m.payload().unwrap_or_default(), m.key())
        else {
            continue;
        };
        // Same formatting as the recipes, computed independently.
        let minute = format!(
            "{}00Z",
            &rfc3339_utc(env.ts.div_euclid(60_000) * 60_000)[..17]
        );
        *c.entry((minute, env.channel)).or_default() += 1;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_recipes_count_per_channel_per_minute() {
    let prefix = unique_prefix("analytics");
    let server = Server::start(&prefix, &["--publish-rate", "0"]);
    let mut c = server.connect().await;
    for (ch, n) in [("chat:x", 5), ("chat:y", 3), ("chat:z", 2)] {
        for i in 0..n {
            publish_ok(&mut c, ch, json!({ "i": i })).await;
        }
    }
    let topic = format!("{prefix}chat");
    // A record some other producer wrote: both recipes must skip it.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    p.send(BaseRecord::to(&topic).key("chat:x").payload("not json"))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();

    let want = expected(&topic);
    let per_channel = |c: &Counts| {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        for ((_, ch), n) in c {
            *m.entry(ch.clone()).or_default() += n;
        }
        m
    };
    assert_eq!(
        per_channel(&want),
        BTreeMap::from([
            ("chat:x".to_string(), 5),
            ("chat:y".to_string(), 3),
            ("chat:z".to_string(), 2)
        ])
    );

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/analytics/messages_per_minute.py"
    );
    let out = Command::new(python())
        .args([script, "--brokers", &brokers(), "--topic", &topic])
        .output()
        .expect("running the Python recipe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python: {stderr}");
    assert_eq!(parse(&out.stdout), want, "python output");
    assert!(
        stderr.contains("skipped 1 records: not a herald envelope"),
        "{stderr}"
    );

    let out = Command::new(rust_example())
        .args([brokers(), topic.clone()])
        .output()
        .expect("running the Rust recipe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rust: {stderr}");
    assert_eq!(parse(&out.stdout), want, "rust output");
    assert!(
        stderr.contains("skipped 1 records: not a herald envelope"),
        "{stderr}"
    );
}
