//! Topic epochs: an id per topic incarnation.
//!
//! Kafka offsets restart at 0 when a topic is deleted and re-created, so a
//! client's `seq` is only meaningful together with the incarnation it came
//! from. herald names each incarnation with a random id, written to the
//! compacted `{prefix}meta` topic (key = topic name) by the node that created
//! the topic. The newest record for a topic wins (what compaction keeps).
//! Nodes starting together must agree: a node that finds the topic already
//! there waits a few seconds for the creator's record; if none comes (the
//! topic was made outside herald), it records one, waits a second for the
//! records of nodes doing the same, and takes the newest. A node that finds a
//! record written less than a second ago waits out that second too and takes
//! the newest, so it does not settle on the first of several. Kafka's own topic
//! ids (KIP-516) are not exposed by librdkafka's metadata API, hence this
//! record.
//!
//! Known limits: a topic deleted and re-created by another tool while every
//! herald node keeps running is not noticed until a node restarts; and when
//! herald re-creates a deleted topic while other nodes start, those may take
//! the old incarnation's record before the creator writes the new one.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The incarnation id clients see in positions.
    pub epoch: String,
    /// Partition count when the epoch was recorded.
    pub partitions: i32,
    /// Milliseconds since the Unix epoch.
    pub recorded_at_ms: i64,
}

/// A fresh epoch id: 12 hex digits of a random UUID, short enough to send
/// with every message.
pub fn new_epoch() -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.truncate(12);
    s
}
