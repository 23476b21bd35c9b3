//! Nodes read only what they serve: three herald nodes on one topic of six
//! partitions, each with subscribers on different partitions (or none). Each
//! node's Kafka reads of the topic (`herald_log_fetch_record_bytes_total`,
//! librdkafka's own count of the record bytes its tail received) follow its
//! own subscriptions; a node whose subscribers left stops reading after
//! `follow_grace_secs`, and a client that resumes there later gets everything
//! it missed, once.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use herald_client::Connection;
use herald_proto::partition::partition_for_key;
use herald_proto::Position;
use rdkafka::Message;
use serde_json::json;
use uuid::Uuid;

const PARTITIONS: i32 = 6;
const PER_CHANNEL: usize = 400;
const BODY: usize = 2000;

/// One channel name per partition.
fn channel_per_partition() -> Vec<String> {
    (0..PARTITIONS)
        .map(|p| {
            (0..)
                .map(|i| format!("chat:p{p}-{i}"))
                .find(|c| partition_for_key(c.as_bytes(), PARTITIONS) == p)
                .expect("a channel for every partition")
        })
        .collect()
}

async fn metrics(s: &Server) -> String {
    let (status, body) = http_get(&s.http, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// Record bytes of the namespace's topic the node's tail received. (The
/// total, `herald_log_fetch_bytes_total`, also counts the fetch protocol's
/// traffic for the partitions of herald's own topics every node follows.)
async fn fetched(s: &Server, topic: &str) -> f64 {
    gauge(
        &metrics(s).await,
        &format!("herald_log_fetch_record_bytes_total{{topic=\"{topic}\"}}"),
    )
}

/// Publishes `PER_CHANNEL` messages of about `BODY` bytes to every channel,
/// one connection per channel, 100 in flight; returns the acked seqs.
async fn publish_round(s: &Server, channels: &[String], round: usize) -> Vec<Vec<i64>> {
    let mut tasks = Vec::new();
    for ch in channels {
        let (url, ch) = (s.url.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Connection::connect(&url).await.expect("connect");
            let mut seqs = Vec::with_capacity(PER_CHANNEL);
            for batch in 0..PER_CHANNEL / 100 {
                let mut ids = Vec::new();
                for i in 0..100 {
                    let id = Uuid::new_v4();
                    // Varied text (uuids), so the bytes are what they seem
                    // whatever the broker's compression settings.
                    let text: String = (0..BODY / 32)
                        .map(|_| Uuid::new_v4().simple().to_string())
                        .collect();
                    let n = batch * 100 + i;
                    c.send_publish(&ch, id, &json!({"round": round, "n": n, "text": text}))
                        .await
                        .expect("send");
                    ids.push(id);
                }
                for id in ids {
                    match c.publish_result(id).await.expect("publish answer") {
                        herald_client::Published::Ack { seq, .. } => seqs.push(seq),
                        herald_client::Published::Nack { code, reason } => {
                            panic!("publish nacked: {code}: {reason}")
                        }
                    }
                }
            }
            seqs
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("publisher"));
    }
    out
}

/// Reads `n` messages on `c` and checks them against the acked seqs of each
/// channel: every one, once, in order.
/// Returns the messages' epoch.
async fn expect_exactly(c: &mut Connection, acked: &HashMap<String, Vec<i64>>) -> String {
    let n: usize = acked.values().map(Vec::len).sum();
    let got = read_messages(c, n, Duration::from_secs(60)).await;
    let mut per: HashMap<String, Vec<i64>> = HashMap::new();
    for m in &got {
        per.entry(m.channel.clone()).or_default().push(m.seq);
    }
    for (ch, seqs) in acked {
        assert_eq!(per.get(ch), Some(seqs), "channel {ch}: delivered != acked");
    }
    assert_no_message(c, Duration::from_millis(300)).await;
    got.first().map(|m| m.epoch.clone()).unwrap_or_default()
}

/// Key + value bytes of the topic's records, per partition.
fn partition_bytes(topic: &str) -> HashMap<i32, f64> {
    let mut out = HashMap::new();
    for m in read_topic(topic) {
        let n = m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len);
        *out.entry(m.partition()).or_insert(0.0) += n as f64;
    }
    out
}

async fn wait_for_gauge(s: &Server, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = gauge(&metrics(s).await, name);
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {v}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn each_node_reads_the_partitions_its_subscribers_need() {
    let prefix = unique_prefix("follow");
    let topic = format!("{prefix}chat");
    // The namespace's partitions only: herald's control and presence
    // topics are followed always.
    let tailed = format!("herald_log_tailed_partitions{{topic=\"{topic}\"}}");
    let ns = format!("chat={PARTITIONS}:anonymous");
    let args = ["--namespaces", ns.as_str(), "--follow-grace-secs", "1"];
    let a = Server::start(&prefix, &args);
    let b = Server::start(&prefix, &args);
    let c = Server::start(&prefix, &args);
    let channels = channel_per_partition();
    let (a_chans, b_chans) = (&channels[0..2], &channels[2..4]);

    let mut sub_a = a.connect().await;
    for ch in a_chans {
        sub_a.subscribe(ch, None).await.expect("subscribe on a");
    }
    let mut sub_b = b.connect().await;
    for ch in b_chans {
        sub_b.subscribe(ch, None).await.expect("subscribe on b");
    }
    wait_for_gauge(&a, &tailed, 2.0).await;
    wait_for_gauge(&b, &tailed, 2.0).await;
    assert_eq!(gauge(&metrics(&c).await, &tailed), 0.0);

    // Round 1: everything published through c (which follows nothing).
    let before = [
        fetched(&a, &topic).await,
        fetched(&b, &topic).await,
        fetched(&c, &topic).await,
    ];
    let acked1 = publish_round(&c, &channels, 1).await;
    let by_channel = |acked: &[Vec<i64>], range: std::ops::Range<usize>| {
        range
            .map(|i| (channels[i].clone(), acked[i].clone()))
            .collect::<HashMap<_, _>>()
    };
    let epoch = expect_exactly(&mut sub_a, &by_channel(&acked1, 0..2)).await;
    expect_exactly(&mut sub_b, &by_channel(&acked1, 2..4)).await;
    // Two statistics intervals, so the counters include the whole round.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = [
        fetched(&a, &topic).await,
        fetched(&b, &topic).await,
        fetched(&c, &topic).await,
    ];
    let bytes = partition_bytes(&topic);
    let of = |ps: &[i32]| {
        ps.iter()
            .map(|p| bytes.get(p).copied().unwrap_or(0.0))
            .sum::<f64>()
    };
    let (mine_a, mine_b, all) = (of(&[0, 1]), of(&[2, 3]), of(&[0, 1, 2, 3, 4, 5]));
    let read = [
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
    ];
    eprintln!(
        "round 1: records {all:.0} B (a's partitions {mine_a:.0}, b's {mine_b:.0}); fetched a {:.0}, b {:.0}, c {:.0}",
        read[0], read[1], read[2]
    );
    // Each node read its own partitions' records, and not the four others'
    // (which would double what it read).
    for (node, (got, mine)) in [("a", (read[0], mine_a)), ("b", (read[1], mine_b))] {
        assert!(
            got >= 0.9 * mine,
            "{node} fetched {got:.0} B of its {mine:.0} B"
        );
        assert!(
            got < mine + 0.25 * (all - mine),
            "{node} fetched {got:.0} B: more than its partitions ({mine:.0} B of {all:.0} B)"
        );
    }
    assert!(
        read[2] < 0.02 * all,
        "c follows nothing but fetched {:.0} B",
        read[2]
    );
    // a's tail lag, per partition it follows: both caught up.
    let lags: Vec<String> = metrics(&a)
        .await
        .lines()
        .filter(|l| l.starts_with("herald_log_tail_lag_records{") && l.contains(&topic))
        .map(str::to_owned)
        .collect();
    assert_eq!(lags.len(), 2, "lag series on a: {lags:?}");
    assert!(
        lags.iter().all(|l| l.ends_with(" 0")),
        "a is caught up, yet: {lags:?}"
    );

    // a's subscriber leaves: after the grace period a stops reading.
    let last_seen: HashMap<String, i64> = a_chans
        .iter()
        .enumerate()
        .map(|(i, ch)| (ch.clone(), *acked1[i].last().expect("acked")))
        .collect();
    sub_a.close().await.expect("close");
    wait_for_gauge(&a, &tailed, 0.0).await;
    assert!(gauge(&metrics(&a).await, "herald_hub_partitions_retired_total") >= 2.0);

    // Round 2: a reads nothing of it, b reads its share.
    let before = [fetched(&a, &topic).await, fetched(&b, &topic).await];
    let bytes_before = partition_bytes(&topic);
    let acked2 = publish_round(&c, &channels, 2).await;
    expect_exactly(&mut sub_b, &by_channel(&acked2, 2..4)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let read = [
        fetched(&a, &topic).await - before[0],
        fetched(&b, &topic).await - before[1],
    ];
    let bytes = partition_bytes(&topic);
    let round2 = |ps: &[i32]| {
        ps.iter()
            .map(|p| {
                bytes.get(p).copied().unwrap_or(0.0) - bytes_before.get(p).copied().unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let (mine_b2, all2) = (round2(&[2, 3]), round2(&[0, 1, 2, 3, 4, 5]));
    eprintln!(
        "round 2: records {all2:.0} B; fetched a {:.0} (no subscribers), b {:.0} (its partitions {mine_b2:.0})",
        read[0], read[1]
    );
    assert!(
        read[0] < 0.02 * all2,
        "a has no subscribers but fetched {:.0} B",
        read[0]
    );
    assert!(
        read[1] >= 0.9 * mine_b2,
        "b fetched {:.0} B of its {mine_b2:.0} B",
        read[1]
    );

    // A client resuming on a gets round 2 of its channels from Kafka: all of
    // it, once, in order; and a follows the partitions again.
    let mut back = a.connect().await;
    for ch in a_chans {
        let since = Position {
            seq: last_seen[ch],
            epoch: epoch.clone(),
        };
        let (_, recovered) = back.subscribe(ch, Some(&since)).await.expect("resume");
        assert!(recovered, "{ch} not recovered");
    }
    expect_exactly(&mut back, &by_channel(&acked2, 0..2)).await;
    wait_for_gauge(&a, &tailed, 2.0).await;
}
