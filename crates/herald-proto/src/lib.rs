//! herald's wire protocol and Kafka record format, with no I/O and no async runtime.
//!
//! Everything that crosses a trust boundary as bytes is decoded here, so the
//! decoders can be unit-, property- and fuzz-tested without a socket or a broker.
//!
//! # Layout
//! - [`frame`]: the JSON text frames a WebSocket client and the server exchange,
//!   and [`frame::decode_client`], the decoder for untrusted client input;
//!   the server's frames are in [`server_frame`] (re-exported there).
//! - [`member`]: [`member::Member`], one subscribed connection as presence
//!   frames show it.
//! - [`envelope`]: the JSON value of every Kafka record herald writes (the
//!   analytics contract, versioned; schema in `schemas/envelope.v1.json`).
//! - [`filter`]: a message's `tags` and a subscription's `filter` over them.
//! - [`channel`]: channel names (`namespace:name`) and their validation.
//! - [`partition`]: Kafka's default partitioner (murmur2 of the key), so herald
//!   places a channel exactly where a Java or librdkafka `murmur2` producer would.
//! - [`codes`]: the error codes and WebSocket close codes a client can see.
//!
//! # Invariants
//! - Decoding never panics on any input; every failure is a [`frame::DecodeError`]
//!   carrying a documented code.
//! - A `seq` is a Kafka offset: `i64`, non-negative for real messages.
//! - Serialising a frame or an envelope produces JSON that validates against the
//!   matching schema in `schemas/` (checked by this crate's tests).

pub mod channel;
pub mod codes;
pub mod envelope;
pub mod filter;
pub mod frame;
pub mod member;
pub mod partition;
pub mod server_frame;

pub use channel::{Channel, ChannelError};
pub use envelope::Envelope;
pub use filter::{Filter, Tags};
pub use frame::{
    ClientFrame, DecodeError, HistoryFrom, HistoryRequest, Member, Position, Replayed, Rewind,
    ServerFrame, Since,
};
