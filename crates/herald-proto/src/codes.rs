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
/// Too many subscriptions on one connection.
pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
/// Kafka did not accept the message in time (broker down or slow). Nothing was
/// acknowledged; retry with the same `id`, dedup makes that safe.
pub const UNAVAILABLE: &str = "unavailable";
/// The connection publishes faster than its rate limit; `retry_after_ms`
/// says when to try again (same `id`).
pub const RATE_LIMITED: &str = "rate_limited";
/// The server is shutting down; reconnect (to another node) and retry.
pub const SHUTTING_DOWN: &str = "shutting_down";
/// A durable subscription (`durable: true` or `since: "cursor"`) on a
/// connection without a client id (`/ws?client_id=...`): cursors are stored
/// per client id.
pub const IDENTITY_REQUIRED: &str = "identity_required";
/// The namespace's access rule does not allow this for the connection's
/// identity (no token, another user's private channel, no grant).
pub const UNAUTHORIZED: &str = "unauthorized";
/// An `auth` or `refresh` token was refused (bad signature, expired, wrong
/// algorithm, another `sub`); the connection keeps its previous identity.
pub const BAD_TOKEN: &str = "bad_token";
/// The application's backend hook refused it (the reason is the
/// application's own).
pub const REFUSED: &str = "refused";
/// An unexpected server-side failure; the reason says more.
pub const INTERNAL: &str = "internal";

/// Close code: the connection's outbound queue overflowed (slow consumer).
/// Reconnect and resume with `since`; nothing is lost.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code: the connection's token expired and was not refreshed.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4003;
/// Close code: nothing was received from the client within the idle timeout.
pub const CLOSE_IDLE_TIMEOUT: u16 = 4001;
/// Close code (standard): a protocol violation (bad framing, reserved bits,
/// unmasked client frames, oversized control frames).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code (standard): a text message that is not valid UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code (standard): a message or frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code (standard): the server is going away (shutdown or drain).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the application's backend disconnected the connection
/// (`POST /api/disconnect`, unless it chose another code in 4000-4999).
pub const CLOSE_DISCONNECTED: u16 = 4010;
/// Close code: the connection's token was revoked (`POST /api/revoke`); the
/// same token is refused at connect, a new one may be accepted.
pub const CLOSE_TOKEN_REVOKED: u16 = 4011;
