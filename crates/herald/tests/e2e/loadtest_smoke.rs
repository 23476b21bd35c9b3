//! The load generator's smoke mode, in the normal test run: a few seconds of
//! real load through a real herald node, judged by the loadtest's verifier
//! (every acked message to every subscriber of its channel, once), and the
//! same run against the bare WebSocket floor. Benchmarks proper are not part
//! of the test run (docs/benchmarks.md).

use crate::common;

use std::time::Duration;

use common::*;
use herald_loadtest::gen::{self, GenConfig};

fn smoke(url: &str) -> GenConfig {
    GenConfig {
        url: url.to_owned(),
        subscribers: 20,
        channels: 4,
        publishers: 2,
        rate: 200,
        duration: Duration::from_secs(2),
        size: 50,
        drain: Duration::from_secs(10),
        progress: false,
        ..GenConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_smoke_against_herald_and_the_ws_floor() {
    let s = Server::start(&unique_prefix("lt-smoke"), &["--publish-rate", "0"]);
    let r = gen::run(smoke(&s.url)).await.expect("herald run");
    r.print();
    assert!(r.acked >= 300, "acked {}", r.acked);
    assert_eq!(r.nacked, 0);
    assert_eq!(r.lost, 0, "lost");
    assert_eq!(r.duplicated, 0, "duplicated");
    // 20 subscribers over 4 channels: each message reaches 5 of them.
    assert_eq!(r.delivered, r.acked * 5);
    assert!(r.latency.samples > 0);
    // The strict verdict every benchmark comparison exits with.
    let strict = herald_loadtest::verify::Strict { min_acked: 300 };
    r.judge(strict).expect("herald: all of it, once, in order");

    let addr = herald_loadtest::wsfloor::serve("127.0.0.1:0".parse().unwrap(), false, None)
        .await
        .unwrap();
    let f = gen::run(smoke(&format!("ws://{addr}/ws")))
        .await
        .expect("floor run");
    assert_eq!((f.lost, f.duplicated), (0, 0));
    assert_eq!(f.delivered, f.acked * 5);
    f.judge(strict)
        .expect("the floor: all of it, once, in order");

    // The floor with Kafka in its path (bench.sh p7k), on the test broker:
    // acked on Kafka's confirmation, delivered by its consumer.
    let addr = herald_loadtest::wsfloor::serve(
        "127.0.0.1:0".parse().unwrap(),
        false,
        Some((brokers(), 8, 100)),
    )
    .await
    .expect("the Kafka floor starts");
    let k = gen::run(smoke(&format!("ws://{addr}/ws")))
        .await
        .expect("Kafka floor run");
    assert_eq!((k.lost, k.duplicated, k.nacked), (0, 0, 0));
    assert_eq!(k.delivered, k.acked * 5);
    k.judge(strict)
        .expect("the Kafka floor: all of it, once, in order");
}

/// The P5 storm in small: subscribers on edge A, A killed (SIGKILL), all
/// resume on edge B; the storm's own verifier counts every acked message
/// once for every subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_smoke_edge_killed_everyone_resumes_on_the_other() {
    let prefix = unique_prefix("storm-smoke");
    let a = Server::start(&prefix, &["--publish-rate", "0"]);
    let b = Server::start(&prefix, &["--publish-rate", "0"]);
    let r = herald_loadtest::storm::run(herald_loadtest::storm::StormConfig {
        url_a: a.url.clone(),
        pid_a: a.pid(),
        url_b: b.url.clone(),
        subscribers: 100,
        channels: 4,
        rate: 50,
        before: Duration::from_secs(2),
        after: Duration::from_secs(3),
        jitter: Duration::from_millis(200),
        size: 50,
        source_ips: Vec::new(),
        drain: Duration::from_secs(20),
        channel_prefix: GenConfig::default().channel_prefix,
        progress: false,
        cold: false,
    })
    .await
    .expect("storm run");
    r.print();
    r.verdict().expect("the storm: all of it, once, in order");
    // 100 subscribers and 4 witnesses on B over 4 channels: 26 per channel.
    assert_eq!(r.totals.delivered, r.acked * 26);
    assert!(r.all_resumed_secs > 0.0);
}
