//! The Kafka record herald writes: key = channel name, value = this envelope as
//! JSON, headers `herald-id` (the message id, for cheap dedup) and `herald-v`.
//!
//! This is the analytics contract (`schemas/envelope.v1.json`). Version rules:
//! adding an optional field keeps `v`; any change that can break a reader
//! (removing, renaming or retyping a field) bumps `v`. Readers must ignore
//! fields they do not know.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

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
    pub publisher: Option<String>,
    /// Milliseconds since the Unix epoch when the edge accepted the publish.
    pub ts: i64,
    pub content_type: String,
    /// The application payload, any JSON value, kept byte-for-byte.
    pub data: Box<RawValue>,
    /// Set on records written by `herald replay --live`: where the original
    /// record is. Absent on ordinary publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<Replayed>,
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

/// The headers of an envelope's record, owned, ready to be borrowed as
/// `(name, value)` pairs by a producer.
pub struct RecordHeaders {
    id: String,
    version: String,
}

impl RecordHeaders {
    pub fn pairs(&self) -> [(&'static str, &[u8]); 2] {
        [
            (HEADER_ID, self.id.as_bytes()),
            (HEADER_VERSION, self.version.as_bytes()),
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
        publisher: Option<String>,
        data: Box<RawValue>,
    ) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            id,
            channel: channel.into(),
            publisher,
            ts: now_ms(),
            content_type: CONTENT_TYPE_JSON.to_owned(),
            data,
            replayed: None,
        }
    }

    /// The record key: the channel name.
    pub fn key(&self) -> &[u8] {
        self.channel.as_bytes()
    }

    /// The record headers: `herald-id` and `herald-v`.
    pub fn headers(&self) -> RecordHeaders {
        RecordHeaders {
            id: self.id.to_string(),
            version: self.v.to_string(),
        }
    }

    /// The record value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a record value. `key`, when given, must equal the envelope's channel.
    pub fn decode(value: &[u8], key: Option<&[u8]>) -> Result<Self, EnvelopeError> {
        let env: Envelope = serde_json::from_slice(value)?;
        if env.v > ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(env.v));
        }
        if let Some(key) = key {
            if key != env.channel.as_bytes() {
                return Err(EnvelopeError::KeyMismatch {
                    envelope: env.channel,
                    key: String::from_utf8_lossy(key).into_owned(),
                });
            }
        }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(peek_id(value.as_bytes()), Some(id));
        assert_eq!(peek_id(b"{\"id\":\"not a uuid\"}"), None);
        assert_eq!(peek_id(b"not json"), None);
        let back = Envelope::decode(value.as_bytes(), Some(b"chat:x")).expect("decodes");
        assert_eq!(back.data.get(), "{\"a\":1}");
    }
}
