//! Outbound webhooks, with two real herald nodes on the real broker and a
//! real HTTP receiver in the test that answers, fails (500), stalls (past
//! the endpoint's timeout) and recovers, while one node is killed (SIGKILL)
//! holding subscribers and deliveries. Every event in the events topic, and
//! every message of the chosen namespace, reaches the receiver at least once
//! with a valid signature; duplicates carry the same id and body; each
//! channel is occupied and vacated once per occupancy (the killed node's
//! channels vacated by the survivor); a second endpoint that always fails
//! dead-letters every event it wants after its last attempt.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use rdkafka::Message;
use serde_json::{json, Value};

const SECRET: &str = "webhook-test-secret";
const OK: u8 = 0;
const FAIL: u8 = 1;
const STALL: u8 = 2;

/// The receiving application.
#[derive(Default)]
struct Receiver {
    mode: AtomicU8,
    /// Accepted (answered 200) deliveries of `/app`: (webhook-id, body).
    accepted: Mutex<Vec<(String, String)>>,
    /// Requests of any kind, and those whose signature or timestamp was wrong.
    requests: Mutex<(u64, u64)>,
    refused: Mutex<u64>,
}

impl Receiver {
    fn handle(&self, req: HttpRequest) -> (u16, String, Duration) {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (id, ts, sig) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let signed = [id.as_bytes(), b".", ts.as_bytes(), b".", &req.body].concat();
        let good_sig = sig
            .strip_prefix("v1,")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .is_some_and(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok());
        let fresh = ts
            .parse::<i64>()
            .is_ok_and(|t| (t - now_ms() / 1000).abs() < 300);
        {
            let mut r = self.requests.lock().expect("requests");
            r.0 += 1;
            if !(good_sig && fresh) {
                r.1 += 1;
            }
        }
        if req.path == "/gone" {
            *self.refused.lock().expect("refused") += 1;
            return (500, "{}".into(), Duration::ZERO);
        }
        match self.mode.load(Ordering::SeqCst) {
            FAIL => (500, "{}".into(), Duration::ZERO),
            // Past the endpoint's timeout (300 ms): herald gives up on it.
            STALL => (200, "{}".into(), Duration::from_secs(2)),
            _ => {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                self.accepted.lock().expect("accepted").push((id, body));
                (200, "{}".into(), Duration::ZERO)
            }
        }
    }
}

fn config(prefix: &str, url: &str) -> String {
    let path = config_file(
        prefix,
        &format!(
            r#"
[cluster]
heartbeat_ms = 300

{OPEN_CHAT}

[[webhooks.endpoints]]
name = "app"
url = "{url}/app"
secret = "{SECRET}"
events = ["connect", "disconnect", "join", "leave", "occupied", "vacated", "message"]
namespaces = ["chat"]
max_in_flight = 4
attempts = 100
backoff_ms = 50
max_backoff_ms = 400
timeout_ms = 300

[[webhooks.endpoints]]
name = "gone"
url = "{url}/gone"
secret = "{SECRET}"
events = ["connect"]
attempts = 2
backoff_ms = 10
max_backoff_ms = 10
timeout_ms = 300
"#
        ),
    );
    path.to_str().expect("path").to_owned()
}

/// In each of `rooms` channels: a subscriber on `a` then one on `b`, a
/// message, both unsubscribe, both close.
async fn round(a: &Server, b: &Server, tag: &str, rooms: usize) -> Vec<String> {
    let mut channels = Vec::new();
    for i in 0..rooms {
        let channel = format!("chat:{tag}-{i}");
        let mut ca = a.connect().await;
        let mut cb = b.connect().await;
        ca.subscribe(&channel, None).await.expect("subscribe on a");
        cb.subscribe(&channel, None).await.expect("subscribe on b");
        publish_ok(&mut ca, &channel, json!({ "n": i })).await;
        ca.unsubscribe(&channel).await.expect("unsubscribe a");
        cb.unsubscribe(&channel).await.expect("unsubscribe b");
        ca.close().await.expect("close a");
        cb.close().await.expect("close b");
        channels.push(channel);
    }
    channels
}

/// The events topic's events: id → (type, channel).
fn events(prefix: &str) -> Vec<(String, String, String)> {
    read_topic(&format!("{prefix}webhooks.events"))
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_slice(m.payload()?).ok()?;
            Some((
                v["id"].as_str()?.to_owned(),
                v["type"].as_str()?.to_owned(),
                v["channel"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_deliver_every_event_through_failures_stalls_and_a_node_kill() {
    let prefix = unique_prefix("webhooks");
    let rx = Arc::new(Receiver::default());
    let handler = rx.clone();
    let url = serve_http(Arc::new(move |req| handler.handle(req))).await;
    let cfg = config(&prefix, &url);
    let a = Server::start(&prefix, &["--config", &cfg]);
    let b = Server::start(&prefix, &["--config", &cfg]);

    let mut channels = round(&a, &b, "ok", 3).await;
    rx.mode.store(FAIL, Ordering::SeqCst);
    channels.extend(round(&a, &b, "fail", 3).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    rx.mode.store(STALL, Ordering::SeqCst);
    channels.extend(round(&a, &b, "stall", 3).await);
    // Node a dies holding subscribers (their channels are then vacated by
    // b, the reaper) and whatever deliveries its group members had.
    let mut held = Vec::new();
    for i in 0..3 {
        let channel = format!("chat:held-{i}");
        let mut c = a.connect().await;
        c.subscribe(&channel, None).await.expect("subscribe");
        publish_ok(&mut c, &channel, json!({ "held": i })).await;
        held.push(c);
        channels.push(channel);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    rx.mode.store(OK, Ordering::SeqCst);
    let mut c = b.connect().await;
    for i in 0..3 {
        let channel = format!("chat:after-{i}");
        c.subscribe(&channel, None).await.expect("subscribe");
        publish_ok(&mut c, &channel, json!({ "after": i })).await;
        c.unsubscribe(&channel).await.expect("unsubscribe");
        channels.push(channel);
    }
    c.close().await.expect("close");

    // Every channel's occupancy ends with a vacated event (the held ones
    // once node a is reaped: three missed heartbeats).
    let deadline = Instant::now() + Duration::from_secs(30);
    let produced = loop {
        let ev = events(&prefix);
        let vacated: HashSet<&str> = ev
            .iter()
            .filter(|e| e.1 == "vacated")
            .map(|e| e.2.as_str())
            .collect();
        if channels.iter().all(|c| vacated.contains(c.as_str())) {
            break ev;
        }
        assert!(
            Instant::now() < deadline,
            "not every channel was vacated: {vacated:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for channel in &channels {
        for kind in ["occupied", "vacated"] {
            let ids: HashSet<&str> = produced
                .iter()
                .filter(|e| e.1 == kind && e.2 == *channel)
                .map(|e| e.0.as_str())
                .collect();
            assert_eq!(ids.len(), 1, "{channel}: {kind} events {ids:?}");
        }
    }
    let mut expected: HashSet<String> = produced.iter().map(|e| e.0.clone()).collect();
    let connects: HashSet<String> = produced
        .iter()
        .filter(|e| e.1 == "connect")
        .map(|e| e.0.clone())
        .collect();
    let mut messages = 0;
    for m in read_topic(&format!("{prefix}chat")) {
        let v: Value = serde_json::from_slice(m.payload().expect("payload")).expect("json");
        expected.insert(format!("message-{}", v["id"].as_str().expect("id")));
        messages += 1;
    }
    let kinds: HashSet<&str> = produced.iter().map(|e| e.1.as_str()).collect();
    for k in [
        "connect",
        "disconnect",
        "join",
        "leave",
        "occupied",
        "vacated",
    ] {
        assert!(kinds.contains(k), "no {k} event was produced");
    }

    // Every one of them reaches the receiver.
    let deadline = Instant::now() + Duration::from_secs(90);
    let accepted = loop {
        let accepted = rx.accepted.lock().expect("accepted").clone();
        let got: HashSet<&String> = accepted.iter().map(|(id, _)| id).collect();
        let missing: Vec<&String> = expected.iter().filter(|id| !got.contains(id)).collect();
        if missing.is_empty() {
            break accepted;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never delivered, e.g. {:?}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut bodies: HashMap<&str, &str> = HashMap::new();
    let mut duplicates = 0;
    for (id, body) in &accepted {
        if let Some(first) = bodies.insert(id, body) {
            duplicates += 1;
            assert_eq!(first, body, "a duplicate of {id} differs");
        }
    }
    let unexpected: Vec<&&str> = bodies
        .keys()
        .filter(|id| !expected.contains(**id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "delivered but not produced: {unexpected:?}"
    );
    let (requests, bad) = *rx.requests.lock().expect("requests");
    assert_eq!(
        bad, 0,
        "{bad} of {requests} requests had a wrong signature or timestamp"
    );

    // The endpoint that always fails: every connect event dead-lettered.
    let dead_topic = format!("{prefix}webhooks.dead");
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let dead: Vec<Value> = read_topic(&dead_topic)
            .iter()
            .filter_map(|m| serde_json::from_slice(m.payload()?).ok())
            .collect();
        let ids: HashSet<String> = dead
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_owned))
            .collect();
        if ids == connects {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "dead letters {} of {} connect events",
            ids.len(),
            connects.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for d in &dead {
        assert_eq!(d["endpoint"], "gone");
        assert_eq!(d["attempts"], 2);
        assert_eq!(d["event"]["type"], "connect");
        assert!(
            d["error"].as_str().is_some_and(|e| e.contains("500")),
            "{d}"
        );
    }
    let m = http_get(&b.http, "/metrics").await.1;
    assert!(
        m.contains("herald_webhook_dead_letters_total{endpoint=\"gone\"}"),
        "no dead-letter metric"
    );
    assert!(m.contains("herald_webhook_deliveries_total{endpoint=\"app\",result=\"ok\"}"));
    println!(
        "webhooks: produced {} events ({} node events, {messages} messages), delivered {} \
         (distinct {}), duplicates {duplicates}, requests {requests} (bad signatures {bad}), \
         dead letters {} ({} distinct) after {} refusals",
        expected.len(),
        produced.len(),
        accepted.len(),
        bodies.len(),
        dead.len(),
        connects.len(),
        *rx.refused.lock().expect("refused"),
    );
    b.stop();
}
