//! The raw-topic contract, checked with a plain Kafka client (rdkafka, not
//! herald's reader): key = channel, value = envelope valid against
//! `schemas/envelope.v1.json`, header `herald-id`, partition = Kafka's
//! murmur2 default partitioner, as librdkafka itself computes it.

use crate::common;

use std::time::Duration;

use common::*;
use herald_proto::partition::partition_for_key;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

fn envelope_schema() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/envelope.v1.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_follow_the_envelope_contract() {
    let s = Server::start(&unique_prefix("raw"), &[]);
    let mut c = s.connect().await;
    let channels = [
        "chat:lobby",
        "chat:user:42",
        "chat:a-b_c.d",
        "chat:x",
        "chat:y",
    ];
    let mut acked = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        for k in 0..3 {
            let (id, seq) = publish_ok(&mut c, ch, json!({ "i": i, "k": k, "s": "héllo" })).await;
            acked.push((ch.to_string(), id, seq));
        }
    }
    let topic = format!("{}chat", s.prefix);
    let records = read_topic(&topic);
    assert_eq!(records.len(), acked.len());
    let schema = envelope_schema();
    for r in &records {
        let key = std::str::from_utf8(r.key().expect("key")).unwrap();
        let value: Value = serde_json::from_slice(r.payload().expect("value")).unwrap();
        if let Err(e) = schema.validate(&value) {
            panic!("record does not validate: {e}: {value}");
        }
        assert_eq!(value["channel"], key, "key = channel");
        assert_eq!(r.partition(), partition_for_key(key.as_bytes(), 4));
        let header = r
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == "herald-id"))
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(
            header.as_deref(),
            value["id"].as_str(),
            "header repeats the id"
        );
        let (_, _, seq) = acked
            .iter()
            .find(|(_, id, _)| Some(id.to_string().as_str()) == value["id"].as_str())
            .expect("every record was acked");
        assert_eq!(*seq, r.offset(), "seq is the Kafka offset");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_agrees_with_librdkafkas_murmur2_partitioner() {
    let s = Server::start(&unique_prefix("murmur"), &[]);
    let topic = format!("{}chat", s.prefix);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("partitioner", "murmur2")
        .create()
        .unwrap();
    for i in 0..40 {
        let key = format!("chat:key-{i}");
        let delivery = producer
            .send(
                FutureRecord::<str, str>::to(&topic).key(&key).payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(
            delivery.partition,
            partition_for_key(key.as_bytes(), 4),
            "librdkafka murmur2 and herald agree on {key}"
        );
    }
    // And herald's own publishes land in the same partitions.
    let mut c = s.connect().await;
    for i in 0..10 {
        publish_ok(&mut c, &format!("chat:key-{i}"), json!(i)).await;
    }
    for r in read_topic(&topic) {
        let key = r.key().unwrap();
        assert_eq!(r.partition(), partition_for_key(key, 4));
    }
}
