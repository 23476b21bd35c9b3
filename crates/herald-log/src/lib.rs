//! herald's Kafka side. Everything that talks to the broker lives here, behind
//! the small [`LogRead`] trait the fan-out hub uses, so the hub stays free of
//! rdkafka and can be unit-tested with an in-memory log.
//!
//! # Layout
//! - [`config`]: [`LogConfig`], the broker address and client settings.
//! - [`kafka`]: [`Kafka`], the one client a node needs: the idempotent `acks=all`
//!   producer, topic creation with epochs, watermark and time lookups, pooled
//!   range readers, and the partition tail that feeds live delivery.
//! - [`epoch`]: topic incarnation ids kept in a compacted meta topic.
//! - [`cursors`]: [`CursorStore`], durable per-client channel cursors in a
//!   compacted topic, written in batches.
//! - [`record`]: [`Record`], an owned Kafka record.
//!
//! # Invariants
//! - A publish is reported durable only from the producer's delivery report
//!   (idempotent producer, `acks=all`), never earlier.
//! - Channels are placed with Kafka's murmur2 partitioner
//!   ([`herald_proto::partition`]); the producer is always given the partition.
//! - The tail hands records to the [`RecordSink`] in offset order per partition.
//! - Nothing here depends on one broker's quirks; what guards against a
//!   Kafka-protocol broker answering oddly says so at that spot.

pub mod config;
pub mod cursors;
pub mod epoch;
pub mod kafka;
pub mod record;

use std::future::Future;
use std::pin::Pin;

pub use config::LogConfig;
pub use cursors::{CursorRecord, CursorStore};
pub use kafka::{Kafka, PartitionSummary, PendingPublish, TopicInfo};
pub use record::Record;

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("producer dropped the delivery report (shutting down)")]
    Canceled,
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, &'static str),
    #[error("background task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Other(String),
}

impl LogError {
    /// True when the broker did not confirm in time or could not be reached:
    /// the caller may retry (with the same message id).
    pub fn is_retriable(&self) -> bool {
        match self {
            LogError::Kafka(_) => !self.is_too_large(),
            LogError::Timeout(..) | LogError::Canceled => true,
            _ => false,
        }
    }

    /// True when Kafka refused the record for its size.
    pub fn is_too_large(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as C;
        matches!(self, LogError::Kafka(e) if matches!(
            e.rdkafka_error_code(),
            Some(C::MessageSizeTooLarge) | Some(C::InvalidMessageSize)
        ))
    }
}

/// Low and high watermark of a partition: the first retained offset and the
/// offset the next record will get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// A batch of a range read: the records read, in offset order, and the offset
/// to continue from (everything below `next` has been considered).
#[derive(Debug, Default)]
pub struct RangeBatch {
    pub records: Vec<Record>,
    pub next: i64,
}

/// What the hub needs from the log. Implemented by [`Kafka`] and, in unit
/// tests, by an in-memory log.
pub trait LogRead: Send + Sync + 'static {
    /// Current watermarks of a partition, straight from the broker.
    fn watermarks<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
    ) -> BoxFuture<'a, Result<Watermarks, LogError>>;

    /// Records with `from <= offset < to`, at most `max` of them.
    fn read_range<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        from: i64,
        to: i64,
        max: usize,
    ) -> BoxFuture<'a, Result<RangeBatch, LogError>>;

    /// The first offset whose timestamp is at or after `ts_ms`, or `None`
    /// when every retained record is older.
    fn offset_for_time<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        ts_ms: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, LogError>>;

    /// Starts delivering the partition's records from `from` to the tail's
    /// [`RecordSink`]. Idempotent per partition.
    fn follow(&self, topic: &str, partition: i32, from: i64) -> Result<(), LogError>;
}

/// Receives the records the tail reads, in offset order per partition.
pub trait RecordSink: Send + Sync + 'static {
    fn on_record(&self, record: Record);
}
