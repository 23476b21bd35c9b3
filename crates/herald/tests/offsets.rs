//! `herald offsets` against the real broker.

mod common;

use std::process::Command;

use common::*;
use herald_proto::partition::partition_for_key;
use serde_json::{json, Value};

fn offsets(prefix: &str, namespaces: &str, json: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args([
        "offsets",
        "--kafka-brokers",
        &brokers(),
        "--topic-prefix",
        prefix,
        "--namespaces",
        namespaces,
    ]);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("running herald offsets")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reports_counts_and_times_per_partition() {
    let s = Server::start(&unique_prefix("offsets"), &[]);
    let mut c = s.connect().await;
    for i in 0..7 {
        publish_ok(&mut c, "chat:a", json!(i)).await;
    }
    for i in 0..3 {
        publish_ok(&mut c, "chat:b", json!(i)).await;
    }
    let out = offsets(&s.prefix, "chat,room", true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let chat = &report[0];
    assert_eq!(chat["namespace"], "chat");
    assert_eq!(chat["topic"], format!("{}chat", s.prefix));
    let parts = chat["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    let total: i64 = parts.iter().map(|p| p["messages"].as_i64().unwrap()).sum();
    assert_eq!(total, 10);
    let pa = partition_for_key(b"chat:a", 4) as usize;
    assert!(parts[pa]["messages"].as_i64().unwrap() >= 7);
    for p in parts {
        if p["messages"].as_i64().unwrap() > 0 {
            assert!(p["first_ms"].as_i64().unwrap() <= p["last_ms"].as_i64().unwrap());
        } else {
            assert!(p["first_ms"].is_null());
        }
    }
    let room = &report[1];
    assert_eq!(room["partitions"].as_array().unwrap().len(), 2);
    assert!(room["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["messages"] == 0));

    // The table form, and a clear error for a namespace without a topic.
    let out = offsets(&s.prefix, "chat", false);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("log_start"));
    let out = offsets(&s.prefix, "nosuch", true);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
