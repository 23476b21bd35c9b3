//! One WebSocket connection: a single task selecting over the socket, the
//! outbound queue, the heartbeat and shutdown (mini-redis's Handler shape).
//! Subscriptions (which may replay history) and publishes (which wait for
//! Kafka) run as their own tasks and answer through the outbound queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use herald_hub::{Claim, DedupOutcome, HistoryLimits, HubError, Outbound, Outbox};
use herald_log::LogError;
use herald_proto::envelope::{self, Envelope, HEADER_ID, HEADER_VERSION};
use herald_proto::frame::{decode_client, ClientFrame};
use herald_proto::{codes, Channel, HistoryRequest, Position, ServerFrame, Since};

use crate::auth::{Capability, Identity, MAX_EXPIRY_TIMER};
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, debug_span, Instrument};
use uuid::Uuid;

/// The socket of one connection.
pub type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

use crate::confirm::{confirm_append, outcome_of, unconfirmed_reason, wait_for_first, Confirmed};
use crate::server::{ConnSlot, Ctx};

struct Subscription {
    topic: String,
    /// Acks are stored as the client's durable cursor.
    durable: bool,
    /// The subscribe task while it is still catching up.
    task: Option<JoinHandle<()>>,
    /// Set by the subscribe task, before it tells the client, when the
    /// subscription failed: the hub registered nothing and the connection
    /// forgets it the next time it looks (a flag per subscription instead of
    /// a channel per connection: 32 bytes against 1.3 KB).
    failed: Arc<AtomicBool>,
}

impl Subscription {
    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

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

fn nack(id: Uuid, channel: &str, code: &'static str, reason: impl Into<String>) -> Outbound {
    nack_after(id, channel, code, reason, None)
}

fn nack_after(
    id: Uuid,
    channel: &str,
    code: &'static str,
    reason: impl Into<String>,
    retry_after_ms: Option<u64>,
) -> Outbound {
    metrics::counter!("herald_publish_nacks_total", "code" => code).increment(1);
    Outbound::Frame(
        ServerFrame::PublishNack {
            id,
            channel: channel.to_owned(),
            code,
            reason: reason.into(),
            retry_after_ms,
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
}

/// Runs one connection to its end: the task spawned per connection.
///
/// Memory per idle connection is mostly this task (`docs/benchmarks.md`,
/// P3), so it is one flat state machine: the request comes boxed and is
/// unpacked once, the WebSocket is built and split in place, and what runs
/// rarely (publishes, history, the drain on shutdown) is boxed while it runs.
/// Passing the parts by value through nested `async fn`s kept a copy of each
/// in every layer (3.3 KB per task before, measured with DHAT).
pub async fn run(accepted: Box<Accepted>) {
    let id = accepted.ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    // A debug span: at the default level it is off and costs nothing; an
    // enabled span keeps its formatted fields per connection (~250 bytes).
    let span = debug_span!("conn", id, remote = ?accepted.remote, client = ?accepted.client_id);
    serve(id, accepted).instrument(span).await;
}

struct Conn {
    id: u64,
    ctx: Arc<Ctx>,
    outbox: Outbox,
    subs: HashMap<String, Subscription>,
    publish_permits: Arc<Semaphore>,
    /// Per-connection publish rate limit; `None` when unlimited.
    limiter: Option<Limiter>,
    /// Who owns this connection's durable cursors (`/ws?client_id=`).
    client_id: Option<Arc<str>>,
    /// Bounds the `history` requests served at once.
    history_permits: Arc<Semaphore>,
    /// Who the connection acts as, from its token; `None`: anonymous.
    identity: Option<Identity>,
    /// Publish limits of namespaces with their own `publish_rate`.
    ns_limiters: HashMap<String, Limiter>,
}

impl Conn {
    fn new(id: u64, ctx: Arc<Ctx>, client_id: Option<String>) -> Parts {
        let (outbox, rx) = Outbox::new(id, ctx.cfg.queue_messages, ctx.cfg.queue_bytes);
        let permits = Arc::new(Semaphore::new(ctx.cfg.max_inflight_publishes));
        let history_permits = Arc::new(Semaphore::new(ctx.cfg.history_concurrency.max(1)));
        let limiter = std::num::NonZeroU32::new(ctx.cfg.publish_rate).map(|rate| {
            let burst = std::num::NonZeroU32::new(ctx.cfg.publish_burst).unwrap_or(rate);
            governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
        });
        (
            Conn {
                id,
                outbox,
                subs: HashMap::new(),
                publish_permits: permits,
                limiter,
                client_id: client_id.map(Arc::from),
                history_permits,
                identity: None,
                ns_limiters: HashMap::new(),
                ctx,
            },
            rx,
        )
    }
}

type Parts = (Conn, herald_hub::OutboxReceiver);

async fn serve(id: u64, accepted: Box<Accepted>) {
    let Accepted {
        on_upgrade,
        config,
        ctx,
        remote: _,
        client_id,
        identity,
        slot,
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
    let live = ctx.live.clone();
    metrics::gauge!("herald_edge_connections").increment(1.0);
    metrics::counter!("herald_edge_connections_total").increment(1);
    let (mut conn, mut rx) = Conn::new(id, ctx, client_id);
    conn.identity = identity;
    {
        let mut shutdown = conn.ctx.shutdown.subscribe();
        let mut heartbeat = tokio::time::interval(conn.ctx.cfg.heartbeat);
        heartbeat.tick().await;
        let mut last_seen = Instant::now();
        let overflow = rx.overflow_watch();
        // One timer for the token's expiry, re-armed only when the identity
        // changes (auth, refresh), not per loop turn.
        let expiry = tokio::time::sleep(Duration::from_secs(86_400 * 365));
        tokio::pin!(expiry);
        let mut armed_for: Option<u64> = None;
        let ctx = conn.ctx.clone();
        let (frames_in, frames_out) = (&ctx.frames_in, &ctx.frames_out);
        let write_timeout = ctx.cfg.write_timeout;
        // Set when a write made no progress for `write_timeout`: nothing more
        // is written to the socket, it is dropped.
        let mut stalled = false;
        debug!("Connected");

        let close: Option<(u16, &'static str)> = loop {
            let exp = conn.identity.as_ref().map(|i| i.exp);
            if exp != armed_for {
                if let Some(id) = &conn.identity {
                    // The same leeway as at verification: a token accepted
                    // within it is not closed the moment it is accepted.
                    let left = id.expires_in().saturating_add(conn.ctx.auth.leeway());
                    let now = tokio::time::Instant::now();
                    let at = now.checked_add(left).unwrap_or(now + MAX_EXPIRY_TIMER);
                    expiry.as_mut().reset(at);
                }
                armed_for = exp;
            }
            tokio::select! {
                biased;
                _ = overflow.overflowed() => break Some((codes::CLOSE_SLOW_CONSUMER, "slow consumer: resume with since")),
                _ = &mut expiry, if armed_for.is_some() => {
                    metrics::counter!("herald_auth_expired_total").increment(1);
                    break Some((codes::CLOSE_TOKEN_EXPIRED, "token expired"));
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    break Some((codes::CLOSE_GOING_AWAY, "server shutting down"));
                }
                item = rx.recv() => {
                    let Some(item) = item else { break None };
                    // Whatever else is queued goes out with it: one flush
                    // (one write syscall) per batch instead of per message.
                    // Bounded in time: a peer that stopped reading must not
                    // hold this loop (overflow, expiry, drain) forever.
                    let batch = async {
                        let mut ok = sink.feed(Message::text(item.text())).await.is_ok();
                        let mut n = 1u64;
                        while ok && n < WRITE_BATCH {
                            let Some(next) = rx.try_recv() else { break };
                            ok = sink.feed(Message::text(next.text())).await.is_ok();
                            n += 1;
                        }
                        (ok && sink.flush().await.is_ok()).then_some(n)
                    };
                    match tokio::time::timeout(write_timeout, batch).await {
                        Ok(Some(n)) => frames_out.increment(n),
                        Ok(None) => break None,
                        Err(_) => {
                            stalled = true;
                            break None;
                        }
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
                            break close;
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
                    if last_seen.elapsed() > conn.ctx.cfg.idle_timeout {
                        break Some((codes::CLOSE_IDLE_TIMEOUT, "idle timeout"));
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

        // Stop subscriptions first so nothing new is queued.
        conn.unsubscribe_all();
        if stalled {
            metrics::counter!("herald_edge_write_stalls_total").increment(1);
            debug!(?write_timeout, "Write stalled; dropping the connection");
        }
        // Every write from here on is bounded too (the peer may stall now).
        let close = if stalled { None } else { close };
        if let Some((code, reason)) = close {
            debug!(code, reason, "Closing");
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
                    reason: reason.into(),
                }))),
            )
            .await;
        }
        if !stalled {
            let _ = tokio::time::timeout(write_timeout, sink.close()).await;
        }
        debug!("Disconnected");
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
        let all = self.publish_permits.clone().acquire_many_owned(total);
        tokio::pin!(all);
        let deadline = tokio::time::sleep(self.ctx.cfg.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut all => break,
                _ = &mut deadline => break,
                item = rx.recv() => {
                    let Some(item) = item else { break };
                    if sink.send(Message::text(item.text())).await.is_err() {
                        return;
                    }
                }
            }
        }
        // Flush what the finished publishes queued.
        while rx.queued() > 0 {
            match rx.recv().await {
                Some(item) => {
                    if sink.send(Message::text(item.text())).await.is_err() {
                        return;
                    }
                }
                None => break,
            }
        }
    }

    fn unsubscribe_all(&mut self) {
        for (channel, sub) in self.subs.drain() {
            if let Some(t) = &sub.task {
                t.abort();
            }
            self.ctx.hub.unsubscribe(&self.outbox, &sub.topic, &channel);
        }
    }

    /// The channel and its topic, when the name is valid, the namespace
    /// configured, and the namespace's rule lets this connection use `cap`.
    fn resolve(
        &self,
        name: &str,
        cap: Capability,
    ) -> Result<(Channel, String), (&'static str, String)> {
        let channel = Channel::parse(name).map_err(|e| (codes::BAD_CHANNEL, e.to_string()))?;
        let not_configured = || {
            (
                codes::UNKNOWN_NAMESPACE,
                format!("namespace `{}` is not configured", channel.namespace()),
            )
        };
        let topic = self
            .ctx
            .topics
            .get(channel.namespace())
            .cloned()
            .ok_or_else(not_configured)?;
        let ns = self
            .ctx
            .namespaces
            .get(channel.namespace())
            .ok_or_else(not_configured)?;
        crate::server::authorize(ns, self.identity.as_ref(), &channel, cap)?;
        Ok((channel, topic))
    }

    fn authenticate(&mut self, token: &str, refresh: bool) {
        let id = match self.ctx.auth.verify(token) {
            Ok(id) => id,
            Err(e) => {
                metrics::counter!("herald_auth_failures_total", "reason" => "bad_token")
                    .increment(1);
                return self.reply(error_frame(codes::BAD_TOKEN, e.to_string(), None));
            }
        };
        match (&self.identity, refresh) {
            (Some(_), false) => {
                return self.reply(error_frame(
                    codes::BAD_FRAME,
                    "already authenticated; send `refresh` to replace the token",
                    None,
                ))
            }
            (None, true) => {
                return self.reply(error_frame(
                    codes::BAD_FRAME,
                    "not authenticated; send `auth` first",
                    None,
                ))
            }
            (Some(old), true) if old.sub != id.sub => {
                metrics::counter!("herald_auth_failures_total", "reason" => "other_sub")
                    .increment(1);
                return self.reply(error_frame(
                    codes::BAD_TOKEN,
                    "a refresh token must be for the same `sub`",
                    None,
                ));
            }
            _ => {}
        }
        metrics::counter!("herald_auth_total", "kind" => if refresh { "refresh" } else { "auth" })
            .increment(1);
        let reply = ServerFrame::Authenticated {
            sub: id.sub.clone(),
            expires_at: id.exp,
        };
        self.client_id = Some(Arc::from(id.sub.as_str()));
        self.identity = Some(id);
        self.reply(Outbound::Frame(reply.to_json()));
        if refresh {
            // The new token may grant less: drop what it no longer allows.
            let lost: Vec<String> = self
                .subs
                .keys()
                .filter(|name| self.resolve(name, Capability::Subscribe).is_err())
                .cloned()
                .collect();
            for name in lost {
                self.reply(error_frame(
                    codes::UNAUTHORIZED,
                    "the refreshed token does not allow this subscription",
                    Some(&name),
                ));
                self.unsubscribe(name);
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
            // The two frames that wait are boxed, so that their state is
            // allocated while they run rather than carried by every idle
            // connection's task.
            ClientFrame::History(req) => Box::pin(self.history(req)).await,
            ClientFrame::Auth { token } => self.authenticate(&token, false),
            ClientFrame::Refresh { token } => self.authenticate(&token, true),
            ClientFrame::Publish {
                channel,
                id,
                data,
                retry,
            } => Box::pin(self.publish(channel, id, data, retry)).await,
        }
    }

    fn ack(&mut self, channel: String, seq: i64) {
        if self.subs.get(&channel).is_some_and(Subscription::failed) {
            self.subs.remove(&channel);
        }
        let Some(sub) = self.subs.get(&channel) else {
            return self.reply(error_frame(
                codes::NOT_SUBSCRIBED,
                "ack for a channel this connection does not subscribe to",
                Some(&channel),
            ));
        };
        metrics::counter!("herald_edge_client_acks_total").increment(1);
        if !sub.durable {
            return;
        }
        // A durable subscription always has a client id (checked at subscribe).
        let (Some(client), Ok(epoch)) = (&self.client_id, self.ctx.hub.epoch(&sub.topic)) else {
            return;
        };
        if self.ctx.cursors.ack(client, &channel, seq, &epoch) {
            metrics::counter!("herald_cursor_acks_total").increment(1);
            // Records of the partition behind this client's cursor (an upper
            // bound on its unacked messages of the channel).
            if let Some(tail) = self.ctx.hub.tail_seq(&sub.topic, &channel) {
                metrics::histogram!("herald_cursor_lag_records").record((tail - seq).max(0) as f64);
            }
        }
    }

    /// Serves a `history` request in its own task; at most
    /// `history_concurrency` per connection (waiting stops reading, like
    /// publishes).
    async fn history(&mut self, req: HistoryRequest) {
        let (_, topic) = match self.resolve(&req.channel, Capability::History) {
            Ok(x) => x,
            Err((code, reason)) => return self.reply(history_error(&req, code, reason)),
        };
        let max = self.ctx.cfg.history_max_limit;
        let limit = req
            .limit
            .unwrap_or(herald_proto::frame::HISTORY_DEFAULT_LIMIT.min(max));
        if limit > max {
            return self.reply(history_error(
                &req,
                codes::BAD_FRAME,
                format!("`limit` is at most {max}"),
            ));
        }
        let permit = match self.history_permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let ctx = self.ctx.clone();
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let limits = HistoryLimits {
                limit,
                max_bytes: ctx
                    .cfg
                    .history_max_bytes
                    .min(ctx.cfg.queue_bytes / 2)
                    .max(1),
                max_scan: ctx.cfg.history_max_scan,
            };
            let reply = match ctx
                .hub
                .history(&topic, &req.channel, req.from, limits)
                .await
            {
                Ok(page) => {
                    let source = if page.from_cache { "cache" } else { "log" };
                    metrics::counter!("herald_history_requests_total", "source" => source)
                        .increment(1);
                    metrics::histogram!("herald_history_messages")
                        .record(page.messages.len() as f64);
                    metrics::histogram!("herald_history_latency_seconds")
                        .record(started.elapsed().as_secs_f64());
                    let mut messages: Vec<Box<RawValue>> = page
                        .messages
                        .iter()
                        .filter_map(|d| RawValue::from_string(d.text.to_string()).ok())
                        .collect();
                    if req.reverse {
                        messages.reverse();
                    }
                    metrics::counter!("herald_history_bytes_total")
                        .increment(messages.iter().map(|m| m.get().len() as u64).sum());
                    Outbound::Frame(
                        ServerFrame::History {
                            id: req.id,
                            channel: req.channel,
                            epoch: page.epoch.to_string(),
                            messages,
                            next: page.next,
                            done: page.done,
                            truncated: page.truncated,
                        }
                        .to_json(),
                    )
                }
                Err(e) => {
                    metrics::counter!("herald_history_errors_total").increment(1);
                    tracing::warn!(channel = %req.channel, %e, "History failed");
                    history_error(
                        &req,
                        codes::UNAVAILABLE,
                        format!("history failed: {e}; retry"),
                    )
                }
            };
            // A reply that does not fit is a slow consumer, like any frame.
            let _ = outbox.try_push(reply);
            drop(permit);
        });
    }

    fn subscribe(&mut self, name: String, since: Option<Since>, durable: bool) {
        let (channel, topic) = match self.resolve(&name, Capability::Subscribe) {
            Ok(x) => x,
            Err((code, reason)) => return self.reply(error_frame(code, reason, Some(&name))),
        };
        self.subs.retain(|_, s| !s.failed());
        if self.subs.contains_key(&name) {
            return self.reply(error_frame(
                codes::ALREADY_SUBSCRIBED,
                "already subscribed to this channel",
                Some(&name),
            ));
        }
        if self.subs.len() >= self.ctx.cfg.max_subscriptions {
            return self.reply(error_frame(
                codes::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "at most {} subscriptions per connection",
                    self.ctx.cfg.max_subscriptions
                ),
                Some(&name),
            ));
        }
        // A namespace may make every subscription of an identified client
        // durable; asking for it explicitly still needs an identity.
        let ns_durable = self
            .ctx
            .namespaces
            .get(channel.namespace())
            .is_some_and(|n| n.durable);
        let durable = durable || (ns_durable && self.client_id.is_some());
        let client = match (durable, &self.client_id) {
            (false, _) => None,
            (true, Some(c)) => Some(c.clone()),
            (true, None) => {
                return self.reply(error_frame(
                    codes::IDENTITY_REQUIRED,
                    "durable subscriptions and since \"cursor\" need a client id: connect to /ws?client_id=...",
                    Some(&name),
                ))
            }
        };
        let hub = self.ctx.hub.clone();
        let cursors = self.ctx.cursors.clone();
        let outbox = self.outbox.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let failed_flag = failed.clone();
        let t = topic.clone();
        let task = tokio::spawn(async move {
            let since = match (since, &client) {
                (Some(Since::Position(p)), _) => Ok(Some(p)),
                (Some(Since::Cursor), Some(client)) => cursors
                    .lookup(client, channel.as_str())
                    .await
                    .map(|c| {
                        c.map(|c| Position {
                            seq: c.seq,
                            epoch: c.epoch,
                        })
                    })
                    .map_err(HubError::from),
                (_, _) => Ok(None),
            };
            let res = match since {
                Ok(since) => {
                    hub.subscribe(&outbox, &t, channel.as_str(), since.as_ref())
                        .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(out) => {
                    debug!(channel = %channel, recovered = out.recovered, caught_up = out.caught_up, "Subscribed");
                }
                Err(HubError::SlowConsumer) | Err(HubError::Closed) => {}
                Err(e) => {
                    tracing::warn!(channel = %channel, %e, "Subscribe failed");
                    // The hub registered nothing: the connection forgets the
                    // subscription (flagged before the client hears of it,
                    // so its retry is not refused as already subscribed).
                    failed_flag.store(true, Ordering::Release);
                    let _ = outbox.try_push(error_frame(
                        codes::UNAVAILABLE,
                        format!("subscribe failed: {e}; retry"),
                        Some(channel.as_str()),
                    ));
                }
            }
        });
        self.subs.insert(
            name,
            Subscription {
                topic,
                durable,
                task: Some(task),
                failed,
            },
        );
    }

    fn unsubscribe(&mut self, name: String) {
        match self.subs.remove(&name) {
            Some(sub) if !sub.failed() => {
                if let Some(t) = &sub.task {
                    t.abort();
                }
                self.ctx.hub.unsubscribe(&self.outbox, &sub.topic, &name);
                self.reply(Outbound::Frame(
                    ServerFrame::Unsubscribed { channel: name }.to_json(),
                ));
            }
            _ => self.reply(error_frame(
                codes::NOT_SUBSCRIBED,
                "not subscribed to this channel",
                Some(&name),
            )),
        }
    }

    async fn publish(&mut self, name: String, id: Uuid, data: Box<RawValue>, retry: bool) {
        let started = Instant::now();
        let (channel, topic) = match self.resolve(&name, Capability::Publish) {
            Ok(x) => x,
            Err((code, reason)) => return self.reply(nack(id, &name, code, reason)),
        };
        let ns = self.ctx.namespaces.get(channel.namespace());
        let max_bytes = ns
            .and_then(|n| n.max_message_bytes)
            .unwrap_or(self.ctx.cfg.max_message_bytes);
        if data.get().len() > max_bytes {
            return self.reply(nack(
                id,
                &name,
                codes::TOO_LARGE,
                format!(
                    "data is {} bytes; the limit is {max_bytes}",
                    data.get().len()
                ),
            ));
        }
        // A namespace with its own rate has its own bucket per connection.
        let (limiter, rate) = match ns.and_then(|n| n.publish_rate) {
            Some(rate) => {
                let l = self
                    .ns_limiters
                    .entry(channel.namespace().to_owned())
                    .or_insert_with(|| {
                        let r =
                            std::num::NonZeroU32::new(rate).unwrap_or(std::num::NonZeroU32::MIN);
                        governor::RateLimiter::direct(governor::Quota::per_second(r))
                    });
                (Some(&*l), rate)
            }
            None => (self.limiter.as_ref(), self.ctx.cfg.publish_rate),
        };
        if let Some(limiter) = limiter {
            if let Err(not_until) = limiter.check() {
                use governor::clock::{Clock, DefaultClock};
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return self.reply(nack_after(
                    id,
                    &name,
                    codes::RATE_LIMITED,
                    format!("more than {rate} publishes per second on this connection"),
                    Some(wait.as_millis() as u64 + 1),
                ));
            }
        }
        if self.ctx.shutting_down.load(Ordering::SeqCst) {
            return self.reply(nack(
                id,
                &name,
                codes::SHUTTING_DOWN,
                "server is shutting down; reconnect and retry with the same id",
            ));
        }
        // Bounded in-flight publishes per connection: waiting here stops
        // reading from this client, which is the backpressure it gets.
        let permit = match self.publish_permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let ctx = self.ctx.clone();
        let outbox = self.outbox.clone();
        match ctx.dedup.claim(channel.as_str(), id) {
            Claim::Seen(rx) => {
                tokio::spawn(async move {
                    let reply = match wait_for_first(&ctx, rx).await {
                        None => {
                            let (code, reason) =
                                unconfirmed_reason(ctx.kafka.config().publish_timeout);
                            nack(id, channel.as_str(), code, reason)
                        }
                        Some(DedupOutcome::Appended(seq)) => {
                            metrics::counter!("herald_publish_duplicates_total").increment(1);
                            Outbound::Frame(
                                ServerFrame::PublishAck {
                                    id,
                                    channel: channel.as_str().to_owned(),
                                    seq,
                                    duplicate: true,
                                }
                                .to_json(),
                            )
                        }
                        Some(DedupOutcome::Failed(code, reason)) => {
                            nack(id, channel.as_str(), code, reason)
                        }
                    };
                    let _ = outbox.try_push(reply);
                    drop(permit);
                });
            }
            Claim::First(slot) => {
                let env = Envelope {
                    v: envelope::ENVELOPE_VERSION,
                    id,
                    channel: channel.as_str().to_owned(),
                    publisher: Some(match &self.identity {
                        Some(id) => id.sub.clone(),
                        None => format!("conn:{}", self.id),
                    }),
                    ts: now_ms(),
                    content_type: envelope::CONTENT_TYPE_JSON.to_owned(),
                    data,
                    replayed: None,
                };
                let partition = match ctx.hub.partition_of(&topic, channel.as_str()) {
                    Ok(p) => p,
                    Err(e) => {
                        let o = DedupOutcome::Failed(codes::INTERNAL, e.to_string());
                        ctx.dedup.complete(channel.as_str(), id, &slot, o);
                        return self.reply(nack(id, &name, codes::INTERNAL, e.to_string()));
                    }
                };
                let value = env.to_json();
                let append = move |ctx: &Ctx| {
                    let idstr = id.to_string();
                    ctx.kafka.publish(
                        &topic,
                        partition,
                        env.channel.as_bytes(),
                        value.as_bytes(),
                        &[
                            (HEADER_ID, idstr.as_bytes()),
                            (
                                HEADER_VERSION,
                                envelope::ENVELOPE_VERSION.to_string().as_bytes(),
                            ),
                        ],
                    )
                };
                if !retry {
                    // Enqueued here, in the connection's order; confirmed in the task.
                    let pending = append(&ctx);
                    tokio::spawn(async move {
                        let answer =
                            confirm_append(&ctx, channel.as_str(), id, slot, pending, permit).await;
                        settle(&outbox, &channel, id, started, answer, false);
                    });
                } else {
                    // A retry: the first attempt may have been appended by a
                    // node that died before answering. Look before appending.
                    tokio::spawn(async move {
                        let topic = ctx
                            .topics
                            .get(channel.namespace())
                            .cloned()
                            .unwrap_or_default();
                        let since = now_ms() - ctx.cfg.dedup_window.as_millis() as i64;
                        let found = ctx
                            .kafka
                            .find_message(
                                &topic,
                                partition,
                                channel.as_str(),
                                id,
                                since,
                                RETRY_SCAN_RECORDS,
                            )
                            .await;
                        let (answer, duplicate) = match found {
                            Ok(Some(seq)) => {
                                metrics::counter!("herald_publish_retries_found_total")
                                    .increment(1);
                                let o = DedupOutcome::Appended(seq);
                                ctx.dedup.complete(channel.as_str(), id, &slot, o);
                                drop(permit);
                                (Confirmed::Answer(Ok(seq)), true)
                            }
                            Ok(None) => {
                                let pending = append(&ctx);
                                let answer = confirm_append(
                                    &ctx,
                                    channel.as_str(),
                                    id,
                                    slot,
                                    pending,
                                    permit,
                                )
                                .await;
                                (answer, false)
                            }
                            Err(e) => {
                                ctx.dedup
                                    .complete(channel.as_str(), id, &slot, outcome_of(&e));
                                drop(permit);
                                (Confirmed::Answer(Err(e)), false)
                            }
                        };
                        settle(&outbox, &channel, id, started, answer, duplicate);
                    });
                }
            }
        }
    }
}

fn history_error(req: &HistoryRequest, code: &'static str, reason: impl Into<String>) -> Outbound {
    metrics::counter!("herald_edge_errors_total", "code" => code).increment(1);
    Outbound::Frame(
        ServerFrame::Error {
            code,
            reason: reason.into(),
            id: req.id.clone(),
            channel: Some(req.channel.clone()),
        }
        .to_json(),
    )
}

/// Most frames written per flush.
const WRITE_BATCH: u64 = 64;

/// How far back (in records of the channel's partition) a retried publish
/// is looked for, besides the dedup window's time bound.
pub(crate) const RETRY_SCAN_RECORDS: i64 = 50_000;

/// Answers a publish whose dedup slot is already settled (or left to the
/// task waiting for Kafka; see [`crate::confirm`]).
fn settle(
    outbox: &Outbox,
    channel: &Channel,
    id: Uuid,
    started: Instant,
    answer: Confirmed,
    duplicate: bool,
) {
    let reply = match answer {
        Confirmed::Answer(Ok(seq)) => {
            if duplicate {
                metrics::counter!("herald_publish_duplicates_total").increment(1);
            } else {
                metrics::counter!("herald_publish_acks_total").increment(1);
                metrics::histogram!("herald_publish_latency_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Outbound::Frame(
                ServerFrame::PublishAck {
                    id,
                    channel: channel.as_str().to_owned(),
                    seq,
                    duplicate,
                }
                .to_json(),
            )
        }
        Confirmed::Answer(Err(e)) => {
            let code = publish_error_code(&e);
            metrics::counter!("herald_log_errors_total", "op" => "publish").increment(1);
            nack(id, channel.as_str(), code, format!("not stored: {e}"))
        }
        Confirmed::Pending(limit) => {
            let (code, reason) = unconfirmed_reason(limit);
            nack(id, channel.as_str(), code, reason)
        }
    };
    let _ = outbox.try_push(reply);
}

/// The nack code for a failed append.
pub(crate) fn publish_error_code(e: &LogError) -> &'static str {
    if e.is_too_large() {
        codes::TOO_LARGE
    } else if e.is_retriable() {
        codes::UNAVAILABLE
    } else {
        codes::INTERNAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an `async fn` of one argument returns.
    fn future_size<A, F>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection carries this future (docs/benchmarks.md, P3:
    /// 7.6 KB per idle connection in all). It was 2.9 KB in test builds
    /// before the parts were boxed and the layers flattened, 1.4 KB after;
    /// the bound catches a large state creeping back in.
    #[test]
    fn connection_task_stays_small() {
        let n = future_size(run as fn(_) -> _);
        assert!(n <= 2048, "the connection task's future is {n} bytes");
    }
}
