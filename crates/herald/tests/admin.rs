//! The admin side of the server API across three real herald nodes on the
//! real broker: the node list from heartbeats in the control topic (a killed
//! node drops out, a stopped one leaves at once), disconnect and unsubscribe
//! applied on every node whichever node was asked, channel listings summed
//! over the nodes, a paused node named as missing, and broadcast with
//! per-channel results and idempotent retries.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use herald_client::{ClientError, Connection, Frame};
use serde_json::{json, Value};

const SECRET: &str = "admin-test-secret-0123456789-abcdefghij";
const API_KEY: &str = "admin-test-api-key-0123456789";

fn config(prefix: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("herald-{prefix}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[auth]
hs256_secret = "{SECRET}"
api_key = "{API_KEY}"

[cluster]
heartbeat_ms = 300
command_timeout_ms = 1500

[[namespace]]
name = "chat"
partitions = 4
subscribe = "authenticated"
publish = "authenticated"
history = "authenticated"
"#
        ),
    )
    .expect("config");
    path
}

fn nodes(prefix: &str, n: usize) -> Vec<Server> {
    let cfg = config(prefix);
    let cfg = cfg.to_str().expect("path").to_owned();
    (0..n)
        .map(|_| Server::start(prefix, &["--config", &cfg, "--publish-rate", "0"]))
        .collect()
}

fn token(sub: &str) -> String {
    let exp = now_ms() / 1000 + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

async fn user(s: &Server, sub: &str) -> Connection {
    Connection::connect(&format!("{}?token={}", s.url, token(sub)))
        .await
        .expect("connect with a token")
}

async fn api(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = http(
        &s.http,
        method,
        path,
        &[("X-Api-Key", API_KEY)],
        body.as_deref(),
    )
    .await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

/// Checks `v` against a schema of docs/openapi.json.
fn conforms(schema: &str, v: &Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("openapi.json")).expect("json");
    doc["$ref"] = json!(format!("#/components/schemas/{schema}"));
    let validator = jsonschema::validator_for(&doc).expect("schema");
    let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{schema}: {errors:?} in {v}");
}

async fn node_ids(s: &Server) -> Vec<String> {
    let (status, v) = api(s, "GET", "/api/nodes", None).await;
    assert_eq!(status, 200, "{v}");
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn self_id(s: &Server) -> String {
    let (_, v) = api(s, "GET", "/api/nodes", None).await;
    v["self"].as_str().expect("self").to_owned()
}

/// Waits until `s` lists exactly `want` live nodes.
async fn wait_nodes(s: &Server, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ids = node_ids(s).await;
        if ids.len() == want {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "{} nodes listed, want {want}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads frames until one matches; panics on close or after 10 s.
async fn expect_frame(c: &mut Connection, what: &str, pick: impl Fn(&Frame) -> bool) -> Frame {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_frame_within(left).await {
            Ok(f) if pick(&f) => return f,
            Ok(_) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// Reads until the connection is closed; returns its close code.
async fn expect_close(c: &mut Connection) -> (Option<u16>, Vec<Frame>) {
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_frame_within(left).await {
            Ok(f) => frames.push(f),
            Err(ClientError::Closed(code)) => return (code, frames),
            Err(e) => panic!("waiting for the close: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_list_follows_heartbeats() {
    let prefix = unique_prefix("admin-nodes");
    let mut ns = nodes(&prefix, 3);
    let ids = wait_nodes(&ns[0], 3).await;
    // Every node lists the same three, itself included.
    for s in &ns {
        assert!(ids.contains(&self_id(s).await));
        assert_eq!(wait_nodes(s, 3).await, ids);
    }
    let (_, v) = api(&ns[0], "GET", "/api/nodes", None).await;
    conforms("NodesResponse", &v);
    for n in v["nodes"].as_array().expect("nodes") {
        assert!(n["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")));
        assert!(n["version"].as_str().is_some_and(|v| !v.is_empty()));
        assert!(n["uptime_ms"].as_i64().is_some_and(|u| u >= 0));
    }
    // A connection on node 1 shows in its count, as every node sees it.
    let c = user(&ns[1], "carol").await;
    let one = self_id(&ns[1]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = api(&ns[2], "GET", "/api/nodes", None).await;
        let n = v["nodes"]
            .as_array()
            .and_then(|l| l.iter().find(|n| n["id"] == one.as_str()).cloned())
            .expect("node 1 listed");
        if n["connections"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections never reached 1: {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);

    // Killed without a goodbye: gone after three missed heartbeats.
    let killed = self_id(&ns[2]).await;
    let started = Instant::now();
    ns.pop().expect("node").kill();
    let left = wait_nodes(&ns[0], 2).await;
    assert!(!left.contains(&killed));
    eprintln!(
        "killed node dropped from the list after {:?}",
        started.elapsed()
    );
    // Stopped gracefully: it says goodbye and is gone at once.
    let stopped = self_id(&ns[1]).await;
    ns.pop().expect("node").stop();
    let left = node_ids(&ns[0]).await;
    assert!(
        !left.contains(&stopped),
        "a stopped node is still listed: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_unsubscribe_apply_on_every_node() {
    let prefix = unique_prefix("admin-cmd");
    let ns = nodes(&prefix, 3);
    wait_nodes(&ns[0], 3).await;
    let ch = "chat:admin";
    let mut alice_a = user(&ns[0], "alice").await;
    let mut alice_b = user(&ns[1], "alice").await;
    let mut bob = user(&ns[2], "bob").await;
    for c in [&mut alice_a, &mut alice_b, &mut bob] {
        c.subscribe(ch, None).await.expect("subscribe");
    }
    let (status, v) = api(&ns[2], "GET", "/api/channels?pattern=chat:*", None).await;
    assert_eq!(status, 200, "{v}");
    conforms("ChannelsResponse", &v);
    assert_eq!(v["channels"], json!([{ "channel": ch, "subscribers": 3 }]));
    assert_eq!(v["nodes"]["complete"], true);
    assert_eq!(v["nodes"]["applied"].as_array().map(Vec::len), Some(3));
    let (_, v) = api(&ns[2], "GET", "/api/channels?pattern=room:*", None).await;
    assert_eq!(v["channels"], json!([]));

    // Unsubscribe alice everywhere, asking the node she is not on.
    let (status, v) = api(
        &ns[2],
        "POST",
        "/api/unsubscribe",
        Some(json!({ "user": "alice", "channel": ch })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    conforms("UserCommandResponse", &v);
    assert_eq!(v["connections"], 2);
    assert_eq!(v["nodes"]["missing"], json!([]));
    for c in [&mut alice_a, &mut alice_b] {
        expect_frame(
            c,
            "unsubscribed",
            |f| matches!(f, Frame::Unsubscribed { channel } if channel == ch),
        )
        .await;
    }
    let mut publisher = user(&ns[1], "pub").await;
    let (_, seq) = publish_ok(&mut publisher, ch, json!("after unsubscribe")).await;
    let got = read_messages(&mut bob, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].seq, seq);
    assert_no_message(&mut alice_a, Duration::from_millis(500)).await;
    assert_no_message(&mut alice_b, Duration::from_millis(100)).await;
    let (_, v) = api(&ns[0], "GET", "/api/channels", None).await;
    assert_eq!(v["channels"], json!([{ "channel": ch, "subscribers": 1 }]));

    // Disconnect alice everywhere, telling her not to come back.
    let (status, v) = api(
        &ns[1],
        "POST",
        "/api/disconnect",
        Some(json!({ "user": "alice", "code": 4020, "reason": "banned", "reconnect": false })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    conforms("UserCommandResponse", &v);
    assert_eq!(v["connections"], 2);
    for c in [&mut alice_a, &mut alice_b] {
        let (code, frames) = expect_close(c).await;
        assert_eq!(code, Some(4020));
        assert!(
            frames.iter().any(|f| matches!(f, Frame::Disconnect { code: 4020, reconnect: false, reason } if reason == "banned")),
            "no disconnect frame: {frames:?}"
        );
    }
    // Bob is untouched; a user with no connection is a zero, not an error.
    bob.ping().await.expect("bob still connected");
    let (status, v) = api(
        &ns[0],
        "POST",
        "/api/disconnect",
        Some(json!({ "user": "nobody" })),
    )
    .await;
    assert_eq!((status, v["connections"].as_u64()), (200, Some(0)));

    // Bad input is refused with a reason.
    for (body, why) in [
        (json!({ "user": "alice", "code": 1000 }), "code"),
        (
            json!({ "user": "alice", "reason": "x".repeat(200) }),
            "reason",
        ),
        (json!({ "user": "" }), "user"),
        (json!({ "usr": "alice" }), "usr"),
    ] {
        let (status, v) = api(&ns[0], "POST", "/api/disconnect", Some(body)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["reason"].as_str().is_some_and(|r| r.contains(why)), "{v}");
    }
    let (status, _) = api(
        &ns[0],
        "POST",
        "/api/unsubscribe",
        Some(json!({ "user": "bob", "channel": "nope:x" })),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_is_named() {
    let prefix = unique_prefix("admin-missing");
    let ns = nodes(&prefix, 2);
    wait_nodes(&ns[0], 2).await;
    let paused = self_id(&ns[1]).await;
    let pid = ns[1].pid().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    let (status, v) = api(&ns[0], "GET", "/api/channels", None).await;
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["nodes"]["missing"], json!([paused]));
    assert_eq!(v["nodes"]["complete"], false);
    assert_eq!(v["nodes"]["applied"], json!([self_id(&ns[0]).await]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_appends_to_each_channel_once() {
    let prefix = unique_prefix("admin-bcast");
    let ns = nodes(&prefix, 2);
    let chans = ["chat:b1", "chat:b2", "chat:b3"];
    let mut subs = Vec::new();
    for (i, ch) in chans.iter().enumerate() {
        let mut c = user(&ns[i % 2], &format!("u{i}")).await;
        c.subscribe(ch, None).await.expect("subscribe");
        subs.push(c);
    }
    let id = uuid::Uuid::new_v4();
    let body = json!({ "channels": chans, "id": id, "data": { "text": "to all" } });
    let (status, v) = api(&ns[0], "POST", "/api/broadcast", Some(body.clone())).await;
    assert_eq!(status, 200, "{v}");
    conforms("BroadcastResponse", &v);
    assert_eq!(
        (v["acked"].as_u64(), v["failed"].as_u64()),
        (Some(3), Some(0))
    );
    let seqs: HashMap<String, i64> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().expect("channel").to_owned(),
                r["seq"].as_i64().expect("seq"),
            )
        })
        .collect();
    for (i, ch) in chans.iter().enumerate() {
        let got = read_messages(&mut subs[i], 1, Duration::from_secs(10)).await;
        assert_eq!((got[0].channel.as_str(), got[0].seq), (*ch, seqs[*ch]));
        assert_eq!(got[0].data, json!({ "text": "to all" }));
    }
    // The same broadcast again, on the other node, as a retry (its answer
    // was lost, say): each channel's id is found, nothing new is appended.
    let mut retry = body;
    retry["retry"] = json!(true);
    let (status, v) = api(&ns[1], "POST", "/api/broadcast", Some(retry)).await;
    assert_eq!(status, 200, "{v}");
    for r in v["results"].as_array().expect("results") {
        assert_eq!(r["duplicate"], true, "{r}");
        assert_eq!(
            r["seq"].as_i64(),
            Some(seqs[r["channel"].as_str().expect("channel")])
        );
    }
    for c in &mut subs {
        assert_no_message(c, Duration::from_millis(300)).await;
    }
    // Per-channel failures do not fail the rest.
    let (status, v) = api(
        &ns[0],
        "POST",
        "/api/broadcast",
        Some(json!({ "channels": ["chat:b1", "nope:x"], "data": 1 })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["acked"].as_u64(), v["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["results"][1]["code"], "unknown_namespace");
    let (status, _) = api(
        &ns[0],
        "POST",
        "/api/broadcast",
        Some(json!({ "channels": ["chat:b1", "chat:b1"], "data": 1 })),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = api(
        &ns[0],
        "POST",
        "/api/broadcast",
        Some(json!({ "channels": [], "data": 1 })),
    )
    .await;
    assert_eq!(status, 400);
}
