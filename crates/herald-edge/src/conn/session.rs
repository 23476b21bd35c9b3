//! The HTTP transport: herald's connection over plain HTTP, for networks
//! that block WebSocket. A session is the same [`Conn`], run by the same
//! lifecycle ([`super::core::drive`]) as a WebSocket, with every bound that
//! lives there (queue bytes, write deadline, frame budget, expiry, drain);
//! only the way frames move differs:
//!
//! - frames from the client arrive as `POST /session/{id}` requests, one
//!   frame per request, and are handled in order;
//! - frames to the client are taken by a reader: a Server-Sent Events
//!   stream (`GET /sse`, the session lives as long as the stream) or
//!   long-polls (`GET /poll`, the session lives while polls keep coming,
//!   ending `idle_timeout` after the last one).
//!
//! Between the session and its reader sits a pipe bounded in frames
//! ([`READER_FRAMES`]) and bytes ([`READER_BYTES`]): a reader that takes
//! nothing for `write_timeout` (nobody polling, a stalled stream) ends the
//! session like a stalled WebSocket, and what the session held is freed.
//! The session's end is announced to the reader with a `close` frame
//! carrying the WebSocket close code herald would have used.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_hub::{Outbound, Text};
use herald_proto::{codes, Filter, Position, Since};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug_span, Instrument};
use uuid::Uuid;

use super::core::{drive, Beat, Close, Incoming, Sink, Source, Start};
use super::Conn;
use crate::admission::Admitted;
use crate::ctx::Ctx;

/// Frames queued between a session and its reader.
pub const READER_FRAMES: usize = 256;

/// Bytes queued between a session and its reader (a larger frame passes
/// alone); the rest waits in the session's outbound queue, under
/// `queue_bytes`.
pub const READER_BYTES: usize = 512 * 1024;

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
    pub text: Text,
    pub message: Option<(Arc<str>, i64)>,
    /// Its bytes' place in the pipe, given back when the reader drops it.
    _held: Option<OwnedSemaphorePermit>,
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
/// (channel and where to resume; each with `filter`), and registers it.
pub(crate) fn start(
    ctx: Arc<Ctx>,
    admitted: Admitted,
    subscribe: Vec<(String, Option<Since>)>,
    filter: Option<Filter>,
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
    let ((mut conn, rx), slot) = Conn::admitted(id, ctx.clone(), admitted);
    for (channel, since) in subscribe {
        let durable = since == Some(Since::Cursor);
        conn.subscribe(channel, since, durable, filter.clone());
    }
    let kind = transport.as_str();
    metrics::gauge!("herald_edge_http_sessions", "transport" => kind).increment(1.0);
    metrics::counter!("herald_edge_http_sessions_total", "transport" => kind).increment(1);
    let source = HttpSource {
        inbound: in_rx,
        handle: handle.clone(),
    };
    let sink = HttpSink {
        out: out_tx,
        bytes: Arc::new(Semaphore::new(READER_BYTES)),
        handle: handle.clone(),
        ctx,
    };
    tokio::spawn(
        drive(Box::new(Start {
            conn,
            rx,
            source,
            sink,
            slot,
        }))
        .instrument(span),
    );
    handle
}

/// Frames `POST`ed to the session; ends when its SSE stream does.
struct HttpSource {
    inbound: mpsc::Receiver<String>,
    handle: Arc<Handle>,
}

impl Source for HttpSource {
    type Text = String;

    async fn next(&mut self) -> Incoming<String> {
        tokio::select! {
            f = self.inbound.recv() => match f {
                Some(text) => Incoming::Text(text),
                None => Incoming::End(None),
            },
            _ = self.handle.reader_gone.notified() => Incoming::End(None),
        }
    }
}

/// The pipe to the session's reader.
struct HttpSink {
    out: mpsc::Sender<Out>,
    /// The pipe's byte bound ([`READER_BYTES`]).
    bytes: Arc<Semaphore>,
    handle: Arc<Handle>,
    ctx: Arc<Ctx>,
}

impl HttpSink {
    async fn put(&mut self, text: Text, message: Option<(Arc<str>, i64)>) -> bool {
        let n = text.len().clamp(1, READER_BYTES) as u32;
        let Ok(held) = self.bytes.clone().acquire_many_owned(n).await else {
            return false;
        };
        let out = Out {
            text,
            message,
            _held: Some(held),
        };
        self.out.send(out).await.is_ok()
    }
}

impl Sink for HttpSink {
    async fn feed(&mut self, item: Outbound) -> bool {
        let (text, message) = match item {
            Outbound::Message(d) => (d.text.clone(), Some((d.channel.clone(), d.seq))),
            Outbound::Event(e) => (e.text.clone(), None),
            Outbound::Frame(s) => (Text::from(s), None),
            Outbound::Command(_) => return true,
        };
        self.put(text, message).await
    }

    async fn flush(&mut self) -> bool {
        true
    }

    async fn beat(&mut self, _quiet: Duration) -> Beat {
        // An SSE stream's keep-alive is written by its reader; a
        // long-polling client shows it is alive by polling.
        if self.handle.transport == Transport::Poll
            && self.handle.idle_for() > self.ctx.cfg.idle_timeout
        {
            return Beat::Close((codes::CLOSE_IDLE_TIMEOUT, "idle timeout: no poll".into()));
        }
        Beat::Alive
    }

    async fn finish(&mut self, close: Option<&Close>) {
        if let Some((code, reason)) = close {
            let frame = serde_json::json!({ "type": "close", "code": code, "reason": reason });
            self.put(Text::from(frame.to_string()), None).await;
        }
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.ctx.sessions.lock().remove(&self.handle.id);
        let kind = self.handle.transport.as_str();
        metrics::gauge!("herald_edge_http_sessions", "transport" => kind).decrement(1.0);
    }
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
            text: Text::from(text),
            message: message.map(|(c, s)| (Arc::from(c), s)),
            _held: None,
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
