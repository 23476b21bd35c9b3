//! What the partition tail reads from Kafka, from librdkafka's own
//! statistics (`statistics.interval.ms`, once a second): the bytes it
//! received from the brokers (`herald_log_fetch_bytes_total`, protocol
//! included), the record bytes per topic
//! (`herald_log_fetch_record_bytes_total`) and, per
//! followed partition, how far it is behind the partition's high watermark
//! (`herald_log_tail_lag_records`). Range readers are not counted: they sit
//! idle and unpolled in their pool, where statistics events would pile up.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use serde::Deserialize;
use tracing::debug;

/// How often librdkafka reports the tail's statistics.
pub(super) const STATS_INTERVAL_MS: &str = "1000";

/// The tail's consumer.
pub(super) type TailConsumer = StreamConsumer<TailStats>;

/// The tail's context: turns librdkafka's statistics into metrics.
#[derive(Default)]
pub(super) struct TailStats {
    /// Bytes received, as of the previous report.
    seen: AtomicI64,
    /// Partitions with a lag gauge, to zero the ones no longer followed.
    lagging: Mutex<HashSet<(String, i32)>>,
    /// Record bytes received per partition, as of the previous report.
    partition_bytes: Mutex<HashMap<(String, i32), i64>>,
}

/// The fields of librdkafka's statistics document used here.
#[derive(Deserialize)]
struct Report {
    /// Bytes received from all brokers since the client was created.
    rx_bytes: i64,
    #[serde(default)]
    topics: HashMap<String, TopicReport>,
}

#[derive(Deserialize)]
struct TopicReport {
    #[serde(default)]
    partitions: HashMap<String, PartitionReport>,
}

#[derive(Deserialize)]
struct PartitionReport {
    partition: i32,
    /// The partition's high watermark as last seen in a Fetch response.
    hi_offset: i64,
    /// One past the last record handed to herald (negative before the first).
    app_offset: i64,
    /// `active` while the partition is assigned and fetched.
    #[serde(default)]
    fetch_state: String,
    /// Bytes of the records received for this partition (with framing).
    #[serde(default)]
    rxbytes: i64,
}

impl TailStats {
    fn report(&self, r: Report) {
        let before = self.seen.swap(r.rx_bytes, Ordering::Relaxed);
        if r.rx_bytes > before {
            metrics::counter!("herald_log_fetch_bytes_total")
                .increment((r.rx_bytes - before) as u64);
        }
        let mut now = HashSet::new();
        let mut bytes = self
            .partition_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (topic, t) in r.topics {
            let mut received = 0;
            for p in t.partitions.values() {
                if p.partition < 0 {
                    continue;
                }
                let before = bytes
                    .insert((topic.clone(), p.partition), p.rxbytes)
                    .unwrap_or(0);
                // A count that went down started again (a partition taken
                // off the tail and put back).
                received += if p.rxbytes >= before {
                    p.rxbytes - before
                } else {
                    p.rxbytes
                };
            }
            if received > 0 {
                metrics::counter!("herald_log_fetch_record_bytes_total", "topic" => topic.clone())
                    .increment(received as u64);
            }
            for p in t.partitions.into_values() {
                // Partition -1 is librdkafka's internal "unassigned" one.
                if p.partition < 0 || p.fetch_state != "active" || p.hi_offset < 0 {
                    continue;
                }
                // Before the first record the tail is at the offset it was
                // started from, the high watermark of that moment.
                let lag = if p.app_offset >= 0 {
                    (p.hi_offset - p.app_offset).max(0)
                } else {
                    0
                };
                metrics::gauge!("herald_log_tail_lag_records", "topic" => topic.clone(), "partition" => p.partition.to_string())
                    .set(lag as f64);
                now.insert((topic.clone(), p.partition));
            }
        }
        let mut lagging = self.lagging.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, partition) in lagging.difference(&now) {
            metrics::gauge!("herald_log_tail_lag_records", "topic" => topic.clone(), "partition" => partition.to_string())
                .set(0.0);
        }
        *lagging = now;
    }
}

impl ClientContext for TailStats {
    fn stats_raw(&self, statistics: &[u8]) {
        match serde_json::from_slice::<Report>(statistics) {
            Ok(r) => self.report(r),
            Err(e) => debug!(%e, "Unreadable librdkafka statistics"),
        }
    }
}

impl ConsumerContext for TailStats {}
