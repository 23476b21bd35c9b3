//! `herald`: the command line. Thin: parses arguments, sets up logging and
//! metrics, and hands over to the library crates.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_edge::{Edge, EdgeConfig, NamespaceConfig};
use herald_log::LogConfig;
use herald_proto::partition::partition_for_key;
use tracing_subscriber::EnvFilter;

mod replay;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Durable realtime messaging over WebSocket, backed by Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge node: WebSocket on /ws, plus /healthz, /readyz and /metrics.
    Serve(Box<ServeArgs>),
    /// Per namespace topic and partition: log start and end offsets, message
    /// counts, the times of the first and last records, and the lag of every
    /// durable cursor.
    Offsets(OffsetsArgs),
    /// Replay a range of one partition: as JSON Lines (stdout or a file), to
    /// another topic, or live to the channels' subscribers.
    Replay(Box<replay::ReplayArgs>),
}

/// Where herald's topics are: shared by every command that talks to Kafka.
#[derive(Args)]
pub(crate) struct Topics {
    /// Kafka bootstrap servers.
    #[arg(long, env = "HERALD_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Prefix of every topic herald uses.
    #[arg(long, env = "HERALD_TOPIC_PREFIX", default_value = "herald.")]
    pub topic_prefix: String,
    /// Namespaces as NAME or NAME=PARTITIONS (partitions used when creating
    /// topics), comma-separated.
    #[arg(
        long,
        env = "HERALD_NAMESPACES",
        default_value = "chat=8",
        value_delimiter = ','
    )]
    pub namespaces: Vec<NamespaceConfig>,
}

#[derive(Args)]
struct OffsetsArgs {
    #[command(flatten)]
    topics: Topics,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    topics: Topics,
    /// fetch.wait.max.ms of the Kafka readers (keep it low on the dev broker).
    #[arg(long, env = "HERALD_FETCH_WAIT_MAX_MS", default_value_t = 10)]
    fetch_wait_max_ms: u32,
    /// How long Kafka has to confirm a publish before it is nacked, in ms.
    #[arg(long, env = "HERALD_PUBLISH_TIMEOUT_MS", default_value_t = 10_000)]
    publish_timeout_ms: u64,
    /// Replication factor for topics herald creates (-1: broker default).
    #[arg(long, env = "HERALD_REPLICATION", default_value_t = -1)]
    replication: i32,
    /// Outbound queue per connection, in messages.
    #[arg(long, env = "HERALD_QUEUE_MESSAGES", default_value_t = 1024)]
    queue_messages: usize,
    /// Outbound queue per connection, in bytes.
    #[arg(long, env = "HERALD_QUEUE_BYTES", default_value_t = 4 << 20)]
    queue_bytes: usize,
    /// Largest publish `data`, in bytes.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 64 << 10)]
    max_message_bytes: usize,
    /// Initial read buffer per connection, in bytes (grows for larger frames).
    #[arg(long, env = "HERALD_READ_BUFFER_BYTES", default_value_t = 4 << 10)]
    read_buffer_bytes: usize,
    /// Largest WebSocket message or frame accepted, in bytes (more: close 1009).
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    max_frame_bytes: usize,
    /// Publishes per second per connection (0: unlimited).
    #[arg(long, env = "HERALD_PUBLISH_RATE", default_value_t = 1000)]
    publish_rate: u32,
    /// Burst size of the per-connection publish limit.
    #[arg(long, env = "HERALD_PUBLISH_BURST", default_value_t = 2000)]
    publish_burst: u32,
    /// Open WebSocket connections on this node (more get HTTP 503).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 100_000)]
    max_connections: usize,
    /// Open WebSocket connections per client IP (more get HTTP 429).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 10_000)]
    max_connections_per_ip: usize,
    /// Subscriptions per connection.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    max_subscriptions: usize,
    /// WebSocket ping interval, in seconds.
    #[arg(long, env = "HERALD_HEARTBEAT_SECS", default_value_t = 20)]
    heartbeat_secs: u64,
    /// Close connections silent for this long, in seconds.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    idle_timeout_secs: u64,
    /// How long publish ids are remembered for dedup, in seconds.
    #[arg(long, env = "HERALD_DEDUP_WINDOW_SECS", default_value_t = 600)]
    dedup_window_secs: u64,
    /// Messages per partition kept in memory for fast resume.
    #[arg(long, env = "HERALD_RECENT_MESSAGES", default_value_t = 10_000)]
    recent_messages: usize,
    /// On shutdown, how long /readyz fails before clients are told to leave, in ms.
    #[arg(long, env = "HERALD_DRAIN_DELAY_MS", default_value_t = 1000)]
    drain_delay_ms: u64,
    /// Upper bound of the random reconnect delay sent to clients on drain, in ms.
    #[arg(long, env = "HERALD_RECONNECT_JITTER_MS", default_value_t = 2000)]
    reconnect_jitter_ms: u64,
    /// Time in-flight publishes and connections get on shutdown, in seconds.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Largest `limit` of a history request.
    #[arg(long, env = "HERALD_HISTORY_MAX_LIMIT", default_value_t = 1000)]
    history_max_limit: usize,
    /// Bytes of messages in one history reply.
    #[arg(long, env = "HERALD_HISTORY_MAX_BYTES", default_value_t = 1 << 20)]
    history_max_bytes: usize,
    /// Partition records scanned for one history page.
    #[arg(long, env = "HERALD_HISTORY_MAX_SCAN", default_value_t = 100_000)]
    history_max_scan: i64,
    /// How often acked durable cursors are written to Kafka, in ms.
    #[arg(long, env = "HERALD_CURSOR_FLUSH_MS", default_value_t = 1000)]
    cursor_flush_ms: u64,
    /// Partitions of the cursor topic when herald creates it.
    #[arg(long, env = "HERALD_CURSOR_PARTITIONS", default_value_t = 8)]
    cursor_partitions: i32,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%e, "Cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let log_cfg = LogConfig {
        brokers: a.topics.kafka_brokers,
        topic_prefix: a.topics.topic_prefix,
        fetch_wait_max_ms: a.fetch_wait_max_ms,
        publish_timeout: Duration::from_millis(a.publish_timeout_ms),
        replication: a.replication,
        ..LogConfig::default()
    };
    let cfg = EdgeConfig {
        listen: a.listen,
        namespaces: a.topics.namespaces,
        queue_messages: a.queue_messages,
        queue_bytes: a.queue_bytes,
        max_message_bytes: a.max_message_bytes,
        read_buffer_bytes: a.read_buffer_bytes,
        max_frame_bytes: a.max_frame_bytes,
        publish_rate: a.publish_rate,
        publish_burst: a.publish_burst,
        max_connections: a.max_connections,
        max_connections_per_ip: a.max_connections_per_ip,
        max_subscriptions: a.max_subscriptions,
        heartbeat: Duration::from_secs(a.heartbeat_secs),
        idle_timeout: Duration::from_secs(a.idle_timeout_secs),
        dedup_window: Duration::from_secs(a.dedup_window_secs),
        recent_messages: a.recent_messages,
        shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
        drain_delay: Duration::from_millis(a.drain_delay_ms),
        reconnect_jitter: Duration::from_millis(a.reconnect_jitter_ms),
        history_max_limit: a.history_max_limit,
        history_max_bytes: a.history_max_bytes,
        history_max_scan: a.history_max_scan,
        cursor_flush_interval: Duration::from_millis(a.cursor_flush_ms.max(10)),
        cursor_partitions: a.cursor_partitions,
        ..EdgeConfig::default()
    };
    let edge = Edge::start(cfg, log_cfg, metrics)
        .await
        .context("starting the edge (is the broker running? ./infra/dev/broker.sh start)")?;
    let addr = edge.local_addr()?;
    tracing::info!(%addr, "Listening");
    // Machine-readable line for scripts and the test harness.
    println!("herald listening on ws://{addr}/ws");
    edge.run(shutdown_signal()).await;
    Ok(())
}

async fn offsets(a: OffsetsArgs) -> anyhow::Result<()> {
    let cfg = LogConfig {
        brokers: a.topics.kafka_brokers,
        topic_prefix: a.topics.topic_prefix,
        fetch_wait_max_ms: 5,
        ..LogConfig::default()
    };
    let kafka = herald_log::Kafka::connect(cfg.clone())?;
    let cursors = herald_log::CursorStore::read_all(&kafka).await?;
    let mut report = Vec::new();
    for ns in &a.topics.namespaces {
        let topic = cfg.topic_for(&ns.name);
        let partitions = kafka
            .partition_count(&topic)
            .await?
            .with_context(|| format!("topic {topic} (namespace {}) does not exist", ns.name))?;
        let mut parts = Vec::new();
        for p in 0..partitions {
            parts.push(kafka.partition_summary(&topic, p).await?);
        }
        let epoch = kafka.topic_epoch(&topic).await?;
        let prefix = format!("{}:", ns.name);
        let lags: Vec<CursorLag> = cursors
            .iter()
            .filter(|c| c.channel.starts_with(&prefix))
            .map(|c| {
                let partition = partition_for_key(c.channel.as_bytes(), partitions);
                let log_end = parts
                    .iter()
                    .find(|p| p.partition == partition)
                    .map(|p| p.log_end)
                    .unwrap_or(0);
                let current = epoch.as_deref() == Some(c.epoch.as_str());
                CursorLag {
                    client: c.client.clone(),
                    channel: c.channel.clone(),
                    partition,
                    seq: c.seq,
                    log_end,
                    // Records of the partition after the cursor: an upper
                    // bound on the channel's unacked messages.
                    lag: current.then_some((log_end - 1 - c.seq).max(0)),
                    current_epoch: current,
                    acked_at_ms: c.ts,
                }
            })
            .collect();
        report.push((ns.name.clone(), topic, parts, lags));
    }
    if a.json {
        let json: Vec<_> = report
            .iter()
            .map(|(ns, topic, parts, lags)| {
                serde_json::json!({
                    "namespace": ns,
                    "topic": topic,
                    "partitions": parts,
                    "cursors": lags,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>10} {:>15} {:>15}",
        "topic", "partition", "log_start", "log_end", "messages", "first_ms", "last_ms"
    );
    let opt = |v: Option<i64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    for (_, topic, parts, _) in &report {
        for p in parts {
            println!(
                "{:<24} {:>9} {:>12} {:>12} {:>10} {:>15} {:>15}",
                topic,
                p.partition,
                p.log_start,
                p.log_end,
                p.messages,
                opt(p.first_ms),
                opt(p.last_ms)
            );
        }
    }
    let lags: Vec<&CursorLag> = report.iter().flat_map(|r| &r.3).collect();
    if !lags.is_empty() {
        println!();
        println!(
            "{:<24} {:<32} {:>9} {:>12} {:>12} {:>10}",
            "client", "channel", "partition", "cursor_seq", "log_end", "lag"
        );
        for c in lags {
            println!(
                "{:<24} {:<32} {:>9} {:>12} {:>12} {:>10}",
                c.client,
                c.channel,
                c.partition,
                c.seq,
                c.log_end,
                c.lag
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "old-epoch".into())
            );
        }
    }
    Ok(())
}

/// A durable cursor and how far behind its partition's end it is.
#[derive(serde::Serialize)]
struct CursorLag {
    client: String,
    channel: String,
    partition: i32,
    seq: i64,
    log_end: i64,
    /// `None` when the cursor belongs to an older incarnation of the topic.
    lag: Option<i64>,
    current_epoch: bool,
    acked_at_ms: i64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    match cli.command {
        Command::Serve(a) => rt.block_on(serve(*a)),
        Command::Offsets(a) => rt.block_on(offsets(a)),
        Command::Replay(a) => rt.block_on(replay::run(*a)),
    }
}
