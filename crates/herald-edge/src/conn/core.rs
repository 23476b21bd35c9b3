//! The connection core: the one lifecycle every transport runs.
//!
//! A transport (WebSocket, an HTTP session read by SSE or long-polls, a
//! future binary or WebTransport one) supplies two halves:
//! - a [`Source`] of client frames: text, binary, or the end;
//! - a [`Sink`] that writes server frames (it may wait: the client reads
//!   slowly), sends the transport's heartbeat and says goodbye.
//!
//! [`drive`] owns everything else, so a new transport gets it by
//! construction:
//! - the outbound queue ([`herald_hub::Outbox`]), bounded in messages and
//!   bytes: a client that does not keep up is closed as a slow consumer;
//! - the write deadline: a write (or flush, or heartbeat) that makes no
//!   progress for `write_timeout` ends the connection at once, nothing more
//!   is written, and every byte it held is released with it;
//! - the frame budget: every frame a client sends, whatever its type, is
//!   counted against `frame_rate`/`frame_burst`; beyond, it is answered
//!   `rate_limited` and not handled;
//! - token expiry, the idle timeout, admin commands (close, unsubscribe),
//!   the node's shutdown (a `reconnect` hint, in-flight publishes answered,
//!   then the close), and the release of the connection's slot.

use std::borrow::Cow;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use herald_hub::{ConnCommand, Outbound, OutboxReceiver};
use herald_proto::frame::ClientFrame;
use herald_proto::{codes, ServerFrame};
use tracing::debug;
use uuid::Uuid;

use super::publish::{next_answer, settle_orphans, Answers};
use super::{error_frame, expiry_at, Conn, Subs};
use crate::ctx::ConnSlot;

/// A close: the code and reason the client is told.
pub(crate) type Close = (u16, Cow<'static, str>);

/// What a [`Source`] got from the client.
pub(crate) enum Incoming<T> {
    /// A text frame: one JSON client frame.
    Text(T),
    /// A binary frame (refused: herald speaks JSON text).
    Binary,
    /// Liveness only (a WebSocket ping or pong).
    Alive,
    /// The client is gone, or broke the protocol (then with the close to
    /// send).
    End(Option<Close>),
}

/// The reading half of a transport.
pub(crate) trait Source {
    type Text: AsRef<str>;
    /// The next thing from the client. Cancel-safe: it is raced against the
    /// outbound queue and timers.
    async fn next(&mut self) -> Incoming<Self::Text>;
}

/// What a heartbeat found.
pub(crate) enum Beat {
    Alive,
    /// Written nothing or the peer is gone: end without a close.
    Gone,
    /// End with this close (the client went quiet).
    Close(Close),
}

/// The writing half of a transport. Every call may wait on the client;
/// [`drive`] bounds each by the write deadline.
pub(crate) trait Sink {
    /// Writes one frame (buffered until [`Sink::flush`]); false: gone.
    async fn feed(&mut self, item: Outbound) -> bool;
    async fn flush(&mut self) -> bool;
    /// The transport's heartbeat; `quiet` is how long the client has sent
    /// nothing.
    async fn beat(&mut self, quiet: Duration) -> Beat;
    /// Ends the connection with a close frame (or, with `None`, without a
    /// word: the peer is gone or stalled).
    async fn finish(&mut self, close: Option<&Close>);
}

/// What a connection starts from: its state, its queue's receiving end,
/// the two halves of its transport, and its place under the connection
/// limits (released last).
pub(crate) struct Start<S, W> {
    pub conn: Conn,
    pub rx: OutboxReceiver,
    pub source: S,
    pub sink: W,
    pub slot: ConnSlot,
}

/// Runs a connection to its end over one transport.
///
/// Memory per idle connection is mostly this future (`docs/benchmarks.md`,
/// P3): its start comes boxed and is unpacked once (an `async fn` keeps its
/// arguments beside the locals they are moved into), and what runs rarely
/// (the close sequence, publishes, history) is boxed while it runs.
pub(crate) async fn drive<S: Source, W: Sink>(start: Box<Start<S, W>>) {
    let Start {
        mut conn,
        mut rx,
        mut source,
        mut sink,
        slot,
    } = *start;
    let ctx = conn.ctx.clone();
    let live = ctx.conns.live.clone();
    metrics::gauge!("herald_edge_connections").increment(1.0);
    metrics::counter!("herald_edge_connections_total").increment(1);
    if let Some(i) = &conn.identity {
        ctx.users.add(&i.sub, conn.id, &conn.outbox);
    }
    ctx.events
        .connected(&ctx, conn.id, conn.identity.as_ref().map(|i| &*i.sub));
    conn.subscribe_personal();
    let mut shutdown = ctx.shutdown.signal();
    let mut heartbeat = tokio::time::interval(ctx.cfg.heartbeat);
    heartbeat.tick().await;
    let mut last_seen = Instant::now();
    let overflow = rx.overflow_watch();
    // One timer for the token's expiry, re-armed only when the identity
    // changes (auth, refresh), not per loop turn; boxed, and made only for
    // a connection with a token: kept inline, it would cost every
    // anonymous connection a timer's worth of memory (P3).
    let mut expiry: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut armed_for: Option<u64> = None;
    let (frames_in, frames_out) = (&ctx.frames.inbound, &ctx.frames.outbound);
    let write_timeout = ctx.cfg.write_timeout;
    // Set when a write made no progress for `write_timeout`: nothing more
    // is written, the transport is dropped.
    let mut stalled = false;
    // Set by an admin `disconnect` that asked the client to stay away.
    let mut farewell: Option<String> = None;
    debug!("Connected");
    let close: Option<Close> = loop {
        let exp = conn.identity.as_ref().map(|i| i.exp);
        if exp != armed_for {
            match (&conn.identity, &mut expiry) {
                (Some(id), Some(timer)) => {
                    timer.as_mut().reset(expiry_at(id, ctx.auth.leeway()));
                }
                (Some(id), None) => {
                    expiry = Some(Box::pin(tokio::time::sleep_until(expiry_at(
                        id,
                        ctx.auth.leeway(),
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
            _ = shutdown.closing() => {
                break Some((codes::CLOSE_GOING_AWAY, "server shutting down".into()));
            }
            answer = next_answer(&mut conn.answers) => conn.reply(answer),
            // Reading before writing while no reply waits: a client's
            // frame (a ping, a publish) is handled between two write
            // batches and its answer goes out in the reply lane, ahead of
            // the messages still queued, instead of after all of them. A
            // reply waiting is written first, so a client that sends
            // without reading cannot pile its answers up here.
            incoming = source.next(), if !rx.has_replies() => {
                last_seen = Instant::now();
                match incoming {
                    Incoming::End(close) => {
                        if close.is_some() {
                            metrics::counter!("herald_edge_protocol_errors_total").increment(1);
                        }
                        break close;
                    }
                    Incoming::Alive => {}
                    Incoming::Text(text) => {
                        frames_in.increment(1);
                        conn.on_text(text.as_ref()).await;
                    }
                    Incoming::Binary => {
                        frames_in.increment(1);
                        if conn.within_frame_budget(None) {
                            conn.reply(error_frame(
                                codes::BINARY_UNSUPPORTED,
                                "binary frames are not supported; send JSON text frames",
                                None,
                            ));
                        }
                    }
                }
            }
            item = rx.recv() => {
                let Some(item) = item else { break None };
                // Whatever else is queued goes out with it: one flush (one
                // write syscall) per batch instead of per message. Admin
                // commands in the queue are taken out and applied after the
                // batch, in order.
                let subs = &mut conn.subs;
                let mut commands: Vec<ConnCommand> = Vec::new();
                let batch = async {
                    let mut next = Some(item);
                    let mut ok = true;
                    let mut n = 0u64;
                    while let Some(item) = next.take() {
                        if let Outbound::Command(c) = item {
                            commands.push(c);
                        } else if note_delivery(subs, &item) {
                            ok = sink.feed(item).await;
                            n += 1;
                        }
                        if !ok || n >= WRITE_BATCH {
                            break;
                        }
                        next = rx.try_recv();
                    }
                    (ok && (n == 0 || sink.flush().await)).then_some(n)
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
                        ConnCommand::CheckRevoked => {
                            if conn.is_revoked() {
                                metrics::counter!("herald_revoked_connections_total").increment(1);
                                close = Some((codes::CLOSE_TOKEN_REVOKED, Cow::Borrowed("token revoked")));
                                break;
                            }
                        }
                    }
                }
                if close.is_some() {
                    break close;
                }
            }
            _ = heartbeat.tick() => {
                // Quiet for a while, most likely: an empty queue keeps no
                // buffer (P3).
                rx.release_if_empty();
                match tokio::time::timeout(write_timeout, sink.beat(last_seen.elapsed())).await {
                    Ok(Beat::Alive) => {}
                    Ok(Beat::Gone) => break None,
                    Ok(Beat::Close(c)) => break Some(c),
                    Err(_) => {
                        stalled = true;
                        break None;
                    }
                }
            }
        }
    };

    // Stop subscriptions first so nothing new is queued, and reads nobody
    // will receive.
    conn.unsubscribe_all();
    for t in conn.reads.drain(..) {
        t.abort();
    }
    if stalled {
        metrics::counter!("herald_edge_write_stalls_total").increment(1);
        debug!(?write_timeout, "Write stalled; dropping the connection");
    }
    // Every write from here on is bounded too (the peer may stall now).
    // Boxed: the connection task would otherwise carry this rarely used
    // state for its whole life (P3).
    if !stalled {
        let publishes = InFlight {
            permits: conn.publish_permits(),
            total: ctx.cfg.limits.max_inflight_publishes as u32,
            answers: &mut conn.answers,
        };
        Box::pin(say_goodbye(
            &ctx, close, farewell, publishes, &mut rx, &mut sink,
        ))
        .await;
    }
    settle_orphans(conn.answers.take());
    debug!("Disconnected");
    if let Some(i) = &conn.identity {
        ctx.users.remove(&i.sub, conn.id);
    }
    ctx.events
        .disconnected(&ctx, conn.id, conn.identity.as_ref().map(|i| &*i.sub));
    drop(conn);
    drop(rx);
    drop(sink);
    drop(source);
    metrics::gauge!("herald_edge_connections").decrement(1.0);
    drop(live);
    drop(slot);
}

/// The close sequence of a connection that did not stall: the farewell of
/// an admin `disconnect`, on shutdown a `reconnect` hint and the answers of
/// in-flight publishes, then the close. Every write is bounded by the write
/// deadline.
async fn say_goodbye<W: Sink>(
    ctx: &crate::ctx::Ctx,
    close: Option<Close>,
    farewell: Option<String>,
    publishes: InFlight<'_>,
    rx: &mut OutboxReceiver,
    sink: &mut W,
) {
    let write_timeout = ctx.cfg.write_timeout;
    let Some(close) = close else {
        let _ = tokio::time::timeout(write_timeout, sink.finish(None)).await;
        return;
    };
    debug!(code = close.0, reason = %close.1, "Closing");
    if let Some(f) = farewell {
        let _ = tokio::time::timeout(write_timeout, send(sink, f)).await;
    }
    if close.0 == codes::CLOSE_GOING_AWAY {
        // Tell the client where things stand, then let in-flight publishes
        // get their answer before closing.
        let jitter = ctx.cfg.reconnect_jitter.as_millis();
        let after_ms = (Uuid::new_v4().as_u128() % (jitter + 1)) as u64;
        let reconnect = ServerFrame::Reconnect { after_ms }.to_json();
        let _ = tokio::time::timeout(write_timeout, send(sink, reconnect)).await;
        let grace = ctx.cfg.shutdown_grace;
        drain_publishes(publishes, grace, rx, sink, write_timeout).await;
    }
    let _ = tokio::time::timeout(write_timeout, sink.finish(Some(&close))).await;
}

/// Writes one frame and flushes it.
async fn send<W: Sink>(sink: &mut W, text: String) -> bool {
    sink.feed(Outbound::Frame(text)).await && sink.flush().await
}

/// A connection's publishes in flight: their permits (all back when every
/// one is settled) and their answers.
struct InFlight<'a> {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    total: u32,
    answers: &'a mut Option<Box<Answers>>,
}

/// On shutdown: answers in-flight publishes (as they come) until they are
/// all done or `shutdown_grace` is over, then writes what was queued. Each
/// write is bounded by the write deadline.
async fn drain_publishes<W: Sink>(
    publishes: InFlight<'_>,
    grace: Duration,
    rx: &mut OutboxReceiver,
    sink: &mut W,
    write_timeout: Duration,
) {
    let InFlight {
        permits,
        total,
        answers,
    } = publishes;
    let all = permits.acquire_many_owned(total);
    tokio::pin!(all);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = &mut deadline => break,
            answer = next_answer(answers) => {
                if !write_one(sink, answer, write_timeout).await {
                    return;
                }
            }
            item = rx.recv() => {
                let Some(item) = item else { return };
                if !write_one(sink, item, write_timeout).await {
                    return;
                }
            }
        }
    }
    // Answers that came with the last permits.
    while let Some(Some(answer)) = answers.as_mut().and_then(|a| a.next().now_or_never()) {
        if !write_one(sink, answer, write_timeout).await {
            return;
        }
    }
    while let Some(item) = rx.try_recv() {
        if !write_one(sink, item, write_timeout).await {
            return;
        }
    }
}

/// Writes one queued item within the write deadline; false: stop writing.
async fn write_one<W: Sink>(sink: &mut W, item: Outbound, write_timeout: Duration) -> bool {
    if matches!(item, Outbound::Command(_)) {
        return true;
    }
    matches!(
        tokio::time::timeout(write_timeout, async {
            sink.feed(item).await && sink.flush().await
        })
        .await,
        Ok(true)
    )
}

/// Ends when the token's timer fires; never without a timer.
async fn until_expiry(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Remembers the last `seq` written on a subscription (its acks may not go
/// beyond it); false for a presence event the subscription may not see
/// (the namespace's `presence` rule refused this connection) and for an
/// ephemeral message of a channel no longer subscribed.
fn note_delivery(subs: &mut Subs, item: &Outbound) -> bool {
    match item {
        Outbound::Message(d) => {
            if let Some(sub) = subs.get_mut(&*d.channel) {
                sub.delivered(d.seq);
            }
            true
        }
        Outbound::Event(e) => subs
            .get(&*e.channel)
            .is_some_and(|s| !e.presence || s.sees_presence()),
        _ => true,
    }
}

/// Most frames written per flush.
const WRITE_BATCH: u64 = 64;

/// What a client frame costs of the connection's frame budget, in frames:
/// most cost one; those whose answer is large or reads the log cost more,
/// so that `frame_rate` bounds the work a connection causes, not only the
/// frames it sends. A publish costs nothing here: it has its own budget
/// (`publish_rate`), answered with a `publish_nack` its sender retries.
pub(super) fn frame_cost(frame: &ClientFrame) -> u32 {
    match frame {
        ClientFrame::Publish { .. } => 0,
        // Up to `presence_max_members` members serialised.
        ClientFrame::Presence { stats: false, .. } => 20,
        // A page of the log, up to `history_max_bytes`.
        ClientFrame::History(_) => 10,
        // Kafka writes (presence), a hook call, a catch-up.
        ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. } => 2,
        _ => 1,
    }
}

/// What a refused frame's `rate_limited` error echoes, so that a client
/// waiting for an answer (a `history` or `presence` with its `id`, a
/// `subscribe`) hears it.
fn refused_echo(frame: &ClientFrame) -> (Option<String>, Option<String>) {
    match frame {
        ClientFrame::History(r) => (r.id.clone(), Some(r.channel.clone())),
        ClientFrame::Presence { id, channel, .. } => (id.clone(), Some(channel.clone())),
        ClientFrame::Subscribe { channel, .. }
        | ClientFrame::Unsubscribe { channel }
        | ClientFrame::Ack { channel, .. }
        | ClientFrame::Publish { channel, .. } => (None, Some(channel.clone())),
        ClientFrame::Ping | ClientFrame::Auth { .. } | ClientFrame::Refresh { .. } => (None, None),
    }
}

impl Conn {
    /// Counts `frame` against the connection's frame budget (a frame that
    /// did not decode counts one); when the budget is spent, answers
    /// `rate_limited` (echoing the frame's `id` and channel) and returns
    /// false: the frame is not handled.
    pub(super) fn within_frame_budget(&mut self, frame: Option<&ClientFrame>) -> bool {
        let cost = frame.map_or(1, frame_cost);
        let rate = self.ctx.cfg.limits.frame_rate;
        let (Some(rate), Some(cost)) = (
            std::num::NonZeroU32::new(rate),
            std::num::NonZeroU32::new(cost),
        ) else {
            return true;
        };
        let burst = std::num::NonZeroU32::new(self.ctx.cfg.limits.frame_burst).unwrap_or(rate);
        // Made at the first frame: an idle connection carries none (P3).
        let limiter = self.frame_limiter.get_or_insert_with(|| {
            Box::new(governor::RateLimiter::direct(
                governor::Quota::per_second(rate).allow_burst(burst),
            ))
        });
        if matches!(limiter.check_n(cost), Ok(Ok(()))) {
            return true;
        }
        metrics::counter!("herald_edge_frames_refused_total").increment(1);
        metrics::counter!("herald_edge_errors_total", "code" => codes::RATE_LIMITED).increment(1);
        let (id, channel) = frame.map_or((None, None), refused_echo);
        self.reply(Outbound::Frame(
            ServerFrame::Error {
                code: codes::RATE_LIMITED,
                reason: format!(
                    "over this connection's frame budget ({rate} per second); not handled, send it again later"
                ),
                id,
                channel,
            }
            .to_json(),
        ));
        false
    }
}
