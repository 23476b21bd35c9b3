//! The subscription index, live dispatch and the resume hand-off.
//!
//! One [`Partition`] per Kafka topic-partition that a local subscriber needs.
//! It holds, under one mutex:
//! - `next_offset`: every record below it has been dispatched live;
//! - `recent` (the ring): the newest messages of the partition (bounded by
//!   count and bytes), complete from offset `recent_from` up to
//!   `next_offset`;
//! - `subs`: channel → subscribers, each with the last `seq` it was handed.
//!
//! # Rooms
//! - this file: [`Hub`], its topics and partitions, and what reads them
//!   (unsubscribe, presence notifications, counts);
//! - [`partition`]: a partition's state and life: started on first use from
//!   the high watermark, its ring, retired when idle;
//! - [`live`]: live dispatch of the tail's records (the ring, then every
//!   subscriber of the channel), and of ephemeral messages (offered to the
//!   channel's subscribers, no ring, no position);
//! - [`fill`]: filling a cold partition's ring back from the log, once for
//!   every resume that needs it;
//! - [`history`]: [`Hub::history`], bounded pages of one channel's
//!   messages (the ring when it holds them, Kafka otherwise);
//! - [`resume`]: `subscribe` with a position, choosing a strategy (the ring,
//!   the fill under way, the log) until nothing is missing.
//!
//! # Invariant
//! Per channel, a subscriber is handed messages in strictly increasing
//! `seq`, with no gap from its starting position: it joins live dispatch
//! under the partition lock, when nothing between its position and
//! `next_offset` is left unsent; live dispatch hands it only seqs above the
//! last one it got.

mod fill;
mod history;
mod live;
mod partition;
mod resume;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use herald_log::LogRead;
use herald_proto::partition::partition_for_key;

use crate::outbox::{Outbound, Outbox};
use crate::HubError;
use partition::{Partition, PartitionKey, TopicMeta};

pub use history::{HistoryLimits, HistoryPage};
pub use resume::SubscribeOutcome;

/// Tuning of the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Messages kept per partition for fast resume.
    pub recent_messages: usize,
    /// Bytes of serialised messages kept per partition for fast resume.
    pub recent_bytes: usize,
    /// Records per Kafka read during a catch-up.
    pub catchup_batch: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            recent_messages: 10_000,
            recent_bytes: 8 << 20,
            catchup_batch: 1_000,
        }
    }
}

/// The fan-out hub of one node.
pub struct Hub {
    log: Arc<dyn LogRead>,
    cfg: HubConfig,
    topics: RwLock<HashMap<String, TopicMeta>>,
    parts: Mutex<HashMap<PartitionKey, Arc<Partition>>>,
}

impl Hub {
    pub fn new(log: Arc<dyn LogRead>, cfg: HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            log,
            cfg,
            topics: RwLock::new(HashMap::new()),
            parts: Mutex::new(HashMap::new()),
        })
    }

    /// Makes a topic known: its epoch and partition count.
    pub fn register_topic(&self, topic: &str, epoch: &str, partitions: i32) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                topic.to_owned(),
                TopicMeta {
                    epoch: Arc::from(epoch),
                    partitions,
                    ephemeral: None,
                },
            );
    }

    /// Gives a registered topic (a namespace's) its ephemeral topic, with
    /// the same partition count: each partition of it is followed with the
    /// namespace's, and its records go to [`Hub::on_ephemeral`].
    pub fn register_ephemeral(&self, topic: &str, ephemeral: &str) -> Result<(), HubError> {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let meta = topics
            .get_mut(topic)
            .ok_or_else(|| HubError::UnknownTopic(topic.to_owned()))?;
        meta.ephemeral = Some(Arc::from(ephemeral));
        Ok(())
    }

    fn topic(&self, topic: &str) -> Result<TopicMeta, HubError> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
            .ok_or_else(|| HubError::UnknownTopic(topic.to_owned()))
    }

    /// The partition `channel` lives in.
    pub fn partition_of(&self, topic: &str, channel: &str) -> Result<i32, HubError> {
        Ok(partition_for_key(
            channel.as_bytes(),
            self.topic(topic)?.partitions,
        ))
    }

    /// The epoch of a topic.
    pub fn epoch(&self, topic: &str) -> Result<Arc<str>, HubError> {
        Ok(self.topic(topic)?.epoch)
    }

    /// The partition, whether or not it is started.
    fn known(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        self.parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(Arc::from(topic), partition))
            .cloned()
    }

    /// The partition, when this node is tailing it.
    fn followed(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        let part = self.known(topic, partition)?;
        part.started.get()?;
        Some(part)
    }

    /// Every partition the hub knows.
    fn all(&self) -> Vec<Arc<Partition>> {
        self.parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Removes `outbox`'s subscription to `channel`. True if there was one.
    pub fn unsubscribe(&self, outbox: &Outbox, topic: &str, channel: &str) -> bool {
        let Ok(partition) = self.partition_of(topic, channel) else {
            return false;
        };
        let Some(part) = self.known(topic, partition) else {
            return false;
        };
        let mut st = part.lock();
        let Some(list) = st.subs.get_mut(channel) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| s.outbox.id() != outbox.id());
        let removed = before - list.len();
        if list.is_empty() {
            st.subs.remove(channel);
        }
        if removed > 0 {
            metrics::gauge!("herald_hub_subscriptions").decrement(removed as f64);
        }
        removed > 0
    }

    /// Offers `text` (a presence event: no `seq`) to every local subscriber
    /// of `channel`, shared by all; a subscriber whose queue is full misses
    /// it and is not cut. Returns (queued, dropped).
    pub fn notify(&self, topic: &str, channel: &str, text: &str) -> (usize, usize) {
        let Ok(partition) = self.partition_of(topic, channel) else {
            return (0, 0);
        };
        self.offer_all(topic, partition, channel, text, true, |_| true)
    }

    /// [`Hub::notify`] to the subscribers of `channel` in `partition` for
    /// whom `wants` holds; `presence`: a presence event, not an ephemeral
    /// message.
    fn offer_all(
        &self,
        topic: &str,
        partition: i32,
        channel: &str,
        text: &str,
        presence: bool,
        wants: impl Fn(&partition::Sub) -> bool,
    ) -> (usize, usize) {
        let Some(part) = self.known(topic, partition) else {
            return (0, 0);
        };
        let event = Arc::new(crate::outbox::Event {
            channel: Arc::from(channel),
            text: crate::Text::from(text),
            presence,
        });
        let st = part.lock();
        st.subs.get(channel).map_or((0, 0), |list| {
            let (mut sent, mut dropped) = (0, 0);
            for s in list.iter().filter(|s| wants(s)) {
                if s.outbox.offer(Outbound::Event(event.clone())) {
                    sent += 1;
                } else {
                    dropped += 1;
                }
            }
            (sent, dropped)
        })
    }

    /// Channels with subscribers on this node, with their subscriber count.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for part in self.all() {
            let st = part.lock();
            out.extend(st.subs.iter().map(|(c, l)| (c.to_string(), l.len())));
        }
        out
    }

    /// Subscriptions on this node.
    pub fn subscription_count(&self) -> usize {
        self.all()
            .iter()
            .map(|p| p.lock().subs.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// The newest offset dispatched live in `channel`'s partition, when this
    /// node follows that partition.
    pub fn tail_seq(&self, topic: &str, channel: &str) -> Option<i64> {
        let partition = self.partition_of(topic, channel).ok()?;
        let next = self.followed(topic, partition)?.lock().next_offset;
        Some(next - 1)
    }
}
