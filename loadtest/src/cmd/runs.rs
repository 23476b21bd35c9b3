//! `ws` and `kafka-floor`: one side alone.

use clap::Args;
use herald_loadtest::gen::{self, GenConfig};
use herald_loadtest::kafkafloor;

use super::{floor_cfg, gen_cfg, judge, write_json, Load};

/// Drive a herald node (or anything speaking its frames).
#[derive(Args)]
pub struct WsArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// herald (its frames; also the WebSocket floor), socketio or
    /// centrifugo.
    #[arg(long, default_value = "herald")]
    pub proto: String,
    /// The server's PID: its CPU time over the run is reported (per
    /// delivery), beside the bytes on the wire per delivery.
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub load: Load,
}

/// `ws`.
pub async fn ws(args: WsArgs) -> anyhow::Result<()> {
    let WsArgs {
        url,
        proto,
        server_pid,
        load,
    } = args;
    let proto = gen::Proto::parse(&proto)?;
    let r = gen::run(GenConfig {
        proto,
        server_pid,
        ..gen_cfg(&url, &load)?
    })
    .await?;
    r.print();
    write_json(&load.json, &[&r], serde_json::json!({}))?;
    judge(&r, &load)?;
    Ok(())
}

/// The bare Kafka floor alone.
#[derive(Args)]
pub struct KafkaFloorArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value_t = 10)]
    pub fetch_wait_max_ms: u32,
    #[command(flatten)]
    pub load: Load,
}

/// `kafka-floor`.
pub async fn kafka_floor(args: KafkaFloorArgs) -> anyhow::Result<()> {
    let r = kafkafloor::run(floor_cfg(&args.brokers, args.fetch_wait_max_ms, &args.load)).await?;
    r.print();
    write_json(&args.load.json, &[&r], serde_json::json!({}))?;
    judge(&r, &args.load)?;
    Ok(())
}
