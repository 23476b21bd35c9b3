//! WebSocket text frames: JSON objects with a `type`.
//!
//! Client → server: `subscribe`, `unsubscribe`, `publish`, `ack`, `history`,
//! `auth`, `refresh`, `ping`. Server → client: `subscribed`, `unsubscribed`,
//! `message`, `publish_ack`, `publish_nack`, `history`, `authenticated`,
//! `error`, `pong`, `reconnect`.
//! Schemas: `schemas/frames.client.json`, `schemas/frames.server.json`.
//!
//! Decoding is two-step: first the `type` (and, for error replies, any `id` and
//! `channel` to echo), then the frame's own struct with unknown fields denied.
//! That gives precise error codes: `bad_json`, `unknown_type`, `bad_frame`.

use std::borrow::Cow;

use serde::{de::IgnoredAny, Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::member::Member;
use uuid::Uuid;

use crate::codes;
use crate::filter::{check_tags, Filter, FilterBody, Tags};

/// A position in a channel: the `seq` (Kafka offset) of the last message seen
/// and the `epoch` of the topic incarnation it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub seq: i64,
    pub epoch: String,
}

/// Where a subscription starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// After this position (the client's own record of what it has seen).
    Position(Position),
    /// After the durable cursor the server stored for this client and
    /// channel (`"since": "cursor"`); live when there is none.
    Cursor,
    /// The channel's recent messages first, then live ones (`rewind`,
    /// `rewind_ms`): for a client that knows no position.
    Rewind(Rewind),
}

/// How far back a `rewind` subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewind {
    /// The channel's last N messages (`"rewind": N`, N ≥ 1).
    Last(u32),
    /// Its messages of the last this many milliseconds (`"rewind_ms"`).
    Age(i64),
}

/// Which messages a `history` request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryFrom {
    /// Oldest first, the messages with `seq > since_seq`.
    AfterSeq(i64),
    /// Oldest first, the messages accepted at or after this time (ms since
    /// the Unix epoch; Kafka offsets-for-times).
    SinceTime(i64),
    /// The newest messages with `seq < before_seq` (or the newest of all).
    Latest { before_seq: Option<i64> },
}

/// A decoded `history` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Echoed in the reply so a client can match answers to requests.
    pub id: Option<String>,
    pub channel: String,
    pub from: HistoryFrom,
    /// At most this many messages; `None`: [`HISTORY_DEFAULT_LIMIT`] (or the
    /// server's maximum when that is lower).
    pub limit: Option<usize>,
    /// Newest first instead of oldest first.
    pub reverse: bool,
}

/// `limit` of a `history` request that gives none.
pub const HISTORY_DEFAULT_LIMIT: usize = 100;

/// A decoded client frame.
#[derive(Debug)]
pub enum ClientFrame {
    Subscribe {
        channel: String,
        since: Option<Since>,
        /// Store this subscription's acks as a durable cursor.
        durable: bool,
        /// Only the messages whose tags pass (`crate::filter`).
        filter: Option<Filter>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        id: Uuid,
        data: Box<RawValue>,
        /// Set by a client re-sending a publish whose outcome it does not
        /// know (its connection died before the answer). The server then
        /// looks for `id` in the channel's recent log before appending, so a
        /// retry on another node does not append a second copy.
        retry: bool,
        /// The message's tags (`crate::filter`), bounded.
        tags: Option<Tags>,
        /// Fanned out but not kept: no `seq`, no history, no resume, no
        /// answer unless refused (docs/protocol.md, "Ephemeral messages").
        ephemeral: bool,
    },
    Ack {
        channel: String,
        seq: i64,
    },
    History(HistoryRequest),
    /// Authenticate a connection that connected without a token (the first
    /// frame), so the token never appears in a URL.
    Auth {
        token: String,
    },
    /// Replace the connection's token before it expires (same `sub`).
    Refresh {
        token: String,
    },
    Ping,
    /// Who is subscribed to a channel (`presence`), or only how many
    /// (`presence_stats`).
    Presence {
        id: Option<String>,
        channel: String,
        stats: bool,
    },
}

/// Why a client frame could not be decoded. `id` and `channel` are echoed in
/// the `error` reply when the frame had them, so clients can correlate.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct DecodeError {
    pub code: &'static str,
    pub reason: String,
    pub id: Option<String>,
    pub channel: Option<String>,
}

/// First pass: what kind of frame, and what to echo if it turns out bad.
/// Borrowed: a well-formed frame costs no allocation here, and the echoes
/// of a bad one are read only when it is bad.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
}

/// A head field as an echo: its text when it is a JSON string.
fn echo(field: Option<&RawValue>) -> Option<String> {
    field.and_then(|v| serde_json::from_str::<String>(v.get()).ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    channel: String,
    #[serde(default)]
    since: Option<SinceBody>,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    rewind: Option<u32>,
    #[serde(default)]
    rewind_ms: Option<i64>,
    #[serde(default)]
    filter: Option<FilterBody>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SinceBody {
    Position(Position),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryBody {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(default)]
    id: Option<String>,
    channel: String,
    #[serde(default)]
    since_seq: Option<i64>,
    #[serde(default)]
    since_time: Option<i64>,
    #[serde(default)]
    before_seq: Option<i64>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    channel: String,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    channel: String,
    id: Uuid,
    data: Box<RawValue>,
    #[serde(default)]
    retry: bool,
    #[serde(default)]
    tags: Option<Tags>,
    #[serde(default)]
    ephemeral: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    channel: String,
    seq: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    token: String,
}

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingBody {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
}

/// Decodes one client text frame. Never panics; nesting depth is bounded by
/// serde_json's recursion limit (128), which reports an error, not a crash.
pub fn decode_client(text: &str) -> Result<ClientFrame, DecodeError> {
    // serde_json would accept a JSON array for a struct (the sequence form);
    // frames must be objects.
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError {
            code: codes::BAD_JSON,
            reason: "a frame must be a JSON object".into(),
            id: None,
            channel: None,
        });
    }
    let head: Head = serde_json::from_str(text).map_err(|e| DecodeError {
        code: codes::BAD_JSON,
        reason: format!("invalid JSON: {e}"),
        id: None,
        channel: None,
    })?;
    let bad = |code: &'static str, reason: String| DecodeError {
        code,
        reason,
        id: echo(head.id),
        channel: echo(head.channel),
    };
    let kind: Cow<'_, str> = match head.kind {
        // Borrowed unless it has escapes.
        Some(k) => match serde_json::from_str::<&str>(k.get()) {
            Ok(k) => Cow::Borrowed(k),
            Err(_) => match serde_json::from_str::<String>(k.get()) {
                Ok(k) => Cow::Owned(k),
                Err(_) => return Err(bad(codes::UNKNOWN_TYPE, "`type` must be a string".into())),
            },
        },
        None => return Err(bad(codes::UNKNOWN_TYPE, "missing `type`".into())),
    };
    let body = |e: serde_json::Error| bad(codes::BAD_FRAME, format!("bad `{kind}` frame: {e}"));
    match kind.as_ref() {
        "subscribe" => {
            let b: SubscribeBody = serde_json::from_str(text).map_err(body)?;
            let since = match b.since {
                None => None,
                Some(SinceBody::Position(p)) => Some(Since::Position(p)),
                Some(SinceBody::Word(w)) if w == "cursor" => Some(Since::Cursor),
                Some(SinceBody::Word(_)) => {
                    return Err(bad(
                        codes::BAD_FRAME,
                        "`since` must be a position {seq, epoch} or \"cursor\"".into(),
                    ))
                }
            };
            let rewind = match (b.rewind, b.rewind_ms) {
                (None, None) => None,
                (Some(n), None) if n >= 1 => Some(Rewind::Last(n)),
                (None, Some(ms)) if ms >= 1 => Some(Rewind::Age(ms)),
                (Some(_), Some(_)) => {
                    return Err(bad(
                        codes::BAD_FRAME,
                        "give at most one of `rewind` and `rewind_ms`".into(),
                    ))
                }
                _ => {
                    return Err(bad(
                        codes::BAD_FRAME,
                        "`rewind` and `rewind_ms` must be 1 or more".into(),
                    ))
                }
            };
            let since = match (since, rewind) {
                (s, None) => s,
                (None, Some(r)) => Some(Since::Rewind(r)),
                (Some(_), Some(_)) => {
                    return Err(bad(
                        codes::BAD_FRAME,
                        "`rewind` is for a client without a position: give `since` or `rewind`, not both".into(),
                    ))
                }
            };
            let filter = match b.filter {
                None => None,
                Some(f) => Some(Filter::from_body(f).map_err(|e| bad(codes::BAD_FRAME, e))?),
            };
            Ok(ClientFrame::Subscribe {
                channel: b.channel,
                durable: b.durable || since == Some(Since::Cursor),
                since,
                filter,
            })
        }
        "unsubscribe" => {
            let b: ChannelBody = serde_json::from_str(text).map_err(body)?;
            Ok(ClientFrame::Unsubscribe { channel: b.channel })
        }
        "publish" => {
            let b: PublishBody = serde_json::from_str(text).map_err(body)?;
            if json_depth(b.data.get()) > MAX_DATA_DEPTH {
                return Err(bad(
                    codes::BAD_FRAME,
                    format!("`data` is nested deeper than {MAX_DATA_DEPTH} levels"),
                ));
            }
            if let Some(tags) = &b.tags {
                check_tags(tags).map_err(|e| bad(codes::BAD_FRAME, e))?;
            }
            if b.ephemeral && b.retry {
                return Err(bad(
                    codes::BAD_FRAME,
                    "an ephemeral publish has nothing to retry: `retry` is for durable ones".into(),
                ));
            }
            Ok(ClientFrame::Publish {
                channel: b.channel,
                id: b.id,
                data: b.data,
                retry: b.retry,
                tags: b.tags.filter(|t| !t.is_empty()),
                ephemeral: b.ephemeral,
            })
        }
        "ack" => {
            let b: AckBody = serde_json::from_str(text).map_err(body)?;
            if b.seq < 0 {
                return Err(bad(codes::BAD_FRAME, "`seq` must not be negative".into()));
            }
            Ok(ClientFrame::Ack {
                channel: b.channel,
                seq: b.seq,
            })
        }
        "history" => {
            let b: HistoryBody = serde_json::from_str(text).map_err(body)?;
            let from = match (b.since_seq, b.since_time, b.before_seq) {
                (None, None, before) => {
                    if before.is_some_and(|s| s < 0) {
                        return Err(bad(
                            codes::BAD_FRAME,
                            "`before_seq` must not be negative".into(),
                        ));
                    }
                    HistoryFrom::Latest { before_seq: before }
                }
                (Some(s), None, None) => {
                    if s < -1 {
                        return Err(bad(
                            codes::BAD_FRAME,
                            "`since_seq` must be -1 or more".into(),
                        ));
                    }
                    HistoryFrom::AfterSeq(s)
                }
                (None, Some(t), None) => HistoryFrom::SinceTime(t),
                _ => {
                    return Err(bad(
                        codes::BAD_FRAME,
                        "give at most one of `since_seq`, `since_time` and `before_seq`".into(),
                    ))
                }
            };
            let limit = match b.limit {
                None => None,
                Some(0) => return Err(bad(codes::BAD_FRAME, "`limit` must be at least 1".into())),
                Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            };
            if b.id.as_ref().is_some_and(|i| i.len() > 128) {
                return Err(bad(
                    codes::BAD_FRAME,
                    "`id` is longer than 128 bytes".into(),
                ));
            }
            Ok(ClientFrame::History(HistoryRequest {
                id: b.id,
                channel: b.channel,
                from,
                limit,
                reverse: b.reverse,
            }))
        }
        "auth" | "refresh" => {
            let b: TokenBody = serde_json::from_str(text).map_err(body)?;
            if b.token.is_empty() || b.token.len() > MAX_TOKEN_LEN {
                return Err(bad(
                    codes::BAD_FRAME,
                    format!("`token` must be 1-{MAX_TOKEN_LEN} bytes"),
                ));
            }
            Ok(if kind.as_ref() == "auth" {
                ClientFrame::Auth { token: b.token }
            } else {
                ClientFrame::Refresh { token: b.token }
            })
        }
        "ping" => {
            let _: PingBody = serde_json::from_str(text).map_err(body)?;
            Ok(ClientFrame::Ping)
        }
        "presence" | "presence_stats" => {
            let b: PresenceBody = serde_json::from_str(text).map_err(body)?;
            if b.id.as_ref().is_some_and(|i| i.len() > 128) {
                return Err(bad(
                    codes::BAD_FRAME,
                    "`id` is longer than 128 bytes".into(),
                ));
            }
            Ok(ClientFrame::Presence {
                id: b.id,
                channel: b.channel,
                stats: kind.as_ref() == "presence_stats",
            })
        }
        other => Err(bad(
            codes::UNKNOWN_TYPE,
            format!("unknown frame type `{}`", truncate(other, 64)),
        )),
    }
}

/// Deepest nesting of arrays and objects accepted in `data`. Subscribers'
/// JSON parsers have limits too (serde_json: 128); refusing at publish keeps
/// undeliverable messages out of the log.
pub const MAX_DATA_DEPTH: usize = 64;

/// Nesting depth of valid JSON text, counting `[` and `{` outside strings.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub use crate::server_frame::{MessageFrame, Replayed, ServerFrame};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_filters_decode_and_bad_ones_are_bad_frames() {
        match decode_client(
            r#"{"type":"subscribe","channel":"chat:a","filter":{"key":"k","in":["a","b"]}}"#,
        )
        .unwrap()
        {
            ClientFrame::Subscribe {
                filter: Some(f), ..
            } => assert_eq!(f, Filter::In("k".into(), vec!["a".into(), "b".into()])),
            other => panic!("{other:?}"),
        }
        let id = Uuid::new_v4();
        match decode_client(&format!(
            r#"{{"type":"publish","channel":"chat:a","id":"{id}","data":1,"tags":{{"k":"a"}}}}"#
        ))
        .unwrap()
        {
            ClientFrame::Publish { tags: Some(t), .. } => {
                assert_eq!(t.get("k").map(String::as_str), Some("a"))
            }
            other => panic!("{other:?}"),
        }
        for text in [
            r#"{"type":"subscribe","channel":"chat:a","filter":{"key":"k"}}"#.to_string(),
            r#"{"type":"subscribe","channel":"chat:a","filter":"k=a"}"#.to_string(),
            format!(
                r#"{{"type":"publish","channel":"chat:a","id":"{id}","data":1,"tags":{{"k":1}}}}"#
            ),
            format!(
                r#"{{"type":"publish","channel":"chat:a","id":"{id}","data":1,"tags":{{"":"a"}}}}"#
            ),
        ] {
            let e = decode_client(&text).unwrap_err();
            assert_eq!(e.code, codes::BAD_FRAME, "{text}");
            assert_eq!(e.channel.as_deref(), Some("chat:a"), "{text}");
        }
    }

    #[test]
    fn decodes_every_client_frame() {
        let f = decode_client(r#"{"type":"subscribe","channel":"chat:a"}"#).unwrap();
        assert!(matches!(
            f,
            ClientFrame::Subscribe {
                since: None,
                durable: false,
                ..
            }
        ));
        for (text, want) in [
            (
                r#"{"type":"subscribe","channel":"chat:a","rewind":20}"#,
                Rewind::Last(20),
            ),
            (
                r#"{"type":"subscribe","channel":"chat:a","rewind_ms":60000}"#,
                Rewind::Age(60_000),
            ),
        ] {
            match decode_client(text).unwrap() {
                ClientFrame::Subscribe {
                    since: Some(Since::Rewind(r)),
                    durable: false,
                    ..
                } => assert_eq!(r, want),
                other => panic!("{other:?}"),
            }
        }
        let f = decode_client(
            r#"{"type":"subscribe","channel":"chat:a","since":{"seq":7,"epoch":"e1"}}"#,
        )
        .unwrap();
        match f {
            ClientFrame::Subscribe {
                since: Some(Since::Position(p)),
                ..
            } => assert_eq!(p.seq, 7),
            other => panic!("{other:?}"),
        }
        let f =
            decode_client(r#"{"type":"subscribe","channel":"chat:a","since":"cursor"}"#).unwrap();
        assert!(matches!(
            f,
            ClientFrame::Subscribe {
                since: Some(Since::Cursor),
                durable: true,
                ..
            }
        ));
        let f = decode_client(r#"{"type":"subscribe","channel":"chat:a","durable":true}"#).unwrap();
        assert!(matches!(f, ClientFrame::Subscribe { durable: true, .. }));
        let f = decode_client(r#"{"type":"history","channel":"chat:a"}"#).unwrap();
        match f {
            ClientFrame::History(h) => {
                assert_eq!(h.from, HistoryFrom::Latest { before_seq: None });
                assert_eq!(h.limit, None);
                assert!(!h.reverse);
            }
            other => panic!("{other:?}"),
        }
        let f = decode_client(
            r#"{"type":"history","id":"q1","channel":"chat:a","since_seq":-1,"limit":5,"reverse":true}"#,
        )
        .unwrap();
        match f {
            ClientFrame::History(h) => {
                assert_eq!(h.from, HistoryFrom::AfterSeq(-1));
                assert_eq!(
                    (h.limit, h.reverse, h.id.as_deref()),
                    (Some(5), true, Some("q1"))
                );
            }
            other => panic!("{other:?}"),
        }
        let f =
            decode_client(r#"{"type":"history","channel":"chat:a","since_time":1700000000000}"#)
                .unwrap();
        assert!(matches!(
            f,
            ClientFrame::History(HistoryRequest {
                from: HistoryFrom::SinceTime(1_700_000_000_000),
                ..
            })
        ));
        let f = decode_client(
            r#"{"type":"publish","channel":"chat:a","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11","data":{"x":[1,2]}}"#,
        )
        .unwrap();
        match f {
            ClientFrame::Publish { data, .. } => assert_eq!(data.get(), r#"{"x":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_client(r#"{"type":"ack","channel":"chat:a","seq":3}"#).unwrap(),
            ClientFrame::Ack { seq: 3, .. }
        ));
        assert!(matches!(
            decode_client(r#"{"type":"unsubscribe","channel":"chat:a"}"#).unwrap(),
            ClientFrame::Unsubscribe { .. }
        ));
        assert!(matches!(
            decode_client(r#" {"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        ));
        assert!(matches!(
            decode_client(r#"{"type":"auth","token":"a.b.c"}"#).unwrap(),
            ClientFrame::Auth { .. }
        ));
        assert!(matches!(
            decode_client(r#"{"type":"refresh","token":"a.b.c"}"#).unwrap(),
            ClientFrame::Refresh { .. }
        ));
        assert_eq!(
            decode_client(r#"{"type":"auth","token":""}"#)
                .unwrap_err()
                .code,
            codes::BAD_FRAME
        );
    }

    fn code(text: &str) -> &'static str {
        decode_client(text).unwrap_err().code
    }

    #[test]
    fn classifies_bad_input() {
        assert_eq!(code("not json"), codes::BAD_JSON);
        assert_eq!(code("{"), codes::BAD_JSON);
        assert_eq!(code("[1,2]"), codes::BAD_JSON);
        assert_eq!(code(""), codes::BAD_JSON);
        assert_eq!(code(r#"{"channel":"chat:a"}"#), codes::UNKNOWN_TYPE);
        assert_eq!(code(r#"{"type":5}"#), codes::UNKNOWN_TYPE);
        assert_eq!(code(r#"{"type":"shout"}"#), codes::UNKNOWN_TYPE);
        assert_eq!(code(r#"{"type":"subscribe"}"#), codes::BAD_FRAME);
        for bad in [
            r#"{"type":"subscribe","channel":"chat:a","extra":1}"#,
            r#"{"type":"publish","channel":"chat:a","id":"nope","data":1}"#,
            r#"{"type":"publish","channel":"chat:a","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11"}"#,
            r#"{"type":"ack","channel":"chat:a","seq":-1}"#,
            r#"{"type":"ack","channel":"chat:a","seq":1e400}"#,
            r#"{"type":"subscribe","channel":"chat:a","since":"latest"}"#,
            r#"{"type":"subscribe","channel":"chat:a","rewind":0}"#,
            r#"{"type":"subscribe","channel":"chat:a","rewind_ms":-5}"#,
            r#"{"type":"subscribe","channel":"chat:a","rewind":5,"rewind_ms":5}"#,
            r#"{"type":"subscribe","channel":"chat:a","rewind":5,"since":"cursor"}"#,
            r#"{"type":"history","channel":"chat:a","since_seq":1,"since_time":2}"#,
            r#"{"type":"history","channel":"chat:a","since_seq":-2}"#,
            r#"{"type":"history","channel":"chat:a","before_seq":-1}"#,
            r#"{"type":"history","channel":"chat:a","limit":0}"#,
            r#"{"type":"history","channel":"chat:a","limit":-3}"#,
        ] {
            assert_eq!(code(bad), codes::BAD_FRAME, "{bad}");
        }
        let deep = format!(
            r#"{{"type":"publish","channel":"chat:a","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11","data":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(code(&deep), codes::BAD_FRAME);
        let ok = format!(
            r#"{{"type":"publish","channel":"chat:a","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11","data":{}{}}}"#,
            "[".repeat(MAX_DATA_DEPTH),
            "]".repeat(MAX_DATA_DEPTH)
        );
        decode_client(&ok).unwrap();
    }

    #[test]
    fn measures_depth_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#""[[[[""#), 0);
        assert_eq!(json_depth(r#"["\"[[", []]"#), 2);
    }

    #[test]
    fn echoes_id_and_channel_of_bad_frames() {
        let e = decode_client(r#"{"type":"publish","channel":"chat:a","id":"x"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("x"));
        assert_eq!(e.channel.as_deref(), Some("chat:a"));
        // Only strings are echoed; escapes are read.
        let e = decode_client(r#"{"type":"shout","id":7,"channel":"chat:\u0061"}"#).unwrap_err();
        assert_eq!((e.id, e.channel.as_deref()), (None, Some("chat:a")));
        assert_eq!(code(r#"{"type":null}"#), codes::UNKNOWN_TYPE);
        // A `type` with an escape is the same type.
        assert!(matches!(
            decode_client(r#"{"type":"p\u0069ng"}"#),
            Ok(ClientFrame::Ping)
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = decode_client(&s);
        }

        #[test]
        fn never_panics_on_object_like(s in "\\{\"type\":\"(subscribe|publish|ack|history|ping)\".{0,64}") {
            let _ = decode_client(&s);
        }
    }
}
