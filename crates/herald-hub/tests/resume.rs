//! The resume hand-off against an in-memory log: pure logic, deterministic
//! where it can be, and raced on purpose where it matters. The same scenarios
//! run against the real broker in `crates/herald/tests/e2e/core.rs`.

mod common;

use std::sync::Arc;

use common::*;
use herald_hub::{HubError, Outbound, Outbox};
use herald_log::RecordSink;
use herald_proto::Position;

#[tokio::test]
async fn live_subscriber_gets_channel_messages_in_order() {
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 100);
    let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
    let out = h.subscribe(&tx, TOPIC, "chat:a", None).await.unwrap();
    assert_eq!(out.position.seq, -1);
    assert_eq!(*log.followed.lock().unwrap(), Some(0));
    for i in 0..10 {
        let ch = if i % 2 == 0 { "chat:a" } else { "chat:b" };
        h.on_record(log.append(ch, i));
    }
    let got = drain(&mut rx).await;
    assert!(matches!(&got[0], Outbound::Frame(f) if f.contains("\"subscribed\"")));
    assert_eq!(seqs(&got), vec![0, 2, 4, 6, 8]);
    // A record dispatched twice (re-fetch) is delivered once.
    let again = log.records.lock().unwrap()[8].clone();
    h.on_record(again);
    assert!(drain(&mut rx).await.is_empty());
}

#[tokio::test]
async fn resume_from_the_ring_then_live() {
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 100);
    let (tx0, _rx0) = Outbox::new(0, 100, 1 << 20);
    h.subscribe(&tx0, TOPIC, "chat:z", None).await.unwrap();
    for i in 0..20 {
        let ch = if i % 2 == 0 { "chat:a" } else { "chat:b" };
        h.on_record(log.append(ch, i));
    }
    let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
    let out = h
        .subscribe(&tx, TOPIC, "chat:a", Some(&position(6)))
        .await
        .unwrap();
    assert!(out.recovered);
    assert_eq!(out.caught_up, 6);
    h.on_record(log.append("chat:a", 20));
    assert_eq!(seqs(&drain(&mut rx).await), vec![8, 10, 12, 14, 16, 18, 20]);
}

#[tokio::test]
async fn resume_from_the_log_when_the_ring_is_short() {
    let log = Arc::new(MemLog::default());
    for i in 0..40 {
        log.append(if i % 4 == 0 { "chat:a" } else { "chat:b" }, i);
    }
    // The partition is first followed now, at offset 40; the ring holds 3.
    let h = hub(log.clone(), 3);
    let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
    let out = h
        .subscribe(&tx, TOPIC, "chat:a", Some(&position(3)))
        .await
        .unwrap();
    assert!(out.recovered);
    h.on_record(log.append("chat:a", 40));
    assert_eq!(
        seqs(&drain(&mut rx).await),
        vec![4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    );
}

/// Retention deletes records a catch-up from the log still needs: the
/// subscriber is cut (it resumes with `since` and hears `recovered: false`),
/// never handed the messages after the hole as if nothing were missing.
#[tokio::test]
async fn a_catch_up_that_finds_records_deleted_cuts_instead_of_skipping() {
    let log = Arc::new(MemLog::default());
    for i in 0..40 {
        log.append(if i % 4 == 0 { "chat:a" } else { "chat:b" }, i);
    }
    let h = hub(log.clone(), 3);
    let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
    *log.delete_on_read.lock().unwrap() = Some(20);
    let res = h.subscribe(&tx, TOPIC, "chat:a", Some(&position(3))).await;
    assert!(
        matches!(res, Err(HubError::Gap { from: 4, low: 20 })),
        "{:?}",
        res.err()
    );
    assert!(tx.is_overflowed(), "the connection is cut");
    let got = drain(&mut rx).await;
    assert!(
        seqs(&got).is_empty(),
        "nothing past the hole: {:?}",
        seqs(&got)
    );
    // Its resume from the same position is told what happened.
    let (tx2, _rx2) = Outbox::new(2, 100, 1 << 20);
    let out = h
        .subscribe(&tx2, TOPIC, "chat:a", Some(&position(3)))
        .await
        .unwrap();
    assert!(!out.recovered);
}

/// Resumes `n` ring messages into a queue of `max_messages` / `max_bytes`
/// with a concurrent reader: everything arrives, paced, with no cut.
async fn assert_resume_is_paced(n: i64, max_messages: usize, max_bytes: usize) {
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 1000);
    let (tx0, _rx0) = Outbox::new(0, 1000, 1 << 20);
    h.subscribe(&tx0, TOPIC, "chat:z", None).await.unwrap();
    for i in 0..n {
        h.on_record(log.append("chat:a", i));
    }
    let (tx, mut rx) = Outbox::new(1, max_messages, max_bytes);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while (got.len() as i64) < n {
            match rx.recv().await {
                Some(Outbound::Message(d)) => got.push(d.seq),
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    let out = h
        .subscribe(&tx, TOPIC, "chat:a", Some(&position(-1)))
        .await
        .unwrap();
    assert!(out.recovered);
    assert!(
        !tx.is_overflowed(),
        "a resume is paced by the client, never a slow-consumer cut"
    );
    assert_eq!(reader.await.unwrap(), (0..n).collect::<Vec<_>>());
}

#[tokio::test]
async fn resume_larger_than_the_queue_is_chunked_not_dropped() {
    // A queue of 8 cannot take 100 pending messages in one step.
    assert_resume_is_paced(100, 8, 1 << 20).await;
}

#[tokio::test]
async fn resume_larger_than_the_byte_bound_is_chunked_not_dropped() {
    // Room for many messages, but only about two of them by bytes.
    assert_resume_is_paced(50, 1000, 400).await;
}

#[tokio::test]
async fn positions_outside_the_log_or_epoch_are_not_recovered() {
    let log = Arc::new(MemLog::default());
    for i in 0..10 {
        log.append("chat:a", i);
    }
    *log.low.lock().unwrap() = 5;
    let h = hub(log.clone(), 100);
    let (tx, _rx) = Outbox::new(1, 100, 1 << 20);
    let cases = [
        position(2),  // below the log start - 1
        position(10), // at the log end: never assigned
        position(-2),
        // Far past the end, where `seq + 1` would overflow.
        position(i64::MAX),
        position(i64::MIN),
        Position {
            seq: 7,
            epoch: "other".into(),
        },
    ];
    for p in cases {
        let out = h.subscribe(&tx, TOPIC, "chat:a", Some(&p)).await.unwrap();
        assert!(!out.recovered, "{p:?}");
        assert_eq!(out.position, position(9));
        assert!(h.unsubscribe(&tx, TOPIC, "chat:a"));
    }
    let out = h
        .subscribe(&tx, TOPIC, "chat:a", Some(&position(4)))
        .await
        .unwrap();
    assert!(out.recovered, "log start - 1 is a valid position");
}

#[tokio::test]
async fn slow_live_subscriber_is_dropped_without_stalling_others() {
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 100);
    let (slow, slow_rx) = Outbox::new(1, 2, 1 << 20);
    let (fast, mut fast_rx) = Outbox::new(2, 100, 1 << 20);
    h.subscribe(&slow, TOPIC, "chat:a", None).await.unwrap();
    h.subscribe(&fast, TOPIC, "chat:a", None).await.unwrap();
    for i in 0..10 {
        h.on_record(log.append("chat:a", i));
    }
    assert!(slow.is_overflowed());
    slow_rx.overflowed().await;
    assert_eq!(
        seqs(&drain(&mut fast_rx).await),
        (0..10).collect::<Vec<_>>()
    );
    // The slow one is out of the index: unsubscribing finds nothing.
    assert!(!h.unsubscribe(&slow, TOPIC, "chat:a"));
}

/// Records keep arriving while the catch-up runs; whatever the interleaving,
/// the subscriber sees every message after its position exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_off_under_concurrent_dispatch() {
    for round in 0..20 {
        let log = Arc::new(MemLog {
            yield_in_reads: true,
            ..MemLog::default()
        });
        for i in 0..200 {
            log.append(if i % 3 == 0 { "chat:a" } else { "chat:b" }, i);
        }
        let h = hub(log.clone(), 5 + round);
        let (tx0, _rx0) = Outbox::new(0, 10_000, 1 << 30);
        h.subscribe(&tx0, TOPIC, "chat:z", None).await.unwrap();
        let writer = {
            let (h, log) = (h.clone(), log.clone());
            tokio::spawn(async move {
                for i in 200..600 {
                    h.on_record(log.append(if i % 3 == 0 { "chat:a" } else { "chat:b" }, i));
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let (tx, mut rx) = Outbox::new(1, 10_000, 1 << 30);
        let out = h
            .subscribe(&tx, TOPIC, "chat:a", Some(&position(29)))
            .await
            .unwrap();
        assert!(out.recovered);
        writer.await.unwrap();
        let got = seqs(&drain(&mut rx).await);
        let want: Vec<i64> = (30..600).filter(|i| i % 3 == 0).collect();
        assert_eq!(got, want, "round {round}");
    }
}

/// The tail skips records (librdkafka reset a tail that fell behind the log
/// start): the partition's subscribers are cut instead of carrying on with a
/// silent gap, the ring forgets the range it no longer covers, and a resume
/// gets what the log still holds, or `recovered: false` when it is gone.
#[tokio::test]
async fn a_gap_in_the_tail_cuts_the_partitions_subscribers() {
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 100);
    let (a, mut a_rx) = Outbox::new(1, 100, 1 << 20);
    let (b, _b_rx) = Outbox::new(2, 100, 1 << 20);
    h.subscribe(&a, TOPIC, "chat:a", None).await.unwrap();
    h.subscribe(&b, TOPIC, "chat:b", None).await.unwrap();
    for i in 0..5 {
        h.on_record(log.append("chat:a", i));
    }
    // Offsets 5..=9 are written but the tail never sees them.
    for i in 5..10 {
        log.append("chat:a", i);
    }
    h.on_record(log.append("chat:a", 10));
    assert!(a.is_overflowed() && b.is_overflowed(), "both are cut");
    a_rx.overflowed().await;
    assert_eq!(seqs(&drain(&mut a_rx).await), vec![0, 1, 2, 3, 4]);
    assert!(!h.unsubscribe(&a, TOPIC, "chat:a"), "out of the index");

    // Resume from 4 while the log still has 5..: everything, from the log.
    let (c, mut c_rx) = Outbox::new(3, 100, 1 << 20);
    let out = h
        .subscribe(&c, TOPIC, "chat:a", Some(&position(4)))
        .await
        .unwrap();
    assert!(out.recovered);
    assert_eq!(seqs(&drain(&mut c_rx).await), vec![5, 6, 7, 8, 9, 10]);

    // Once the log start has moved past them, the resume says so.
    *log.low.lock().unwrap() = 8;
    let (d, _d_rx) = Outbox::new(4, 100, 1 << 20);
    let out = h
        .subscribe(&d, TOPIC, "chat:a", Some(&position(4)))
        .await
        .unwrap();
    assert!(!out.recovered);
}

/// A subscription cancelled before it registers (its connection
/// unsubscribed meanwhile) registers nothing.
#[tokio::test]
async fn a_cancelled_subscribe_registers_nothing() {
    use std::sync::atomic::AtomicBool;
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 100);
    let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
    let cancelled = AtomicBool::new(true);
    let res = h
        .subscribe_until(
            &tx,
            TOPIC,
            &herald_hub::Interest::channel("chat:a"),
            None,
            false,
            &cancelled,
        )
        .await;
    assert!(matches!(res, Err(HubError::Closed)), "{:?}", res.err());
    h.on_record(log.append("chat:a", 1));
    assert!(drain(&mut rx).await.is_empty(), "nothing delivered");
}
