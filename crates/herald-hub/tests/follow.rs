//! Partitions without local subscribers stop being followed after a grace
//! period (`Hub::retire_idle`), and come back on the next subscribe without
//! losing anything in between.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald_hub::Outbox;
use herald_log::RecordSink;

#[tokio::test]
async fn an_idle_partition_is_retired_and_a_later_resume_reads_the_gap_from_the_log() {
    let log = Arc::new(MemLog::default());
    let h = hub(log.clone(), 100);
    let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
    h.subscribe(&tx, TOPIC, "chat:a", None).await.unwrap();
    for i in 0..3 {
        h.on_record(log.append("chat:a", i));
    }
    assert_eq!(seqs(&drain(&mut rx).await), vec![0, 1, 2]);

    // Subscribed: never retired, however long it waits.
    assert_eq!(h.retire_idle(Duration::ZERO), 0);
    assert_eq!(h.retire_idle(Duration::ZERO), 0);
    assert_eq!(*log.followed.lock().unwrap(), Some(0));

    assert!(h.unsubscribe(&tx, TOPIC, "chat:a"));
    // Idle but within the grace period: still followed.
    assert_eq!(h.retire_idle(Duration::from_secs(3600)), 0);
    assert_eq!(h.retire_idle(Duration::from_secs(3600)), 0);
    assert_eq!(*log.followed.lock().unwrap(), Some(0));
    // The first sweep past the grace period retires it.
    assert_eq!(h.retire_idle(Duration::ZERO), 1);
    assert_eq!(*log.followed.lock().unwrap(), None);
    assert_eq!(h.tail_seq(TOPIC, "chat:a"), None);

    // Written while nobody here followed the partition.
    log.append("chat:a", 3);
    log.append("chat:b", 4);
    log.append("chat:a", 5);
    // A record fetched before the retirement arrives late: ignored.
    h.on_record(log.records.lock().unwrap()[3].clone());

    let (tx2, mut rx2) = Outbox::new(2, 100, 1 << 20);
    let out = h
        .subscribe(&tx2, TOPIC, "chat:a", Some(&position(2)))
        .await
        .unwrap();
    assert!(out.recovered);
    assert_eq!(out.caught_up, 2);
    // Followed again from the high watermark at the new start.
    assert_eq!(*log.followed.lock().unwrap(), Some(6));
    h.on_record(log.append("chat:a", 6));
    assert_eq!(seqs(&drain(&mut rx2).await), vec![3, 5, 6]);
}

/// A resume that is still catching up from the log has not registered yet;
/// the partition must not be retired under it, or its live messages would
/// never come (nobody would follow the partition it registers in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_not_retired_while_a_subscribe_is_catching_up() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let log = Arc::new(MemLog {
        read_gate: Some(gate.clone()),
        ..MemLog::default()
    });
    for i in 0..5 {
        log.append("chat:a", i);
    }
    let h = hub(log.clone(), 2);
    let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
    let sub = {
        let (h, tx) = (h.clone(), tx.clone());
        tokio::spawn(async move {
            h.subscribe(&tx, TOPIC, "chat:a", Some(&position(0)))
                .await
                .map(|o| o.caught_up)
        })
    };
    // Wait until the subscribe is blocked in its catch-up read.
    for _ in 0..200 {
        if log.followed.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!sub.is_finished());
    assert_eq!(h.retire_idle(Duration::ZERO), 0);
    assert_eq!(h.retire_idle(Duration::ZERO), 0);
    assert_eq!(*log.followed.lock().unwrap(), Some(5));

    gate.add_permits(100);
    assert_eq!(sub.await.unwrap().unwrap(), 4);
    h.on_record(log.append("chat:a", 5));
    assert_eq!(seqs(&drain(&mut rx).await), vec![1, 2, 3, 4, 5]);
    // Registered now: still not retired.
    assert_eq!(h.retire_idle(Duration::ZERO), 0);
}
