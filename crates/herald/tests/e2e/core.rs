//! The durable core, end to end: real broker over TCP, real `herald serve`
//! processes, real WebSocket clients.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use herald_client::{Connection, Frame, Position, Published};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_every_subscriber_with_the_acked_seq() {
    let s = Server::start(&unique_prefix("fanout"), &[]);
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut c = s.connect().await;
        let (_pos, recovered) = c.subscribe("chat:lobby", None).await.unwrap();
        assert!(!recovered);
        subs.push(c);
    }
    let mut p = s.connect().await;
    let mut acked = Vec::new();
    for i in 0..50 {
        acked.push(publish_ok(&mut p, "chat:lobby", json!({ "n": i })).await);
    }
    for c in subs.iter_mut() {
        let msgs = read_messages(c, 50, WAIT).await;
        let got: Vec<(Uuid, i64)> = msgs.iter().map(|m| (m.id, m.seq)).collect();
        assert_eq!(
            got, acked,
            "every subscriber gets every message with its acked seq"
        );
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.data, json!({ "n": i }));
            assert_eq!(m.channel, "chat:lobby");
        }
        assert_no_message(c, Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_per_channel_under_concurrent_publishers() {
    let s = Server::start(&unique_prefix("order"), &[]);
    let channels: Vec<String> = (0..4).map(|i| format!("chat:c{i}")).collect();
    let mut sub = s.connect().await;
    for ch in &channels {
        sub.subscribe(ch, None).await.unwrap();
    }
    const N: usize = 150;
    let mut tasks = Vec::new();
    for ch in channels.clone() {
        let mut c = s.connect().await;
        tasks.push(tokio::spawn(async move {
            // Pipelined: all sends first, then the acks.
            let ids: Vec<Uuid> = (0..N).map(|_| Uuid::new_v4()).collect();
            for (i, id) in ids.iter().enumerate() {
                c.send_publish(&ch, *id, &json!({ "n": i })).await.unwrap();
            }
            let mut seqs = Vec::new();
            for id in &ids {
                match c.publish_result(*id).await.unwrap() {
                    Published::Ack { seq, .. } => seqs.push(seq),
                    other => panic!("{other:?}"),
                }
            }
            (ch, ids, seqs)
        }));
    }
    let mut expected = std::collections::HashMap::new();
    for t in tasks {
        let (ch, ids, seqs) = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "acked seqs increase in send order"
        );
        expected.insert(ch, (ids, seqs));
    }
    let msgs = read_messages(&mut sub, N * channels.len(), WAIT).await;
    for ch in &channels {
        let got: Vec<_> = msgs.iter().filter(|m| &m.channel == ch).collect();
        let (ids, seqs) = &expected[ch];
        assert_eq!(got.len(), N);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.data, json!({ "n": i }), "{ch} in publish order");
            assert_eq!(m.id, ids[i]);
            assert_eq!(m.seq, seqs[i]);
        }
    }
    assert_no_message(&mut sub, Duration::from_millis(300)).await;
}

/// Publishes `n` messages pipelined in batches of 100; returns (id, seq) in order.
async fn publish_many(c: &mut Connection, channel: &str, n: usize, tag: &str) -> Vec<(Uuid, i64)> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<Uuid> = (i..(i + 100).min(n)).map(|_| Uuid::new_v4()).collect();
        for (k, id) in batch.iter().enumerate() {
            c.send_publish(channel, *id, &json!({ "tag": tag, "n": i + k }))
                .await
                .unwrap();
        }
        for id in &batch {
            match c.publish_result(*id).await.unwrap() {
                Published::Ack { seq, .. } => out.push((*id, seq)),
                other => panic!("{other:?}"),
            }
        }
        i += batch.len();
    }
    out
}

/// A subscriber misses 500 messages, resumes while a publisher keeps
/// publishing, and must see exactly the missed ones then the live ones.
async fn resume_hand_off(name: &str, extra: &[&str]) {
    let s = Server::start(&unique_prefix(name), extra);
    let ch = "chat:resume";
    let mut sub = s.connect().await;
    sub.subscribe(ch, None).await.unwrap();
    let mut p = s.connect().await;
    let first = publish_many(&mut p, ch, 5, "first").await;
    let seen = read_messages(&mut sub, 5, WAIT).await;
    assert_eq!(
        seen.iter().map(|m| m.seq).collect::<Vec<_>>(),
        first.iter().map(|x| x.1).collect::<Vec<_>>()
    );
    let last = seen.last().unwrap();
    let since = Position {
        seq: last.seq,
        epoch: last.epoch.clone(),
    };
    sub.close().await.unwrap();

    let missed = publish_many(&mut p, ch, 500, "missed").await;

    // Keep publishing while the subscriber resumes, to race the hand-off.
    let mut p2 = s.connect().await;
    let live = tokio::spawn(async move {
        let mut out = Vec::new();
        for i in 0..300 {
            let id = Uuid::new_v4();
            match p2
                .publish(ch, id, &json!({ "tag": "live", "n": i }))
                .await
                .unwrap()
            {
                Published::Ack { seq, .. } => out.push((id, seq)),
                other => panic!("{other:?}"),
            }
        }
        out
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut sub = s.connect().await;
    let (_pos, recovered) = sub.subscribe(ch, Some(&since)).await.unwrap();
    assert!(recovered);
    let live = live.await.unwrap();
    let expected: Vec<(Uuid, i64)> = missed.iter().chain(live.iter()).cloned().collect();
    let got = read_messages(&mut sub, expected.len(), WAIT).await;
    let got: Vec<(Uuid, i64)> = got.iter().map(|m| (m.id, m.seq)).collect();
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no duplicates");
    assert_eq!(got.len(), expected.len(), "nothing lost");
    assert_eq!(
        got, expected,
        "exactly the missed messages, then the live ones, in order"
    );
    assert_no_message(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_from_the_recent_cache() {
    resume_hand_off("resume-cache", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_from_kafka() {
    // A ring of 20 messages forces the catch-up to read Kafka first.
    resume_hand_off("resume-kafka", &["--recent-messages", "20"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_server_restarts() {
    let prefix = unique_prefix("restart");
    let ch = "chat:restart";
    let a = Server::start(&prefix, &[]);
    let mut sub = a.connect().await;
    let (pos, _) = sub.subscribe(ch, None).await.unwrap();
    let mut p = a.connect().await;
    let before = publish_many(&mut p, ch, 100, "before").await;
    let seen = read_messages(&mut sub, 100, WAIT).await;
    assert_eq!(seen.len(), 100);
    // The subscriber saw 40 of them when the server went away.
    let since = Position {
        seq: seen[39].seq,
        epoch: seen[39].epoch.clone(),
    };
    assert_eq!(since.epoch, pos.epoch);
    drop(sub);
    drop(p);
    a.stop();

    let b = Server::start(&prefix, &[]);
    let mut p = b.connect().await;
    let after = publish_many(&mut p, ch, 100, "after").await;
    let mut sub = b.connect().await;
    let (pos_b, recovered) = sub.subscribe(ch, Some(&since)).await.unwrap();
    assert!(
        recovered,
        "same topic incarnation, so the position is still good"
    );
    assert_eq!(pos_b.epoch, pos.epoch, "the epoch survives a restart");
    let expected: Vec<_> = before[40..].iter().chain(after.iter()).cloned().collect();
    let got = read_messages(&mut sub, expected.len(), WAIT).await;
    assert_eq!(
        got.iter().map(|m| (m.id, m.seq)).collect::<Vec<_>>(),
        expected
    );
    // And live delivery continues on the new process.
    let (id, seq) = publish_ok(&mut p, ch, json!("live")).await;
    let m = read_messages(&mut sub, 1, WAIT).await;
    assert_eq!((m[0].id, m[0].seq), (id, seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_publish_id_appends_once() {
    let s = Server::start(&unique_prefix("dedup"), &[]);
    let ch = "chat:dedup";
    let mut p = s.connect().await;
    let id = Uuid::new_v4();
    let first = p.publish(ch, id, &json!("once")).await.unwrap();
    let Published::Ack {
        seq,
        duplicate: false,
    } = first
    else {
        panic!("{first:?}")
    };
    let again = p.publish(ch, id, &json!("once")).await.unwrap();
    assert_eq!(
        again,
        Published::Ack {
            seq,
            duplicate: true
        }
    );

    // Two sends racing each other, before either is acked.
    let racing = Uuid::new_v4();
    p.send_publish(ch, racing, &json!("race")).await.unwrap();
    p.send_publish(ch, racing, &json!("race")).await.unwrap();
    let a = p.publish_result(racing).await.unwrap();
    let b = p.publish_result(racing).await.unwrap();
    let (Published::Ack { seq: sa, .. }, Published::Ack { seq: sb, .. }) = (&a, &b) else {
        panic!("{a:?} {b:?}")
    };
    assert_eq!(sa, sb, "both answers carry the same seq");

    // A retry from another connection is deduplicated too.
    let mut q = s.connect().await;
    assert_eq!(
        q.publish(ch, id, &json!("once")).await.unwrap(),
        Published::Ack {
            seq,
            duplicate: true
        }
    );

    let records = read_topic(&format!("{}chat", s.prefix));
    let count = |want: Uuid| {
        records
            .iter()
            .filter(|r| {
                use rdkafka::message::{Headers, Message};
                r.headers().is_some_and(|h| {
                    h.iter().any(|x| {
                        x.key == "herald-id" && x.value == Some(want.to_string().as_bytes())
                    })
                })
            })
            .count()
    };
    assert_eq!(count(id), 1, "one record for the retried id");
    assert_eq!(count(racing), 1, "one record for the racing id");
    assert_eq!(records.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_foreign_positions_are_not_recovered() {
    let s = Server::start(&unique_prefix("positions"), &[]);
    let ch = "chat:pos";
    let mut p = s.connect().await;
    publish_many(&mut p, ch, 3, "x").await;
    let mut c = s.connect().await;
    let (pos, _) = c.subscribe(ch, None).await.unwrap();
    assert!(pos.seq >= 2);
    c.unsubscribe(ch).await.unwrap();

    let not_recoverable = [
        // Another incarnation's position.
        Position {
            seq: 1,
            epoch: "not-this-one".into(),
        },
        // Past the end of the log: cannot come from this incarnation.
        Position {
            seq: pos.seq + 1000,
            epoch: pos.epoch.clone(),
        },
        // Before the log start (offsets below -1 never exist).
        Position {
            seq: -7,
            epoch: pos.epoch.clone(),
        },
    ];
    for since in &not_recoverable {
        let (now, recovered) = c.subscribe(ch, Some(since)).await.unwrap();
        assert!(!recovered, "{since:?}");
        assert_eq!(now, pos, "the reply carries the current position");
        c.unsubscribe(ch).await.unwrap();
    }

    // From the very beginning is fine: everything is retained.
    let (_, recovered) = c
        .subscribe(
            ch,
            Some(&Position {
                seq: -1,
                epoch: pos.epoch.clone(),
            }),
        )
        .await
        .unwrap();
    assert!(recovered);
    let all = read_messages(&mut c, 3, WAIT).await;
    assert_eq!(all.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_frames_and_the_connection_keeps_working() {
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::start(&unique_prefix("badinput"), &["--max-message-bytes", "1000"]);
    let mut c = s.connect().await;
    let cases: &[(&str, &str)] = &[
        ("not json", "bad_json"),
        ("[1,2,3]", "bad_json"),
        ("{}", "unknown_type"),
        (r#"{"type":"shout"}"#, "unknown_type"),
        (r#"{"type":"subscribe"}"#, "bad_frame"),
        (
            r#"{"type":"subscribe","channel":"chat:a","bogus":true}"#,
            "bad_frame",
        ),
        (
            r#"{"type":"publish","channel":"chat:a","id":"not-a-uuid","data":1}"#,
            "bad_frame",
        ),
        (
            r#"{"type":"ack","channel":"chat:a","seq":"x"}"#,
            "bad_frame",
        ),
        (r#"{"type":"subscribe","channel":"nocolon"}"#, "bad_channel"),
        (
            r#"{"type":"subscribe","channel":"zzz:a"}"#,
            "unknown_namespace",
        ),
        (
            r#"{"type":"unsubscribe","channel":"chat:never"}"#,
            "not_subscribed",
        ),
        (
            r#"{"type":"ack","channel":"chat:never","seq":1}"#,
            "not_subscribed",
        ),
    ];
    for (text, want) in cases {
        c.send_text(*text).await.unwrap();
        match c.next_frame().await.unwrap() {
            Frame::Error { code, .. } => assert_eq!(&code, want, "reply to {text}"),
            other => panic!("reply to {text}: {other:?}"),
        }
    }
    c.send_message(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    match c.next_frame().await.unwrap() {
        Frame::Error { code, .. } => assert_eq!(code, "binary_unsupported"),
        other => panic!("{other:?}"),
    }
    let deep = format!(
        r#"{{"type":"publish","channel":"chat:a","id":"{}","data":{}{}}}"#,
        Uuid::new_v4(),
        "[".repeat(5000),
        "]".repeat(5000)
    );
    c.send_text(deep).await.unwrap();
    match c.next_frame().await.unwrap() {
        Frame::Error { code, .. } => assert_eq!(code, "bad_frame"),
        other => panic!("{other:?}"),
    }
    // Oversized data and unknown namespaces are nacked, not acked.
    let id = Uuid::new_v4();
    let big = json!("x".repeat(2000));
    match c.publish("chat:a", id, &big).await.unwrap() {
        Published::Nack { code, .. } => assert_eq!(code, "too_large"),
        other => panic!("{other:?}"),
    }
    match c.publish("zzz:a", Uuid::new_v4(), &json!(1)).await.unwrap() {
        Published::Nack { code, .. } => assert_eq!(code, "unknown_namespace"),
        other => panic!("{other:?}"),
    }
    // Subscribing twice is refused, the first subscription stays.
    c.subscribe("chat:a", None).await.unwrap();
    match c.subscribe("chat:a", None).await {
        Err(herald_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, "already_subscribed")
        }
        other => panic!("{other:?}"),
    }
    // Still a working connection.
    c.ping().await.unwrap();
    let (_, seq) = publish_ok(&mut c, "chat:a", json!("still here")).await;
    let m = read_messages(&mut c, 1, WAIT).await;
    assert_eq!(m[0].seq, seq);
    assert_eq!(m[0].data, json!("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_graceful_shutdown() {
    let s = Server::start(&unique_prefix("ops"), &[]);
    assert_eq!(http_get(&s.http, "/healthz").await.0, 200);
    assert_eq!(http_get(&s.http, "/readyz").await.0, 200);
    let mut c = s.connect().await;
    c.subscribe("chat:ops", None).await.unwrap();
    publish_ok(&mut c, "chat:ops", json!(1)).await;
    read_messages(&mut c, 1, WAIT).await;
    let (status, body) = http_get(&s.http, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "herald_edge_connections",
        "herald_publish_acks_total",
        "herald_publish_latency_seconds",
        "herald_hub_deliveries_total",
        "herald_edge_frames_in_total",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}");
    }
    // SIGTERM: the client is told the server is going away (1001).
    s.stop();
    loop {
        match c.next_frame_within(Duration::from_secs(10)).await {
            Ok(_) => continue,
            Err(herald_client::ClientError::Closed(code)) => {
                assert_eq!(code, Some(1001));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// `log.format = "json"`: every line herald writes is a JSON object, and the
/// lines of an HTTP request carry its `request_id`, which the answer echoes
/// in `X-Request-Id` (the client's own id when plausible, else a new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let prefix = unique_prefix("jsonlog");
    let s = Server::start_env(
        &prefix,
        &["--log-format", "json"],
        &[("HERALD_LOG", "info,herald_edge::api=debug")],
    );
    let host = s.http.trim_start_matches("http://").to_owned();
    let get = |extra: &'static str| {
        let host = host.clone();
        async move {
            let mut c = tokio::net::TcpStream::connect(&host)
                .await
                .expect("connect");
            c.write_all(
                format!("GET /api/history?channel=chat:x HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
            let mut buf = Vec::new();
            c.read_to_end(&mut buf).await.expect("read");
            let text = String::from_utf8_lossy(&buf).into_owned();
            let id = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("x-request-id: ")
                        .map(|v| v.trim().to_owned())
                })
                .unwrap_or_default();
            (text, id)
        }
    };
    let (text, id) = get("X-Request-Id: test-req-42\r\n").await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(id, "test-req-42");
    // An implausible id is replaced, not logged.
    let (_, id2) = get("X-Request-Id: {\"no\": 1}\r\n").await;
    assert_eq!(id2.len(), 32, "generated id: {id2:?}");
    let (_, id3) = get("").await;
    assert!(id3.len() == 32 && id3 != id2);

    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = s.log();
        if log.contains(&id3) || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "Namespace ready"));
    for want in [&id, &id2, &id3] {
        let line = lines
            .iter()
            .find(|l| l["span"]["request_id"] == want.as_str())
            .unwrap_or_else(|| panic!("no line with request_id {want}: {log}"));
        assert_eq!(line["message"], "API request refused");
        assert_eq!(line["status"], 401);
        assert_eq!(line["span"]["path"], "/api/history");
    }
}
