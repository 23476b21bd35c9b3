//! `batch` frames (docs/protocol.md, "Batches") against the real broker: a
//! WebSocket opened with `?batch=true` gets messages queued together in one
//! frame, every message once and in order, replies never inside a batch; a
//! connection without it never gets one; the Rust client unpacks them.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::common::*;

/// Every text frame of a raw socket until `messages` messages came.
async fn frames_until(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    messages: usize,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut frames = Vec::new();
    let mut seen = 0;
    while seen < messages {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("after {seen} of {messages} messages"))
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            let f: Value = serde_json::from_str(t.as_str()).expect("json");
            seen += match f["type"].as_str() {
                Some("message") => 1,
                Some("batch") => f["frames"].as_array().map_or(0, Vec::len),
                _ => 0,
            };
            frames.push(f);
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_together_come_in_batch_frames_once_and_in_order() {
    let prefix = unique_prefix("batches");
    let s = Server::start(&prefix, &["--publish-rate", "0"]);
    let ch = "chat:batch";
    let mut raw = Vec::new();
    for query in ["?batch=true", "?batch=false"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}{query}", s.url))
            .await
            .expect("connect");
        ws.send(Message::text(
            json!({ "type": "subscribe", "channel": ch }).to_string(),
        ))
        .await
        .unwrap();
        let f = frames_until(&mut ws, 0).await;
        assert!(f.is_empty());
        raw.push(ws);
    }
    // The Rust client asks for batches by itself.
    let mut client = s.connect().await;
    client.subscribe(ch, None).await.expect("subscribe");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 300 publishes sent at once: Kafka takes them in a few batches, the
    // tail reads them in a few fetches, and each fetch is queued together.
    let mut p = s.connect().await;
    let ids: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        p.send_publish(ch, *id, &json!({ "i": i })).await.unwrap();
    }
    let mut seqs = Vec::new();
    for id in &ids {
        match p.publish_result(*id).await.unwrap() {
            herald_client::Published::Ack { seq, .. } => seqs.push(seq),
            other => panic!("{other:?}"),
        }
    }

    let unpack = |frames: &[Value]| -> (Vec<i64>, usize) {
        let mut out = Vec::new();
        let mut batches = 0;
        for f in frames {
            match f["type"].as_str() {
                Some("message") => out.push(f["seq"].as_i64().unwrap()),
                Some("batch") => {
                    batches += 1;
                    let inner = f["frames"].as_array().expect("frames");
                    assert!(inner.len() >= 2, "a batch holds two or more: {f}");
                    for m in inner {
                        assert_eq!(m["type"], "message", "only messages here: {m}");
                        out.push(m["seq"].as_i64().unwrap());
                    }
                }
                _ => {}
            }
        }
        (out, batches)
    };
    let batched = frames_until(&mut raw[0], 300).await;
    let (got, batches) = unpack(&batched);
    assert_eq!(got, seqs, "every message once, in order, with batches");
    assert!(batches >= 1, "no batch among {} frames", batched.len());
    println!(
        "batches: 300 messages in {} WebSocket frames ({batches} batches)",
        batched.len()
    );
    let plain = frames_until(&mut raw[1], 300).await;
    let (got, batches) = unpack(&plain);
    assert_eq!(got, seqs);
    assert_eq!(batches, 0, "a connection that did not ask gets no batch");
    let got = read_messages(&mut client, 300, Duration::from_secs(20)).await;
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);

    // A reply is never inside a batch.
    raw[0]
        .send(Message::text(json!({ "type": "ping" }).to_string()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), raw[0].next())
        .await
        .expect("a pong")
        .expect("open")
        .expect("a frame");
    assert_eq!(
        serde_json::from_str::<Value>(pong.to_text().unwrap()).unwrap()["type"],
        "pong"
    );
    // `batch` must be true or false.
    let bad = tokio_tungstenite::connect_async(format!("{}?batch=yes", s.url)).await;
    assert!(bad.is_err(), "batch=yes was accepted");
}
