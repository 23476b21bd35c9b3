//! A cold partition's ring is filled back from the log once, by the first
//! resume that needs it; the other resumes wait for that read and are served
//! from the ring (docs/benchmarks.md, P5 cold).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use herald_hub::Outbox;
use herald_log::RecordSink;

fn channel(i: i64) -> &'static str {
    if i % 2 == 0 {
        "chat:a"
    } else {
        "chat:b"
    }
}

/// Ten clients resume at once onto a node that has just started following
/// the partition: the log is read once (40 records in reads of 7), not once
/// per client, and every client gets each of its messages once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_onto_a_cold_partition_reads_the_log_once() {
    let log = Arc::new(MemLog {
        yield_in_reads: true,
        ..MemLog::default()
    });
    for i in 0..40 {
        log.append(channel(i), i);
    }
    let h = hub(log.clone(), 100);
    let mut tasks = Vec::new();
    for k in 0..10i64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = Outbox::new(k as u64, 100, 1 << 20);
            let out = h
                .subscribe(&tx, TOPIC, channel(k), Some(&position(k)))
                .await
                .unwrap();
            assert!(out.recovered);
            (k, tx, rx)
        }));
    }
    let mut subs = Vec::new();
    for t in tasks {
        subs.push(t.await.unwrap());
    }
    assert_eq!(
        log.reads.load(Ordering::Relaxed),
        6,
        "one fill: 40 records in reads of 7"
    );
    h.on_record(log.append("chat:a", 40));
    h.on_record(log.append("chat:b", 41));
    for (k, _tx, mut rx) in subs {
        let want: Vec<i64> = (k + 1..42).filter(|i| i % 2 == k % 2).collect();
        assert_eq!(seqs(&drain(&mut rx).await), want, "client {k}");
    }
}

/// The ring holds fewer records than the client is behind: the fill takes
/// the newest the ring holds, the catch-up reads only the older part from
/// the log, and the rest comes from the ring.
#[tokio::test]
async fn a_resume_beyond_the_filled_ring_reads_only_what_the_ring_lacks() {
    let log = Arc::new(MemLog::default());
    for i in 0..40 {
        log.append(channel(i), i);
    }
    let h = hub(log.clone(), 10);
    let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
    let out = h
        .subscribe(&tx, TOPIC, "chat:a", Some(&position(1)))
        .await
        .unwrap();
    assert!(out.recovered);
    // Fill: [30, 40) in 2 reads; catch-up: [2, 30) in 4 reads. Reading the
    // whole [2, 40) from the log as well would take 2 more.
    assert_eq!(log.reads.load(Ordering::Relaxed), 6);
    h.on_record(log.append("chat:a", 40));
    let want: Vec<i64> = (2..41).filter(|i| i % 2 == 0).collect();
    assert_eq!(seqs(&drain(&mut rx).await), want);
}

/// Live records evict part of the ring while the fill is reading: what the
/// fill read can no longer join the ring contiguously, so it is dropped and
/// the resume reads the log itself. Nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_overtaken_by_eviction_is_dropped_and_nothing_is_lost() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let log = Arc::new(MemLog {
        read_gate: Some(gate.clone()),
        ..MemLog::default()
    });
    for i in 0..20 {
        log.append(channel(i), i);
    }
    let h = hub(log.clone(), 5);
    // The partition is followed from 20 by a live subscriber.
    let (live, _live_rx) = Outbox::new(0, 1_000, 1 << 20);
    h.subscribe(&live, TOPIC, "chat:z", None).await.unwrap();
    let (tx, mut rx) = Outbox::new(1, 1_000, 1 << 20);
    let sub = {
        let (h, tx) = (h.clone(), tx.clone());
        tokio::spawn(async move { h.subscribe(&tx, TOPIC, "chat:a", Some(&position(3))).await })
    };
    // Wait until the fill's first read is blocked at the gate.
    while log.reads.load(Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    // Six live records: the ring of five evicts its oldest.
    for i in 20..26 {
        h.on_record(log.append(channel(i), i));
    }
    gate.add_permits(1_000);
    let out = sub.await.unwrap().unwrap();
    assert!(out.recovered);
    h.on_record(log.append("chat:a", 26));
    let want: Vec<i64> = (4..27).filter(|i| i % 2 == 0).collect();
    assert_eq!(seqs(&drain(&mut rx).await), want);
}

/// Records deleted by retention inside the range the fill reads: the ring
/// starts after the hole, and a resume from before it is told it was not
/// recovered rather than handed a gap.
#[tokio::test]
async fn a_fill_across_deleted_records_starts_the_ring_after_the_hole() {
    let log = Arc::new(MemLog::default());
    for i in 0..40 {
        log.append(channel(i), i);
    }
    let h = hub(log.clone(), 100);
    *log.delete_on_read.lock().unwrap() = Some(25);
    let (tx, _rx) = Outbox::new(1, 100, 1 << 20);
    let out = h
        .subscribe(&tx, TOPIC, "chat:a", Some(&position(3)))
        .await
        .unwrap();
    assert!(!out.recovered, "offsets 4..25 are gone");
    let (tx2, mut rx2) = Outbox::new(2, 100, 1 << 20);
    let out = h
        .subscribe(&tx2, TOPIC, "chat:a", Some(&position(25)))
        .await
        .unwrap();
    assert!(out.recovered);
    let want: Vec<i64> = (26..40).filter(|i| i % 2 == 0).collect();
    assert_eq!(seqs(&drain(&mut rx2).await), want);
}

/// A resume waiting on the fill is handed each piece as the fill decodes it,
/// not all of it after the fill (docs/benchmarks.md, P4 cold): with the
/// fill's second read held at the gate, the messages of its first read are
/// already queued. Then every message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_is_fed_while_the_fill_still_reads() {
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    let log = Arc::new(MemLog {
        read_gate: Some(gate.clone()),
        ..MemLog::default()
    });
    for i in 0..40 {
        log.append(channel(i), i);
    }
    let h = hub(log.clone(), 100);
    let (tx, mut rx) = Outbox::new(1, 1_000, 1 << 20);
    let sub = {
        let (h, tx) = (h.clone(), tx.clone());
        tokio::spawn(async move { h.subscribe(&tx, TOPIC, "chat:a", Some(&position(-1))).await })
    };
    // The first read is [0, 7): chat:a's 0, 2, 4 and 6, after the reply.
    let mut early = Vec::new();
    let wait = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while early.len() < 4 {
            match rx.recv().await {
                Some(herald_hub::Outbound::Message(d)) => early.push(d.seq),
                Some(_) => {}
                None => break,
            }
        }
    });
    assert!(
        wait.await.is_ok(),
        "the first piece was not handed over while the fill waited (got {early:?})"
    );
    assert_eq!(early, [0, 2, 4, 6]);
    assert_eq!(
        log.reads.load(Ordering::Relaxed),
        2,
        "the second read is held"
    );
    assert!(!sub.is_finished());
    gate.add_permits(1_000);
    let out = sub.await.unwrap().unwrap();
    assert!(out.recovered);
    assert_eq!(out.caught_up, 20);
    h.on_record(log.append("chat:a", 40));
    let want: Vec<i64> = (8..41).filter(|i| i % 2 == 0).collect();
    assert_eq!(seqs(&drain(&mut rx).await), want);
}
