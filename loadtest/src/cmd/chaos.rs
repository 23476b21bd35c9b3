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
        herald_args: nonempty(a.herald_args),
        topic_prefix: format!("chaos-{seed}."),
        soak: None,
    })
    .await?;
    println!("{}", report.summary());
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// The soak: the chaos checker's clients without faults for `--secs`, with
/// resumes, history and presence churn, sampling the nodes every
/// `--sample-secs`; exits 1 when anything was lost or a measure kept
/// growing after warm-up (`herald_loadtest::soak`).
#[derive(Args)]
pub struct SoakArgs {
    /// The herald binary.
    #[arg(long, default_value = "target/debug/herald")]
    pub herald_bin: PathBuf,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 3600)]
    pub secs: u64,
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Seconds between cuts of every subscriber but the first (resumes).
    #[arg(long, default_value_t = 30)]
    pub cut_secs: u64,
    /// The part of the run left out of the growth check.
    #[arg(long, default_value_t = 0.25)]
    pub warmup: f64,
    /// Milliseconds between publishes of one publisher.
    #[arg(long, default_value_t = 20)]
    pub pace_ms: u64,
    /// Where to write the samples (CSV) and their plot (SVG, same name).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub herald_args: Vec<String>,
}

/// `soak`.
pub async fn soak(a: SoakArgs) -> anyhow::Result<()> {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let report = herald_loadtest::chaos::run(herald_loadtest::chaos::ChaosConfig {
        herald_bin: a.herald_bin,
        brokers: a.brokers,
        cluster_script: None,
        nodes: a.nodes,
        channels: a.channels,
        subscribers: a.subscribers.max(2),
        duration: Duration::from_secs(a.secs),
        seed: 0,
        pace: Duration::from_millis(a.pace_ms),
        herald_args: nonempty(a.herald_args),
        topic_prefix: format!("soak-{started}."),
        soak: Some(herald_loadtest::soak::SoakConfig {
            sample_every: Duration::from_secs(a.sample_secs.max(1)),
            cut_every: Duration::from_secs(a.cut_secs.max(1)),
            warmup: a.warmup.clamp(0.0, 0.9),
        }),
    })
    .await?;
    if let Some(out) = &a.out {
        std::fs::write(out, herald_loadtest::soak::csv(&report.samples))?;
        let title = format!(
            "soak: {} nodes, {} s, RSS (all nodes) and delivery p99",
            a.nodes, a.secs
        );
        std::fs::write(
            out.with_extension("svg"),
            herald_loadtest::soak::plot(&title, &report.samples),
        )?;
    }
    println!(
        "{}\nsoak {}",
        report.summary(),
        herald_loadtest::soak::summary(&report.samples, report.browsed)
    );
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// `--herald-args` split on spaces, without the empty pieces of doubled
/// spaces.
fn nonempty(args: Vec<String>) -> Vec<String> {
    args.into_iter().filter(|x| !x.is_empty()).collect()
}
