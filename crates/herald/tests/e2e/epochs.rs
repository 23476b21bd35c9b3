//! Several herald nodes started at the same moment against a fresh topic
//! prefix agree on each topic's epoch, whether one of them creates the topic
//! or it was made beforehand outside herald: a client moving between them
//! resumes with `recovered: true`.

use crate::common;

use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// Starts three nodes at once on `prefix` and returns the epoch each gives
/// for the same channel, with the nodes.
async fn epochs_of_three_started_at_once(prefix: &str) -> (Vec<String>, Vec<Server>) {
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let prefix = prefix.to_owned();
            std::thread::spawn(move || Server::start(&prefix, &[]))
        })
        .collect();
    let servers: Vec<Server> = starts
        .into_iter()
        .map(|h| h.join().expect("a node started"))
        .collect();
    let mut epochs = Vec::new();
    for s in &servers {
        let mut c = s.connect().await;
        let (pos, _) = c.subscribe("chat:e", None).await.expect("subscribe");
        epochs.push(pos.epoch);
    }
    (epochs, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_started_together_on_a_new_prefix_agree_on_the_epoch() {
    let (epochs, servers) = epochs_of_three_started_at_once(&unique_prefix("epochs")).await;
    assert!(
        epochs.iter().all(|e| *e == epochs[0]),
        "epochs differ: {epochs:?}"
    );

    // A client that read from one node resumes on another, recovered.
    let mut p = servers[0].connect().await;
    let mut a = servers[0].connect().await;
    a.subscribe("chat:e", None).await.unwrap();
    publish_ok(&mut p, "chat:e", serde_json::json!(1)).await;
    let first = read_messages(&mut a, 1, Duration::from_secs(10)).await;
    publish_ok(&mut p, "chat:e", serde_json::json!(2)).await;
    let mut b = servers[2].connect().await;
    let since = herald_client::Position {
        seq: first[0].seq,
        epoch: first[0].epoch.clone(),
    };
    let (_, recovered) = b.subscribe("chat:e", Some(&since)).await.unwrap();
    assert!(recovered, "resume on another node");
    let next = read_messages(&mut b, 1, Duration::from_secs(10)).await;
    assert_eq!(next[0].data, serde_json::json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_started_together_on_a_topic_made_outside_herald_agree() {
    let prefix = unique_prefix("epochsext");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin");
    let topic = format!("{prefix}chat");
    let res = admin
        .create_topics(
            [&NewTopic::new(&topic, 4, TopicReplication::Fixed(-1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    let (epochs, _servers) = epochs_of_three_started_at_once(&prefix).await;
    assert!(
        epochs.iter().all(|e| *e == epochs[0]),
        "epochs differ: {epochs:?}"
    );
}
