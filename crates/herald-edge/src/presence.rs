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

/// One channel's members, with the counts `presence_stats` answers from
/// (kept as members come and go, so a stats answer costs the same on a
/// channel of five members as on one of five thousand).
#[derive(Default)]
struct ChannelView {
    /// conn → member, ordered by conn.
    members: BTreeMap<String, Entry>,
    /// node → its members here.
    by_node: HashMap<String, usize>,
    /// user (`sub`) → its members here.
    users: HashMap<String, usize>,
    /// Join/leave events sent in the current second, and when it began:
    /// beyond [`EVENTS_PER_CHANNEL`] a second, events are dropped.
    window: Option<(std::time::Instant, u32)>,
}

impl ChannelView {
    fn insert(&mut self, conn: String, e: Entry) -> bool {
        *self.by_node.entry(e.node.clone()).or_default() += 1;
        if let Some(u) = &e.member.user {
            *self.users.entry(u.clone()).or_default() += 1;
        }
        match self.members.insert(conn, e) {
            Some(old) => {
                self.forget(&old);
                false
            }
            None => true,
        }
    }

    fn remove(&mut self, conn: &str) -> Option<Entry> {
        let e = self.members.remove(conn)?;
        self.forget(&e);
        Some(e)
    }

    fn forget(&mut self, e: &Entry) {
        fn dec(map: &mut HashMap<String, usize>, k: &str) {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
        dec(&mut self.by_node, &e.node);
        if let Some(u) = &e.member.user {
            dec(&mut self.users, u);
        }
    }

    /// Whether one more join/leave event may go out this second.
    fn event_allowed(&mut self) -> bool {
        let now = std::time::Instant::now();
        match &mut self.window {
            Some((start, n)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *n += 1;
                *n <= EVENTS_PER_CHANNEL
            }
            w => {
                *w = Some((now, 1));
                true
            }
        }
    }
}

/// Join/leave events sent to a channel's members per second, by each node;
/// beyond, they are dropped and counted
/// (`herald_presence_events_dropped_total{reason="channel_rate"}`): a
/// channel's churn cannot flood its members. The member list itself stays
/// exact (`presence`).
pub const EVENTS_PER_CHANNEL: u32 = 100;

/// What presence shows of a connection's `client_id`: an authenticated
/// connection's is its user (`sub`), shown as is; an anonymous client's is
/// the credential of its durable cursors, so only a one-way digest of it is
/// shown (stable across its reconnects, useless to connect with).
pub fn shown_client(client_id: &str, authenticated: bool) -> String {
    if authenticated {
        return client_id.to_owned();
    }
    let digest = uuid::Uuid::new_v5(&SHOWN_CLIENT_NAMESPACE, client_id.as_bytes());
    format!("anonymous#{}", digest.simple())
}

/// The name space of [`shown_client`]'s digests (a fixed, random UUID).
const SHOWN_CLIENT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5d0c_2f6e_8a4b_4c1e_9f37_1b2a_6e4d_8c90);

/// This node's view of every node's members, and its own writes.
pub struct Presence {
    topic: String,
    partitions: AtomicI32,
    /// channel → its members.
    view: Mutex<HashMap<String, ChannelView>>,
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
        records: mpsc::UnboundedReceiver<Record>,
    ) -> Result<(), LogError> {
        let p = &ctx.presence;
        p.partitions.store(partitions, Ordering::Relaxed);
        let live_from = crate::cluster::follow_from_start(&*ctx.log, &p.topic, partitions).await?;
        *p.live_from.lock().unwrap_or_else(|e| e.into_inner()) = live_from;
        crate::cluster::run_view(
            &ctx,
            records,
            |ctx, r| ctx.presence.on_record(ctx, r),
            |ctx| ctx.presence.reap(ctx),
        );
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
                    );
                fresh.then(|| ServerFrame::Join {
                    channel: channel.clone(),
                    member,
                })
            }
        };
        let Some(event) = event else { return };
        let namespace = channel.split(':').next().unwrap_or_default();
        if !(live && self.join_leave.contains(namespace)) {
            return;
        }
        let Some(topic) = ctx.topics.get(namespace) else {
            return;
        };
        let allowed = {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            // A leave of the last member took the channel's view away; its
            // window starts again with the next join.
            view.get_mut(&channel)
                .is_none_or(ChannelView::event_allowed)
        };
        if !allowed {
            metrics::counter!("herald_presence_events_dropped_total", "reason" => "channel_rate")
                .increment(1);
            return;
        }
        let (sent, dropped) = ctx.hub.notify(topic, &channel, &event.to_json());
        metrics::counter!("herald_presence_events_total").increment(sent as u64);
        if dropped > 0 {
            metrics::counter!("herald_presence_events_dropped_total", "reason" => "queue_full")
                .increment(dropped as u64);
        }
    }

    /// Takes `conn` off `channel`'s view: the `leave` event, if it was there.
    fn remove(&self, channel: &str, conn: &str) -> Option<ServerFrame> {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let gone = view.get_mut(channel).and_then(|m| m.remove(conn));
        if view.get(channel).is_some_and(|v| v.members.is_empty()) {
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

    /// `channel`'s members on live nodes, ordered by connection: at most
    /// `max`, and whether more were left out.
    pub fn members(&self, ctx: &Ctx, channel: &str, max: usize) -> (Vec<Member>, bool) {
        let live = Self::live_nodes(ctx);
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let Some(v) = view.get(channel) else {
            return (Vec::new(), false);
        };
        let mut shown = v.members.values().filter(|e| live.contains(&e.node));
        let members: Vec<Member> = shown.by_ref().take(max).map(|e| e.member.clone()).collect();
        let truncated = shown.next().is_some();
        (members, truncated)
    }

    /// (connections on live nodes, distinct users) on `channel`, from the
    /// counts kept as members come and go: O(nodes), whatever the number of
    /// members. `users` counts the members of a node that stopped until they
    /// are reaped (three node heartbeats).
    pub fn stats(&self, ctx: &Ctx, channel: &str) -> (usize, usize) {
        let live = Self::live_nodes(ctx);
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        view.get(channel).map_or((0, 0), |v| {
            let clients = v
                .by_node
                .iter()
                .filter(|(node, _)| live.contains(*node))
                .map(|(_, n)| n)
                .sum();
            (clients, v.users.len())
        })
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
            for (channel, v) in view.iter_mut() {
                for (conn, e) in v.members.iter_mut() {
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
