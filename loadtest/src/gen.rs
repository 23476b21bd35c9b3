//! The WebSocket load generator: subscribers, open-loop (or windowed)
//! publishers, end-to-end latency in an HDR histogram, and the verifier.
//!
//! It speaks herald's frames (`subscribe`, `publish`, `message`,
//! `publish_ack`), which the bare WebSocket floor ([`crate::wsfloor`]) speaks
//! too, so the same run drives both.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::report::{Progress, Report};
use crate::verify::Verifier;
use crate::{latency_histogram, now_ns};

/// One run's shape.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// `ws://host:port/ws` (query parameters allowed).
    pub url: String,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Channels; subscriber `i` subscribes to channel `i % channels`.
    pub channels: usize,
    /// Publisher connections; they publish round-robin over the channels.
    pub publishers: usize,
    /// Total publishes per second (open loop); 0: closed loop with `window`.
    pub rate: u32,
    /// Publishes in flight per publisher in closed-loop mode.
    pub window: usize,
    /// How long publishers publish.
    pub duration: Duration,
    /// Bytes of padding in each message.
    pub size: usize,
    /// Channel names are `{channel_prefix}{n}`.
    pub channel_prefix: String,
    /// Local addresses to connect from (spread when N exceeds one address's
    /// ephemeral ports); empty: the OS picks.
    pub source_ips: Vec<IpAddr>,
    /// After publishing, how long to wait for the last deliveries.
    pub drain: Duration,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// The wire protocol of the server under test.
    pub proto: Proto,
}

/// Which server the generator talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// herald's JSON frames (also the bare WebSocket floor).
    Herald,
    /// Socket.IO 4 (Engine.IO v4 over WebSocket) with the events of
    /// `loadtest/socketio/server.js`: `subscribe`, `publish`, `message`,
    /// `publish_ack`.
    SocketIo,
}

fn subscribe_frame(proto: Proto, channel: &str) -> String {
    match proto {
        Proto::Herald => serde_json::json!({"type": "subscribe", "channel": channel}).to_string(),
        Proto::SocketIo => format!("42{}", serde_json::json!(["subscribe", channel])),
    }
}

fn publish_frame(proto: Proto, channel: &str, id: Uuid, t: u64, pad: &str) -> String {
    let data = serde_json::json!({"t": t, "pad": pad});
    match proto {
        Proto::Herald => {
            serde_json::json!({"type": "publish", "channel": channel, "id": id, "data": data})
                .to_string()
        }
        Proto::SocketIo => format!(
            "42{}",
            serde_json::json!(["publish", {"channel": channel, "id": id, "data": data}])
        ),
    }
}

/// A frame as the generator needs it, from either protocol. `None` for
/// frames it does not use (Socket.IO pings are answered by the caller).
fn decode(proto: Proto, text: &str) -> Option<Incoming> {
    match proto {
        Proto::Herald => serde_json::from_str(text).ok(),
        Proto::SocketIo => {
            let body = text.strip_prefix("42")?;
            // [name, payload, ...]: with connection state recovery on, the
            // server appends the packet's offset.
            let mut parts: Vec<serde_json::Value> = serde_json::from_str(body).ok()?;
            if parts.len() < 2 {
                return None;
            }
            let payload = parts.swap_remove(1);
            let name = parts.first()?.as_str()?.to_owned();
            let field = |k: &str| payload.get(k).cloned();
            Some(Incoming {
                kind: name,
                channel: field("channel")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .or_else(|| payload.as_str().map(str::to_owned)),
                id: field("id").and_then(|v| serde_json::from_value(v).ok()),
                data: field("data").and_then(|v| serde_json::from_value(v).ok()),
                code: None,
                seq: field("seq").and_then(|v| v.as_i64()),
            })
        }
    }
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            url: "ws://127.0.0.1:8080/ws".into(),
            subscribers: 10,
            channels: 1,
            publishers: 1,
            rate: 100,
            window: 64,
            duration: Duration::from_secs(10),
            size: 100,
            channel_prefix: format!("chat:lt-{}-", &Uuid::new_v4().simple().to_string()[..6]),
            source_ips: Vec::new(),
            drain: Duration::from_secs(5),
            progress: true,
            proto: Proto::Herald,
        }
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn host_port(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("only ws:// URLs: {url}"))?;
    let hp = rest.split('/').next().unwrap_or(rest);
    hp.parse()
        .with_context(|| format!("`{hp}` is not an IP address and port"))
}

/// Opens a connection for `proto`: the WebSocket, and for Socket.IO its
/// Engine.IO open and namespace connect.
pub async fn connect_proto(url: &str, source: Option<IpAddr>, proto: Proto) -> anyhow::Result<Ws> {
    let mut ws = connect(url, source).await?;
    if proto == Proto::SocketIo {
        let mut want = "0"; // Engine.IO open, then the namespace connect.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with(want) => {
                    if want == "0" {
                        ws.send(Message::text("40")).await?;
                        want = "40";
                    } else {
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => bail!("closed during the Socket.IO handshake"),
                Err(_) => bail!("no Socket.IO handshake within 10 s"),
            }
        }
    }
    Ok(ws)
}

/// Opens a WebSocket from `source` (or any local address).
pub async fn connect(url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let addr = host_port(url)?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding {ip}"))?;
    }
    let stream = sock.connect(addr).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    data: Option<Payload>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    seq: Option<i64>,
}

#[derive(Deserialize)]
struct Payload {
    t: u64,
}

struct SubResult {
    channels: Vec<String>,
    got: HashMap<String, Vec<Uuid>>,
    latency: Histogram<u64>,
}

async fn subscriber(
    mut ws: Ws,
    channels: Vec<String>,
    delivered: Arc<AtomicU64>,
    ready: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    proto: Proto,
) -> anyhow::Result<SubResult> {
    for ch in &channels {
        ws.send(Message::text(subscribe_frame(proto, ch))).await?;
    }
    // Wait for every `subscribed`.
    let mut pending = channels.len();
    while pending > 0 {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let Some(f) = decode(proto, t.as_str()) else {
                    continue;
                };
                match f.kind.as_str() {
                    "subscribed" => pending -= 1,
                    "error" => bail!("subscribe refused: {:?}", f.code),
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => bail!("closed before subscribed"),
            Err(_) => bail!("no `subscribed` within 30 s"),
        }
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut got: HashMap<String, Vec<Uuid>> = HashMap::new();
    let mut latency = latency_histogram();
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let now = now_ns();
                    if proto == Proto::SocketIo && t.as_str() == "2" {
                        ws.send(Message::text("3")).await?;
                        continue;
                    }
                    let Some(f) = decode(proto, t.as_str()) else { continue };
                    if f.kind != "message" {
                        continue;
                    }
                    if let (Some(ch), Some(id)) = (f.channel, f.id) {
                        if let Some(p) = f.data {
                            let _ = latency.record(now.saturating_sub(p.t) / 1_000);
                        }
                        got.entry(ch).or_default().push(id);
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("subscriber connection closed by the server"),
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(SubResult {
        channels,
        got,
        latency,
    })
}

pub(crate) struct PubResult {
    /// Channel, id, when the ack arrived and the `seq` it gave (if any).
    pub(crate) acked: Vec<(String, Uuid, Instant, Option<i64>)>,
    pub(crate) nacks: u64,
    pub(crate) sent: u64,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn publisher(
    ws: Ws,
    index: usize,
    channels: Arc<Vec<String>>,
    cfg: GenConfig,
    rate_each: f64,
    acks: Arc<AtomicU64>,
) -> anyhow::Result<PubResult> {
    let proto = cfg.proto;
    let (mut sink, mut stream) = ws.split();
    let pad = "x".repeat(cfg.size);
    let outstanding: Arc<std::sync::Mutex<HashMap<Uuid, String>>> = Default::default();
    let window = Arc::new(tokio::sync::Semaphore::new(cfg.window.max(1)));
    let out2 = outstanding.clone();
    let win2 = window.clone();
    let acks2 = acks.clone();
    let closed_loop = cfg.rate == 0;
    let reader = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut nacks = 0u64;
        while let Some(m) = stream.next().await {
            let Ok(Message::Text(t)) = m else {
                if m.is_err() {
                    break;
                }
                continue;
            };
            let Some(f) = decode(proto, t.as_str()) else {
                continue;
            };
            let done = match f.kind.as_str() {
                "publish_ack" => {
                    if let Some(id) = f.id {
                        if let Some(ch) = out2.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
                        {
                            acked.push((ch, id, Instant::now(), f.seq));
                            acks2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    true
                }
                "publish_nack" => {
                    if let Some(id) = f.id {
                        out2.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    }
                    nacks += 1;
                    true
                }
                _ => false,
            };
            if done && closed_loop {
                win2.add_permits(1);
            }
            if out2.lock().unwrap_or_else(|p| p.into_inner()).is_empty() && win2.is_closed() {
                break;
            }
        }
        (acked, nacks)
    });
    let started = Instant::now();
    let mut sent = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate_each.max(1e-9));
    let mut n = index;
    while started.elapsed() < cfg.duration {
        if closed_loop {
            match window.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
        } else {
            // Open loop: the schedule does not wait for answers.
            let due = started + period.mul_f64(sent as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let ch = &channels[n % channels.len()];
        n += cfg.publishers;
        let id = Uuid::new_v4();
        outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, ch.clone());
        let frame = publish_frame(proto, ch, id, now_ns(), &pad);
        sink.send(Message::text(frame)).await?;
        sent += 1;
    }
    // Wait for the last answers.
    let deadline = Instant::now() + cfg.drain;
    while !outstanding
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    window.close();
    let _ = sink.close().await;
    let (acked, nacks) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .map_err(|_| anyhow!("publisher reader did not finish"))??;
    Ok(PubResult { acked, nacks, sent })
}

/// A scenario's channel names: `{prefix}0` to `{prefix}{n - 1}`.
pub(crate) fn channel_names(prefix: &str, n: usize) -> Arc<Vec<String>> {
    Arc::new((0..n).map(|i| format!("{prefix}{i}")).collect())
}

/// The source address of connection `i`: round robin over `ips`, or the
/// system's choice when there are none.
pub(crate) fn source_for(ips: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!ips.is_empty()).then(|| ips[i % ips.len()])
}

/// Runs one scenario and judges it.
pub async fn run(cfg: GenConfig) -> anyhow::Result<Report> {
    if cfg.channels == 0 || cfg.publishers == 0 {
        bail!("channels and publishers must be at least 1");
    }
    let channels = channel_names(&cfg.channel_prefix, cfg.channels);
    let source = |i: usize| source_for(&cfg.source_ips, i);
    let delivered = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers first, all subscribed before anything is published.
    let connect_started = Instant::now();
    let mut subs = Vec::with_capacity(cfg.subscribers);
    let conn_limit = Arc::new(tokio::sync::Semaphore::new(256));
    let ready = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::with_capacity(cfg.subscribers);
    for i in 0..cfg.subscribers {
        let url = cfg.url.clone();
        let proto = cfg.proto;
        let src = source(i);
        let permit = conn_limit.clone();
        conns.push(tokio::spawn(async move {
            let _p = permit.acquire_owned().await;
            connect_proto(&url, src, proto).await
        }));
    }
    for (i, r) in conns.into_iter().enumerate() {
        let ws = r.await??;
        let chs = vec![channels[i % channels.len()].clone()];
        subs.push(tokio::spawn(subscriber(
            ws,
            chs,
            delivered.clone(),
            ready.clone(),
            stop_rx.clone(),
            cfg.proto,
        )));
    }
    // Every subscription confirmed before anything is published.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < cfg.subscribers as u64 {
        if let Some(i) = subs.iter().position(|s| s.is_finished()) {
            let failed = subs.swap_remove(i);
            failed.await??;
            bail!("a subscriber ended before the run started");
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} subscribers subscribed within 120 s",
                ready.load(Ordering::Relaxed),
                cfg.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();

    let rate_each = cfg.rate as f64 / cfg.publishers as f64;
    let mut pubs = Vec::with_capacity(cfg.publishers);
    for i in 0..cfg.publishers {
        let ws = connect_proto(&cfg.url, source(cfg.subscribers + i), cfg.proto).await?;
        pubs.push(tokio::spawn(publisher(
            ws,
            i,
            channels.clone(),
            cfg.clone(),
            rate_each,
            acks.clone(),
        )));
    }
    let started = Instant::now();
    let mut progress = Progress::new(cfg.progress);
    let pubs_done = pubs;
    // Progress while the publishers run.
    while pubs_done.iter().any(|p| !p.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.tick(
            started.elapsed(),
            acks.load(Ordering::Relaxed),
            delivered.load(Ordering::Relaxed),
        );
    }
    let publish_secs = started
        .elapsed()
        .as_secs_f64()
        .min(cfg.duration.as_secs_f64())
        .max(1e-3);
    let mut verifier = Verifier::new();
    let (mut sent, mut nacks) = (0u64, 0u64);
    for p in pubs_done {
        let r = p.await??;
        sent += r.sent;
        nacks += r.nacks;
        for (ch, id, _, seq) in r.acked {
            match seq {
                Some(seq) => verifier.acked_seq(&ch, id, seq),
                None => verifier.acked(&ch, id),
            }
        }
    }
    // Let the last deliveries arrive: until every subscriber has what it
    // should, or the drain time is over.
    let expected: u64 = {
        let acked_per_channel: HashMap<&String, u64> = verifier
            .report()
            .iter()
            .filter_map(|(ch, c)| channels.iter().find(|x| *x == ch).map(|x| (x, c.acked)))
            .collect();
        (0..cfg.subscribers)
            .map(|i| {
                acked_per_channel
                    .get(&channels[i % channels.len()])
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    let deadline = Instant::now() + cfg.drain;
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    stop_tx.send_replace(true);
    let mut latency = latency_histogram();
    for s in subs {
        let r = s.await??;
        latency.add(&r.latency).map_err(|e| anyhow!("{e}"))?;
        verifier.subscriber(r.channels, r.got);
    }
    progress.done();
    let totals = verifier.totals();
    Ok(Report::new(
        match cfg.proto {
            Proto::Herald => "herald-ws",
            Proto::SocketIo => "socket.io",
        },
        &cfg_summary(&cfg),
        sent,
        totals.acked,
        nacks,
        totals.delivered,
        publish_secs,
        total_secs,
        connect_secs,
        &latency,
        Some(verifier.report()),
    ))
}

fn cfg_summary(cfg: &GenConfig) -> serde_json::Value {
    serde_json::json!({
        "url": cfg.url,
        "subscribers": cfg.subscribers,
        "channels": cfg.channels,
        "publishers": cfg.publishers,
        "rate": cfg.rate,
        "window": cfg.window,
        "duration_secs": cfg.duration.as_secs_f64(),
        "size": cfg.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketio_frames_round_trip() {
        let id = Uuid::new_v4();
        let f = publish_frame(Proto::SocketIo, "chat:a", id, 7, "xx");
        assert!(f.starts_with(r#"42["publish",{"#), "{f}");
        // What server.js broadcasts, with the recovery offset appended.
        let msg = format!(
            r#"42["message",{{"channel":"chat:a","id":"{id}","data":{{"t":7,"pad":"xx"}}}},"1795-0"]"#
        );
        let d = decode(Proto::SocketIo, &msg).unwrap();
        assert_eq!(d.kind, "message");
        assert_eq!(d.channel.as_deref(), Some("chat:a"));
        assert_eq!(d.id, Some(id));
        assert_eq!(d.data.map(|p| p.t), Some(7));
        let sub = decode(Proto::SocketIo, r#"42["subscribed","chat:a","1-0"]"#).unwrap();
        assert_eq!(
            (sub.kind.as_str(), sub.channel.as_deref()),
            ("subscribed", Some("chat:a"))
        );
        assert!(decode(Proto::SocketIo, "2").is_none());
        assert!(decode(Proto::SocketIo, "42not json").is_none());
        assert_eq!(
            subscribe_frame(Proto::SocketIo, "chat:a"),
            r#"42["subscribe","chat:a"]"#
        );
    }

    #[test]
    fn herald_frames_round_trip() {
        let id = Uuid::new_v4();
        let f: serde_json::Value =
            serde_json::from_str(&publish_frame(Proto::Herald, "chat:a", id, 9, "")).unwrap();
        assert_eq!(f["type"], "publish");
        assert_eq!(f["data"]["t"], 9);
        let msg = format!(
            r#"{{"type":"message","channel":"chat:a","seq":1,"epoch":"e","id":"{id}","ts":0,"data":{{"t":9}}}}"#
        );
        let d = decode(Proto::Herald, &msg).unwrap();
        assert_eq!((d.kind.as_str(), d.id), ("message", Some(id)));
    }
}
