//! The admin side of the server API across three real herald nodes on the
//! real broker: the node list from heartbeats in the control topic (a killed
//! node drops out, a stopped one leaves at once), disconnect and unsubscribe
//! applied on every node whichever node was asked, channel listings summed
//! over the nodes, a paused node named as missing, and broadcast with
//! per-channel results and idempotent retries. Presence on the same nodes:
//! members and counts alike on every node, join/leave events in one order
//! everywhere, a killed node's members expiring; personal channels.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use herald_client::{ClientError, Connection, Frame};
use serde_json::{json, Value};

const SECRET: &str = "admin-test-secret-0123456789-abcdefghij";
const API_KEY: &str = "admin-test-api-key-0123456789";

/// The test configuration with `extra` namespaces appended.
pub(crate) fn config_with(prefix: &str, extra: &str) -> PathBuf {
    let path = config_file(
        prefix,
        &format!(
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
{extra}
"#
        ),
    );
    path
}

pub(crate) fn nodes(prefix: &str, n: usize) -> Vec<Server> {
    nodes_with(prefix, n, "")
}

fn nodes_with(prefix: &str, n: usize, extra: &str) -> Vec<Server> {
    let cfg = config_with(prefix, extra);
    let cfg = cfg.to_str().expect("path").to_owned();
    (0..n)
        .map(|_| Server::start(prefix, &["--config", &cfg, "--publish-rate", "0"]))
        .collect()
}

fn token(sub: &str) -> String {
    token_with(sub, json!({}))
}

/// A token for `sub` with `claims` added (say, `info`).
pub(crate) fn token_with(sub: &str, claims: Value) -> String {
    let exp = now_ms() / 1000 + 3600;
    let mut body = json!({ "sub": sub, "exp": exp });
    if let (Some(b), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
        b.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &body,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

async fn user(s: &Server, sub: &str) -> Connection {
    Connection::connect(&format!("{}?token={}", s.url, token(sub)))
        .await
        .expect("connect with a token")
}

pub(crate) async fn api(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
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
pub(crate) fn conforms(schema: &str, v: &Value) {
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
pub(crate) async fn wait_nodes(s: &Server, want: usize) -> Vec<String> {
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
pub(crate) async fn expect_frame(
    c: &mut Connection,
    what: &str,
    pick: impl Fn(&Frame) -> bool,
) -> Frame {
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
pub(crate) async fn expect_close(c: &mut Connection) -> (Option<u16>, Vec<Frame>) {
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
    // Every node, not only the first: a command waits for the nodes the
    // asking node knows, and a node that has not yet heard of one would
    // call two answers complete (seen in CI: 2 subscribers, not 3).
    for n in &ns {
        wait_nodes(n, 3).await;
    }
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
    // On a loaded machine node 0 may have missed three of node 1's
    // heartbeats just then (it is then not live, so not waited for, nor
    // missing): asked again, up to three times.
    let mut attempt = 0;
    let (status, v) = loop {
        attempt += 1;
        wait_nodes(&ns[0], 2).await;
        let _ = Command::new("kill").args(["-STOP", &pid]).status();
        let (status, v) = api(&ns[0], "GET", "/api/channels", None).await;
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        if v["nodes"]["missing"] == json!([paused]) || attempt == 3 {
            break (status, v);
        }
        eprintln!("node 1 was not live when asked ({v}); again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["nodes"]["missing"], json!([paused]), "{v}");
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

const ROOMS: &str = r#"
[[namespace]]
name = "room"
partitions = 4
subscribe = "authenticated"
publish = "authenticated"
history = "authenticated"
presence = "authenticated"
join_leave = true
"#;

/// The join/leave events `c` reads until `n` have come, as `(type, conn)`,
/// leaving out those of the users in `skip`.
async fn events_but(
    c: &mut Connection,
    ch: &str,
    n: usize,
    skip: &[&str],
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let (kind, member) = match expect_frame(c, "join/leave", |f| {
            matches!(f, Frame::Join { channel, .. } | Frame::Leave { channel, .. } if channel == ch)
        })
        .await
        {
            Frame::Join { member, .. } => ("join", member),
            Frame::Leave { member, .. } => ("leave", member),
            _ => unreachable!("picked join or leave"),
        };
        if !member.user.as_deref().is_some_and(|u| skip.contains(&u)) {
            out.push((kind, member.conn));
        }
    }
    out
}

async fn events(c: &mut Connection, ch: &str, n: usize) -> Vec<(&'static str, String)> {
    events_but(c, ch, n, &[]).await
}

/// Members of `ch` by `GET /api/presence` on `s`, as their conns.
async fn api_members(s: &Server, ch: &str) -> Vec<Value> {
    let (status, v) = api(s, "GET", &format!("/api/presence?channel={ch}"), None).await;
    assert_eq!(status, 200, "{v}");
    conforms("PresenceResponse", &v);
    v["members"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_the_same_everywhere_and_expires_with_its_node() {
    let prefix = unique_prefix("presence");
    let mut ns = nodes_with(&prefix, 3, ROOMS);
    wait_nodes(&ns[0], 3).await;
    let ch = "room:lobby";
    // Two watchers on different nodes record every event of the channel.
    let mut w0 = user(&ns[0], "w0").await;
    let mut w2 = user(&ns[2], "w2").await;
    w0.subscribe(ch, None).await.expect("subscribe");
    w2.subscribe(ch, None).await.expect("subscribe");

    // Members come and go on all three nodes.
    let info = json!({ "name": "Alice", "avatar": 7 });
    let mut alice = Connection::connect(&format!(
        "{}?token={}",
        ns[1].url,
        token_with("alice", json!({ "info": info }))
    ))
    .await
    .expect("connect");
    let mut alice2 = user(&ns[2], "alice").await;
    let mut bob = user(&ns[1], "bob").await;
    for c in [&mut alice, &mut alice2, &mut bob] {
        c.subscribe(ch, None).await.expect("subscribe");
    }
    alice2.unsubscribe(ch).await.expect("unsubscribe");
    // Both watchers hear these four in the same order: the order Kafka
    // appended them in (writes from different nodes may land in another
    // order than they were made in; one node's stay in order). Of the
    // watchers' own joins each hears those read after its subscription took
    // effect: timing, left out.
    let mut seen = Vec::new();
    for w in [&mut w0, &mut w2] {
        seen.push(events_but(w, ch, 4, &["w0", "w2"]).await);
    }
    assert_eq!(seen[0], seen[1]);
    let leave = seen[0]
        .iter()
        .position(|(t, _)| *t == "leave")
        .expect("a leave");
    let joined = seen[0]
        .iter()
        .position(|e| *e == ("join", seen[0][leave].1.clone()))
        .expect("its join");
    assert!(joined < leave, "{seen:?}");
    assert_eq!(seen[0].iter().filter(|(t, _)| *t == "join").count(), 3);

    // Every node answers the same members: w0, w2, alice (node 1), bob, once
    // each has read the leave (the watchers' nodes have; node 1 may not yet).
    let deadline = Instant::now() + Duration::from_secs(10);
    let lists = loop {
        let mut lists = Vec::new();
        for s in &ns {
            lists.push(api_members(s, ch).await);
        }
        if lists.iter().all(|l| l.len() == 4) || Instant::now() > deadline {
            break lists;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lists[0].len(), 4, "{:?}", lists[0]);
    assert!(lists.iter().all(|l| *l == lists[0]), "{lists:?}");
    let a = lists[0]
        .iter()
        .find(|m| m["user"] == "alice")
        .expect("alice listed");
    assert_eq!(a["info"], info);
    let node1 = format!("{}/", self_id(&ns[1]).await);
    assert!(a["conn"].as_str().is_some_and(|c| c.starts_with(&node1)));
    // The frames say the same, with the ids echoed.
    let members = bob.presence(ch).await.expect("presence");
    assert_eq!(members.len(), 4);
    assert_eq!(bob.presence_stats(ch).await.expect("stats"), (4, 4));
    alice2.subscribe(ch, None).await.expect("subscribe again");
    let (status, v) = api(
        &ns[0],
        "GET",
        &format!("/api/presence_stats?channel={ch}"),
        None,
    )
    .await;
    conforms("PresenceStatsResponse", &v);
    // Five connections of four users once alice2's join is read.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut v = v;
    while v["clients"] != 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        v = api(
            &ns[0],
            "GET",
            &format!("/api/presence_stats?channel={ch}"),
            None,
        )
        .await
        .1;
    }
    assert_eq!(
        (status, v["clients"].clone(), v["users"].clone()),
        (200, json!(5), json!(4))
    );
    // (A watcher's own join may still arrive late under load: skipped.)
    for w in [&mut w0, &mut w2] {
        assert_eq!(events_but(w, ch, 1, &["w0", "w2"]).await[0].0, "join");
    }

    // Refusals: presence off in `chat`, a bad channel, no channel.
    match bob.presence("chat:x").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "unauthorized"),
        other => panic!("presence on chat: {other:?}"),
    }
    for (q, want) in [("channel=chat:x", 400), ("channel=nope:x", 404), ("", 400)] {
        let (status, v) = api(&ns[0], "GET", &format!("/api/presence?{q}"), None).await;
        assert_eq!(status, want, "{q}: {v}");
    }

    // Node 1 (alice and bob) is killed: both drop out of every answer within
    // four heartbeats, and every watcher hears their leaves.
    let dead = self_id(&ns[1]).await;
    drop((alice, bob));
    let started = Instant::now();
    ns.remove(1).kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = api_members(&ns[0], ch).await;
        if m.iter()
            .all(|m| !m["conn"].as_str().unwrap_or("").starts_with(&dead))
        {
            assert_eq!(m.len(), 3, "{m:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1's members still listed: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hidden = started.elapsed();
    let l0 = events_but(&mut w0, ch, 2, &["w0", "w2"]).await;
    let l2 = events_but(&mut w2, ch, 2, &["w0", "w2"]).await;
    eprintln!(
        "a killed node's members hidden after {hidden:?}, leaves after {:?}",
        started.elapsed()
    );
    assert_eq!(l0, l2);
    assert!(
        l0.iter()
            .all(|(t, c)| *t == "leave" && c.starts_with(&dead)),
        "{l0:?}"
    );
    // heartbeat_ms = 300: three missed and one in flight, plus slack.
    assert!(hidden < Duration::from_secs(4), "hidden after {hidden:?}");
    assert_eq!(api_members(&ns[1], ch).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_frames_validate_against_the_schema() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let prefix = unique_prefix("presence-wire");
    let ns = nodes_with(&prefix, 1, ROOMS);
    let schema_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/");
    let load = |name: &str| {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{schema_path}{name}")).expect("schema"),
        )
        .expect("json");
        jsonschema::validator_for(&v).expect("schema")
    };
    let (client, server) = (load("frames.client.json"), load("frames.server.json"));
    let url = format!(
        "{}?token={}",
        ns[0].url,
        token_with("raw", json!({ "info": { "n": 1 } }))
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let frames = [
        r#"{"type":"subscribe","channel":"room:wire"}"#,
        r#"{"type":"presence","channel":"room:wire","id":"p1"}"#,
        r#"{"type":"presence_stats","channel":"room:wire","id":"p2"}"#,
        r#"{"type":"unsubscribe","channel":"room:wire"}"#,
        r#"{"type":"subscribe","channel":"room:wire"}"#,
    ];
    let other = user(&ns[0], "other").await;
    let mut other = other;
    other.subscribe("room:wire", None).await.expect("subscribe");
    for f in frames {
        let v: Value = serde_json::from_str(f).expect("json");
        assert!(client.is_valid(&v), "client frame {f} should validate");
        ws.send(Message::text(f)).await.expect("send");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut kinds = std::collections::BTreeSet::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(1500), ws.next()).await {
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).expect("json");
        if let Err(e) = server.validate(&v) {
            panic!("server frame {t} does not validate: {e}");
        }
        kinds.insert(v["type"].as_str().unwrap_or_default().to_owned());
    }
    for k in ["presence", "presence_stats", "join"] {
        assert!(kinds.contains(k), "no {k} frame among {kinds:?}");
    }
    // `other` saw raw leave and come back.
    let got = events(&mut other, "room:wire", 4).await;
    let kinds: Vec<&str> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(kinds, ["join", "join", "leave", "join"], "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_channels_reach_every_device_and_resume() {
    let prefix = unique_prefix("personal");
    let ns = nodes_with(
        &prefix,
        2,
        r#"
[[namespace]]
name = "dm"
partitions = 2
subscribe = "owner"
publish = "nobody"
history = "owner"
personal = true
"#,
    );
    let ch = "dm:alice";
    // Device 1 with ?token=, device 2 with an `auth` frame: neither asks.
    let mut phone = user(&ns[0], "alice").await;
    let mut laptop = Connection::connect(&ns[1].url).await.expect("connect");
    laptop.auth(&token("alice")).await.expect("auth");
    let mut positions = Vec::new();
    for c in [&mut phone, &mut laptop] {
        match expect_frame(
            c,
            "subscribed",
            |f| matches!(f, Frame::Subscribed { channel, .. } if channel == ch),
        )
        .await
        {
            Frame::Subscribed { position, .. } => positions.push(position),
            _ => unreachable!(),
        }
    }
    // Bob has his own, not alice's.
    let mut bob = user(&ns[0], "bob").await;
    expect_frame(
        &mut bob,
        "subscribed",
        |f| matches!(f, Frame::Subscribed { channel, .. } if channel == "dm:bob"),
    )
    .await;

    let send = |n: i64| json!({ "channel": ch, "data": { "n": n } });
    let mut seqs = Vec::new();
    for n in 0..3 {
        let (status, v) = api(&ns[1], "POST", "/api/publish", Some(send(n))).await;
        assert_eq!(status, 200, "{v}");
        seqs.push(v["seq"].as_i64().expect("seq"));
    }
    for c in [&mut phone, &mut laptop] {
        let got = read_messages(c, 3, Duration::from_secs(10)).await;
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);
    }
    assert_no_message(&mut bob, Duration::from_millis(300)).await;

    // The phone goes away; one more arrives; it comes back and resumes its
    // personal channel from where it was (its subscription replaces the
    // server's, no `already_subscribed`). Another arrives after the server's
    // subscription started and before the resume: delivered live by the
    // server's subscription ahead of the one missed offline, and again by
    // the resume. The client drops the first copy: all of them, once, in
    // order.
    let last = herald_client::Position {
        seq: seqs[2],
        epoch: positions[0].epoch.clone(),
    };
    phone.close().await.expect("close");
    let mut missed = Vec::new();
    let (_, v) = api(&ns[0], "POST", "/api/publish", Some(send(3))).await;
    missed.push(v["seq"].as_i64().expect("seq"));
    let mut phone = user(&ns[1], "alice").await;
    // The server's subscription answers first, marked `auto`.
    expect_frame(
        &mut phone,
        "subscribed",
        |f| matches!(f, Frame::Subscribed { channel, recovered: false, auto: true, .. } if channel == ch),
    )
    .await;
    let (_, v) = api(&ns[0], "POST", "/api/publish", Some(send(4))).await;
    missed.push(v["seq"].as_i64().expect("seq"));
    // The laptop is on the phone's node: once it has both, so has the
    // phone's socket (the server's subscription delivered the second).
    let got = read_messages(&mut laptop, 2, Duration::from_secs(10)).await;
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), missed);
    assert_no_message(&mut laptop, Duration::from_millis(300)).await;
    let (_, recovered) = phone.subscribe(ch, Some(&last)).await.expect("resume");
    assert!(recovered);
    let got = read_messages(&mut phone, 2, Duration::from_secs(10)).await;
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), missed);
    assert_no_message(&mut phone, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_taken_for_dead_writes_its_members_again() {
    let prefix = unique_prefix("presence-pause");
    let ns = nodes_with(&prefix, 2, ROOMS);
    wait_nodes(&ns[0], 2).await;
    let ch = "room:pause";
    let mut watcher = user(&ns[0], "watcher").await;
    watcher.subscribe(ch, None).await.expect("subscribe");
    let mut carol = user(&ns[1], "carol").await;
    carol.subscribe(ch, None).await.expect("subscribe");
    let joined = events_but(&mut watcher, ch, 1, &["watcher"]).await;
    // Paused for ten heartbeats: node 0 takes it for dead and reaps carol.
    let pid = ns[1].pid().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    let left = events_but(&mut watcher, ch, 1, &["watcher"]).await;
    let members = api_members(&ns[0], ch).await;
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_eq!(left, [("leave", joined[0].1.clone())]);
    assert_eq!(members.len(), 1, "{members:?}");
    // Back, node 1 reads carol's tombstone and writes her again: she is
    // still subscribed.
    let back = events_but(&mut watcher, ch, 1, &["watcher"]).await;
    assert_eq!(back, joined);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api_members(&ns[0], ch).await.len() != 2 {
        assert!(Instant::now() < deadline, "carol never listed again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    carol.ping().await.expect("carol still connected");
}
