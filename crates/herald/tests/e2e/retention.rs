//! Retention moving the log start while a client catches up, on the real
//! broker: the client must never be handed the messages after the hole as if
//! nothing were missing (`recovered: true` with a silent gap).
//!
//! The log start is moved with Kafka's DeleteRecords, which is what
//! retention does as far as a reader can tell (the records below the new log
//! start are gone), at a moment the test chooses: the broker's own retention
//! runs on `log.retention.check.interval.ms` (5 minutes by default, a static
//! broker setting) and only deletes closed segments, so waiting for it would
//! make the test slow and its timing the broker's.

use crate::common;

use std::time::Duration;

use common::*;
use herald_client::{ClientError, Frame, Position};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

const TOTAL: usize = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_during_a_catch_up_end_it_with_4008_and_no_silent_gap() {
    let s = Server::start(
        &unique_prefix("retention"),
        &[
            "--queue-bytes",
            &(256usize << 10).to_string(),
            // The catch-up comes from Kafka, not the ring.
            "--recent-messages",
            "20",
            "--publish-rate",
            "0",
        ],
    );
    let ch = "chat:old";
    let mut first = s.connect().await;
    let (pos, _) = first.subscribe(ch, None).await.expect("subscribe");
    first.close().await.ok();
    // More records than one catch-up read (1,000), too many bytes for the
    // queue and the socket buffers: the catch-up stalls inside its first
    // read and needs a second one after the deletion.
    let pad = "r".repeat(16_000);
    let mut p = s.connect().await;
    let mut acked = Vec::new();
    for i in 0..TOTAL {
        acked.push(
            publish_ok(&mut p, ch, json!({ "i": i, "pad": pad }))
                .await
                .1,
        );
    }
    // A slow reader resumes from the start and stops reading: the catch-up
    // stalls on its full queue (256 KiB) and socket, far from the end.
    let mut slow = s.connect().await;
    let start = Position {
        seq: -1,
        epoch: pos.epoch.clone(),
    };
    let (_, recovered) = slow.subscribe(ch, Some(&start)).await.expect("resume");
    assert!(recovered);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Retention removes everything published so far.
    delete_all(&format!("{}chat", s.prefix)).await;

    // The reader wakes up: what it gets must be a gap-free prefix, then a cut.
    let mut seqs = Vec::new();
    let end = loop {
        match slow.next_frame_within(Duration::from_secs(30)).await {
            Ok(Frame::Message(m)) => seqs.push(m.seq),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    eprintln!(
        "received {} of {TOTAL} before the cut ({end}); close code {:?}",
        seqs.len(),
        slow.close_code()
    );
    assert!(
        !matches!(end, ClientError::Timeout(_)),
        "the connection was neither cut nor finished"
    );
    assert_eq!(
        seqs,
        acked[..seqs.len()].to_vec(),
        "every message received is the next one: no silent gap"
    );
    assert!(seqs.len() < TOTAL, "the deletion happened mid catch-up");
    assert_eq!(slow.close_code(), Some(4008));
    // Its resume from the last message it got is told the rest is gone.
    let mut again = s.connect().await;
    let last = Position {
        seq: seqs.last().copied().unwrap_or(-1),
        epoch: pos.epoch.clone(),
    };
    let (_, recovered) = again.subscribe(ch, Some(&last)).await.expect("resume");
    assert!(!recovered, "the resume must say the messages are gone");
}

/// Moves the log start of every partition of `topic` to its end.
async fn delete_all(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for part in t.partitions() {
            tpl.add_partition_offset(topic, part.id(), Offset::End)
                .expect("partition");
        }
    }
    let res = admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete records");
    for e in res.elements() {
        assert!(e.error().is_ok(), "delete records: {:?}", e.error());
    }
}
