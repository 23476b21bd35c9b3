//! Edge settings. Every field has a documented default (see `Default`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::{AccessRule, Capability};

/// A namespace: the channels `name:*`, stored in topic `{prefix}{name}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceConfig {
    pub name: String,
    /// Partitions of the topic when herald creates it; an existing topic
    /// with another count is an error at start.
    pub partitions: i32,
    /// `retention.ms` of the topic when herald creates it (`None`: the
    /// broker's default).
    pub retention_ms: Option<i64>,
    /// Who may subscribe (and resume), publish, and read history.
    pub subscribe: AccessRule,
    pub publish: AccessRule,
    pub history: AccessRule,
    /// Overrides of [`Limits::max_message_bytes`] and
    /// [`Limits::publish_rate`] for this namespace.
    pub max_message_bytes: Option<usize>,
    pub publish_rate: Option<u32>,
    /// Every subscription of a connection with a client id (a token's `sub`
    /// or `client_id`) stores its acks as a durable cursor, as if it had
    /// subscribed with `durable: true`.
    pub durable: bool,
    /// Who may read a channel's presence (`nobody`: presence off unless
    /// `join_leave`).
    pub presence: AccessRule,
    /// Subscribers get `join` / `leave` frames (records presence).
    pub join_leave: bool,
    /// Every authenticated connection is subscribed to `name:{sub}`.
    pub personal: bool,
    /// Publishes may be ephemeral: fanned out through the namespace's
    /// ephemeral topic, not kept, not resumable.
    pub ephemeral: bool,
    /// A subscriber behind on a channel gets its newest message (and a
    /// `conflated` notice) instead of being cut.
    pub conflate: bool,
}

impl NamespaceConfig {
    /// The access rule for `cap`.
    pub fn rule(&self, cap: Capability) -> AccessRule {
        match cap {
            Capability::Subscribe => self.subscribe,
            Capability::Publish => self.publish,
            Capability::History => self.history,
            Capability::Presence => self.presence,
        }
    }

    /// A namespace with the secure default rules: authenticated users only.
    pub fn new(name: &str, partitions: i32) -> NamespaceConfig {
        NamespaceConfig {
            name: name.to_owned(),
            partitions,
            retention_ms: None,
            subscribe: AccessRule::Authenticated,
            publish: AccessRule::Authenticated,
            history: AccessRule::Authenticated,
            max_message_bytes: None,
            publish_rate: None,
            durable: false,
            presence: AccessRule::Nobody,
            join_leave: false,
            personal: false,
            ephemeral: false,
            conflate: false,
        }
    }

    /// Whether this namespace's members are recorded in the presence topic.
    pub fn records_presence(&self) -> bool {
        self.presence != AccessRule::Nobody || self.join_leave
    }
}

/// Names herald uses for its own topics (`{prefix}meta`, `{prefix}cursors`).
pub const RESERVED_NAMESPACES: [&str; 5] =
    ["meta", "cursors", "control", "presence", "revocations"];

impl std::str::FromStr for NamespaceConfig {
    type Err = String;

    /// `name`, `name=partitions` or `name=partitions:rule`, e.g. `chat=8` or
    /// `chat=8:anonymous` (the rule applies to subscribe, publish and history;
    /// without one: `authenticated`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (s, rule) = match s.split_once(':') {
            Some((head, rule)) => (head, Some(rule.parse::<AccessRule>()?)),
            None => (s, None),
        };
        let (name, parts) = match s.split_once('=') {
            Some((n, p)) => (
                n,
                p.parse::<i32>()
                    .map_err(|e| format!("namespace `{s}`: bad partition count: {e}"))?,
            ),
            None => (s, 8),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "namespace `{name}` must be lowercase ASCII letters, digits, `_` or `-`"
            ));
        }
        if RESERVED_NAMESPACES.contains(&name) {
            return Err(format!(
                "namespace `{name}` is reserved: its topic would collide with herald's own `{{prefix}}{name}`"
            ));
        }
        if parts < 1 {
            return Err(format!("namespace `{name}`: partitions must be at least 1"));
        }
        let mut ns = NamespaceConfig::new(name, parts);
        if let Some(rule) = rule {
            ns.subscribe = rule;
            ns.publish = rule;
            ns.history = rule;
        }
        Ok(ns)
    }
}

/// What one connection (and one client address) may hold and do: the
/// `[limits]` section of the configuration, as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Outbound queue of a connection, in messages. Default 1024.
    pub queue_messages: usize,
    /// Outbound queue of a connection, in bytes. Default 4 MiB.
    pub queue_bytes: usize,
    /// Largest `data` of a publish, in bytes of JSON. Default 64 KiB.
    pub max_message_bytes: usize,
    /// Largest WebSocket message accepted, in bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Read buffer of a connection, in bytes, allocated for its whole life.
    /// Default 1 KiB; it grows for a larger frame, which then takes more
    /// reads of this size. (tungstenite's own default is 128 KiB, allocated
    /// up front for every connection; each KiB
    /// here is ~1 KB per idle connection, docs/operations.md, Sizing.)
    pub read_buffer_bytes: usize,
    /// Publishes per second per connection (token bucket), 0 = unlimited.
    /// Default 1000.
    pub publish_rate: u32,
    /// Burst of the publish token bucket. Default 2000.
    pub publish_burst: u32,
    /// Open WebSocket connections on this node. Default 100,000; more are
    /// refused with HTTP 503.
    pub max_connections: usize,
    /// Open WebSocket connections per client IP. Default 10,000; more are
    /// refused with HTTP 429.
    pub max_connections_per_ip: usize,
    /// Connections of one user (a token's or hook's `sub`) across the
    /// cluster, approximately ([`crate::ctx::Users`]): more are refused
    /// with HTTP 429 at connect, `rate_limited` on `auth`. 0 = no limit
    /// (the default: what a user may hold depends on the application).
    pub max_connections_per_user: usize,
    /// Subscriptions per connection. Default 256.
    pub max_subscriptions: usize,
    /// Publishes of one connection waiting for Kafka at once. Default 256.
    pub max_inflight_publishes: usize,
    /// `auth` and `refresh` frames per connection per minute (each may cost a
    /// signature check). Default 10.
    pub auth_per_minute: u32,
    /// Frames per second a connection may send, of every type but publish
    /// (it has `publish_rate`): subscribe, ack, presence, history, ping...,
    /// on every transport;
    /// beyond, each is answered `rate_limited` and not handled. A `presence`
    /// frame counts 20, `history` 10, `subscribe`/`unsubscribe` 2, the rest
    /// 1. 0 = unlimited. Default 2,000.
    pub frame_rate: u32,
    /// Burst of the frame budget. Default 4,000.
    pub frame_burst: u32,
    /// Subscribes to channels with presence per connection per minute (each
    /// writes a join and a leave to Kafka and sends them to every member).
    /// 0 = unlimited. Default 120.
    pub presence_churn_per_minute: u32,
    /// Most members in a `presence` answer (then with `truncated: true`).
    /// Default 1,000.
    pub presence_max_members: usize,
    /// Longest query string of `/ws`, `/sse` and `/poll`, in bytes; a longer
    /// one is refused (414) before it is parsed. Default 8 KiB.
    pub max_query_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_messages: 1024,
            queue_bytes: 4 << 20,
            max_message_bytes: 64 << 10,
            max_frame_bytes: 1 << 20,
            read_buffer_bytes: 1 << 10,
            publish_rate: 1000,
            publish_burst: 2000,
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            max_connections_per_user: 0,
            max_subscriptions: 256,
            max_inflight_publishes: 256,
            auth_per_minute: 10,
            frame_rate: 2_000,
            frame_burst: 4_000,
            presence_churn_per_minute: 120,
            presence_max_members: 1_000,
            max_query_bytes: 8 << 10,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Where to listen. Default 127.0.0.1:8080; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Configured namespaces. Default: `chat` with 8 partitions.
    pub namespaces: Vec<NamespaceConfig>,
    /// What one connection (and one client address) may hold and do.
    pub limits: Limits,
    /// WebSocket ping interval. Default 20 s.
    pub heartbeat: Duration,
    /// Close a connection that sent nothing (not even a pong) for this long.
    /// Default 60 s.
    pub idle_timeout: Duration,
    /// A batched write to a connection (at most 64 frames) that does not
    /// complete within this long ends the connection: the peer stopped
    /// reading (its TCP window is full). Default 30 s.
    pub write_timeout: Duration,
    /// How long a publish id is remembered for dedup. Default 10 min.
    pub dedup_window: Duration,
    /// Most ids remembered. Default 1,000,000.
    pub dedup_capacity: u64,
    /// Messages per partition kept in memory for fast resume. Default 10,000.
    pub recent_messages: usize,
    /// Bytes per partition kept in memory for fast resume. Default 8 MiB.
    pub recent_bytes: usize,
    /// A partition that has had no local subscriber for this long is no
    /// longer read from Kafka (its ring is dropped too); `None`: followed
    /// for good once used. Default 60 s.
    pub follow_grace: Option<Duration>,
    /// How often a node writes its heartbeat to the control topic; a node
    /// silent for three intervals is no longer live. Default 2 s.
    pub node_heartbeat: Duration,
    /// How long an admin command waits for every live node's reply.
    /// Default 5 s.
    pub command_timeout: Duration,
    /// Calls to the application on connect, subscribe and publish.
    pub hooks: crate::hooks::HooksConfig,
    /// Outbound webhooks.
    pub webhooks: crate::webhooks::WebhooksConfig,
    /// On shutdown, how long in-flight publishes and connections get to finish.
    /// Default 10 s.
    pub shutdown_grace: Duration,
    /// On shutdown, how long `/readyz` reports unhealthy before connections
    /// are told to leave, so load balancers stop sending new ones. Default 1 s.
    pub drain_delay: Duration,
    /// Upper bound of the random delay in the `reconnect` frame sent on
    /// drain, spreading the reconnects over other nodes. Default 2 s.
    pub reconnect_jitter: Duration,
    /// Largest `limit` a `history` request may ask for. Default 1,000.
    pub history_max_limit: usize,
    /// Bytes of messages in one `history` reply (a single larger message is
    /// still sent alone). Default 1 MiB, and never more than half the
    /// connection's queue.
    pub history_max_bytes: usize,
    /// Partition records scanned for one `history` page before it is cut
    /// short (with `done: false` and a `next` to continue). Default 100,000.
    pub history_max_scan: i64,
    /// `history` requests of one connection served at once. Default 4.
    pub history_concurrency: usize,
    /// How often acked durable cursors are written to Kafka. Default 1 s.
    pub cursor_flush_interval: Duration,
    /// Partitions of the cursor topic when herald creates it. Default 8.
    pub cursor_partitions: i32,
    /// Cursors remembered per node for lookups. Default 100,000.
    pub cursor_cache_capacity: u64,
    /// `Origin`s a WebSocket upgrade may come from (exact, e.g.
    /// `https://app.example.com`). Empty (the default): any. A request
    /// without `Origin` (not a browser) is always let through.
    pub allowed_origins: Vec<String>,
    /// Serves the browser demo (`clients/typescript`, built) at `/demo/`
    /// from this folder. `None` (the default): no demo.
    pub demo_dir: Option<std::path::PathBuf>,
    /// Load balancers whose `X-Forwarded-For` is believed: for a connection
    /// from one of them, the client address (for the per-IP limit) is the
    /// rightmost address of the header that is not itself a trusted proxy.
    /// Empty (the default): the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How long a client may take to send a request's headers (the
    /// WebSocket handshake included) before its socket is closed. Default 10 s.
    pub header_read_timeout: Duration,
    /// A second listener for `/metrics`, `/healthz` and `/readyz` only. With
    /// it, `/metrics` is not served on `listen`. Default: none.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            namespaces: vec![NamespaceConfig::new("chat", 8)],
            limits: Limits::default(),
            heartbeat: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            dedup_window: Duration::from_secs(600),
            dedup_capacity: 1_000_000,
            recent_messages: 10_000,
            recent_bytes: 8 << 20,
            follow_grace: Some(Duration::from_secs(60)),
            node_heartbeat: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            hooks: crate::hooks::HooksConfig {
                timeout: Duration::from_secs(1),
                ..Default::default()
            },
            webhooks: Default::default(),
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::from_secs(1),
            reconnect_jitter: Duration::from_secs(2),
            history_max_limit: 1_000,
            history_max_bytes: 1 << 20,
            history_max_scan: 100_000,
            history_concurrency: 4,
            cursor_flush_interval: Duration::from_secs(1),
            cursor_partitions: 8,
            cursor_cache_capacity: 100_000,
            allowed_origins: Vec::new(),
            demo_dir: None,
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            admin_listen: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaces() {
        assert_eq!(
            "chat=3".parse::<NamespaceConfig>().unwrap(),
            NamespaceConfig::new("chat", 3)
        );
        let open = "chat=3:anonymous".parse::<NamespaceConfig>().unwrap();
        assert_eq!(open.publish, AccessRule::Anonymous);
        assert!("chat=3:everyone".parse::<NamespaceConfig>().is_err());
        assert_eq!("user".parse::<NamespaceConfig>().unwrap().partitions, 8);
        assert!("Chat".parse::<NamespaceConfig>().is_err());
        assert!("chat=0".parse::<NamespaceConfig>().is_err());
        assert!("chat=x".parse::<NamespaceConfig>().is_err());
        assert!("meta".parse::<NamespaceConfig>().is_err());
        assert!("cursors=2".parse::<NamespaceConfig>().is_err());
    }
}
