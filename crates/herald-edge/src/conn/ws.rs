//! The WebSocket transport: JSON text frames over one socket (RFC 6455).
//! It only moves frames; [`super::core::drive`] runs the connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald_hub::Outbound;
use herald_proto::codes;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, debug_span, Instrument};

use super::core::{drive, Beat, Close, Incoming, Sink, Source, Start};
use super::Conn;
use crate::admission::Admitted;
use crate::ctx::Ctx;

/// The socket of one connection.
pub type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An accepted upgrade request, everything its connection starts from.
pub(crate) struct Accepted {
    pub on_upgrade: hyper::upgrade::OnUpgrade,
    pub config: WebSocketConfig,
    pub ctx: Arc<Ctx>,
    pub remote: Option<SocketAddr>,
    /// Who it is, its place under the limits, the headers hooks forward.
    pub admitted: Admitted,
    /// The client asked for `batch` frames (`?batch=true`).
    pub batch: bool,
}

/// Runs one connection to its end: the task spawned per connection.
///
/// The request comes boxed and is unpacked once, the WebSocket is built
/// and split in place ([`drive`] says why).
pub(crate) async fn run(accepted: Box<Accepted>) {
    let id = accepted.ctx.conns.next_id.fetch_add(1, Ordering::Relaxed);
    // A debug span: at the default level it is off and costs nothing; an
    // enabled span keeps its formatted fields per connection (~250 bytes).
    let span = debug_span!("conn", conn = id, remote = ?accepted.remote, client = ?accepted.admitted.client_id);
    serve(id, accepted).instrument(span).await;
}

async fn serve(id: u64, accepted: Box<Accepted>) {
    let Accepted {
        on_upgrade,
        config,
        ctx,
        remote: _,
        admitted,
        batch,
    } = *accepted;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            debug!(%e, "WebSocket upgrade failed");
            return;
        }
    };
    let (sink, stream) =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
            .await
            .split();
    let idle_timeout = ctx.cfg.idle_timeout;
    let ((conn, rx), slot) = Conn::admitted(id, ctx, admitted);
    drive(Box::new(Start {
        conn,
        rx,
        source: WsSource(stream),
        sink: WsSink {
            sink,
            idle_timeout,
            batch: batch.then(Batch::default),
        },
        slot,
    }))
    .await;
}

struct WsSource(SplitStream<WebSocket>);

impl Source for WsSource {
    type Text = Utf8Bytes;

    async fn next(&mut self) -> Incoming<Utf8Bytes> {
        match self.0.next().await {
            None => Incoming::End(None),
            Some(Err(e)) => {
                // Protocol violations end the connection with the matching
                // close code (RFC 6455 section 7.4.1).
                use tokio_tungstenite::tungstenite::Error as WsError;
                debug!(%e, "WebSocket error");
                let close = match &e {
                    WsError::Capacity(_) => Some((codes::CLOSE_TOO_BIG, "message too big")),
                    WsError::Utf8(_) => {
                        Some((codes::CLOSE_INVALID_DATA, "invalid UTF-8 in a text message"))
                    }
                    WsError::Protocol(_) => {
                        Some((codes::CLOSE_PROTOCOL_ERROR, "WebSocket protocol error"))
                    }
                    _ => None,
                };
                Incoming::End(close.map(|(c, r)| (c, r.into())))
            }
            Some(Ok(Message::Text(t))) => Incoming::Text(t),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            Some(Ok(Message::Close(_))) => Incoming::End(None),
            // Pings are answered by the WebSocket layer; pongs only count
            // as liveness.
            Some(Ok(_)) => Incoming::Alive,
        }
    }
}

struct WsSink {
    sink: SplitSink<WebSocket, Message>,
    idle_timeout: Duration,
    /// For a client that reads `batch` frames: the messages of the write
    /// batch under way.
    batch: Option<Batch>,
}

/// The messages and events of one write batch, sent as one `batch` frame
/// (`{"type":"batch","frames":[...]}`) when there are several, as they are
/// when there is one. Replies are not batched: they end the batch before
/// them, so the order on the wire is the order they were taken in.
#[derive(Default)]
struct Batch {
    first: Option<Utf8Bytes>,
    frames: String,
    n: usize,
}

/// A batch frame is sent once it holds this many bytes.
const BATCH_MAX_BYTES: usize = 256 * 1024;

impl Batch {
    /// Adds a frame; true when the batch is full (send it now).
    fn add(&mut self, text: Utf8Bytes) -> bool {
        match self.n {
            0 => self.first = Some(text),
            _ => {
                if let Some(first) = self.first.take() {
                    self.frames.reserve(first.len() + text.len() + 32);
                    self.frames.push_str(r#"{"type":"batch","frames":["#);
                    self.frames.push_str(&first);
                }
                self.frames.push(',');
                self.frames.push_str(&text);
            }
        }
        self.n += 1;
        self.frames.len() >= BATCH_MAX_BYTES
    }

    /// The frame to send for what was added, if anything; empties it.
    fn take(&mut self) -> Option<Utf8Bytes> {
        let n = std::mem::take(&mut self.n);
        if n == 1 {
            return self.first.take();
        }
        if n == 0 {
            return None;
        }
        let mut frames = std::mem::take(&mut self.frames);
        frames.push_str("]}");
        metrics::counter!("herald_edge_batch_frames_total").increment(1);
        metrics::counter!("herald_edge_batched_messages_total").increment(n as u64);
        Some(Utf8Bytes::from(frames))
    }
}

impl WsSink {
    /// Sends the batch under way, if any.
    async fn send_batch(&mut self) -> bool {
        match self.batch.as_mut().and_then(Batch::take) {
            Some(text) => self.sink.feed(Message::Text(text)).await.is_ok(),
            None => true,
        }
    }
}

impl Sink for WsSink {
    async fn feed(&mut self, item: Outbound) -> bool {
        let text = match item {
            Outbound::Message(d) => shared(&d.text),
            Outbound::Event(e) => shared(&e.text),
            Outbound::Frame(s) => {
                // A reply ends the batch before it.
                if !self.send_batch().await {
                    return false;
                }
                return self
                    .sink
                    .feed(Message::Text(Utf8Bytes::from(s)))
                    .await
                    .is_ok();
            }
            Outbound::Command(_) => return true,
        };
        match &mut self.batch {
            Some(b) => !b.add(text) || self.send_batch().await,
            None => self.sink.feed(Message::Text(text)).await.is_ok(),
        }
    }

    async fn flush(&mut self) -> bool {
        self.send_batch().await && self.sink.flush().await.is_ok()
    }

    async fn beat(&mut self, quiet: Duration) -> Beat {
        if quiet > self.idle_timeout {
            return Beat::Close((codes::CLOSE_IDLE_TIMEOUT, "idle timeout".into()));
        }
        match self.sink.send(Message::Ping(Default::default())).await {
            Ok(()) => Beat::Alive,
            Err(_) => Beat::Gone,
        }
    }

    async fn finish(&mut self, close: Option<&Close>) {
        if let Some((code, reason)) = close {
            let _ = self
                .sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(*code),
                    reason: reason.to_string().into(),
                })))
                .await;
        }
        let _ = self.sink.close().await;
    }
}

/// A shared frame as tungstenite's text: the buffer itself, not a copy per
/// subscriber.
fn shared(text: &herald_hub::Text) -> Utf8Bytes {
    // SAFETY: a `Text` is valid UTF-8 by construction.
    unsafe { Utf8Bytes::from_bytes_unchecked(text.bytes()) }
}
