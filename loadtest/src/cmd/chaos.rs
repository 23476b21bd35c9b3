//! `chaos`: the randomized fault checker (`herald_loadtest::chaos`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// The randomized fault checker: starts `--nodes` herald nodes, runs
/// publishers and subscribers across them while a seeded nemesis kills,
/// restarts and pauses nodes and (with --cluster-script) brokers and cuts
/// connections, then checks every operation against the topic. Exits 1
/// when the check finds a problem; the seed replays the schedule.
#[derive(Args)]
pub struct ChaosArgs {
    /// The herald binary.
    #[arg(long, default_value = "target/debug/herald")]
    pub herald_bin: PathBuf,
    #[arg(
        long,
        default_value = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
    )]
    pub brokers: String,
    /// infra/dev/cluster.sh, for broker faults (leave out: herald nodes
    /// and connections only).
    #[arg(long)]
    pub cluster_script: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    #[arg(long, default_value_t = 4)]
    pub channels: usize,
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Seconds of faults (then heal and check).
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// The schedule's seed (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Milliseconds between publishes of one publisher.
    #[arg(long, default_value_t = 20)]
    pub pace_ms: u64,
    /// Extra `herald serve` arguments, e.g. "--replication 3
    /// --min-insync-replicas 2".
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub herald_args: Vec<String>,
}

/// `chaos`.
pub async fn chaos(a: ChaosArgs) -> anyhow::Result<()> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("chaos: seed {seed}");
    let report = herald_loadtest::chaos::run(herald_loadtest::chaos::ChaosConfig {
        herald_bin: a.herald_bin,
        brokers: a.brokers,
        cluster_script: a.cluster_script,
        nodes: a.nodes,
        channels: a.channels,
        subscribers: a.subscribers,
        duration: Duration::from_secs(a.secs),
        seed,
        pace: Duration::from_millis(a.pace_ms),
        herald_args: a
            .herald_args
            .into_iter()
            .filter(|x| !x.is_empty())
            .collect(),
        topic_prefix: format!("chaos-{seed}."),
    })
    .await?;
    println!("{}", report.summary());
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}
