//! `herald-loadtest`: the load generator and the side-by-side comparisons of
//! `docs/benchmarks.md`. Every comparison runs its baseline and herald in
//! the same command, so the ratio is meaningful on a noisy machine.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_loadtest::gen::{self, GenConfig};
use herald_loadtest::kafkafloor::{self, FloorConfig};
use herald_loadtest::plot;
use herald_loadtest::report::Report;
use herald_loadtest::verify::Strict;
use herald_loadtest::wsfloor;

#[derive(Parser)]
#[command(
    name = "herald-loadtest",
    about = "Load generator and baselines for herald"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Load {
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Channels (subscriber i takes channel i % channels).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Total publishes per second, open loop (0: closed loop with --window).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Publishes in flight per publisher when --rate is 0.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Source addresses to spread connections over, e.g. 127.0.0.1-127.0.0.8.
    #[arg(long)]
    source_ips: Option<String>,
    /// Seconds to wait for the last deliveries.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// Write the report(s) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Kafka floor: use this existing topic instead of creating one (for
    /// brokers that refuse CreateTopics, like librdkafka's mock cluster).
    #[arg(long)]
    floor_topic: Option<String>,
    /// Fail unless at least this many publishes were acked (each side of a
    /// comparison). Default: half of rate x duration (open loop), or
    /// duration x 10 (closed loop).
    #[arg(long)]
    min_acked: Option<u64>,
    /// Comparisons: baseline and herald alternate (A B A B ...) this many
    /// pairs; the median ratio and its spread are reported.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
}

impl Load {
    fn strict(&self) -> Strict {
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

#[derive(Subcommand)]
enum Cmd {
    /// Drive a herald node (or anything speaking its frames).
    Ws {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// herald (its frames; also the WebSocket floor), socketio or
        /// centrifugo.
        #[arg(long, default_value = "herald")]
        proto: String,
        #[command(flatten)]
        load: Load,
    },
    /// The bare Kafka floor alone.
    KafkaFloor {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 10)]
        fetch_wait_max_ms: u32,
        #[command(flatten)]
        load: Load,
    },
    /// The randomized fault checker: starts `--nodes` herald nodes, runs
    /// publishers and subscribers across them while a seeded nemesis kills,
    /// restarts and pauses nodes and (with --cluster-script) brokers and cuts
    /// connections, then checks every operation against the topic. Exits 1
    /// when the check finds a problem; the seed replays the schedule.
    Chaos {
        /// The herald binary.
        #[arg(long, default_value = "target/debug/herald")]
        herald_bin: PathBuf,
        #[arg(
            long,
            default_value = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
        )]
        brokers: String,
        /// infra/dev/cluster.sh, for broker faults (leave out: herald nodes
        /// and connections only).
        #[arg(long)]
        cluster_script: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value_t = 4)]
        channels: usize,
        #[arg(long, default_value_t = 2)]
        subscribers: usize,
        /// Seconds of faults (then heal and check).
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// The schedule's seed (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Milliseconds between publishes of one publisher.
        #[arg(long, default_value_t = 20)]
        pace_ms: u64,
        /// Extra `herald serve` arguments, e.g. "--replication 3
        /// --min-insync-replicas 2".
        #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
        herald_args: Vec<String>,
    },
    /// Run librdkafka's in-process mock Kafka cluster until killed; prints
    /// its bootstrap address.
    MockBroker {
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Topics to create as NAME:PARTITIONS, comma-separated (the mock
        /// cluster times out admin CreateTopics requests, so herald's topics
        /// must exist before it starts).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
    },
    /// Run the bare WebSocket floor server until killed.
    WsFloorServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Flush after every frame (the floor before 2026-12-02) instead of
        /// once per batch of up to 64 queued frames, as herald does.
        #[arg(long)]
        flush_each: bool,
        /// Put Kafka in the floor's path: publishes are appended to a fresh
        /// topic on these brokers and delivered by a consumer tailing it.
        #[arg(long)]
        kafka: Option<String>,
        /// Partitions of that topic (herald's `chat` namespace has 8).
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        #[arg(long, default_value_t = 100)]
        fetch_wait_max_ms: u32,
    },
    /// P1/P6: the bare Kafka floor (in a child process), then herald, same
    /// rate (or window), one
    /// subscriber; prints both and the ratios.
    VsKafka {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 10)]
        fetch_wait_max_ms: u32,
        #[command(flatten)]
        load: Load,
    },
    /// P4: a client N messages behind resumes through herald, against
    /// reading the same N records straight from Kafka.
    Resume {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Resume on this node (a cold one) instead of --url.
        #[arg(long)]
        resume_url: Option<String>,
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// herald's kafka.topic_prefix.
        #[arg(long, default_value = "herald.")]
        topic_prefix: String,
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        fetch_wait_max_ms: u32,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// P2 against the peer: Socket.IO 4 (loadtest/socketio, Redis Streams
    /// adapter, started by bench.sh), then herald, same fan-out; prints both
    /// and the ratio of deliveries per second.
    VsSocketio {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// The Socket.IO server's WebSocket URL (printed by server.js).
        #[arg(long)]
        sio_url: String,
        #[command(flatten)]
        load: Load,
    },
    /// Against the strongest peer: Centrifugo v6 (loadtest/centrifugo, Redis
    /// engine with history and recovery, started by bench.sh), then herald,
    /// same load, alternating; prints both and the median ratios.
    VsCentrifugo {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Centrifugo's WebSocket URL (printed by loadtest/centrifugo/start.sh).
        #[arg(long)]
        cf_url: String,
        #[command(flatten)]
        load: Load,
    },
    /// P3: N connections subscribe (connection i to channel i % channels),
    /// each receives one message, then all sit idle answering pings for
    /// --hold-secs; prints `open K of N` and holds them until killed, so a
    /// script can read the server's memory. Exits 1 if any closed.
    Idle {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// herald (also the WebSocket floor), socketio or centrifugo.
        #[arg(long, default_value = "herald")]
        proto: String,
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Idle time after the message (several ping intervals: herald
        /// pings every 20 s, Centrifugo every 25 s).
        #[arg(long, default_value_t = 80)]
        hold_secs: u64,
        #[arg(long)]
        source_ips: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A latency-distribution chart (SVG) of every run in a comparison's
    /// JSON (baselines in one colour, herald in another).
    Plot {
        /// The comparison's `--json` output.
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        svg: PathBuf,
        #[arg(long)]
        title: String,
    },
    /// Throughput and p99 against offered load: the same fan-out at each
    /// `--rates` value against a baseline and herald (their order alternating
    /// from point to point), every run judged strictly; writes the JSON and
    /// two SVG charts, and exits 1 afterwards if any run failed its verdict.
    /// A baseline that acks fewer than the minimum but delivers all it acked
    /// once, in order, is noted as saturated at that point, not failed.
    Sweep {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        #[arg(long)]
        base_url: String,
        /// The baseline's protocol: herald (the WebSocket floor), socketio
        /// or centrifugo.
        #[arg(long, default_value = "herald")]
        base_proto: String,
        #[arg(long, default_value = "ws-floor")]
        base_label: String,
        /// Publishes per second over all publishers, one point each.
        #[arg(long, value_delimiter = ',', default_value = "25,50,100,200,400")]
        rates: Vec<u32>,
        /// Writes PREFIX-throughput.svg and PREFIX-p99.svg.
        #[arg(long)]
        svg_prefix: PathBuf,
        /// (`--pairs`: baseline/herald pairs per point, the order
        /// alternating; the charts show each side's median.)
        #[command(flatten)]
        load: Load,
    },
    /// P5: subscribers on edge A, a publisher on edge B; A is killed and
    /// every subscriber resumes on B. Time to all resumed, lost, duplicated.
    Storm {
        /// The edge the subscribers start on (it is killed).
        #[arg(long)]
        url_a: String,
        /// Edge A's process id.
        #[arg(long)]
        pid_a: u32,
        /// The surviving edge.
        #[arg(long)]
        url_b: String,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 10)]
        channels: usize,
        /// Publishes per second over all channels, for the whole run.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Seconds of publishing before the kill.
        #[arg(long, default_value_t = 5)]
        before_secs: u64,
        /// Seconds of publishing after the kill.
        #[arg(long, default_value_t = 15)]
        after_secs: u64,
        /// Each client's first reconnect waits a random time up to this.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long)]
        source_ips: Option<String>,
        #[arg(long, default_value_t = 60)]
        drain_secs: u64,
        /// No witness subscribers on the surviving edge: it follows none of
        /// the channels when the storm arrives.
        #[arg(long)]
        cold: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Fan-out across two edge nodes of one cluster: subscribers on edge A
    /// and publishers on edge B, against everyone on edge A (the baseline),
    /// alternating pairs, strict verifier.
    VsEdges {
        /// Edge A: the subscribers (and the baseline's publishers).
        #[arg(long)]
        url: String,
        /// Edge B: the publishers of the two-edge runs.
        #[arg(long)]
        url_b: String,
        #[command(flatten)]
        load: Load,
    },
    /// P2: the bare WebSocket floor (in process), then herald, same fan-out;
    /// prints both and the ratio of deliveries per second.
    VsWs {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// A floor already running (`ws-floor-server`, its own process);
        /// without it the floor runs inside this process, which then holds
        /// both ends of every floor connection.
        #[arg(long)]
        floor_url: Option<String>,
        /// The floor's name in the report and charts (`ws-kafka-floor` for
        /// `ws-floor-server --kafka`).
        #[arg(long, default_value = "ws-floor")]
        floor_label: String,
        #[command(flatten)]
        load: Load,
    },
}

fn source_ips(spec: &Option<String>) -> anyhow::Result<Vec<IpAddr>> {
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

fn gen_cfg(url: &str, l: &Load) -> anyhow::Result<GenConfig> {
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

fn floor_cfg(brokers: &str, fetch_wait_max_ms: u32, l: &Load) -> FloorConfig {
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

fn write_json(
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

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        (a / b * 1000.0).round() / 1000.0
    }
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
        println!("pair {} of {}", pair + 1, load.pairs.max(1));
        let mut b = gen::run(base.clone()).await?;
        b.target = label.into();
        b.print();
        judge(&b, load)?;
        println!();
        let h = gen::run(herald.clone()).await?;
        h.print();
        judge(&h, load)?;
        println!();
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

/// The median of `v` (0 when empty).
fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `sweep` command (see its help).
#[allow(clippy::too_many_arguments)]
async fn sweep(
    url: &str,
    base_url: &str,
    proto: gen::Proto,
    label: &str,
    rates: &[u32],
    svg_prefix: &std::path::Path,
    pairs: usize,
    load: &Load,
) -> anyhow::Result<()> {
    let mut points = Vec::new();
    let mut failed = Vec::new();
    let mut saturated = Vec::new();
    let (mut base_line, mut herald_line) = (Vec::new(), Vec::new());
    let (mut base_p99, mut herald_p99) = (Vec::new(), Vec::new());
    let mut turn = 0usize;
    for &rate in rates {
        let at = Load {
            rate,
            ..load.clone()
        };
        let offered = rate as f64 * at.subscribers as f64 / at.channels.max(1) as f64;
        println!("== offered {offered} deliveries/s ({rate} publishes/s), {pairs} pair(s)");
        let run_base = || async {
            let mut r = gen::run(GenConfig {
                proto,
                ..gen_cfg(base_url, &at)?
            })
            .await?;
            r.target = label.to_owned();
            anyhow::Ok(r)
        };
        let (mut bs, mut hs) = (Vec::new(), Vec::new());
        for _ in 0..pairs {
            // A B, then B A: neither side always runs first.
            let (b, h) = if turn.is_multiple_of(2) {
                let b = run_base().await?;
                (b, gen::run(gen_cfg(url, &at)?).await?)
            } else {
                let h = gen::run(gen_cfg(url, &at)?).await?;
                (run_base().await?, h)
            };
            turn += 1;
            for r in [&b, &h] {
                r.print();
                println!();
            }
            // Past its saturation the baseline acks fewer than a run that
            // keeps up would; that is the curve's point, so it is noted,
            // not failed, while loss, duplicates and disorder still fail.
            // herald is held to the full verdict at every point.
            match at.strict().judge_saturated(
                &b.target,
                b.acked,
                b.lost,
                b.duplicated,
                b.out_of_order,
            ) {
                Ok(None) => {}
                Ok(Some(note)) => {
                    println!("{note} at {rate}/s");
                    saturated.push(format!("{note} at {rate}/s"));
                }
                Err(e) => failed.push(format!("{} at {rate}/s: {e}", b.target)),
            }
            if let Err(e) = judge(&h, &at) {
                failed.push(format!("{} at {rate}/s: {e}", h.target));
            }
            bs.push(b);
            hs.push(h);
        }
        let del: Vec<f64> = bs
            .iter()
            .zip(&hs)
            .map(|(b, h)| ratio(h.deliveries_per_sec, b.deliveries_per_sec))
            .collect();
        let p99: Vec<f64> = bs
            .iter()
            .zip(&hs)
            .map(|(b, h)| ratio(h.latency.p99_ms, b.latency.p99_ms))
            .collect();
        let ratios = serde_json::json!({
            "deliveries_per_sec": summarize(&del),
            "p99": summarize(&p99),
        });
        println!("herald / {label} at {offered} offered: {ratios}");
        base_line.push((offered, median(bs.iter().map(|r| r.deliveries_per_sec))));
        herald_line.push((offered, median(hs.iter().map(|r| r.deliveries_per_sec))));
        base_p99.push((offered, median(bs.iter().map(|r| r.latency.p99_ms))));
        herald_p99.push((offered, median(hs.iter().map(|r| r.latency.p99_ms))));
        points.push(serde_json::json!({
            "rate": rate,
            "offered": offered,
            "base": bs,
            "herald": hs,
            "ratios": ratios,
        }));
    }
    if let Some(p) = &load.json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(
                &serde_json::json!({ "points": points, "failed": failed, "saturated": saturated }),
            )?,
        )?;
    }
    let shape = format!(
        "{} subscribers, {} channel(s), {} B",
        load.subscribers, load.channels, load.size
    );
    let line = |name: &str, color, dashed, points: &Vec<(f64, f64)>| plot::Series {
        label: name.to_owned(),
        color,
        dashed,
        points: points.clone(),
    };
    let offered: Vec<(f64, f64)> = base_line.iter().map(|&(x, _)| (x, x)).collect();
    let chart = |title: String, y: &str, log| plot::Chart {
        title,
        x_label: "offered deliveries/s".into(),
        y_label: y.into(),
        y_log: log,
        x_ticks: Vec::new(),
    };
    let with_suffix = |s: &str| {
        let mut p = svg_prefix.as_os_str().to_owned();
        p.push(s);
        PathBuf::from(p)
    };
    std::fs::write(
        with_suffix("-throughput.svg"),
        plot::svg(
            &chart(
                format!("Delivered vs offered: {shape}"),
                "deliveries/s",
                false,
            ),
            &[
                line("offered", "#999", true, &offered),
                line(label, plot::BASELINE, false, &base_line),
                line("herald", plot::HERALD, false, &herald_line),
            ],
        ),
    )?;
    std::fs::write(
        with_suffix("-p99.svg"),
        plot::svg(
            &chart(
                format!("p99 latency vs offered: {shape}"),
                "p99 latency, ms (log)",
                true,
            ),
            &[
                line(label, plot::BASELINE, false, &base_p99),
                line("herald", plot::HERALD, false, &herald_p99),
            ],
        ),
    )?;
    if !failed.is_empty() {
        anyhow::bail!("strict verifier: {}", failed.join("; "));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Chaos {
            herald_bin,
            brokers,
            cluster_script,
            nodes,
            channels,
            subscribers,
            secs,
            seed,
            pace_ms,
            herald_args,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            eprintln!("chaos: seed {seed}");
            let report = herald_loadtest::chaos::run(herald_loadtest::chaos::ChaosConfig {
                herald_bin,
                brokers,
                cluster_script,
                nodes,
                channels,
                subscribers,
                duration: Duration::from_secs(secs),
                seed,
                pace: Duration::from_millis(pace_ms),
                herald_args: herald_args.into_iter().filter(|a| !a.is_empty()).collect(),
                topic_prefix: format!("chaos-{seed}."),
            })
            .await?;
            println!("{}", report.summary());
            if !report.ok() {
                std::process::exit(1);
            }
        }
        Cmd::Ws { url, proto, load } => {
            let proto = gen::Proto::parse(&proto)?;
            let r = gen::run(GenConfig {
                proto,
                ..gen_cfg(&url, &load)?
            })
            .await?;
            r.print();
            write_json(&load.json, &[&r], serde_json::json!({}))?;
            judge(&r, &load)?;
        }
        Cmd::KafkaFloor {
            brokers,
            fetch_wait_max_ms,
            load,
        } => {
            let r = kafkafloor::run(floor_cfg(&brokers, fetch_wait_max_ms, &load)).await?;
            r.print();
            write_json(&load.json, &[&r], serde_json::json!({}))?;
            judge(&r, &load)?;
        }
        Cmd::MockBroker { brokers, topics } => {
            let cluster = rdkafka::mocking::MockCluster::new(brokers)?;
            for t in &topics {
                let (name, parts) = t
                    .split_once(':')
                    .with_context(|| format!("--topics {t}: NAME:PARTITIONS"))?;
                cluster.create_topic(name, parts.parse().context("partitions")?, 1)?;
            }
            println!("mock broker at {}", cluster.bootstrap_servers());
            tokio::signal::ctrl_c().await?;
            drop(cluster);
        }
        Cmd::WsFloorServer {
            listen,
            flush_each,
            kafka,
            partitions,
            fetch_wait_max_ms,
        } => {
            let kafka = kafka.map(|b| (b, partitions, fetch_wait_max_ms));
            let addr = wsfloor::serve(listen, flush_each, kafka).await?;
            println!("ws-floor listening on ws://{addr}/ws");
            tokio::signal::ctrl_c().await?;
        }
        Cmd::VsKafka {
            url,
            brokers,
            fetch_wait_max_ms,
            load,
        } => {
            let one = Load {
                subscribers: 1,
                channels: 1,
                ..load.clone()
            };
            let mut runs: Vec<Report> = Vec::new();
            let (mut p50, mut p99, mut p999, mut acks) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for pair in 0..load.pairs.max(1) {
                println!("pair {} of {}", pair + 1, load.pairs.max(1));
                // The floor runs in a child process that judges itself
                // strictly (it exits non-zero otherwise); judged here too.
                let floor = floor_in_child(&brokers, fetch_wait_max_ms, &load).await?;
                judge(&floor, &load)?;
                println!();
                let h = gen::run(gen_cfg(&url, &one)?).await?;
                h.print();
                judge(&h, &one)?;
                println!();
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
        }
        Cmd::Resume {
            url,
            resume_url,
            brokers,
            topic_prefix,
            messages,
            size,
            fetch_wait_max_ms,
            json,
        } => {
            let r = herald_loadtest::resume::run(herald_loadtest::resume::ResumeConfig {
                url,
                resume_url,
                brokers,
                topic_prefix,
                messages,
                size,
                fetch_wait_max_ms,
            })
            .await?;
            println!(
                "resume of {} messages: herald {:.3} s, raw Kafka {:.3} s, ratio {}",
                r.messages, r.herald_secs, r.kafka_secs, r.ratio
            );
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
            }
        }
        Cmd::VsSocketio { url, sio_url, load } => {
            let base = GenConfig {
                proto: gen::Proto::SocketIo,
                ..gen_cfg(&sio_url, &load)?
            };
            fan_out_vs(base, "socket.io", gen_cfg(&url, &load)?, &load).await?;
        }
        Cmd::Idle {
            url,
            proto,
            connections,
            channels,
            hold_secs,
            source_ips: ips,
            json,
        } => {
            let (r, held) = herald_loadtest::idle::run(herald_loadtest::idle::IdleConfig {
                url,
                proto: gen::Proto::parse(&proto)?,
                connections,
                channels,
                hold: Duration::from_secs(hold_secs),
                source_ips: source_ips(&ips)?,
                channel_prefix: GenConfig::default().channel_prefix,
            })
            .await?;
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
            }
            println!(
                "open {} of {} after {} s idle (subscribed {}, received {})",
                r.open, r.connections, r.hold_secs, r.subscribed, r.received
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
        }
        Cmd::Plot { json, svg, title } => {
            #[derive(serde::Deserialize)]
            struct Runs {
                reports: Vec<Report>,
            }
            let text = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            let runs: Runs = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a comparison's JSON", json.display()))?;
            std::fs::write(&svg, plot::latency_chart(&title, &runs.reports))
                .with_context(|| format!("writing {}", svg.display()))?;
            println!("wrote {}", svg.display());
        }
        Cmd::Sweep {
            url,
            base_url,
            base_proto,
            base_label,
            rates,
            svg_prefix,
            load,
        } => {
            let proto = gen::Proto::parse(&base_proto)?;
            sweep(
                &url,
                &base_url,
                proto,
                &base_label,
                &rates,
                &svg_prefix,
                load.pairs.max(1),
                &load,
            )
            .await?;
        }
        Cmd::VsCentrifugo { url, cf_url, load } => {
            let base = GenConfig {
                proto: gen::Proto::Centrifugo,
                ..gen_cfg(&cf_url, &load)?
            };
            fan_out_vs(base, "centrifugo", gen_cfg(&url, &load)?, &load).await?;
        }
        Cmd::Storm {
            url_a,
            pid_a,
            url_b,
            subscribers,
            channels,
            rate,
            before_secs,
            after_secs,
            jitter_ms,
            size,
            source_ips: ips,
            drain_secs,
            cold,
            json,
        } => {
            let r = herald_loadtest::storm::run(herald_loadtest::storm::StormConfig {
                url_a,
                pid_a,
                url_b,
                subscribers,
                channels,
                rate,
                before: Duration::from_secs(before_secs),
                after: Duration::from_secs(after_secs),
                jitter: Duration::from_millis(jitter_ms),
                size,
                source_ips: source_ips(&ips)?,
                drain: Duration::from_secs(drain_secs),
                channel_prefix: GenConfig::default().channel_prefix,
                progress: true,
                cold,
            })
            .await?;
            r.print();
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
            }
            let t = &r.totals;
            if t.lost > 0 || t.duplicated > 0 || t.out_of_order > 0 || r.not_recovered > 0 {
                anyhow::bail!(
                    "lost {} duplicated {} out of order {} not recovered {}",
                    t.lost,
                    t.duplicated,
                    t.out_of_order,
                    r.not_recovered
                );
            }
        }
        Cmd::VsEdges { url, url_b, load } => {
            let two = GenConfig {
                publish_url: Some(url_b),
                ..gen_cfg(&url, &load)?
            };
            fan_out_vs(gen_cfg(&url, &load)?, "one-edge", two, &load).await?;
        }
        Cmd::VsWs {
            url,
            floor_url,
            floor_label,
            load,
        } => {
            let floor_url = match floor_url {
                Some(u) => u,
                None => format!(
                    "ws://{}/ws",
                    wsfloor::serve("127.0.0.1:0".parse()?, false, None).await?
                ),
            };
            let base = gen_cfg(&floor_url, &load)?;
            fan_out_vs(base, &floor_label, gen_cfg(&url, &load)?, &load).await?;
        }
    }
    Ok(())
}
