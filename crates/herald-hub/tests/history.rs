//! History pages against an in-memory log: every mode, every bound, paging
//! to the end, and the ring answering when it covers the range. The real
//! broker runs the same requests in `crates/herald/tests/e2e/history.rs`.

mod common;

use std::sync::Arc;

use common::*;
use herald_hub::{HistoryLimits, HistoryPage, Hub, Outbox};
use herald_log::RecordSink;
use herald_proto::HistoryFrom;

fn limits(limit: usize) -> HistoryLimits {
    HistoryLimits {
        limit,
        max_bytes: 1 << 20,
        max_scan: 1_000_000,
    }
}

fn seqs_of(p: &HistoryPage) -> Vec<i64> {
    p.messages.iter().map(|d| d.seq).collect()
}

/// 100 records alternating `a`, `b`, `b`: `a` at offsets 0, 3, 6, ...
fn log_abb() -> Arc<MemLog> {
    let log = Arc::new(MemLog::default());
    for i in 0..100 {
        log.append(if i % 3 == 0 { "chat:a" } else { "chat:b" }, i);
    }
    log
}

fn a_seqs() -> Vec<i64> {
    (0..100).filter(|i| i % 3 == 0).collect()
}

async fn page(hub: &Hub, from: HistoryFrom, l: HistoryLimits) -> HistoryPage {
    hub.history(TOPIC, "chat:a", from, l).await.unwrap()
}

#[tokio::test]
async fn forward_pages_cover_everything_once() {
    let hub = hub(log_abb(), 10);
    let mut since = -1;
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let p = page(&hub, HistoryFrom::AfterSeq(since), limits(7)).await;
        assert!(p.messages.len() <= 7);
        all.extend(seqs_of(&p));
        since = p.next;
        pages += 1;
        if p.done {
            break;
        }
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(all, a_seqs());
    assert_eq!(since, 99);
}

#[tokio::test]
async fn latest_pages_walk_back_to_the_start() {
    let hub = hub(log_abb(), 10);
    let first = page(&hub, HistoryFrom::Latest { before_seq: None }, limits(5)).await;
    assert_eq!(seqs_of(&first), vec![87, 90, 93, 96, 99]);
    assert!(!first.done);
    assert_eq!(first.next, 85, "the older page holds seq 84 and below");
    let mut all = seqs_of(&first);
    let mut before = first.next;
    loop {
        let p = page(
            &hub,
            HistoryFrom::Latest {
                before_seq: Some(before),
            },
            limits(5),
        )
        .await;
        let mut s = seqs_of(&p);
        s.extend(all);
        all = s;
        before = p.next;
        if p.done {
            break;
        }
    }
    assert_eq!(all, a_seqs());
}

#[tokio::test]
async fn since_time_uses_the_log_timestamps() {
    // MemLog stamps offset * 10 ms.
    let hub = hub(log_abb(), 10);
    let p = page(&hub, HistoryFrom::SinceTime(505), limits(3)).await;
    assert_eq!(seqs_of(&p), vec![51, 54, 57]);
    let p = page(&hub, HistoryFrom::SinceTime(10_000), limits(3)).await;
    assert!(p.messages.is_empty());
    assert!(p.done);
}

#[tokio::test]
async fn scan_budget_stops_a_sparse_page_and_says_where_to_go_on() {
    let log = Arc::new(MemLog::default());
    for i in 0..5_000 {
        log.append(if i == 4_321 { "chat:a" } else { "chat:b" }, i);
    }
    let hub = hub(log, 10);
    let l = HistoryLimits {
        max_scan: 1_000,
        ..limits(10)
    };
    let p = page(&hub, HistoryFrom::AfterSeq(-1), l).await;
    assert!(p.messages.is_empty());
    assert!(!p.done);
    assert_eq!(p.next, 999);
    let mut since = p.next;
    let mut found = Vec::new();
    loop {
        let p = page(&hub, HistoryFrom::AfterSeq(since), l).await;
        found.extend(seqs_of(&p));
        since = p.next;
        if p.done {
            break;
        }
    }
    assert_eq!(found, vec![4_321]);
}

#[tokio::test]
async fn byte_budget_cuts_pages_but_never_to_nothing() {
    let hub = hub(log_abb(), 10);
    let one = page(&hub, HistoryFrom::AfterSeq(-1), limits(1)).await;
    let size = one.messages[0].text.len();
    let l = HistoryLimits {
        max_bytes: size * 2 + size / 2,
        ..limits(50)
    };
    let p = page(&hub, HistoryFrom::AfterSeq(-1), l).await;
    assert_eq!(seqs_of(&p), vec![0, 3]);
    assert_eq!(p.next, 5, "the next page starts at seq 6");
    let tiny = HistoryLimits {
        max_bytes: 1,
        ..limits(50)
    };
    let p = page(&hub, HistoryFrom::Latest { before_seq: None }, tiny).await;
    assert_eq!(seqs_of(&p), vec![99]);
    assert_eq!(p.next, 97, "the older page holds seq 96 and below");
}

#[tokio::test]
async fn retention_gap_is_reported() {
    let log = log_abb();
    *log.low.lock().unwrap() = 30;
    let hub = hub(log, 10);
    let p = page(&hub, HistoryFrom::AfterSeq(5), limits(2)).await;
    assert!(p.truncated);
    assert_eq!(seqs_of(&p), vec![30, 33]);
    let p = page(
        &hub,
        HistoryFrom::Latest {
            before_seq: Some(10),
        },
        limits(2),
    )
    .await;
    assert!(p.truncated && p.done && p.messages.is_empty());
}

#[tokio::test]
async fn the_ring_answers_when_it_covers_the_range() {
    let log = Arc::new(MemLog::default());
    let hub = hub(log.clone(), 1_000);
    // A subscriber makes the hub follow the partition from offset 0.
    let (outbox, _rx) = Outbox::new(1, 100, 1 << 20);
    hub.subscribe(&outbox, TOPIC, "chat:z", None).await.unwrap();
    for i in 0..30 {
        let r = log.append(if i % 3 == 0 { "chat:a" } else { "chat:b" }, i);
        hub.on_record(r);
    }
    let p = page(&hub, HistoryFrom::AfterSeq(-1), limits(100)).await;
    assert!(p.from_cache);
    assert_eq!(
        seqs_of(&p),
        (0..30).filter(|i| i % 3 == 0).collect::<Vec<_>>()
    );
    let p = page(&hub, HistoryFrom::Latest { before_seq: None }, limits(2)).await;
    assert!(p.from_cache);
    assert_eq!(seqs_of(&p), vec![24, 27]);
}
