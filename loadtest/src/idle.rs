//! P3: connections that subscribed to a channel and received a message, then
//! sit idle (answering pings) for several ping intervals; the caller
//! measures the server's memory while they are held open, and the report
//! says how many were still open, so a server that dropped idle connections
//! cannot look cheap.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    let (stop, stop_rx) = watch::channel(false);
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = JoinSet::new();
    for i in 0..cfg.connections {
        let (url, proto) = (cfg.url.clone(), cfg.proto);
        let src = source_for(&cfg.source_ips, i);
        let channel = channels[i % channels.len()].clone();
        let (subscribed, received, open) = (subscribed.clone(), received.clone(), open.clone());
        let (limit, mut stop) = (limit.clone(), stop_rx.clone());
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
                let mut frames = Vec::new();
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
    eprintln!("idle: {n} connections subscribed; one message per channel");
    publish_one_each(&cfg, &channels).await?;
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
    Ok((
        IdleReport {
            connections: cfg.connections,
            subscribed: subscribed.load(Ordering::Relaxed),
            received: received.load(Ordering::Relaxed),
            open: open.load(Ordering::Relaxed),
            hold_secs: cfg.hold.as_secs_f64(),
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

/// One publish per channel from a connection of its own, paced under
/// herald's default per-connection publish rate (1,000/s), every one
/// answered before it returns.
async fn publish_one_each(cfg: &IdleConfig, channels: &[String]) -> anyhow::Result<()> {
    let ws = connect_proto(
        &cfg.url,
        source_for(&cfg.source_ips, cfg.connections),
        cfg.proto,
    )
    .await
    .context("the publisher's connection")?;
    let (mut sink, mut stream) = ws.split();
    let proto = cfg.proto;
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
    for (i, ch) in channels.iter().enumerate() {
        let frame = publish_frame(
            proto,
            ch,
            Uuid::new_v4(),
            crate::now_ns(),
            "x",
            i as u32 + 1000,
        );
        sink.send(Message::text(frame)).await?;
        tokio::time::sleep(Duration::from_micros(1500)).await;
    }
    let acked = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("publish acks")??;
    let _ = sink.close().await;
    if acked < total {
        bail!("only {acked} of {total} publishes acked");
    }
    Ok(())
}
