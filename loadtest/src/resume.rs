//! P4: how long a client N messages behind takes to catch up through herald,
//! against reading the same N records straight from Kafka (assign at the
//! offset, read to the end) in the same run.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::gen::connect;

#[derive(Clone, Debug)]
pub struct ResumeConfig {
    pub url: String,
    /// Resume on this node instead (one that never followed the channel: a
    /// cold resume, served from Kafka, not from a node's ring).
    pub resume_url: Option<String>,
    pub brokers: String,
    /// herald's topic prefix (the channel is in `{prefix}chat`).
    pub topic_prefix: String,
    pub messages: usize,
    pub size: usize,
    pub fetch_wait_max_ms: u32,
}

#[derive(Debug, serde::Serialize)]
pub struct ResumeReport {
    pub messages: usize,
    pub herald_secs: f64,
    pub kafka_secs: f64,
    pub ratio: f64,
}

#[derive(Deserialize)]
struct F {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    position: Option<Pos>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

#[derive(Deserialize, serde::Serialize, Clone)]
struct Pos {
    seq: i64,
    epoch: String,
}

async fn next_of(ws: &mut crate::gen::Ws, kind: &str) -> anyhow::Result<F> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let f: F = serde_json::from_str(t.as_str())?;
                if f.kind == kind {
                    return Ok(f);
                }
                if f.kind == "error" {
                    bail!("server error: {t}");
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => bail!("closed"),
            Err(_) => bail!("no `{kind}` within 30 s"),
        }
    }
}

/// Publishes `n` messages on `channel`, every one acked.
async fn publish_n(url: &str, channel: &str, n: usize, size: usize) -> anyhow::Result<()> {
    let mut p = connect(url, None).await?;
    let pad = "x".repeat(size);
    let frame = |i: usize, id: Uuid| {
        serde_json::json!({"type": "publish", "channel": channel, "id": id, "data": {"n": i, "pad": pad}})
            .to_string()
    };
    let mut outstanding: std::collections::HashMap<Uuid, usize> = Default::default();
    let mut retry: Vec<(Uuid, usize)> = Vec::new();
    let (mut next, mut acked) = (0usize, 0usize);
    let mut pause_until = Instant::now();
    while acked < n {
        if Instant::now() >= pause_until {
            while outstanding.len() < 256 {
                let (id, i) = match retry.pop() {
                    Some(r) => r,
                    None if next < n => {
                        next += 1;
                        (Uuid::new_v4(), next - 1)
                    }
                    None => break,
                };
                p.send(Message::text(frame(i, id))).await?;
                outstanding.insert(id, i);
            }
        }
        let wait = pause_until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let m = if outstanding.is_empty() {
            tokio::time::sleep(wait).await;
            continue;
        } else {
            tokio::time::timeout(Duration::from_secs(30), p.next())
                .await
                .map_err(|_| anyhow!("no publish answer within 30 s"))?
        };
        let Some(Ok(Message::Text(t))) = m else {
            match m {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the publisher's connection closed"),
            }
        };
        let f: F = serde_json::from_str(t.as_str())?;
        let Some(i) = f.id.and_then(|id| outstanding.remove(&id).map(|i| (id, i))) else {
            continue;
        };
        match f.kind.as_str() {
            "publish_ack" => acked += 1,
            "publish_nack" if f.code.as_deref() == Some("rate_limited") => {
                retry.push(i);
                let after = Duration::from_millis(f.retry_after_ms.unwrap_or(10));
                pause_until = pause_until.max(Instant::now() + after);
            }
            _ => bail!("publish refused: {t}"),
        }
    }
    let _ = p.close(None).await;
    Ok(())
}

pub async fn run(cfg: ResumeConfig) -> anyhow::Result<ResumeReport> {
    let channel = format!("chat:resume-{}", &Uuid::new_v4().simple().to_string()[..8]);
    // Where the channel is now.
    let mut ws = connect(&cfg.url, None).await?;
    ws.send(Message::text(
        serde_json::json!({"type": "subscribe", "channel": channel}).to_string(),
    ))
    .await?;
    let pos = next_of(&mut ws, "subscribed")
        .await?
        .position
        .ok_or_else(|| anyhow!("no position"))?;
    let _ = ws.close(None).await;
    // N messages behind: publish them, 256 in flight; a publish refused
    // with `rate_limited` (herald's default 1,000/s per connection) is sent
    // again after the `retry_after_ms` the nack gives.
    publish_n(&cfg.url, &channel, cfg.messages, cfg.size).await?;
    // Through herald: subscribe with since, until all N are in, each once
    // and in order. The clock starts at the subscribe, on an open
    // connection (a client resumes on the connection it has), and stops
    // when the last message is decoded; the raw read's clock covers the
    // same work: its metadata lookup, the fetches, and decoding each
    // record's value.
    let mut ws = connect(cfg.resume_url.as_deref().unwrap_or(&cfg.url), None).await?;
    let started = Instant::now();
    ws.send(Message::text(
        serde_json::json!({"type": "subscribe", "channel": channel, "since": pos}).to_string(),
    ))
    .await?;
    let sub = next_of(&mut ws, "subscribed").await?;
    if sub.recovered != Some(true) {
        bail!("the resume was not recovered");
    }
    let mut last = pos.seq;
    for _ in 0..cfg.messages {
        let m = next_of(&mut ws, "message").await?;
        let seq = m.seq.ok_or_else(|| anyhow!("a message without seq"))?;
        if seq <= last {
            bail!("seq {seq} after {last}: duplicated or out of order");
        }
        last = seq;
    }
    let herald_secs = started.elapsed().as_secs_f64();
    let _ = ws.close(None).await;

    // Straight from Kafka: the same records.
    let brokers = cfg.brokers.clone();
    let topic = format!("{}chat", cfg.topic_prefix);
    let (n, from) = (cfg.messages, pos.seq + 1);
    let wait = cfg.fetch_wait_max_ms;
    let ch = channel.clone();
    let kafka_secs = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("loadtest-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", wait.to_string())
            .set("max.partition.fetch.bytes", "262144")
            .set("log_level", "4")
            .create()?;
        // Connected first, as the herald node it is measured against is:
        // the clock covers a metadata lookup, not the broker's handshake.
        c.fetch_metadata(None, Duration::from_secs(10))?;
        let started = Instant::now();
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        // Found by name: a broker may answer with more topics than asked.
        let parts = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .with_context(|| format!("topic {topic} not found"))?;
        let partition = herald_proto::partition::partition_for_key(ch.as_bytes(), parts);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(from))?;
        c.assign(&tpl)?;
        let mut got = 0;
        while got < n {
            match c.poll(Duration::from_secs(60)) {
                Some(Ok(m)) => {
                    if m.key() == Some(ch.as_bytes()) {
                        // Decoded, as herald's client decodes each frame.
                        let value = m.payload().unwrap_or_default();
                        herald_proto::Envelope::decode(value, m.key())
                            .context("a record that is not an envelope")?;
                        got += 1;
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    let wm = c.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                    bail!("Kafka read stalled after {got} records ({topic}/{partition} from {from}, watermarks {wm:?})")
                }
            }
        }
        Ok(started.elapsed().as_secs_f64())
    })
    .await??;
    Ok(ResumeReport {
        messages: cfg.messages,
        herald_secs,
        kafka_secs,
        ratio: (herald_secs / kafka_secs * 1000.0).round() / 1000.0,
    })
}
