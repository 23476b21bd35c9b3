//! The edge's behaviours in-process, on the in-memory log: publish, ack,
//! nack and dedup through both entry points, subscribe and the resume
//! hand-off, history, limits, auth refusals and the drain. Fast, and no
//! broker; the same promises are checked against Kafka in crates/herald/tests.

mod common;

use std::time::Duration;

use common::*;
use herald_edge::EdgeConfig;
use herald_log::LogWrite;
use herald_proto::Envelope;
use serde_json::{json, Value};
use uuid::Uuid;

fn seqs(frames: &[Value]) -> Vec<i64> {
    frames.iter().filter_map(|f| f["seq"].as_i64()).collect()
}

#[tokio::test]
async fn a_publish_is_acked_with_its_offset_and_stored_once_as_an_envelope() {
    let node = Node::start().await;
    let mut c = node.connect().await;
    let id = Uuid::new_v4();
    let ack = c.publish("chat:a", id, json!({"text": "hi"})).await;
    assert_eq!(ack["type"], "publish_ack", "{ack}");
    assert_eq!(ack["seq"], 0);
    assert_ne!(ack["duplicate"], true);
    let stored = node.stored(CHAT, "chat:a");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert_eq!(stored[0].data.get(), r#"{"text":"hi"}"#);
    let publisher = stored[0].publisher.as_deref().unwrap_or_default();
    assert!(publisher.starts_with("conn:"), "{publisher}");
}

#[tokio::test]
async fn the_same_id_twice_is_acked_twice_and_stored_once() {
    let node = Node::start().await;
    let mut c = node.connect().await;
    let id = Uuid::new_v4();
    let first = c.publish("chat:a", id, json!(1)).await;
    let again = c.publish("chat:a", id, json!(1)).await;
    assert_eq!(again["type"], "publish_ack", "{again}");
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["duplicate"], true);
    // And from the HTTP API: the same dedup window.
    let (status, body) = node
        .api_publish(json!({"channel": "chat:a", "id": id, "data": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], first["seq"]);
    assert_eq!(body["duplicate"], true);
    assert_eq!(node.stored(CHAT, "chat:a").len(), 1);
}

#[tokio::test]
async fn an_http_publish_is_stored_with_publisher_api() {
    let node = Node::start().await;
    let (status, body) = node
        .api_publish(json!({"channel": "chat:b", "data": {"x": 1}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], false);
    let stored = node.stored(CHAT, "chat:b");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].publisher.as_deref(), Some("api"));
}

#[tokio::test]
async fn a_retry_finds_the_record_an_earlier_attempt_stored() {
    let node = Node::start().await;
    // Appended by "another node" that died before answering.
    let id = Uuid::new_v4();
    let env = Envelope::new(id, "chat:r", Some("conn:9".into()), raw("7"));
    let seq = node.log.append(CHAT, 0, &env).expect("append").await;
    let seq = seq.expect("stored");
    let mut c = node.connect().await;
    c.send(json!({"type": "publish", "channel": "chat:r", "id": id, "data": 7, "retry": true}))
        .await;
    let ack = c.next_of_publish(id).await;
    assert_eq!(ack["type"], "publish_ack", "{ack}");
    assert_eq!(ack["seq"], seq);
    assert_eq!(ack["duplicate"], true);
    assert_eq!(node.stored(CHAT, "chat:r").len(), 1, "not appended again");
    // A retry of an id nobody stored appends it.
    let fresh = Uuid::new_v4();
    c.send(json!({"type": "publish", "channel": "chat:r", "id": fresh, "data": 8, "retry": true}))
        .await;
    let ack = c.next_of_publish(fresh).await;
    assert_ne!(ack["duplicate"], true, "{ack}");
    assert_eq!(node.stored(CHAT, "chat:r").len(), 2);
}

#[tokio::test]
async fn a_late_answer_is_nacked_and_a_resend_gets_the_seq_it_ends_up_with() {
    let node = Node::start().await;
    let mut c = node.connect().await;
    node.log.hold_confirms(true);
    let id = Uuid::new_v4();
    let nack = c.publish("chat:late", id, json!(1)).await;
    assert_eq!(nack["type"], "publish_nack", "{nack}");
    assert_eq!(nack["code"], "unavailable");
    assert!(nack["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("may still be stored"));
    // Kafka answers late; the client re-sends the same id.
    node.log.hold_confirms(false);
    let ack = c.publish("chat:late", id, json!(1)).await;
    assert_eq!(ack["type"], "publish_ack", "{ack}");
    assert_eq!(ack["duplicate"], true);
    assert_eq!(ack["seq"], 0);
    assert_eq!(node.stored(CHAT, "chat:late").len(), 1);
}

#[tokio::test]
async fn a_failing_log_nacks_unavailable_and_nothing_is_stored() {
    let node = Node::start().await;
    let mut c = node.connect().await;
    node.log.fail_appends(Some("broker down"));
    let id = Uuid::new_v4();
    let nack = c.publish("chat:f", id, json!(1)).await;
    assert_eq!(nack["type"], "publish_nack", "{nack}");
    assert_eq!(nack["code"], "unavailable");
    let (status, body) = node
        .api_publish(json!({"channel": "chat:f", "data": 1}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable");
    // The failure is not remembered: the same id appends once the log is back.
    node.log.fail_appends(None);
    let ack = c.publish("chat:f", id, json!(1)).await;
    assert_eq!(ack["type"], "publish_ack", "{ack}");
    assert_ne!(ack["duplicate"], true);
    assert_eq!(node.stored(CHAT, "chat:f").len(), 1);
}

#[tokio::test]
async fn an_http_client_that_hangs_up_does_not_abandon_its_publish() {
    let node = Node::start().await;
    let (status, _) = node
        .api_publish(json!({"channel": "chat:h", "data": 0}))
        .await;
    assert_eq!(status, 200);
    // The retry scan is slow: the first request's client gives up during it.
    node.log.slow_reads(Duration::from_millis(300));
    let id = Uuid::new_v4();
    let body = json!({"channel": "chat:h", "id": id, "data": 1, "retry": true});
    let first = tokio::time::timeout(Duration::from_millis(100), node.api_publish(body.clone()));
    assert!(first.await.is_err(), "the first request is cut short");
    // A second attempt joins the first, which must still be running.
    let (status, answer) = node
        .api_publish(json!({"channel": "chat:h", "id": id, "data": 1}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true);
    assert_eq!(node.stored(CHAT, "chat:h").len(), 2);
}

#[tokio::test]
async fn refusals_before_the_pipeline_are_nacks_with_their_codes() {
    let (mut edge, log) = config();
    edge.limits.max_message_bytes = 16;
    edge.limits.publish_rate = 1;
    edge.limits.publish_burst = 1;
    let node = Node::start_with(edge, log).await;
    let mut c = node.connect().await;
    let big = c
        .publish("chat:x", Uuid::new_v4(), json!("0123456789abcdefgh"))
        .await;
    assert_eq!(big["code"], "too_large", "{big}");
    let ok = c.publish("chat:x", Uuid::new_v4(), json!(1)).await;
    assert_eq!(ok["type"], "publish_ack", "{ok}");
    let limited = c.publish("chat:x", Uuid::new_v4(), json!(2)).await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(limited["retry_after_ms"].as_u64().is_some());
    let anon = c.publish("user:alice", Uuid::new_v4(), json!(1)).await;
    assert_eq!(anon["code"], "unauthorized", "{anon}");
    let bad = c.publish("nope", Uuid::new_v4(), json!(1)).await;
    assert_eq!(bad["code"], "bad_channel", "{bad}");
    let unknown = c.publish("other:x", Uuid::new_v4(), json!(1)).await;
    assert_eq!(unknown["code"], "unknown_namespace", "{unknown}");
    assert_eq!(node.stored(CHAT, "chat:x").len(), 1);
}

#[tokio::test]
async fn tokens_decide_who_may_publish_and_a_bad_one_is_refused_at_the_upgrade() {
    let node = Node::start().await;
    let bad = tokio_tungstenite::connect_async(node.url("?token=not.a.token")).await;
    match bad {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let mut alice = node
        .connect_with(&format!("?token={}", token("alice", json!({}))))
        .await;
    let ack = alice
        .publish("user:alice", Uuid::new_v4(), json!("mine"))
        .await;
    assert_eq!(ack["type"], "publish_ack", "{ack}");
    let stored = node.stored(USER, "user:alice");
    assert_eq!(stored[0].publisher.as_deref(), Some("alice"));
    // `auth` over the socket, then a refresh for someone else is refused.
    let mut c = node.connect().await;
    c.send(json!({"type": "auth", "token": token("bob", json!({}))}))
        .await;
    assert_eq!(c.next_of("authenticated").await["sub"], "bob");
    c.send(json!({"type": "refresh", "token": token("mallory", json!({}))}))
        .await;
    assert_eq!(c.next_of("error").await["code"], "bad_token");
}

#[tokio::test]
async fn a_resume_hands_off_from_the_log_to_live_delivery_without_gap_or_repeat() {
    let node = Node::start().await;
    let mut publisher = node.connect().await;
    for i in 0..5 {
        publisher.publish("chat:r2", Uuid::new_v4(), json!(i)).await;
    }
    let mut sub = node.connect().await;
    let epoch = {
        let mut probe = node.connect().await;
        probe.subscribe("chat:r2", None).await["position"]["epoch"].clone()
    };
    let subscribed = sub
        .subscribe("chat:r2", Some(json!({"seq": 1, "epoch": epoch})))
        .await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let writer = tokio::spawn(async move {
        for i in 5..8 {
            publisher.publish("chat:r2", Uuid::new_v4(), json!(i)).await;
        }
        publisher
    });
    let mut got = Vec::new();
    while got.len() < 6 {
        got.push(sub.next_of("message").await);
    }
    let _ = writer.await;
    assert_eq!(seqs(&got), vec![2, 3, 4, 5, 6, 7]);
    assert!(
        sub.next_within(Duration::from_millis(200)).await.is_none(),
        "nothing twice"
    );
}

#[tokio::test]
async fn history_pages_come_from_the_log() {
    let node = Node::start().await;
    let mut c = node.connect().await;
    for i in 0..4 {
        c.publish("chat:h2", Uuid::new_v4(), json!(i)).await;
    }
    c.send(json!({"type": "history", "channel": "chat:h2", "id": "q", "since_seq": 0, "limit": 2}))
        .await;
    let page = c.next_of("history").await;
    assert_eq!(page["id"], "q");
    let messages = page["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(seqs(&messages), vec![1, 2]);
    assert_eq!(page["done"], false);
}

#[tokio::test]
async fn the_subscription_limit_is_enforced() {
    let (mut edge, log) = config();
    edge.limits.max_subscriptions = 2;
    let node = Node::start_with(edge, log).await;
    let mut c = node.connect().await;
    c.subscribe("chat:1", None).await;
    c.subscribe("chat:2", None).await;
    c.send(json!({"type": "subscribe", "channel": "chat:3"}))
        .await;
    let err = c.next_of("error").await;
    assert_eq!(err["code"], "too_many_subscriptions", "{err}");
    c.send(json!({"type": "subscribe", "channel": "chat:1"}))
        .await;
    assert_eq!(c.next_of("error").await["code"], "already_subscribed");
}

#[tokio::test]
async fn a_drain_answers_publishes_in_flight_then_closes_with_1001() {
    let mut node = Node::start_with(
        EdgeConfig { ..config().0 },
        herald_log::LogConfig {
            publish_timeout: Duration::from_secs(5),
            ..config().1
        },
    )
    .await;
    let mut c = node.connect().await;
    node.log.hold_confirms(true);
    let id = Uuid::new_v4();
    c.send(json!({"type": "publish", "channel": "chat:d", "id": id, "data": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.shutdown();
    let reconnect = c.next_of("reconnect").await;
    assert!(reconnect["after_ms"].as_u64().is_some());
    // Kafka answers during the drain: the client hears of it before the close.
    node.log.hold_confirms(false);
    let ack = c.next_of_publish(id).await;
    assert_eq!(ack["type"], "publish_ack", "{ack}");
    assert_eq!(c.close_code().await, Some(1001));
    node.finished().await;
    assert_eq!(node.stored(CHAT, "chat:d").len(), 1);
}

#[tokio::test]
async fn publishes_beyond_the_in_flight_limit_wait_and_are_all_answered() {
    // The answers free the permits: a connection waiting for a permit must
    // keep hearing them, or it waits forever.
    let (mut edge, log) = config();
    edge.limits.max_inflight_publishes = 2;
    let node = Node::start_with(edge, log).await;
    let mut c = node.connect().await;
    node.log.hold_confirms(true);
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        c.send(json!({"type": "publish", "channel": "chat:w", "id": id, "data": 1}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.log.hold_confirms(false);
    // Answers match publishes by id, in whatever order Kafka confirms them.
    let mut acked = std::collections::HashSet::new();
    while acked.len() < ids.len() {
        let f = c.next().await;
        assert_ne!(f["type"], "publish_nack", "{f}");
        if f["type"] == "publish_ack" {
            acked.insert(f["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(ids.iter().all(|id| acked.contains(&id.to_string())));
    assert_eq!(node.stored(CHAT, "chat:w").len(), 6);
}

#[tokio::test]
async fn a_client_that_leaves_mid_publish_still_has_it_stored_once() {
    // Its publish settles after it left: a resend (from a new connection)
    // is a duplicate of it, not a second record.
    let node = Node::start().await;
    let mut c = node.connect().await;
    node.log.hold_confirms(true);
    let id = Uuid::new_v4();
    c.send(json!({"type": "publish", "channel": "chat:l", "id": id, "data": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.log.hold_confirms(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = node.connect().await;
    let ack = again.publish("chat:l", id, json!(1)).await;
    assert_eq!(ack["type"], "publish_ack", "{ack}");
    assert_eq!(ack["duplicate"], true, "{ack}");
    assert_eq!(node.stored(CHAT, "chat:l").len(), 1);
}

#[tokio::test]
async fn a_confirmation_without_an_offset_is_acked_at_the_records_real_seq() {
    // librdkafka confirms an idempotent retry the broker already had (its
    // first response lost) as stored at offset -1001: the client must get
    // the record's seq, found in the partition, not -1001.
    let node = Node::start().await;
    let mut c = node.connect().await;
    let first = c.publish("chat:o", Uuid::new_v4(), json!(1)).await;
    assert_eq!(first["seq"], 0, "{first}");
    node.log.confirm_without_offsets(true);
    let id = Uuid::new_v4();
    let ack = c.publish("chat:o", id, json!(2)).await;
    assert_eq!(ack["type"], "publish_ack", "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    // And the dedup window remembers the real seq.
    node.log.confirm_without_offsets(false);
    let again = c.publish("chat:o", id, json!(2)).await;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(node.stored(CHAT, "chat:o").len(), 2);
}

fn raw(s: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(s.into()).expect("JSON")
}

#[tokio::test]
async fn a_durable_ack_is_stored_as_a_cursor_and_a_new_connection_resumes_after_it() {
    let (mut edge, log) = config();
    edge.cursor_flush_interval = Duration::from_millis(50);
    let node = Node::start_with(edge, log).await;
    let mut c = node.connect_with("?client_id=device-1").await;
    c.send(json!({"type": "subscribe", "channel": "chat:c", "durable": true}))
        .await;
    c.next_of("subscribed").await;
    let mut p = node.connect().await;
    for i in 0..4 {
        p.publish("chat:c", Uuid::new_v4(), json!(i)).await;
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(c.next_of("message").await);
    }
    c.send(json!({"type": "ack", "channel": "chat:c", "seq": 1}))
        .await;
    // The flusher writes it to the cursor topic.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (0..8).all(|p| node.log.records("herald.cursors", p).is_empty()) {
        assert!(tokio::time::Instant::now() < deadline, "no cursor written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    let mut again = node.connect_with("?client_id=device-1").await;
    again
        .send(json!({"type": "subscribe", "channel": "chat:c", "since": "cursor"}))
        .await;
    assert_eq!(again.next_of("subscribed").await["recovered"], true);
    let mut rest = Vec::new();
    while rest.len() < 2 {
        rest.push(again.next_of("message").await);
    }
    assert_eq!(seqs(&rest), vec![2, 3]);
}

#[tokio::test]
async fn an_ack_beyond_what_was_delivered_is_refused() {
    let node = Node::start().await;
    let mut c = node.connect_with("?client_id=dev-2").await;
    c.send(json!({"type": "subscribe", "channel": "chat:ack", "durable": true}))
        .await;
    c.next_of("subscribed").await;
    let mut p = node.connect().await;
    for i in 0..2 {
        p.publish("chat:ack", Uuid::new_v4(), json!(i)).await;
    }
    c.next_of("message").await;
    c.next_of("message").await;
    for seq in [2, 9_000_000_000_000_000_000i64] {
        c.send(json!({"type": "ack", "channel": "chat:ack", "seq": seq}))
            .await;
        let err = c.next_of("error").await;
        assert_eq!(err["code"], "bad_frame", "{err}");
    }
    // What was delivered can be acked; a resume from the cursor then
    // continues after it.
    c.send(json!({"type": "ack", "channel": "chat:ack", "seq": 1}))
        .await;
    assert!(c.next_within(Duration::from_millis(200)).await.is_none());
    drop(c);
    p.publish("chat:ack", Uuid::new_v4(), json!(2)).await;
    let mut again = node.connect_with("?client_id=dev-2").await;
    again
        .send(json!({"type": "subscribe", "channel": "chat:ack", "since": "cursor"}))
        .await;
    assert_eq!(again.next_of("subscribed").await["recovered"], true);
    assert_eq!(again.next_of("message").await["seq"], 2);
}

#[tokio::test]
async fn an_anonymous_client_id_cannot_move_a_users_cursor() {
    let node = Node::start().await;
    let mut p = node.connect().await;
    for i in 0..3 {
        p.publish("chat:own", Uuid::new_v4(), json!(i)).await;
    }
    let epoch = {
        let mut probe = node.connect().await;
        probe.subscribe("chat:own", None).await["position"]["epoch"].clone()
    };
    let start = json!({"seq": -1, "epoch": epoch});
    // The user alice reads one message and acks it.
    let mut alice = node
        .connect_with(&format!("?token={}", token("alice", json!({}))))
        .await;
    alice
        .send(json!({"type": "subscribe", "channel": "chat:own", "durable": true, "since": start}))
        .await;
    assert_eq!(alice.next_of("message").await["seq"], 0);
    alice
        .send(json!({"type": "ack", "channel": "chat:own", "seq": 0}))
        .await;
    // An anonymous client claiming the id `alice` reads and acks all three.
    let mut mallory = node.connect_with("?client_id=alice").await;
    mallory
        .send(json!({"type": "subscribe", "channel": "chat:own", "durable": true, "since": start}))
        .await;
    for _ in 0..3 {
        mallory.next_of("message").await;
    }
    mallory
        .send(json!({"type": "ack", "channel": "chat:own", "seq": 2}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(alice);
    // alice's cursor is still hers: she resumes after seq 0.
    let mut back = node
        .connect_with(&format!("?token={}", token("alice", json!({}))))
        .await;
    back.send(json!({"type": "subscribe", "channel": "chat:own", "since": "cursor"}))
        .await;
    assert_eq!(back.next_of("subscribed").await["recovered"], true);
    assert_eq!(back.next_of("message").await["seq"], 1);
    // A token for the reserved prefix is refused.
    let reserved = tokio_tungstenite::connect_async(
        node.url(&format!("?token={}", token("anonymous:alice", json!({})))),
    )
    .await;
    assert!(reserved.is_err(), "a sub in the anonymous space is refused");
}

#[tokio::test]
async fn readiness_asks_the_log_at_most_once_a_second() {
    let node = Node::start().await;
    let before = node.log.pings();
    let hits = (0..50).map(|_| common::http_get(node.addr, "/readyz", ""));
    for (status, body) in futures_util::future::join_all(hits).await {
        assert_eq!(status, 200, "{body}");
    }
    let asked = node.log.pings() - before;
    assert!(asked <= 2, "50 probes asked the log {asked} times");
    // A log that stops answering turns the probe 503 within the second.
    node.log.fail_appends(Some("broker down"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = common::http_get(node.addr, "/readyz", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker down"), "{body}");
}

#[tokio::test]
async fn auth_frames_are_rate_limited_per_connection() {
    let (mut edge, log) = config();
    edge.limits.auth_per_minute = 3;
    let node = Node::start_with(edge, log).await;
    let mut c = node.connect().await;
    c.send(json!({"type": "auth", "token": token("carol", json!({}))}))
        .await;
    assert_eq!(c.next().await["type"], "authenticated");
    for _ in 0..2 {
        c.send(json!({"type": "refresh", "token": token("carol", json!({}))}))
            .await;
        assert_eq!(c.next().await["type"], "authenticated");
    }
    c.send(json!({"type": "refresh", "token": token("carol", json!({}))}))
        .await;
    let err = c.next().await;
    assert_eq!(err["code"], "rate_limited", "{err}");
    // The connection goes on.
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.next().await["type"], "pong");
}

#[tokio::test]
async fn only_allowed_origins_may_open_a_websocket() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (mut edge, log) = config();
    edge.allowed_origins = vec!["https://app.example.com".into()];
    let node = Node::start_with(edge, log).await;
    let with_origin = |origin: &str| {
        let mut req = node.url("").into_client_request().expect("request");
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
        req
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let ok = tokio_tungstenite::connect_async(with_origin("https://app.example.com")).await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    // Not a browser: no Origin at all.
    node.connect().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_per_ip_limit_counts_forwarded_clients() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (mut edge, log) = config();
    edge.limits.max_connections_per_ip = 1;
    edge.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    let node = Node::start_with(edge, log).await;
    let from = |client: &str| {
        let mut req = node.url("").into_client_request().expect("request");
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().expect("header"));
        req
    };
    // Two clients behind the same balancer address: one connection each.
    let a = tokio_tungstenite::connect_async(from("203.0.113.1")).await;
    let b = tokio_tungstenite::connect_async(from("203.0.113.2")).await;
    assert!(a.is_ok() && b.is_ok(), "distinct clients are counted apart");
    match tokio_tungstenite::connect_async(from("203.0.113.1")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }
}

/// Subscribe and unsubscribe pairs, sent back to back while the
/// subscription's catch-up is running: after the last `unsubscribed`,
/// nothing of the channel may arrive (a registration left behind would
/// deliver it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_races_leave_no_registration_behind() {
    let (mut edge, log) = config();
    edge.limits.queue_messages = 4096;
    let node = Node::start_with(edge, log).await;
    let mut p = node.connect().await;
    for i in 0..500 {
        p.send(json!({"type": "publish", "channel": "chat:race", "id": Uuid::new_v4(), "data": i}))
            .await;
    }
    for _ in 0..500 {
        p.next_of("publish_ack").await;
    }
    let epoch = {
        let mut probe = node.connect().await;
        probe.subscribe("chat:race", None).await["position"]["epoch"].clone()
    };
    let mut c = node.connect().await;
    for round in 0..300u64 {
        let since = json!({"seq": (round % 50) as i64, "epoch": epoch});
        c.send(json!({"type": "subscribe", "channel": "chat:race", "since": since}))
            .await;
        if round % 3 == 1 {
            tokio::task::yield_now().await;
        } else if round % 3 == 2 {
            tokio::time::sleep(Duration::from_micros(200 + round * 7)).await;
        }
        c.send(json!({"type": "unsubscribe", "channel": "chat:race"}))
            .await;
    }
    // Every unsubscribe is answered (`unsubscribed`, or `not_subscribed`
    // when it raced a failed subscribe); then the queue is drained.
    let mut answered = 0;
    while answered < 300 {
        let f = c.next().await;
        if f["type"] == "unsubscribed" || f["code"] == "not_subscribed" {
            answered += 1;
        }
    }
    while c.next_within(Duration::from_millis(300)).await.is_some() {}
    p.publish("chat:race", Uuid::new_v4(), json!("after")).await;
    if let Some(f) = c.next_within(Duration::from_millis(500)).await {
        panic!("a frame arrived after the last unsubscribe: {f}");
    }
}

/// A `refresh` that takes a grant away, racing a `subscribe` it allowed:
/// afterwards nothing of the channel arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_revoking_a_grant_races_a_subscribe_and_wins() {
    let (mut edge, log) = config();
    let mut room = herald_edge::NamespaceConfig::new("room", 1);
    room.subscribe = herald_edge::AccessRule::Grant;
    edge.namespaces.push(room);
    let node = Node::start_with(edge, log).await;
    for i in 0..200 {
        node.api_publish(json!({"channel": "room:a", "data": i}))
            .await;
    }
    let granted = token("erin", json!({"room:*": ["subscribe"]}));
    let revoked = token("erin", json!({}));
    for round in 0..20u64 {
        let mut c = node.connect_with(&format!("?token={granted}")).await;
        c.send(
            json!({"type": "subscribe", "channel": "room:a", "since": {"seq": -1, "epoch": "x"}}),
        )
        .await;
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_micros(100 * round)).await;
        }
        c.send(json!({"type": "refresh", "token": revoked})).await;
        c.next_of("authenticated").await;
        while c.next_within(Duration::from_millis(200)).await.is_some() {}
        node.api_publish(json!({"channel": "room:a", "data": "after"}))
            .await;
        if let Some(f) = c.next_within(Duration::from_millis(300)).await {
            panic!("round {round}: a frame arrived after the grant was revoked: {f}");
        }
    }
}

/// Sockets that drip their request headers are closed after the header
/// timeout, not held.
#[tokio::test]
async fn sockets_that_never_finish_their_headers_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut edge, log) = config();
    edge.header_read_timeout = Duration::from_secs(1);
    let node = Node::start_with(edge, log).await;
    let mut socks = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(node.addr)
            .await
            .expect("connect");
        s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n")
            .await
            .expect("write");
        socks.push(s);
    }
    let started = std::time::Instant::now();
    for mut s in socks {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a socket was still open after 5 s");
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    // The node still serves.
    let (status, _) = common::http_get(node.addr, "/healthz", "").await;
    assert_eq!(status, 200);
}

/// A flood of history requests from many connections must not queue a
/// live client's resume behind all of their reads: the resume waits for at
/// most a few rounds of the reader pool, however many history requests are
/// waiting (counted in reads served meanwhile, not in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_flood_does_not_queue_a_resume_behind_it() {
    let (mut edge, log) = config();
    edge.recent_messages = 10;
    let node = Node::start_with(edge, log).await;
    let mut probe = node.connect().await;
    let epoch = probe.subscribe("chat:mine", None).await["position"]["epoch"].clone();
    drop(probe);
    common::seed(&node.log, 6000, 10, "chat:flood").await;
    let env = Envelope::new(Uuid::new_v4(), "chat:mine", None, raw("\"mine\""));
    let mine = node
        .log
        .append(CHAT, 0, &env)
        .expect("append")
        .await
        .expect("stored");
    node.log.slow_reads(Duration::from_millis(20));
    node.log.limit_concurrent_reads(16);
    let mut flood = Vec::new();
    for _ in 0..30 {
        let mut c = node.connect().await;
        for q in 0..4 {
            c.send(
                json!({"type": "history", "channel": "chat:flood", "id": format!("q{q}"),
                          "since_seq": -1, "limit": 500}),
            )
            .await;
        }
        flood.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut me = node.connect().await;
    let before = node.log.reads();
    eprintln!("reads before the resume: {before}");
    me.send(json!({"type": "subscribe", "channel": "chat:mine", "since": {"seq": mine - 50, "epoch": epoch}}))
        .await;
    let got = me.next_of("message").await;
    let waited = node.log.reads() - before;
    assert_eq!(got["seq"], mine);
    eprintln!("reads served while the resume waited: {waited}");
    assert!(
        waited <= 48,
        "the resume waited behind {waited} reads of the flood"
    );
    for mut c in flood {
        c.next_of("history").await;
    }
}

/// History a connection asked for and no longer waits for is not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_end_with_their_connection() {
    let (mut edge, log) = config();
    edge.recent_messages = 10;
    let node = Node::start_with(edge, log).await;
    common::seed(&node.log, 6000, 10, "chat:far").await;
    node.log.slow_reads(Duration::from_millis(200));
    let mut c = node.connect().await;
    for q in 0..4 {
        c.send(
            json!({"type": "history", "channel": "chat:far", "id": format!("q{q}"),
                      "since_seq": -1, "limit": 500}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let at_close = node.log.reads();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = node.log.reads() - at_close;
    assert!(after <= 1, "{after} reads for a closed connection");
}

/// An ephemeral publish on the in-memory log: an `ephemeral` frame (no
/// `seq`) for the channel's subscribers, a record in the ephemeral topic
/// only, no answer; a namespace without the option refuses it.
#[tokio::test]
async fn an_ephemeral_message_reaches_subscribers_and_is_kept_nowhere() {
    let (mut edge, log) = config();
    let mut live = herald_edge::NamespaceConfig::new("live", 1);
    live.subscribe = herald_edge::AccessRule::Anonymous;
    live.publish = herald_edge::AccessRule::Anonymous;
    live.ephemeral = true;
    edge.namespaces.push(live);
    let node = Node::start_with(edge, log).await;
    let mut sub = node.connect().await;
    let subscribed = sub.subscribe("live:e", None).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut p = node.connect().await;
    let id = Uuid::new_v4();
    p.send(json!({"type": "publish", "channel": "live:e", "id": id, "data": {"typing": true}, "ephemeral": true, "tags": {"k": "v"}}))
        .await;
    let got = sub.next_of("ephemeral").await;
    assert_eq!(got["id"], id.to_string());
    assert_eq!(got["data"], json!({"typing": true}));
    assert_eq!(got["tags"], json!({"k": "v"}));
    assert!(got.get("seq").is_none(), "{got}");
    assert!(
        node.stored("herald.live", "live:e").is_empty(),
        "not in the namespace's topic"
    );
    assert_eq!(node.stored("herald.live.ephemeral", "live:e").len(), 1);
    assert_eq!(
        p.next_within(Duration::from_millis(200)).await,
        None,
        "no answer"
    );
    // `chat` does not take them.
    let id = Uuid::new_v4();
    p.send(json!({"type": "publish", "channel": "chat:x", "id": id, "data": 1, "ephemeral": true}))
        .await;
    let refused = p.next_of_publish(id).await;
    assert_eq!(refused["type"], "publish_nack", "{refused}");
    assert_eq!(refused["code"], "bad_frame", "{refused}");
    assert!(node.stored(CHAT, "chat:x").is_empty());
}
