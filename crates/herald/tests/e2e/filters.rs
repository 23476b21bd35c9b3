//! Tags and filters (docs/protocol.md "Tags and filters") against the real
//! broker: a subscription with a filter gets exactly the messages whose tags
//! pass it, in order and once, live, on a resume from the ring and from
//! Kafka (a 20-message ring), on a rewind, over SSE; the tags are in the
//! topic's envelopes and on history pages; bad tags and filters are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_client::{Msg, Start, Tags};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// The tags of publish `i`: kinds in turn, every fifth untagged.
fn tags_of(i: usize) -> Option<Tags> {
    if i % 5 == 4 {
        return None;
    }
    let kind = ["goal", "card", "chat", "goal"][i % 4];
    Some(BTreeMap::from([
        ("kind".to_string(), kind.to_string()),
        (
            "half".to_string(),
            (if i < 20 { "1" } else { "2" }).to_string(),
        ),
    ]))
}

async fn publish_tagged(c: &mut herald_client::Connection, ch: &str, i: usize) -> i64 {
    let id = Uuid::new_v4();
    let data = json!({ "i": i });
    match tags_of(i) {
        Some(t) => c.send_publish_tagged(ch, id, &data, &t).await.unwrap(),
        None => c.send_publish(ch, id, &data).await.unwrap(),
    }
    match c.publish_result(id).await.unwrap() {
        herald_client::Published::Ack { seq, .. } => seq,
        other => panic!("publish {i}: {other:?}"),
    }
}

fn seqs(ms: &[Msg]) -> Vec<i64> {
    ms.iter().map(|m| m.seq).collect()
}

/// The seqs of `all` (publish index → seq) whose tags pass `keep`.
fn wanted(all: &[(usize, i64)], keep: impl Fn(Option<&Tags>) -> bool) -> Vec<i64> {
    all.iter()
        .filter(|(i, _)| keep(tags_of(*i).as_ref()))
        .map(|(_, s)| *s)
        .collect()
}

#[tokio::test]
async fn a_filtered_subscription_gets_exactly_the_messages_that_pass() {
    let prefix = unique_prefix("filters");
    // A 20-message ring: a resume from the start reads Kafka first.
    let server = Server::start(&prefix, &["--publish-rate", "0", "--recent-messages", "20"]);
    let ch = "chat:match";
    let goals = json!({ "key": "kind", "in": ["goal"] });
    let not_chat = json!({ "not": { "key": "kind", "eq": "chat" } });
    let second_half_cards =
        json!({ "and": [{ "key": "half", "eq": "2" }, { "key": "kind", "eq": "card" }] });
    let is_goal = |t: Option<&Tags>| t.and_then(|t| t.get("kind")).is_some_and(|k| k == "goal");
    let not_chat_f = |t: Option<&Tags>| t.and_then(|t| t.get("kind")).is_none_or(|k| k != "chat");

    let mut live_goals = server.connect().await;
    let (start, _) = live_goals
        .subscribe_filtered(ch, Start::Live, false, Some(&goals))
        .await
        .expect("filtered subscribe");
    let mut live_not_chat = server.connect().await;
    live_not_chat
        .subscribe_filtered(ch, Start::Live, false, Some(&not_chat))
        .await
        .expect("filtered subscribe");
    let mut everything = server.connect().await;
    everything.subscribe(ch, None).await.expect("subscribe");

    let mut p = server.connect().await;
    let mut all = Vec::new();
    for i in 0..40 {
        all.push((i, publish_tagged(&mut p, ch, i).await));
        // A neighbour in the partition, tagged like a goal: never shown.
        if i % 10 == 0 {
            let id = Uuid::new_v4();
            let t = BTreeMap::from([("kind".to_string(), "goal".to_string())]);
            p.send_publish_tagged("chat:other", id, &json!({}), &t)
                .await
                .unwrap();
            p.publish_result(id).await.unwrap();
        }
    }
    let want_goals = wanted(&all, is_goal);
    let want_not_chat = wanted(&all, not_chat_f);
    assert_eq!(want_goals.len(), 16);
    assert_eq!(want_not_chat.len(), 32);

    let got = read_messages(&mut live_goals, want_goals.len(), Duration::from_secs(15)).await;
    assert_eq!(seqs(&got), want_goals, "live, in");
    assert!(got.iter().all(|m| m
        .tags
        .as_ref()
        .and_then(|t| t.get("kind"))
        .map(String::as_str)
        == Some("goal")));
    assert_no_message(&mut live_goals, Duration::from_millis(300)).await;
    let got = read_messages(
        &mut live_not_chat,
        want_not_chat.len(),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(seqs(&got), want_not_chat, "live, not");
    assert_no_message(&mut live_not_chat, Duration::from_millis(300)).await;
    let got = read_messages(&mut everything, all.len(), Duration::from_secs(15)).await;
    assert_eq!(seqs(&got), all.iter().map(|(_, s)| *s).collect::<Vec<_>>());
    assert_eq!(got[0].tags, tags_of(0));
    assert_eq!(got[4].tags, None);

    // A resume from before the first publish: from Kafka (the ring holds
    // the last 20), then live; each once.
    let mut resumed = server.connect().await;
    let (_, recovered) = resumed
        .subscribe_filtered(ch, Start::After(&start), false, Some(&second_half_cards))
        .await
        .expect("resume");
    assert!(recovered);
    let want = wanted(&all, |t| {
        t.is_some_and(|t| {
            t.get("half").map(String::as_str) == Some("2")
                && t.get("kind").map(String::as_str) == Some("card")
        })
    });
    assert_eq!(want.len(), 4);
    let got = read_messages(&mut resumed, want.len(), Duration::from_secs(15)).await;
    assert_eq!(seqs(&got), want, "resume from the log");
    // A resume inside the ring.
    let mut from_ring = server.connect().await;
    let mid = herald_client::Position {
        seq: all[30].1,
        epoch: start.epoch.clone(),
    };
    from_ring
        .subscribe_filtered(ch, Start::After(&mid), false, Some(&goals))
        .await
        .expect("resume");
    let want: Vec<i64> = want_goals
        .iter()
        .copied()
        .filter(|s| *s > mid.seq)
        .collect();
    let got = read_messages(&mut from_ring, want.len(), Duration::from_secs(15)).await;
    assert_eq!(seqs(&got), want, "resume from the ring");
    // A rewind of the last 10: those of them that pass.
    let mut rewound = server.connect().await;
    rewound
        .subscribe_filtered(ch, Start::Rewind(10), false, Some(&goals))
        .await
        .expect("rewind");
    let last10: Vec<(usize, i64)> = all[30..].to_vec();
    let want = wanted(&last10, is_goal);
    let got = read_messages(&mut rewound, want.len(), Duration::from_secs(15)).await;
    assert_eq!(seqs(&got), want, "rewind");
    assert_no_message(&mut rewound, Duration::from_millis(300)).await;

    // Live again for every filtered subscriber: one goal, one chat.
    let goal = publish_tagged(&mut p, ch, 40).await; // 40 % 4 == 0: goal
    let chat = publish_tagged(&mut p, ch, 42).await; // chat
    for (c, want) in [
        (&mut live_goals, vec![goal]),
        (&mut resumed, vec![]),
        (&mut from_ring, vec![goal]),
        (&mut rewound, vec![goal]),
        (&mut live_not_chat, vec![goal]),
    ] {
        let got = read_messages(c, want.len(), Duration::from_secs(10)).await;
        assert_eq!(seqs(&got), want);
        assert_no_message(c, Duration::from_millis(300)).await;
    }
    let _ = chat;

    // The tags are in the topic's envelopes and on history pages.
    let records = read_topic(&format!("{prefix}chat"));
    let tagged = records
        .iter()
        .filter_map(|r| rdkafka::Message::payload(r))
        .filter_map(|v| serde_json::from_slice::<Value>(v).ok())
        .filter(|e| e["channel"] == ch && e["tags"]["kind"] == "goal")
        .count();
    assert_eq!(tagged, want_goals.len() + 1);
    let page = p
        .history(
            ch,
            &herald_client::HistoryQuery {
                limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        page.messages.last().and_then(|m| m.tags.clone()),
        tags_of(42)
    );
}

/// Bad tags and filters are refused (`bad_frame`, nothing stored); the
/// HTTP API's publishes carry tags too.
#[tokio::test]
async fn bad_tags_and_filters_are_refused_and_the_api_takes_tags() {
    const KEY: &str = "filters-test-api-key-0123456789";
    let prefix = unique_prefix("filters-bad");
    let server = Server::start_env(
        &prefix,
        &["--publish-rate", "0"],
        &[("HERALD_AUTH_API_KEY", KEY)],
    );
    let mut sub = server.connect().await;
    sub.subscribe_filtered(
        "chat:s",
        Start::Live,
        false,
        Some(&json!({ "key": "kind", "eq": "goal" })),
    )
    .await
    .expect("subscribe");
    let mut c = server.connect().await;
    for frame in [
        json!({ "type": "subscribe", "channel": "chat:s", "filter": { "key": "kind" } }),
        json!({ "type": "subscribe", "channel": "chat:s", "filter": { "op": "eq" } }),
        json!({ "type": "subscribe", "channel": "chat:s", "filter": "kind=goal" }),
        json!({ "type": "publish", "channel": "chat:s", "id": Uuid::new_v4(), "data": 1, "tags": { "kind": 7 } }),
        json!({ "type": "publish", "channel": "chat:s", "id": Uuid::new_v4(), "data": 1, "tags": { "k": "x".repeat(300) } }),
    ] {
        c.send_text(frame.to_string()).await.expect("send");
        match c.next_frame_within(Duration::from_secs(5)).await {
            Ok(herald_client::Frame::Error { code, channel, .. }) => assert_eq!(
                (code.as_str(), channel.as_deref()),
                ("bad_frame", Some("chat:s")),
                "{frame}"
            ),
            other => panic!("{frame}: {other:?}"),
        }
    }
    let headers = [("X-Api-Key", KEY)];
    let (status, body) = http(
        &server.http,
        "POST",
        "/api/publish",
        &headers,
        Some(&json!({ "channel": "chat:s", "data": 1, "tags": { "kind": [] } }).to_string()),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(
        &server.http,
        "POST",
        "/api/publish",
        &headers,
        Some(&json!({ "channel": "chat:s", "data": 2, "tags": { "kind": "goal" } }).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = read_messages(&mut sub, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].data, json!(2));
    assert_eq!(
        got[0]
            .tags
            .as_ref()
            .and_then(|t| t.get("kind"))
            .map(String::as_str),
        Some("goal")
    );
    // Only the API's good publish reached the topic.
    let n = read_topic(&format!("{prefix}chat"))
        .iter()
        .filter(|r| rdkafka::Message::key(*r) == Some(b"chat:s".as_slice()))
        .count();
    assert_eq!(n, 1);
}
