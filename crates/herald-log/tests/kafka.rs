//! herald-log against the real broker (`HERALD_TEST_BROKERS`, default
//! 127.0.0.1:9092; `infra/dev/test.sh` starts it).

use std::time::Duration;

use herald_log::{Kafka, LogConfig, LogRead, LogWrite};
use uuid::Uuid;

fn config() -> LogConfig {
    LogConfig {
        brokers: std::env::var("HERALD_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        topic_prefix: format!("t-log-{}.", &Uuid::new_v4().simple().to_string()[..8]),
        fetch_wait_max_ms: 5,
        publish_timeout: Duration::from_secs(10),
        ..LogConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_are_recorded_once_and_survive_reconnects() -> anyhow::Result<()> {
    let cfg = config();
    let topic = cfg.topic_for("chat");
    let k = Kafka::connect(cfg.clone())?;
    let first = k.ensure_topic(&topic, 3, &[]).await?;
    assert!(first.created);
    assert_eq!(first.partitions, 3);
    let again = k.ensure_topic(&topic, 3, &[]).await?;
    assert!(!again.created);
    assert_eq!(again.epoch, first.epoch);
    // A new client (a restarted node) reads the same epoch from the meta topic.
    let k2 = Kafka::connect(cfg)?;
    let other = k2.ensure_topic(&topic, 5, &[]).await?;
    assert_eq!(other.epoch, first.epoch);
    assert_eq!(other.partitions, 3, "the topic's real partition count wins");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_watermarks_ranges_and_time_lookups() -> anyhow::Result<()> {
    let cfg = config();
    let topic = cfg.topic_for("chat");
    let k = Kafka::connect(cfg)?;
    k.ensure_topic(&topic, 2, &[]).await?;
    let mut offsets = Vec::new();
    for i in 0..30 {
        let key = format!("chat:{}", i % 3);
        offsets.push(
            k.append_record(&topic, 1, key.as_bytes(), b"{}", &[("herald-id", b"x")])?
                .await?,
        );
        if i == 9 {
            // A gap in time between the first ten records and the rest.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(offsets, (0..30).collect::<Vec<i64>>(), "offsets are exact");
    let wm = k.watermarks(&topic, 1).await?;
    assert_eq!((wm.low, wm.high), (0, 30));
    assert_eq!(k.watermarks(&topic, 0).await?.high, 0);

    // Range reads, in batches, from the middle.
    let b = k.read_range(&topic, 1, 5, 30, 10).await?;
    assert_eq!(
        b.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (5..15).collect::<Vec<_>>()
    );
    assert_eq!(b.next, 15);
    let b = k.read_range(&topic, 1, 25, 40, 100).await?;
    assert_eq!(b.records.len(), 5, "reads stop at the end of the log");
    assert_eq!(b.next, 40);

    // Time lookups: the first record at or after a time.
    let r = k.read_range(&topic, 1, 10, 11, 1).await?;
    let t10 = r.records[0].timestamp_ms.expect("timestamp");
    assert_eq!(k.offset_for_time(&topic, 1, 0).await?, Some(0));
    assert_eq!(k.offset_for_time(&topic, 1, t10).await?, Some(10));
    let last = k.read_range(&topic, 1, 29, 30, 1).await?.records[0]
        .timestamp_ms
        .unwrap();
    assert_eq!(
        k.offset_for_time(&topic, 1, last + 60_000).await?,
        None,
        "past the last record"
    );
    assert_eq!(
        k.offset_for_time(&topic, 0, 0).await?,
        None,
        "empty partition"
    );
    Ok(())
}

/// Range reads that continue where the last one stopped reuse the reader's
/// assignment. Its prefetch may meanwhile have reached the end of the
/// partition; records appended after that must still be read, not skipped
/// because of that old end-of-partition event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continued_range_reads_miss_nothing_appended_after_the_end() -> anyhow::Result<()> {
    let cfg = config();
    let topic = cfg.topic_for("chat");
    let k = Kafka::connect(cfg)?;
    k.ensure_topic(&topic, 1, &[]).await?;
    let publish = |n: i64| {
        let k = k.clone();
        let topic = topic.clone();
        async move {
            let mut last = -1;
            for _ in 0..n {
                last = k.append_record(&topic, 0, b"chat:a", b"{}", &[])?.await?;
            }
            anyhow::Ok(last)
        }
    };
    assert_eq!(publish(50).await?, 49);
    let mut got = Vec::new();
    let mut from = 0;
    while from < 50 {
        // Stops at 20 records: the next read continues on the same reader.
        let b = k.read_range(&topic, 0, from, 50, 20).await?;
        got.extend(b.records.iter().map(|r| r.offset));
        from = b.next;
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    // The idle reader, still assigned at 50, reaches the end of the partition.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(publish(30).await?, 79);
    let b = k.read_range(&topic, 0, 50, 80, 100).await?;
    assert_eq!(
        b.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (50..80).collect::<Vec<_>>(),
        "records appended after the reader saw the end are read"
    );
    assert_eq!(b.next, 80);
    Ok(())
}

/// A producer that hit a fatal error (an idempotence sequence error, say)
/// refuses every append; the node replaces it instead of nacking forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_failed_fatally_is_replaced() -> anyhow::Result<()> {
    let cfg = config();
    let topic = cfg.topic_for("chat");
    let k = Kafka::connect(cfg)?;
    k.ensure_topic(&topic, 1, &[]).await?;
    let first = k.append_record(&topic, 0, b"chat:a", b"{}", &[])?.await?;
    assert_eq!(first, 0);
    k.inject_fatal_error("injected by the test");
    // The readiness probe replaces it (or would say why it could not).
    k.ping().await?;
    let next = k.append_record(&topic, 0, b"chat:a", b"{}", &[])?.await?;
    assert_eq!(next, 1, "appends work again after the fatal error");
    // Straight to an append, without a probe first.
    k.inject_fatal_error("injected again");
    let third = k.append_record(&topic, 0, b"chat:a", b"{}", &[])?.await?;
    assert_eq!(third, 2);
    let wm = k.watermarks(&topic, 0).await?;
    assert_eq!(wm.high, 3, "nothing stored twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_of_a_topic_created_after_a_failed_lookup() -> anyhow::Result<()> {
    // The client asked about the topic before it existed (a node starting
    // while another creates the topics); once it exists, its watermarks
    // must be readable within the request timeout, not refused from what
    // the client remembered.
    let cfg = LogConfig {
        request_timeout: Duration::from_secs(3),
        ..config()
    };
    let topic = cfg.topic_for("chat");
    let k = Kafka::connect(cfg.clone())?;
    assert!(k.watermarks(&topic, 0).await.is_err(), "no such topic yet");
    let creator = Kafka::connect(cfg)?;
    creator.ensure_topic(&topic, 4, &[]).await?;
    for p in 0..4 {
        let wm = k.watermarks(&topic, p).await?;
        assert_eq!((wm.low, wm.high), (0, 0));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_of_a_partition_the_client_has_not_seen_yet() -> anyhow::Result<()> {
    // The client's metadata of the topic names fewer partitions than exist
    // (it looked while the topic was being created, or before partitions
    // were added): asking again from that memory answers "unknown
    // partition" until the client's periodic refresh, minutes later. The
    // read must look the topic up again instead (a node's start failed on
    // it on the RF 3 cluster).
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let cfg = LogConfig {
        request_timeout: Duration::from_secs(3),
        ..config()
    };
    let topic = cfg.topic_for("chat");
    let k = Kafka::connect(cfg.clone())?;
    k.ensure_topic(&topic, 1, &[]).await?;
    assert_eq!(k.watermarks(&topic, 0).await?.high, 0);
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()?;
    for r in admin
        .create_partitions([&NewPartitions::new(&topic, 2)], &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("adding a partition to {t}: {e}"))?;
    }
    let wm = k.watermarks(&topic, 1).await?;
    assert_eq!((wm.low, wm.high), (0, 0));
    Ok(())
}

/// A range read of large records is bounded in bytes, not only in records:
/// a resume of 200 KB messages holds about a MiB per read, and reading on
/// from `next` gets every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_are_bounded_in_bytes() -> anyhow::Result<()> {
    let cfg = config();
    let topic = cfg.topic_for("big");
    let k = Kafka::connect(cfg)?;
    k.ensure_topic(&topic, 1, &[]).await?;
    let value = vec![b'x'; 200_000];
    for _ in 0..20 {
        k.append_record(&topic, 0, b"big:a", &value, &[])?.await?;
    }
    let (mut from, mut seen) = (0i64, Vec::new());
    while from < 20 {
        let b = k.read_range(&topic, 0, from, 20, 1000).await?;
        let bytes: usize = b.records.iter().map(herald_log::record_bytes).sum();
        assert!(
            bytes <= herald_log::RANGE_MAX_BYTES + 200_005,
            "{bytes} bytes in one read"
        );
        seen.extend(b.records.iter().map(|r| r.offset));
        assert!(b.next > from);
        from = b.next;
    }
    assert_eq!(seen, (0..20).collect::<Vec<i64>>());
    Ok(())
}
