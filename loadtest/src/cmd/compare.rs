//! The comparisons: baseline and herald alternating, the median ratio.

use anyhow::Context;
use clap::Args;
use herald_loadtest::gen::{self, GenConfig};
use herald_loadtest::report::Report;
use herald_loadtest::wsfloor;

use super::runs::KafkaFloorArgs;
use super::{gen_cfg, judge, ratio, summarize, write_json, Load};

/// P1/P6: the bare Kafka floor (in a child process), then herald, same
/// rate (or window), one
/// subscriber; prints both and the ratios.
#[derive(Args)]
pub struct VsKafkaArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// The floor's broker and reader setting, and the load of both sides.
    #[command(flatten)]
    pub floor: KafkaFloorArgs,
}

/// `vs-kafka`.
pub async fn vs_kafka(args: VsKafkaArgs) -> anyhow::Result<()> {
    let VsKafkaArgs { url, floor } = args;
    let KafkaFloorArgs {
        brokers,
        fetch_wait_max_ms,
        load,
    } = floor;
    let one = Load {
        subscribers: 1,
        channels: 1,
        ..load.clone()
    };
    let mut runs: Vec<Report> = Vec::new();
    let (mut p50, mut p99, mut p999, mut acks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for pair in 0..load.pairs.max(1) {
        // The floor runs in a child process that judges itself
        // strictly (it exits non-zero otherwise); judged here too.
        let run_floor = async {
            let floor = floor_in_child(&brokers, fetch_wait_max_ms, &load).await?;
            judge(&floor, &load)?;
            println!();
            anyhow::Ok(floor)
        };
        let run_herald = async {
            let h = gen::run(gen_cfg(&url, &one)?).await?;
            h.print();
            judge(&h, &one)?;
            println!();
            anyhow::Ok(h)
        };
        let (floor, h) = in_order(pair, load.pairs, "the floor", run_floor, run_herald).await?;
        p50.push(ratio(h.latency.p50_ms, floor.latency.p50_ms));
        p99.push(ratio(h.latency.p99_ms, floor.latency.p99_ms));
        p999.push(ratio(h.latency.p999_ms, floor.latency.p999_ms));
        acks.push(ratio(h.acks_per_sec, floor.acks_per_sec));
        runs.push(floor);
        runs.push(h);
    }
    let ratios = serde_json::json!({
        "p50": summarize(&p50),
        "p99": summarize(&p99),
        "p999": summarize(&p999),
        "acks_per_sec": summarize(&acks),
    });
    println!("herald / kafka floor: {ratios}");
    let refs: Vec<&Report> = runs.iter().collect();
    write_json(&load.json, &refs, ratios)?;
    Ok(())
}

/// P2 against the peer: Socket.IO 4 (loadtest/socketio, Redis Streams
/// adapter, started by bench.sh), then herald, same fan-out; prints both
/// and the ratio of deliveries per second.
#[derive(Args)]
pub struct VsSocketioArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// The Socket.IO server's WebSocket URL (printed by server.js).
    #[arg(long)]
    pub sio_url: String,
    #[command(flatten)]
    pub load: Load,
}

/// `vs-socketio`.
pub async fn vs_socketio(args: VsSocketioArgs) -> anyhow::Result<()> {
    let VsSocketioArgs { url, sio_url, load } = args;
    let base = GenConfig {
        proto: gen::Proto::SocketIo,
        ..gen_cfg(&sio_url, &load)?
    };
    fan_out_vs(base, "socket.io", gen_cfg(&url, &load)?, &load).await?;
    Ok(())
}

/// Against the strongest peer: Centrifugo v6 (loadtest/centrifugo, Redis
/// engine with history and recovery, started by bench.sh), then herald,
/// same load, alternating; prints both and the median ratios.
#[derive(Args)]
pub struct VsCentrifugoArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Centrifugo's WebSocket URL (printed by loadtest/centrifugo/start.sh).
    #[arg(long)]
    pub cf_url: String,
    #[command(flatten)]
    pub load: Load,
}

/// `vs-centrifugo`.
pub async fn vs_centrifugo(args: VsCentrifugoArgs) -> anyhow::Result<()> {
    let VsCentrifugoArgs { url, cf_url, load } = args;
    let base = GenConfig {
        proto: gen::Proto::Centrifugo,
        ..gen_cfg(&cf_url, &load)?
    };
    fan_out_vs(base, "centrifugo", gen_cfg(&url, &load)?, &load).await?;
    Ok(())
}

/// Fan-out across two edge nodes of one cluster: subscribers on edge A
/// and publishers on edge B, against everyone on edge A (the baseline),
/// alternating pairs, strict verifier.
#[derive(Args)]
pub struct VsEdgesArgs {
    /// Edge A: the subscribers (and the baseline's publishers).
    #[arg(long)]
    pub url: String,
    /// Edge B: the publishers of the two-edge runs.
    #[arg(long)]
    pub url_b: String,
    #[command(flatten)]
    pub load: Load,
}

/// `vs-edges`.
pub async fn vs_edges(args: VsEdgesArgs) -> anyhow::Result<()> {
    let VsEdgesArgs { url, url_b, load } = args;
    let two = GenConfig {
        publish_url: Some(url_b),
        ..gen_cfg(&url, &load)?
    };
    fan_out_vs(gen_cfg(&url, &load)?, "one-edge", two, &load).await?;
    Ok(())
}

/// P2: the bare WebSocket floor (in process), then herald, same fan-out;
/// prints both and the ratio of deliveries per second.
#[derive(Args)]
pub struct VsWsArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// A floor already running (`ws-floor-server`, its own process);
    /// without it the floor runs inside this process, which then holds
    /// both ends of every floor connection.
    #[arg(long)]
    pub floor_url: Option<String>,
    /// The floor's name in the report and charts (`ws-kafka-floor` for
    /// `ws-floor-server --kafka`).
    #[arg(long, default_value = "ws-floor")]
    pub floor_label: String,
    #[command(flatten)]
    pub load: Load,
}

/// `vs-ws`.
pub async fn vs_ws(args: VsWsArgs) -> anyhow::Result<()> {
    let VsWsArgs {
        url,
        floor_url,
        floor_label,
        load,
    } = args;
    let floor_url = match floor_url {
        Some(u) => u,
        None => format!(
            "ws://{}/ws",
            wsfloor::serve("127.0.0.1:0".parse()?, false, None).await?
        ),
    };
    let base = gen_cfg(&floor_url, &load)?;
    fan_out_vs(base, &floor_label, gen_cfg(&url, &load)?, &load).await?;
    Ok(())
}

/// The bare Kafka floor, run by this same program as a child process
/// (`kafka-floor`), its report read back from JSON: the floor's librdkafka
/// clients (and their threads) never share the generator's process with the
/// herald run that follows.
async fn floor_in_child(
    brokers: &str,
    fetch_wait_max_ms: u32,
    load: &Load,
) -> anyhow::Result<Report> {
    let json = std::env::temp_dir().join(format!("herald-floor-{}.json", uuid::Uuid::new_v4()));
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("kafka-floor")
        .args(["--brokers", brokers])
        .args(["--fetch-wait-max-ms", &fetch_wait_max_ms.to_string()])
        .args(["--rate", &load.rate.to_string()])
        .args(["--window", &load.window.to_string()])
        .args(["--duration-secs", &load.duration_secs.to_string()])
        .args(["--size", &load.size.to_string()])
        .args(["--min-acked", &load.strict().min_acked.to_string()])
        .arg("--json")
        .arg(&json);
    if let Some(t) = &load.floor_topic {
        cmd.args(["--floor-topic", t]);
    }
    let status = cmd.status().await.context("running the kafka floor")?;
    if !status.success() {
        anyhow::bail!("the kafka floor failed: {status}");
    }
    let text = std::fs::read_to_string(&json).context("the kafka floor's report")?;
    let _ = std::fs::remove_file(&json);
    #[derive(serde::Deserialize)]
    struct Out {
        reports: Vec<Report>,
    }
    let out: Out = serde_json::from_str(&text).context("the kafka floor's report")?;
    out.reports
        .into_iter()
        .next()
        .context("the kafka floor wrote no report")
}

/// Runs pair `pair` (of `pairs`) of a comparison: the baseline (`label`)
/// and herald, counterbalanced: the baseline first in even pairs, herald
/// first in odd ones, so neither side always runs on a warmer machine.
/// Returns (baseline, herald).
async fn in_order(
    pair: usize,
    pairs: usize,
    label: &str,
    base: impl std::future::Future<Output = anyhow::Result<Report>>,
    herald: impl std::future::Future<Output = anyhow::Result<Report>>,
) -> anyhow::Result<(Report, Report)> {
    let herald_first = pair % 2 == 1;
    println!(
        "pair {} of {} ({} first)",
        pair + 1,
        pairs.max(1),
        if herald_first { "herald" } else { label }
    );
    if herald_first {
        let h = herald.await?;
        Ok((base.await?, h))
    } else {
        let b = base.await?;
        Ok((b, herald.await?))
    }
}

/// The same fan-out against `base` (labelled `label`) and herald at `url`,
/// alternating (A B A B ...) for `--pairs` pairs; every run judged by the
/// strict verifier; prints each and the median herald / base ratios.
async fn fan_out_vs(
    base: GenConfig,
    label: &str,
    herald: GenConfig,
    load: &Load,
) -> anyhow::Result<()> {
    let mut runs: Vec<Report> = Vec::new();
    let (mut del, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..load.pairs.max(1) {
        let run_base = async {
            let mut b = gen::run(base.clone()).await?;
            b.target = label.into();
            b.print();
            judge(&b, load)?;
            println!();
            anyhow::Ok(b)
        };
        let run_herald = async {
            let h = gen::run(herald.clone()).await?;
            h.print();
            judge(&h, load)?;
            println!();
            anyhow::Ok(h)
        };
        let (b, h) = in_order(pair, load.pairs, label, run_base, run_herald).await?;
        del.push(ratio(h.deliveries_per_sec, b.deliveries_per_sec));
        p50.push(ratio(h.latency.p50_ms, b.latency.p50_ms));
        p99.push(ratio(h.latency.p99_ms, b.latency.p99_ms));
        runs.push(b);
        runs.push(h);
    }
    let ratios = serde_json::json!({
        "deliveries_per_sec": summarize(&del),
        "p50": summarize(&p50),
        "p99": summarize(&p99),
    });
    println!("herald / {label}: {ratios}");
    let refs: Vec<&Report> = runs.iter().collect();
    write_json(&load.json, &refs, ratios)
}
