//! One module per command family of `herald-loadtest`; what they share
//! (the load options, the strict verdict, ratios, JSON output) is here.

pub mod chaos;
pub mod compare;
pub mod idle;
pub mod plot;
pub mod resume;
pub mod runs;
pub mod servers;
pub mod storm;
pub mod sweep;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herald_loadtest::gen::GenConfig;
use herald_loadtest::kafkafloor::FloorConfig;
use herald_loadtest::report::Report;
use herald_loadtest::verify::Strict;

#[derive(Args, Clone)]
pub struct Load {
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Channels (subscriber i takes channel i % channels).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Total publishes per second, open loop (0: closed loop with --window).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Publishes in flight per publisher when --rate is 0.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Source addresses to spread connections over, e.g. 127.0.0.1-127.0.0.8.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Seconds to wait for the last deliveries.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Write the report(s) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Kafka floor: use this existing topic instead of creating one (for
    /// brokers that refuse CreateTopics, like librdkafka's mock cluster).
    #[arg(long)]
    pub floor_topic: Option<String>,
    /// Fail unless at least this many publishes were acked (each side of a
    /// comparison). Default: half of rate x duration (open loop), or
    /// duration x 10 (closed loop).
    #[arg(long)]
    pub min_acked: Option<u64>,
    /// Comparisons: baseline and herald alternate (A B A B ...) this many
    /// pairs; the median ratio and its spread are reported.
    #[arg(long, default_value_t = 1)]
    pub pairs: usize,
}

impl Load {
    pub(crate) fn strict(&self) -> Strict {
        let min_acked = self.min_acked.unwrap_or(if self.rate == 0 {
            self.duration_secs * 10
        } else {
            self.rate as u64 * self.duration_secs / 2
        });
        Strict { min_acked }
    }
}

/// Fails the run when `r` is not all of it, once, in order.
fn judge(r: &Report, load: &Load) -> anyhow::Result<()> {
    r.judge(load.strict())
        .map_err(|e| anyhow::anyhow!("strict verifier: {e}"))
}

/// Median and range of per-pair ratios.
fn summarize(ratios: &[f64]) -> serde_json::Value {
    let mut v: Vec<f64> = ratios.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return serde_json::json!(null);
    }
    let median = median(v.iter().copied());
    serde_json::json!({
        "median": (median * 1000.0).round() / 1000.0,
        "min": v[0],
        "max": v[v.len() - 1],
        "pairs": v,
    })
}

pub(crate) fn source_ips(spec: &Option<String>) -> anyhow::Result<Vec<IpAddr>> {
    let Some(s) = spec else {
        return Ok(Vec::new());
    };
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
        a.parse().context("--source-ips")?,
        b.parse().context("--source-ips")?,
    );
    Ok((u32::from(a)..=u32::from(b))
        .map(|n| IpAddr::V4(n.into()))
        .collect())
}

pub(crate) fn gen_cfg(url: &str, l: &Load) -> anyhow::Result<GenConfig> {
    Ok(GenConfig {
        url: url.to_owned(),
        subscribers: l.subscribers,
        channels: l.channels,
        publishers: l.publishers,
        rate: l.rate,
        window: l.window,
        duration: Duration::from_secs(l.duration_secs),
        size: l.size,
        source_ips: source_ips(&l.source_ips)?,
        drain: Duration::from_secs(l.drain_secs),
        ..GenConfig::default()
    })
}

pub(crate) fn floor_cfg(brokers: &str, fetch_wait_max_ms: u32, l: &Load) -> FloorConfig {
    FloorConfig {
        topic: l.floor_topic.clone(),
        brokers: brokers.to_owned(),
        rate: l.rate,
        window: l.window,
        duration: Duration::from_secs(l.duration_secs),
        size: l.size,
        fetch_wait_max_ms,
        progress: true,
    }
}

pub(crate) fn write_json(
    path: &Option<PathBuf>,
    reports: &[&Report],
    ratios: serde_json::Value,
) -> anyhow::Result<()> {
    if let Some(p) = path {
        let v = serde_json::json!({ "reports": reports, "ratios": ratios });
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        (a / b * 1000.0).round() / 1000.0
    }
}

/// The median of `v` (0 when empty).
pub(crate) fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
