//! `herald replay` against the real broker: by offset and by time, channel
//! filter, to stdout, to a file, to another topic, live to subscribers with
//! the `replayed` marker, dry run, and bad arguments.

use crate::common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use herald_proto::partition::partition_for_key;
use rdkafka::message::Headers;
use rdkafka::Message;
use serde_json::{json, Value};

/// `herald replay` of partition `part` of the `chat` namespace.
fn replay_chat(prefix: &str, part: &str, args: &[&str]) -> Output {
    let mut all = vec!["--namespace", "chat", "--partition", part];
    all.extend_from_slice(args);
    replay(prefix, &all)
}

fn replay(prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "replay",
            "--kafka-brokers",
            &brokers(),
            "--topic-prefix",
            prefix,
            "--namespaces",
            "chat=4,room=2",
        ])
        .args(args)
        .output()
        .expect("running herald replay")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    stderr
}

fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure, got success");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
}

fn lines(text: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(text)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Two channels of `chat` that share a partition (of 4).
fn neighbours() -> (String, String, i32) {
    let a = "chat:replay-a".to_string();
    let p = partition_for_key(a.as_bytes(), 4);
    let b = (0..)
        .map(|i| format!("chat:replay-b{i}"))
        .find(|c| partition_for_key(c.as_bytes(), 4) == p)
        .expect("some channel shares the partition");
    (a, b, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_offset_and_time_to_stdout_file_and_topic() {
    let prefix = unique_prefix("replay");
    let server = Server::start(&prefix, &["--publish-rate", "0"]);
    let (a, b, p) = neighbours();
    let part = p.to_string();
    let mut c = server.connect().await;
    let mut a_seqs = Vec::new();
    let mut middle = String::new();
    for i in 0..40 {
        let ch = if i % 2 == 0 { &a } else { &b };
        let (_, seq) = publish_ok(&mut c, ch, json!({ "i": i })).await;
        if ch == &a {
            a_seqs.push(seq);
        }
        if i == 19 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            middle = rfc3339_utc(now_ms());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Everything in the partition, to stdout: 40 records, in offset order.
    let out = replay(&prefix, &["--namespace", "chat", "--partition", &part]);
    let stderr = ok(&out);
    let all = lines(&out.stdout);
    assert_eq!(all.len(), 40);
    let offsets: Vec<i64> = all.iter().map(|l| l["offset"].as_i64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] + 1 == w[1]));
    assert_eq!(all[0]["value"]["data"], json!({ "i": 0 }));
    assert_eq!(all[0]["key"], a.as_str());
    assert!(stderr.contains("replay: done: 40 replayed"), "{stderr}");
    // Not a terminal: plain progress lines, no bar.
    assert!(stderr.contains("records scanned"), "{stderr}");

    // An offset range with a channel filter.
    let (from, to) = (offsets[10].to_string(), offsets[20].to_string());
    let out = replay_chat(
        &prefix,
        &part,
        &["--from-offset", &from, "--to-offset", &to, "--channel", &a],
    );
    ok(&out);
    let got: Vec<i64> = lines(&out.stdout)
        .iter()
        .map(|l| l["value"]["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![10, 12, 14, 16, 18]);

    // By time, to a file.
    let file = std::env::temp_dir().join(format!("{prefix}replay.jsonl"));
    let out = replay_chat(
        &prefix,
        &part,
        &["--from-time", &middle, "--output", file.to_str().unwrap()],
    );
    ok(&out);
    assert!(out.stdout.is_empty());
    let got: Vec<i64> = lines(&std::fs::read(&file).unwrap())
        .iter()
        .map(|l| l["value"]["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, (20..40).collect::<Vec<_>>());
    let _ = std::fs::remove_file(&file);

    // Dry run: counts, writes nothing.
    let out = replay_chat(&prefix, &part, &["--channel", &b, "--dry-run"]);
    ok(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["matched"], 20);
    assert_eq!(summary["scanned"], 40);

    // To another topic: the same keys, values and herald headers.
    let target = format!("{prefix}archive");
    let out = replay_chat(&prefix, &part, &["--channel", &a, "--to-topic", &target]);
    ok(&out);
    let copied = read_topic(&target);
    assert_eq!(copied.len(), 20);
    let source: Vec<&Value> = all.iter().filter(|l| l["key"] == a.as_str()).collect();
    for (m, orig) in copied.iter().zip(&source) {
        assert_eq!(m.key(), Some(a.as_bytes()));
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(&v, &orig["value"]);
        let headers = m.headers().expect("headers");
        let id = (0..headers.count())
            .map(|i| headers.get(i))
            .find(|h| h.key == "herald-id")
            .and_then(|h| h.value)
            .expect("herald-id header");
        assert_eq!(std::str::from_utf8(id).unwrap(), v["id"].as_str().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_live_reaches_subscribers_marked_replayed() {
    let prefix = unique_prefix("replay-live");
    let server = Server::start(&prefix, &["--publish-rate", "0"]);
    let (a, _, p) = neighbours();
    let mut c = server.connect().await;
    let mut originals = Vec::new();
    for i in 0..5 {
        originals.push(publish_ok(&mut c, &a, json!({ "i": i })).await);
    }
    let mut sub = server.connect().await;
    sub.subscribe(&a, None).await.unwrap();
    let out = replay(
        &prefix,
        &[
            "--namespace",
            "chat",
            "--partition",
            &p.to_string(),
            "--channel",
            &a,
            "--live",
            "--rate",
            "50",
        ],
    );
    ok(&out);
    let got = read_messages(&mut sub, 5, Duration::from_secs(10)).await;
    for (m, (id, seq)) in got.iter().zip(&originals) {
        let r = m.replayed.as_ref().expect("marked replayed");
        assert_eq!((r.id, r.offset, r.partition), (*id, *seq, p));
        assert_ne!(m.id, *id, "a replayed copy has its own id");
        assert!(m.seq > *seq);
    }
    assert_eq!(
        got.iter()
            .map(|m| m.data["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    // The replay did not loop over its own output.
    assert_no_message(&mut sub, Duration::from_millis(500)).await;
    // A replayed message is an ordinary message for history too.
    let page = sub
        .history(
            &a,
            &herald_client::HistoryQuery {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(page.messages[0].replayed.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_bad_arguments() {
    let prefix = unique_prefix("replay-bad");
    let server = Server::start(&prefix, &[]);
    let mut c = server.connect().await;
    let (a, _, p) = neighbours();
    let (_, seq) = publish_ok(&mut c, &a, json!(1)).await;
    let part = p.to_string();
    let chat = ["--namespace", "chat"];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = chat.to_vec();
        args.extend_from_slice(extra);
        replay(&prefix, &args)
    };
    fails_with(&run(&["--partition", "4"]), "partition 4 is out of range");
    fails_with(&run(&["--partition", "-1"]), "out of range");
    fails_with(
        &run(&["--partition", &part, "--from-offset", "-3"]),
        "below the log start",
    );
    let past = (seq + 10).to_string();
    fails_with(
        &run(&["--partition", &part, "--from-offset", &past]),
        "past the log end",
    );
    let (one, zero) = ((seq + 1).to_string(), seq.to_string());
    fails_with(
        &run(&[
            "--partition",
            &part,
            "--from-offset",
            &one,
            "--to-offset",
            &zero,
        ]),
        "reversed",
    );
    fails_with(
        &run(&["--partition", &part, "--from-time", "yesterday"]),
        "not an RFC 3339 time",
    );
    fails_with(
        &run(&[
            "--partition",
            &part,
            "--from-offset",
            "0",
            "--from-time",
            "2026-01-01T00:00:00Z",
        ]),
        "cannot be used with",
    );
    let other = (p + 1) % 4;
    fails_with(
        &run(&["--partition", &other.to_string(), "--channel", &a]),
        "lives in partition",
    );
    fails_with(
        &replay(&prefix, &["--namespace", "nope", "--partition", "0"]),
        "namespace `nope` is not configured",
    );
}
