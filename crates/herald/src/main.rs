//! `herald`: the command line. Thin: parses arguments, sets up logging and
//! metrics, and hands over to the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use config::Settings;
use herald_edge::{Edge, NamespaceConfig};
use herald_log::LogConfig;
use herald_proto::partition::partition_for_key;
use tracing_subscriber::EnvFilter;

mod alloc;
mod config;
mod replay;
mod tokens;
mod trim;

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
    /// Print a commented configuration file with every default.
    Genconfig,
    /// Check a configuration file (and the HERALD_* environment); list every
    /// problem with its key path; exit non-zero if there is one.
    Checkconfig { file: PathBuf },
    /// Sign a connection token (for operators and tests).
    Gentoken(tokens::GentokenArgs),
    /// Verify a token against the configured keys and print its claims.
    Checktoken(tokens::ChecktokenArgs),
}

/// Where herald's topics are: shared by every command that talks to Kafka.
#[derive(Args)]
pub(crate) struct Topics {
    /// Kafka bootstrap servers.
    #[arg(long, env = "HERALD_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Prefix of every topic herald uses.
    #[arg(long, env = "HERALD_KAFKA_TOPIC_PREFIX", default_value = "herald.")]
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
    /// Configuration file (TOML; `herald genconfig` prints a commented one).
    /// Without it: the defaults, then `HERALD_*` variables.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Overrides of single settings (each also in the file and as HERALD_*):
    /// address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// kafka.brokers
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// kafka.topic_prefix
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Namespaces as NAME[=PARTITIONS[:RULE]], comma-separated; replaces the
    /// file's [[namespace]] list (RULE: anonymous, authenticated, grant, owner,
    /// nobody, for subscribe, publish and history; default authenticated).
    #[arg(long, value_delimiter = ',')]
    namespaces: Option<Vec<NamespaceConfig>>,
    /// kafka.fetch_wait_max_ms
    #[arg(long)]
    fetch_wait_max_ms: Option<u32>,
    /// kafka.publish_timeout_ms
    #[arg(long)]
    publish_timeout_ms: Option<u64>,
    /// kafka.replication
    #[arg(long, allow_negative_numbers = true)]
    replication: Option<i32>,
    /// kafka.min_insync_replicas
    #[arg(long, allow_negative_numbers = true)]
    min_insync_replicas: Option<i32>,
    /// limits.queue_messages
    #[arg(long)]
    queue_messages: Option<usize>,
    /// limits.queue_bytes
    #[arg(long)]
    queue_bytes: Option<usize>,
    /// limits.max_message_bytes
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// limits.read_buffer_bytes
    #[arg(long)]
    read_buffer_bytes: Option<usize>,
    /// limits.max_frame_bytes
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// limits.publish_rate (0: unlimited)
    #[arg(long)]
    publish_rate: Option<u32>,
    /// limits.publish_burst
    #[arg(long)]
    publish_burst: Option<u32>,
    /// limits.max_connections
    #[arg(long)]
    max_connections: Option<usize>,
    /// limits.max_connections_per_ip
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// limits.max_connections_per_user (0: no limit)
    #[arg(long)]
    max_connections_per_user: Option<usize>,
    /// limits.max_subscriptions
    #[arg(long)]
    max_subscriptions: Option<usize>,
    /// server.heartbeat_secs
    #[arg(long)]
    heartbeat_secs: Option<u64>,
    /// server.idle_timeout_secs
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// server.write_timeout_secs
    #[arg(long)]
    write_timeout_secs: Option<u64>,
    /// cache.dedup_window_secs
    #[arg(long)]
    dedup_window_secs: Option<u64>,
    /// cache.recent_messages
    #[arg(long)]
    recent_messages: Option<usize>,
    /// cluster.heartbeat_ms
    #[arg(long)]
    node_heartbeat_ms: Option<u64>,
    /// cluster.command_timeout_ms
    #[arg(long)]
    command_timeout_ms: Option<u64>,
    /// log.format: text or json
    #[arg(long)]
    log_format: Option<String>,
    /// cache.follow_grace_secs
    #[arg(long)]
    follow_grace_secs: Option<u64>,
    /// server.drain_delay_ms
    #[arg(long)]
    drain_delay_ms: Option<u64>,
    /// server.reconnect_jitter_ms
    #[arg(long)]
    reconnect_jitter_ms: Option<u64>,
    /// server.shutdown_grace_secs
    #[arg(long)]
    shutdown_grace_secs: Option<u64>,
    /// cache.history_max_limit
    #[arg(long)]
    history_max_limit: Option<usize>,
    /// cache.history_max_bytes
    #[arg(long)]
    history_max_bytes: Option<usize>,
    /// cache.history_max_scan
    #[arg(long)]
    history_max_scan: Option<i64>,
    /// cache.cursor_flush_ms
    #[arg(long)]
    cursor_flush_ms: Option<u64>,
    /// cache.cursor_partitions
    #[arg(long)]
    cursor_partitions: Option<i32>,
}

impl ServeArgs {
    /// Lays the flags that were given over `s`.
    fn apply(self, s: &mut Settings) {
        macro_rules! set {
            ($flag:expr => $slot:expr) => {
                if let Some(v) = $flag {
                    $slot = v;
                }
            };
        }
        set!(self.listen.map(|a| a.to_string()) => s.server.listen);
        set!(self.kafka_brokers => s.kafka.brokers);
        set!(self.topic_prefix => s.kafka.topic_prefix);
        set!(self.fetch_wait_max_ms => s.kafka.fetch_wait_max_ms);
        set!(self.publish_timeout_ms => s.kafka.publish_timeout_ms);
        set!(self.replication => s.kafka.replication);
        set!(self.min_insync_replicas => s.kafka.min_insync_replicas);
        set!(self.queue_messages => s.limits.queue_messages);
        set!(self.queue_bytes => s.limits.queue_bytes);
        set!(self.max_message_bytes => s.limits.max_message_bytes);
        set!(self.read_buffer_bytes => s.limits.read_buffer_bytes);
        set!(self.max_frame_bytes => s.limits.max_frame_bytes);
        set!(self.publish_rate => s.limits.publish_rate);
        set!(self.publish_burst => s.limits.publish_burst);
        set!(self.max_connections => s.limits.max_connections);
        set!(self.max_connections_per_ip => s.limits.max_connections_per_ip);
        set!(self.max_connections_per_user => s.limits.max_connections_per_user);
        set!(self.max_subscriptions => s.limits.max_subscriptions);
        set!(self.heartbeat_secs => s.server.heartbeat_secs);
        set!(self.idle_timeout_secs => s.server.idle_timeout_secs);
        set!(self.write_timeout_secs => s.server.write_timeout_secs);
        set!(self.dedup_window_secs => s.cache.dedup_window_secs);
        set!(self.recent_messages => s.cache.recent_messages);
        set!(self.follow_grace_secs => s.cache.follow_grace_secs);
        set!(self.log_format => s.log.format);
        set!(self.node_heartbeat_ms => s.cluster.heartbeat_ms);
        set!(self.command_timeout_ms => s.cluster.command_timeout_ms);
        set!(self.drain_delay_ms => s.server.drain_delay_ms);
        set!(self.reconnect_jitter_ms => s.server.reconnect_jitter_ms);
        set!(self.shutdown_grace_secs => s.server.shutdown_grace_secs);
        set!(self.history_max_limit => s.cache.history_max_limit);
        set!(self.history_max_bytes => s.cache.history_max_bytes);
        set!(self.history_max_scan => s.cache.history_max_scan);
        set!(self.cursor_flush_ms => s.cache.cursor_flush_ms);
        set!(self.cursor_partitions => s.cache.cursor_partitions);
        if let Some(list) = self.namespaces {
            s.namespaces = list
                .into_iter()
                .map(|n| config::Namespace {
                    name: n.name,
                    partitions: n.partitions,
                    subscribe: n.subscribe.as_str().into(),
                    publish: n.publish.as_str().into(),
                    history: n.history.as_str().into(),
                    ..config::Namespace::default()
                })
                .collect();
        }
    }
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
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
    let mut settings = Settings::load(a.config.as_deref(), &env_lookup)
        .map_err(|e| anyhow::anyhow!("configuration:\n{e}"))?;
    a.apply(&mut settings);
    settings
        .validate()
        .map_err(|e| anyhow::anyhow!("configuration:\n{}", config::ConfigErrors(e)))?;
    let auth = herald_edge::Auth::new(&settings.auth_config()?)?;
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
    alloc::publish_count();
    let edge = Edge::start(settings.edge_config(), settings.log_config(), auth, metrics)
        .await
        .context("starting the edge (is the broker running? ./infra/dev/broker.sh start)")?;
    let addr = edge.local_addr()?;
    tracing::info!(%addr, "Listening");
    // Machine-readable line for scripts and the test harness.
    println!("herald listening on ws://{addr}/ws");
    trim::spawn();
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

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, without a backtrace: these are operator
            // errors (bad arguments, bad config, broker down), not crashes.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Installs the log subscriber: `HERALD_LOG` filters; `json` writes one
/// object per line with the event's fields at the top level and the fields
/// of its innermost span (`request_id` of an HTTP request, `conn` of a
/// WebSocket connection when debug logging is on) under `span`.
fn init_logging(json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `serve` logs as its configuration says. A configuration that does not
    // load is reported by `serve` itself, in text.
    let json = match &cli.command {
        Command::Serve(a) => {
            a.log_format.clone().or_else(|| {
                Settings::load(a.config.as_deref(), &env_lookup)
                    .ok()
                    .map(|s| s.log.format)
            }) == Some("json".into())
        }
        _ => false,
    };
    init_logging(json);
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    match cli.command {
        Command::Serve(a) => rt.block_on(serve(*a)),
        Command::Offsets(a) => rt.block_on(offsets(a)),
        Command::Replay(a) => rt.block_on(replay::run(*a)),
        Command::Genconfig => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Checkconfig { file } => {
            Settings::load(Some(&file), &env_lookup)
                .map_err(|e| anyhow::anyhow!("{} is not valid:\n{e}", file.display()))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Gentoken(a) => tokens::gentoken(a, &env_lookup),
        Command::Checktoken(a) => rt.block_on(tokens::checktoken(a, &env_lookup)),
    }
}
