//! herald on the three-broker Apache Kafka cluster (`infra/dev/cluster.sh`,
//! RF 3, `min.insync.replicas=2`): topics are created with the configured
//! replication, every acked publish is in the topic and reaches subscribers,
//! an existing topic below the configured replication is reported, and the
//! broker faults inside the cluster (a partition leader killed, a rolling
//! restart, the whole cluster restarted, a broker paused, two of three down)
//! lose nothing acked and deliver nothing twice. Each fault test prints a
//! `FAULT-REPORT` line (quoted in docs/reliability.md) and puts every broker
//! back when it ends. The tests run one at a time (`infra/dev/test.sh`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::scenario::*;
use common::*;
use herald_client::Published;
use herald_proto::partition::partition_for_key;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::json;
use uuid::Uuid;

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", cluster_brokers())
        .create()
        .expect("admin client")
}

/// (smallest replica count of any partition, min.insync.replicas) of `topic`.
async fn replication_of(topic: &str) -> (usize, String) {
    let md = Cluster::metadata(topic);
    let rf = md.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.replicas().len())
        .min()
        .expect("partitions");
    let res = admin()
        .describe_configs(
            [&ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("describe configs");
    let cfg = res.into_iter().next().expect("one result").expect("config");
    let min_isr = cfg
        .get("min.insync.replicas")
        .and_then(|e| e.value.clone())
        .expect("min.insync.replicas");
    (rf, min_isr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_with_rf3_are_all_in_the_topic_and_delivered_once() {
    let s = Server::start_with(
        &cluster_brokers(),
        &unique_prefix("cluster"),
        &["--replication", "3", "--min-insync-replicas", "2"],
    );
    let topic = format!("{}chat", s.prefix);
    assert_eq!(replication_of(&topic).await, (3, "2".to_string()));
    assert_eq!(
        replication_of(&format!("{}meta", s.prefix)).await,
        (3, "2".to_string())
    );

    let chans = ["chat:r0", "chat:r1", "chat:r2", "chat:r3"];
    let mut sub = s.connect().await;
    for ch in chans {
        sub.subscribe(ch, None).await.expect("subscribe");
    }
    let mut p = s.connect().await;
    let mut acked: HashMap<String, Vec<(Uuid, i64)>> = HashMap::new();
    for i in 0..100 {
        for ch in chans {
            let (id, seq) = publish_ok(&mut p, ch, json!({ "i": i })).await;
            acked.entry(ch.to_string()).or_default().push((id, seq));
        }
    }
    let got = read_messages(&mut sub, 400, Duration::from_secs(30)).await;
    let t = tally(&acked, &got);
    report("RF 3 cluster: publish and deliver", &t, "");
    assert_eq!(
        (t.acked, t.delivered, t.lost, t.duplicated),
        (400, 400, 0, 0)
    );

    // Every acked publish is a record of the topic, once, at its seq.
    let records = read_topic_from(&cluster_brokers(), &topic);
    assert_eq!(records.len(), 400, "records in {topic}");
    let mut at: HashMap<(String, i64), Uuid> = HashMap::new();
    for r in &records {
        let key = String::from_utf8_lossy(r.key().expect("key")).into_owned();
        let id = r
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == "herald-id"))
            .and_then(|x| x.value)
            .and_then(|v| Uuid::parse_str(&String::from_utf8_lossy(v)).ok())
            .expect("herald-id header");
        assert!(at.insert((key, r.offset()), id).is_none());
    }
    for (ch, list) in &acked {
        for (id, seq) in list {
            assert_eq!(at.get(&(ch.clone(), *seq)), Some(id), "{ch} seq {seq}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_existing_topic_below_the_configured_replication_is_reported() {
    let prefix = unique_prefix("clusterlow");
    let topic = format!("{prefix}chat");
    // Made by someone else with RF 1 and min.insync.replicas 1.
    let nt = NewTopic::new(&topic, 4, TopicReplication::Fixed(1)).set("min.insync.replicas", "1");
    let res = admin()
        .create_topics(
            [&nt],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");

    let s = Server::start_with(
        &cluster_brokers(),
        &prefix,
        &["--replication", "3", "--min-insync-replicas", "2"],
    );
    // herald serves on it (it does not change a topic it did not create)...
    let mut c = s.connect().await;
    c.subscribe("chat:x", None).await.expect("subscribe");
    publish_ok(&mut c, "chat:x", json!("still works")).await;
    read_messages(&mut c, 1, Duration::from_secs(10)).await;
    assert_eq!(replication_of(&topic).await, (1, "1".to_string()));
    // ...and says, in its log and its metrics, that it is below the configuration.
    let (status, metrics) = http_get(&s.http, "/metrics").await;
    assert_eq!(status, 200);
    let gauge = |topic: &str, setting: &str| -> Option<String> {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("herald_log_topic_below_configured{")
                    && l.contains(&format!("topic=\"{topic}\""))
                    && l.contains(&format!("setting=\"{setting}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    for setting in ["replication", "min_insync_replicas"] {
        assert_eq!(
            gauge(&topic, setting).as_deref(),
            Some("1"),
            "{setting}:\n{metrics}"
        );
        // The topics herald created itself have what was configured.
        let meta = format!("{prefix}meta");
        assert_eq!(
            gauge(&meta, setting).as_deref(),
            Some("0"),
            "{setting}:\n{metrics}"
        );
    }
    let log = s.log();
    assert!(
        log.contains("below the configured replication setting"),
        "no warning in the log:\n{log}"
    );
}

/// herald on the cluster with production replication settings and a short
/// publish timeout (a publish stuck behind a dead leader is nacked and
/// re-sent by the client rather than waiting 10 s).
fn cluster_server(prefix: &str) -> Server {
    cluster_server_with(prefix, "5000")
}

fn cluster_server_with(prefix: &str, publish_timeout_ms: &str) -> Server {
    Server::start_with(
        &cluster_brokers(),
        prefix,
        &[
            "--replication",
            "3",
            "--min-insync-replicas",
            "2",
            "--publish-timeout-ms",
            publish_timeout_ms,
        ],
    )
}

const CHANS: [&str; 3] = ["chat:f0", "chat:f1", "chat:f2"];

/// The node leading the partition of `CHANS[0]` (the busiest of the test).
fn leader_of_first_channel(prefix: &str) -> i32 {
    let topic = format!("{prefix}chat");
    let p = partition_for_key(CHANS[0].as_bytes(), 4);
    Cluster::leader_of(&topic, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_leader_killed_mid_stream() {
    let _restore = Cluster::restore_on_drop();
    let prefix = unique_prefix("leaderkill");
    let s = cluster_server(&prefix);
    let leader = leader_of_first_channel(&prefix);
    let o = scenario(
        vec![s.url.clone()],
        &CHANS,
        300,
        150,
        move || Cluster::kill(leader),
        None,
    )
    .await;
    assert_all_once(
        &format!("cluster: leader (node {leader}) SIGKILLed mid-stream"),
        &o,
    );
    assert_ne!(
        leader_of_first_channel(&prefix),
        leader,
        "a new leader took over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_of_all_three_brokers_under_load() {
    let _restore = Cluster::restore_on_drop();
    let s = cluster_server(&unique_prefix("rolling"));
    // About 30 s of publishing at ~60/s in all, across the three restarts.
    let o = scenario_paced(
        vec![s.url.clone()],
        &CHANS,
        600,
        Duration::from_millis(50),
        60,
        || {
            for n in 1..=3 {
                Cluster::stop(n);
                Cluster::start(n);
            }
        },
        None,
    )
    .await;
    assert_all_once(
        "cluster: rolling restart of all three brokers (SIGTERM, start)",
        &o,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_stopped_and_started_with_publishes_in_flight() {
    let _restore = Cluster::restore_on_drop();
    let s = cluster_server(&unique_prefix("wholecluster"));
    let o = scenario(
        vec![s.url.clone()],
        &CHANS,
        200,
        150,
        || {
            Cluster::script(&["stop"]);
            std::thread::sleep(Duration::from_secs(2));
            Cluster::script(&["start"]);
        },
        None,
    )
    .await;
    assert_all_once("cluster: all three brokers stopped and started", &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_paused_longer_than_the_request_timeout_then_resumed() {
    let _restore = Cluster::restore_on_drop();
    let prefix = unique_prefix("pause");
    let s = cluster_server(&prefix);
    let leader = leader_of_first_channel(&prefix);
    let o = scenario_paced(
        vec![s.url.clone()],
        &CHANS,
        400,
        Duration::from_millis(20),
        60,
        move || {
            // Longer than herald's publish timeout (5 s) and the brokers'
            // session timeout (6 s): the controller fences it, leadership
            // moves, publishes in flight to it time out and are re-sent.
            Cluster::pause(leader);
            std::thread::sleep(Duration::from_secs(12));
            Cluster::resume(leader);
        },
        None,
    )
    .await;
    assert_all_once(
        &format!("cluster: leader (node {leader}) paused 12 s, resumed"),
        &o,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_three_down_publishes_are_refused_and_reads_go_on() {
    let _restore = Cluster::restore_on_drop();
    let prefix = unique_prefix("twodown");
    let s = cluster_server_with(&prefix, "3000");
    let ch = CHANS[0];
    let mut live = s.connect().await;
    let (pos, _) = live.subscribe(ch, None).await.unwrap();
    let mut p = s.connect().await;
    let mut acked: Acked = HashMap::new();
    for i in 0..50 {
        let (id, seq) = publish_ok(&mut p, ch, json!({ "before": i })).await;
        acked.entry(ch.to_string()).or_default().push((id, seq));
    }
    let mut got = read_messages(&mut live, 50, Duration::from_secs(30)).await;

    let leader = leader_of_first_channel(&prefix);
    let down: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    for n in &down {
        Cluster::kill(*n);
    }
    // With one replica left, min.insync.replicas=2 cannot be met: a publish
    // is nacked `unavailable`, never acked. Its outcome is unknown, not
    // failed: herald keeps the append going, and it may be stored once a
    // broker returns; the client re-sends it with `retry: true` below.
    let mut to_send: Vec<(Uuid, serde_json::Value, bool)> = Vec::new();
    for i in 0..5 {
        let (id, data) = (Uuid::new_v4(), json!({ "during": i }));
        match p.publish(ch, id, &data).await.unwrap() {
            Published::Nack { code, .. } => assert_eq!(code, "unavailable"),
            Published::Ack { seq, .. } => {
                panic!("acked at seq {seq} with two of three brokers down")
            }
        }
        to_send.push((id, data, true));
    }
    let refused = to_send.len();
    // A client resuming from the start still reads everything that was acked.
    let mut reader = s.connect().await;
    let from_start = herald_client::Position {
        seq: -1,
        epoch: pos.epoch.clone(),
    };
    let (_, recovered) = reader.subscribe(ch, Some(&from_start)).await.unwrap();
    assert!(recovered, "resume with two brokers down");
    let resumed = read_messages(&mut reader, 50, Duration::from_secs(30)).await;
    assert_eq!(
        resumed.iter().map(|m| m.seq).collect::<Vec<_>>(),
        acked[ch].iter().map(|a| a.1).collect::<Vec<_>>()
    );

    // One broker back: publishing works again. Every publish nacked from
    // here on is re-sent with the same id and `retry: true`, as a client
    // must, until it is acked.
    Cluster::start(down[0]);
    to_send.extend((0..50).map(|i| (Uuid::new_v4(), json!({ "after": i }), false)));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut found_stored = 0;
    for (id, data, mut retry) in to_send {
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "not acked after a broker returned"
            );
            if retry {
                p.send_publish_retry(ch, id, &data).await.unwrap();
            } else {
                p.send_publish(ch, id, &data).await.unwrap();
            }
            match p.publish_result(id).await.unwrap() {
                Published::Ack { seq, duplicate } => {
                    found_stored += usize::from(duplicate);
                    acked.get_mut(ch).unwrap().push((id, seq));
                    break;
                }
                Published::Nack { code, .. } => {
                    assert_eq!(code, "unavailable");
                    retry = true;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    got.extend(read_messages(&mut live, 55, Duration::from_secs(30)).await);
    assert_no_message(&mut live, Duration::from_millis(500)).await;
    let t = tally(&acked, &got);
    report(
        "cluster: two of three brokers down, then one back",
        &t,
        &format!("refused_while_down={refused} found_stored_on_retry={found_stored}"),
    );
    assert_eq!(
        (t.acked, t.delivered, t.lost, t.duplicated),
        (105, 105, 0, 0)
    );
}
