//! P3: connections that subscribed to a channel and received a message, then
//! sit idle (answering pings) for several ping intervals; the caller
//! measures the server's memory while they are held open, and the report
//! says how many were still open, so a server that dropped idle connections
//! cannot look cheap.
//!
//! P8 uses the same connections, split over several processes (one process
//! may open at most 20,000 files here), all on one channel: with
//! `watch_fanouts` each process then counts the messages published after
//! its setup and prints, per message, when every one of its connections has
//! it and how long after the publisher sent it the last one did
//! ([`publish_each`] sends them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::gen::{channel_names, connect_proto, source_for, Proto};
use crate::proto::{decode, pong_frame, publish_frame, subscribe_frame};

/// One P3 run.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    pub url: String,
    pub proto: Proto,
    pub connections: usize,
    /// Connection `i` subscribes to channel `i % channels`.
    pub channels: usize,
    /// How long the connections sit idle after their message.
    pub hold: Duration,
    pub source_ips: Vec<IpAddr>,
    pub channel_prefix: String,
    /// After the idle time, count every message that arrives and print a
    /// `fanout` line once all of this process's connections have it (P8).
    pub watch_fanouts: bool,
}

/// What a run found.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    pub connections: usize,
    /// Connections whose subscription was confirmed.
    pub subscribed: u64,
    /// Connections that received the one message published on their channel.
    pub received: u64,
    /// Connections still open after the idle time.
    pub open: u64,
    pub hold_secs: f64,
    /// From the first connect to every connection subscribed.
    pub subscribe_secs: f64,
}

/// Arrivals of the messages published after setup, per message id.
struct Fanouts {
    /// This process's connections: a message is complete when all have it.
    expected: u64,
    by_id: Mutex<HashMap<Uuid, Vec<u64>>>,
}

impl Fanouts {
    /// One connection received message `id`, sent at `sent_ns`; prints
    /// `fanout ID received N p50_ms X last_ms Y` when it was the last one.
    fn arrive(&self, id: Uuid, sent_ns: u64) {
        let latency = crate::now_ns().saturating_sub(sent_ns);
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let arrivals = by_id.entry(id).or_default();
        arrivals.push(latency);
        if arrivals.len() as u64 == self.expected {
            arrivals.sort_unstable();
            let ms = |ns: u64| ns as f64 / 1e6;
            println!(
                "fanout {id} received {} p50_ms {:.3} last_ms {:.3}",
                arrivals.len(),
                ms(arrivals[arrivals.len() / 2]),
                ms(arrivals[arrivals.len() - 1])
            );
        }
    }
}

/// The connections, held open until [`Held::release`].
pub struct Held {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Held {
    /// Closes every connection.
    pub async fn release(mut self) {
        self.stop.send_replace(true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.tasks.join_next().await.is_some() {}
        self.tasks.abort_all();
    }
}

/// Opens, subscribes and feeds the connections, lets them idle, counts the
/// open ones; returns them still open.
pub async fn run(cfg: IdleConfig) -> anyhow::Result<(IdleReport, Held)> {
    if cfg.channels == 0 || cfg.connections == 0 {
        bail!("connections and channels must be at least 1");
    }
    let channels = channel_names(&cfg.channel_prefix, cfg.channels);
    let subscribed = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(AtomicBool::new(false));
    let fanouts = Arc::new(Fanouts {
        expected: cfg.connections as u64,
        by_id: Mutex::new(HashMap::new()),
    });
    let started = Instant::now();
    let (stop, stop_rx) = watch::channel(false);
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = JoinSet::new();
    for i in 0..cfg.connections {
        let (url, proto) = (cfg.url.clone(), cfg.proto);
        let src = source_for(&cfg.source_ips, i);
        let channel = channels[i % channels.len()].clone();
        let (subscribed, received, open) = (subscribed.clone(), received.clone(), open.clone());
        let (limit, mut stop) = (limit.clone(), stop_rx.clone());
        let (watching, fanouts) = (watching.clone(), fanouts.clone());
        tasks.spawn(async move {
            let ws = {
                let _p = limit.acquire_owned().await;
                connect_proto(&url, src, proto).await
            };
            let Ok(mut ws) = ws else { return };
            open.fetch_add(1, Ordering::Relaxed);
            if ws
                .send(Message::text(subscribe_frame(proto, &channel, 2)))
                .await
                .is_ok()
            {
                let (mut frames, mut seen) = (Vec::new(), Vec::new());
                loop {
                    tokio::select! {
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                        m = ws.next() => {
                            let Some(Ok(m)) = m else { break };
                            let Message::Text(t) = m else { continue };
                            frames.clear();
                            decode(proto, t.as_str(), &mut frames);
                            for f in &frames {
                                match f.kind.as_str() {
                                    "subscribed" => {
                                        subscribed.fetch_add(1, Ordering::Relaxed);
                                    }
                                    "message" if watching.load(Ordering::Relaxed) => {
                                        let (Some(id), Some(t)) = (f.id, f.t) else {
                                            continue;
                                        };
                                        if seen.contains(&id) {
                                            println!("fanout-duplicate {id}");
                                        } else {
                                            seen.push(id);
                                            fanouts.arrive(id, t);
                                        }
                                    }
                                    "message" => {
                                        received.fetch_add(1, Ordering::Relaxed);
                                    }
                                    "ping" => {
                                        let _ = ws.send(Message::text(pong_frame(proto))).await;
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
            let _ = ws.close(None).await;
        });
    }
    let n = cfg.connections as u64;
    wait_for(&subscribed, n, Duration::from_secs(300), "subscribed").await?;
    let subscribe_secs = started.elapsed().as_secs_f64();
    eprintln!("idle: {n} connections subscribed in {subscribe_secs:.1} s; one message per channel");
    let publisher = source_for(&cfg.source_ips, cfg.connections);
    publish_each(
        &cfg.url,
        publisher,
        cfg.proto,
        &channels,
        Duration::from_micros(1500),
    )
    .await?;
    wait_for(
        &received,
        n,
        Duration::from_secs(120),
        "received their message",
    )
    .await?;
    eprintln!(
        "idle: every connection received its message; idle for {} s",
        cfg.hold.as_secs()
    );
    tokio::time::sleep(cfg.hold).await;
    watching.store(cfg.watch_fanouts, Ordering::Relaxed);
    Ok((
        IdleReport {
            connections: cfg.connections,
            subscribed: subscribed.load(Ordering::Relaxed),
            received: received.load(Ordering::Relaxed),
            open: open.load(Ordering::Relaxed),
            hold_secs: cfg.hold.as_secs_f64(),
            subscribe_secs,
        },
        Held { stop, tasks },
    ))
}

async fn wait_for(counter: &AtomicU64, n: u64, within: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while counter.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} connections {what} within {} s",
                counter.load(Ordering::Relaxed),
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// One publish per entry of `channels` (a channel may repeat), `gap` apart,
/// from a connection of its own; every one answered before it returns the
/// ids in order. Paced under herald's default per-connection publish rate
/// (1,000/s) when the gap is 1 ms or more.
pub async fn publish_each(
    url: &str,
    source: Option<IpAddr>,
    proto: Proto,
    channels: &[String],
    gap: Duration,
) -> anyhow::Result<Vec<Uuid>> {
    let ws = connect_proto(url, source, proto)
        .await
        .context("the publisher's connection")?;
    let (mut sink, mut stream) = ws.split();
    let total = channels.len();
    let reader = tokio::spawn(async move {
        let (mut acked, mut frames) = (0usize, Vec::new());
        while acked < total {
            let Some(Ok(m)) = stream.next().await else {
                break;
            };
            let Message::Text(t) = m else { continue };
            frames.clear();
            decode(proto, t.as_str(), &mut frames);
            acked += frames.iter().filter(|f| f.kind == "publish_ack").count();
        }
        acked
    });
    let mut ids = Vec::with_capacity(total);
    for (i, ch) in channels.iter().enumerate() {
        let id = Uuid::new_v4();
        let frame = publish_frame(proto, ch, id, crate::now_ns(), "x", i as u32 + 1000);
        sink.send(Message::text(frame)).await?;
        ids.push(id);
        tokio::time::sleep(gap).await;
    }
    let acked = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("publish acks")??;
    let _ = sink.close().await;
    if acked < total {
        bail!("only {acked} of {total} publishes acked");
    }
    Ok(ids)
}
