//! [`GroupReader`]: reading topics as one member of a Kafka consumer group,
//! at least once. Records come in offset order per partition and may be
//! handled out of order (concurrently); a partition's committed offset
//! moves to its first record not yet handled, so a record is read again
//! (by this member or, after a rebalance, by another) until it was handled.
//!
//! librdkafka commits the stored offsets every second and when partitions
//! are revoked; what was handled after the last commit is read again after a
//! crash, so the reader's user must tolerate duplicates.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tracing::{debug, warn};

use super::Kafka;
use crate::{BoxFuture, GroupRead, LogError, Record};

/// One partition's records between "read" and "handled".
#[derive(Default)]
struct Progress {
    /// Offsets handed out and not handled yet.
    open: BTreeSet<i64>,
    /// One past the highest offset handed out.
    next: i64,
}

impl Progress {
    /// The offset to commit: the first not handled.
    fn commit_point(&self) -> i64 {
        self.open.first().copied().unwrap_or(self.next)
    }
}

type Key = (Arc<str>, i32);

/// The reader's context: forgets the progress of revoked partitions and
/// turns librdkafka's statistics into the reader's lag.
#[derive(Default)]
pub(super) struct GroupContext {
    progress: Mutex<HashMap<Key, Progress>>,
    /// Records of the assigned partitions not yet handled, from the last
    /// statistics report (0 before the first).
    lag: AtomicI64,
}

#[derive(Deserialize)]
struct Report {
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
    #[serde(default)]
    consumer_lag: i64,
    #[serde(default)]
    consumer_lag_stored: i64,
    #[serde(default)]
    fetch_state: String,
}

impl ClientContext for GroupContext {
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(report) = serde_json::from_slice::<Report>(statistics) else {
            return;
        };
        let lag: i64 = report
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.fetch_state == "active")
            .map(|p| {
                if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else {
                    p.consumer_lag.max(0)
                }
            })
            .sum();
        self.lag.store(lag, Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            for e in tpl.elements() {
                progress.retain(|(t, p), _| !(**t == *e.topic() && *p == e.partition()));
            }
            debug!(partitions = tpl.count(), "Group reader: partitions revoked");
        }
    }
}

/// A member of a consumer group reading some topics.
pub struct GroupReader {
    consumer: StreamConsumer<GroupContext>,
    /// Topic names, shared by the records of each.
    names: Mutex<HashMap<String, Arc<str>>>,
}

impl GroupReader {
    fn name(&self, topic: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names
            .entry(topic.to_owned())
            .or_insert_with(|| Arc::from(topic))
            .clone()
    }

    fn store(&self, key: &Key, at: i64) {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&key.0, key.1, Offset::Offset(at))
            .is_err()
        {
            return;
        }
        // Fails for a partition revoked meanwhile: its new owner reads the
        // record again.
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            debug!(%e, topic = %key.0, partition = key.1, "Group reader: offset not stored");
        }
    }
}

impl GroupRead for GroupReader {
    fn next(&self) -> BoxFuture<'_, Result<Record, LogError>> {
        Box::pin(async move {
            let m = self.consumer.recv().await?;
            let topic = self.name(m.topic());
            let r = Record {
                topic: topic.clone(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                timestamp_ms: m.timestamp().to_millis(),
            };
            let ctx = self.consumer.context();
            let mut progress = ctx.progress.lock().unwrap_or_else(|e| e.into_inner());
            let p = progress.entry((topic, r.partition)).or_default();
            p.open.insert(r.offset);
            p.next = p.next.max(r.offset + 1);
            Ok(r)
        })
    }

    fn handled(&self, topic: &str, partition: i32, offset: i64) {
        let key: Key = (self.name(topic), partition);
        let at = {
            let ctx = self.consumer.context();
            let mut progress = ctx.progress.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = progress.get_mut(&key) else {
                return;
            };
            let before = p.commit_point();
            if !p.open.remove(&offset) {
                return;
            }
            let after = p.commit_point();
            (after > before).then_some(after)
        };
        if let Some(at) = at {
            self.store(&key, at);
        }
    }

    fn lag(&self) -> i64 {
        self.consumer.context().lag.load(Ordering::Relaxed)
    }
}

impl Kafka {
    /// A member of consumer group `group` reading `topics` from the group's
    /// committed offsets (a new group: from the start).
    pub fn group_reader(&self, group: &str, topics: &[String]) -> Result<GroupReader, LogError> {
        let mut c: ClientConfig = Kafka::base_config(self.config());
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set(
                "fetch.wait.max.ms",
                self.config().fetch_wait_max_ms.to_string(),
            )
            // What one member holds fetched ahead (per partition).
            .set("queued.max.messages.kbytes", "4096")
            .set("statistics.interval.ms", "5000");
        let consumer: StreamConsumer<GroupContext> =
            c.create_with_context(GroupContext::default())?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        if topics.is_empty() {
            warn!(group, "Group reader with no topics");
        }
        Ok(GroupReader {
            consumer,
            names: Mutex::new(HashMap::new()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_is_the_first_open_offset() {
        let mut p = Progress::default();
        assert_eq!(p.commit_point(), 0);
        for o in [5, 6, 7] {
            p.open.insert(o);
            p.next = o + 1;
        }
        assert_eq!(p.commit_point(), 5);
        p.open.remove(&6);
        assert_eq!(p.commit_point(), 5);
        p.open.remove(&5);
        assert_eq!(p.commit_point(), 7);
        p.open.remove(&7);
        assert_eq!(p.commit_point(), 8);
    }
}
