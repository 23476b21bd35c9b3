//! The bare WebSocket floor: a broadcast server with no Kafka and no
//! durability, speaking the subset of herald's frames the generator uses
//! (`subscribe` → `subscribed`; `publish` → `message` to every subscriber of
//! the channel, then `publish_ack`). Same tokio-tungstenite, same 4 KiB read
//! buffer as herald, so the difference is herald's work. Like herald, its
//! writer feeds whatever is queued for a connection (up to 64 frames) and
//! flushes once; `flush_each` flushes after every frame instead (the floor
//! before 2026-12-02, kept to show both ways).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Subs = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Arc<str>>>>>>;

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

/// Binds `listen` and serves until the process ends. Returns the address.
pub async fn serve(listen: SocketAddr, flush_each: bool) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let subs: Subs = Arc::default();
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
            tokio::spawn(async move {
                let cfg = WebSocketConfig::default().read_buffer_size(4096);
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
                            let s = seq.fetch_add(1, Ordering::Relaxed);
                            let msg: Arc<str> = Arc::from(format!(
                                r#"{{"type":"message","channel":{},"seq":{s},"epoch":"floor","id":"{id}","ts":0,"data":{}}}"#,
                                serde_json::Value::from(f.channel.as_str()),
                                data.get()
                            ));
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
