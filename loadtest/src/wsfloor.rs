//! The bare WebSocket floor: a broadcast server with no Kafka and no
//! durability, speaking the subset of herald's frames the generator uses
//! (`subscribe` → `subscribed`; `publish` → `message` to every subscriber of
//! the channel, then `publish_ack`). Same tokio-tungstenite, same 1 KiB read
//! buffer as herald's default (4 KiB before 2026-12-02), so the difference
//! is herald's work. Like herald, its
//! writer feeds whatever is queued for a connection (up to 64 frames) and
//! flushes once; `flush_each` flushes after every frame instead (the floor
//! before 2026-12-02, kept to show both ways).
//!
//! With [`KafkaPath`] the floor pays what herald cannot avoid: a publish is
//! appended to a fresh Kafka topic (herald's producer settings, herald's
//! partitioner) and acked when Kafka confirms it; one consumer tails every
//! partition and fans each record out, its offset as `seq`. No envelope, no
//! dedup, no ring, no auth, no limits: the difference to herald on this
//! floor is herald's own work, not the broker's (P7 against the Kafka floor).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub type Subs = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Arc<str>>>>>>;

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    id: Option<uuid::Uuid>,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
}

/// Most frames written per flush, as herald's `MAX_BATCH`.
const MAX_BATCH: usize = 64;

/// Kafka in the floor's path.
pub struct KafkaPath {
    producer: FutureProducer,
    topic: String,
    partitions: i32,
}

impl KafkaPath {
    /// Creates a fresh topic of `partitions` on `brokers` and the producer
    /// (herald's settings: idempotent, `acks=all`, `linger.ms=1`).
    pub async fn connect(
        brokers: &str,
        partitions: i32,
        fetch_wait_max_ms: u32,
        subs: Subs,
    ) -> anyhow::Result<Self> {
        let topic = format!(
            "loadtest-wsfloor-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        crate::kafkafloor::create_topic(brokers, &topic, partitions).await?;
        let producer = crate::kafkafloor::producer(brokers)?;
        let consumer = crate::kafkafloor::consumer(brokers, fetch_wait_max_ms)?;
        // Looked up before assign(), as herald's tail does (else the first
        // fetch waits for librdkafka's scan of unknown topics).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
            let known = md
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.partitions().len() == partitions as usize);
            if known || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        tokio::spawn(async move {
            loop {
                let m = match consumer.recv().await {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("ws-floor: consumer: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (Some(key), Some(value)) = (m.key(), m.payload()) else {
                    continue;
                };
                let (Ok(channel), Ok(value)) =
                    (std::str::from_utf8(key), std::str::from_utf8(value))
                else {
                    continue;
                };
                // The record's value: the publish id, a newline, the data.
                let Some((id, data)) = value.split_once('\n') else {
                    continue;
                };
                let msg = message_text(channel, m.offset(), id, data);
                if let Some(list) = subs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(channel)
                {
                    list.retain(|s| s.send(msg.clone()).is_ok());
                }
            }
        });
        Ok(KafkaPath {
            producer,
            topic,
            partitions,
        })
    }
}

fn message_text(channel: &str, seq: i64, id: &str, data: &str) -> Arc<str> {
    Arc::from(format!(
        r#"{{"type":"message","channel":{},"seq":{seq},"epoch":"floor","id":"{id}","ts":0,"data":{data}}}"#,
        serde_json::Value::from(channel),
    ))
}

/// Binds `listen` and serves until the process ends. Returns the address.
/// `kafka`: the brokers and partition count of the Kafka path, if any.
pub async fn serve(
    listen: SocketAddr,
    flush_each: bool,
    kafka: Option<(String, i32, u32)>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let subs: Subs = Arc::default();
    let kafka = match kafka {
        Some((brokers, partitions, wait)) => Some(Arc::new(
            KafkaPath::connect(&brokers, partitions, wait, subs.clone()).await?,
        )),
        None => None,
    };
    let seq = Arc::new(AtomicI64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: wait rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let subs = subs.clone();
            let seq = seq.clone();
            let kafka = kafka.clone();
            tokio::spawn(async move {
                let cfg = WebSocketConfig::default().read_buffer_size(1024);
                let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(cfg)).await
                else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<Arc<str>>();
                let writer = tokio::spawn(async move {
                    while let Some(t) = rx.recv().await {
                        if flush_each {
                            if sink.send(Message::text(t.to_string())).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        let mut ok = sink.feed(Message::text(t.to_string())).await.is_ok();
                        let mut n = 1;
                        while ok && n < MAX_BATCH {
                            let Ok(t) = rx.try_recv() else { break };
                            ok = sink.feed(Message::text(t.to_string())).await.is_ok();
                            n += 1;
                        }
                        if !ok || sink.flush().await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(m)) = stream.next().await {
                    let Message::Text(t) = m else { continue };
                    let Ok(f) = serde_json::from_str::<Frame>(t.as_str()) else {
                        continue;
                    };
                    match f.kind.as_str() {
                        "subscribe" => {
                            subs.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(f.channel.clone())
                                .or_default()
                                .push(tx.clone());
                            let reply = serde_json::json!({"type": "subscribed", "channel": f.channel,
                                "position": {"seq": seq.load(Ordering::Relaxed) - 1, "epoch": "floor"}, "recovered": false});
                            let _ = tx.send(Arc::from(reply.to_string()));
                        }
                        "publish" => {
                            let (Some(id), Some(data)) = (f.id, f.data) else {
                                continue;
                            };
                            if let Some(k) = &kafka {
                                // Appended, acked once Kafka confirms; the
                                // consumer delivers it.
                                let (k, tx) = (k.clone(), tx.clone());
                                tokio::spawn(async move {
                                    let part = herald_proto::partition::partition_for_key(
                                        f.channel.as_bytes(),
                                        k.partitions,
                                    );
                                    let value = format!("{id}\n{}", data.get());
                                    let rec = FutureRecord::to(&k.topic)
                                        .key(f.channel.as_bytes())
                                        .payload(value.as_bytes())
                                        .partition(part);
                                    let reply = match k
                                        .producer
                                        .send(rec, Duration::from_secs(10))
                                        .await
                                    {
                                        Ok(d) => {
                                            serde_json::json!({"type": "publish_ack", "id": id,
                                            "channel": f.channel, "seq": d.offset})
                                        }
                                        Err((e, _)) => {
                                            serde_json::json!({"type": "publish_nack", "id": id,
                                            "channel": f.channel, "code": "unavailable", "reason": e.to_string()})
                                        }
                                    };
                                    let _ = tx.send(Arc::from(reply.to_string()));
                                });
                                continue;
                            }
                            let s = seq.fetch_add(1, Ordering::Relaxed);
                            let msg = message_text(&f.channel, s, &id.to_string(), data.get());
                            if let Some(list) = subs
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_mut(&f.channel)
                            {
                                list.retain(|s| s.send(msg.clone()).is_ok());
                            }
                            let ack = serde_json::json!({"type": "publish_ack", "id": id, "channel": f.channel, "seq": s});
                            let _ = tx.send(Arc::from(ack.to_string()));
                        }
                        "ping" => {
                            let _ = tx.send(Arc::from(r#"{"type":"pong"}"#));
                        }
                        _ => {}
                    }
                }
                // The channel map still holds clones of `tx`, so the writer
                // would never see its channel close: end it here, which
                // closes the socket (a floor reused across runs would
                // otherwise keep every past subscriber's socket open).
                drop(tx);
                writer.abort();
            });
        }
    });
    Ok(addr)
}
