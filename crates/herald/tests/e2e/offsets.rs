//! `herald offsets` against the real broker.

use crate::common;

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
    let s = Server::start(&unique_prefix("offsets"), &["--cursor-flush-ms", "50"]);
    let mut reader = herald_client::Connection::connect(&format!("{}?client_id=dave", s.url))
        .await
        .unwrap();
    reader
        .subscribe_from("chat:a", herald_client::Start::Live, true)
        .await
        .unwrap();
    let mut c = s.connect().await;
    let mut a_seqs = Vec::new();
    for i in 0..7 {
        a_seqs.push(publish_ok(&mut c, "chat:a", json!(i)).await.1);
    }
    read_messages(&mut reader, 7, std::time::Duration::from_secs(10)).await;
    reader.ack("chat:a", a_seqs[3]).await.unwrap();
    reader.ping().await.unwrap();
    for i in 0..3 {
        publish_ok(&mut c, "chat:b", json!(i)).await;
    }
    // Poll until the cursor commit (every 50 ms) is visible.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let report: Value = loop {
        let out = offsets(&s.prefix, "chat,room", true);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        if !report[0]["cursors"].as_array().unwrap().is_empty() {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "no cursor listed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let cur = &report[0]["cursors"][0];
    // An anonymous client id, kept apart from token subjects.
    assert_eq!(cur["client"], "anonymous:dave");
    assert_eq!(cur["channel"], "chat:a");
    assert_eq!(cur["seq"], a_seqs[3]);
    let pa = partition_for_key(b"chat:a", 4);
    assert_eq!(cur["partition"], pa);
    let end = report[0]["partitions"][pa as usize]["log_end"]
        .as_i64()
        .unwrap();
    assert_eq!(cur["log_end"], end);
    assert_eq!(cur["lag"], end - 1 - a_seqs[3]);
    assert!(cur["lag"].as_i64().unwrap() >= 3);
    assert_eq!(cur["current_epoch"], true);
    assert!(report[1]["cursors"].as_array().unwrap().is_empty());
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
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("log_start"));
    assert!(
        table.contains("cursor_seq") && table.contains("dave"),
        "{table}"
    );
    let out = offsets(&s.prefix, "nosuch", true);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
