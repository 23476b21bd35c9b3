//! HTTP sessions: herald's connection over plain HTTP, for networks that
//! block WebSocket. A session is the same [`Conn`] a WebSocket drives (the
//! same frame handlers, access rules, rate limits, dedup, hooks, presence
//! and resume), with two differences of transport:
//!
//! - frames from the client arrive as `POST /session/{id}` requests, one
//!   frame per request, and are handled in order;
//! - frames to the client are taken by a reader: a Server-Sent Events
//!   stream (`GET /sse`, the session lives as long as the stream) or
//!   long-polls (`GET /poll`, the session lives while polls keep coming,
//!   ending `idle_timeout` after the last one).
//!
//! Between the connection and its reader sits a bounded queue
//! ([`READER_FRAMES`]); a reader that falls behind for `write_timeout`
//! (nobody polling, a stalled stream) ends the session like a stalled
//! WebSocket. The session's end is announced to the reader with a `close`
//! frame carrying the WebSocket close code herald would have used.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_hub::{ConnCommand, Outbound};
use herald_proto::{codes, Position, ServerFrame, Since};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, debug_span, Instrument};
use uuid::Uuid;

use super::{expiry_at, note_delivery, Conn};
use crate::ctx::Ctx;
use crate::server::Admitted;

/// Frames queued between a session and its reader.
pub const READER_FRAMES: usize = 256;

/// Client frames queued for a session; a `POST` beyond is refused (429).
pub const INBOUND_FRAMES: usize = 64;

/// How a session's frames are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One Server-Sent Events stream for the session's whole life.
    Sse,
    /// Long-polls, one after the other.
    Poll,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

/// A frame for the reader: its text, and for a message its channel and
/// `seq` (the reader keeps positions for SSE event ids).
pub struct Out {
    pub text: Arc<str>,
    pub message: Option<(Arc<str>, i64)>,
}

/// The live sessions of a node, by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Handle>>>,
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<Arc<Handle>> {
        self.lock().get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Handle>>> {
        match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// What the HTTP routes hold of a session.
pub struct Handle {
    pub id: String,
    pub transport: Transport,
    inbound: mpsc::Sender<String>,
    /// The reader's end; taken by the SSE stream, locked by each poll.
    pub out: tokio::sync::Mutex<Option<mpsc::Receiver<Out>>>,
    /// Polls waiting now.
    readers: AtomicUsize,
    /// When the last poll ended.
    last_read: Mutex<Instant>,
    /// The SSE stream ended: the session ends with it.
    reader_gone: Notify,
}

/// Why a `POST` frame was not taken.
pub enum Refused {
    /// The session's queue is full (the client sends faster than it is
    /// served).
    Busy,
    /// The session has ended.
    Gone,
}

impl Handle {
    /// Queues a client frame for the session.
    pub fn send(&self, frame: String) -> Result<(), Refused> {
        self.inbound.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::Busy,
            mpsc::error::TrySendError::Closed(_) => Refused::Gone,
        })
    }

    /// Marks a poll as waiting; the guard marks its end.
    pub fn poll_started(self: &Arc<Self>) -> PollGuard {
        self.readers.fetch_add(1, Ordering::SeqCst);
        PollGuard(self.clone())
    }

    /// Tells the session its SSE stream has ended.
    pub fn stream_ended(&self) {
        self.reader_gone.notify_one();
    }

    fn idle_for(&self) -> Duration {
        if self.readers.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        match self.last_read.lock() {
            Ok(t) => t.elapsed(),
            Err(p) => p.into_inner().elapsed(),
        }
    }
}

/// A poll in progress.
pub struct PollGuard(Arc<Handle>);

impl Drop for PollGuard {
    fn drop(&mut self) {
        match self.0.last_read.lock() {
            Ok(mut t) => *t = Instant::now(),
            Err(p) => *p.into_inner() = Instant::now(),
        }
        self.0.readers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts a session for an admitted client, subscribed to `subscribe`
/// (channel and where to resume), and registers it.
pub(crate) fn start(
    ctx: Arc<Ctx>,
    admitted: Admitted,
    subscribe: Vec<(String, Option<Since>)>,
    transport: Transport,
) -> Arc<Handle> {
    let id = ctx.conns.next_id.fetch_add(1, Ordering::Relaxed);
    let sid = Uuid::new_v4().simple().to_string();
    let (in_tx, in_rx) = mpsc::channel(INBOUND_FRAMES);
    let (out_tx, out_rx) = mpsc::channel(READER_FRAMES);
    let handle = Arc::new(Handle {
        id: sid.clone(),
        transport,
        inbound: in_tx,
        out: tokio::sync::Mutex::new(Some(out_rx)),
        readers: AtomicUsize::new(0),
        last_read: Mutex::new(Instant::now()),
        reader_gone: Notify::new(),
    });
    ctx.sessions.lock().insert(sid.clone(), handle.clone());
    let span = debug_span!("session", conn = id, session = %sid, transport = transport.as_str(), client = ?admitted.client_id);
    tokio::spawn(run(id, ctx, admitted, subscribe, handle.clone(), in_rx, out_tx).instrument(span));
    handle
}

async fn run(
    id: u64,
    ctx: Arc<Ctx>,
    admitted: Admitted,
    subscribe: Vec<(String, Option<Since>)>,
    handle: Arc<Handle>,
    mut inbound: mpsc::Receiver<String>,
    out: mpsc::Sender<Out>,
) {
    let Admitted {
        client_id,
        identity,
        slot,
        hook_headers,
    } = admitted;
    let transport = handle.transport.as_str();
    let live = ctx.conns.live.clone();
    metrics::gauge!("herald_edge_connections").increment(1.0);
    metrics::counter!("herald_edge_connections_total").increment(1);
    metrics::gauge!("herald_edge_http_sessions", "transport" => transport).increment(1.0);
    metrics::counter!("herald_edge_http_sessions_total", "transport" => transport).increment(1);
    let (mut conn, mut rx) = Conn::new(id, ctx.clone(), client_id);
    if let Some(i) = &identity {
        ctx.users.add(&i.sub, id, &conn.outbox);
    }
    conn.identity = identity;
    conn.hook_headers = hook_headers.map(Arc::from);
    conn.subscribe_personal();
    for (channel, since) in subscribe {
        let durable = since == Some(Since::Cursor);
        conn.subscribe(channel, since, durable);
    }
    let write_timeout = ctx.cfg.write_timeout;
    let forward = |item: Outbound| -> Option<Out> {
        match item {
            Outbound::Message(d) => Some(Out {
                text: d.text.clone(),
                message: Some((d.channel.clone(), d.seq)),
            }),
            Outbound::Frame(s) => Some(Out {
                text: Arc::from(s),
                message: None,
            }),
            Outbound::Command(_) => None,
        }
    };
    let frame = |text: String| Out {
        text: Arc::from(text),
        message: None,
    };

    let mut shutdown = ctx.shutdown.subscribe();
    let mut heartbeat = tokio::time::interval(ctx.cfg.heartbeat.min(Duration::from_secs(5)));
    heartbeat.tick().await;
    let overflow = rx.overflow_watch();
    let expiry = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(expiry);
    let mut armed_for: Option<u64> = None;
    let mut stalled = false;
    let mut farewell: Option<String> = None;
    debug!("Session started");
    let close: Option<(u16, Cow<'static, str>)> = loop {
        let exp = conn.identity.as_ref().map(|i| i.exp);
        if exp != armed_for {
            if let Some(i) = &conn.identity {
                expiry.as_mut().reset(expiry_at(i, ctx.auth.leeway()));
            }
            armed_for = exp;
        }
        tokio::select! {
            biased;
            _ = overflow.overflowed() => break Some((codes::CLOSE_SLOW_CONSUMER, "slow consumer: resume with since".into())),
            _ = &mut expiry, if armed_for.is_some() => {
                metrics::counter!("herald_auth_expired_total").increment(1);
                break Some((codes::CLOSE_TOKEN_EXPIRED, "token expired".into()));
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                break Some((codes::CLOSE_GOING_AWAY, "server shutting down".into()));
            }
            _ = handle.reader_gone.notified() => break None,
            item = rx.recv() => {
                let Some(item) = item else { break None };
                if let Outbound::Command(c) = item {
                    match c {
                        ConnCommand::Close { code, reason, reconnect } => {
                            metrics::counter!("herald_edge_disconnected_total").increment(1);
                            if !reconnect {
                                farewell = Some(ServerFrame::Disconnect { code, reason: reason.clone(), reconnect }.to_json());
                            }
                            break Some((code, Cow::Owned(reason)));
                        }
                        ConnCommand::Unsubscribe(channel) => conn.server_unsubscribe(channel),
                    }
                    continue;
                }
                note_delivery(&mut conn.subs, &item);
                let Some(o) = forward(item) else { continue };
                match tokio::time::timeout(write_timeout, out.send(o)).await {
                    Ok(Ok(())) => ctx.frames.outbound.increment(1),
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        stalled = true;
                        break None;
                    }
                }
            }
            f = inbound.recv() => {
                let Some(text) = f else { break None };
                ctx.frames.inbound.increment(1);
                conn.on_text(&text).await;
            }
            _ = heartbeat.tick() => {
                if handle.transport == Transport::Poll && handle.idle_for() > ctx.cfg.idle_timeout {
                    break Some((codes::CLOSE_IDLE_TIMEOUT, "idle timeout: no poll".into()));
                }
            }
        }
    };
    conn.unsubscribe_all();
    for t in conn.reads.drain(..) {
        t.abort();
    }
    ctx.sessions.lock().remove(&handle.id);
    if stalled {
        metrics::counter!("herald_edge_write_stalls_total").increment(1);
        debug!(?write_timeout, "Reader stalled; ending the session");
    } else if let Some((code, reason)) = close {
        if let Some(f) = farewell {
            let _ = out.try_send(frame(f));
        }
        if code == codes::CLOSE_GOING_AWAY {
            let jitter = ctx.cfg.reconnect_jitter.as_millis();
            let after_ms = (Uuid::new_v4().as_u128() % (jitter + 1)) as u64;
            let _ = out.try_send(frame(ServerFrame::Reconnect { after_ms }.to_json()));
            // In-flight publishes get their answer before the end.
            let total = ctx.cfg.max_inflight_publishes as u32;
            let all = conn.publish_permits().acquire_many_owned(total);
            tokio::pin!(all);
            let deadline = tokio::time::sleep(ctx.cfg.shutdown_grace);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut all => break,
                    _ = &mut deadline => break,
                    item = rx.recv() => {
                        let Some(o) = item.and_then(forward) else { continue };
                        if tokio::time::timeout(write_timeout, out.send(o)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            while let Some(item) = rx.try_recv() {
                if let Some(o) = forward(item) {
                    let _ = out.try_send(o);
                }
            }
        }
        debug!(code, %reason, "Session closing");
        let close = serde_json::json!({ "type": "close", "code": code, "reason": reason });
        let _ = out.try_send(frame(close.to_string()));
    }
    if let Some(i) = &conn.identity {
        ctx.users.remove(&i.sub, conn.id);
    }
    drop(conn);
    drop(out);
    metrics::gauge!("herald_edge_http_sessions", "transport" => transport).decrement(1.0);
    metrics::gauge!("herald_edge_connections").decrement(1.0);
    drop(live);
    drop(slot);
    debug!("Session ended");
}

/// Per-channel positions of what a reader has passed on: an SSE event's
/// `id`, which the browser sends back as `Last-Event-ID` when it
/// reconnects.
#[derive(Default)]
pub struct Positions {
    map: BTreeMap<String, Position>,
}

impl Positions {
    /// Starting from the positions a client resumes from.
    pub fn from(map: BTreeMap<String, Position>) -> Positions {
        Positions { map }
    }

    /// Parses positions given back by a client (`Last-Event-ID` or
    /// `since=`): a JSON object from channel to `{seq, epoch}`.
    pub fn parse(text: &str) -> Result<BTreeMap<String, Position>, String> {
        serde_json::from_str(text).map_err(|e| {
            format!("positions must be a JSON object of channel to {{\"seq\", \"epoch\"}}: {e}")
        })
    }

    /// Notes a frame passed on; true when the positions changed.
    pub fn note(&mut self, o: &Out) -> bool {
        if let Some((channel, seq)) = &o.message {
            return match self.map.get_mut(&**channel) {
                Some(p) if *seq > p.seq => {
                    p.seq = *seq;
                    true
                }
                _ => false,
            };
        }
        // `subscribed` and `unsubscribed` are rare; they are read whole.
        if !(o.text.starts_with(r#"{"type":"subscribed""#)
            || o.text.starts_with(r#"{"type":"unsubscribed""#))
        {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct F {
            #[serde(rename = "type")]
            kind: String,
            channel: String,
            #[serde(default)]
            position: Option<Position>,
            #[serde(default)]
            recovered: bool,
        }
        let Ok(f) = serde_json::from_str::<F>(&o.text) else {
            return false;
        };
        match (f.kind.as_str(), f.position) {
            // A recovered subscription continues after the position resumed
            // from (its `position` is the live end, which the replay has not
            // reached yet); otherwise delivery starts at `position`.
            ("subscribed", Some(p)) => {
                if f.recovered && self.map.contains_key(&f.channel) {
                    return false;
                }
                self.map.insert(f.channel, p);
                true
            }
            ("unsubscribed", _) => self.map.remove(&f.channel).is_some(),
            _ => false,
        }
    }

    /// The event id: the positions as JSON.
    pub fn id(&self) -> String {
        serde_json::to_string(&self.map).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(text: &str, message: Option<(&str, i64)>) -> Out {
        Out {
            text: Arc::from(text),
            message: message.map(|(c, s)| (Arc::from(c), s)),
        }
    }

    #[test]
    fn positions_follow_subscriptions_and_messages() {
        let mut p = Positions::default();
        assert!(p.note(&out(
            r#"{"type":"subscribed","channel":"chat:a","position":{"seq":4,"epoch":"e1"},"recovered":false}"#,
            None
        )));
        // Resumed from 2: the live end (9) is not where the stream stands.
        let mut r =
            Positions::from(Positions::parse(r#"{"chat:r":{"seq":2,"epoch":"e1"}}"#).unwrap());
        assert!(!r.note(&out(
            r#"{"type":"subscribed","channel":"chat:r","position":{"seq":9,"epoch":"e1"},"recovered":true}"#,
            None
        )));
        assert_eq!(r.id(), r#"{"chat:r":{"seq":2,"epoch":"e1"}}"#);
        assert!(r.note(&out(
            r#"{"type":"subscribed","channel":"chat:r","position":{"seq":9,"epoch":"e2"},"recovered":false}"#,
            None
        )));
        assert_eq!(r.id(), r#"{"chat:r":{"seq":9,"epoch":"e2"}}"#);
        assert!(p.note(&out(r#"{"type":"message"}"#, Some(("chat:a", 7)))));
        // Not a channel this reader follows; an older seq.
        assert!(!p.note(&out(r#"{"type":"message"}"#, Some(("chat:b", 9)))));
        assert!(!p.note(&out(r#"{"type":"message"}"#, Some(("chat:a", 5)))));
        assert_eq!(p.id(), r#"{"chat:a":{"seq":7,"epoch":"e1"}}"#);
        let back = Positions::parse(&p.id()).expect("parses");
        assert_eq!(back["chat:a"].seq, 7);
        assert!(p.note(&out(r#"{"type":"unsubscribed","channel":"chat:a"}"#, None)));
        assert_eq!(p.id(), "{}");
        assert!(Positions::parse("7").is_err());
        assert!(Positions::parse(r#"{"chat:a":{"seq":"x"}}"#).is_err());
    }
}
