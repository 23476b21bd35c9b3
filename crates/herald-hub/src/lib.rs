//! herald's fan-out and publish pipeline: who is subscribed to what,
//! per-connection bounded queues, the resume hand-off from history to live
//! delivery, and publishing with dedup.
//!
//! The hub does no socket I/O and does not know rdkafka: it reads the log
//! through [`herald_log::LogRead`] and is fed live records as a
//! [`herald_log::RecordSink`].
//!
//! # Layout
//! - [`outbox`]: [`Outbox`], one bounded outbound queue per connection (by
//!   messages and bytes); overflowing it marks the connection a slow consumer.
//! - [`hub`]: [`Hub`], the subscription index per partition, the recent-message
//!   ring per partition, live dispatch, [`Hub::subscribe`] with resume and
//!   [`Hub::history`], bounded pages of one channel's messages.
//! - [`dedup`]: [`Dedup`], the publish dedup window (a map and a FIFO of
//!   appended keys), which also makes concurrent retries of one id wait for
//!   the first instead of appending twice.
//! - [`publish`]: [`Publisher`], the one publish pipeline (claim, retry scan,
//!   append, confirm with a deadline, settle, metrics) every entry point uses.
//! - [`delivery`]: [`Delivery`], a message serialised once for every
//!   subscriber.
//!
//! # Invariants
//! - Per channel, a subscriber is handed messages in strictly increasing `seq`,
//!   with no gap from its starting position: the catch-up loop only joins live
//!   delivery under the partition lock, when nothing between its position and
//!   the tail's position is left unsent.
//! - Each live message is serialised once; every subscriber gets the same
//!   `Arc<str>`.
//! - Live dispatch never waits on a connection: a full queue is a slow
//!   consumer, disconnected, never a stalled partition.

pub mod dedup;
pub mod delivery;
pub mod hub;
pub mod outbox;
pub mod publish;
pub mod text;

pub use dedup::{Claim, Dedup, DedupOutcome};
pub use delivery::{Delivery, Interest};
pub use hub::{HistoryLimits, HistoryPage};
pub use hub::{Hub, HubConfig, SubscribeOutcome};
pub use outbox::{ConnCommand, Event, Outbound, Outbox, OutboxReceiver, OverflowWatch};
pub use publish::{PublishOutcome, PublishRequest, Publisher};
pub use text::Text;

/// Errors of the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Log(#[from] herald_log::LogError),
    #[error("topic `{0}` is not registered with the hub")]
    UnknownTopic(String),
    #[error("the connection's outbound queue overflowed")]
    SlowConsumer,
    #[error("the connection is gone")]
    Closed,
    /// A catch-up found records it needed deleted (retention moved the log
    /// start past them while it read); the connection was cut, and its
    /// resume will say `recovered: false`.
    #[error("records from offset {from} are gone (the log now starts at {low})")]
    Gap { from: i64, low: i64 },
}
