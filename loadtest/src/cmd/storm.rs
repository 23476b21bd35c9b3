//! `storm`: P5, a reconnect storm onto another edge.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use herald_loadtest::gen::GenConfig;

use super::source_ips;

/// P5: subscribers on edge A, a publisher on edge B; A is killed and
/// every subscriber resumes on B. Time to all resumed, lost, duplicated.
#[derive(Args)]
pub struct StormArgs {
    /// The edge the subscribers start on (it is killed).
    #[arg(long)]
    pub url_a: String,
    /// Edge A's process id.
    #[arg(long)]
    pub pid_a: u32,
    /// The surviving edge.
    #[arg(long)]
    pub url_b: String,
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Publishes per second over all channels, for the whole run.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Seconds of publishing before the kill.
    #[arg(long, default_value_t = 5)]
    pub before_secs: u64,
    /// Seconds of publishing after the kill.
    #[arg(long, default_value_t = 15)]
    pub after_secs: u64,
    /// Each client's first reconnect waits a random time up to this.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long)]
    pub source_ips: Option<String>,
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
    /// No witness subscribers on the surviving edge: it follows none of
    /// the channels when the storm arrives.
    #[arg(long)]
    pub cold: bool,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `storm`.
pub async fn storm(a: StormArgs) -> anyhow::Result<()> {
    let r = herald_loadtest::storm::run(herald_loadtest::storm::StormConfig {
        source_ips: source_ips(&a.source_ips)?,
        url_a: a.url_a,
        pid_a: a.pid_a,
        url_b: a.url_b,
        subscribers: a.subscribers,
        channels: a.channels,
        rate: a.rate,
        before: Duration::from_secs(a.before_secs),
        after: Duration::from_secs(a.after_secs),
        jitter: Duration::from_millis(a.jitter_ms),
        size: a.size,
        drain: Duration::from_secs(a.drain_secs),
        channel_prefix: GenConfig::default().channel_prefix,
        progress: true,
        cold: a.cold,
    })
    .await?;
    r.print();
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
    }
    r.verdict().map_err(|e| anyhow::anyhow!("storm: {e}"))
}
