//! P5, the reconnect storm: N subscribers on edge A, a publisher on edge B,
//! then A is killed (SIGKILL) and every subscriber reconnects to B and
//! resumes each channel with `since`. Measured: time from the kill until all
//! are subscribed again, and until all have every message acked before the
//! kill; and, over the whole run, lost and duplicated per channel.
//!
//! The subscribers behave like a careful client (herald-client's
//! `ChannelCursor`): a message at or below the last `seq` handed over is a
//! wire duplicate and is dropped (and counted); the verifier judges what was
//! handed over.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::gen::{self, GenConfig, Ws};
use crate::report::Progress;
use crate::verify::{ChannelCounts, Verifier};

/// One storm's shape.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// The edge the subscribers start on; it is killed.
    pub url_a: String,
    /// Its process id, for SIGKILL.
    pub pid_a: u32,
    /// The edge that survives: the publisher's, and where subscribers go.
    pub url_b: String,
    pub subscribers: usize,
    pub channels: usize,
    /// Publishes per second over all channels, for the whole run.
    pub rate: u32,
    /// Publishing before the kill.
    pub before: Duration,
    /// Publishing after the kill.
    pub after: Duration,
    /// Each subscriber waits a random time in `[0, jitter]` before its first
    /// reconnect (what a well-behaved client library does).
    pub jitter: Duration,
    pub size: usize,
    pub source_ips: Vec<IpAddr>,
    /// After publishing, how long to wait for the last deliveries.
    pub drain: Duration,
    pub channel_prefix: String,
    pub progress: bool,
    /// No witness subscribers on B: B follows none of the channels'
    /// partitions when the storm arrives (a cold edge).
    pub cold: bool,
}

/// What a storm measured.
#[derive(Clone, Debug, Serialize)]
pub struct StormReport {
    pub subscribers: usize,
    pub channels: usize,
    pub rate: u32,
    pub jitter_ms: u64,
    /// Seconds from the kill until every subscriber was subscribed on B.
    pub all_resubscribed_secs: f64,
    /// Seconds from the kill until every subscriber had every message acked
    /// before the kill (and was subscribed again).
    pub all_resumed_secs: f64,
    /// Per subscriber, seconds from the kill to resumed: percentiles.
    pub resumed_p50_secs: f64,
    pub resumed_p99_secs: f64,
    /// Connection attempts that failed during the storm (and were retried).
    pub failed_attempts: u64,
    /// Resumes B answered with `recovered: false`.
    pub not_recovered: u64,
    /// Messages dropped by the clients as already handed over (`seq` at or
    /// below their cursor): at-least-once on the wire, not application
    /// duplicates.
    pub wire_duplicates: u64,
    pub acked: u64,
    pub acked_before_kill: u64,
    pub totals: ChannelCounts,
}

impl StormReport {
    /// The storm's verdict: enough of a run to judge (messages acked
    /// before the kill and after it), every subscriber recovered, every
    /// acked message delivered once to each of its subscribers and in
    /// order, nothing sent twice on the wire (the clients drop a `seq` they
    /// already have, as an application's client would, but herald must not
    /// send one), nothing on a channel not subscribed to.
    pub fn verdict(&self) -> Result<(), String> {
        let t = &self.totals;
        let mut why = Vec::new();
        if self.acked_before_kill == 0 || self.acked <= self.acked_before_kill {
            why.push(format!(
                "nothing to judge: {} acked before the kill, {} in all",
                self.acked_before_kill, self.acked
            ));
        }
        for (n, what) in [
            (t.lost, "lost"),
            (t.duplicated, "duplicated"),
            (t.out_of_order, "out of order"),
            (t.misrouted, "on channels not subscribed to"),
            (self.not_recovered, "resumes not recovered"),
            (self.wire_duplicates, "sent twice on the wire"),
        ] {
            if n > 0 {
                why.push(format!("{n} {what}"));
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join(", "))
        }
    }

    pub fn print(&self) {
        println!(
            "storm: {} subscribers on {} channels, {} msg/s, reconnect jitter {} ms",
            self.subscribers, self.channels, self.rate, self.jitter_ms
        );
        println!(
            "  all resubscribed in {:.2} s; all resumed (caught up) in {:.2} s (per client p50 {:.2} s, p99 {:.2} s)",
            self.all_resubscribed_secs,
            self.all_resumed_secs,
            self.resumed_p50_secs,
            self.resumed_p99_secs
        );
        println!(
            "  failed connection attempts {}, not recovered {}, wire duplicates dropped {}",
            self.failed_attempts, self.not_recovered, self.wire_duplicates
        );
        let t = &self.totals;
        println!(
            "  acked {} ({} before the kill), expected deliveries {}, delivered {}, lost {}, duplicated {}",
            self.acked, self.acked_before_kill, t.expected, t.delivered, t.lost, t.duplicated
        );
    }
}

#[derive(Deserialize)]
struct Pos {
    seq: i64,
    epoch: String,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    position: Option<Pos>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    code: Option<String>,
}

/// One channel's resume point, as a client keeps it.
#[derive(Clone, Debug, Default)]
struct Cursor {
    seq: i64,
    epoch: String,
}

impl Cursor {
    fn since(&self) -> serde_json::Value {
        serde_json::json!({"seq": self.seq, "epoch": self.epoch})
    }
}

/// What one subscriber saw.
struct SubOutcome {
    channel: String,
    /// Ids handed over, with when.
    got: Vec<(Uuid, Instant)>,
    resubscribed: Option<Instant>,
    failed_attempts: u64,
    not_recovered: u64,
    wire_duplicates: u64,
}

struct Shared {
    killed: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
    url_b: String,
    jitter: Duration,
    subscribed: AtomicU64,
    resubscribed: AtomicU64,
    delivered: AtomicU64,
}

/// Subscribes `ws` to `channel` (from `cursor` when set) and waits for the
/// answer; returns the cursor to go on with and whether the server
/// recovered the position.
async fn subscribe(
    ws: &mut Ws,
    channel: &str,
    cursor: Option<&Cursor>,
) -> anyhow::Result<(Cursor, bool)> {
    let mut f = serde_json::json!({"type": "subscribe", "channel": channel});
    if let Some(c) = cursor {
        f["since"] = c.since();
    }
    ws.send(Message::text(f.to_string())).await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .map_err(|_| anyhow!("no `subscribed` within 60 s"))?;
        match m {
            Some(Ok(Message::Text(t))) => {
                let Ok(f) = serde_json::from_str::<Frame>(t.as_str()) else {
                    continue;
                };
                match f.kind.as_str() {
                    "subscribed" => {
                        let p = f.position.context("`subscribed` without a position")?;
                        let recovered = f.recovered.unwrap_or(false);
                        // As herald-client's ChannelCursor: the position
                        // replaces the cursor only when nothing was seen yet
                        // or the server could not recover a new epoch; after
                        // a recovered resume, replayed messages at or below
                        // the position follow.
                        let c = match cursor {
                            Some(old) if recovered || old.epoch == p.epoch => old.clone(),
                            _ => Cursor {
                                seq: p.seq,
                                epoch: p.epoch,
                            },
                        };
                        return Ok((c, recovered));
                    }
                    "error" => bail!("subscribe refused: {:?}", f.code),
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed before `subscribed`"),
        }
    }
}

/// Reads messages until the connection ends or the run stops. `Ok(true)`:
/// the run stopped; `Ok(false)`: the connection is gone.
async fn read(
    ws: &mut Ws,
    cursor: &mut Cursor,
    out: &mut SubOutcome,
    sh: &Shared,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    loop {
        let m = tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return true,
            m = ws.next() => m,
        };
        match m {
            Some(Ok(Message::Text(t))) => {
                let Ok(f) = serde_json::from_str::<Frame>(t.as_str()) else {
                    continue;
                };
                if f.kind != "message" {
                    continue;
                }
                let (Some(seq), Some(id)) = (f.seq, f.id) else {
                    continue;
                };
                let epoch = f.epoch.unwrap_or_default();
                if epoch == cursor.epoch && seq <= cursor.seq {
                    out.wire_duplicates += 1;
                    continue;
                }
                cursor.seq = seq;
                cursor.epoch = epoch;
                out.got.push((id, Instant::now()));
                sh.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return false,
        }
    }
}

async fn subscriber(
    mut ws: Ws,
    channel: String,
    source: Option<IpAddr>,
    sh: Arc<Shared>,
) -> anyhow::Result<SubOutcome> {
    let mut out = SubOutcome {
        channel: channel.clone(),
        got: Vec::new(),
        resubscribed: None,
        failed_attempts: 0,
        not_recovered: 0,
        wire_duplicates: 0,
    };
    let (mut cursor, _) = subscribe(&mut ws, &channel, None).await?;
    sh.subscribed.fetch_add(1, Ordering::Relaxed);
    let mut stop = sh.stop.clone();
    if read(&mut ws, &mut cursor, &mut out, &sh, &mut stop).await {
        return Ok(out);
    }
    drop(ws);
    // The edge is gone. Only the kill may do that.
    if !*sh.killed.borrow() {
        bail!("a subscriber lost its connection before the kill");
    }
    // Full jitter before the first attempt, then 50 ms doubling to 1 s,
    // jittered too.
    let mut attempt = 0u32;
    loop {
        let cap = if attempt == 0 {
            sh.jitter
        } else {
            Duration::from_millis((50u64 << attempt.min(5)).min(1000))
        };
        let nanos = cap.as_nanos() as u64;
        if nanos > 0 {
            let r = Uuid::new_v4().as_u128() as u64 % nanos;
            tokio::time::sleep(Duration::from_nanos(r)).await;
        }
        attempt += 1;
        let mut ws = match gen::connect(&sh.url_b, source).await {
            Ok(ws) => ws,
            Err(_) => {
                out.failed_attempts += 1;
                continue;
            }
        };
        match subscribe(&mut ws, &channel, Some(&cursor)).await {
            Ok((c, recovered)) => {
                if !recovered {
                    out.not_recovered += 1;
                }
                cursor = c;
            }
            Err(_) => {
                out.failed_attempts += 1;
                continue;
            }
        }
        out.resubscribed.get_or_insert_with(Instant::now);
        sh.resubscribed.fetch_add(1, Ordering::Relaxed);
        if read(&mut ws, &mut cursor, &mut out, &sh, &mut stop).await {
            let _ = ws.close(None).await;
            return Ok(out);
        }
        bail!("a subscriber lost its connection to the surviving edge");
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs one storm and judges it.
pub async fn run(cfg: StormConfig) -> anyhow::Result<StormReport> {
    if cfg.channels == 0 || cfg.subscribers == 0 {
        bail!("channels and subscribers must be at least 1");
    }
    let channels = gen::channel_names(&cfg.channel_prefix, cfg.channels);
    let source = |i: usize| gen::source_for(&cfg.source_ips, i);
    let (kill_tx, killed) = tokio::sync::watch::channel(false);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sh = Arc::new(Shared {
        killed,
        stop,
        url_b: cfg.url_b.clone(),
        jitter: cfg.jitter,
        subscribed: AtomicU64::new(0),
        resubscribed: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    });

    // Everyone on A, subscribed, before anything is published. Unless the
    // run is cold, one more subscriber per channel on B, which stays: B has
    // live subscribers on the channels, as in any deployment with more than
    // one edge.
    let witnesses = if cfg.cold { 0 } else { cfg.channels };
    let conn_limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut conns = Vec::with_capacity(cfg.subscribers + witnesses);
    for i in 0..cfg.subscribers + witnesses {
        let url = if i < cfg.subscribers {
            cfg.url_a.clone()
        } else {
            cfg.url_b.clone()
        };
        let src = source(i);
        let permit = conn_limit.clone();
        conns.push(tokio::spawn(async move {
            let _p = permit.acquire_owned().await;
            gen::connect(&url, src).await
        }));
    }
    let mut subs = Vec::with_capacity(conns.len());
    for (i, c) in conns.into_iter().enumerate() {
        let ws = c.await??;
        subs.push(tokio::spawn(subscriber(
            ws,
            channels[i % channels.len()].clone(),
            source(i),
            sh.clone(),
        )));
    }
    let all = subs.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sh.subscribed.load(Ordering::Relaxed) < all {
        if let Some(i) = subs.iter().position(|s| s.is_finished()) {
            subs.swap_remove(i).await??;
            bail!("a subscriber ended before the run started");
        }
        if Instant::now() > deadline {
            bail!("not all {all} subscribed within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let acks = Arc::new(AtomicU64::new(0));
    let pub_cfg = GenConfig {
        url: cfg.url_b.clone(),
        channels: cfg.channels,
        publishers: 1,
        rate: cfg.rate,
        duration: cfg.before + cfg.after,
        size: cfg.size,
        drain: cfg.drain,
        channel_prefix: cfg.channel_prefix.clone(),
        ..GenConfig::default()
    };
    let ws = gen::connect(&cfg.url_b, source(cfg.subscribers + witnesses)).await?;
    let publisher = tokio::spawn(gen::publisher(
        ws,
        0,
        channels.clone(),
        pub_cfg,
        cfg.rate as f64,
        acks.clone(),
    ));
    let started = Instant::now();
    let mut progress = Progress::new(cfg.progress);
    while started.elapsed() < cfg.before {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.tick(
            started.elapsed(),
            acks.load(Ordering::Relaxed),
            sh.delivered.load(Ordering::Relaxed),
        );
    }
    // Whatever was acked up to now must reach everyone.
    kill_tx.send_replace(true);
    let killed_at = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &cfg.pid_a.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -KILL {} failed", cfg.pid_a);
    }
    if cfg.progress {
        eprintln!("storm: edge A (pid {}) killed", cfg.pid_a);
    }
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.tick(
            started.elapsed(),
            acks.load(Ordering::Relaxed),
            sh.delivered.load(Ordering::Relaxed),
        );
        if cfg.progress && sh.resubscribed.load(Ordering::Relaxed) < cfg.subscribers as u64 {
            eprintln!(
                "storm: {} of {} resubscribed",
                sh.resubscribed.load(Ordering::Relaxed),
                cfg.subscribers
            );
        }
    }
    let published = publisher.await??;
    let mut verifier = Verifier::new();
    let mut acked_before: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (ch, id, at, seq) in &published.acked {
        match seq {
            Some(seq) => verifier.acked_seq(ch, *id, *seq),
            None => verifier.acked(ch, *id),
        }
        if *at <= killed_at {
            let ch = channels.iter().find(|c| *c == ch).map(String::as_str);
            if let Some(ch) = ch {
                acked_before.entry(ch).or_default().push(*id);
            }
        }
    }
    let per_channel: HashMap<&str, u64> = verifier
        .report()
        .iter()
        .filter_map(|(ch, c)| {
            channels
                .iter()
                .find(|x| *x == ch)
                .map(|x| (x.as_str(), c.acked))
        })
        .collect();
    let expected: u64 = (0..cfg.subscribers + witnesses)
        .map(|i| {
            per_channel
                .get(channels[i % channels.len()].as_str())
                .copied()
                .unwrap_or(0)
        })
        .sum();
    let deadline = Instant::now() + cfg.drain;
    while sh.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send_replace(true);
    progress.done();

    let mut resumed = Vec::with_capacity(cfg.subscribers);
    let mut resubscribed_max = 0.0f64;
    let (mut failed, mut not_recovered, mut wire_dups) = (0, 0, 0);
    for (i, s) in subs.into_iter().enumerate() {
        let o = s.await.map_err(|e| anyhow!("subscriber task: {e}"))??;
        failed += o.failed_attempts;
        not_recovered += o.not_recovered;
        wire_dups += o.wire_duplicates;
        if i < cfg.subscribers {
            // Resumed: subscribed on B and holding every message acked before
            // the kill.
            let Some(back) = o.resubscribed else {
                bail!("subscriber {i} never resubscribed");
            };
            let since_kill = |t: Instant| t.saturating_duration_since(killed_at).as_secs_f64();
            resubscribed_max = resubscribed_max.max(since_kill(back));
            let when: HashMap<Uuid, Instant> = o.got.iter().copied().collect();
            let mut done = since_kill(back);
            for id in acked_before.get(o.channel.as_str()).into_iter().flatten() {
                // A missing one is counted as lost by the verifier.
                if let Some(t) = when.get(id) {
                    done = done.max(since_kill(*t));
                }
            }
            resumed.push(done);
        }
        let mut got: HashMap<String, Vec<Uuid>> = HashMap::new();
        got.insert(
            o.channel.clone(),
            o.got.into_iter().map(|(id, _)| id).collect(),
        );
        verifier.subscriber(vec![o.channel], got);
    }
    resumed.sort_by(f64::total_cmp);
    Ok(StormReport {
        subscribers: cfg.subscribers,
        channels: cfg.channels,
        rate: cfg.rate,
        jitter_ms: cfg.jitter.as_millis() as u64,
        all_resubscribed_secs: resubscribed_max,
        all_resumed_secs: resumed.last().copied().unwrap_or(0.0),
        resumed_p50_secs: percentile(&resumed, 0.5),
        resumed_p99_secs: percentile(&resumed, 0.99),
        failed_attempts: failed,
        not_recovered,
        wire_duplicates: wire_dups,
        acked: published.acked.len() as u64,
        acked_before_kill: acked_before.values().map(|v| v.len() as u64).sum(),
        totals: verifier.totals(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_storm_or_a_wire_duplicate_fails_the_verdict() {
        let ok = StormReport {
            subscribers: 1,
            channels: 1,
            rate: 1,
            jitter_ms: 0,
            all_resubscribed_secs: 1.0,
            all_resumed_secs: 1.0,
            resumed_p50_secs: 1.0,
            resumed_p99_secs: 1.0,
            failed_attempts: 0,
            not_recovered: 0,
            wire_duplicates: 0,
            acked: 10,
            acked_before_kill: 5,
            totals: ChannelCounts::default(),
        };
        assert_eq!(ok.verdict(), Ok(()));
        let empty = StormReport {
            acked: 0,
            acked_before_kill: 0,
            ..ok.clone()
        };
        assert!(empty.verdict().unwrap_err().contains("nothing to judge"));
        let twice = StormReport {
            wire_duplicates: 1,
            ..ok.clone()
        };
        assert!(twice.verdict().unwrap_err().contains("sent twice"));
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn frames_parse_as_the_server_sends_them() {
        let id = Uuid::new_v4();
        let m: Frame = serde_json::from_str(&format!(
            r#"{{"type":"message","channel":"chat:a","seq":7,"epoch":"e1","id":"{id}","ts":1,"data":{{}}}}"#
        ))
        .unwrap();
        assert_eq!(
            (m.seq, m.id, m.epoch.as_deref()),
            (Some(7), Some(id), Some("e1"))
        );
        let s: Frame = serde_json::from_str(
            r#"{"type":"subscribed","channel":"chat:a","position":{"seq":6,"epoch":"e1"},"recovered":true}"#,
        )
        .unwrap();
        let p = s.position.unwrap();
        assert_eq!(
            (p.seq, p.epoch.as_str(), s.recovered),
            (6, "e1", Some(true))
        );
    }
}
