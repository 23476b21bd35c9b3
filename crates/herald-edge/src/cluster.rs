//! The cluster as one node sees it, and commands every node applies, through
//! one Kafka topic of herald's: `{prefix}control` (one partition, one hour of
//! retention, followed by every node's tail). Kafka stays the only shared
//! layer: no gossip, no second datastore.
//!
//! Records (JSON values, key = the writing node's id):
//! - `node`: a heartbeat with the node's id, address, version, start time,
//!   connections and subscriptions, every `cluster.heartbeat_ms`. A node is
//!   live while its last heartbeat is younger than three intervals; a node
//!   that shuts down writes `leave`.
//! - `command`: an admin command (disconnect a user, unsubscribe a user from
//!   a channel, list channels). Every live node applies it and writes a
//!   `reply`; the node that sent it waits for a reply from every node that
//!   was live when it was sent, up to `cluster.command_timeout_ms`, and says
//!   which replied and which did not.
//!
//! A node starts reading the topic a few heartbeats back (to know the other
//! nodes at once) and applies only the commands written after it started.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_hub::ConnCommand;
use herald_log::{LogError, Record};
use herald_proto::envelope::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::ctx::Ctx;

/// A live node, as its last heartbeat described it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// The address the node listens on.
    pub address: String,
    pub version: String,
    /// When the node started, ms since the Unix epoch.
    pub started_ms: i64,
    /// When the heartbeat was written (the writer's clock).
    pub ts: i64,
    pub connections: u64,
    pub subscriptions: u64,
    /// Users holding many connections here (`limits.max_connections_per_user`
    /// is on): user → connections on this node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, u32>,
}

/// An admin command every node applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Close every connection of `user` (its token's `sub`).
    Disconnect {
        user: String,
        code: u16,
        reason: String,
        reconnect: bool,
    },
    /// End `user`'s subscriptions to `channel`.
    Unsubscribe { user: String, channel: String },
    /// Channels with local subscribers, optionally matching a pattern.
    Channels { pattern: Option<String> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ControlRecord {
    Node(NodeInfo),
    Leave {
        node: String,
    },
    Command {
        id: Uuid,
        node: String,
        command: Command,
    },
    Reply {
        id: Uuid,
        node: String,
        result: Value,
    },
}

/// What a command achieved across the cluster.
#[derive(Debug, Default)]
pub struct CommandOutcome {
    /// Each node that applied the command, with its result.
    pub applied: BTreeMap<String, Value>,
    /// Nodes live when the command was sent that did not reply in time.
    pub missing: Vec<String>,
}

/// This node's view of the cluster.
pub struct Cluster {
    /// This node's id (a UUID per process).
    pub node: String,
    topic: String,
    heartbeat: Duration,
    timeout: Duration,
    started_ms: i64,
    address: Mutex<String>,
    /// node id → (its heartbeat, when it was heard: ms on this node's clock).
    nodes: Mutex<HashMap<String, (NodeInfo, i64)>>,
    /// Commands this node sent, waiting for replies.
    pending: Mutex<HashMap<Uuid, mpsc::UnboundedSender<(String, Value)>>>,
    /// Offset of the first record written after this node started reading:
    /// commands before it are history, not applied.
    live_from: AtomicI64,
}

impl Cluster {
    pub fn new(topic: String, heartbeat: Duration, timeout: Duration) -> Cluster {
        Cluster {
            node: Uuid::new_v4().simple().to_string(),
            topic,
            heartbeat,
            timeout,
            started_ms: now_ms(),
            address: Mutex::new(String::new()),
            nodes: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            live_from: AtomicI64::new(i64::MAX),
        }
    }

    /// The control topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Live nodes (this one included once its first heartbeat is read),
    /// sorted by id.
    pub fn live_nodes(&self) -> Vec<NodeInfo> {
        let horizon = now_ms() - 3 * self.heartbeat.as_millis() as i64;
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<NodeInfo> = nodes
            .values()
            .filter(|(_, seen)| *seen >= horizon)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn info(&self, ctx: &Ctx) -> NodeInfo {
        NodeInfo {
            id: self.node.clone(),
            address: self
                .address
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_ms: self.started_ms,
            ts: now_ms(),
            connections: ctx.conns.live() as u64,
            subscriptions: ctx.hub.subscription_count() as u64,
            users: match ctx.cfg.limits.max_connections_per_user {
                0 => BTreeMap::new(),
                limit => ctx.users.heavy(
                    crate::ctx::heavy_threshold(limit),
                    crate::ctx::HEAVY_USERS_MAX,
                ),
            },
        }
    }

    /// `user`'s connections on the other live nodes, as their last
    /// heartbeats named them.
    pub fn remote_user_connections(&self, user: &str) -> u64 {
        let horizon = now_ms() - 3 * self.heartbeat.as_millis() as i64;
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .iter()
            .filter(|(id, (_, seen))| **id != self.node && *seen >= horizon)
            .filter_map(|(_, (n, _))| n.users.get(user))
            .map(|n| u64::from(*n))
            .sum()
    }

    async fn write(&self, ctx: &Ctx, record: &ControlRecord) -> Result<(), LogError> {
        let value = serde_json::to_vec(record).map_err(|e| LogError::Other(e.to_string()))?;
        ctx.log
            .append_record(&self.topic, 0, self.node.as_bytes(), &value, &[])?
            .await
            .map(|_| ())
    }

    /// Starts following the control topic (records arrive on `records`,
    /// from the tail) and sending heartbeats. `address` is what other nodes
    /// are told this one listens on.
    pub async fn start(
        ctx: Arc<Ctx>,
        address: String,
        mut records: mpsc::UnboundedReceiver<Record>,
    ) -> Result<(), LogError> {
        let cluster = &ctx.cluster;
        *cluster.address.lock().unwrap_or_else(|p| p.into_inner()) = address;
        let topic = cluster.topic.clone();
        let high = watermarks_when_ready(&*ctx.log, &topic, 0).await?.high;
        let back = now_ms() - 3 * cluster.heartbeat.as_millis() as i64;
        let from = ctx
            .log
            .offset_for_time(&topic, 0, back)
            .await?
            .unwrap_or(high)
            .min(high);
        cluster.live_from.store(high, Ordering::SeqCst);
        ctx.log.follow(&topic, 0, from)?;
        {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                while let Some(r) = records.recv().await {
                    ctx.cluster.on_record(&ctx, r).await;
                }
            });
        }
        let first = cluster.info(&ctx);
        cluster.write(&ctx, &ControlRecord::Node(first)).await?;
        let weak = Arc::downgrade(&ctx);
        let every = cluster.heartbeat;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(ctx) = weak.upgrade() else { return };
                if ctx.shutdown.is_draining() {
                    return;
                }
                let info = ctx.cluster.info(&ctx);
                if let Err(e) = ctx.cluster.write(&ctx, &ControlRecord::Node(info)).await {
                    metrics::counter!("herald_cluster_errors_total", "op" => "heartbeat")
                        .increment(1);
                    warn!(%e, "Cluster heartbeat failed");
                }
            }
        });
        Ok(())
    }

    /// Tells the other nodes this one is leaving (at shutdown).
    pub async fn leave(&self, ctx: &Ctx) {
        let bye = ControlRecord::Leave {
            node: self.node.clone(),
        };
        if let Err(e) = self.write(ctx, &bye).await {
            warn!(%e, "Could not announce leaving the cluster");
        }
    }

    async fn on_record(&self, ctx: &Ctx, r: Record) {
        let Some(value) = r.value.as_deref() else {
            return;
        };
        let rec: ControlRecord = match serde_json::from_slice(value) {
            Ok(rec) => rec,
            Err(e) => {
                metrics::counter!("herald_cluster_errors_total", "op" => "decode").increment(1);
                debug!(%e, offset = r.offset, "Skipping an unreadable control record");
                return;
            }
        };
        let live = r.offset >= self.live_from.load(Ordering::SeqCst);
        match rec {
            ControlRecord::Node(info) => {
                let seen = if live { now_ms() } else { info.ts };
                self.nodes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(info.id.clone(), (info, seen));
            }
            ControlRecord::Leave { node } => {
                self.nodes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&node);
            }
            ControlRecord::Command { id, node, command } if live => {
                let result = apply(ctx, &command);
                metrics::counter!("herald_cluster_commands_applied_total").increment(1);
                debug!(%id, from = %node, ?command, %result, "Applied a cluster command");
                let reply = ControlRecord::Reply {
                    id,
                    node: self.node.clone(),
                    result,
                };
                if let Err(e) = self.write(ctx, &reply).await {
                    metrics::counter!("herald_cluster_errors_total", "op" => "reply").increment(1);
                    warn!(%e, %id, "Could not reply to a cluster command");
                }
            }
            ControlRecord::Command { .. } => {}
            ControlRecord::Reply { id, node, result } => {
                let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tx) = pending.get(&id) {
                    let _ = tx.send((node, result));
                }
            }
        }
    }

    /// Sends `command` to every live node (this one included) and waits for
    /// their replies, up to `cluster.command_timeout_ms`.
    pub async fn command(&self, ctx: &Ctx, command: Command) -> Result<CommandOutcome, LogError> {
        let id = Uuid::new_v4();
        let mut expected: Vec<String> = self.live_nodes().into_iter().map(|n| n.id).collect();
        if !expected.contains(&self.node) {
            expected.push(self.node.clone());
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let sent = self
            .write(
                ctx,
                &ControlRecord::Command {
                    id,
                    node: self.node.clone(),
                    command,
                },
            )
            .await;
        let mut out = CommandOutcome::default();
        if sent.is_ok() {
            let deadline = tokio::time::Instant::now() + self.timeout;
            while expected.iter().any(|n| !out.applied.contains_key(n)) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((node, result))) => {
                        out.applied.insert(node, result);
                    }
                    _ => break,
                }
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        sent?;
        out.missing = expected
            .into_iter()
            .filter(|n| !out.applied.contains_key(n))
            .collect();
        if !out.missing.is_empty() {
            metrics::counter!("herald_cluster_commands_incomplete_total").increment(1);
        }
        Ok(out)
    }
}

/// Applies a command on this node; the result goes back to the sender.
fn apply(ctx: &Ctx, command: &Command) -> Value {
    match command {
        Command::Disconnect {
            user,
            code,
            reason,
            reconnect,
        } => {
            let n = ctx.users.tell(user, |_| {
                Some(ConnCommand::Close {
                    code: *code,
                    reason: reason.clone(),
                    reconnect: *reconnect,
                })
            });
            json!({ "connections": n })
        }
        Command::Unsubscribe { user, channel } => {
            let n = ctx
                .users
                .tell(user, |_| Some(ConnCommand::Unsubscribe(channel.clone())));
            json!({ "connections": n })
        }
        Command::Channels { pattern } => {
            let channels: BTreeMap<String, usize> = ctx
                .hub
                .channels()
                .into_iter()
                .filter(|(c, _)| pattern.as_deref().is_none_or(|p| matches(p, c)))
                .collect();
            json!({ "channels": channels })
        }
    }
}

/// Whether `channel` matches `pattern`, where `*` stands for any run of
/// characters (`chat:*`, `*:lobby`, `chat:room-*-eu`).
pub fn matches(pattern: &str, channel: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return true;
    };
    let Some(mut rest) = channel.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: an exact match.
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A partition's watermarks, retried for a few seconds while its leader is
/// not known yet (a topic created a moment ago).
pub(crate) async fn watermarks_when_ready(
    log: &dyn herald_log::Log,
    topic: &str,
    partition: i32,
) -> Result<herald_log::Watermarks, LogError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match log.watermarks(topic, partition).await {
            Ok(w) => return Ok(w),
            Err(e) if tokio::time::Instant::now() < deadline => {
                debug!(%e, topic, partition, "Watermarks not available yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Follows every partition of one of herald's compacted topics from its
/// start (compaction keeps it small), and returns, per partition, the offset
/// from which records were written after this call: those make events, the
/// ones before only rebuild the view (presence, channel occupancy).
pub(crate) async fn follow_from_start(
    log: &dyn herald_log::Log,
    topic: &str,
    partitions: i32,
) -> Result<std::collections::HashMap<i32, i64>, LogError> {
    let mut live_from = std::collections::HashMap::new();
    for part in 0..partitions {
        let wm = watermarks_when_ready(log, topic, part).await?;
        live_from.insert(part, wm.high);
        log.follow(topic, part, wm.low)?;
    }
    Ok(live_from)
}

/// Runs a view of one of herald's compacted topics (presence, channel
/// occupancy): `on_record` gets its records in order, and `reap` runs every
/// node heartbeat (at least 100 ms) until the node drains, to tombstone the
/// entries of nodes that stopped.
pub(crate) fn run_view(
    ctx: &Arc<Ctx>,
    mut records: tokio::sync::mpsc::UnboundedReceiver<herald_log::Record>,
    on_record: fn(&Ctx, herald_log::Record),
    reap: fn(&Ctx),
) {
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(r) = records.recv().await {
                on_record(&ctx, r);
            }
        });
    }
    let weak = Arc::downgrade(ctx);
    let every = ctx.cfg.node_heartbeat.max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(ctx) = weak.upgrade() else { return };
            if ctx.shutdown.is_draining() {
                return;
            }
            reap(&ctx);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("chat:*", "chat:lobby"));
        assert!(matches("chat:*", "chat:"));
        assert!(!matches("chat:*", "room:lobby"));
        assert!(matches("*:lobby", "chat:lobby"));
        assert!(matches("chat:room-*-eu", "chat:room-7-eu"));
        assert!(!matches("chat:room-*-eu", "chat:room-7-us"));
        assert!(matches("chat:lobby", "chat:lobby"));
        assert!(!matches("chat:lobby", "chat:lobby2"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "a-b-c"));
        assert!(!matches("a*b*c", "a-c-b"));
        assert!(!matches("ab*ba", "aba"));
    }

    #[test]
    fn control_records_round_trip() {
        let r = ControlRecord::Command {
            id: Uuid::nil(),
            node: "n1".into(),
            command: Command::Disconnect {
                user: "alice".into(),
                code: 4010,
                reason: "bye".into(),
                reconnect: false,
            },
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""kind":"command""#) && text.contains(r#""op":"disconnect""#));
        let back: ControlRecord = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            back,
            ControlRecord::Command {
                command: Command::Disconnect { .. },
                ..
            }
        ));
    }
}
