//! Messages per channel per minute from a herald namespace topic: the Rust
//! version of `docs/analytics/messages_per_minute.py`, with the same output.
//!
//! Reads every partition of the topic from its log start to the end offset it
//! has when the job starts, decodes the record envelope with `herald-proto`
//! (the contract in `schemas/envelope.v1.json`) and prints one JSON line per
//! (minute, channel), oldest minute first. Minutes are UTC, from the
//! envelope's `ts`. A plain rdkafka consumer: nothing here needs herald running.
//!
//! ```text
//! cargo run -p herald --example messages_per_minute -- 127.0.0.1:9092 herald.chat
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use herald_proto::envelope::{Envelope, EnvelopeError, ENVELOPE_VERSION};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn minute_of(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp(ts_ms.div_euclid(60_000) * 60, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:00Z").to_string())
        .unwrap_or_else(|| "invalid-ts".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "herald.chat".into());
    let timeout = Duration::from_secs(30);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        // Assigned, not subscribed: the group id only has to be unique.
        .set(
            "group.id",
            format!("herald-analytics-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let md = consumer.fetch_metadata(Some(&topic), timeout)?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(format!("topic {topic} not found").into());
    };
    if t.partitions().is_empty() {
        return Err(format!("topic {topic} not found (no partitions)").into());
    }

    // Each partition from its start to the end it has now.
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(&topic, p.id(), timeout)?;
        if high > low {
            tpl.add_partition_offset(&topic, p.id(), Offset::Offset(low))?;
            ends.insert(p.id(), high);
        }
    }
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    let mut done = HashSet::new();
    if !ends.is_empty() {
        consumer.assign(&tpl)?;
    }
    while done.len() < ends.len() {
        let msg = match consumer.poll(timeout) {
            None => return Err(format!("no record within {timeout:?}").into()),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
                continue;
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => m,
        };
        let (p, offset) = (msg.partition(), msg.offset());
        let end = ends.get(&p).copied().unwrap_or(0);
        if offset >= end {
            done.insert(p);
            continue;
        }
        let why = match Envelope::decode(msg.payload().unwrap_or_default(), msg.key()) {
            Ok(env) => {
                *counts.entry((minute_of(env.ts), env.channel)).or_default() += 1;
                None
            }
            Err(EnvelopeError::Version(v)) => Some(format!(
                "envelope v{v} (this reader knows v{ENVELOPE_VERSION})"
            )),
            Err(_) => Some("not a herald envelope".to_string()),
        };
        if let Some(why) = why {
            *skipped.entry(why).or_default() += 1;
        }
        if offset + 1 >= end {
            done.insert(p);
        }
    }

    for ((minute, channel), n) in counts {
        println!(
            "{}",
            serde_json::json!({ "minute": minute, "channel": channel, "messages": n })
        );
    }
    for (why, n) in skipped {
        eprintln!("skipped {n} records: {why}");
    }
    Ok(())
}
