//! The fallback transports against the real broker: a Server-Sent Events
//! stream cut mid-way and resumed through `Last-Event-ID` (the browser's own
//! reconnect), long-polls, frames `POST`ed to a session, and their refusals.
//! Everything acked is delivered, once, in order per channel.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// A Server-Sent Events stream read off the socket (chunked HTTP/1.1).
struct Sse {
    sock: TcpStream,
    raw: Vec<u8>,
    /// Decoded body not yet split into events.
    body: String,
    /// The last `id` seen, as the browser keeps it.
    last_id: Option<String>,
}

impl Sse {
    async fn open(base: &str, query: &str, last_id: Option<&str>) -> (u16, Sse) {
        let host = base.trim_start_matches("http://");
        let mut sock = TcpStream::connect(host).await.expect("connect");
        let mut req =
            format!("GET /sse?{query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.expect("write");
        let mut s = Sse {
            sock,
            raw: Vec::new(),
            body: String::new(),
            last_id: None,
        };
        let head_end = loop {
            if let Some(i) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            s.fill().await;
        };
        let head = String::from_utf8_lossy(&s.raw[..head_end]).to_string();
        s.raw.drain(..head_end);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, s)
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(20), self.sock.read(&mut chunk))
            .await
            .expect("the stream went quiet")
            .expect("read");
        assert!(n > 0, "the stream ended");
        self.raw.extend_from_slice(&chunk[..n]);
    }

    /// Moves whole chunks from `raw` into `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&self.raw[..eol]).trim(), 16)
                .expect("chunk size");
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            let data = self.raw[eol + 2..eol + 2 + size].to_vec();
            self.raw.drain(..eol + 2 + size + 2);
            self.body.push_str(&String::from_utf8(data).expect("utf-8"));
        }
    }

    /// The next event's frame (comments and keep-alives skipped).
    async fn next(&mut self) -> Value {
        loop {
            self.dechunk();
            if let Some(end) = self.body.find("\n\n") {
                let event: String = self.body.drain(..end + 2).collect();
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    } else if let Some(id) = line.strip_prefix("id:") {
                        self.last_id = Some(id.strip_prefix(' ').unwrap_or(id).to_owned());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return serde_json::from_str(&data).expect("a JSON frame");
            }
            self.fill().await;
        }
    }

    /// Frames until `pick` has taken `n` of them; every frame is kept.
    async fn until(&mut self, n: usize, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut all = Vec::new();
        let mut taken = 0;
        while taken < n {
            let f = self.next().await;
            if pick(&f) {
                taken += 1;
            }
            all.push(f);
        }
        all
    }
}

fn publish_frame(channel: &str, id: Uuid, n: usize) -> String {
    json!({ "type": "publish", "channel": channel, "id": id, "data": { "n": n } }).to_string()
}

async fn post(base: &str, session: &str, frame: &str) -> (u16, String) {
    http(
        base,
        "POST",
        &format!("/session/{session}"),
        &[],
        Some(frame),
    )
    .await
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |f| f["type"] == kind
}

/// Per channel, the `seq`s of `message` frames in arrival order.
fn seqs(frames: &[Value]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for f in frames.iter().filter(|f| f["type"] == "message") {
        out.entry(f["channel"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(f["seq"].as_i64().unwrap_or(-2));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_cut_and_resumed_by_last_event_id_loses_and_repeats_nothing() {
    let s = Server::start(&unique_prefix("sse"), &["--publish-rate", "0"]);
    let (a, b) = ("chat:sse-a", "chat:sse-b");
    let query = format!("channel={a}&channel={b}&client_id=reader");
    let (status, mut sse) = Sse::open(&s.http, &query, None).await;
    assert_eq!(status, 200);
    let hello = sse.next().await;
    assert_eq!(hello["type"], "session");
    let session = hello["id"].as_str().expect("a session id").to_owned();
    sse.until(2, is("subscribed")).await;

    // Publishes POSTed to the session: answered on the stream.
    let mut acked: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for n in 0..20 {
        let ch = if n % 2 == 0 { a } else { b };
        let (st, _) = post(&s.http, &session, &publish_frame(ch, Uuid::new_v4(), n)).await;
        assert_eq!(st, 202);
    }
    let frames = sse.until(20, is("publish_ack")).await;
    let mut seen = frames;
    for f in seen.iter().filter(|f| f["type"] == "publish_ack") {
        acked
            .entry(f["channel"].as_str().unwrap().to_owned())
            .or_default()
            .push(f["seq"].as_i64().unwrap());
    }
    // Read until 10 of the 20 messages are in, then the network drops.
    while seqs(&seen).values().map(Vec::len).sum::<usize>() < 10 {
        seen.push(sse.next().await);
    }
    let last_id = sse.last_id.clone().expect("message events carry an id");
    let positions: Value = serde_json::from_str(&last_id).expect("the id is JSON");
    assert!(
        positions.get(a).is_some() && positions.get(b).is_some(),
        "{positions}"
    );
    drop(sse);
    // The session ends with its stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = post(&s.http, &session, r#"{"type":"ping"}"#).await;
        if st == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "session outlived its stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Meanwhile 20 more from a WebSocket publisher.
    let mut ws = s.connect().await;
    for n in 20..40 {
        let ch = if n % 2 == 0 { a } else { b };
        let (_, seq) = publish_ok(&mut ws, ch, json!({ "n": n })).await;
        acked.entry(ch.to_owned()).or_default().push(seq);
    }

    // The browser reconnects with Last-Event-ID: both channels recovered,
    // and the rest arrives.
    let (status, mut again) = Sse::open(&s.http, &query, Some(&last_id)).await;
    assert_eq!(status, 200);
    let resumed = again.until(2, is("subscribed")).await;
    for f in resumed.iter().filter(|f| f["type"] == "subscribed") {
        assert_eq!(f["recovered"], true, "{f}");
    }
    seen.extend(resumed);
    while seqs(&seen).values().map(Vec::len).sum::<usize>() < 40 {
        seen.push(again.next().await);
    }
    let got = seqs(&seen);
    for (ch, want) in &acked {
        let mut want = want.clone();
        want.sort_unstable();
        assert_eq!(
            got.get(ch),
            Some(&want),
            "{ch}: every acked seq once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_resume_dedup_and_refuse_clearly() {
    let s = Server::start(&unique_prefix("poll"), &["--publish-rate", "0"]);
    let ch = "chat:poll";
    let mut ws = s.connect().await;
    let (_, first) = publish_ok(&mut ws, ch, json!({ "n": 0 })).await;
    let epoch = {
        let mut sub = s.connect().await;
        sub.subscribe(ch, None).await.expect("subscribe").0.epoch
    };
    // A first poll opens the session and resumes after `first - 1`.
    let since = json!({ ch: { "seq": first - 1, "epoch": epoch } }).to_string();
    let q = |extra: &str| {
        format!(
            "/poll?channel={ch}&wait_ms=2000&since={}{extra}",
            url_encode(&since)
        )
    };
    let (st, body) = http(&s.http, "GET", &q(""), &[], None).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let session = v["session"].as_str().expect("session").to_owned();
    let mut frames: Vec<Value> = v["frames"].as_array().cloned().unwrap_or_default();
    assert_eq!(v["closed"], false);
    // The opening poll answered at once; the resumed message follows.
    // The same publish twice: one append, the second answered duplicate.
    let id = Uuid::new_v4();
    for _ in 0..2 {
        let (st, _) = post(&s.http, &session, &publish_frame(ch, id, 1)).await;
        assert_eq!(st, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while frames.iter().filter(|f| f["type"] == "publish_ack").count() < 2
        || seqs(&frames).get(ch).map_or(0, Vec::len) < 2
    {
        assert!(Instant::now() < deadline, "{frames:?}");
        let (st, body) = http(
            &s.http,
            "GET",
            &format!("/poll?session={session}&wait_ms=2000"),
            &[],
            None,
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        frames.extend(v["frames"].as_array().cloned().unwrap_or_default());
    }
    let acks: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "publish_ack")
        .collect();
    assert_eq!(acks[0]["seq"], acks[1]["seq"]);
    assert_eq!(acks[1]["duplicate"], true);
    assert_eq!(
        seqs(&frames)[ch],
        vec![first, acks[0]["seq"].as_i64().unwrap()]
    );
    // An empty poll answers after its wait with no frames.
    let started = Instant::now();
    let (_, body) = http(
        &s.http,
        "GET",
        &format!("/poll?session={session}&wait_ms=300"),
        &[],
        None,
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["frames"],
        json!([])
    );

    // Refusals.
    let (st, body) = http(&s.http, "GET", "/poll?session=nope", &[], None).await;
    assert_eq!(st, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "unknown_session"
    );
    let (st, _) = post(&s.http, "nope", r#"{"type":"ping"}"#).await;
    assert_eq!(st, 404);
    let (st, body) = http(&s.http, "GET", "/sse?channel=chat:x&since=oops", &[], None).await;
    assert_eq!(st, 400, "{body}");
    // A bad frame is answered on the session, like over WebSocket.
    let (st, _) = post(
        &s.http,
        &session,
        r#"{"type":"publish","channel":"nope:x"}"#,
    )
    .await;
    assert_eq!(st, 202);
    let (_, body) = http(
        &s.http,
        "GET",
        &format!("/poll?session={session}&wait_ms=5000"),
        &[],
        None,
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["frames"][0]["type"], "error", "{v}");
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A poll session nobody polls ends after the idle timeout, and the end is
/// visible: its POSTs are refused, the session gauge drops, and a later
/// poll of it is told to open a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_poll_session_ends_after_the_idle_timeout() {
    let s = Server::start(
        &unique_prefix("poll-idle"),
        &["--heartbeat-secs", "1", "--idle-timeout-secs", "2"],
    );
    let (st, body) = http(&s.http, "GET", "/poll?channel=chat:idle", &[], None).await;
    assert_eq!(st, 200, "{body}");
    let session = serde_json::from_str::<Value>(&body).unwrap()["session"]
        .as_str()
        .expect("session")
        .to_owned();
    let gauge = |m: &str| {
        m.lines()
            .find(|l| l.starts_with(r#"herald_edge_http_sessions{transport="poll"}"#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let (_, m) = http_get(&s.http, "/metrics").await;
    assert_eq!(gauge(&m), Some(1.0));
    let (st, _) = post(&s.http, &session, r#"{"type":"ping"}"#).await;
    assert_eq!(st, 202, "alive while within the timeout");
    let started = Instant::now();
    loop {
        let (st, _) = post(&s.http, &session, r#"{"type":"ping"}"#).await;
        if st == 404 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    let (_, m) = http_get(&s.http, "/metrics").await;
    assert_eq!(gauge(&m), Some(0.0));
    let (st, _) = http(
        &s.http,
        "GET",
        &format!("/poll?session={session}&wait_ms=10"),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 404);
}

/// A long-poll session opened with `rewind` gets the channel's last N
/// messages; bad `rewind` values are refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_session_opened_with_rewind_gets_the_recent_messages() {
    let s = Server::start(&unique_prefix("poll-rewind"), &["--publish-rate", "0"]);
    let ch = "chat:poll-rewind";
    let mut ws = s.connect().await;
    let mut acked = Vec::new();
    for n in 0..5 {
        acked.push(publish_ok(&mut ws, ch, json!({ "n": n })).await.1);
    }
    let (st, body) = http(
        &s.http,
        "GET",
        &format!("/poll?channel={ch}&rewind=2&wait_ms=2000"),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let session = v["session"].as_str().expect("session").to_owned();
    let mut frames: Vec<Value> = v["frames"].as_array().cloned().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seqs(&frames).get(ch).map_or(0, Vec::len) < 2 {
        assert!(Instant::now() < deadline, "{frames:?}");
        let (_, body) = http(
            &s.http,
            "GET",
            &format!("/poll?session={session}&wait_ms=2000"),
            &[],
            None,
        )
        .await;
        let v: Value = serde_json::from_str(&body).expect("json");
        frames.extend(v["frames"].as_array().cloned().unwrap_or_default());
    }
    assert_eq!(seqs(&frames)[ch], acked[3..].to_vec());
    for bad in [
        "rewind=0",
        "rewind=x",
        "rewind=5000",
        "rewind=2&rewind_ms=5",
    ] {
        let (st, body) = http(
            &s.http,
            "GET",
            &format!("/poll?channel={ch}&{bad}"),
            &[],
            None,
        )
        .await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
}

/// `filter=` in the query: every channel of the session gets only the
/// messages whose tags pass it, in order, once; a bad filter is a 400.
#[tokio::test]
async fn an_sse_session_with_a_filter_gets_only_what_passes() {
    let s = Server::start(&unique_prefix("sse-filter"), &["--publish-rate", "0"]);
    let filter = json!({ "key": "kind", "in": ["goal"] }).to_string();
    let encoded: String = filter.bytes().map(|b| format!("%{b:02X}")).collect();
    let (status, mut sse) = Sse::open(
        &s.http,
        &format!("channel=chat:fa&channel=chat:fb&filter={encoded}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    sse.until(2, is("subscribed")).await;
    let mut p = s.connect().await;
    let mut want: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for i in 0..12 {
        let ch = if i % 2 == 0 { "chat:fa" } else { "chat:fb" };
        let kind = if i % 3 == 0 { "goal" } else { "card" };
        let id = Uuid::new_v4();
        let tags = BTreeMap::from([("kind".to_string(), kind.to_string())]);
        p.send_publish_tagged(ch, id, &json!({ "i": i }), &tags)
            .await
            .unwrap();
        match p.publish_result(id).await.unwrap() {
            herald_client::Published::Ack { seq, .. } if kind == "goal" => {
                want.entry(ch.to_string()).or_default().push(seq)
            }
            herald_client::Published::Ack { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let frames = sse.until(4, is("message")).await;
    assert_eq!(seqs(&frames), want);
    assert!(frames
        .iter()
        .filter(|f| f["type"] == "message")
        .all(|f| f["tags"]["kind"] == "goal"));
    let (status, _) = Sse::open(&s.http, "channel=chat:fa&filter=%7B%7D", None).await;
    assert_eq!(status, 400);
}
