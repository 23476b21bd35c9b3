//! herald on the three-broker Apache Kafka cluster (`infra/dev/cluster.sh`,
//! RF 3, `min.insync.replicas=2`): topics are created with the configured
//! replication, every acked publish is in the topic and reaches subscribers,
//! and an existing topic below the configured replication is reported.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
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
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster_brokers())
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
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
