//! The Kafka record herald writes: key = channel name, value = this envelope as
//! JSON, headers `herald-id` (the message id, for cheap dedup) and `herald-v`.
//!
//! This is the analytics contract (`schemas/envelope.v1.json`). Version rules:
//! adding an optional field keeps `v`; any change that can break a reader
//! (removing, renaming or retyping a field) bumps `v`. Readers must ignore
//! fields they do not know.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::filter::Tags;
use crate::frame::{MessageFrame, Replayed};

/// The envelope version this code writes.
pub const ENVELOPE_VERSION: u32 = 1;
/// Record header carrying the message id.
pub const HEADER_ID: &str = "herald-id";
/// Record header carrying the envelope version.
pub const HEADER_VERSION: &str = "herald-v";
/// The only content type herald writes today: `data` is any JSON value.
pub const CONTENT_TYPE_JSON: &str = "application/json";

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope schema version.
    pub v: u32,
    /// Client message id (UUID), the dedup key together with the channel.
    pub id: Uuid,
    /// Channel name; equal to the record key.
    pub channel: String,
    /// Who published: the token's `sub` on an authenticated WebSocket
    /// connection, `conn:<id>` on an anonymous one, `api` for the server HTTP
    /// API, `herald-replay` for `herald replay --live`. Null when unknown.
    pub publisher: Option<Arc<str>>,
    /// Milliseconds since the Unix epoch when the edge accepted the publish.
    pub ts: i64,
    pub content_type: Cow<'static, str>,
    /// The application payload, any JSON value, kept byte-for-byte.
    pub data: Box<RawValue>,
    /// Set on records written by `herald replay --live`: where the original
    /// record is. Absent on ordinary publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<Replayed>,
    /// The publish's tags (string values), which subscriptions filter on.
    /// Absent when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

/// Why a record could not be read as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("record value is not a herald envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope version {0} is newer than this reader (max {ENVELOPE_VERSION})")]
    Version(u32),
    #[error("envelope channel `{envelope}` differs from record key `{key}`")]
    KeyMismatch { envelope: String, key: String },
}

/// Milliseconds since the Unix epoch by the wall clock (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The headers of an envelope's record, on the stack, ready to be
/// borrowed as `(name, value)` pairs by a producer.
pub struct RecordHeaders {
    id: [u8; uuid::fmt::Hyphenated::LENGTH],
    version: [u8; 10],
    version_len: usize,
}

impl RecordHeaders {
    pub fn pairs(&self) -> [(&'static str, &[u8]); 2] {
        [
            (HEADER_ID, &self.id),
            (HEADER_VERSION, &self.version[..self.version_len]),
        ]
    }
}

/// The message id of a record value, reading nothing else of it; `None`
/// when the value is not an envelope.
pub fn peek_id(value: &[u8]) -> Option<Uuid> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Uuid,
    }
    serde_json::from_slice::<IdOnly>(value).ok().map(|e| e.id)
}

impl Envelope {
    /// The envelope of a new publish of `data` to `channel`, stamped now.
    pub fn new(
        id: Uuid,
        channel: impl Into<String>,
        publisher: Option<Arc<str>>,
        data: Box<RawValue>,
    ) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            id,
            channel: channel.into(),
            publisher,
            ts: now_ms(),
            content_type: Cow::Borrowed(CONTENT_TYPE_JSON),
            data,
            replayed: None,
            tags: None,
        }
    }

    /// The record key: the channel name.
    pub fn key(&self) -> &[u8] {
        self.channel.as_bytes()
    }

    /// The record headers: `herald-id` and `herald-v`.
    pub fn headers(&self) -> RecordHeaders {
        let mut h = RecordHeaders {
            id: [0; uuid::fmt::Hyphenated::LENGTH],
            version: [0; 10],
            version_len: 0,
        };
        self.id.hyphenated().encode_lower(&mut h.id);
        let mut v = itoa::Buffer::new();
        let v = v.format(self.v).as_bytes();
        h.version[..v.len()].copy_from_slice(v);
        h.version_len = v.len();
        h
    }

    /// The record value, written into one buffer sized for it.
    pub fn to_json(&self) -> Vec<u8> {
        let tags = self.tags.as_ref().map_or(0, |t| {
            t.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>() + 10
        });
        let fixed =
            160 + tags + self.channel.len() + self.publisher.as_ref().map_or(0, |p| p.len());
        let mut out = Vec::with_capacity(fixed + self.data.get().len());
        // Writing to a Vec fails only for a map with non-string keys,
        // which an envelope has none of.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }

    /// Reads a record value. `key`, when given, must equal the envelope's channel.
    pub fn decode(value: &[u8], key: Option<&[u8]>) -> Result<Self, EnvelopeError> {
        let env: Envelope = serde_json::from_slice(value)?;
        check(env.v, &env.channel, key)?;
        Ok(env)
    }

    /// The `message` frame for this record at `seq` in topic incarnation `epoch`.
    pub fn into_message(self, seq: i64, epoch: &str) -> MessageFrame {
        MessageFrame {
            channel: self.channel,
            seq,
            epoch: epoch.to_owned(),
            id: self.id,
            ts: self.ts,
            data: self.data,
            replayed: self.replayed,
            tags: self.tags,
        }
    }
}

/// What both decodes require: a version this reader knows, and the record
/// key (when given) equal to the envelope's channel.
fn check(v: u32, channel: &str, key: Option<&[u8]>) -> Result<(), EnvelopeError> {
    if v > ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(v));
    }
    match key {
        Some(key) if key != channel.as_bytes() => Err(EnvelopeError::KeyMismatch {
            envelope: channel.to_owned(),
            key: String::from_utf8_lossy(key).into_owned(),
        }),
        _ => Ok(()),
    }
}

/// An envelope decoded in place: its strings and `data` borrow the record
/// value (a string with escapes is the only copy). The tail and the resume
/// path turn every record into a `message` frame this way; the owned
/// [`Envelope`] cost them six allocations and a second copy of `data` per
/// record (docs/benchmarks.md, P4 cold).
#[derive(Debug, Deserialize)]
pub struct EnvelopeRef<'a> {
    pub v: u32,
    pub id: Uuid,
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    #[serde(borrow)]
    pub publisher: Option<Cow<'a, str>>,
    pub ts: i64,
    #[serde(borrow)]
    pub content_type: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default)]
    pub replayed: Option<Replayed>,
    /// Owned: parsed only when the record has tags.
    #[serde(default)]
    pub tags: Option<Tags>,
}

/// The `message` frame written from borrowed parts: the same text as
/// `ServerFrame::Message(..).to_json()` (a test holds them equal).
#[derive(Serialize)]
#[serde(tag = "type", rename = "message")]
struct MessageOut<'a> {
    channel: &'a str,
    seq: i64,
    epoch: &'a str,
    id: Uuid,
    ts: i64,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<&'a Replayed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a Tags>,
}

/// The `ephemeral` frame: a message without a position.
#[derive(Serialize)]
#[serde(tag = "type", rename = "ephemeral")]
struct EphemeralOut<'a> {
    channel: &'a str,
    id: Uuid,
    ts: i64,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a Tags>,
}

impl<'a> EnvelopeRef<'a> {
    /// [`Envelope::decode`] without copying.
    pub fn decode(value: &'a [u8], key: Option<&[u8]>) -> Result<Self, EnvelopeError> {
        let env: EnvelopeRef<'a> = serde_json::from_slice(value)?;
        check(env.v, &env.channel, key)?;
        Ok(env)
    }

    /// The `ephemeral` frame of this envelope (an ephemeral message has
    /// no `seq`: its record's offset is in a topic nobody resumes from).
    pub fn ephemeral_json(&self) -> String {
        let out = EphemeralOut {
            channel: &self.channel,
            id: self.id,
            ts: self.ts,
            data: self.data,
            tags: self.tags.as_ref(),
        };
        let mut buf = Vec::with_capacity(self.data.get().len() + self.channel.len() + 120);
        match serde_json::to_writer(&mut buf, &out) {
            Ok(()) => String::from_utf8(buf).unwrap_or_default(),
            Err(e) => format!(r#"{{"type":"error","code":"internal","reason":"serialise: {e}"}}"#),
        }
    }

    /// The `message` frame of this envelope at `seq` of `epoch`.
    pub fn message_json(&self, seq: i64, epoch: &str) -> String {
        let out = MessageOut {
            channel: &self.channel,
            seq,
            epoch,
            id: self.id,
            ts: self.ts,
            data: self.data,
            replayed: self.replayed.as_ref(),
            tags: self.tags.as_ref(),
        };
        let mut buf = Vec::with_capacity(self.data.get().len() + self.channel.len() + 160);
        match serde_json::to_writer(&mut buf, &out) {
            // serde_json writes UTF-8 only.
            Ok(()) => String::from_utf8(buf).unwrap_or_default(),
            Err(e) => format!(r#"{{"type":"error","code":"internal","reason":"serialise: {e}"}}"#),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_decode_writes_the_same_frame_as_the_owned_one() {
        let replayed = Replayed {
            topic: "herald.chat".into(),
            partition: 3,
            offset: 17,
            id: Uuid::new_v4(),
        };
        for (channel, publisher, data, replayed) in [
            ("chat:x", Some("alice"), r#"{"a":[1,2,{"b":"c"}]}"#, None),
            (
                "chat:\"q\"",
                None,
                r#""text with \"escapes\" and \u00e9""#,
                None,
            ),
            ("chat:y", Some("b\\ob"), "42", Some(replayed)),
        ] {
            let mut env = Envelope::new(
                Uuid::new_v4(),
                channel,
                publisher.map(Arc::from),
                RawValue::from_string(data.into()).expect("json"),
            );
            env.tags = publisher.map(|p| Tags::from([("by".to_string(), p.to_string())]));
            env.replayed = replayed;
            let value = env.to_json();
            let owned = Envelope::decode(&value, Some(channel.as_bytes())).expect("owned decode");
            let want = crate::ServerFrame::Message(owned.into_message(41, "e1")).to_json();
            let borrowed = EnvelopeRef::decode(&value, Some(channel.as_bytes())).expect("decode");
            assert_eq!(borrowed.channel, channel);
            assert_eq!(borrowed.message_json(41, "e1"), want);
        }
        assert!(matches!(
            EnvelopeRef::decode(
                Envelope::new(
                    Uuid::new_v4(),
                    "a",
                    None,
                    RawValue::from_string("1".into()).expect("json")
                )
                .to_json()
                .as_slice(),
                Some(b"b")
            ),
            Err(EnvelopeError::KeyMismatch { .. })
        ));
        assert!(EnvelopeRef::decode(b"{\"v\":1}", None).is_err());
    }

    #[test]
    fn the_record_carries_key_headers_and_an_id_that_peeks_back() {
        let id = Uuid::new_v4();
        let data = RawValue::from_string("{\"a\":1}".into()).expect("json");
        let env = Envelope::new(id, "chat:x", Some("alice".into()), data);
        assert_eq!(env.key(), b"chat:x");
        let headers = env.headers();
        let pairs = headers.pairs();
        assert_eq!(pairs[0], (HEADER_ID, id.to_string().as_bytes()));
        assert_eq!(pairs[1], (HEADER_VERSION, b"1".as_slice()));
        let value = env.to_json();
        assert_eq!(peek_id(&value), Some(id));
        assert_eq!(peek_id(b"{\"id\":\"not a uuid\"}"), None);
        assert_eq!(peek_id(b"not json"), None);
        let back = Envelope::decode(&value, Some(b"chat:x")).expect("decodes");
        assert_eq!(back.data.get(), "{\"a\":1}");
    }
}
