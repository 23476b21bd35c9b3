//! The fault suite: every test counts what publishers got acked and what the
//! application received, and asserts lost == 0 and duplicated == 0.
//! Each prints a `FAULT-REPORT` line (quoted in docs/reliability.md).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scenario::*;
use common::*;
use herald_client::resilient::{Publisher, Subscriber};
use herald_client::{Connection, Msg};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_killed_clients_fail_over_to_another_edge() {
    let prefix = unique_prefix("edgekill");
    let a = Server::start(&prefix, &[]);
    let b = Server::start(&prefix, &[]);
    let urls = vec![a.url.clone(), b.url.clone()];
    let o = scenario(
        urls,
        &["chat:k0", "chat:k1", "chat:k2", "chat:k3"],
        150,
        200,
        move || a.kill(),
        None,
    )
    .await;
    assert!(o.sub.connects >= 2, "the subscriber failed over");
    assert_all_once("edge SIGKILL, failover to a second edge", &o);
    drop(b);
}

/// The broker goes away while subscribers are connected (and one of them
/// reconnects during the outage), then comes back: publishing resumes on the
/// same herald process and every subscriber gets everything once. The broker
/// is stopped cleanly between two bursts; the in-flight variant below kills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restarted_between_bursts() {
    let port = 19092 + (std::process::id() % 500) as u16;
    let broker = PrivateBroker::start(port);
    let s = Server::start_with(&broker.brokers(), &unique_prefix("brokerrestart"), &[]);
    let chans = ["chat:b0", "chat:b1"];
    let mut steady = Subscriber::new(
        vec![s.url.clone()],
        chans.iter().map(|c| c.to_string()).collect(),
    );
    steady.connect().await.unwrap();
    let mut moving = Subscriber::new(
        vec![s.url.clone()],
        chans.iter().map(|c| c.to_string()).collect(),
    );
    moving.connect().await.unwrap();
    let mut p = Publisher::new(vec![s.url.clone()]);
    let mut acked: Acked = HashMap::new();
    burst(&mut p, &mut acked, &chans, 100).await;
    let mut got_steady = Vec::new();
    let mut got_moving = Vec::new();
    while got_steady.len() < 200 {
        got_steady.push(
            steady
                .next_within(Duration::from_secs(30))
                .await
                .expect("steady before"),
        );
    }
    while got_moving.len() < 150 {
        got_moving.push(
            moving
                .next_within(Duration::from_secs(30))
                .await
                .expect("moving before"),
        );
    }
    broker.stop();
    // One subscriber drops during the outage and must resubscribe through it.
    moving.abort();
    let reconnect = tokio::spawn(async move {
        while got_moving.len() < 400 {
            match moving.next_within(Duration::from_secs(60)).await {
                Some(m) => got_moving.push(m),
                None => break,
            }
        }
        (moving, got_moving)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();
    burst(&mut p, &mut acked, &chans, 100).await;
    while got_steady.len() < 400 {
        match steady.next_within(Duration::from_secs(60)).await {
            Some(m) => got_steady.push(m),
            None => break,
        }
    }
    let (moving, got_moving) = reconnect.await.unwrap();
    for (name, got, stats) in [
        ("steady subscriber", &got_steady, &steady.stats),
        (
            "subscriber reconnecting during the outage",
            &got_moving,
            &moving.stats,
        ),
    ] {
        let o = Outcome {
            tally: tally(&acked, got),
            sub: stats.clone(),
            publisher_retries: p.stats.retries,
        };
        assert_all_once(&format!("broker stopped for 3 s and restarted: {name}"), &o);
    }
    assert!(moving.stats.connects >= 2);
}

/// The broker is killed (SIGKILL) and started again on its data while
/// publishes are in flight: the requests in flight fail or time out, herald
/// nacks them `unavailable` (publish timeout 3 s), librdkafka's idempotent
/// producer bumps its epoch (KIP-360), and the publishers' `retry: true`
/// re-sends find the ones that were appended after all. Every acked publish
/// reaches the subscriber once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restarted_mid_stream() {
    let port = 21092 + (std::process::id() % 500) as u16;
    let broker = Arc::new(PrivateBroker::start(port));
    let s = Server::start_with(
        &broker.brokers(),
        &unique_prefix("brokerkill"),
        &["--publish-timeout-ms", "3000"],
    );
    let b = broker.clone();
    let o = scenario(
        vec![s.url.clone()],
        &["chat:b0", "chat:b1", "chat:b2"],
        150,
        150,
        move || {
            b.kill();
            b.restart();
        },
        None,
    )
    .await;
    assert_all_once("broker killed and restarted mid-stream", &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_connection_reset_mid_stream() {
    let s = Server::start(&unique_prefix("tcpreset"), &[]);
    let o = scenario(
        vec![s.url.clone()],
        &["chat:r0", "chat:r1"],
        200,
        0,
        || {},
        Some(150),
    )
    .await;
    assert!(
        o.sub.connects >= 2,
        "the subscriber reconnected after the reset"
    );
    assert_all_once("subscriber TCP reset mid-stream", &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_disconnected_and_resumes() {
    let s = Server::start(
        &unique_prefix("slow"),
        &["--queue-messages", "32", "--queue-bytes", "65536"],
    );
    let ch = "chat:slow";
    let mut sub = Subscriber::new(vec![s.url.clone()], vec![ch.to_string()]);
    sub.connect().await.unwrap();
    // Publish 1,000 messages of 8 KB while the subscriber does not read:
    // more than its queue and the socket buffers hold.
    let mut p = Publisher::new(vec![s.url.clone()]);
    let big = "x".repeat(8000);
    let mut acked = Vec::new();
    for i in 0..1000 {
        let id = Uuid::new_v4();
        let seq = p
            .publish(ch, id, &json!({ "n": i, "pad": big }))
            .await
            .unwrap();
        acked.push((id, seq));
    }
    let mut delivered = Vec::new();
    while delivered.len() < acked.len() {
        match sub.next_within(Duration::from_secs(30)).await {
            Some(m) => delivered.push(m),
            None => break,
        }
    }
    let acked: Acked = [(ch.to_string(), acked)].into_iter().collect();
    let o = Outcome {
        tally: tally(&acked, &delivered),
        sub: sub.stats.clone(),
        publisher_retries: p.stats.retries,
    };
    assert!(
        o.sub.close_codes.contains(&4008),
        "closed as a slow consumer: {:?}",
        o.sub.close_codes
    );
    assert_all_once("slow consumer cut (4008) and resumed", &o);
}

async fn metrics_text(http: &str) -> String {
    http_get(http, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_reads_cannot_grow_server_memory() {
    const QUEUE_BYTES: usize = 1 << 20;
    let s = Server::start(
        &unique_prefix("neverreads"),
        &[
            "--queue-bytes",
            &QUEUE_BYTES.to_string(),
            "--recent-messages",
            "100",
            // Publishing as fast as it can: not what the rate limit is about here.
            "--publish-rate",
            "0",
        ],
    );
    let ch = "chat:sink";
    let mut never = s.connect().await;
    never.subscribe(ch, None).await.unwrap();
    let rss_before = rss_kib(s.pid());
    let mut p = s.connect().await;
    let pad = "y".repeat(1000);
    let mut max_queued = 0f64;
    let mut sent = 0;
    while sent < 10_000 {
        let ids: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            p.send_publish(ch, *id, &json!({ "pad": pad }))
                .await
                .unwrap();
        }
        for id in &ids {
            assert!(matches!(
                p.publish_result(*id).await.unwrap(),
                herald_client::Published::Ack { .. }
            ));
        }
        sent += ids.len();
        let m = metrics_text(&s.http).await;
        max_queued = max_queued.max(gauge(&m, "herald_hub_outbound_queued_bytes"));
    }
    let m = metrics_text(&s.http).await;
    let rss_after = rss_kib(s.pid());
    eprintln!(
        "FAULT-REPORT never-reading subscriber: published=10000x1KB max_queued_bytes={max_queued} rss_before_kib={rss_before} rss_after_kib={rss_after} slow_consumers={}",
        gauge(&m, "herald_hub_slow_consumers_total")
    );
    assert!(
        max_queued <= (QUEUE_BYTES + 64 * 1024) as f64,
        "queued bytes {max_queued} exceed the bound"
    );
    assert!(
        gauge(&m, "herald_hub_slow_consumers_total") >= 1.0,
        "the reader was cut off"
    );
    // The client finds, once it reads, a bounded amount of data and then the
    // slow-consumer close: the server did not keep queueing for it.
    let mut frames = 0usize;
    let code = loop {
        match never.next_frame_within(Duration::from_secs(10)).await {
            Ok(_) => frames += 1,
            Err(herald_client::ClientError::Closed(code)) => break code,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, Some(4008));
    assert!(frames < 10_000, "the server stopped queueing for it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_storm_of_1000_clients() {
    // HERALD_STORM_CLIENTS raises it for the benchmark (docs/benchmarks.md, P5).
    let clients: usize = std::env::var("HERALD_STORM_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    const CHANNELS: usize = 10;
    let s = Server::start(
        &unique_prefix("storm"),
        &["--max-connections-per-ip", "1000000"],
    );
    let chans: Vec<String> = (0..CHANNELS).map(|i| format!("chat:storm{i}")).collect();
    let mut subs = Vec::new();
    for i in 0..clients {
        let mut sub = Subscriber::new(vec![s.url.clone()], vec![chans[i % CHANNELS].clone()]);
        sub.connect().await.unwrap();
        subs.push(sub);
    }
    let mut p = Connection::connect(&s.url).await.unwrap();
    let mut acked: Acked = HashMap::new();
    for round in 0..2 {
        for ch in &chans {
            for n in 0..10 {
                let (id, seq) = publish_ok(&mut p, ch, json!({ "round": round, "n": n })).await;
                acked.entry(ch.clone()).or_default().push((id, seq));
            }
        }
    }
    // Every client reads what was published so far...
    let mut tasks = Vec::new();
    for mut sub in subs {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 20 {
                match sub.next_within(Duration::from_secs(60)).await {
                    Some(m) => got.push(m),
                    None => break,
                }
            }
            (sub, got)
        }));
    }
    let mut subs = Vec::new();
    let mut delivered: Vec<Vec<Msg>> = Vec::new();
    for t in tasks {
        let (sub, got) = t.await.unwrap();
        subs.push(sub);
        delivered.push(got);
    }
    // ...then all of them drop at once and resume at once, while publishing goes on.
    for sub in subs.iter_mut() {
        sub.abort();
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut sub, mut got) in subs.into_iter().zip(delivered) {
        tasks.push(tokio::spawn(async move {
            while got.len() < 40 {
                match sub.next_within(Duration::from_secs(90)).await {
                    Some(m) => got.push(m),
                    None => break,
                }
            }
            (sub.stats, got)
        }));
    }
    for round in 2..4 {
        for ch in &chans {
            for n in 0..10 {
                let (id, seq) = publish_ok(&mut p, ch, json!({ "round": round, "n": n })).await;
                acked.entry(ch.clone()).or_default().push((id, seq));
            }
        }
    }
    let mut total = Tally::default();
    let mut not_recovered = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let (stats, got) = t.await.unwrap();
        not_recovered += stats.not_recovered;
        let ch = &chans[i % CHANNELS];
        let mine: Acked = [(ch.clone(), acked[ch].clone())].into_iter().collect();
        let t = tally(&mine, &got);
        total.acked += t.acked;
        total.delivered += t.delivered;
        total.lost += t.lost;
        total.duplicated += t.duplicated;
    }
    let took = started.elapsed();
    report(
        &format!("reconnect storm, {clients} clients resume at once"),
        &total,
        &format!("all_resumed_and_caught_up_in={took:?} not_recovered={not_recovered}"),
    );
    assert_eq!(total.lost, 0);
    assert_eq!(total.duplicated, 0);
    assert_eq!(total.delivered, total.acked);
    assert_eq!(not_recovered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_of_two_edges_loses_nothing() {
    let prefix = unique_prefix("rolling");
    let ports = free_ports(2);
    let (pa, pb) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let a = Server::start(&prefix, &["--listen", &pa]);
    let b = Server::start(&prefix, &["--listen", &pb]);
    let urls = vec![a.url.clone(), b.url.clone()];
    let restarted: Arc<Mutex<Vec<Server>>> = Arc::default();
    let keep = restarted.clone();
    let o = scenario(
        urls,
        &["chat:roll0", "chat:roll1", "chat:roll2"],
        200,
        100,
        move || {
            // SIGTERM A (drain), start it again, then the same for B.
            a.stop();
            keep.lock()
                .unwrap()
                .push(Server::start(&prefix, &["--listen", &pa]));
            std::thread::sleep(Duration::from_millis(500));
            b.stop();
            keep.lock()
                .unwrap()
                .push(Server::start(&prefix, &["--listen", &pb]));
        },
        None,
    )
    .await;
    assert!(o.sub.connects >= 2, "the subscriber moved between nodes");
    assert!(
        o.sub.close_codes.iter().all(|c| *c == 1001) || o.sub.close_codes.is_empty(),
        "drained connections close with 1001: {:?}",
        o.sub.close_codes
    );
    assert_all_once("rolling restart of two edges (SIGTERM, drain)", &o);
    drop(restarted);
}

/// A client that stops reading with its TCP window full cannot hold its
/// connection task forever: the server's batched write makes no progress,
/// and after `--write-timeout-secs` the socket is dropped and counted. Before
/// that bound the task stayed blocked inside the write, deaf to overflow,
/// token expiry, drain and shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_socket_is_cut_after_the_write_timeout() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::start(
        &unique_prefix("stalled"),
        &["--write-timeout-secs", "2", "--publish-rate", "0"],
    );
    let ch = "chat:stall";
    // A raw client with a tiny receive buffer that subscribes and then never
    // reads: the server's writes stall once the buffers between are full.
    let addr = s
        .url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(s.url.as_str(), tcp)
        .await
        .expect("handshake");
    ws.send(Message::text(
        json!({ "type": "subscribe", "channel": ch }).to_string(),
    ))
    .await
    .unwrap();
    // Let the subscription take effect before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut p = s.connect().await;
    let pad = "s".repeat(60_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = 0;
    // Two connections open (the stalled one and the publisher) until the
    // stalled one is cut.
    loop {
        let m = http_get(&s.http, "/metrics").await.1;
        if gauge(&m, "herald_edge_connections ") <= 1.0 {
            assert!(gauge(&m, "herald_edge_write_stalls_total") >= 1.0, "{m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled connection was not cut ({published} x 60 KB published)"
        );
        if published < 400 {
            for _ in 0..20 {
                publish_ok(&mut p, ch, json!({ "pad": pad })).await;
            }
            published += 20;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "FAULT-REPORT stalled socket: cut after {published} x 60 KB published, write timeout 2 s"
    );
    // The node still serves everyone else.
    publish_ok(&mut p, ch, json!("after")).await;
    drop(ws);
}
