//! herald's Kafka side. Everything that talks to the broker lives here, behind
//! three traits: [`LogRead`] (what the fan-out hub reads), [`LogWrite`]
//! (appends and finding a record by id) and [`Log`] (what a node's start-up
//! needs besides). The hub and the edge depend on the traits only, so both are
//! tested in-process with the in-memory [`memory::MemLog`].
//!
//! # Layout
//! - [`config`]: [`LogConfig`], the broker address and client settings.
//! - [`kafka`]: [`Kafka`], the one client a node needs, a folder by
//!   component: `admin` (topics, epochs), `producer` (the idempotent
//!   `acks=all` producer), `ranges` (lookups and pooled range readers), `tail`
//!   (the partition tail that feeds live delivery).
//! - [`memory`]: [`memory::MemLog`], an in-memory log for tests, with
//!   switches for slow or failing appends.
//! - [`range`]: [`Span`], the one loop that reads a span of a partition
//!   (and its rules for the end of data, holes, no progress and timeouts),
//!   and [`newest_per_key`], the scan of a compacted topic.
//! - [`scan`]: [`scan::find_message`], looking a record up by message id.
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
pub mod memory;
pub mod range;
pub mod record;
pub mod scan;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use herald_proto::Envelope;

pub use config::LogConfig;
pub use cursors::{CursorRecord, CursorStore};
pub use kafka::{Kafka, PartitionSummary, TopicInfo};
pub use range::{newest_per_key, Span};
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
    /// The log could not be reached (an in-memory log told to fail).
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// A range read that returned nothing and did not move
    /// ([`range`]'s rule: an error, never a silent stop).
    #[error("reading {topic}/{partition} made no progress at offset {at}")]
    NoProgress {
        topic: String,
        partition: i32,
        at: i64,
    },
    /// Kafka stored the record but its answer carried no offset (librdkafka
    /// reports an idempotent retry the broker already had, after a lost
    /// response, as delivered at offset -1001), and it was not found where
    /// it must be (the publish pipeline looks).
    #[error("Kafka stored the record but did not say at which offset")]
    OffsetUnknown,
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
            LogError::Timeout(..)
            | LogError::Canceled
            | LogError::Unavailable(_)
            | LogError::OffsetUnknown => true,
            _ => false,
        }
    }

    /// True when the append failed without Kafka saying the record was not
    /// stored: the producer failed fatally or gave up waiting with the
    /// record sent, or its delivery report was lost. A retry must look
    /// before appending again (`retry: true`).
    pub fn may_be_stored(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as C;
        match self {
            LogError::Canceled | LogError::OffsetUnknown => true,
            LogError::Kafka(e) => matches!(
                e.rdkafka_error_code(),
                Some(C::Fatal) | Some(C::MessageTimedOut)
            ),
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

/// Bytes of keys and values one range read returns at most (one record
/// larger than this comes alone): a resume or history of large messages
/// holds this much per read, not `max` records' worth.
pub const RANGE_MAX_BYTES: usize = 1 << 20;

/// The size a record counts for in [`RANGE_MAX_BYTES`].
pub fn record_bytes(r: &Record) -> usize {
    r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len())
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

    /// Records with `from <= offset < to`, at most `max` of them and about
    /// [`RANGE_MAX_BYTES`] (a larger record comes alone); `next` is where
    /// the next read goes on.
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

    /// Stops delivering the partition's records to the tail. Records
    /// already fetched may still reach the sink. A later [`LogRead::follow`]
    /// starts it again from its own offset. Idempotent.
    fn unfollow(&self, topic: &str, partition: i32) -> Result<(), LogError>;
}

/// Receives the records the tail reads, in offset order per partition.
pub trait RecordSink: Send + Sync + 'static {
    fn on_record(&self, record: Record);
}

/// An append the log has not confirmed yet. Resolves to the record's offset
/// once it is durable (for Kafka: acknowledged with `acks=all`).
pub struct PendingPublish {
    inner: Pending,
}

enum Pending {
    Kafka(rdkafka::producer::DeliveryFuture),
    Other(BoxFuture<'static, Result<i64, LogError>>),
}

impl PendingPublish {
    pub(crate) fn kafka(f: rdkafka::producer::DeliveryFuture) -> Self {
        PendingPublish {
            inner: Pending::Kafka(f),
        }
    }

    /// An append confirmed (or failed) when `f` resolves: for logs other
    /// than Kafka.
    pub fn from_future(f: impl Future<Output = Result<i64, LogError>> + Send + 'static) -> Self {
        PendingPublish {
            inner: Pending::Other(Box::pin(f)),
        }
    }
}

impl Future for PendingPublish {
    type Output = Result<i64, LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Pending::Kafka(f) => Pin::new(f).poll(cx).map(|r| match r {
                Ok(Ok(delivery)) => Ok(delivery.offset),
                Ok(Err((e, _msg))) => Err(LogError::Kafka(e)),
                Err(_canceled) => Err(LogError::Canceled),
            }),
            Pending::Other(f) => f.as_mut().poll(cx),
        }
    }
}

/// The write side: appends, and finding an appended record by message id.
/// Implemented by [`Kafka`] and by [`memory::MemLog`].
pub trait LogWrite: LogRead {
    /// Enqueues a record for `partition` of `topic`. Records enqueued in
    /// order are appended in order; the future resolves to the offset once
    /// the record is durable.
    fn append_record(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<PendingPublish, LogError>;

    /// Enqueues a tombstone (a record with a null value) for `key`: on a
    /// compacted topic, the key's end.
    fn append_tombstone(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
    ) -> Result<PendingPublish, LogError>;

    /// Enqueues an ephemeral message's record (the same format) on
    /// `topic`, a topic nobody resumes from: fanned out by the tails that
    /// follow it, its outcome not awaited. Kafka writes it with `acks=1`
    /// and no idempotence; this default (the in-memory log) appends it
    /// like any record.
    fn append_ephemeral(
        &self,
        topic: &str,
        partition: i32,
        env: &Envelope,
    ) -> Result<(), LogError> {
        self.append(topic, partition, env).map(drop)
    }

    /// Enqueues a herald record: the envelope's key, JSON value and headers
    /// (the one record format, [`herald_proto::envelope`]).
    fn append(
        &self,
        topic: &str,
        partition: i32,
        env: &Envelope,
    ) -> Result<PendingPublish, LogError> {
        let headers = env.headers();
        self.append_record(
            topic,
            partition,
            env.key(),
            &env.to_json(),
            &headers.pairs(),
        )
    }

    /// The offset of `channel`'s record with message id `id`, if one is
    /// among the partition's records newer than `since_ms` and at most
    /// `max_scan` records back from the end ([`scan::find_message`]).
    fn find_message<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        channel: &'a str,
        id: uuid::Uuid,
        since_ms: i64,
        max_scan: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, LogError>> {
        Box::pin(scan::find_message(
            self, topic, partition, channel, id, since_ms, max_scan,
        ))
    }

    /// Waits up to `timeout` for every enqueued append to be confirmed.
    fn flush(&self, timeout: Duration) -> Result<(), LogError>;
}

/// Everything an edge node needs from its log: reads, writes, and the steps
/// of start-up and readiness.
pub trait Log: LogWrite {
    fn config(&self) -> &LogConfig;

    /// Whether the log answers (the readiness probe).
    fn ping(&self) -> BoxFuture<'_, Result<(), LogError>>;

    /// Makes sure `topic` exists (created with `partitions` and `config` when
    /// missing) and returns its real partition count and epoch.
    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: i32,
        config: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<TopicInfo, LogError>>;

    /// Makes sure one of herald's bookkeeping topics exists (no epoch);
    /// returns its partition count.
    fn ensure_internal_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: i32,
        config: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<i32, LogError>>;

    /// Starts the partition tail feeding `sink`. Call once, before
    /// [`LogRead::follow`].
    fn start_tail(&self, sink: Arc<dyn RecordSink>) -> Result<(), LogError>;

    /// Readies range reads of `topics` before the first one is needed, so
    /// that the first resume on a node just started does not pay for
    /// connecting a reader (docs/benchmarks.md, P4 cold). Nothing to do for
    /// a log without connections.
    fn prepare_reads<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), LogError>> {
        let _ = topics;
        Box::pin(async { Ok(()) })
    }

    /// A member of consumer group `group` reading `topics`
    /// ([`kafka::GroupReader`]). Only Kafka has consumer groups.
    fn group_reader(&self, group: &str, topics: &[String]) -> Result<Box<dyn GroupRead>, LogError> {
        let _ = (group, topics);
        Err(LogError::Unavailable(
            "consumer groups need Kafka (not the in-memory log)".into(),
        ))
    }
}

/// One member of a consumer group: records in offset order per partition,
/// handled in any order, committed up to the first not handled (at least
/// once).
pub trait GroupRead: Send + Sync + 'static {
    /// The next record of the member's partitions.
    fn next(&self) -> BoxFuture<'_, Result<Record, LogError>>;

    /// `offset` of `partition` of `topic` is done with: the partition's
    /// committed offset may move past it.
    fn handled(&self, topic: &str, partition: i32, offset: i64);

    /// Records of the member's partitions not handled yet (from the last
    /// statistics, every 5 s; 0 before the first).
    fn lag(&self) -> i64;
}
