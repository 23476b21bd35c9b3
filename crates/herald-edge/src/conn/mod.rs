//! A client's connection, whatever its transport: the state it owns
//! ([`Conn`]: identity, subscriptions, outbound queue, rate budgets) and
//! the frame handlers, grouped by module:
//! - `core`: the one lifecycle every transport runs, and every bound that
//!   lives in it (queue bytes, write deadline, frame budget, expiry, drain);
//! - `ws`: the WebSocket transport; `session`: the HTTP one (SSE, long-poll);
//! - `subscribe`: `subscribe`, `unsubscribe`, `ack`, `presence`;
//! - `publish`: `publish`, through the node's publish pipeline;
//! - `history`: `history`;
//! - `auth`: `auth`, `refresh`, and the access check of every channel frame.
//!
//! Subscriptions (which may replay history) and publishes (which wait for
//! Kafka) run as their own tasks and answer through the outbound queue.

mod auth;
pub(crate) mod core;
mod history;
mod publish;
pub mod session;
mod subscribe;
pub mod ws;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_hub::{Outbound, Outbox};
use herald_proto::frame::{decode_client, ClientFrame};
use herald_proto::ServerFrame;
use tokio::sync::Semaphore;

use crate::auth::{Identity, MAX_EXPIRY_TIMER};
use crate::ctx::Ctx;
use subscribe::Subscription;
pub use ws::WebSocket;
pub(crate) use ws::{run, Accepted};

fn error_frame(code: &'static str, reason: impl Into<String>, channel: Option<&str>) -> Outbound {
    metrics::counter!("herald_edge_errors_total", "code" => code).increment(1);
    Outbound::Frame(
        ServerFrame::Error {
            code,
            reason: reason.into(),
            id: None,
            channel: channel.map(str::to_owned),
        }
        .to_json(),
    )
}

type Limiter = governor::DefaultDirectRateLimiter;

/// A connection's subscriptions by channel.
type Subs = rustc_hash::FxHashMap<String, Subscription>;

pub(crate) struct Conn {
    id: u64,
    ctx: Arc<Ctx>,
    outbox: Outbox,
    /// Looked up for every message written, so with FxHash rather than
    /// SipHash (a client's own channel names, at most `max_subscriptions`
    /// of them: nothing to flood), and a hasher of no size (P3).
    subs: Subs,
    /// Made at first use, like `history_permits` and `catchups`: an idle
    /// subscriber never publishes, reads history or resumes (each
    /// semaphore is ~70 bytes per connection; P3).
    publish_permits: OnceCell<Arc<Semaphore>>,
    /// Per-connection publish rate limit; `None` when unlimited.
    limiter: Option<Limiter>,
    /// Who owns this connection's durable cursors (`/ws?client_id=`).
    client_id: Option<Arc<str>>,
    /// Bounds the `history` requests served at once.
    history_permits: OnceCell<Arc<Semaphore>>,
    /// Who the connection acts as, from its token; `None`: anonymous.
    identity: Option<Identity>,
    /// Publish limits of namespaces with their own `publish_rate`.
    ns_limiters: HashMap<String, Limiter>,
    /// `auth`/`refresh` frames per minute; made at the first one.
    auth_limiter: Option<Box<Limiter>>,
    /// Every client frame counts against it (`frame_rate`); made at the
    /// first frame.
    frame_limiter: Option<Box<Limiter>>,
    /// Subscribes to channels that record presence (each writes a join and
    /// a leave to Kafka and sends them to every member); made at the first.
    churn_limiter: Option<Box<Limiter>>,
    /// History tasks still running, aborted when the connection closes.
    reads: Vec<tokio::task::AbortHandle>,
    /// Catch-ups of resuming subscriptions running at once (from the log:
    /// each reads until it reaches the live position).
    catchups: OnceCell<Arc<Semaphore>>,
    /// Headers forwarded to the backend hooks.
    hook_headers: Option<Arc<[(String, String)]>>,
    /// The display name shown in presence (`?name=`).
    name: Option<Box<str>>,
    /// `conn:<id>`, the publisher written into the envelopes of an
    /// anonymous connection; made at its first publish.
    anonymous: OnceCell<Arc<str>>,
    /// The answers of publishes in flight, polled by the connection's own
    /// loop (no task per publish); made at the first publish.
    answers: Option<Box<publish::Answers>>,
}

impl Conn {
    pub(crate) fn new(id: u64, ctx: Arc<Ctx>, client_id: Option<String>) -> Parts {
        let (outbox, rx) = Outbox::new(
            id,
            ctx.cfg.limits.queue_messages,
            ctx.cfg.limits.queue_bytes,
        );
        let limiter = std::num::NonZeroU32::new(ctx.cfg.limits.publish_rate).map(|rate| {
            let burst = std::num::NonZeroU32::new(ctx.cfg.limits.publish_burst).unwrap_or(rate);
            governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
        });
        (
            Conn {
                id,
                outbox,
                subs: Subs::default(),
                publish_permits: OnceCell::new(),
                limiter,
                client_id: client_id.map(Arc::from),
                history_permits: OnceCell::new(),
                identity: None,
                ns_limiters: HashMap::new(),
                auth_limiter: None,
                frame_limiter: None,
                churn_limiter: None,
                reads: Vec::new(),
                catchups: OnceCell::new(),
                hook_headers: None,
                name: None,
                anonymous: OnceCell::new(),
                answers: None,
                ctx,
            },
            rx,
        )
    }
}

pub(crate) type Parts = (Conn, herald_hub::OutboxReceiver);

impl Conn {
    /// The connection of an admitted client, and its place under the
    /// connection limits.
    pub(crate) fn admitted(
        id: u64,
        ctx: Arc<Ctx>,
        admitted: crate::admission::Admitted,
    ) -> (Parts, crate::ctx::ConnSlot) {
        let crate::admission::Admitted {
            client_id,
            name,
            identity,
            slot,
            hook_headers,
        } = admitted;
        let (mut conn, rx) = Conn::new(id, ctx, client_id);
        conn.identity = identity;
        conn.hook_headers = hook_headers.map(Arc::from);
        conn.name = name;
        ((conn, rx), slot)
    }
}

impl Conn {
    /// Bounds the publishes in flight on this connection.
    fn publish_permits(&self) -> Arc<Semaphore> {
        let n = self.ctx.cfg.limits.max_inflight_publishes;
        self.publish_permits
            .get_or_init(|| Arc::new(Semaphore::new(n)))
            .clone()
    }

    /// Bounds the `history` requests served at once.
    fn history_permits(&self) -> Arc<Semaphore> {
        let n = self.ctx.cfg.history_concurrency.max(1);
        self.history_permits
            .get_or_init(|| Arc::new(Semaphore::new(n)))
            .clone()
    }

    /// Bounds the catch-ups of resuming subscriptions running at once.
    fn catchups(&self) -> Arc<Semaphore> {
        self.catchups
            .get_or_init(|| Arc::new(Semaphore::new(CATCHUPS_PER_CONNECTION)))
            .clone()
    }
}

impl Conn {
    /// Queues a reply without waiting (see the crate invariants).
    fn reply(&self, item: Outbound) {
        let _ = self.outbox.try_push(item);
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match decode_client(text) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!("herald_edge_errors_total", "code" => e.code).increment(1);
                if self.within_frame_budget(None) {
                    self.reply(Outbound::Frame(ServerFrame::error(&e).to_json()));
                }
                return;
            }
        };
        if !self.within_frame_budget(Some(&frame)) {
            return;
        }
        match frame {
            ClientFrame::Ping => self.reply(Outbound::Frame(ServerFrame::Pong.to_json())),
            ClientFrame::Subscribe {
                channel,
                since,
                durable,
                filter,
            } => self.subscribe(channel, since, durable, filter),
            ClientFrame::Unsubscribe { channel } => self.unsubscribe(channel),
            ClientFrame::Ack { channel, seq } => self.ack(channel, seq),
            ClientFrame::Presence { id, channel, stats } => self.presence(id, channel, stats),
            // The two frames that wait are boxed, so that their state is
            // allocated while they run rather than carried by every idle
            // connection's task.
            ClientFrame::History(req) => Box::pin(self.history(req)).await,
            // Boxed, like `publish`: the JWKS fetch they may wait on would
            // otherwise grow every idle connection's task.
            ClientFrame::Auth { token } => Box::pin(self.authenticate(&token, false)).await,
            ClientFrame::Refresh { token } => Box::pin(self.authenticate(&token, true)).await,
            ClientFrame::Publish {
                channel,
                id,
                data,
                retry,
                tags,
                ephemeral,
            } => Box::pin(self.publish(channel, id, data, retry, tags, ephemeral)).await,
        }
    }
}

/// When a connection acting as `id` is closed for an expired token: at
/// `exp` plus the same leeway as at verification (a token accepted within
/// it is not closed the moment it is accepted).
pub(crate) fn expiry_at(id: &Identity, leeway: Duration) -> tokio::time::Instant {
    let left = id.expires_in().saturating_add(leeway);
    let now = tokio::time::Instant::now();
    now.checked_add(left).unwrap_or(now + MAX_EXPIRY_TIMER)
}

/// Resuming subscriptions of one connection catching up at once.
const CATCHUPS_PER_CONNECTION: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an `async fn` of one argument returns.
    fn future_size<A, F>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection carries this future (docs/benchmarks.md, P3);
    /// the bound catches a large state creeping back in.
    #[test]
    fn connection_task_stays_small() {
        let n = future_size(run as fn(_) -> _);
        assert!(n <= 2048, "the connection task's future is {n} bytes");
    }
}
