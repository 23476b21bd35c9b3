//! Outbound webhooks: herald tells the application's endpoints about
//! connections, subscriptions, channel occupancy and messages, through Kafka.
//!
//! - Nodes write events (`connect`, `disconnect`, `join`, `leave`,
//!   `occupied`, `vacated`) to `{prefix}webhooks.events`, but only the kinds
//!   some endpoint wants ([`Events`]); `occupied` and `vacated` come from
//!   [`occupancy`]. `message` events are the namespace topics' own records.
//! - Each endpoint is a Kafka consumer group, `{prefix}webhooks.{name}`, of
//!   which every node is a member ([`deliver`]): an event is delivered by
//!   one node of the fleet, survives node restarts (the group's committed
//!   offsets) and is sent again, with the same id, until the endpoint
//!   answers 2xx or the attempts run out; then it goes to
//!   `{prefix}webhooks.dead`. At least once, in no particular order.
//!
//! docs/operations.md ("Webhooks") says how to configure and watch them;
//! docs/protocol.md ("Webhooks") has the bodies and the signature.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use herald_proto::partition::partition_for_key;
use herald_proto::Member;
use hyper::Uri;
use serde::Serialize;
use tracing::warn;

use crate::ctx::Ctx;

pub mod deliver;
pub mod occupancy;

/// Partitions of `{prefix}webhooks.events` and `{prefix}webhooks.occupancy`
/// when herald creates them.
pub const EVENT_PARTITIONS: i32 = 8;

/// What an endpoint may be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Connect,
    Disconnect,
    Join,
    Leave,
    Occupied,
    Vacated,
    Message,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Connect,
        EventKind::Disconnect,
        EventKind::Join,
        EventKind::Leave,
        EventKind::Occupied,
        EventKind::Vacated,
        EventKind::Message,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Occupied => "occupied",
            EventKind::Vacated => "vacated",
            EventKind::Message => "message",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Events about a channel (filtered by an endpoint's namespaces).
    pub fn is_channel(self) -> bool {
        !matches!(self, EventKind::Connect | EventKind::Disconnect)
    }
}

/// One endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Names the endpoint in metrics, its consumer group and dead letters.
    pub name: String,
    pub url: Uri,
    /// The HMAC-SHA256 key of the signature.
    pub secret: Vec<u8>,
    pub events: HashSet<EventKind>,
    /// Channel events of these namespaces only; empty: of every namespace
    /// (`message` events need namespaces named).
    pub namespaces: Vec<String>,
    /// Deliveries to it in flight at once, per node.
    pub max_in_flight: usize,
    /// Tries of one event before it is a dead letter.
    pub attempts: u32,
    /// The wait before the second try, doubled after each (jittered), at
    /// most `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long one POST may take.
    pub timeout: Duration,
}

impl Endpoint {
    /// Whether this endpoint wants an event of `kind` (about `channel`).
    pub fn wants(&self, kind: EventKind, channel: Option<&str>) -> bool {
        if !self.events.contains(&kind) {
            return false;
        }
        match channel {
            Some(c) if kind.is_channel() && !self.namespaces.is_empty() => {
                let ns = c.split(':').next().unwrap_or_default();
                self.namespaces.iter().any(|n| n == ns)
            }
            _ => true,
        }
    }
}

/// `[webhooks]`.
#[derive(Clone, Debug, Default)]
pub struct WebhooksConfig {
    pub endpoints: Vec<Endpoint>,
}

/// A webhook URL: `http(s)://host[:port]/path`.
pub fn parse_url(s: &str) -> Result<Uri, String> {
    crate::http_client::parse_url(s, "http://127.0.0.1:3000/herald/events")
}

/// The signing key of a configured secret: `whsec_` + base64 (the
/// Standard Webhooks form) is decoded, anything else is used as its bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("a whsec_ secret must be base64 after the prefix: {e}")),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The webhook side of a node before it starts: its [`Events`] and
/// [`occupancy::Occupancy`], with their topics readied when some endpoint is
/// configured (none is made otherwise).
pub struct Prepared {
    pub events: Events,
    pub occupancy: occupancy::Occupancy,
    /// Partitions of the occupancy topic, when it is read.
    pub occupancy_partitions: Option<i32>,
    pub dead_topic: String,
}

/// Readies the events, occupancy and dead-letter topics (`what` names the
/// topic of a failure).
pub async fn prepare(
    log: &dyn herald_log::Log,
    cfg: &WebhooksConfig,
) -> Result<Prepared, (String, herald_log::LogError)> {
    let prefix = &log.config().topic_prefix;
    let events = Events::new(format!("{prefix}webhooks.events"), cfg);
    let occupancy = occupancy::Occupancy::new(format!("{prefix}webhooks.occupancy"));
    let dead_topic = format!("{prefix}webhooks.dead");
    let mut occupancy_partitions = None;
    if !cfg.endpoints.is_empty() {
        let n = log
            .ensure_internal_topic(events.topic(), EVENT_PARTITIONS, &[])
            .await
            .map_err(|e| (events.topic().to_owned(), e))?;
        events.set_partitions(n);
        log.ensure_internal_topic(&dead_topic, 1, &[])
            .await
            .map_err(|e| (dead_topic.clone(), e))?;
        if events.wanted.contains(&EventKind::Occupied)
            || events.wanted.contains(&EventKind::Vacated)
        {
            let n = log
                .ensure_internal_topic(
                    occupancy.topic(),
                    EVENT_PARTITIONS,
                    &[("cleanup.policy", "compact")],
                )
                .await
                .map_err(|e| (occupancy.topic().to_owned(), e))?;
            occupancy_partitions = Some(n);
        }
    }
    Ok(Prepared {
        events,
        occupancy,
        occupancy_partitions,
        dead_topic,
    })
}

/// The body of a node's event, as written to the events topic and POSTed
/// as is.
#[derive(Serialize)]
struct EventBody<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    /// When it happened, ms since the Unix epoch.
    time: i64,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<&'a Member>,
}

/// A node's side: writes the events some endpoint wants.
pub struct Events {
    topic: String,
    partitions: AtomicI32,
    /// Kinds wanted by some endpoint.
    wanted: HashSet<EventKind>,
    endpoints: Vec<Endpoint>,
}

impl Events {
    pub fn new(topic: String, cfg: &WebhooksConfig) -> Events {
        Events {
            topic,
            partitions: AtomicI32::new(EVENT_PARTITIONS),
            wanted: cfg
                .endpoints
                .iter()
                .flat_map(|e| e.events.iter().copied())
                .collect(),
            endpoints: cfg.endpoints.clone(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub(crate) fn set_partitions(&self, n: i32) {
        self.partitions.store(n.max(1), Ordering::Relaxed);
    }

    /// Whether some endpoint wants `kind` (about `channel`).
    pub fn wants(&self, kind: EventKind, channel: Option<&str>) -> bool {
        self.wanted.contains(&kind) && self.endpoints.iter().any(|e| e.wants(kind, channel))
    }

    /// Whether a subscription to `channel` makes events (join, leave, or
    /// the channel's occupancy): its member is then worth building, and it
    /// counts against the churn budget.
    pub fn watches_subscriptions(&self, channel: &str) -> bool {
        [
            EventKind::Join,
            EventKind::Leave,
            EventKind::Occupied,
            EventKind::Vacated,
        ]
        .into_iter()
        .any(|k| self.wants(k, Some(channel)))
    }

    /// A connection opened (`user`: its identity's `sub`, if it has one).
    pub fn connected(&self, ctx: &Ctx, conn: u64, user: Option<&str>) {
        self.conn_event(ctx, EventKind::Connect, conn, user);
    }

    /// A connection closed.
    pub fn disconnected(&self, ctx: &Ctx, conn: u64, user: Option<&str>) {
        self.conn_event(ctx, EventKind::Disconnect, conn, user);
    }

    fn conn_event(&self, ctx: &Ctx, kind: EventKind, conn: u64, user: Option<&str>) {
        if !self.wants(kind, None) {
            return;
        }
        let conn = format!("{}/{conn}", ctx.cluster.node);
        self.write(
            ctx,
            &conn,
            EventBody {
                id: uuid::Uuid::new_v4().to_string(),
                kind: kind.as_str(),
                time: herald_proto::envelope::now_ms(),
                node: &ctx.cluster.node,
                channel: None,
                conn: Some(&conn),
                user,
                member: None,
            },
        );
    }

    /// `member` subscribed to `channel` on this node.
    pub fn joined(&self, ctx: &Ctx, channel: &str, member: &Member) {
        self.channel_event(ctx, EventKind::Join, channel, member);
    }

    /// `member`'s subscription to `channel` ended.
    pub fn left(&self, ctx: &Ctx, channel: &str, member: &Member) {
        self.channel_event(ctx, EventKind::Leave, channel, member);
    }

    fn channel_event(&self, ctx: &Ctx, kind: EventKind, channel: &str, member: &Member) {
        if !self.wants(kind, Some(channel)) {
            return;
        }
        self.write(
            ctx,
            channel,
            EventBody {
                id: uuid::Uuid::new_v4().to_string(),
                kind: kind.as_str(),
                time: herald_proto::envelope::now_ms(),
                node: &ctx.cluster.node,
                channel: Some(channel),
                conn: Some(&member.conn),
                user: member.user.as_deref(),
                member: Some(member),
            },
        );
    }

    /// An `occupied` or `vacated` event decided by [`occupancy`]; `id` is
    /// the same whichever node writes it.
    pub(crate) fn occupancy_event(&self, ctx: &Ctx, kind: EventKind, channel: &str, id: String) {
        if !self.wants(kind, Some(channel)) {
            return;
        }
        self.write(
            ctx,
            channel,
            EventBody {
                id,
                kind: kind.as_str(),
                time: herald_proto::envelope::now_ms(),
                node: &ctx.cluster.node,
                channel: Some(channel),
                conn: None,
                user: None,
                member: None,
            },
        );
    }

    /// Appends the event, keyed by `key` (a channel's events stay in one
    /// partition, in order). librdkafka retries the append for
    /// `message.timeout.ms`; an event it gives up on is counted.
    fn write(&self, ctx: &Ctx, key: &str, body: EventBody<'_>) {
        let kind = body.kind;
        let value = match serde_json::to_vec(&body) {
            Ok(v) => v,
            Err(e) => return warn!(%e, "Could not encode a webhook event"),
        };
        let partition = partition_for_key(key.as_bytes(), self.partitions.load(Ordering::Relaxed));
        let failed = move |e: &dyn std::fmt::Display| {
            metrics::counter!("herald_webhook_event_errors_total", "type" => kind).increment(1);
            warn!(%e, kind, "A webhook event could not be written");
        };
        match ctx
            .log
            .append_record(&self.topic, partition, key.as_bytes(), &value, &[])
        {
            Ok(pending) => {
                metrics::counter!("herald_webhook_events_total", "type" => kind).increment(1);
                tokio::spawn(async move {
                    if let Err(e) = pending.await {
                        failed(&e);
                    }
                });
            }
            Err(e) => failed(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(events: &[EventKind], namespaces: &[&str]) -> Endpoint {
        Endpoint {
            name: "e".into(),
            url: parse_url("http://127.0.0.1:1/x").expect("url"),
            secret: b"k".to_vec(),
            events: events.iter().copied().collect(),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            max_in_flight: 1,
            attempts: 1,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            timeout: Duration::from_millis(1),
        }
    }

    #[test]
    fn endpoints_filter_by_kind_and_namespace() {
        let e = endpoint(&[EventKind::Join, EventKind::Connect], &["chat"]);
        assert!(e.wants(EventKind::Join, Some("chat:a")));
        assert!(!e.wants(EventKind::Join, Some("news:a")));
        assert!(!e.wants(EventKind::Leave, Some("chat:a")));
        assert!(e.wants(EventKind::Connect, None));
        let all = endpoint(&[EventKind::Join], &[]);
        assert!(all.wants(EventKind::Join, Some("news:a")));
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn secrets() {
        assert_eq!(secret_key("plain").expect("plain"), b"plain");
        assert_eq!(secret_key("whsec_aGVsbG8=").expect("b64"), b"hello");
        assert!(secret_key("whsec_%%%").is_err());
    }
}
