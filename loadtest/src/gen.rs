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
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::proto::{decode, hello_frame, pong_frame, publish_frame, subscribe_frame};
pub use crate::proto::{Incoming, Proto};
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
    /// Where the publishers connect, when not to `url` (another edge node
    /// of the same cluster: fan-out across nodes).
    pub publish_url: Option<String>,
    /// The server's process, whose CPU time the run reports (the wire-cost
    /// rows: CPU per delivery).
    pub server_pid: Option<u32>,
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
            publish_url: None,
            server_pid: None,
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

/// Opens a connection for `proto`: the WebSocket, then Socket.IO's
/// Engine.IO open and namespace connect, or Centrifugo's `connect`.
pub async fn connect_proto(url: &str, source: Option<IpAddr>, proto: Proto) -> anyhow::Result<Ws> {
    let mut ws = connect(url, source).await?;
    let mut hello = hello_frame(proto);
    if proto == Proto::Centrifugo {
        if let Some(h) = hello.take() {
            ws.send(Message::text(h)).await?;
        }
    } else if hello.is_none() {
        return Ok(ws);
    }
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                // Socket.IO: the Engine.IO open (`0{...}`) asks for the
                // namespace connect.
                if let (Some(h), true) = (&hello, t.as_str().starts_with('0')) {
                    ws.send(Message::text(h.clone())).await?;
                    hello = None;
                    continue;
                }
                frames.clear();
                decode(proto, t.as_str(), &mut frames);
                for f in &frames {
                    match f.kind.as_str() {
                        "connected" => return Ok(ws),
                        "error" => bail!("connect refused: {:?}", f.code),
                        _ => {}
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => bail!("closed during the {proto:?} handshake"),
            Err(_) => bail!("no {proto:?} handshake within 10 s"),
        }
    }
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

struct SubResult {
    channels: Vec<String>,
    got: HashMap<String, Vec<Uuid>>,
    /// The stream position each message was delivered with, for protocols
    /// whose acks carry none (Socket.IO, Centrifugo).
    seqs: Vec<(Uuid, i64)>,
    latency: Histogram<u64>,
}

/// The bytes a WebSocket text frame of `len` bytes takes from the server
/// (unmasked): its header and its payload.
pub fn ws_frame_bytes(len: usize) -> u64 {
    let header = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    (header + len) as u64
}

async fn subscriber(
    mut ws: Ws,
    channels: Vec<String>,
    delivered: Arc<AtomicU64>,
    wire: Arc<AtomicU64>,
    ready: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    proto: Proto,
) -> anyhow::Result<SubResult> {
    for (i, ch) in channels.iter().enumerate() {
        ws.send(Message::text(subscribe_frame(proto, ch, i as u32 + 2)))
            .await?;
    }
    // Wait for every `subscribed`.
    let mut pending = channels.len();
    let mut frames = Vec::new();
    while pending > 0 {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                frames.clear();
                decode(proto, t.as_str(), &mut frames);
                for f in &frames {
                    match f.kind.as_str() {
                        "subscribed" => pending -= 1,
                        "error" => bail!("subscribe refused: {:?}", f.code),
                        "ping" => ws.send(Message::text(pong_frame(proto))).await?,
                        _ => {}
                    }
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
    let mut seqs = Vec::new();
    let mut latency = latency_histogram();
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let now = now_ns();
                    wire.fetch_add(ws_frame_bytes(t.len()), Ordering::Relaxed);
                    frames.clear();
                    decode(proto, t.as_str(), &mut frames);
                    for f in frames.drain(..) {
                        match f.kind.as_str() {
                            "message" => {}
                            "ping" => {
                                ws.send(Message::text(pong_frame(proto))).await?;
                                continue;
                            }
                            _ => continue,
                        }
                        if let (Some(ch), Some(id)) = (f.channel, f.id) {
                            if let Some(t) = f.t {
                                let _ = latency.record(now.saturating_sub(t) / 1_000);
                            }
                            if let (Some(seq), false) = (f.seq, proto == Proto::Herald) {
                                seqs.push((id, seq));
                            }
                            got.entry(ch).or_default().push(id);
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
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
        seqs,
        latency,
    })
}

pub(crate) struct PubResult {
    /// Channel, id, when the ack arrived and the `seq` it gave (if any).
    pub(crate) acked: Vec<(String, Uuid, Instant, Option<i64>)>,
    pub(crate) nacks: u64,
    pub(crate) sent: u64,
    /// Open loop: how far behind its schedule the publisher sent, at most.
    pub(crate) lag: Duration,
}

/// A publisher's unanswered publishes: by message id (herald, Socket.IO),
/// and by command id (Centrifugo's replies name only that).
#[derive(Default)]
struct Outstanding {
    by_id: HashMap<Uuid, String>,
    by_cmd: HashMap<u32, Uuid>,
}

impl Outstanding {
    /// The publish `f` answers, removed: its channel and id.
    fn take(&mut self, f: &Incoming) -> Option<(String, Uuid)> {
        let id = match f.cmd {
            Some(cmd) => self.by_cmd.remove(&cmd)?,
            None => f.id?,
        };
        self.by_id.remove(&id).map(|ch| (ch, id))
    }
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
    let outstanding: Arc<std::sync::Mutex<Outstanding>> = Default::default();
    let window = Arc::new(tokio::sync::Semaphore::new(cfg.window.max(1)));
    let out2 = outstanding.clone();
    let win2 = window.clone();
    let acks2 = acks.clone();
    let closed_loop = cfg.rate == 0;
    // The reader does not own the sink: pings are answered by the writer.
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let reader = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut nacks = 0u64;
        let mut frames = Vec::new();
        while let Some(m) = stream.next().await {
            let Ok(Message::Text(t)) = m else {
                if m.is_err() {
                    break;
                }
                continue;
            };
            frames.clear();
            decode(proto, t.as_str(), &mut frames);
            for f in &frames {
                let done = match f.kind.as_str() {
                    "publish_ack" => {
                        let taken = out2.lock().unwrap_or_else(|p| p.into_inner()).take(f);
                        if let Some((ch, id)) = taken {
                            acked.push((ch, id, Instant::now(), f.seq));
                            acks2.fetch_add(1, Ordering::Relaxed);
                        }
                        true
                    }
                    // A refused publish (Centrifugo: an error reply to it).
                    "publish_nack" | "error" => {
                        let taken = out2.lock().unwrap_or_else(|p| p.into_inner()).take(f);
                        nacks += u64::from(taken.is_some() || f.kind == "publish_nack");
                        taken.is_some() || f.kind == "publish_nack"
                    }
                    "ping" => {
                        let _ = pong_tx.send(());
                        false
                    }
                    _ => false,
                };
                if done && closed_loop {
                    win2.add_permits(1);
                }
            }
            let idle = out2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_id
                .is_empty();
            if idle && win2.is_closed() {
                break;
            }
        }
        (acked, nacks)
    });
    let started = Instant::now();
    let started_ns = now_ns();
    let mut lag = Duration::ZERO;
    let mut sent = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate_each.max(1e-9));
    let mut n = index;
    while started.elapsed() < cfg.duration {
        if closed_loop {
            match window.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
        }
        // Open loop: the schedule does not wait for answers, and a message's
        // latency is counted from when it was due, not from when the
        // generator got to send it (no coordinated omission: a stall of
        // the generator or the server shows in the latency of every message
        // it delayed). Closed loop: from the send.
        let stamp = if closed_loop {
            now_ns()
        } else {
            let due = period.mul_f64(sent as f64);
            tokio::time::sleep_until((started + due).into()).await;
            lag = lag.max(started.elapsed().saturating_sub(due));
            started_ns + due.as_nanos() as u64
        };
        while pong_rx.try_recv().is_ok() {
            sink.send(Message::text(pong_frame(proto))).await?;
        }
        let ch = &channels[n % channels.len()];
        n += cfg.publishers;
        let id = Uuid::new_v4();
        // Command ids 1 (connect) and 2.. (subscribes) are taken.
        let cmd = (sent as u32).wrapping_add(1000);
        {
            let mut o = outstanding.lock().unwrap_or_else(|p| p.into_inner());
            o.by_id.insert(id, ch.clone());
            if proto == Proto::Centrifugo {
                o.by_cmd.insert(cmd, id);
            }
        }
        let frame = publish_frame(proto, ch, id, stamp, &pad, cmd);
        sink.send(Message::text(frame)).await?;
        sent += 1;
    }
    // Wait for the last answers.
    let deadline = Instant::now() + cfg.drain;
    while !outstanding
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .by_id
        .is_empty()
        && Instant::now() < deadline
    {
        while pong_rx.try_recv().is_ok() {
            sink.send(Message::text(pong_frame(proto))).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    window.close();
    let _ = sink.close().await;
    let (acked, nacks) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .map_err(|_| anyhow!("publisher reader did not finish"))??;
    Ok(PubResult {
        acked,
        nacks,
        sent,
        lag,
    })
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
    // Bytes of the text frames the subscribers got once subscribed.
    let wire = Arc::new(AtomicU64::new(0));
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
            wire.clone(),
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
        let url = cfg.publish_url.as_deref().unwrap_or(&cfg.url);
        let ws = connect_proto(url, source(cfg.subscribers + i), cfg.proto).await?;
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
    let cpu_at_start = crate::report::process_cpu_secs();
    let server_cpu_at_start = cfg.server_pid.and_then(crate::report::pid_cpu_secs);
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
    let (mut sent, mut nacks, mut lag) = (0u64, 0u64, Duration::ZERO);
    for p in pubs_done {
        let r = p.await??;
        sent += r.sent;
        nacks += r.nacks;
        lag = lag.max(r.lag);
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
        for (id, seq) in r.seqs {
            verifier.delivered_seq(id, seq);
        }
        verifier.subscriber(r.channels, r.got);
    }
    progress.done();
    let totals = verifier.totals();
    let mut report = Report::new(
        cfg.proto.label(),
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
    );
    report.schedule_lag_ms = lag.as_secs_f64() * 1000.0;
    report.client_cpu_secs = crate::report::process_cpu_secs() - cpu_at_start;
    report.wire_bytes = wire.load(Ordering::Relaxed);
    if let (Some(pid), Some(at_start)) = (cfg.server_pid, server_cpu_at_start) {
        report.server_cpu_secs = crate::report::pid_cpu_secs(pid).map(|now| now - at_start);
    }
    Ok(report)
}

fn cfg_summary(cfg: &GenConfig) -> serde_json::Value {
    serde_json::json!({
        "url": cfg.url,
        "publish_url": cfg.publish_url,
        "subscribers": cfg.subscribers,
        "channels": cfg.channels,
        "publishers": cfg.publishers,
        "rate": cfg.rate,
        "window": cfg.window,
        "duration_secs": cfg.duration.as_secs_f64(),
        "size": cfg.size,
    })
}
