//! Ephemeral messages (docs/protocol.md, "Ephemeral messages") on two nodes
//! against the real broker: each reaches every subscriber of its channel on
//! both nodes once, as an `ephemeral` frame without a `seq`, filtered like
//! any message; it is in the namespace's ephemeral topic and nowhere else
//! (not in the namespace's topic, not in history, not on a resume); the
//! durable messages interleaved with them keep their seqs and are all
//! delivered once; a namespace without the option refuses them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald_client::{Connection, Ephemeral, Frame, Msg, Start};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

fn config(prefix: &str) -> String {
    let path = config_file(
        prefix,
        &format!(
            r#"{OPEN_CHAT}ephemeral = true

[[namespace]]
name = "room"
partitions = 2
subscribe = "anonymous"
publish = "anonymous"
history = "anonymous"
"#
        ),
    );
    path.to_str().expect("path").to_owned()
}

/// Reads until `ephemerals` ephemeral frames and `messages` messages came
/// (or `wait` passed); fails on anything unexpected.
async fn read(
    c: &mut Connection,
    ephemerals: usize,
    messages: usize,
    wait: Duration,
) -> (Vec<Ephemeral>, Vec<Msg>) {
    let deadline = Instant::now() + wait;
    let (mut e, mut m) = (Vec::new(), Vec::new());
    while e.len() < ephemerals || m.len() < messages {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_frame_within(left).await {
            Ok(Frame::Ephemeral(x)) => e.push(x),
            Ok(Frame::Message(x)) => m.push(x),
            Ok(_) => {}
            Err(err) => panic!(
                "after {} of {ephemerals} ephemeral and {} of {messages} messages: {err}",
                e.len(),
                m.len()
            ),
        }
    }
    (e, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_messages_fan_out_across_nodes_and_are_never_kept() {
    let prefix = unique_prefix("ephemeral");
    let cfg = config(&prefix);
    let a = Server::start(&prefix, &["--config", &cfg, "--publish-rate", "0"]);
    let b = Server::start(&prefix, &["--config", &cfg, "--publish-rate", "0"]);
    let ch = "chat:typing";
    let mut on_a = a.connect().await;
    let (start, _) = on_a.subscribe(ch, None).await.expect("subscribe on a");
    let mut on_b = b.connect().await;
    on_b.subscribe(ch, None).await.expect("subscribe on b");
    let mut filtered = b.connect().await;
    filtered
        .subscribe_filtered(
            ch,
            Start::Live,
            false,
            Some(&json!({ "key": "who", "eq": "ann" })),
        )
        .await
        .expect("filtered subscribe");

    // 40 ephemeral and 20 durable messages from a publisher on node a,
    // interleaved; every other ephemeral one tagged `who: ann`.
    let mut p = a.connect().await;
    let mut sent = Vec::new();
    let mut acked = Vec::new();
    for i in 0..40 {
        let id = Uuid::new_v4();
        let who = if i % 2 == 0 { "ann" } else { "bob" };
        let tags = BTreeMap::from([("who".to_string(), who.to_string())]);
        p.send_ephemeral(ch, id, &json!({ "typing": i }), Some(&tags))
            .await
            .expect("send");
        sent.push(id);
        if i % 2 == 1 {
            acked.push(publish_ok(&mut p, ch, json!({ "durable": i })).await.1);
        }
    }
    let ids = |e: &[Ephemeral]| e.iter().map(|x| x.id).collect::<Vec<_>>();
    let seqs = |m: &[Msg]| m.iter().map(|x| x.seq).collect::<Vec<_>>();
    for (name, c) in [("a", &mut on_a), ("b", &mut on_b)] {
        let (e, m) = read(c, 40, 20, Duration::from_secs(15)).await;
        // One publisher's ephemeral messages keep their order.
        assert_eq!(ids(&e), sent, "ephemeral messages on node {name}");
        assert_eq!(seqs(&m), acked, "durable messages on node {name}");
        assert_eq!(e[2].data, json!({ "typing": 2 }));
        assert_eq!(
            e[2].tags
                .as_ref()
                .and_then(|t| t.get("who"))
                .map(String::as_str),
            Some("ann")
        );
        assert_no_message(c, Duration::from_millis(300)).await;
    }
    let (e, _) = read(&mut filtered, 20, 0, Duration::from_secs(15)).await;
    assert_eq!(ids(&e), sent.iter().step_by(2).copied().collect::<Vec<_>>());

    // Not kept: a resume from before them all, history, the topic.
    let mut resumed = b.connect().await;
    let (_, recovered) = resumed.subscribe(ch, Some(&start)).await.expect("resume");
    assert!(recovered);
    let (_, m) = read(&mut resumed, 0, 20, Duration::from_secs(15)).await;
    assert_eq!(seqs(&m), acked);
    let extra = resumed.next_frame_within(Duration::from_millis(500)).await;
    assert!(
        !matches!(extra, Ok(Frame::Ephemeral(_)) | Ok(Frame::Message(_))),
        "{extra:?}"
    );
    let page = p
        .history(
            ch,
            &herald_client::HistoryQuery {
                since_seq: Some(-1),
                limit: Some(100),
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        acked
    );
    let kept = read_topic(&format!("{prefix}chat"));
    assert_eq!(kept.len(), 20, "only the durable messages in {prefix}chat");
    let fleeting = read_topic(&format!("{prefix}chat.ephemeral"));
    assert_eq!(fleeting.len(), 40, "the ephemeral ones in their own topic");
    let envelope: Value =
        serde_json::from_slice(rdkafka::Message::payload(&fleeting[0]).expect("a value"))
            .expect("an envelope");
    assert_eq!(envelope["channel"], ch);

    // A namespace without the option refuses them, and with `retry`.
    let id = Uuid::new_v4();
    p.send_ephemeral("room:x", id, &json!(1), None)
        .await
        .unwrap();
    match p.publish_result(id).await.expect("an answer") {
        herald_client::Published::Nack { code, reason } => {
            assert_eq!(code, "bad_frame");
            assert!(reason.contains("ephemeral"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    p.send_text(
        json!({ "type": "publish", "channel": ch, "id": Uuid::new_v4(), "data": 1, "ephemeral": true, "retry": true })
            .to_string(),
    )
    .await
    .unwrap();
    match p.next_frame_within(Duration::from_secs(5)).await {
        Ok(Frame::Error { code, .. }) => assert_eq!(code, "bad_frame"),
        other => panic!("{other:?}"),
    }
    // The sender's own subscription-less connection heard nothing else.
    let metrics = http_get(&a.http, "/metrics").await.1;
    assert!(
        gauge(
            &metrics,
            "herald_ephemeral_publishes_total{outcome=\"sent\"}"
        ) >= 40.0,
        "{metrics}"
    );
}
