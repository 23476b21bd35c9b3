//! A subscription's filter over tags, on every path a message takes to it:
//! live dispatch, a resume from the ring, from the log (a short ring) and
//! from the fill of a cold partition. Messages that do not pass are never
//! queued, and the ones that do arrive in order, once.

mod common;

use std::sync::Arc;

use common::*;
use herald_hub::{Interest, Outbox};
use herald_log::RecordSink;
use herald_proto::{Filter, Tags};

/// Message `i` of `chat:a` is tagged `{"n": "even" | "odd"}`, every third
/// one untagged; `chat:b` shares the partition.
fn tags(i: i64) -> Option<Tags> {
    (i % 3 != 2).then(|| {
        Tags::from([(
            "n".to_string(),
            (if i % 2 == 0 { "even" } else { "odd" }).to_string(),
        )])
    })
}

fn fill(log: &MemLog, from: i64, to: i64) -> Vec<herald_log::Record> {
    (from..to)
        .map(|i| {
            if i % 4 == 3 {
                // A neighbour tagged like a match: never delivered.
                log.append_tagged("chat:b", i, tags(0))
            } else {
                log.append_tagged("chat:a", i, tags(i))
            }
        })
        .collect()
}

/// The `chat:a` seqs in `[from, to)` that are tagged `even`.
fn evens(from: i64, to: i64) -> Vec<i64> {
    (from..to)
        .filter(|i| i % 4 != 3 && i % 3 != 2 && i % 2 == 0)
        .collect()
}

fn even() -> Interest {
    Interest {
        channel: Arc::from("chat:a"),
        filter: Some(Arc::new(Filter::Eq("n".into(), "even".into()))),
        conflate: false,
    }
}

async fn subscribe(
    h: &herald_hub::Hub,
    tx: &Outbox,
    since: Option<i64>,
) -> herald_hub::SubscribeOutcome {
    let never = std::sync::atomic::AtomicBool::new(false);
    h.subscribe_until(
        tx,
        TOPIC,
        &even(),
        since.map(position).as_ref(),
        false,
        &never,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn live_and_ring_resumes_deliver_only_what_passes() {
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 1000);
    let (live, mut live_rx) = Outbox::new(1, 1000, 1 << 20);
    subscribe(&h, &live, None).await;
    for r in fill(&log, 0, 60) {
        h.on_record(r);
    }
    assert_eq!(seqs(&drain(&mut live_rx).await), evens(0, 60));
    // From the ring, after seq 20, then live.
    let (tx, mut rx) = Outbox::new(2, 1000, 1 << 20);
    let out = subscribe(&h, &tx, Some(20)).await;
    assert!(out.recovered);
    assert_eq!(out.caught_up, evens(21, 60).len() as u64);
    for r in fill(&log, 60, 70) {
        h.on_record(r);
    }
    assert_eq!(seqs(&drain(&mut rx).await), evens(21, 70));
    assert_eq!(seqs(&drain(&mut live_rx).await), evens(60, 70));
}

#[tokio::test]
async fn resumes_from_the_log_and_from_a_cold_fill_deliver_only_what_passes() {
    // The log has 60 records before the hub follows the partition: a
    // resume on the cold partition is fed from the ring's fill.
    let log = Arc::new(MemLog::default());
    fill(&log, 0, 60);
    let h = hub(log.clone(), 1000);
    let (tx, mut rx) = Outbox::new(1, 1000, 1 << 20);
    assert!(subscribe(&h, &tx, Some(5)).await.recovered);
    for r in fill(&log, 60, 64) {
        h.on_record(r);
    }
    assert_eq!(seqs(&drain(&mut rx).await), evens(6, 64));

    // A ring of 4: the catch-up reads the log.
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 4);
    let (z, _z_rx) = Outbox::new(0, 10, 1 << 20);
    h.subscribe(&z, TOPIC, "chat:z", None).await.unwrap();
    for r in fill(&log, 0, 60) {
        h.on_record(r);
    }
    let (tx, mut rx) = Outbox::new(2, 1000, 1 << 20);
    assert!(subscribe(&h, &tx, Some(-1)).await.recovered);
    for r in fill(&log, 60, 64) {
        h.on_record(r);
    }
    assert_eq!(seqs(&drain(&mut rx).await), evens(0, 64));
    assert!(log.reads.load(std::sync::atomic::Ordering::Relaxed) > 0);
}
