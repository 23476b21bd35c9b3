//! The bare Kafka floor: what herald's path costs without herald. An rdkafka
//! producer with herald's settings (idempotent, `acks=all`, `linger.ms=1`,
//! explicit partition) writes timestamped records to a fresh topic; a
//! consumer with herald's reader settings tails it. Both are warmed up
//! first (records not counted), as a long-running herald node is. End-to-end
//! latency is the (scheduled, in open loop) produce → consumed, acks/s is
//! producer confirmations per second.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::report::{Progress, Report};
use crate::{latency_histogram, now_ns};

/// Records numbered from here are the warm-up's, sent for [`WARMUP`]
/// before the measured run so that the producer and the consumer are
/// connected, their leader known and the consumer fetching, as a
/// long-running herald node's are; they are not counted.
const WARMUP_FROM: u64 = 1 << 62;
const WARMUP: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct FloorConfig {
    pub brokers: String,
    /// Records per second (open loop); 0: closed loop with `window`.
    pub rate: u32,
    pub window: usize,
    pub duration: Duration,
    pub size: usize,
    pub fetch_wait_max_ms: u32,
    pub progress: bool,
    /// Use this existing topic (partition 0) instead of creating a fresh one.
    pub topic: Option<String>,
}

fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("log_level", "4");
    c
}

/// Creates `topic` with `partitions` at the broker's default replication.
pub(crate) async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<_> = client_config(brokers).create()?;
    let res = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(-1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in res {
        r.map_err(|(t, e)| anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// A producer with herald's settings (idempotent, `acks=all`, `linger.ms=1`).
pub(crate) fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(client_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "1")
        .create()?)
}

/// A consumer with herald's tail settings, in a group of its own.
pub(crate) fn consumer(brokers: &str, fetch_wait_max_ms: u32) -> anyhow::Result<StreamConsumer> {
    Ok(client_config(brokers)
        .set("group.id", format!("loadtest-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", "1")
        .set("fetch.queue.backoff.ms", "5")
        .create()?)
}

pub async fn run(cfg: FloorConfig) -> anyhow::Result<Report> {
    let fresh = cfg.topic.is_none();
    let topic = cfg.topic.clone().unwrap_or_else(|| {
        format!(
            "loadtest-floor-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    if fresh {
        create_topic(&cfg.brokers, &topic, 1).await?;
    }
    let producer = producer(&cfg.brokers)?;
    let consumer = consumer(&cfg.brokers, cfg.fetch_wait_max_ms)?;
    // Look the topic up first: librdkafka's assign() of a topic the client
    // has not asked about waits for its once-a-second scan of unknown topics
    // (herald-log does the same for its tail and readers).
    consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .context("topic metadata")?;
    let mut tpl = TopicPartitionList::new();
    // From the end: an existing topic may hold earlier runs' records.
    tpl.add_partition_offset(&topic, 0, Offset::End)?;
    consumer.assign(&tpl).context("assign")?;

    let delivered = Arc::new(AtomicU64::new(0));
    let warmed = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (d2, w2) = (delivered.clone(), warmed.clone());
    // Each record carries its send time and its number: the reader counts
    // duplicates and records out of send order, as the verifier does for
    // herald (one producer, one partition: send order is append order).
    let reader = tokio::spawn(async move {
        let mut h = latency_histogram();
        let mut seen: HashSet<u64> = HashSet::new();
        let (mut dup, mut out_of_order) = (0u64, 0u64);
        let mut last: Option<u64> = None;
        loop {
            tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => break,
                m = consumer.recv() => {
                    if let Ok(m) = m {
                        let now = now_ns();
                        if let Some(p) = m.payload() {
                            if p.len() >= 16 {
                                let mut t = [0u8; 8];
                                t.copy_from_slice(&p[8..16]);
                                let n = u64::from_be_bytes(t);
                                if n >= WARMUP_FROM {
                                    w2.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                t.copy_from_slice(&p[..8]);
                                let _ = h.record(now.saturating_sub(u64::from_be_bytes(t)) / 1_000);
                                if !seen.insert(n) {
                                    dup += 1;
                                } else {
                                    if last.is_some_and(|l| n < l) {
                                        out_of_order += 1;
                                    }
                                    last = Some(last.map_or(n, |l| l.max(n)));
                                }
                            }
                        }
                        d2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        (h, seen, dup, out_of_order)
    });
    // Warm up: records the reader skips, until some have come back.
    let warm_started = Instant::now();
    let mut warm_sent = 0u64;
    while warm_started.elapsed() < WARMUP || warmed.load(Ordering::Relaxed) == 0 {
        if warm_started.elapsed() > WARMUP * 10 {
            return Err(anyhow!("the floor's warm-up records never came back"));
        }
        let mut payload = now_ns().to_be_bytes().to_vec();
        payload.extend_from_slice(&(WARMUP_FROM + warm_sent).to_be_bytes());
        producer
            .send_result(
                FutureRecord::to(&topic)
                    .partition(0)
                    .key("floor")
                    .payload(&payload),
            )
            .map_err(|(e, _)| anyhow!("enqueue: {e}"))?
            .await
            .map_err(|_| anyhow!("warm-up record cancelled"))?
            .map_err(|(e, _)| anyhow!("warm-up record: {e}"))?;
        warm_sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let acked = Arc::new(AtomicU64::new(0));
    let acked_numbers: Arc<std::sync::Mutex<Vec<u64>>> = Default::default();
    let window = Arc::new(tokio::sync::Semaphore::new(cfg.window.max(1)));
    let pad = vec![b'x'; cfg.size];
    let cpu_at_start = crate::report::process_cpu_secs();
    let started = Instant::now();
    let started_ns = now_ns();
    let mut lag = Duration::ZERO;
    let period = Duration::from_secs_f64(1.0 / (cfg.rate.max(1)) as f64);
    let mut sent = 0u64;
    let mut waits = tokio::task::JoinSet::new();
    let mut progress = Progress::new(cfg.progress);
    while started.elapsed() < cfg.duration {
        // As herald's generator: open loop from the scheduled send.
        let (permit, stamp) = if cfg.rate == 0 {
            (Some(window.clone().acquire_owned().await?), now_ns())
        } else {
            let due = period.mul_f64(sent as f64);
            tokio::time::sleep_until((started + due).into()).await;
            lag = lag.max(started.elapsed().saturating_sub(due));
            (None, started_ns + due.as_nanos() as u64)
        };
        let mut payload = stamp.to_be_bytes().to_vec();
        payload.extend_from_slice(&sent.to_be_bytes());
        payload.extend_from_slice(&pad);
        let fut = producer.send_result(
            FutureRecord::to(&topic)
                .partition(0)
                .key("floor")
                .payload(&payload),
        );
        let fut = fut.map_err(|(e, _)| anyhow!("enqueue: {e}"))?;
        let acked2 = acked.clone();
        let numbers2 = acked_numbers.clone();
        let number = sent;
        waits.spawn(async move {
            if let Ok(Ok(_)) = fut.await {
                acked2.fetch_add(1, Ordering::Relaxed);
                numbers2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(number);
            }
            drop(permit);
        });
        sent += 1;
        progress.tick(
            started.elapsed(),
            acked.load(Ordering::Relaxed),
            delivered.load(Ordering::Relaxed),
        );
        while waits.try_join_next().is_some() {}
    }
    let publish_secs = started.elapsed().as_secs_f64();
    while waits.join_next().await.is_some() {}
    let acked_n = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < acked_n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    stop_tx.send_replace(true);
    let (h, seen, duplicated, out_of_order) = reader.await?;
    progress.done();
    // The topic (unique to this run) is left in place: the benchmark
    // brokers' data is thrown away with them.
    let config = serde_json::json!({
        "brokers": cfg.brokers, "rate": cfg.rate, "window": cfg.window,
        "duration_secs": cfg.duration.as_secs_f64(), "size": cfg.size,
    });
    let delivered = delivered.load(Ordering::Relaxed);
    let mut r = Report::new(
        "kafka-floor",
        &config,
        sent,
        acked_n,
        sent - acked_n,
        delivered,
        publish_secs,
        total_secs,
        0.0,
        &h,
        None,
    );
    let numbers = acked_numbers.lock().unwrap_or_else(|p| p.into_inner());
    r.lost = numbers.iter().filter(|n| !seen.contains(n)).count() as u64;
    r.duplicated = duplicated;
    r.out_of_order = out_of_order;
    r.schedule_lag_ms = lag.as_secs_f64() * 1000.0;
    r.client_cpu_secs = crate::report::process_cpu_secs() - cpu_at_start;
    Ok(r)
}
