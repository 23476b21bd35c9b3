//! One lifecycle, three transports: the same scenarios (the frame budget,
//! token expiry, drain on shutdown) run over WebSocket, Server-Sent Events
//! and long-polling, in process on the in-memory log. Each transport only
//! moves frames; what they do to a connection must be the same.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `GET path`; `None` when the node does not answer (it stopped listening).
async fn try_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    ))
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ws,
    Sse,
    Poll,
}

const KINDS: [Kind; 3] = [Kind::Ws, Kind::Sse, Kind::Poll];

/// A client over one transport. Every server frame comes out of
/// [`Conn::next_within`] as JSON; the end of the connection as
/// `{"type": "close", "code": N}` whatever the transport.
enum Conn {
    Ws(Client),
    Sse {
        addr: std::net::SocketAddr,
        session: String,
        sock: TcpStream,
        text: String,
    },
    Poll {
        addr: std::net::SocketAddr,
        session: String,
        queued: VecDeque<Value>,
        closed: bool,
    },
}

impl Conn {
    async fn open(node: &Node, kind: Kind, query: &str) -> Conn {
        match kind {
            Kind::Ws => {
                // The fallbacks subscribe to `channel=`; a WebSocket asks.
                let mut c = node.connect_with(&format!("?{query}")).await;
                for (k, v) in form_urlencoded_pairs(query) {
                    if k == "channel" {
                        c.send(json!({"type": "subscribe", "channel": v})).await;
                    }
                }
                Conn::Ws(c)
            }
            Kind::Sse => {
                let mut sock = TcpStream::connect(node.addr).await.expect("connect");
                let req = format!("GET /sse?{query} HTTP/1.1\r\nhost: x\r\n\r\n");
                sock.write_all(req.as_bytes()).await.expect("write");
                let mut c = Conn::Sse {
                    addr: node.addr,
                    session: String::new(),
                    sock,
                    text: String::new(),
                };
                let hello = c.next_within(Duration::from_secs(5)).await.expect("hello");
                assert_eq!(hello["type"], "session", "{hello}");
                if let Conn::Sse { session, .. } = &mut c {
                    *session = hello["id"].as_str().expect("id").to_owned();
                }
                c
            }
            Kind::Poll => {
                let (status, body) = http_get(node.addr, &format!("/poll?{query}"), "").await;
                assert_eq!(status, 200, "{body}");
                let v: Value = serde_json::from_str(&body).expect("json");
                Conn::Poll {
                    addr: node.addr,
                    session: v["session"].as_str().expect("session").to_owned(),
                    queued: v["frames"].as_array().cloned().unwrap_or_default().into(),
                    closed: v["closed"] == true,
                }
            }
        }
    }

    async fn send(&mut self, frame: Value) {
        let (addr, session) = match self {
            Conn::Ws(c) => return c.send(frame).await,
            Conn::Sse { addr, session, .. } | Conn::Poll { addr, session, .. } => {
                (*addr, session.clone())
            }
        };
        let body = frame.to_string();
        let req = format!(
            "POST /session/{session} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 202"), "{out}");
    }

    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        match self {
            Conn::Ws(c) => {
                use futures_util::StreamExt;
                use tokio_tungstenite::tungstenite::Message;
                loop {
                    let msg = tokio::time::timeout_at(deadline, c.ws.next())
                        .await
                        .ok()??;
                    match msg {
                        Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                        Ok(Message::Close(f)) => {
                            let code = f.map(|f| u16::from(f.code));
                            return Some(json!({"type": "close", "code": code}));
                        }
                        Err(_) => return None,
                        Ok(_) => continue,
                    }
                }
            }
            Conn::Sse { sock, text, .. } => loop {
                // Events are `data:{json}` lines ending with a blank line;
                // chunk sizes of the HTTP body sit between them.
                if let Some(end) = text.find("\n\n") {
                    let event: String = text.drain(..end + 2).collect();
                    if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                        return serde_json::from_str(data.trim()).ok();
                    }
                    continue;
                }
                let mut buf = [0u8; 8192];
                let n = tokio::time::timeout_at(deadline, sock.read(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    return None;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            },
            Conn::Poll {
                addr,
                session,
                queued,
                closed,
            } => loop {
                if let Some(f) = queued.pop_front() {
                    return Some(f);
                }
                if *closed || tokio::time::Instant::now() >= deadline {
                    return None;
                }
                let left = deadline - tokio::time::Instant::now();
                let path = format!("/poll?session={session}&wait_ms={}", left.as_millis());
                // A node that stopped listening ends the session for its poller.
                let Some((status, body)) = try_get(*addr, &path).await else {
                    *closed = true;
                    continue;
                };
                if status == 404 {
                    *closed = true;
                    continue;
                }
                let v: Value = serde_json::from_str(&body).expect("json");
                queued.extend(v["frames"].as_array().cloned().unwrap_or_default());
                *closed = v["closed"] == true;
            },
        }
    }

    /// Frames until the connection's close, which is returned.
    async fn until_close(&mut self, wait: Duration) -> (Vec<Value>, Option<Value>) {
        let mut seen = Vec::new();
        while let Some(f) = self.next_within(wait).await {
            if f["type"] == "close" {
                return (seen, Some(f));
            }
            seen.push(f);
        }
        (seen, None)
    }
}

/// Every frame counts against the budget, on every transport: past it,
/// frames are answered `rate_limited` and not handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_budget_holds_on_every_transport() {
    let (mut edge, log) = config();
    edge.limits.frame_rate = 1;
    edge.limits.frame_burst = 5;
    let node = Node::start_with(edge, log).await;
    for kind in KINDS {
        let mut c = Conn::open(&node, kind, "channel=chat:budget").await;
        for _ in 0..12 {
            c.send(json!({"type": "ping"})).await;
        }
        let (mut pongs, mut limited) = (0, 0);
        while let Some(f) = c.next_within(Duration::from_millis(700)).await {
            if f["type"] == "pong" {
                pongs += 1;
            } else if f["code"] == "rate_limited" {
                limited += 1;
            }
        }
        assert!(limited >= 5, "{kind:?}: {limited} refused");
        assert!(pongs <= 7, "{kind:?}: {pongs} pongs");
    }
}

/// A connection's token expires: it is closed with 4003, on every
/// transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_every_transport() {
    let node = Node::start().await;
    for kind in KINDS {
        let exp = herald_proto::envelope::now_ms() / 1000 + 2;
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({ "sub": "ann", "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .expect("token");
        let mut c = Conn::open(&node, kind, &format!("channel=chat:exp&token={t}")).await;
        let (_, close) = c.until_close(Duration::from_secs(6)).await;
        let close = close.unwrap_or_else(|| panic!("{kind:?}: not closed"));
        assert_eq!(close["code"], 4003, "{kind:?}: {close}");
    }
}

/// Shutdown drains every transport alike: a `reconnect` hint, then the
/// close with 1001. (A long-poller gets the hint on the poll it has
/// waiting; the node then stops listening, so its next poll finds the node
/// gone rather than the `close` frame.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_transport() {
    let mut node = Node::start().await;
    let mut readers = Vec::new();
    for kind in KINDS {
        let mut c = Conn::open(&node, kind, "channel=chat:drain").await;
        // Subscribed before the drain starts.
        loop {
            let f = c
                .next_within(Duration::from_secs(5))
                .await
                .expect("subscribed");
            if f["type"] == "subscribed" {
                break;
            }
        }
        // Reading (a poll waiting) when the drain starts.
        readers.push((
            kind,
            tokio::spawn(async move { c.until_close(Duration::from_secs(8)).await }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.shutdown();
    for (kind, reader) in readers {
        let (seen, close) = reader.await.expect("reader");
        assert!(
            seen.iter().any(|f| f["type"] == "reconnect"),
            "{kind:?}: {seen:?}"
        );
        match (kind, close) {
            (Kind::Poll, None) => {}
            (_, Some(close)) => assert_eq!(close["code"], 1001, "{kind:?}: {close}"),
            (_, None) => panic!("{kind:?}: not closed"),
        }
    }
    node.finished().await;
}

/// Replies go ahead of queued messages: a session nobody polls while 700
/// messages arrive (256 wait in the session's pipe, the rest in its
/// queue) answers a ping before the queued ones, and every message still
/// comes once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_does_not_wait_behind_queued_messages() {
    let node = Node::start().await;
    let mut c = Conn::open(&node, Kind::Poll, "channel=chat:lane").await;
    let first = c
        .next_within(Duration::from_secs(5))
        .await
        .expect("subscribed");
    assert_eq!(first["type"], "subscribed", "{first}");
    let mut p = node.connect().await;
    let ids: Vec<uuid::Uuid> = (0..700).map(|_| uuid::Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        p.send(json!({"type": "publish", "channel": "chat:lane", "id": id, "data": i}))
            .await;
    }
    for id in &ids {
        assert_eq!(p.next_of_publish(*id).await["type"], "publish_ack");
    }
    c.send(json!({"type": "ping"})).await;
    let mut frames = Vec::new();
    while frames.len() < 701 {
        match c.next_within(Duration::from_secs(5)).await {
            Some(f) => frames.push(f),
            None => panic!("after {} frames", frames.len()),
        }
    }
    let pong = frames
        .iter()
        .position(|f| f["type"] == "pong")
        .expect("a pong");
    assert!(
        pong <= 400,
        "the pong came after {pong} messages: it waited behind the queue"
    );
    let data: Vec<i64> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["data"].as_i64().expect("data"))
        .collect();
    assert_eq!(data, (0..700).collect::<Vec<_>>());
}

/// A conflating namespace (docs/protocol.md, "Conflation"): a session
/// nobody polls while 600 messages arrive is not cut; it gets `conflated`
/// notices for what it skipped and the newest message, in order, and
/// every seq it got or was told it skipped accounts for all 600. The same
/// in a plain namespace is cut (4008).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_on_a_conflating_channel_gets_the_newest_not_a_cut() {
    let (mut edge, log) = config();
    edge.limits.queue_messages = 16;
    let mut live = herald_edge::NamespaceConfig::new("live", 1);
    live.subscribe = herald_edge::AccessRule::Anonymous;
    live.publish = herald_edge::AccessRule::Anonymous;
    live.conflate = true;
    edge.namespaces.push(live);
    let node = Node::start_with(edge, log).await;
    for (channel, conflates) in [("live:price", true), ("chat:price", false)] {
        let mut c = Conn::open(&node, Kind::Poll, &format!("channel={channel}")).await;
        let first = c
            .next_within(Duration::from_secs(5))
            .await
            .expect("subscribed");
        assert_eq!(first["type"], "subscribed", "{first}");
        let mut p = node.connect().await;
        let ids: Vec<uuid::Uuid> = (0..600).map(|_| uuid::Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            p.send(json!({"type": "publish", "channel": channel, "id": id, "data": i}))
                .await;
        }
        let mut seqs = Vec::new();
        for id in &ids {
            let ack = p.next_of_publish(*id).await;
            seqs.push(ack["seq"].as_i64().expect("acked"));
        }
        let (frames, close) = c.until_close(Duration::from_millis(1500)).await;
        if !conflates {
            // Cut (4008): the close ends what it polls, or the session is
            // gone by the time it polls; either way not everything came.
            let messages = frames.iter().filter(|f| f["type"] == "message").count();
            assert!(messages < 600, "not cut: {messages} messages");
            if let Some(close) = close {
                assert_eq!(close["code"], 4008, "{close}");
            }
            continue;
        }
        assert_eq!(close, None, "not cut");
        let (mut got, mut skipped) = (Vec::new(), 0);
        for f in &frames {
            match f["type"].as_str() {
                Some("message") => got.push(f["seq"].as_i64().expect("seq")),
                Some("conflated") => {
                    assert_eq!(f["channel"], channel);
                    skipped += f["skipped"].as_i64().expect("skipped");
                }
                _ => {}
            }
        }
        assert!(skipped > 0, "nothing was conflated: {frames:?}");
        assert_eq!(got.last(), seqs.last(), "the newest arrived");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
        assert_eq!(
            got.len() as i64 + skipped,
            600,
            "each message delivered or skipped"
        );
    }
}
