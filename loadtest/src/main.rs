//! `herald-loadtest`: the load generator and the side-by-side comparisons of
//! `docs/benchmarks.md`. Every comparison runs its baseline and herald in
//! the same command, so the ratio is meaningful on a noisy machine.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "herald-loadtest",
    about = "Load generator and baselines for herald"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive a herald node (or anything speaking its frames).
    Ws(cmd::runs::WsArgs),
    /// The bare Kafka floor alone.
    KafkaFloor(cmd::runs::KafkaFloorArgs),
    /// The randomized fault checker: starts `--nodes` herald nodes, runs
    /// publishers and subscribers across them while a seeded nemesis kills,
    /// restarts and pauses nodes and (with --cluster-script) brokers and cuts
    /// connections, then checks every operation against the topic. Exits 1
    /// when the check finds a problem; the seed replays the schedule.
    Chaos(cmd::chaos::ChaosArgs),
    /// The soak: steady mixed load without faults for a long time (resumes,
    /// history, presence churn), sampling each node's memory, file
    /// descriptors and tasks and the delivery p99; exits 1 when anything was
    /// lost or a measure kept growing after warm-up.
    Soak(cmd::chaos::SoakArgs),
    /// Run librdkafka's in-process mock Kafka cluster until killed; prints
    /// its bootstrap address.
    MockBroker(cmd::servers::MockBrokerArgs),
    /// Run the bare WebSocket floor server until killed.
    WsFloorServer(cmd::servers::WsFloorServerArgs),
    /// P1/P6: the bare Kafka floor (in a child process), then herald, same
    /// rate (or window), one
    /// subscriber; prints both and the ratios.
    VsKafka(cmd::compare::VsKafkaArgs),
    /// P4: a client N messages behind resumes through herald, against
    /// reading the same N records straight from Kafka.
    Resume(cmd::resume::ResumeArgs),
    /// P2 against the peer: Socket.IO 4 (loadtest/socketio, Redis Streams
    /// adapter, started by bench.sh), then herald, same fan-out; prints both
    /// and the ratio of deliveries per second.
    VsSocketio(cmd::compare::VsSocketioArgs),
    /// Against the strongest peer: Centrifugo v6 (loadtest/centrifugo, Redis
    /// engine with history and recovery, started by bench.sh), then herald,
    /// same load, alternating; prints both and the median ratios.
    VsCentrifugo(cmd::compare::VsCentrifugoArgs),
    /// P3: N connections subscribe (connection i to channel i % channels),
    /// each receives one message, then all sit idle answering pings for
    /// --hold-secs; prints `open K of N` and holds them until killed, so a
    /// script can read the server's memory. Exits 1 if any closed.
    Idle(cmd::idle::IdleArgs),
    /// P8's publisher: --count publishes to one channel, --gap-ms apart,
    /// each stamped with its send time; prints `published ID` for each
    /// once all are acked (the `idle --watch-fanouts` processes time them).
    Fanout(cmd::idle::FanoutArgs),
    /// A latency-distribution chart (SVG) of every run in a comparison's
    /// JSON (baselines in one colour, herald in another).
    Plot(cmd::plot::PlotArgs),
    /// Throughput and p99 against offered load: the same fan-out at each
    /// `--rates` value against a baseline and herald (their order alternating
    /// from point to point), every run judged strictly; writes the JSON and
    /// two SVG charts, and exits 1 afterwards if any run failed its verdict.
    /// A baseline that acks fewer than the minimum but delivers all it acked
    /// once, in order, is noted as saturated at that point, not failed.
    Sweep(cmd::sweep::SweepArgs),
    /// P5: subscribers on edge A, a publisher on edge B; A is killed and
    /// every subscriber resumes on B. Time to all resumed, lost, duplicated.
    Storm(cmd::storm::StormArgs),
    /// Fan-out across two edge nodes of one cluster: subscribers on edge A
    /// and publishers on edge B, against everyone on edge A (the baseline),
    /// alternating pairs, strict verifier.
    VsEdges(cmd::compare::VsEdgesArgs),
    /// P2: the bare WebSocket floor (in process), then herald, same fan-out;
    /// prints both and the ratio of deliveries per second.
    VsWs(cmd::compare::VsWsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Ws(a) => cmd::runs::ws(a).await,
        Cmd::KafkaFloor(a) => cmd::runs::kafka_floor(a).await,
        Cmd::Chaos(a) => cmd::chaos::chaos(a).await,
        Cmd::Soak(a) => cmd::chaos::soak(a).await,
        Cmd::MockBroker(a) => cmd::servers::mock_broker(a).await,
        Cmd::WsFloorServer(a) => cmd::servers::ws_floor_server(a).await,
        Cmd::VsKafka(a) => cmd::compare::vs_kafka(a).await,
        Cmd::Resume(a) => cmd::resume::resume(a).await,
        Cmd::VsSocketio(a) => cmd::compare::vs_socketio(a).await,
        Cmd::VsCentrifugo(a) => cmd::compare::vs_centrifugo(a).await,
        Cmd::Idle(a) => cmd::idle::idle(a).await,
        Cmd::Fanout(a) => cmd::idle::fanout(a).await,
        Cmd::Plot(a) => cmd::plot::plot(a).await,
        Cmd::Sweep(a) => cmd::sweep::sweep(a).await,
        Cmd::Storm(a) => cmd::storm::storm(a).await,
        Cmd::VsEdges(a) => cmd::compare::vs_edges(a).await,
        Cmd::VsWs(a) => cmd::compare::vs_ws(a).await,
    }
}
