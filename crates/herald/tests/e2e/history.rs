//! `history` over WebSocket against the real broker: by seq, by time, the
//! newest first with paging back, the scan bound, and bad requests.

use crate::common;

use std::time::Duration;

use common::*;
use herald_client::{ClientError, HistoryQuery, Start};
use serde_json::json;

fn q() -> HistoryQuery {
    HistoryQuery::default()
}

#[tokio::test]
async fn history_by_seq_time_and_latest_pages() {
    let prefix = unique_prefix("history");
    let server = Server::start(&prefix, &["--publish-rate", "0"]);
    let mut c = server.connect().await;
    // Two channels sharing partitions; `chat:h` gets every third message.
    let mut mine = Vec::new();
    let mut middle_ts = 0;
    for i in 0..60 {
        let ch = if i % 3 == 0 { "chat:h" } else { "chat:other" };
        let (_, seq) = publish_ok(&mut c, ch, json!({ "i": i })).await;
        if ch == "chat:h" {
            mine.push(seq);
        }
        if i == 29 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            middle_ts = now_ms();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Forward, paged by 6: everything once, in order.
    let mut since = -1;
    let mut got = Vec::new();
    loop {
        let p = c
            .history(
                "chat:h",
                &HistoryQuery {
                    since_seq: Some(since),
                    limit: Some(6),
                    ..q()
                },
            )
            .await
            .unwrap();
        assert!(p.messages.len() <= 6);
        assert!(p.messages.iter().all(|m| m.channel == "chat:h"));
        got.extend(p.messages.iter().map(|m| m.seq));
        since = p.next;
        if p.done {
            break;
        }
    }
    assert_eq!(got, mine);

    // The data is the published data.
    let p = c
        .history(
            "chat:h",
            &HistoryQuery {
                since_seq: Some(-1),
                limit: Some(1),
                ..q()
            },
        )
        .await
        .unwrap();
    assert_eq!(p.messages[0].data, json!({ "i": 0 }));

    // By time: the messages published after `middle_ts` (i = 30, 33, ...).
    let p = c
        .history(
            "chat:h",
            &HistoryQuery {
                since_time: Some(middle_ts),
                ..q()
            },
        )
        .await
        .unwrap();
    let data: Vec<i64> = p
        .messages
        .iter()
        .map(|m| m.data["i"].as_i64().unwrap())
        .collect();
    assert_eq!(data, (30..60).step_by(3).collect::<Vec<_>>());
    assert!(p.done);

    // Latest 4, newest first, then the page before them.
    let p = c
        .history(
            "chat:h",
            &HistoryQuery {
                limit: Some(4),
                reverse: true,
                ..q()
            },
        )
        .await
        .unwrap();
    let newest: Vec<i64> = mine.iter().rev().take(4).copied().collect();
    assert_eq!(p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), newest);
    assert!(!p.done);
    let older = c
        .history(
            "chat:h",
            &HistoryQuery {
                before_seq: Some(p.next),
                limit: Some(4),
                ..q()
            },
        )
        .await
        .unwrap();
    let want: Vec<i64> = mine[mine.len() - 8..mine.len() - 4].to_vec();
    assert_eq!(
        older.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        want
    );

    // A channel nobody wrote to: an empty, finished page.
    let p = c.history("chat:nothing", &q()).await.unwrap();
    assert!(p.messages.is_empty() && p.done);
}

#[tokio::test]
async fn history_bounds_and_bad_requests() {
    let prefix = unique_prefix("history-bounds");
    let server = Server::start(
        &prefix,
        &[
            "--publish-rate",
            "0",
            "--history-max-limit",
            "10",
            "--history-max-scan",
            "20",
        ],
    );
    let mut c = server.connect().await;
    // 50 records in `chat:sparse`'s partition, one of them its own.
    let mut target = -1;
    let mut n = 0;
    let mut i = 0;
    while n < 49 || target < 0 {
        let ch = format!("chat:x{i}");
        i += 1;
        let same = herald_proto::partition::partition_for_key(ch.as_bytes(), 4)
            == herald_proto::partition::partition_for_key(b"chat:sparse", 4);
        if !same {
            continue;
        }
        if n == 30 && target < 0 {
            target = publish_ok(&mut c, "chat:sparse", json!("needle")).await.1;
        }
        publish_ok(&mut c, &ch, json!(n)).await;
        n += 1;
    }
    // Scans stop after 20 records: the needle takes two pages.
    let first = c
        .history(
            "chat:sparse",
            &HistoryQuery {
                since_seq: Some(-1),
                ..q()
            },
        )
        .await
        .unwrap();
    assert!(first.messages.is_empty());
    assert!(!first.done);
    let mut since = first.next;
    let mut found = Vec::new();
    loop {
        let p = c
            .history(
                "chat:sparse",
                &HistoryQuery {
                    since_seq: Some(since),
                    ..q()
                },
            )
            .await
            .unwrap();
        found.extend(p.messages.iter().map(|m| m.seq));
        since = p.next;
        if p.done {
            break;
        }
    }
    assert_eq!(found, vec![target]);

    let err = c
        .history(
            "chat:sparse",
            &HistoryQuery {
                limit: Some(11),
                ..q()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code, .. } if code == "bad_frame"),
        "{err}"
    );
    let err = c.history("nope:x", &q()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code, .. } if code == "unknown_namespace"),
        "{err}"
    );
    // Raw frames: both a position and a time is refused, the id is echoed.
    c.send_text(r#"{"type":"history","id":"r1","channel":"chat:a","since_seq":1,"since_time":5}"#)
        .await
        .unwrap();
    match c.next_frame().await.unwrap() {
        herald_client::Frame::Error { code, id, .. } => {
            assert_eq!(code, "bad_frame");
            assert_eq!(id.as_deref(), Some("r1"));
        }
        other => panic!("{other:?}"),
    }
    // And the connection still works.
    c.ping().await.unwrap();
}

/// `subscribe` with `rewind` (the last N messages) and `rewind_ms` (an age
/// window), for a client that knows no position: the recent messages of the
/// channel in order, then live ones, each once; nothing published while it
/// subscribes is missed; the channel's neighbours in the partition never
/// show; bad values are refused.
#[tokio::test]
async fn rewind_delivers_recent_messages_then_live_ones_once() {
    let prefix = unique_prefix("rewind");
    let server = Server::start(&prefix, &["--publish-rate", "0"]);
    let mut p = server.connect().await;
    let mut mine = Vec::new();
    for i in 0..12 {
        let (_, seq) = publish_ok(&mut p, "chat:r", json!({ "i": i })).await;
        mine.push(seq);
        publish_ok(&mut p, "chat:r-other", json!({ "other": i })).await;
    }
    let seqs = |ms: &[herald_client::Msg]| ms.iter().map(|m| m.seq).collect::<Vec<_>>();

    // The last 3, then a live one.
    let mut c = server.connect().await;
    let (_, recovered) = c
        .subscribe_from("chat:r", Start::Rewind(3), false)
        .await
        .expect("rewind");
    assert!(recovered, "a rewind is an exact resume");
    let got = read_messages(&mut c, 3, Duration::from_secs(10)).await;
    assert_eq!(seqs(&got), mine[9..].to_vec());
    let (_, live) = publish_ok(&mut p, "chat:r", json!({ "i": "live" })).await;
    let got = read_messages(&mut c, 1, Duration::from_secs(10)).await;
    assert_eq!(seqs(&got), vec![live]);
    assert_no_message(&mut c, Duration::from_millis(500)).await;
    mine.push(live);

    // More than there are: all of them.
    let mut all = server.connect().await;
    all.subscribe_from("chat:r", Start::Rewind(500), false)
        .await
        .expect("rewind 500");
    let got = read_messages(&mut all, mine.len(), Duration::from_secs(10)).await;
    assert_eq!(seqs(&got), mine);
    assert_no_message(&mut all, Duration::from_millis(300)).await;

    // An empty channel: nothing, then the next message.
    let mut empty = server.connect().await;
    empty
        .subscribe_from("chat:r-empty", Start::Rewind(5), false)
        .await
        .expect("rewind on an empty channel");
    assert_no_message(&mut empty, Duration::from_millis(300)).await;
    let (_, first) = publish_ok(&mut p, "chat:r-empty", json!({ "first": true })).await;
    let got = read_messages(&mut empty, 1, Duration::from_secs(10)).await;
    assert_eq!(seqs(&got), vec![first]);

    // By age: everything of the last minute.
    let mut aged = server.connect().await;
    aged.send_text(
        json!({ "type": "subscribe", "channel": "chat:r", "rewind_ms": 60_000 }).to_string(),
    )
    .await
    .expect("send");
    let got = read_messages(&mut aged, mine.len(), Duration::from_secs(10)).await;
    assert_eq!(seqs(&got), mine);

    // Refused: over the history limit, zero, and with `since`.
    let mut bad = server.connect().await;
    let err = bad
        .subscribe_from("chat:r", Start::Rewind(5_000), false)
        .await
        .expect_err("rewind over the limit");
    assert!(
        matches!(&err, ClientError::Server { code, reason } if code == "bad_frame" && reason.contains("at most 1000")),
        "{err:?}"
    );
    for frame in [
        json!({ "type": "subscribe", "channel": "chat:r", "rewind": 0 }),
        json!({ "type": "subscribe", "channel": "chat:r", "rewind": 2, "since": "cursor" }),
    ] {
        bad.send_text(frame.to_string()).await.expect("send");
        match bad.next_frame_within(Duration::from_secs(5)).await {
            Ok(herald_client::Frame::Error { code, .. }) => assert_eq!(code, "bad_frame"),
            other => panic!("{frame}: {other:?}"),
        }
    }
}
