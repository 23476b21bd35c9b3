//! Limits on input: publish rate, connections per IP and per node,
//! subscriptions per connection, frame size. Each refusal has its documented
//! code, and nothing refused reaches Kafka.

use crate::common;

use common::*;
use herald_client::{Connection, Frame, Published};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_the_rate_limit_are_nacked_with_a_retry_hint() {
    let s = Server::start(
        &unique_prefix("rate"),
        &["--publish-rate", "5", "--publish-burst", "5"],
    );
    let mut c = s.connect().await;
    let ids: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        c.send_publish("chat:rate", *id, &json!(1)).await.unwrap();
    }
    let (mut acked, mut limited) = (0, 0);
    for id in &ids {
        match c.publish_result(*id).await.unwrap() {
            Published::Ack { .. } => acked += 1,
            Published::Nack { code, .. } => {
                assert_eq!(code, "rate_limited");
                limited += 1;
            }
        }
    }
    assert!((5..30).contains(&acked), "acked {acked}");
    assert_eq!(acked + limited, 30);
    // The raw frame carries the retry hint.
    let id = Uuid::new_v4();
    let mut raw = s.connect().await;
    for _ in 0..10 {
        raw.send_publish("chat:rate", Uuid::new_v4(), &json!(1))
            .await
            .unwrap();
    }
    raw.send_publish("chat:rate", id, &json!(1)).await.unwrap();
    let hint = match raw.publish_result(id).await.unwrap() {
        Published::Nack { code, reason } => (code, reason),
        Published::Ack { .. } => panic!("the 11th publish in a burst of 5 was accepted"),
    };
    assert_eq!(hint.0, "rate_limited");
    // Nothing nacked was appended.
    let records = read_topic(&format!("{}chat", s.prefix));
    let accepted = records.len();
    assert!(
        accepted <= acked + 5,
        "only acked publishes are in Kafka ({accepted} records)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_limit_get_429() {
    let s = Server::start(&unique_prefix("perip"), &["--max-connections-per-ip", "3"]);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(s.connect().await);
    }
    match tokio_tungstenite::connect_async(&s.url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        Ok(_) => panic!("a 4th connection from one IP was accepted"),
        Err(e) => panic!("{e}"),
    }
    // Closing one frees its slot.
    open.pop().unwrap().close().await.unwrap();
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(c) = Connection::connect(&s.url).await {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ok.expect("a slot was freed").ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_node_limit_get_503() {
    let s = Server::start(&unique_prefix("maxconn"), &["--max-connections", "2"]);
    let _a = s.connect().await;
    let _b = s.connect().await;
    match tokio_tungstenite::connect_async(&s.url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        Ok(_) => panic!("a 3rd connection was accepted"),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_limited() {
    let s = Server::start(&unique_prefix("maxsubs"), &["--max-subscriptions", "2"]);
    let mut c = s.connect().await;
    c.subscribe("chat:s1", None).await.unwrap();
    c.subscribe("chat:s2", None).await.unwrap();
    match c.subscribe("chat:s3", None).await {
        Err(herald_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, "too_many_subscriptions")
        }
        other => panic!("{other:?}"),
    }
    c.unsubscribe("chat:s1").await.unwrap();
    c.subscribe("chat:s3", None).await.unwrap();
    // Unknown frames leave the connection usable.
    c.send_text(r#"{"type":"ping"}"#).await.unwrap();
    assert!(matches!(c.next_frame().await.unwrap(), Frame::Pong));
}

/// The outbound byte bound holds for catch-up too, not only for live
/// deliveries: a client that resumes from the start of a channel of large
/// messages and stops reading makes the node queue at most `queue_bytes` for
/// it (it used to queue up to `queue_messages` messages of any size), and
/// once it reads it gets everything, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catch_up_to_a_client_that_stops_reading_stays_within_the_byte_bound() {
    const QUEUE_BYTES: usize = 1 << 20;
    let s = Server::start(
        &unique_prefix("catchupbytes"),
        &[
            "--queue-bytes",
            &QUEUE_BYTES.to_string(),
            // Most of the catch-up comes from Kafka, not the ring.
            "--recent-messages",
            "20",
            "--publish-rate",
            "0",
        ],
    );
    let ch = "chat:big";
    let mut first = s.connect().await;
    let (pos, _) = first.subscribe(ch, None).await.unwrap();
    // Only the epoch is needed; the gauge below counts every connection.
    first.close().await.unwrap();
    let pad = "z".repeat(60_000);
    let mut p = s.connect().await;
    let mut acked = Vec::new();
    for i in 0..300 {
        acked.push(publish_ok(&mut p, ch, json!({ "i": i, "pad": pad })).await);
    }
    let mut never = s.connect().await;
    let start = herald_client::Position {
        seq: -1,
        epoch: pos.epoch.clone(),
    };
    never.subscribe(ch, Some(&start)).await.unwrap();
    let mut max_queued = 0f64;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let m = http_get(&s.http, "/metrics").await.1;
        max_queued = max_queued.max(gauge(&m, "herald_hub_outbound_queued_bytes"));
    }
    eprintln!("catch-up to a stalled reader: 300 x 60 KB, max queued bytes {max_queued}");
    assert!(max_queued > 0.0, "the catch-up queued something");
    assert!(
        max_queued <= (QUEUE_BYTES + 64 * 1024) as f64,
        "queued bytes {max_queued} exceed the bound {QUEUE_BYTES}"
    );
    // Reading now, it gets every message once, in order.
    let got = read_messages(&mut never, 300, std::time::Duration::from_secs(60)).await;
    let seqs: Vec<i64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, acked.iter().map(|a| a.1).collect::<Vec<_>>());
}
