//! herald's edge server: the warp application a client connects to.
//!
//! # Layout
//! - [`config`]: [`EdgeConfig`], listen address, namespaces, per-connection limits.
//! - [`auth`]: [`Auth`]: JWT connection tokens, access rules per namespace,
//!   the HTTP API key.
//! - [`api`]: the server HTTP API for backends (`/api/*`).
//! - [`cluster`]: the live nodes and admin commands every node applies,
//!   through the `{prefix}control` topic.
//! - [`fallback`]: herald's protocol over plain HTTP (Server-Sent Events,
//!   long-polling, `POST`ed frames) for networks that block WebSocket.
//! - [`hooks`]: optional HTTP calls to the application on connect,
//!   subscribe and publish.
//! - [`jwks`]: token keys from a JWKS URL, fetched again periodically.
//! - [`http_client`]: the outbound HTTP(S) client hooks and JWKS use.
//! - [`presence`]: channel members on every node, through the compacted
//!   `{prefix}presence` topic; join/leave events.
//! - [`ctx`]: [`ctx::Ctx`], the state a node's connections and requests
//!   share, connection slots under the limits, channel resolution.
//! - [`server`]: [`Edge`]: start-up (topics, epochs, hub, tail, listeners)
//!   on Kafka or any [`herald_log::Log`], and graceful shutdown.
//! - [`http`]: HTTP serving: the routes (`/ws`, `/healthz`, `/readyz`,
//!   `/metrics`, the fallbacks, the API, the demo), the write deadline on
//!   every HTTP connection, the admin listener.
//! - [`admission`]: what a connection passes before it exists (query
//!   length, `Origin`, limits per node and per address, token, connect hook).
//! - [`conn`]: a client's connection: one lifecycle ([`conn::core`]) for
//!   every transport (WebSocket, SSE, long-poll) and every bound in it, with
//!   its frame handlers in one module per group (subscribe, publish,
//!   history, auth).
//!
//! Publishes from WebSocket and from the HTTP API go through the same
//! pipeline, [`herald_hub::publish::Publisher`].
//!
//! # Invariants
//! - A `publish_ack` is sent only after Kafka confirmed the record
//!   (idempotent producer, `acks=all`); every other outcome is a `publish_nack`.
//! - Nothing is delivered, published or read without the namespace's access
//!   rule allowing it for the connection's identity.
//! - Bad client input gets an `error` frame and the connection keeps working;
//!   nothing a client sends can panic the server or touch other connections.
//! - The connection task never waits on its own outbound queue (it is the one
//!   draining it): its replies are queued with `try_push`, so a client that
//!   stops reading is closed as a slow consumer instead of deadlocking.

pub mod admission;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod ctx;
pub mod fallback;
pub mod hooks;
pub mod http;
pub mod http_client;
pub mod jwks;
pub mod presence;
pub mod revocations;
pub mod server;
pub mod webhooks;

pub use auth::{AccessRule, Auth, AuthConfig, AuthError, Capability, Identity};
pub use config::{EdgeConfig, Limits, NamespaceConfig};
pub use server::{Edge, EdgeError};
