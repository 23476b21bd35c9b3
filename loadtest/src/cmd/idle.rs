//! `idle`: P3, memory per idle subscribed connection; with `fanout`, P8
//! (loadtest/p8.sh): the same connections split over processes, one message
//! fanned out to all of them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use herald_loadtest::gen::{self, GenConfig};

use super::source_ips;

/// P3: N connections subscribe (connection i to channel i % channels),
/// each receives one message, then all sit idle answering pings for
/// --hold-secs; prints `open K of N` and holds them until killed, so a
/// script can read the server's memory. Exits 1 if any closed.
#[derive(Args)]
pub struct IdleArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// herald (also the WebSocket floor), socketio or centrifugo.
    #[arg(long, default_value = "herald")]
    pub proto: String,
    #[arg(long, default_value_t = 5000)]
    pub connections: usize,
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Idle time after the message (several ping intervals: herald
    /// pings every 20 s, Centrifugo every 25 s).
    #[arg(long, default_value_t = 80)]
    pub hold_secs: u64,
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Channel names are `{prefix}0` .. (default: a fresh prefix per run;
    /// P8's processes share one).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// After the idle time, print `fanout ID received N p50_ms X last_ms Y`
    /// for every message all N connections received (P8).
    #[arg(long)]
    pub watch_fanouts: bool,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// P8's publisher: `count` publishes to one channel, `gap_ms` apart, each
/// stamped with its send time; prints `published ID` for each once all are
/// acked.
#[derive(Args)]
pub struct FanoutArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    #[arg(long, default_value = "herald")]
    pub proto: String,
    #[arg(long)]
    pub channel: String,
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    #[arg(long, default_value_t = 2000)]
    pub gap_ms: u64,
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
}

/// `fanout`.
pub async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let channels = vec![args.channel; args.count];
    let ids = herald_loadtest::idle::publish_each(
        &args.url,
        args.source_ip,
        gen::Proto::parse(&args.proto)?,
        &channels,
        Duration::from_millis(args.gap_ms),
    )
    .await?;
    for id in ids {
        println!("published {id}");
    }
    Ok(())
}

/// `idle`.
pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let IdleArgs {
        url,
        proto,
        connections,
        channels,
        hold_secs,
        source_ips: ips,
        channel_prefix,
        watch_fanouts,
        json,
    } = args;
    let (r, held) = herald_loadtest::idle::run(herald_loadtest::idle::IdleConfig {
        url,
        proto: gen::Proto::parse(&proto)?,
        connections,
        channels,
        hold: Duration::from_secs(hold_secs),
        source_ips: source_ips(&ips)?,
        channel_prefix: channel_prefix.unwrap_or(GenConfig::default().channel_prefix),
        watch_fanouts,
    })
    .await?;
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
    }
    println!(
        "open {} of {} after {} s idle (subscribed {} in {:.1} s, received {})",
        r.open, r.connections, r.hold_secs, r.subscribed, r.subscribe_secs, r.received
    );
    if r.open < r.connections as u64 {
        held.release().await;
        anyhow::bail!(
            "{} connections closed while idle",
            r.connections as u64 - r.open
        );
    }
    tokio::signal::ctrl_c().await?;
    held.release().await;
    Ok(())
}
