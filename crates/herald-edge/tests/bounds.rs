//! The bounds of docs/security.md, tried as a hostile client would, in
//! process on the in-memory log: responses nobody reads, floods of cheap
//! frames with costly answers, presence churn, long URLs, and what presence
//! shows. `transports.rs` runs the lifecycle's scenarios over all three
//! transports.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_edge::{AccessRule, NamespaceConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A socket whose receive buffer is small: once it is full the server's
/// writes make no progress until the test reads.
async fn tight_socket(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.set_recv_buffer_size(4096).expect("rcvbuf");
    s.connect(addr).await.expect("connect")
}

/// Reads what the server sends until it closes the connection; `None` when
/// it is still open after `wait`. The byte count is what the server had
/// written or held for this client.
async fn drain_until_closed(sock: &mut TcpStream, wait: Duration) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(total),
            Ok(Ok(n)) => total += n,
        }
    }
}

/// A node whose stalled readers are found within a second, with 20
/// messages of 60 KB on `chat:big` to ask history for, and `queue_bytes`
/// per connection.
async fn node_with_big_history(queue_bytes: usize) -> Node {
    let (mut edge, log) = config();
    edge.write_timeout = Duration::from_secs(1);
    // A response the kernel took whole ends with its idle connection.
    edge.header_read_timeout = Duration::from_secs(1);
    edge.limits.queue_bytes = queue_bytes;
    edge.history_max_bytes = 1 << 20;
    let node = Node::start_with(edge, log).await;
    let mut c = node.connect().await;
    let big = "x".repeat(60_000);
    for _ in 0..20 {
        let ack = c
            .publish("chat:big", uuid::Uuid::new_v4(), json!(big))
            .await;
        assert_eq!(ack["type"], "publish_ack", "{ack}");
    }
    node
}

/// Opens a session's reader on `sock` (`/sse` or `/poll`) and reads its id.
async fn open_session(sock: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before the session id");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        // SSE: `{"id":"..","type":"session"}`; poll: `{"session":"..",..}`.
        for m in ["\"id\":\"", "\"session\":\""] {
            if let Some(i) = text.find(m) {
                let rest = &text[i + m.len()..];
                if let Some(end) = rest.find('"') {
                    return rest[..end].to_owned();
                }
            }
        }
    }
}

/// `POST /session/{id}` with one frame; the status.
async fn post_frame(node: &Node, session: &str, frame: Value) -> u16 {
    let body = frame.to_string();
    let req = format!(
        "POST /session/{session} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(node.addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn history(limit: usize) -> Value {
    json!({"type": "history", "channel": "chat:big", "since_seq": -1, "limit": limit})
}

/// An SSE stream its client never reads, asked for 60 history pages of
/// ~1 MB: the session is cut by the write deadline and the response with
/// it; what the server held for the client is the session's bounds (queue
/// and pipe) plus socket buffers, not the 60 MB asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_read_sse_stream_holds_its_bounds_and_is_cut() {
    let node = node_with_big_history(1 << 20).await;
    let mut sock = tight_socket(node.addr).await;
    let session = open_session(&mut sock, "/sse?channel=chat:other").await;
    let mut taken = 0;
    for _ in 0..60 {
        match post_frame(&node, &session, history(20)).await {
            202 => taken += 1,
            // The session already ended (cut as a slow consumer or stalled).
            404 => break,
            s => panic!("POST answered {s}"),
        }
    }
    assert!(taken > 0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The session is gone, and so is its response.
    assert_eq!(
        post_frame(&node, &session, json!({"type": "ping"})).await,
        404
    );
    let held = drain_until_closed(&mut sock, Duration::from_secs(5))
        .await
        .expect("the server closed the never-read stream");
    assert!(
        held < 4 << 20,
        "the server held {held} bytes for one stream"
    );
}

/// Long-poll answers on sockets that never read: each is cut by the write
/// deadline (or, once the kernel took all of it, by the idle timeout of
/// an HTTP connection) instead of staying open with its answer pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_read_poll_answers_are_cut_by_the_write_deadline() {
    // The default queue: answers of up to 4 MiB before the reader pipe.
    let node = node_with_big_history(4 << 20).await;
    let mut first = TcpStream::connect(node.addr).await.expect("connect");
    let session = open_session(&mut first, "/poll?channel=chat:other").await;
    let mut pinned = Vec::new();
    'polls: for _ in 0..5 {
        for _ in 0..4 {
            if post_frame(&node, &session, history(20)).await != 202 {
                break 'polls;
            }
        }
        // Let the answers reach the session's pipe.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut sock = tight_socket(node.addr).await;
        let req = format!("GET /poll?session={session}&wait_ms=1000 HTTP/1.1\r\nhost: x\r\n\r\n");
        sock.write_all(req.as_bytes()).await.expect("write");
        pinned.push(sock);
    }
    assert!(!pinned.is_empty());
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (i, sock) in pinned.iter_mut().enumerate() {
        let held = drain_until_closed(sock, Duration::from_secs(3)).await;
        assert!(held.is_some(), "poll answer {i} still open");
    }
}

/// A 64 KB query string is refused before it is parsed (414), at the cost
/// of a short one; channels are de-duplicated in linear time.
#[tokio::test]
async fn a_long_query_string_is_refused_before_any_work() {
    let node = Node::start().await;
    let mut q = String::new();
    let mut i = 0;
    while q.len() < 64_000 {
        q.push_str(&format!("channel=chat:c{i}&"));
        i += 1;
    }
    for path in ["/poll", "/sse", "/ws"] {
        let (status, _) = http_get(node.addr, &format!("{path}?{q}"), "").await;
        assert_eq!(status, 414, "{path}");
    }
    let (status, _) = http_get(node.addr, "/poll?channel=chat:a&channel=chat:a", "").await;
    assert_eq!(status, 200);
}

fn presence_config() -> (herald_edge::EdgeConfig, herald_log::LogConfig) {
    let (mut edge, log) = config();
    let mut room = NamespaceConfig::new("room", 1);
    room.subscribe = AccessRule::Anonymous;
    room.publish = AccessRule::Anonymous;
    room.history = AccessRule::Anonymous;
    room.presence = AccessRule::Anonymous;
    room.join_leave = true;
    // Join/leave events for members with a token only.
    let mut club = NamespaceConfig::new("club", 1);
    club.subscribe = AccessRule::Anonymous;
    club.presence = AccessRule::Authenticated;
    club.join_leave = true;
    edge.namespaces.push(room);
    edge.namespaces.push(club);
    (edge, log)
}

/// Members who subscribed after `c` and that `c` hears joining, until
/// `quiet` passes without one.
async fn joins(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(f) = c.next_within(quiet).await {
        if f["type"] == "join" {
            out.push(f);
        }
    }
    out
}

/// Join/leave churn from a few anonymous connections: each is limited
/// (`rate_limited` past its budget), and a live member that is slow to read
/// is never cut for presence events (they are dropped and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_churn_is_limited_and_never_cuts_a_live_member() {
    let (mut edge, log) = presence_config();
    edge.limits.queue_messages = 16;
    edge.limits.presence_churn_per_minute = 30;
    let node = Node::start_with(edge, log).await;
    let mut slow = node.connect().await;
    slow.subscribe("room:r", None).await;
    let mut churners = Vec::new();
    for _ in 0..3 {
        churners.push(node.connect().await);
    }
    let mut limited = 0;
    for round in 0..60 {
        for c in churners.iter_mut() {
            c.send(json!({"type": "subscribe", "channel": "room:r"}))
                .await;
            c.send(json!({"type": "unsubscribe", "channel": "room:r"}))
                .await;
            if round % 10 == 9 {
                while let Some(f) = c.next_within(Duration::from_millis(20)).await {
                    if f["code"] == "rate_limited" {
                        limited += 1;
                    }
                }
            }
        }
    }
    assert!(limited > 0, "no churner was rate limited");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The slow member is still connected and served: a ping is answered.
    slow.send(json!({"type": "ping"})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = slow
            .next_within(Duration::from_secs(5))
            .await
            .expect("the slow member was cut");
        if f["type"] == "pong" {
            break;
        }
        assert!(Instant::now() < deadline, "no pong");
    }
}

/// A `presence` answer is capped (`truncated`); an anonymous member's
/// client id, the credential of its durable cursors, is not shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_answers_are_capped_and_show_no_credentials() {
    let (mut edge, log) = presence_config();
    edge.limits.presence_max_members = 3;
    let node = Node::start_with(edge, log).await;
    let mut members = Vec::new();
    for i in 0..5 {
        let mut c = node
            .connect_with(&format!("?client_id=secret-{i}&name=member-{i}"))
            .await;
        c.subscribe("room:p", None).await;
        members.push(c);
    }
    let mut asker = node.connect().await;
    let answer = loop {
        asker
            .send(json!({"type": "presence", "channel": "room:p"}))
            .await;
        let a = asker.next_of("presence").await;
        if a["truncated"] == true {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let list = answer["members"].as_array().expect("members");
    assert_eq!(list.len(), 3, "{answer}");
    assert!(!answer.to_string().contains("secret-"), "{answer}");
    // The display name each gave is what others see.
    assert!(
        list.iter()
            .all(|m| m["name"].as_str().is_some_and(|n| n.starts_with("member-"))),
        "{answer}"
    );
    asker
        .send(json!({"type": "presence_stats", "channel": "room:p"}))
        .await;
    assert_eq!(asker.next_of("presence_stats").await["clients"], 5);
}

/// Join/leave events follow the namespace's `presence` rule: an anonymous
/// subscriber of a namespace whose presence is for authenticated users gets
/// none; one with a token gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_events_follow_the_presence_rule() {
    let (edge, log) = presence_config();
    let node = Node::start_with(edge, log).await;
    let mut anon = node.connect().await;
    anon.subscribe("club:c", None).await;
    let mut member = node
        .connect_with(&format!("?token={}", token("ann", json!({}))))
        .await;
    member.subscribe("club:c", None).await;
    let mut late = node
        .connect_with(&format!("?token={}", token("bob", json!({}))))
        .await;
    late.subscribe("club:c", None).await;
    let seen = joins(&mut member, Duration::from_millis(800)).await;
    assert!(
        seen.iter().any(|j| j["member"]["user"] == "bob"),
        "the member with a token heard nothing: {seen:?}"
    );
    let leaked = joins(&mut anon, Duration::from_millis(300)).await;
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// A client over its per-address limit is refused (429) before its token's
/// signature is checked: a flood of bad tokens from one address costs one
/// counter each, not a signature check.
#[tokio::test]
async fn the_address_limit_comes_before_the_token_check() {
    let (mut edge, log) = config();
    edge.limits.max_connections_per_ip = 1;
    let node = Node::start_with(edge, log).await;
    let _held = node.connect().await;
    let upgrade = "connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
                   sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (path, headers) in [
        ("/poll?channel=chat:a&token=bad", ""),
        ("/ws?token=bad", upgrade),
    ] {
        let (status, _) = http_get(node.addr, path, headers).await;
        assert_eq!(status, 429, "{path}");
    }
}

/// With an admin listener, `/metrics` is served there and not to clients.
#[tokio::test]
async fn metrics_move_to_the_admin_listener() {
    let (mut edge, log) = config();
    edge.admin_listen = Some("127.0.0.1:0".parse().expect("address"));
    let node = Node::start_with(edge, log).await;
    let admin = node.admin.expect("an admin listener");
    assert_ne!(http_get(node.addr, "/metrics", "").await.0, 200);
    // (The in-process node's recorder is not installed: its page is empty.)
    assert_eq!(http_get(admin, "/metrics", "").await.0, 200);
    assert_eq!(http_get(admin, "/readyz", "").await.0, 200);
    assert_eq!(http_get(node.addr, "/healthz", "").await.0, 200);
}

/// Wrong API keys from one address are throttled: past the budget, the
/// answer is 429 without a check, even for the right key.
#[tokio::test]
async fn wrong_api_keys_are_throttled_per_address() {
    let node = Node::start().await;
    let mut statuses = Vec::new();
    for _ in 0..(herald_edge::api::FAILED_KEYS_PER_MINUTE + 2) {
        let (status, _) = http_get(node.addr, "/api/channels", "x-api-key: wrong\r\n").await;
        statuses.push(status);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let right = format!("x-api-key: {API_KEY}\r\n");
    assert_eq!(http_get(node.addr, "/api/channels", &right).await.0, 429);
}

/// Past the frame budget every frame that waits for an answer still gets
/// one: publishes have their own budget (acked here), and a refused
/// `history` hears `rate_limited` with its `id`.
#[tokio::test]
async fn refused_frames_are_answered_with_their_id() {
    let (mut edge, log) = config();
    edge.limits.frame_rate = 1;
    edge.limits.frame_burst = 2;
    let node = Node::start_with(edge, log).await;
    let mut c = node.connect().await;
    for _ in 0..10 {
        let ack = c.publish("chat:f", uuid::Uuid::new_v4(), json!(1)).await;
        assert_eq!(ack["type"], "publish_ack", "{ack}");
    }
    for i in 0..5 {
        c.send(json!({"type": "history", "channel": "chat:f", "id": format!("h{i}"), "limit": 1}))
            .await;
    }
    let mut answered = std::collections::BTreeSet::new();
    let mut limited = 0;
    while answered.len() < 5 {
        let f = c.next().await;
        if let Some(id) = f["id"].as_str() {
            answered.insert(id.to_owned());
            if f["code"] == "rate_limited" {
                limited += 1;
            }
        }
    }
    assert!(limited >= 3, "{limited}");
}
