//! Server → client frames: [`ServerFrame`], serialised once with
//! [`ServerFrame::to_json`]; schema `schemas/frames.server.json`. Re-exported
//! by [`crate::frame`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::filter::Tags;
use crate::frame::{DecodeError, Member, Position};

/// A frame the server sends. Serialised with [`ServerFrame::to_json`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Reply to `subscribe`. `position` is where live delivery starts: the
    /// newest `seq` in the channel's partition when the subscription took
    /// effect (`-1` for an empty partition). `recovered` is true only when
    /// `since` was given and every message after it was (or is being) delivered.
    /// `auto` (sent only when true) marks the server's own subscription to a
    /// personal channel, which no client `subscribe` asked for.
    Subscribed {
        channel: String,
        position: Position,
        recovered: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        auto: bool,
    },
    Unsubscribed {
        channel: String,
    },
    Message(MessageFrame),
    PublishAck {
        id: Uuid,
        channel: String,
        seq: i64,
        /// True when this `id` was already published inside the dedup
        /// window: nothing new was appended and `seq` is the original one.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    PublishNack {
        id: Uuid,
        channel: String,
        code: &'static str,
        reason: String,
        /// With `rate_limited`: when a retry will be accepted.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Error {
        code: &'static str,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
    /// Reply to `history`: `messages` are `message` frames, oldest first
    /// (newest first with `reverse`). `next` continues the listing: pass it
    /// as `since_seq` (forward requests) or `before_seq` (latest-first
    /// requests) for the next page. `done` is true when no page follows.
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        channel: String,
        epoch: String,
        messages: Vec<Box<RawValue>>,
        next: i64,
        done: bool,
        /// True when messages the request asked for are no longer retained
        /// (they were older than the log start).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Reply to `auth` and `refresh`: who the connection now acts as, and
    /// when its token expires (seconds since the Unix epoch). The
    /// connection is closed with 4003 at that time unless refreshed.
    Authenticated {
        sub: String,
        expires_at: u64,
    },
    Pong,
    /// The server is draining: reconnect (to any node) after `after_ms`,
    /// resuming with `since`. The connection closes with 1001 shortly after.
    Reconnect {
        after_ms: u64,
    },
    /// Reply to `presence`: the channel's members on every node, at most
    /// the node's `presence_max_members`; `truncated` when more were left
    /// out (`presence_stats` counts them all).
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        channel: String,
        members: Vec<Member>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Reply to `presence_stats`: connections and distinct users.
    PresenceStats {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        channel: String,
        clients: usize,
        users: usize,
    },
    /// A connection subscribed to a channel with join/leave events on.
    /// Not a message: no `seq`, not in history, not resumable.
    Join {
        channel: String,
        member: Member,
    },
    /// A member's subscription ended (unsubscribe, disconnect, or its node
    /// stopped heartbeating).
    Leave {
        channel: String,
        member: Member,
    },
    /// The application's backend disconnected this connection (admin API);
    /// the close frame with the same `code` follows. With `reconnect:
    /// false` the client must not reconnect on its own.
    Disconnect {
        code: u16,
        reason: String,
        reconnect: bool,
    },
    /// Behind on a conflating channel: its messages `from_seq..=to_seq`
    /// still queued (`skipped` of them) were dropped for the newest, which
    /// follows.
    Conflated {
        channel: String,
        skipped: u64,
        from_seq: i64,
        to_seq: i64,
    },
}

/// One delivered message. The same serialised text goes to every subscriber.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageFrame {
    pub channel: String,
    pub seq: i64,
    pub epoch: String,
    pub id: Uuid,
    /// Milliseconds since the Unix epoch when the edge accepted the publish.
    pub ts: i64,
    pub data: Box<RawValue>,
    /// Present when an operator re-delivered an older message with
    /// `herald replay --live`: where the original is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<Replayed>,
    /// The publish's tags, when it had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

/// The original of a replayed message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replayed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original message id.
    pub id: Uuid,
}

impl ServerFrame {
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: string keys, no maps with
        // non-string keys, RawValue already valid JSON.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"internal","reason":"serialise: {e}"}}"#)
        })
    }

    pub fn error(e: &DecodeError) -> Self {
        ServerFrame::Error {
            code: e.code,
            reason: e.reason.clone(),
            id: e.id.clone(),
            channel: e.channel.clone(),
        }
    }
}
