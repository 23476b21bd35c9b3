//! Frames as they cross the wire validate against `schemas/`: every text
//! frame a real server sends in a session that exercises every frame type.

use crate::common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/../../schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_on_the_wire_validates() {
    let s = Server::start(&unique_prefix("wire"), &["--max-message-bytes", "100"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(&s.url).await.unwrap();
    let client = schema("frames.client.json");
    let server = schema("frames.server.json");
    let id = uuid::Uuid::new_v4();
    let good = [
        r#"{"type":"subscribe","channel":"chat:wire"}"#.to_string(),
        format!(
            r#"{{"type":"publish","channel":"chat:wire","id":"{id}","data":{{"text":"hi","n":[1,2.5,null,true]}}}}"#
        ),
        format!(
            r#"{{"type":"publish","channel":"chat:wire","id":"{id}","data":{{"text":"hi","n":[1,2.5,null,true]}}}}"#
        ),
        format!(
            r#"{{"type":"publish","channel":"chat:wire","id":"{}","data":"{}"}}"#,
            uuid::Uuid::new_v4(),
            "x".repeat(200)
        ),
        r#"{"type":"ack","channel":"chat:wire","seq":0}"#.to_string(),
        r#"{"type":"ping"}"#.to_string(),
        r#"{"type":"unsubscribe","channel":"chat:wire"}"#.to_string(),
    ];
    for f in &good {
        let v: Value = serde_json::from_str(f).unwrap();
        assert!(client.is_valid(&v), "client frame {f} should validate");
        ws.send(Message::text(f.clone())).await.unwrap();
        // Let the publish be acked and delivered before the next frame.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let bad = [
        r#"{"type":"nope"}"#,
        "garbage",
        r#"{"type":"subscribe","channel":"x"}"#,
    ];
    for f in bad {
        ws.send(Message::text(f)).await.unwrap();
    }
    let mut kinds = std::collections::BTreeSet::new();
    let mut n = 0;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(1500), ws.next()).await {
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if let Err(e) = server.validate(&v) {
            panic!("server frame {t} does not validate: {e}");
        }
        kinds.insert(v["type"].as_str().unwrap().to_owned());
        n += 1;
    }
    let want: std::collections::BTreeSet<String> = [
        "subscribed",
        "message",
        "publish_ack",
        "publish_nack",
        "pong",
        "unsubscribed",
        "error",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        kinds, want,
        "the session produced every server frame type ({n} frames)"
    );
}
