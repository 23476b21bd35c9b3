//! A client cut off from its node by a silent partition (issue 35's
//! "clients from a node without closing their sockets"): the client lives
//! in a network namespace of its own, joined to the host by a veth pair;
//! taking the host's end down drops its packets with no reset. The node
//! must notice by itself (heartbeat and idle timeout), free the
//! connection, keep serving everyone else, and the client, once the link
//! is back, must resume with nothing lost and nothing twice, its publish
//! sent into the partition stored once. And a node cut off from its broker
//! (the broker in the namespace): publishes are refused `unavailable`
//! within the publish timeout, never acked, `/readyz` turns it out of the
//! balancer, its clients stay connected, and after the heal every publish
//! retried is stored once and delivered once. Needs root (`ip netns`), as
//! the test suite has on this machine.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::common::*;

/// A network namespace and a veth pair to it: the host's end `host_ip`,
/// the namespace's `ns_ip`. Removed on drop.
struct NetNs {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    fn new() -> NetNs {
        let tag = &Uuid::new_v4().simple().to_string()[..6];
        // A /30 of 10.77.0.0/16 per test: unlikely to meet another's.
        let n = u16::from_str_radix(&tag[..4], 16).unwrap_or(1) & 0x3fff;
        let (a, b) = ((n >> 6) & 0xff, (n & 0x3f) << 2);
        let (host_ip, ns_ip) = (
            format!("10.77.{a}.{}", b + 1),
            format!("10.77.{a}.{}", b + 2),
        );
        let ns = NetNs {
            name: format!("hpart-{tag}"),
            host_if: format!("hp{tag}a"),
            host_ip,
            ns_ip: ns_ip.clone(),
        };
        let peer = format!("hp{tag}b");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// Drops every packet between the namespace and the host (the link
    /// goes down; nobody is told).
    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }

    /// A TCP connection to `addr` made from inside the namespace.
    fn connect(&self, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let path = format!("/var/run/netns/{}", self.name);
        let stream = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the namespace");
            // SAFETY: setns on this thread only (it ends here); the socket
            // made next belongs to the namespace for its whole life.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            // A link just brought up may refuse for a moment (no carrier
            // yet): tried again for up to 10 s.
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Err(e) if Instant::now() < until => {
                        eprintln!("connect from the namespace: {e}; again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    r => break r,
                }
            }
        })
        .join()
        .expect("the connecting thread")
        .expect("connect from the namespace");
        stream.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpStream::from_std(stream).expect("tokio socket")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// How many of `records` carry message id `id` (`herald-id` header).
fn stored(records: &[rdkafka::message::OwnedMessage], id: Uuid) -> usize {
    let id = id.to_string();
    records
        .iter()
        .filter(|r| {
            rdkafka::Message::headers(*r)
                .and_then(|h| {
                    rdkafka::message::Headers::iter(h)
                        .find(|x| x.key == "herald-id")
                        .and_then(|x| x.value)
                })
                .is_some_and(|v| v == id.as_bytes())
        })
        .count()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket from inside the namespace to the node.
async fn connect_inside(ns: &NetNs, port: u16) -> Ws {
    let addr = format!("{}:{port}", ns.host_ip).parse().expect("address");
    let tcp = ns.connect(addr);
    let url = format!("ws://{}:{port}/ws", ns.host_ip);
    tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("WebSocket from the namespace")
        .0
}

async fn send(ws: &mut Ws, f: Value) {
    ws.send(Message::text(f.to_string())).await.expect("send");
}

/// Frames until `pick` took `n`, within `wait`.
async fn take(ws: &mut Ws, n: usize, wait: Duration, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("after {} of {n}", out.len()))
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = m {
            let f: Value = serde_json::from_str(t.as_str()).expect("json");
            if pick(&f) {
                out.push(f);
            }
        }
    }
    out
}

/// The node's open connections, as its metrics say.
async fn connections(s: &Server) -> f64 {
    gauge(
        &http_get(&s.http, "/metrics").await.1,
        "herald_edge_connections ",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_a_silent_partition_is_freed_and_resumes_with_nothing_lost() {
    let ns = NetNs::new();
    let prefix = unique_prefix("partition");
    let s = Server::start_env(
        &prefix,
        &["--listen", "0.0.0.0:0", "--publish-rate", "0"],
        &[
            ("HERALD_SERVER_HEARTBEAT_SECS", "1"),
            ("HERALD_SERVER_IDLE_TIMEOUT_SECS", "3"),
            ("HERALD_SERVER_WRITE_TIMEOUT_SECS", "2"),
        ],
    );
    let port: u16 = s
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches("/ws").parse().ok())
        .expect("port");
    let ch = "chat:behind-the-wall";
    let mut inside = connect_inside(&ns, port).await;
    send(&mut inside, json!({ "type": "subscribe", "channel": ch })).await;
    take(&mut inside, 1, Duration::from_secs(10), |f| {
        f["type"] == "subscribed"
    })
    .await;
    let mut p = s.connect().await;
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(publish_ok(&mut p, ch, json!({ "before": i })).await.1);
    }
    let got = take(&mut inside, 10, Duration::from_secs(10), |f| {
        f["type"] == "message"
    })
    .await;
    let last = got.last().expect("messages")["seq"].as_i64().expect("seq");
    let epoch = got[0]["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(connections(&s).await, 2.0);

    // The wall goes up: the client's publish goes nowhere, the node keeps
    // acking everyone else and frees the silent connection by itself.
    ns.cut();
    let cut_at = Instant::now();
    let lost_id = Uuid::new_v4();
    let _ = inside
        .send(Message::text(
            json!({ "type": "publish", "channel": ch, "id": lost_id, "data": { "inside": true } })
                .to_string(),
        ))
        .await;
    for i in 0..20 {
        acked.push(publish_ok(&mut p, ch, json!({ "during": i })).await.1);
    }
    let freed_by = Instant::now() + Duration::from_secs(20);
    while connections(&s).await > 1.0 {
        assert!(
            Instant::now() < freed_by,
            "the node still holds the partitioned connection"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "partition: the node freed the silent connection {:.1} s after the cut",
        cut_at.elapsed().as_secs_f64()
    );

    // The wall comes down: a new connection resumes from the last seq the
    // client had, and re-sends its unanswered publish with `retry`.
    ns.heal();
    drop(inside);
    let mut back = connect_inside(&ns, port).await;
    send(
        &mut back,
        json!({ "type": "subscribe", "channel": ch, "since": { "seq": last, "epoch": epoch } }),
    )
    .await;
    send(
        &mut back,
        json!({ "type": "publish", "channel": ch, "id": lost_id, "data": { "inside": true }, "retry": true }),
    )
    .await;
    // Until the ack and the 21 messages (the 20 published during the
    // partition and its own) came.
    let (mut got, mut inside_seq, mut recovered) = (Vec::new(), None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while inside_seq.is_none() || got.len() < 21 {
        let f = take(
            &mut back,
            1,
            deadline.saturating_duration_since(Instant::now()),
            |_| true,
        )
        .await
        .remove(0);
        match f["type"].as_str() {
            Some("subscribed") => recovered = Some(f["recovered"].clone()),
            Some("publish_ack") => inside_seq = f["seq"].as_i64(),
            Some("message") => got.push(f["seq"].as_i64().expect("seq")),
            _ => {}
        }
    }
    assert_eq!(recovered, Some(json!(true)));
    let mut want: Vec<i64> = acked[10..].to_vec();
    want.extend(inside_seq);
    want.sort_unstable();
    assert_eq!(
        got, want,
        "the 20 published during the partition and its own, once, in order"
    );
    let more = tokio::time::timeout(Duration::from_millis(500), back.next()).await;
    assert!(
        !matches!(&more, Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"message\"")),
        "a message twice: {more:?}"
    );
    // The publish sent into the partition is stored once, whether or not
    // it had reached the node before the wall went up.
    let stored = stored(&read_topic(&format!("{prefix}chat")), lost_id);
    assert_eq!(
        stored, 1,
        "the publish sent into the partition, stored once"
    );
}

/// One Kafka node inside `ns` on its address (`infra/kafka/node.sh` with
/// `KAFKA_HOST`), fresh data; stopped on drop.
struct NsBroker<'a> {
    ns: &'a NetNs,
    dir: std::path::PathBuf,
}

impl<'a> NsBroker<'a> {
    fn node_sh(&self, what: &str) -> std::process::Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/kafka/node.sh");
        Command::new("ip")
            .args(["netns", "exec", &self.ns.name, script, what])
            .env("KAFKA_NODE_ID", "1")
            .env("KAFKA_NODE_DIR", &self.dir)
            .env("KAFKA_HOST", &self.ns.ns_ip)
            .env("KAFKA_PORT", "9092")
            .env("KAFKA_CONTROLLER_PORT", "9093")
            .env("KAFKA_VOTERS", format!("1@{}:9093", self.ns.ns_ip))
            .env("KAFKA_HEAP", "384m")
            .output()
            .expect("running node.sh")
    }

    fn start(ns: &'a NetNs) -> NsBroker<'a> {
        let dir = std::env::temp_dir().join(format!("herald-{}-broker", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        let b = NsBroker { ns, dir };
        let out = b.node_sh("start");
        assert!(
            out.status.success(),
            "the broker in the namespace did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        b
    }

    fn bootstrap(&self) -> String {
        format!("{}:9092", self.ns.ns_ip)
    }
}

impl Drop for NsBroker<'_> {
    fn drop(&mut self) {
        let _ = self.node_sh("kill");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ready(s: &Server) -> u16 {
    http_get(&s.http, "/readyz").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_its_broker_refuses_publishes_keeps_its_clients_and_recovers() {
    let ns = NetNs::new();
    let broker = NsBroker::start(&ns);
    let brokers = broker.bootstrap();
    let prefix = unique_prefix("nobroker");
    let s = Server::start_with(
        &brokers,
        &prefix,
        &["--publish-timeout-ms", "3000", "--publish-rate", "0"],
    );
    let ch = "chat:cut-off";
    let mut sub = s.connect().await;
    sub.subscribe(ch, None).await.expect("subscribe");
    let mut p = s.connect().await;
    for i in 0..10 {
        publish_ok(&mut p, ch, json!({ "before": i })).await;
    }
    assert_eq!(
        read_messages(&mut sub, 10, Duration::from_secs(10))
            .await
            .len(),
        10
    );
    assert_eq!(ready(&s).await, 200);

    ns.cut();
    let cut_at = Instant::now();
    // Five publishes at once: each refused `unavailable` within the
    // publish timeout, none acked.
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        p.send_publish(ch, *id, &json!({ "during": i }))
            .await
            .expect("send");
    }
    for id in &ids {
        match p.publish_result(*id).await.expect("an answer") {
            herald_client::Published::Nack { code, .. } => assert_eq!(code, "unavailable"),
            herald_client::Published::Ack { seq, .. } => {
                panic!("acked at {seq} with the broker unreachable")
            }
        }
    }
    let refused_after = cut_at.elapsed();
    assert!(
        refused_after < Duration::from_secs(8),
        "refused after {refused_after:?}"
    );
    let unready_by = Instant::now() + Duration::from_secs(30);
    while ready(&s).await != 503 {
        assert!(
            Instant::now() < unready_by,
            "/readyz still 200 without a broker"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let unready_after = cut_at.elapsed();
    // Its clients stay: the subscriber still answers.
    sub.ping().await.expect("the subscriber is still connected");

    ns.heal();
    let healed_at = Instant::now();
    let ready_by = Instant::now() + Duration::from_secs(90);
    while ready(&s).await != 200 {
        assert!(Instant::now() < ready_by, "/readyz not back after the heal");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready_after = healed_at.elapsed();
    // Each refused publish, re-sent with `retry`, is acked once (with the
    // seq of its first attempt if that was stored after all).
    let mut want = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let seq = loop {
            p.send_publish_retry(ch, *id, &json!({ "during": i }))
                .await
                .expect("send");
            match p.publish_result(*id).await.expect("an answer") {
                herald_client::Published::Ack { seq, .. } => break seq,
                herald_client::Published::Nack { code, .. } => {
                    assert_eq!(code, "unavailable");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        want.push(seq);
    }
    for i in 0..5 {
        want.push(publish_ok(&mut p, ch, json!({ "after": i })).await.1);
    }
    want.sort_unstable();
    want.dedup();
    assert_eq!(want.len(), 10);
    let got = read_messages(&mut sub, 10, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
    assert_no_message(&mut sub, Duration::from_millis(500)).await;
    let records = read_topic_from(&brokers, &format!("{prefix}chat"));
    for id in &ids {
        let n = stored(&records, *id);
        assert_eq!(n, 1, "publish {id} stored once");
    }
    println!(
        "partition from the broker: publishes refused within {:.1} s, /readyz 503 after {:.1} s, 200 again {:.1} s after the heal",
        refused_after.as_secs_f64(),
        unready_after.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    drop(s);
}
