//! A Rust client for herald, used by the integration tests and `loadtest/`.
//!
//! # Layout
//! - [`Frame`]: server frames as the client sees them (`data` as a JSON value,
//!   unknown frame types tolerated).
//! - [`Connection`]: one WebSocket connection with typed requests:
//!   [`Connection::subscribe`], [`Connection::publish`], [`Connection::next_frame`].
//! - [`resilient`]: a [`resilient::Publisher`] that retries with the same id
//!   across reconnects and nodes, and a [`resilient::Subscriber`] that
//!   reconnects and resumes, so an application sees every message once.
//! - [`ChannelCursor`]: the client side of "exactly once to the application":
//!   remembers the last `seq` and epoch per channel and drops anything at or
//!   below it, and gives the `since` position for a resume.
//!
//! # Invariants
//! - Frames that arrive while a request waits for its reply are kept, in
//!   order, and returned by later [`Connection::next_frame`] calls.
//! - [`Connection::publish`] uses the caller's message id; retrying with the
//!   same id is safe because the server deduplicates it.

mod frames;
pub mod resilient;

use frames::Request;
pub use frames::{
    Ephemeral, Frame, HistoryPage, HistoryQuery, Member, Msg, Published, Replayed, Start,
};

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub use herald_proto::{Position, Tags};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("connection closed (code {0:?})")]
    Closed(Option<u16>),
    #[error("server sent a frame the client cannot read: {0}")]
    BadFrame(String),
    #[error("server error {code}: {reason}")]
    Server { code: String, reason: String },
}

/// The `error` frame that answers the request `id`, as an error.
fn error_for(f: &Frame, id: &str) -> Option<ClientError> {
    match f {
        Frame::Error {
            code,
            reason,
            id: Some(i),
            ..
        } if i == id => Some(ClientError::Server {
            code: code.clone(),
            reason: reason.clone(),
        }),
        _ => None,
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One connection to a herald edge.
pub struct Connection {
    ws: Ws,
    /// The rest of the last `batch` frame read.
    unpacked: VecDeque<Frame>,
    /// Frames read while waiting for a specific reply.
    pending: VecDeque<Frame>,
    /// How long a request waits for its reply.
    pub timeout: Duration,
    closed: Option<Option<u16>>,
}

/// `url` with `batch=true` in its query, unless it has a `batch=` already.
fn with_batches(url: &str) -> String {
    let (base, fragment) = url
        .split_once('#')
        .map_or((url, None), |(b, f)| (b, Some(f)));
    let query = base.split_once('?').map(|(_, q)| q).unwrap_or("");
    if query.split('&').any(|kv| kv.starts_with("batch=")) {
        return url.to_owned();
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut out = format!("{base}{sep}batch=true");
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

impl Connection {
    /// Connects to `url`, e.g. `ws://127.0.0.1:8080/ws`. Unless the URL
    /// says `batch=`, the connection asks for `batch` frames (several
    /// messages in one WebSocket frame), unpacked here.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with_headers(url, &[]).await
    }

    /// Connects with extra headers on the upgrade request (a cookie, say).
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let url = with_batches(url);
        let mut req = url.as_str().into_client_request()?;
        for (k, v) in headers {
            let (Ok(k), Ok(v)) = (HeaderName::try_from(*k), HeaderValue::try_from(*v)) else {
                return Err(ClientError::BadFrame(format!("bad header {k}")));
            };
            req.headers_mut().insert(k, v);
        }
        let (ws, _resp) = tokio_tungstenite::connect_async(req).await?;
        Ok(Connection {
            ws,
            unpacked: VecDeque::new(),
            pending: VecDeque::new(),
            timeout: Duration::from_secs(30),
            closed: None,
        })
    }

    /// Sends a raw text frame (tests use this for malformed input).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.ws.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// Sends a raw WebSocket message.
    pub async fn send_message(&mut self, m: Message) -> Result<(), ClientError> {
        self.ws.send(m).await?;
        Ok(())
    }

    async fn send(&mut self, r: &Request<'_>) -> Result<(), ClientError> {
        let text = serde_json::to_string(r).map_err(|e| ClientError::BadFrame(e.to_string()))?;
        self.send_text(text).await
    }

    /// Reads the next frame from the socket (not from `pending`), the
    /// frames of a batch one by one.
    async fn read(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = self.unpacked.pop_front() {
                return Ok(f);
            }
            match self.read_one().await? {
                Frame::Batch { frames } => self.unpacked.extend(frames),
                f => return Ok(f),
            }
        }
    }

    async fn read_one(&mut self) -> Result<Frame, ClientError> {
        if let Some(code) = self.closed {
            return Err(ClientError::Closed(code));
        }
        loop {
            match self.ws.next().await {
                None => {
                    self.closed = Some(None);
                    return Err(ClientError::Closed(None));
                }
                Some(Err(e)) => {
                    self.closed = Some(None);
                    return Err(e.into());
                }
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| ClientError::BadFrame(format!("{e}: {}", t.as_str())));
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.map(|c| u16::from(c.code));
                    self.closed = Some(code);
                    return Err(ClientError::Closed(code));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame, waiting at most `wait`.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Result<Frame, ClientError> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        match tokio::time::timeout(wait, self.read()).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout("a frame")),
        }
    }

    /// The next frame, waiting at most [`Connection::timeout`].
    pub async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        self.next_frame_within(self.timeout).await
    }

    /// Reads until `pick` accepts a frame, keeping the others for later.
    async fn wait_for<T>(
        &mut self,
        what: &'static str,
        pick: impl FnMut(&Frame) -> Option<T>,
    ) -> Result<T, ClientError> {
        self.wait_for_at(what, pick).await.map(|(t, _)| t)
    }

    /// [`Connection::wait_for`], also returning how many of the frames kept
    /// in `pending` arrived before the accepted one.
    async fn wait_for_at<T>(
        &mut self,
        what: &'static str,
        mut pick: impl FnMut(&Frame) -> Option<T>,
    ) -> Result<(T, usize), ClientError> {
        // A reply may already be waiting in `pending`.
        if let Some(i) = self.pending.iter().position(|f| pick(f).is_some()) {
            let f = self.pending.remove(i).ok_or(ClientError::Timeout(what))?;
            return pick(&f).map(|t| (t, i)).ok_or(ClientError::Timeout(what));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let f = match tokio::time::timeout_at(deadline, self.read()).await {
                Ok(r) => r?,
                Err(_) => return Err(ClientError::Timeout(what)),
            };
            if let Some(t) = pick(&f) {
                return Ok((t, self.pending.len()));
            }
            self.pending.push_back(f);
        }
    }

    /// Subscribes and waits for the `subscribed` reply (messages delivered
    /// after it are kept for [`Connection::next_frame`]). A resume that
    /// replaces the server's subscription to a personal channel drops that
    /// channel's messages read before its reply: the resume delivers them
    /// again, in order after `since`.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<&Position>,
    ) -> Result<(Position, bool), ClientError> {
        let start = since.map(Start::After).unwrap_or(Start::Live);
        self.subscribe_from(channel, start, false).await
    }

    /// Subscribes from `start`; `durable` stores this subscription's acks as
    /// the server-side cursor (the connection needs a `client_id`).
    pub async fn subscribe_from(
        &mut self,
        channel: &str,
        start: Start<'_>,
        durable: bool,
    ) -> Result<(Position, bool), ClientError> {
        self.subscribe_filtered(channel, start, durable, None).await
    }

    /// [`Connection::subscribe_from`] with a `filter` over the messages'
    /// tags (its JSON form, docs/protocol.md "Tags and filters"): only the
    /// messages that pass it are delivered.
    pub async fn subscribe_filtered(
        &mut self,
        channel: &str,
        start: Start<'_>,
        durable: bool,
        filter: Option<&Value>,
    ) -> Result<(Position, bool), ClientError> {
        let resume = !matches!(start, Start::Live);
        let since = match start {
            Start::Live | Start::Rewind(_) => None,
            Start::After(p) => Some(serde_json::json!({ "seq": p.seq, "epoch": p.epoch })),
            Start::Cursor => Some(Value::from("cursor")),
        };
        let rewind = match start {
            Start::Rewind(n) => Some(n),
            _ => None,
        };
        self.send(&Request::Subscribe {
            channel,
            since,
            durable,
            rewind,
            filter,
        })
        .await?;
        let (reply, before) = self
            .wait_for_at("subscribed", |f| match f {
                Frame::Subscribed {
                    channel: c,
                    position,
                    recovered,
                    auto: false,
                } if c == channel => Some(Ok((position.clone(), *recovered))),
                Frame::Error {
                    code,
                    reason,
                    channel: Some(c),
                    ..
                } if c == channel => Some(Err(ClientError::Server {
                    code: code.clone(),
                    reason: reason.clone(),
                })),
                _ => None,
            })
            .await?;
        if resume && reply.is_ok() {
            let mut i = 0;
            self.pending.retain(|f| {
                i += 1;
                i > before || !matches!(f, Frame::Message(m) if m.channel == channel)
            });
        }
        reply
    }

    /// Asks for a page of `channel`'s history and waits for it.
    pub async fn history(
        &mut self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, ClientError> {
        let id = Uuid::new_v4().to_string();
        self.send(&Request::History {
            id: &id,
            channel,
            query,
        })
        .await?;
        self.wait_for("history", |f| match f {
            Frame::History { id: Some(i), page } if *i == id => Some(Ok(page.clone())),
            f => error_for(f, &id).map(Err),
        })
        .await?
    }

    /// The members of `channel` (needs the `presence` capability).
    pub async fn presence(&mut self, channel: &str) -> Result<Vec<Member>, ClientError> {
        let id = Uuid::new_v4().to_string();
        self.send(&Request::Presence { id: &id, channel }).await?;
        self.wait_for("presence", |f| match f {
            Frame::Presence {
                id: Some(i),
                members,
                ..
            } if *i == id => Some(Ok(members.clone())),
            f => error_for(f, &id).map(Err),
        })
        .await?
    }

    /// (connections, distinct users) on `channel`.
    pub async fn presence_stats(&mut self, channel: &str) -> Result<(usize, usize), ClientError> {
        let id = Uuid::new_v4().to_string();
        self.send(&Request::PresenceStats { id: &id, channel })
            .await?;
        self.wait_for("presence_stats", |f| match f {
            Frame::PresenceStats {
                id: Some(i),
                clients,
                users,
                ..
            } if *i == id => Some(Ok((*clients, *users))),
            f => error_for(f, &id).map(Err),
        })
        .await?
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        self.send(&Request::Unsubscribe { channel }).await?;
        self.wait_for("unsubscribed", |f| match f {
            Frame::Unsubscribed { channel: c } if c == channel => Some(()),
            _ => None,
        })
        .await
    }

    /// Sends a publish without waiting for its answer.
    pub async fn send_publish(
        &mut self,
        channel: &str,
        id: Uuid,
        data: &Value,
    ) -> Result<(), ClientError> {
        self.send_publish_as(channel, id, data, false, None, false)
            .await
    }

    /// Sends a publish carrying `tags` without waiting for its answer.
    pub async fn send_publish_tagged(
        &mut self,
        channel: &str,
        id: Uuid,
        data: &Value,
        tags: &Tags,
    ) -> Result<(), ClientError> {
        self.send_publish_as(channel, id, data, false, Some(tags), false)
            .await
    }

    /// Re-sends a publish whose answer was lost: the server looks for `id`
    /// in the channel's recent log before appending.
    pub async fn send_publish_retry(
        &mut self,
        channel: &str,
        id: Uuid,
        data: &Value,
    ) -> Result<(), ClientError> {
        self.send_publish_as(channel, id, data, true, None, false)
            .await
    }

    async fn send_publish_as(
        &mut self,
        channel: &str,
        id: Uuid,
        data: &Value,
        retry: bool,
        tags: Option<&Tags>,
        ephemeral: bool,
    ) -> Result<(), ClientError> {
        self.send(&Request::Publish {
            channel,
            id,
            data,
            retry,
            tags,
            ephemeral,
        })
        .await
    }

    /// Sends an ephemeral message (docs/protocol.md, "Ephemeral
    /// messages"): fanned out, not kept; answered only with a
    /// `publish_nack` when refused.
    pub async fn send_ephemeral(
        &mut self,
        channel: &str,
        id: Uuid,
        data: &Value,
        tags: Option<&Tags>,
    ) -> Result<(), ClientError> {
        self.send_publish_as(channel, id, data, false, tags, true)
            .await
    }

    /// Waits for the answer to the publish with `id`.
    pub async fn publish_result(&mut self, id: Uuid) -> Result<Published, ClientError> {
        self.wait_for("publish_ack", |f| match f {
            Frame::PublishAck {
                id: i,
                seq,
                duplicate,
                ..
            } if *i == id => Some(Published::Ack {
                seq: *seq,
                duplicate: *duplicate,
            }),
            Frame::PublishNack {
                id: i,
                code,
                reason,
                ..
            } if *i == id => Some(Published::Nack {
                code: code.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        })
        .await
    }

    /// Publishes and waits for the ack or nack.
    pub async fn publish(
        &mut self,
        channel: &str,
        id: Uuid,
        data: &Value,
    ) -> Result<Published, ClientError> {
        self.send_publish(channel, id, data).await?;
        self.publish_result(id).await
    }

    /// Acknowledges everything up to `seq` on `channel` (no reply).
    pub async fn ack(&mut self, channel: &str, seq: i64) -> Result<(), ClientError> {
        self.send(&Request::Ack { channel, seq }).await
    }

    /// Authenticates the connection with its first frame (keeps the token
    /// out of URLs); returns `(sub, expires_at)`.
    pub async fn auth(&mut self, token: &str) -> Result<(String, u64), ClientError> {
        self.send(&Request::Auth { token }).await?;
        self.wait_authenticated().await
    }

    /// Replaces the connection's token before it expires (same `sub`).
    pub async fn refresh(&mut self, token: &str) -> Result<(String, u64), ClientError> {
        self.send(&Request::Refresh { token }).await?;
        self.wait_authenticated().await
    }

    async fn wait_authenticated(&mut self) -> Result<(String, u64), ClientError> {
        self.wait_for("authenticated", |f| match f {
            Frame::Authenticated { sub, expires_at } => Some(Ok((sub.clone(), *expires_at))),
            Frame::Error {
                code,
                reason,
                channel: None,
                id: None,
            } if code == "bad_token" || code == "bad_frame" => Some(Err(ClientError::Server {
                code: code.clone(),
                reason: reason.clone(),
            })),
            _ => None,
        })
        .await?
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send(&Request::Ping).await?;
        self.wait_for("pong", |f| matches!(f, Frame::Pong).then_some(()))
            .await
    }

    /// Closes the connection politely.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }

    /// Drops the connection with a TCP reset (SO_LINGER 0), no close
    /// handshake: how a crashed client or a cut network looks to the server.
    pub fn abort(self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            let _ = tcp.set_zero_linger();
        }
        drop(self);
    }

    /// The close code the server sent, once the connection ended.
    pub fn close_code(&self) -> Option<u16> {
        self.closed.flatten()
    }
}

/// Normal closure, for callers comparing close codes.
pub const CLOSE_NORMAL: u16 = 1000;

/// Per-channel positions on the client: the application sees each `seq` once.
#[derive(Default, Debug, Clone)]
pub struct ChannelCursor {
    last: HashMap<String, Position>,
}

impl ChannelCursor {
    /// Records a `subscribed` reply that did not recover: where live
    /// delivery starts when nothing was seen yet, or in a new epoch. A
    /// recovered reply changes nothing: its catch-up (at or below
    /// `position`) follows, even when nothing was seen yet (a resume from
    /// the server-side cursor).
    pub fn on_subscribed(&mut self, channel: &str, position: &Position, recovered: bool) {
        let replace = !recovered
            && self
                .last
                .get(channel)
                .is_none_or(|p| p.epoch != position.epoch);
        if replace {
            self.last.insert(channel.to_owned(), position.clone());
        }
    }

    /// True when `m` is new to the application (and records it); false for a
    /// duplicate (`seq` at or below the last one seen in the same epoch).
    pub fn accept(&mut self, m: &Msg) -> bool {
        match self.last.get_mut(&m.channel) {
            Some(p) if p.epoch == m.epoch && m.seq <= p.seq => false,
            Some(p) => {
                p.seq = m.seq;
                p.epoch = m.epoch.clone();
                true
            }
            None => {
                self.last.insert(
                    m.channel.clone(),
                    Position {
                        seq: m.seq,
                        epoch: m.epoch.clone(),
                    },
                );
                true
            }
        }
    }

    /// The `since` to resume `channel` with.
    pub fn since(&self, channel: &str) -> Option<&Position> {
        self.last.get(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_asks_for_batches_unless_told() {
        assert_eq!(with_batches("ws://h/ws"), "ws://h/ws?batch=true");
        assert_eq!(with_batches("ws://h/ws?a=1"), "ws://h/ws?a=1&batch=true");
        assert_eq!(
            with_batches("ws://h/ws?batch=false"),
            "ws://h/ws?batch=false"
        );
        assert_eq!(
            with_batches("ws://h/ws?a=1#x"),
            "ws://h/ws?a=1&batch=true#x"
        );
    }

    fn msg(seq: i64, epoch: &str) -> Msg {
        Msg {
            channel: "chat:a".into(),
            seq,
            epoch: epoch.into(),
            id: Uuid::new_v4(),
            ts: 0,
            data: Value::Null,
            replayed: None,
            tags: None,
        }
    }

    #[test]
    fn cursor_drops_duplicates_and_tracks_since() {
        let mut c = ChannelCursor::default();
        c.on_subscribed(
            "chat:a",
            &Position {
                seq: 4,
                epoch: "e".into(),
            },
            false,
        );
        assert!(!c.accept(&msg(3, "e")));
        assert!(!c.accept(&msg(4, "e")));
        assert!(c.accept(&msg(5, "e")));
        assert!(!c.accept(&msg(5, "e")));
        assert!(c.accept(&msg(9, "e")));
        assert_eq!(c.since("chat:a").unwrap().seq, 9);
        // A new epoch starts over.
        c.on_subscribed(
            "chat:a",
            &Position {
                seq: 0,
                epoch: "f".into(),
            },
            false,
        );
        assert_eq!(c.since("chat:a").unwrap().epoch, "f");
    }

    #[test]
    fn a_recovered_reply_keeps_the_catch_up() {
        // A resume from the server-side cursor: nothing seen here, the reply
        // says where live starts, and the catch-up below it follows.
        let mut c = ChannelCursor::default();
        let head = Position {
            seq: 9,
            epoch: "e".into(),
        };
        c.on_subscribed("chat:a", &head, true);
        assert!(c.since("chat:a").is_none());
        for seq in [7, 8, 9] {
            assert!(c.accept(&msg(seq, "e")));
        }
        assert!(!c.accept(&msg(8, "e")));
        assert_eq!(c.since("chat:a"), Some(&head));
    }

    #[test]
    fn reads_server_frames() {
        let f: Frame = serde_json::from_str(
            r#"{"type":"message","channel":"chat:a","seq":1,"epoch":"e","id":"6f1d6a55-0d6a-4b5e-9f57-2b8d7c1f0a11","ts":5,"data":{"x":1}}"#,
        )
        .unwrap();
        assert!(matches!(f, Frame::Message(Msg { seq: 1, .. })));
        let f: Frame = serde_json::from_str(r#"{"type":"future_thing","x":1}"#).unwrap();
        assert_eq!(f, Frame::Unknown);
    }
}
