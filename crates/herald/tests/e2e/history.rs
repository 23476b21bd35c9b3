//! `history` over WebSocket against the real broker: by seq, by time, the
//! newest first with paging back, the scan bound, and bad requests.

use crate::common;

use std::time::Duration;

use common::*;
use herald_client::{ClientError, HistoryQuery};
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
