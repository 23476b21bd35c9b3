//! A partition's state and its life in the hub: created on first use,
//! started (tailed from the high watermark) by the first subscribe,
//! retired once it has had no subscriber for a grace period.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tracing::{debug, warn};

use super::fill::FillFeed;
use super::{Hub, HubConfig};
use crate::delivery::Delivery;
use crate::outbox::Outbox;
use crate::HubError;
use herald_proto::Filter;

pub(super) struct Sub {
    pub(super) outbox: Outbox,
    /// Last seq handed to this subscriber on this channel (or passed over
    /// by its filter).
    pub(super) last_seq: i64,
    pub(super) filter: Option<Arc<Filter>>,
    /// Behind on the channel: conflated instead of cut.
    pub(super) conflate: bool,
}

pub(super) struct PartState {
    pub(super) next_offset: i64,
    pub(super) recent: VecDeque<Arc<Delivery>>,
    pub(super) recent_from: i64,
    pub(super) recent_bytes: usize,
    /// The offset the tail started from: the ring's start until it is
    /// filled back from the log ([`Hub::start_fill`]) or evicts.
    pub(super) follow_from: i64,
    pub(super) subs: HashMap<Arc<str>, Vec<Sub>>,
    /// Subscribes under way (between finding the partition and
    /// registering); the partition is not retired while any is.
    entering: usize,
    /// Since when the partition has had no subscriber (seen by a sweep).
    idle_since: Option<Instant>,
}

pub(super) struct Partition {
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) epoch: Arc<str>,
    /// Its namespace's ephemeral topic: the same partition of it is
    /// followed (from its end) for as long as this one is.
    pub(super) ephemeral: Option<Arc<str>>,
    pub(super) started: OnceCell<()>,
    /// The ring's fill back from the log, once per start of the partition
    /// ([`Hub::start_fill`]), and what it has read so far for the resumes
    /// waiting on it.
    pub(super) feed: FillFeed,
    state: Mutex<PartState>,
}

impl Partition {
    pub(super) fn lock(&self) -> MutexGuard<'_, PartState> {
        // A panic while holding this lock would be a bug; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PartState {
    /// Adds a live message to the ring, evicting the oldest beyond the
    /// ring's count and bytes (the newest is always kept).
    pub(super) fn remember(&mut self, d: Arc<Delivery>, cfg: &HubConfig) {
        self.recent_bytes += d.text.len();
        self.recent.push_back(d);
        while self.recent.len() > cfg.recent_messages
            || (self.recent_bytes > cfg.recent_bytes && self.recent.len() > 1)
        {
            if let Some(old) = self.recent.pop_front() {
                self.recent_bytes -= old.text.len();
                self.recent_from = old.seq + 1;
            }
        }
    }

    /// Empties the ring: it is complete again only from `from`.
    pub(super) fn forget(&mut self, from: i64) {
        self.recent.clear();
        self.recent_bytes = 0;
        self.recent_from = from;
    }

    /// `channel`'s messages with `from <= seq < to` from the ring, or
    /// `None` unless the ring is complete over that whole span.
    pub(super) fn ring_span(
        &self,
        channel: &str,
        from: i64,
        to: i64,
    ) -> Option<Vec<Arc<Delivery>>> {
        if from < self.recent_from || to > self.next_offset {
            return None;
        }
        let first = self.recent.partition_point(|d| d.seq < from);
        Some(
            self.recent
                .range(first..)
                .take_while(|d| d.seq < to)
                .filter(|d| *d.channel == *channel)
                .cloned()
                .collect(),
        )
    }
}

#[derive(Clone)]
pub(super) struct TopicMeta {
    pub(super) epoch: Arc<str>,
    pub(super) partitions: i32,
    /// The topic of the namespace's ephemeral messages, when it has one.
    pub(super) ephemeral: Option<Arc<str>>,
}

/// (topic, partition).
pub(super) type PartitionKey = (Arc<str>, i32);

/// A partition a subscribe is using: while this lives, the partition is not
/// retired (see [`Hub::retire_idle`]).
pub(super) struct Entered(pub(super) Arc<Partition>);

impl std::ops::Deref for Entered {
    type Target = Partition;
    fn deref(&self) -> &Partition {
        &self.0
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.lock().entering -= 1;
    }
}

impl Hub {
    /// The partition (created on first use), counted as entered: it is not
    /// retired until the returned guard is dropped.
    fn enter(&self, topic: &str, partition: i32) -> Result<Entered, HubError> {
        let meta = self.topic(topic)?;
        // Counted under the map lock, which the sweep holds too: a partition
        // the sweep retires was not handed to anyone.
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let t: Arc<str> = Arc::from(topic);
        let p = parts
            .entry((t.clone(), partition))
            .or_insert_with(|| {
                Arc::new(Partition {
                    topic: t,
                    partition,
                    epoch: meta.epoch,
                    ephemeral: meta.ephemeral,
                    started: OnceCell::new(),
                    feed: FillFeed::default(),
                    state: Mutex::new(PartState {
                        next_offset: 0,
                        recent: VecDeque::new(),
                        recent_from: 0,
                        recent_bytes: 0,
                        follow_from: 0,
                        subs: HashMap::new(),
                        entering: 0,
                        idle_since: None,
                    }),
                })
            })
            .clone();
        p.lock().entering += 1;
        Ok(Entered(p))
    }

    /// The partition, tailed from the current high watermark on first use.
    pub(super) async fn started(&self, topic: &str, partition: i32) -> Result<Entered, HubError> {
        let p = self.enter(topic, partition)?;
        p.started
            .get_or_try_init(|| async {
                let wm = self.log.watermarks(topic, partition).await?;
                {
                    let mut st = p.lock();
                    st.next_offset = wm.high;
                    st.recent_from = wm.high;
                    st.follow_from = wm.high;
                }
                self.log.follow(topic, partition, wm.high)?;
                // Ephemeral messages from now on: none is ever resumed.
                if let Some(eph) = &p.ephemeral {
                    let end = self.log.watermarks(eph, partition).await?.high;
                    self.log.follow(eph, partition, end)?;
                }
                Ok::<(), HubError>(())
            })
            .await?;
        Ok(p)
    }

    /// Stops following the partitions that have had no local subscriber
    /// (and no subscribe under way) for at least `grace`, as seen by two
    /// sweeps that far apart: the first marks a partition idle, a later one
    /// retires it. A retired partition's tail assignment and ring are
    /// dropped; the next subscriber starts it again from the high watermark
    /// (and resumes from Kafka). Returns how many were retired.
    pub fn retire_idle(&self, grace: Duration) -> usize {
        let now = Instant::now();
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let mut retired: Vec<PartitionKey> = Vec::new();
        parts.retain(|key, part| {
            let mut st = part.lock();
            if !st.subs.is_empty() || st.entering > 0 {
                st.idle_since = None;
                return true;
            }
            match st.idle_since {
                None => {
                    st.idle_since = Some(now);
                    true
                }
                Some(since) if now.duration_since(since) < grace => true,
                Some(_) => {
                    if part.started.get().is_some() {
                        retired.push(key.clone());
                        if let Some(eph) = &part.ephemeral {
                            retired.push((eph.clone(), part.partition));
                        }
                    }
                    false
                }
            }
        });
        // Still under the map lock: a subscribe that starts the partition
        // again cannot follow it before this unfollow has happened.
        for (topic, partition) in &retired {
            if let Err(e) = self.log.unfollow(topic, *partition) {
                metrics::counter!("herald_log_errors_total", "op" => "unfollow").increment(1);
                warn!(%e, %topic, partition, "Could not stop following a partition");
            }
        }
        drop(parts);
        if !retired.is_empty() {
            metrics::counter!("herald_hub_partitions_retired_total")
                .increment(retired.len() as u64);
            debug!(
                count = retired.len(),
                "Stopped following partitions without subscribers"
            );
        }
        retired.len()
    }

    /// Runs [`Hub::retire_idle`] every `grace / 2` (at least every 100 ms)
    /// until the hub is dropped. Needs a Tokio runtime.
    pub fn spawn_retirement(self: &Arc<Self>, grace: Duration) {
        let hub: Weak<Hub> = Arc::downgrade(self);
        let every = (grace / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hub) = hub.upgrade() else { return };
                hub.retire_idle(grace);
            }
        });
    }
}
