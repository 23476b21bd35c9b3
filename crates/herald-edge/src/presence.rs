//! Presence: who is subscribed to a channel, on every node, through one
//! compacted Kafka topic of herald's, `{prefix}presence`.
//!
//! A node writes a record when one of its connections subscribes to a
//! channel of a namespace with presence (key `[channel, "{node}/{conn}"]`,
//! value: the member), and a tombstone when that subscription ends. Every
//! record of a channel goes to the partition the channel hashes to, so every
//! node reads a channel's joins and leaves in the same order. Every node
//! reads the whole topic (from its start: compaction keeps one record per
//! member) and keeps the view in memory.
//!
//! A member lives as long as its node's heartbeat in the control topic
//! ([`crate::cluster`]): answers leave out the members of a node not heard
//! for three heartbeats, and the live node with the lowest id writes
//! tombstones for them, which every node turns into `leave` events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_log::{LogError, Record};
use herald_proto::partition::partition_for_key;
use herald_proto::{Member, ServerFrame};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::ctx::Ctx;

/// Partitions of `{prefix}presence` when herald creates it.
pub const PRESENCE_PARTITIONS: i32 = 8;

#[derive(Serialize, Deserialize)]
struct PresenceRecord {
    v: u32,
    channel: String,
    node: String,
    member: Member,
}

struct Entry {
    member: Member,
    node: String,
    /// A tombstone for it was written (its node is gone).
    reaped: bool,
}

/// This node's view of every node's members, and its own writes.
pub struct Presence {
    topic: String,
    partitions: AtomicI32,
    /// channel → conn → member.
    view: Mutex<HashMap<String, BTreeMap<String, Entry>>>,
    /// Per partition: records from this offset on were written after this
    /// node started reading, so they make join/leave events.
    live_from: Mutex<HashMap<i32, i64>>,
    /// Namespaces whose subscribers get join/leave events.
    join_leave: HashSet<String>,
    /// This node's members that joined and have not left: a tombstone for
    /// one of them (the node was taken for dead while paused, and reaped)
    /// writes it again.
    mine: Mutex<HashMap<(String, String), Member>>,
}

fn key(channel: &str, conn: &str) -> Vec<u8> {
    serde_json::to_vec(&[channel, conn]).unwrap_or_default()
}

impl Presence {
    pub fn new(topic: String, join_leave: HashSet<String>) -> Presence {
        Presence {
            topic,
            partitions: AtomicI32::new(PRESENCE_PARTITIONS),
            view: Mutex::new(HashMap::new()),
            live_from: Mutex::new(HashMap::new()),
            join_leave,
            mine: Mutex::new(HashMap::new()),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self, channel: &str) -> i32 {
        partition_for_key(channel.as_bytes(), self.partitions.load(Ordering::Relaxed))
    }

    /// Reads the whole topic, then follows it (records arrive on `records`
    /// from the tail), and reaps the members of nodes that stopped
    /// heartbeating.
    pub async fn start(
        ctx: Arc<Ctx>,
        partitions: i32,
        mut records: mpsc::UnboundedReceiver<Record>,
    ) -> Result<(), LogError> {
        let p = &ctx.presence;
        p.partitions.store(partitions, Ordering::Relaxed);
        for part in 0..partitions {
            let wm = crate::cluster::watermarks_when_ready(&*ctx.log, &p.topic, part).await?;
            p.live_from
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(part, wm.high);
            ctx.log.follow(&p.topic, part, wm.low)?;
        }
        {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                while let Some(r) = records.recv().await {
                    ctx.presence.on_record(&ctx, r);
                }
            });
        }
        let weak = Arc::downgrade(&ctx);
        let every = ctx.cfg.node_heartbeat.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(ctx) = weak.upgrade() else { return };
                if ctx.shutting_down.load(Ordering::SeqCst) {
                    return;
                }
                ctx.presence.reap(&ctx);
            }
        });
        Ok(())
    }

    /// Records `member` on `channel` (a subscription of this node started).
    pub fn join(&self, ctx: &Ctx, channel: &str, member: Member) {
        self.mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((channel.to_owned(), member.conn.clone()), member.clone());
        self.write_join(ctx, channel, member);
    }

    fn write_join(&self, ctx: &Ctx, channel: &str, member: Member) {
        let rec = PresenceRecord {
            v: 1,
            channel: channel.to_owned(),
            node: ctx.cluster.node.clone(),
            member,
        };
        let k = key(channel, &rec.member.conn);
        let value = match serde_json::to_vec(&rec) {
            Ok(v) => v,
            Err(e) => return warn!(%e, "Could not encode a presence record"),
        };
        let r = ctx
            .log
            .append_record(&self.topic, self.partition(channel), &k, &value, &[]);
        watch_write(r, "join");
    }

    /// Removes the member `conn` from `channel` (its subscription ended).
    /// Retried a few times: a lost leave would show a member that is gone
    /// for as long as its node lives. (A join is not retried: a retry could
    /// land after the member's leave.)
    pub fn leave(&self, ctx: &Ctx, channel: &str, conn: &str) {
        self.mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(channel.to_owned(), conn.to_owned()));
        self.write_leave(ctx, channel, conn);
    }

    fn write_leave(&self, ctx: &Ctx, channel: &str, conn: &str) {
        let (log, topic, partition, k) = (
            ctx.log.clone(),
            self.topic.clone(),
            self.partition(channel),
            key(channel, conn),
        );
        tokio::spawn(async move {
            for attempt in 1..=LEAVE_ATTEMPTS {
                let r = match log.append_tombstone(&topic, partition, &k) {
                    Ok(pending) => pending.await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        metrics::counter!("herald_presence_errors_total", "op" => "leave")
                            .increment(1);
                        warn!(%e, attempt, "Presence leave failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    fn on_record(&self, ctx: &Ctx, r: Record) {
        let Some(k) = r.key.as_deref() else { return };
        let Ok([channel, conn]) = serde_json::from_slice::<[String; 2]>(k) else {
            metrics::counter!("herald_presence_errors_total", "op" => "decode").increment(1);
            return;
        };
        let live = self
            .live_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.partition)
            .is_some_and(|from| r.offset >= *from);
        let event = match r.value.as_deref() {
            None if live => {
                // Still ours: reaped while this node was taken for dead.
                let again = self
                    .mine
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(channel.clone(), conn.clone()))
                    .cloned();
                if let Some(member) = again {
                    metrics::counter!("herald_presence_rejoins_total").increment(1);
                    self.write_join(ctx, &channel, member);
                }
                self.remove(&channel, &conn)
            }
            None => self.remove(&channel, &conn),
            Some(v) => {
                let rec: PresenceRecord = match serde_json::from_slice(v) {
                    Ok(rec) => rec,
                    Err(e) => {
                        metrics::counter!("herald_presence_errors_total", "op" => "decode")
                            .increment(1);
                        debug!(%e, "Skipping an unreadable presence record");
                        return;
                    }
                };
                let member = rec.member.clone();
                let fresh = self
                    .view
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(channel.clone())
                    .or_default()
                    .insert(
                        conn,
                        Entry {
                            member: rec.member,
                            node: rec.node,
                            reaped: false,
                        },
                    )
                    .is_none();
                fresh.then(|| ServerFrame::Join {
                    channel: channel.clone(),
                    member,
                })
            }
        };
        let Some(event) = event else { return };
        let namespace = channel.split(':').next().unwrap_or_default();
        if live && self.join_leave.contains(namespace) {
            if let Some(topic) = ctx.topics.get(namespace) {
                let n = ctx.hub.notify(topic, &channel, &event.to_json());
                metrics::counter!("herald_presence_events_total").increment(n as u64);
            }
        }
    }

    /// Takes `conn` off `channel`'s view: the `leave` event, if it was there.
    fn remove(&self, channel: &str, conn: &str) -> Option<ServerFrame> {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let gone = view.get_mut(channel).and_then(|m| m.remove(conn));
        if view.get(channel).is_some_and(BTreeMap::is_empty) {
            view.remove(channel);
        }
        gone.map(|e| ServerFrame::Leave {
            channel: channel.to_owned(),
            member: e.member,
        })
    }

    /// Nodes whose members count: the live ones, and this one.
    fn live_nodes(ctx: &Ctx) -> HashSet<String> {
        let mut live: HashSet<String> =
            ctx.cluster.live_nodes().into_iter().map(|n| n.id).collect();
        live.insert(ctx.cluster.node.clone());
        live
    }

    /// `channel`'s members on live nodes, ordered by connection.
    pub fn members(&self, ctx: &Ctx, channel: &str) -> Vec<Member> {
        let live = Self::live_nodes(ctx);
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        view.get(channel).map_or_else(Vec::new, |m| {
            m.values()
                .filter(|e| live.contains(&e.node))
                .map(|e| e.member.clone())
                .collect()
        })
    }

    /// (connections, distinct users) on `channel`.
    pub fn stats(&self, ctx: &Ctx, channel: &str) -> (usize, usize) {
        let members = self.members(ctx, channel);
        let users: HashSet<&str> = members.iter().filter_map(|m| m.user.as_deref()).collect();
        (members.len(), users.len())
    }

    /// Tombstones the members of nodes that stopped heartbeating; done by
    /// the live node with the lowest id only, so each is written once.
    fn reap(&self, ctx: &Ctx) {
        let nodes = ctx.cluster.live_nodes();
        if nodes.first().map(|n| n.id.as_str()) != Some(ctx.cluster.node.as_str()) {
            return;
        }
        let live: HashSet<String> = nodes.into_iter().map(|n| n.id).collect();
        let mut gone = Vec::new();
        {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            for (channel, members) in view.iter_mut() {
                for (conn, e) in members.iter_mut() {
                    if !e.reaped && !live.contains(&e.node) {
                        e.reaped = true;
                        gone.push((channel.clone(), conn.clone()));
                    }
                }
            }
        }
        if !gone.is_empty() {
            metrics::counter!("herald_presence_reaped_total").increment(gone.len() as u64);
            debug!(count = gone.len(), "Reaping presence of nodes that stopped");
        }
        for (channel, conn) in gone {
            self.write_leave(ctx, &channel, &conn);
        }
    }
}

/// Tries of a presence leave.
const LEAVE_ATTEMPTS: u32 = 3;

/// Counts a failed join (not retried: the member is then missing from
/// answers until it subscribes again).
fn watch_write(r: Result<herald_log::PendingPublish, LogError>, op: &'static str) {
    match r {
        Ok(pending) => {
            tokio::spawn(async move {
                if let Err(e) = pending.await {
                    metrics::counter!("herald_presence_errors_total", "op" => op).increment(1);
                    warn!(%e, op, "Presence write failed");
                }
            });
        }
        Err(e) => {
            metrics::counter!("herald_presence_errors_total", "op" => op).increment(1);
            warn!(%e, op, "Presence write failed");
        }
    }
}
