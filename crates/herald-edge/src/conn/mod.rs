//! One WebSocket connection: a single task selecting over the socket, the
//! outbound queue, the heartbeat, token expiry and shutdown, and the close
//! sequence. Subscriptions (which may replay history) and publishes (which
//! wait for Kafka) run as their own tasks and answer through the outbound
//! queue. The frame handlers are grouped by module:
//! - `subscribe`: `subscribe`, `unsubscribe`, `ack`;
//! - `publish`: `publish`, through the node's publish pipeline;
//! - `history`: `history`;
//! - `auth`: `auth`, `refresh`, and the access check of every channel frame.

mod auth;
mod history;
mod publish;
pub mod session;
mod subscribe;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald_hub::{ConnCommand, Outbound, Outbox};
use herald_proto::frame::{decode_client, ClientFrame};
use herald_proto::{codes, ServerFrame};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, debug_span, Instrument};
use uuid::Uuid;

use crate::auth::{Identity, MAX_EXPIRY_TIMER};
use crate::ctx::{ConnSlot, Ctx};
use subscribe::Subscription;

/// The socket of one connection.
pub type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

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

/// An accepted upgrade request, everything its connection starts from.
pub struct Accepted {
    pub on_upgrade: hyper::upgrade::OnUpgrade,
    pub config: WebSocketConfig,
    pub ctx: Arc<Ctx>,
    pub remote: Option<SocketAddr>,
    pub client_id: Option<String>,
    pub identity: Option<Identity>,
    /// Its place under the connection limits, released at the end.
    pub slot: ConnSlot,
    /// Upgrade-request headers the backend hooks forward (when any hook is
    /// configured).
    pub hook_headers: Option<Box<[(String, String)]>>,
}

/// Runs one connection to its end: the task spawned per connection.
///
/// Memory per idle connection is mostly this task (`docs/benchmarks.md`,
/// P3), so it is one flat state machine: the request comes boxed and is
/// unpacked once, the WebSocket is built and split in place, and what runs
/// rarely (publishes, history, the drain on shutdown) is boxed while it runs.
/// Parts are not passed by value through nested `async fn`s: each layer
/// would keep a copy of them.
pub async fn run(accepted: Box<Accepted>) {
    let id = accepted.ctx.conns.next_id.fetch_add(1, Ordering::Relaxed);
    // A debug span: at the default level it is off and costs nothing; an
    // enabled span keeps its formatted fields per connection (~250 bytes).
    let span =
        debug_span!("conn", conn = id, remote = ?accepted.remote, client = ?accepted.client_id);
    serve(id, accepted).instrument(span).await;
}

struct Conn {
    id: u64,
    ctx: Arc<Ctx>,
    outbox: Outbox,
    subs: HashMap<String, Subscription>,
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
    /// History tasks still running, aborted when the connection closes.
    reads: Vec<tokio::task::AbortHandle>,
    /// Catch-ups of resuming subscriptions running at once (from the log:
    /// each reads until it reaches the live position).
    catchups: OnceCell<Arc<Semaphore>>,
    /// Headers forwarded to the backend hooks.
    hook_headers: Option<Arc<[(String, String)]>>,
}

impl Conn {
    fn new(id: u64, ctx: Arc<Ctx>, client_id: Option<String>) -> Parts {
        let (outbox, rx) = Outbox::new(id, ctx.cfg.queue_messages, ctx.cfg.queue_bytes);
        let limiter = std::num::NonZeroU32::new(ctx.cfg.publish_rate).map(|rate| {
            let burst = std::num::NonZeroU32::new(ctx.cfg.publish_burst).unwrap_or(rate);
            governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
        });
        (
            Conn {
                id,
                outbox,
                subs: HashMap::new(),
                publish_permits: OnceCell::new(),
                limiter,
                client_id: client_id.map(Arc::from),
                history_permits: OnceCell::new(),
                identity: None,
                ns_limiters: HashMap::new(),
                auth_limiter: None,
                reads: Vec::new(),
                catchups: OnceCell::new(),
                hook_headers: None,
                ctx,
            },
            rx,
        )
    }
}

type Parts = (Conn, herald_hub::OutboxReceiver);

impl Conn {
    /// Bounds the publishes in flight on this connection.
    fn publish_permits(&self) -> Arc<Semaphore> {
        let n = self.ctx.cfg.max_inflight_publishes;
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

async fn serve(id: u64, accepted: Box<Accepted>) {
    let Accepted {
        on_upgrade,
        config,
        ctx,
        remote: _,
        client_id,
        identity,
        slot,
        hook_headers,
    } = *accepted;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            debug!(%e, "WebSocket upgrade failed");
            return;
        }
    };
    let (mut sink, mut stream) =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
            .await
            .split();
    let live = ctx.conns.live.clone();
    metrics::gauge!("herald_edge_connections").increment(1.0);
    metrics::counter!("herald_edge_connections_total").increment(1);
    let (mut conn, mut rx) = Conn::new(id, ctx, client_id);
    if let Some(i) = &identity {
        conn.ctx.users.add(&i.sub, id, &conn.outbox);
    }
    conn.identity = identity;
    conn.hook_headers = hook_headers.map(Arc::from);
    conn.subscribe_personal();
    {
        let mut shutdown = conn.ctx.shutdown.subscribe();
        let mut heartbeat = tokio::time::interval(conn.ctx.cfg.heartbeat);
        heartbeat.tick().await;
        let mut last_seen = Instant::now();
        let overflow = rx.overflow_watch();
        // One timer for the token's expiry, re-armed only when the identity
        // changes (auth, refresh), not per loop turn; boxed, and made only
        // for a connection with a token: kept inline, it would cost every
        // anonymous connection a timer's worth of memory (P3).
        let mut expiry: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut armed_for: Option<u64> = None;
        let ctx = conn.ctx.clone();
        let (frames_in, frames_out) = (&ctx.frames.inbound, &ctx.frames.outbound);
        let write_timeout = ctx.cfg.write_timeout;
        // Set when a write made no progress for `write_timeout`: nothing more
        // is written to the socket, it is dropped.
        let mut stalled = false;
        debug!("Connected");

        // Set by an admin `disconnect` that asked the client to stay away.
        let mut farewell: Option<String> = None;
        let close: Option<(u16, Cow<'static, str>)> = loop {
            let exp = conn.identity.as_ref().map(|i| i.exp);
            if exp != armed_for {
                match (&conn.identity, &mut expiry) {
                    (Some(id), Some(timer)) => {
                        timer.as_mut().reset(expiry_at(id, conn.ctx.auth.leeway()));
                    }
                    (Some(id), None) => {
                        expiry = Some(Box::pin(tokio::time::sleep_until(expiry_at(
                            id,
                            conn.ctx.auth.leeway(),
                        ))));
                    }
                    (None, _) => expiry = None,
                }
                armed_for = exp;
            }
            tokio::select! {
                biased;
                _ = overflow.overflowed() => break Some((codes::CLOSE_SLOW_CONSUMER, "slow consumer: resume with since".into())),
                _ = until_expiry(&mut expiry) => {
                    metrics::counter!("herald_auth_expired_total").increment(1);
                    break Some((codes::CLOSE_TOKEN_EXPIRED, "token expired".into()));
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    break Some((codes::CLOSE_GOING_AWAY, "server shutting down".into()));
                }
                item = rx.recv() => {
                    let Some(item) = item else { break None };
                    // Whatever else is queued goes out with it: one flush
                    // (one write syscall) per batch instead of per message.
                    // Bounded in time: a peer that stopped reading must not
                    // hold this loop (overflow, expiry, drain) forever.
                    // Admin commands in the queue are taken out and applied
                    // after the batch, in order.
                    let subs = &mut conn.subs;
                    let mut commands: Vec<ConnCommand> = Vec::new();
                    let batch = async {
                        let mut next = Some(item);
                        let mut ok = true;
                        let mut n = 0u64;
                        while let Some(item) = next.take() {
                            if let Outbound::Command(c) = item {
                                commands.push(c);
                            } else {
                                note_delivery(subs, &item);
                                ok = sink.feed(Message::text(item.text())).await.is_ok();
                                n += 1;
                            }
                            if !ok || n >= WRITE_BATCH {
                                break;
                            }
                            next = rx.try_recv();
                        }
                        (ok && (n == 0 || sink.flush().await.is_ok())).then_some(n)
                    };
                    match tokio::time::timeout(write_timeout, batch).await {
                        Ok(Some(n)) => frames_out.increment(n),
                        Ok(None) => break None,
                        Err(_) => {
                            stalled = true;
                            break None;
                        }
                    }
                    let mut close = None;
                    for c in commands {
                        match c {
                            ConnCommand::Close { code, reason, reconnect } => {
                                metrics::counter!("herald_edge_disconnected_total").increment(1);
                                if !reconnect {
                                    farewell = Some(ServerFrame::Disconnect { code, reason: reason.clone(), reconnect }.to_json());
                                }
                                close = Some((code, Cow::Owned(reason)));
                                break;
                            }
                            ConnCommand::Unsubscribe(channel) => conn.server_unsubscribe(channel),
                        }
                    }
                    if close.is_some() {
                        break close;
                    }
                }
                msg = stream.next() => {
                    let msg = match msg {
                        None => break None,
                        Some(Err(e)) => {
                            // Protocol violations end the connection with the
                            // matching close code (RFC 6455 section 7.4.1).
                            use tokio_tungstenite::tungstenite::Error as WsError;
                            debug!(%e, "WebSocket error");
                            let close = match &e {
                                WsError::Capacity(_) => Some((codes::CLOSE_TOO_BIG, "message too big")),
                                WsError::Utf8(_) => Some((codes::CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")),
                                WsError::Protocol(_) => Some((codes::CLOSE_PROTOCOL_ERROR, "WebSocket protocol error")),
                                _ => None,
                            };
                            if close.is_some() {
                                metrics::counter!("herald_edge_protocol_errors_total").increment(1);
                            }
                            break close.map(|(c, r)| (c, Cow::Borrowed(r)));
                        }
                        Some(Ok(m)) => m,
                    };
                    last_seen = Instant::now();
                    if let Message::Text(text) = &msg {
                        frames_in.increment(1);
                        conn.on_text(text.as_str()).await;
                    } else if msg.is_binary() {
                        frames_in.increment(1);
                        conn.reply(error_frame(
                            codes::BINARY_UNSUPPORTED,
                            "binary frames are not supported; send JSON text frames",
                            None,
                        ));
                    } else if msg.is_close() {
                        break None;
                    }
                    // Pings are answered by the WebSocket layer; pongs only
                    // count as liveness.
                }
                _ = heartbeat.tick() => {
                    // Quiet for a while, most likely: an empty queue keeps no
                    // buffer (P3).
                    rx.release_if_empty();
                    if last_seen.elapsed() > conn.ctx.cfg.idle_timeout {
                        break Some((codes::CLOSE_IDLE_TIMEOUT, "idle timeout".into()));
                    }
                    match tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break None,
                        Err(_) => {
                            stalled = true;
                            break None;
                        }
                    }
                }
            }
        };

        // Stop subscriptions first so nothing new is queued, and reads
        // nobody will receive.
        conn.unsubscribe_all();
        for t in conn.reads.drain(..) {
            t.abort();
        }
        if stalled {
            metrics::counter!("herald_edge_write_stalls_total").increment(1);
            debug!(?write_timeout, "Write stalled; dropping the connection");
        }
        // Every write from here on is bounded too (the peer may stall now).
        let close = if stalled { None } else { close };
        if let Some((code, reason)) = close {
            debug!(code, %reason, "Closing");
            if let Some(f) = farewell {
                let _ = tokio::time::timeout(write_timeout, sink.send(Message::text(f))).await;
            }
            if code == codes::CLOSE_GOING_AWAY {
                // Tell the client where things stand, then let in-flight
                // publishes get their answer before closing.
                let jitter = conn.ctx.cfg.reconnect_jitter.as_millis();
                let after_ms = (Uuid::new_v4().as_u128() % (jitter + 1)) as u64;
                let reconnect = ServerFrame::Reconnect { after_ms }.to_json();
                let _ =
                    tokio::time::timeout(write_timeout, sink.send(Message::text(reconnect))).await;
                // Boxed: the connection task would otherwise carry this
                // rarely used state for its whole life.
                Box::pin(tokio::time::timeout(
                    conn.ctx.cfg.shutdown_grace + write_timeout,
                    conn.drain_publishes(&mut rx, &mut sink),
                ))
                .await
                .ok();
            }
            let _ = tokio::time::timeout(
                write_timeout,
                sink.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into_owned().into(),
                }))),
            )
            .await;
        }
        if !stalled {
            let _ = tokio::time::timeout(write_timeout, sink.close()).await;
        }
        debug!("Disconnected");
    }
    if let Some(i) = &conn.identity {
        conn.ctx.users.remove(&i.sub, conn.id);
    }
    drop(conn);
    metrics::gauge!("herald_edge_connections").decrement(1.0);
    drop(live);
    drop(slot);
}

impl Conn {
    /// Queues a reply without waiting (see the crate invariants).
    fn reply(&self, item: Outbound) {
        let _ = self.outbox.try_push(item);
    }

    async fn drain_publishes(
        &mut self,
        rx: &mut herald_hub::OutboxReceiver,
        sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    ) {
        let total = self.ctx.cfg.max_inflight_publishes as u32;
        let all = self.publish_permits().acquire_many_owned(total);
        tokio::pin!(all);
        let deadline = tokio::time::sleep(self.ctx.cfg.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut all => break,
                _ = &mut deadline => break,
                item = rx.recv() => {
                    let Some(item) = item else { break };
                    if matches!(item, Outbound::Command(_)) {
                        continue;
                    }
                    if sink.send(Message::text(item.text())).await.is_err() {
                        return;
                    }
                }
            }
        }
        // Flush what the finished publishes queued.
        while rx.queued() > 0 {
            match rx.recv().await {
                Some(Outbound::Command(_)) => {}
                Some(item) => {
                    if sink.send(Message::text(item.text())).await.is_err() {
                        return;
                    }
                }
                None => break,
            }
        }
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match decode_client(text) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!("herald_edge_errors_total", "code" => e.code).increment(1);
                self.reply(Outbound::Frame(ServerFrame::error(&e).to_json()));
                return;
            }
        };
        match frame {
            ClientFrame::Ping => self.reply(Outbound::Frame(ServerFrame::Pong.to_json())),
            ClientFrame::Subscribe {
                channel,
                since,
                durable,
            } => self.subscribe(channel, since, durable),
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
            } => Box::pin(self.publish(channel, id, data, retry)).await,
        }
    }
}

/// Ends when the token's timer fires; never without a timer.
async fn until_expiry(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// When a connection acting as `id` is closed for an expired token: at
/// `exp` plus the same leeway as at verification (a token accepted within
/// it is not closed the moment it is accepted).
fn expiry_at(id: &Identity, leeway: Duration) -> tokio::time::Instant {
    let left = id.expires_in().saturating_add(leeway);
    let now = tokio::time::Instant::now();
    now.checked_add(left).unwrap_or(now + MAX_EXPIRY_TIMER)
}

/// Remembers the last `seq` written on a subscription: its acks may not go
/// beyond it.
fn note_delivery(subs: &mut HashMap<String, Subscription>, item: &Outbound) {
    if let Outbound::Message(d) = item {
        if let Some(sub) = subs.get_mut(&*d.channel) {
            sub.delivered(d.seq);
        }
    }
}

/// Resuming subscriptions of one connection catching up at once.
const CATCHUPS_PER_CONNECTION: usize = 4;

/// Most frames written per flush.
const WRITE_BATCH: u64 = 64;

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
