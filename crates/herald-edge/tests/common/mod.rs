//! An edge node on the in-memory log, in this process: a real warp server on
//! 127.0.0.1 and real WebSocket clients, no broker. The end-to-end suite
//! (crates/herald/tests) runs the same behaviours against Kafka.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_edge::{AccessRule, Auth, AuthConfig, Edge, EdgeConfig, NamespaceConfig};
use herald_log::memory::MemLog;
use herald_log::{LogConfig, Record};
use herald_proto::Envelope;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"in-process-test-secret";
pub const API_KEY: &str = "in-process-api-key";
/// The topic of namespace `chat` (one partition: every channel on it).
pub const CHAT: &str = "herald.chat";
/// Namespace `user`: authenticated users only.
pub const USER: &str = "herald.user";

/// A running node and its log.
pub struct Node {
    pub addr: SocketAddr,
    /// The admin listener (`server.admin_listen`), when configured.
    pub admin: Option<SocketAddr>,
    pub log: Arc<MemLog>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The configuration tests start from: namespace `chat` open to anyone,
/// `user` for authenticated users, short timeouts.
pub fn config() -> (EdgeConfig, LogConfig) {
    let mut chat = NamespaceConfig::new("chat", 1);
    chat.subscribe = AccessRule::Anonymous;
    chat.publish = AccessRule::Anonymous;
    chat.history = AccessRule::Anonymous;
    let user = NamespaceConfig::new("user", 2);
    let edge = EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        namespaces: vec![chat, user],
        shutdown_grace: Duration::from_secs(5),
        drain_delay: Duration::from_millis(10),
        reconnect_jitter: Duration::from_millis(1),
        ..EdgeConfig::default()
    };
    let log = LogConfig {
        publish_timeout: Duration::from_millis(400),
        ..LogConfig::default()
    };
    (edge, log)
}

impl Node {
    pub async fn start() -> Node {
        let (edge, log) = config();
        Node::start_with(edge, log).await
    }

    pub async fn start_with(edge: EdgeConfig, log_cfg: LogConfig) -> Node {
        let log = MemLog::new(log_cfg);
        let auth = Auth::new(&AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            api_key: Some(API_KEY.into()),
            ..AuthConfig::default()
        })
        .expect("auth");
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let node = Edge::with_log(edge, log.clone(), auth, metrics)
            .await
            .expect("edge starts on the in-memory log");
        let addr = node.local_addr().expect("bound");
        let admin = node.admin_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.run(async move {
            let _ = stopped.await;
        }));
        Node {
            addr,
            admin,
            log,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    pub async fn connect(&self) -> Client {
        self.connect_with("").await
    }

    pub async fn connect_with(&self, query: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url(query))
            .await
            .expect("WebSocket connects");
        Client { ws }
    }

    /// Starts the graceful shutdown; `finished` waits for it.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn finished(&mut self) {
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// The envelopes stored for `channel` in `topic`.
    pub fn stored(&self, topic: &str, channel: &str) -> Vec<Envelope> {
        self.log
            .records_with_key(topic, channel)
            .iter()
            .map(envelope)
            .collect()
    }

    /// `POST /api/publish` with `body`; (status, answer).
    pub async fn api_publish(&self, body: Value) -> (u16, Value) {
        api_publish(self.addr, body).await
    }
}

pub async fn api_publish(addr: SocketAddr, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {API_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = http(addr, &req).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `GET path` with extra header lines; (status, body).
pub async fn http_get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}connection: close\r\n\r\n");
    http(addr, &req).await
}

/// Sends a raw HTTP/1.1 request; (status, body).
async fn http(addr: SocketAddr, req: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Appends `n` records straight to the log (as other nodes would), every
/// `every`-th on `channel`, the rest on `chat:noise`.
pub async fn seed(log: &MemLog, n: usize, every: usize, channel: &str) {
    use herald_log::LogWrite;
    for i in 0..n {
        let ch = if i % every == 0 {
            channel
        } else {
            "chat:noise"
        };
        let data = serde_json::value::RawValue::from_string("1".into()).expect("json");
        let env = Envelope::new(uuid::Uuid::new_v4(), ch, None, data);
        log.append(CHAT, 0, &env)
            .expect("append")
            .await
            .expect("stored");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub fn envelope(r: &Record) -> Envelope {
    Envelope::decode(r.value.as_deref().unwrap_or_default(), r.key.as_deref())
        .expect("a herald envelope")
}

/// A token for `sub`, valid for an hour, with `channels` grants.
pub fn token(sub: &str, channels: Value) -> String {
    let exp = herald_proto::envelope::now_ms() / 1000 + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "exp": exp, "channels": channels }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("token")
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON; panics after 5 s or on close.
    pub async fn next(&mut self) -> Value {
        match self.next_within(Duration::from_secs(5)).await {
            Some(v) => v,
            None => panic!("no frame within 5 s"),
        }
    }

    /// The next text frame, `None` when none comes in `wait` or the
    /// connection closed.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The close code the server ends the connection with, skipping frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn publish(&mut self, channel: &str, id: uuid::Uuid, data: Value) -> Value {
        self.send(json!({"type": "publish", "channel": channel, "id": id, "data": data}))
            .await;
        self.next_of_publish(id).await
    }

    /// The `publish_ack` or `publish_nack` of `id`.
    pub async fn next_of_publish(&mut self, id: uuid::Uuid) -> Value {
        loop {
            let v = self.next().await;
            if (v["type"] == "publish_ack" || v["type"] == "publish_nack")
                && v["id"] == id.to_string()
            {
                return v;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str, since: Option<Value>) -> Value {
        let mut f = json!({"type": "subscribe", "channel": channel});
        if let Some(s) = since {
            f["since"] = s;
        }
        self.send(f).await;
        self.next_of("subscribed").await
    }
}
