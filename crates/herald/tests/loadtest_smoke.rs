//! The load generator's smoke mode, in the normal test run: a few seconds of
//! real load through a real herald node, judged by the loadtest's verifier
//! (every acked message to every subscriber of its channel, once), and the
//! same run against the bare WebSocket floor. Benchmarks proper are not part
//! of the test run (docs/benchmarks.md).

mod common;

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

    let addr = herald_loadtest::wsfloor::serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let f = gen::run(smoke(&format!("ws://{addr}/ws")))
        .await
        .expect("floor run");
    assert_eq!((f.lost, f.duplicated), (0, 0));
    assert_eq!(f.delivered, f.acked * 5);
}
