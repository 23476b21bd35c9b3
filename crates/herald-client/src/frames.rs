//! The frames on the wire as the client reads and writes them.
//!
//! The shapes the server and the client share are herald-proto's
//! ([`Position`], [`Member`], [`Replayed`]); [`Frame`] reads `data` as a JSON
//! value and tolerates frame types it does not know, so it is the client's
//! own, checked against the server's [`herald_proto::ServerFrame`] by the
//! tests below (every server frame decodes to its variant) and [`Request`]
//! against the server's decoder (every request decodes).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use herald_proto::frame::{Member, Replayed};
pub use herald_proto::{Position, Tags};

/// A delivered message.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Msg {
    pub channel: String,
    pub seq: i64,
    pub epoch: String,
    pub id: Uuid,
    pub ts: i64,
    pub data: Value,
    /// Set on messages an operator re-delivered with `herald replay --live`.
    #[serde(default)]
    pub replayed: Option<Replayed>,
    /// The publish's tags, when it had any.
    #[serde(default)]
    pub tags: Option<Tags>,
}

/// Where a subscription starts.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// Live from now.
    Live,
    /// After a position the client kept.
    After(&'a Position),
    /// After the server-side durable cursor of this connection's client id.
    Cursor,
    /// The channel's last N messages, then live ones (`rewind`).
    Rewind(u32),
}

/// A `history` request (at most one of the `since_*`/`before_seq` fields).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HistoryQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reverse: bool,
}

/// The answer to a `history` request.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HistoryPage {
    pub channel: String,
    pub epoch: String,
    pub messages: Vec<Msg>,
    pub next: i64,
    pub done: bool,
    #[serde(default)]
    pub truncated: bool,
}

/// A server frame.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    Subscribed {
        channel: String,
        position: Position,
        recovered: bool,
        /// The server's own subscription to a personal channel.
        #[serde(default)]
        auto: bool,
    },
    Unsubscribed {
        channel: String,
    },
    Message(Msg),
    PublishAck {
        id: Uuid,
        channel: String,
        seq: i64,
        #[serde(default)]
        duplicate: bool,
    },
    PublishNack {
        id: Uuid,
        channel: String,
        code: String,
        reason: String,
    },
    Error {
        code: String,
        reason: String,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        channel: Option<String>,
    },
    History {
        #[serde(default)]
        id: Option<String>,
        #[serde(flatten)]
        page: HistoryPage,
    },
    /// Reply to `auth` / `refresh`.
    Authenticated {
        sub: String,
        expires_at: u64,
    },
    Pong,
    /// The server is draining: reconnect after `after_ms`.
    Reconnect {
        after_ms: u64,
    },
    /// The backend disconnected this connection; `reconnect: false`: stay away.
    Disconnect {
        code: u16,
        reason: String,
        reconnect: bool,
    },
    /// Reply to `presence`: the channel's members.
    Presence {
        #[serde(default)]
        id: Option<String>,
        channel: String,
        members: Vec<Member>,
        /// More members than the node lists were left out.
        #[serde(default)]
        truncated: bool,
    },
    /// Reply to `presence_stats`.
    PresenceStats {
        #[serde(default)]
        id: Option<String>,
        channel: String,
        clients: usize,
        users: usize,
    },
    /// A member joined a channel with join/leave events.
    Join {
        channel: String,
        member: Member,
    },
    /// A member left.
    Leave {
        channel: String,
        member: Member,
    },
    /// An ephemeral message: no position, never again on a resume.
    Ephemeral(Ephemeral),
    /// Behind on a conflating channel: its messages `from_seq..=to_seq`
    /// still queued (`skipped` of them) were dropped for the newest, which
    /// follows.
    Conflated {
        channel: String,
        skipped: u64,
        from_seq: i64,
        to_seq: i64,
    },
    /// Several frames in one (the connection asked with `batch=true`);
    /// [`crate::Connection`] hands them over one by one, never as this.
    Batch {
        frames: Vec<Frame>,
    },
    /// A frame type this client does not know (servers may add some).
    #[serde(other)]
    Unknown,
}

/// An `ephemeral` frame's message.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Ephemeral {
    pub channel: String,
    pub id: Uuid,
    pub ts: i64,
    pub data: Value,
    #[serde(default)]
    pub tags: Option<Tags>,
}

/// The outcome of a publish.
#[derive(Clone, Debug, PartialEq)]
pub enum Published {
    Ack { seq: i64, duplicate: bool },
    Nack { code: String, reason: String },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Request<'a> {
    Subscribe {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Value>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        durable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        rewind: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        filter: Option<&'a Value>,
    },
    History {
        id: &'a str,
        channel: &'a str,
        #[serde(flatten)]
        query: &'a HistoryQuery,
    },
    Auth {
        token: &'a str,
    },
    Refresh {
        token: &'a str,
    },
    Unsubscribe {
        channel: &'a str,
    },
    Publish {
        channel: &'a str,
        id: Uuid,
        data: &'a Value,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        retry: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        tags: Option<&'a Tags>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
    },
    Ack {
        channel: &'a str,
        seq: i64,
    },
    Ping,
    Presence {
        id: &'a str,
        channel: &'a str,
    },
    PresenceStats {
        id: &'a str,
        channel: &'a str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::frame::{decode_client, MessageFrame};
    use herald_proto::ServerFrame;
    use serde_json::value::RawValue;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("valid JSON")
    }

    fn member() -> Member {
        Member {
            conn: "n/1".into(),
            user: Some("u".into()),
            client: None,
            name: Some("ann".into()),
            info: Some(raw(r#"{"a":1}"#)),
        }
    }

    /// Every frame the server can send, one of each.
    fn every_server_frame() -> Vec<ServerFrame> {
        let position = || Position {
            seq: 3,
            epoch: "e".into(),
        };
        let id = Uuid::new_v4();
        let message = || MessageFrame {
            channel: "chat:a".into(),
            seq: 4,
            epoch: "e".into(),
            id,
            ts: 1,
            data: raw(r#"{"t":"hi"}"#),
            tags: Some(Tags::from([("k".into(), "v".into())])),
            replayed: Some(Replayed {
                topic: "t".into(),
                partition: 0,
                offset: 1,
                id,
            }),
        };
        vec![
            ServerFrame::Subscribed {
                channel: "chat:a".into(),
                position: position(),
                recovered: true,
                auto: true,
            },
            ServerFrame::Unsubscribed {
                channel: "chat:a".into(),
            },
            ServerFrame::Message(message()),
            ServerFrame::PublishAck {
                id,
                channel: "chat:a".into(),
                seq: 4,
                duplicate: true,
            },
            ServerFrame::PublishNack {
                id,
                channel: "chat:a".into(),
                code: "rate_limited",
                reason: "r".into(),
                retry_after_ms: Some(5),
            },
            ServerFrame::Error {
                code: "bad_frame",
                reason: "r".into(),
                id: Some("1".into()),
                channel: Some("chat:a".into()),
            },
            ServerFrame::History {
                id: Some("1".into()),
                channel: "chat:a".into(),
                epoch: "e".into(),
                messages: vec![raw(&ServerFrame::Message(message()).to_json())],
                next: 5,
                done: true,
                truncated: true,
            },
            ServerFrame::Authenticated {
                sub: "u".into(),
                expires_at: 9,
            },
            ServerFrame::Pong,
            ServerFrame::Reconnect { after_ms: 10 },
            ServerFrame::Presence {
                id: Some("1".into()),
                channel: "chat:a".into(),
                members: vec![member()],
                truncated: true,
            },
            ServerFrame::PresenceStats {
                id: None,
                channel: "chat:a".into(),
                clients: 2,
                users: 1,
            },
            ServerFrame::Join {
                channel: "chat:a".into(),
                member: member(),
            },
            ServerFrame::Leave {
                channel: "chat:a".into(),
                member: member(),
            },
            ServerFrame::Disconnect {
                code: 4010,
                reason: "r".into(),
                reconnect: false,
            },
            ServerFrame::Conflated {
                channel: "chat:a".into(),
                skipped: 3,
                from_seq: 4,
                to_seq: 9,
            },
        ]
    }

    #[test]
    fn every_server_frame_decodes_to_its_own_variant() {
        for sent in every_server_frame() {
            let text = sent.to_json();
            let got: Frame = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("the client cannot read {text}: {e}"));
            // Exhaustive over the server's frames: a new one fails to
            // compile here until the client reads it.
            let same = match (&sent, &got) {
                (ServerFrame::Subscribed { .. }, Frame::Subscribed { auto, .. }) => *auto,
                (ServerFrame::Unsubscribed { .. }, Frame::Unsubscribed { .. }) => true,
                (ServerFrame::Message(m), Frame::Message(g)) => {
                    g.data == serde_json::json!({"t": "hi"})
                        && g.replayed.as_ref() == m.replayed.as_ref()
                }
                (ServerFrame::PublishAck { .. }, Frame::PublishAck { duplicate, .. }) => *duplicate,
                (ServerFrame::PublishNack { .. }, Frame::PublishNack { code, .. }) => {
                    code == "rate_limited"
                }
                (ServerFrame::Error { .. }, Frame::Error { id, channel, .. }) => {
                    id.is_some() && channel.is_some()
                }
                (ServerFrame::History { .. }, Frame::History { page, .. }) => {
                    page.messages.len() == 1 && page.truncated
                }
                (ServerFrame::Authenticated { .. }, Frame::Authenticated { .. }) => true,
                (ServerFrame::Pong, Frame::Pong) => true,
                (ServerFrame::Reconnect { .. }, Frame::Reconnect { .. }) => true,
                (
                    ServerFrame::Presence { .. },
                    Frame::Presence {
                        members, truncated, ..
                    },
                ) => *truncated && members == &vec![member()],
                (ServerFrame::PresenceStats { .. }, Frame::PresenceStats { clients, .. }) => {
                    *clients == 2
                }
                (ServerFrame::Join { .. }, Frame::Join { member: m, .. })
                | (ServerFrame::Leave { .. }, Frame::Leave { member: m, .. }) => *m == member(),
                (ServerFrame::Disconnect { .. }, Frame::Disconnect { reconnect, .. }) => !reconnect,
                (
                    ServerFrame::Conflated { .. },
                    Frame::Conflated {
                        skipped, to_seq, ..
                    },
                ) => *skipped == 3 && *to_seq == 9,
                (
                    ServerFrame::Subscribed { .. }
                    | ServerFrame::Unsubscribed { .. }
                    | ServerFrame::Message(_)
                    | ServerFrame::PublishAck { .. }
                    | ServerFrame::PublishNack { .. }
                    | ServerFrame::Error { .. }
                    | ServerFrame::History { .. }
                    | ServerFrame::Authenticated { .. }
                    | ServerFrame::Pong
                    | ServerFrame::Reconnect { .. }
                    | ServerFrame::Presence { .. }
                    | ServerFrame::PresenceStats { .. }
                    | ServerFrame::Join { .. }
                    | ServerFrame::Leave { .. }
                    | ServerFrame::Disconnect { .. }
                    | ServerFrame::Conflated { .. },
                    _,
                ) => false,
            };
            assert!(same, "{text} decoded as {got:?}");
        }
    }

    #[test]
    fn every_request_is_a_frame_the_server_decodes() {
        let data = serde_json::json!({"t": "hi"});
        let filter =
            serde_json::json!({"or": [{"key": "k", "eq": "a"}, {"key": "j", "exists": false}]});
        let tags = Tags::from([("k".to_string(), "a".to_string())]);
        let query = HistoryQuery {
            since_seq: Some(3),
            limit: Some(10),
            ..Default::default()
        };
        let requests = [
            Request::Subscribe {
                channel: "chat:a",
                since: Some(serde_json::json!({"seq": 3, "epoch": "e"})),
                durable: true,
                rewind: None,
                filter: None,
            },
            Request::Subscribe {
                channel: "chat:a",
                since: Some(serde_json::json!("cursor")),
                durable: false,
                rewind: None,
                filter: Some(&filter),
            },
            Request::Subscribe {
                channel: "chat:a",
                since: None,
                durable: false,
                rewind: Some(2),
                filter: None,
            },
            Request::History {
                id: "1",
                channel: "chat:a",
                query: &query,
            },
            Request::Auth { token: "t" },
            Request::Refresh { token: "t" },
            Request::Unsubscribe { channel: "chat:a" },
            Request::Publish {
                channel: "chat:a",
                id: Uuid::new_v4(),
                data: &data,
                retry: true,
                tags: Some(&tags),
                ephemeral: false,
            },
            Request::Publish {
                channel: "chat:a",
                id: Uuid::new_v4(),
                data: &data,
                retry: false,
                tags: None,
                ephemeral: true,
            },
            Request::Ack {
                channel: "chat:a",
                seq: 3,
            },
            Request::Ping,
            Request::Presence {
                id: "1",
                channel: "chat:a",
            },
            Request::PresenceStats {
                id: "1",
                channel: "chat:a",
            },
        ];
        for r in &requests {
            let text = serde_json::to_string(r).expect("serialise");
            if let Err(e) = decode_client(&text) {
                panic!("the server refuses {text}: {e}");
            }
        }
    }
}
