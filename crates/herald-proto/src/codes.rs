//! Error codes (the `code` of `error` and `publish_nack` frames) and WebSocket
//! close codes. This list is the contract documented in `docs/protocol.md`;
//! add to it, never change a meaning.

/// The frame was not valid JSON (or not a JSON object).
pub const BAD_JSON: &str = "bad_json";
/// The `type` field is missing or names no known client frame.
pub const UNKNOWN_TYPE: &str = "unknown_type";
/// A known frame type with missing, extra or ill-typed fields.
pub const BAD_FRAME: &str = "bad_frame";
/// A binary WebSocket frame; herald speaks JSON text frames only.
pub const BINARY_UNSUPPORTED: &str = "binary_unsupported";
/// The channel name is not `namespace:name` with allowed characters.
pub const BAD_CHANNEL: &str = "bad_channel";
/// The channel's namespace is not configured on this server.
pub const UNKNOWN_NAMESPACE: &str = "unknown_namespace";
/// A message or frame larger than the configured maximum.
pub const TOO_LARGE: &str = "too_large";
/// `subscribe` for a channel this connection already subscribes to.
pub const ALREADY_SUBSCRIBED: &str = "already_subscribed";
/// `unsubscribe` or `ack` for a channel this connection does not subscribe to.
pub const NOT_SUBSCRIBED: &str = "not_subscribed";
/// An `ack` for a `seq` this connection was never sent on that channel.
pub const BAD_ACK: &str = "bad_ack";
/// Too many subscriptions on one connection.
pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
/// Kafka did not accept the message in time (broker down or slow). Nothing was
/// acknowledged; retry with the same `id`, dedup makes that safe.
pub const UNAVAILABLE: &str = "unavailable";
/// The server is shutting down; reconnect (to another node) and retry.
pub const SHUTTING_DOWN: &str = "shutting_down";
/// An unexpected server-side failure; the reason says more.
pub const INTERNAL: &str = "internal";

/// Close code: the connection's outbound queue overflowed (slow consumer).
/// Reconnect and resume with `since`; nothing is lost.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code: nothing was received from the client within the idle timeout.
pub const CLOSE_IDLE_TIMEOUT: u16 = 4001;
/// Close code (standard): the server is going away (shutdown or drain).
pub const CLOSE_GOING_AWAY: u16 = 1001;
