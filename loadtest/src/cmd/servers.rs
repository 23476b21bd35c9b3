//! `mock-broker` and `ws-floor-server`: baselines that run until Ctrl-C.

use anyhow::Context;
use clap::Args;
use herald_loadtest::wsfloor;

/// Run librdkafka's in-process mock Kafka cluster until killed; prints
/// its bootstrap address.
#[derive(Args)]
pub struct MockBrokerArgs {
    #[arg(long, default_value_t = 1)]
    pub brokers: i32,
    /// Topics to create as NAME:PARTITIONS, comma-separated (the mock
    /// cluster times out admin CreateTopics requests, so herald's topics
    /// must exist before it starts).
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
}

/// `mock-broker`.
pub async fn mock_broker(args: MockBrokerArgs) -> anyhow::Result<()> {
    let MockBrokerArgs { brokers, topics } = args;
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
    Ok(())
}

/// Run the bare WebSocket floor server until killed.
#[derive(Args)]
pub struct WsFloorServerArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Flush after every frame (the floor before 2026-12-02) instead of
    /// once per batch of up to 64 queued frames, as herald does.
    #[arg(long)]
    pub flush_each: bool,
    /// Put Kafka in the floor's path: publishes are appended to a fresh
    /// topic on these brokers and delivered by a consumer tailing it.
    #[arg(long)]
    pub kafka: Option<String>,
    /// Partitions of that topic (herald's `chat` namespace has 8).
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    #[arg(long, default_value_t = 100)]
    pub fetch_wait_max_ms: u32,
}

/// `ws-floor-server`.
pub async fn ws_floor_server(args: WsFloorServerArgs) -> anyhow::Result<()> {
    let WsFloorServerArgs {
        listen,
        flush_each,
        kafka,
        partitions,
        fetch_wait_max_ms,
    } = args;
    let kafka = kafka.map(|b| (b, partitions, fetch_wait_max_ms));
    let addr = wsfloor::serve(listen, flush_each, kafka).await?;
    println!("ws-floor listening on ws://{addr}/ws");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
