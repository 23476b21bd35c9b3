//! Channel occupancy across the cluster, for the `occupied` and `vacated`
//! webhook events, through a compacted topic of herald's,
//! `{prefix}webhooks.occupancy`.
//!
//! A node counts its own subscriptions per channel (of the channels some
//! endpoint wants occupancy events of). When its count of a channel goes
//! from 0 to 1 it writes a record keyed `[channel, node]`, and a tombstone
//! when it goes back to 0. Every record of a channel goes to the partition
//! the channel hashes to, and every node reads the whole topic, so every
//! node sees the same sequence of "nodes holding the channel". The record
//! that takes a channel from no node to one makes the `occupied` event, the
//! one that takes it back to none makes `vacated`; the node that wrote that
//! record writes the event, with an id made of the record's partition and
//! offset (so a second writer would write the same id).
//!
//! A node that stops without writing its tombstones is reaped like its
//! presence members: the live node with the lowest id tombstones its
//! entries after three missed heartbeats, and writes the `vacated` events
//! those tombstones make.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use herald_log::{LogError, Record};
use herald_proto::partition::partition_for_key;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::EventKind;
use crate::ctx::Ctx;

/// One node's side of the occupancy topic.
pub struct Occupancy {
    topic: String,
    partitions: AtomicI32,
    /// channel → this node's subscriptions to it. Changed, and the record
    /// written, under the lock: the records of a channel are written in the
    /// order of its count's changes.
    local: Mutex<HashMap<String, Local>>,
    /// channel → the nodes holding it (from the topic).
    view: Mutex<HashMap<String, HashSet<String>>>,
    /// Per partition: records from this offset on make events.
    live_from: Mutex<HashMap<i32, i64>>,
    /// Keys this node tombstoned for a node that stopped: it writes the
    /// `vacated` events they make.
    reaped: Mutex<HashSet<(String, String)>>,
}

/// This node's subscriptions to a channel, and whether Kafka has the
/// record saying it holds the channel.
struct Local {
    count: u32,
    stored: watch::Receiver<bool>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Value {
    node: String,
}

fn key(channel: &str, node: &str) -> Vec<u8> {
    serde_json::to_vec(&[channel, node]).unwrap_or_default()
}

impl Occupancy {
    pub fn new(topic: String) -> Occupancy {
        Occupancy {
            topic,
            partitions: AtomicI32::new(super::EVENT_PARTITIONS),
            local: Mutex::new(HashMap::new()),
            view: Mutex::new(HashMap::new()),
            live_from: Mutex::new(HashMap::new()),
            reaped: Mutex::new(HashSet::new()),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self, channel: &str) -> i32 {
        partition_for_key(channel.as_bytes(), self.partitions.load(Ordering::Relaxed))
    }

    /// Reads the whole topic, then follows it, and reaps the entries of
    /// nodes that stopped.
    pub async fn start(
        ctx: Arc<Ctx>,
        partitions: i32,
        records: mpsc::UnboundedReceiver<Record>,
    ) -> Result<(), LogError> {
        let o = &ctx.occupancy;
        o.partitions.store(partitions, Ordering::Relaxed);
        let live_from = crate::cluster::follow_from_start(&*ctx.log, &o.topic, partitions).await?;
        *o.live_from.lock().unwrap_or_else(|e| e.into_inner()) = live_from;
        crate::cluster::run_view(
            &ctx,
            records,
            |ctx, r| ctx.occupancy.on_record(ctx, r),
            |ctx| ctx.occupancy.reap(ctx),
        );
        Ok(())
    }

    /// One more subscription to `channel`: the record when it is the
    /// first; returns what says when Kafka has it.
    fn up(&self, ctx: &Ctx, channel: &str) -> watch::Receiver<bool> {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = local.get_mut(channel) {
            l.count = l.count.saturating_add(1);
            return l.stored.clone();
        }
        let (tx, rx) = watch::channel(false);
        local.insert(
            channel.to_owned(),
            Local {
                count: 1,
                stored: rx.clone(),
            },
        );
        let v = serde_json::to_vec(&Value {
            node: ctx.cluster.node.clone(),
        })
        .unwrap_or_default();
        let r = ctx.log.append_record(
            &self.topic,
            self.partition(channel),
            &key(channel, &ctx.cluster.node),
            &v,
            &[],
        );
        track(r, Some(tx));
        rx
    }

    /// One subscription to `channel` fewer: the tombstone when it was the
    /// last.
    fn down(&self, ctx: &Ctx, channel: &str) {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = local.get_mut(channel) else {
            return;
        };
        l.count -= 1;
        if l.count > 0 {
            return;
        }
        local.remove(channel);
        let k = key(channel, &ctx.cluster.node);
        track(
            ctx.log
                .append_tombstone(&self.topic, self.partition(channel), &k),
            None,
        );
    }

    fn on_record(&self, ctx: &Ctx, r: Record) {
        let Some(k) = r.key.as_deref() else { return };
        let Ok([channel, node]) = serde_json::from_slice::<[String; 2]>(k) else {
            metrics::counter!("herald_webhook_event_errors_total", "type" => "occupancy")
                .increment(1);
            return;
        };
        let live = self
            .live_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.partition)
            .is_some_and(|from| r.offset >= *from);
        let event = {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            match r.value {
                Some(_) => {
                    let nodes = view.entry(channel.clone()).or_default();
                    let first = nodes.is_empty();
                    nodes.insert(node.clone());
                    (first && node == ctx.cluster.node).then_some(EventKind::Occupied)
                }
                None => {
                    let Some(nodes) = view.get_mut(&channel) else {
                        return;
                    };
                    if !nodes.remove(&node) {
                        return;
                    }
                    let last = nodes.is_empty();
                    if last {
                        view.remove(&channel);
                    }
                    let reaped_here = self
                        .reaped
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(channel.clone(), node.clone()));
                    (last && (node == ctx.cluster.node || reaped_here))
                        .then_some(EventKind::Vacated)
                }
            }
        };
        if let (Some(kind), true) = (event, live) {
            let id = format!("{}-{}-{}", kind.as_str(), r.partition, r.offset);
            ctx.events.occupancy_event(ctx, kind, &channel, id);
        }
    }

    /// Tombstones the entries of nodes that stopped heartbeating; done by
    /// the live node with the lowest id only.
    fn reap(&self, ctx: &Ctx) {
        let nodes = ctx.cluster.live_nodes();
        if nodes.first().map(|n| n.id.as_str()) != Some(ctx.cluster.node.as_str()) {
            return;
        }
        let live: HashSet<String> = nodes.into_iter().map(|n| n.id).collect();
        let mut gone = Vec::new();
        {
            let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            let mut reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
            for (channel, holders) in view.iter() {
                for node in holders {
                    let k = (channel.clone(), node.clone());
                    if !live.contains(node) && !reaped.contains(&k) {
                        reaped.insert(k.clone());
                        gone.push(k);
                    }
                }
            }
        }
        if !gone.is_empty() {
            debug!(
                count = gone.len(),
                "Reaping the channel occupancy of nodes that stopped"
            );
        }
        for (channel, node) in gone {
            let k = key(&channel, &node);
            track(
                ctx.log
                    .append_tombstone(&self.topic, self.partition(&channel), &k),
                None,
            );
        }
    }
}

/// A subscription to `channel` starts on this node: counted when some
/// endpoint wants the channel's occupancy. Then the subscription waits
/// until the returned receiver says Kafka has this node's record for the
/// channel (at most the publish timeout) before the client is told
/// `subscribed`: a subscription a client knows of is in the cluster's
/// sequence before anything the client does next (say, another client's
/// unsubscribe on another node), so a handoff between nodes makes no
/// `vacated` / `occupied` pair.
pub(crate) fn joined(ctx: &Ctx, channel: &str) -> Option<watch::Receiver<bool>> {
    wanted(ctx, channel).then(|| ctx.occupancy.up(ctx, channel))
}

/// A subscription [`joined`] counted ended (or failed).
pub(crate) fn left(ctx: &Ctx, channel: &str) {
    ctx.occupancy.down(ctx, channel);
}

fn wanted(ctx: &Ctx, channel: &str) -> bool {
    ctx.events.wants(EventKind::Occupied, Some(channel))
        || ctx.events.wants(EventKind::Vacated, Some(channel))
}

/// Counts a failed occupancy write; `stored` is told when it is done
/// (stored or failed: a subscription does not wait for a broken write).
fn track(r: Result<herald_log::PendingPublish, LogError>, stored: Option<watch::Sender<bool>>) {
    let failed = |e: &LogError| {
        metrics::counter!("herald_webhook_event_errors_total", "type" => "occupancy").increment(1);
        warn!(%e, "An occupancy record could not be written");
    };
    match r {
        Ok(pending) => {
            tokio::spawn(async move {
                if let Err(e) = pending.await {
                    failed(&e);
                }
                if let Some(tx) = stored {
                    let _ = tx.send(true);
                }
            });
        }
        Err(e) => failed(&e),
    }
}
