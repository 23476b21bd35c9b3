//! Integration-test harness: starts real `herald serve` processes against the
//! real broker and talks to them with the real WebSocket client.
//!
//! The broker address comes from `HERALD_TEST_BROKERS` (default
//! 127.0.0.1:9092); `infra/dev/test.sh` starts it. Each test uses its own
//! topic prefix, so tests never see each other's messages.

#![allow(dead_code)]

pub mod scenario;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_client::{Connection, Frame, Msg, Published};
use serde_json::Value;
use uuid::Uuid;

pub fn brokers() -> String {
    std::env::var("HERALD_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A unique topic prefix for one test.
pub fn unique_prefix(test: &str) -> String {
    format!("t-{test}-{}.", &Uuid::new_v4().simple().to_string()[..8])
}

/// `n` distinct ports free right now (the OS picks them), for servers that
/// must come back on the same address after a restart.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A running `herald serve` process.
pub struct Server {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    pub url: String,
    pub http: String,
    pub prefix: String,
}

impl Server {
    /// Starts herald with `prefix`, the `chat` namespace on 4 partitions and
    /// any `extra` arguments.
    pub fn start(prefix: &str, extra: &[&str]) -> Server {
        Self::start_with(&brokers(), prefix, extra)
    }

    /// Starts herald against `brokers`.
    pub fn start_with(brokers: &str, prefix: &str, extra: &[&str]) -> Server {
        Self::start_full(brokers, prefix, extra, &[])
    }

    /// Starts herald with extra environment variables (`HERALD_*` settings,
    /// `HERALD_LOG`).
    pub fn start_env(prefix: &str, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        Self::start_full(&brokers(), prefix, extra, envs)
    }

    fn start_full(brokers: &str, prefix: &str, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve");
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        // Open namespaces, unless the test brings its own (or a config file).
        if !extra.contains(&"--namespaces") && !extra.contains(&"--config") {
            cmd.args(["--namespaces", "chat=4:anonymous,room=2:anonymous"]);
        }
        cmd.args([
            "--drain-delay-ms",
            "100",
            "--reconnect-jitter-ms",
            "300",
            "--kafka-brokers",
            brokers,
            "--topic-prefix",
            prefix,
            "--fetch-wait-max-ms",
            "5",
            "--shutdown-grace-secs",
            "5",
        ])
        .args(extra)
        .env(
            "HERALD_LOG",
            std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning herald");
        let stdout = child.stdout.take().expect("stdout");
        // The server's log goes to the test's stderr and is kept (the last
        // MiB) for tests that check what it says, or does not say.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let keep = log.clone();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stderr).lines();
                while let Some(Ok(line)) = lines.next() {
                    eprintln!("{line}");
                    let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
                    if k.len() > 1 << 20 {
                        k.drain(..1 << 19);
                    }
                    k.push_str(&line);
                    k.push('\n');
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("herald listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("herald did not start within 60 s (is the broker running?)");
            }
        };
        let http = url
            .replace("ws://", "http://")
            .trim_end_matches("/ws")
            .to_owned();
        Server {
            child,
            log,
            url,
            http,
            prefix: prefix.to_owned(),
        }
    }

    /// What the server logged so far (stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("herald did not exit within 20 s of SIGTERM");
    }

    /// SIGKILL: the crash path.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url).await.expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `data` with a fresh id and returns (id, seq); panics on a nack.
pub async fn publish_ok(c: &mut Connection, channel: &str, data: Value) -> (Uuid, i64) {
    let id = Uuid::new_v4();
    match c.publish(channel, id, &data).await.expect("publish") {
        Published::Ack { seq, .. } => (id, seq),
        Published::Nack { code, reason } => panic!("publish nacked: {code}: {reason}"),
    }
}

/// Reads `n` messages, skipping other frames; panics after `wait` overall.
pub async fn read_messages(c: &mut Connection, n: usize, wait: Duration) -> Vec<Msg> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_frame_within(left).await {
            Ok(Frame::Message(m)) => out.push(m),
            Ok(_) => {}
            Err(e) => panic!("after {} of {n} messages: {e}", out.len()),
        }
    }
    out
}

/// Asserts that nothing but non-message frames arrive for `wait`.
pub async fn assert_no_message(c: &mut Connection, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match c.next_frame_within(left).await {
            Ok(Frame::Message(m)) => panic!("unexpected message {m:?}"),
            Ok(_) => {}
            Err(herald_client::ClientError::Timeout(_)) => return,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The three-broker test cluster (`infra/dev/cluster.sh`, started by
/// `infra/dev/test.sh`): `HERALD_TEST_CLUSTER`, default its fixed ports.
pub fn cluster_brokers() -> String {
    std::env::var("HERALD_TEST_CLUSTER")
        .unwrap_or_else(|_| "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094".into())
}

/// A plain rdkafka consumer (not herald's reader) reading a whole topic.
pub fn read_topic(topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    read_topic_from(&brokers(), topic)
}

/// [`read_topic`] on the brokers at `bootstrap`.
pub fn read_topic_from(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..parts {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Offset(lo))
                .expect("tpl");
            ends.push((p, hi));
        }
    }
    if ends.is_empty() {
        return Vec::new();
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut done = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.len() < ends.len() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        if let Some(r) = c.poll(Duration::from_millis(100)) {
            let m = r.expect("consume");
            let end = ends.iter().find(|(p, _)| *p == m.partition()).map(|x| x.1);
            if end.is_some_and(|e| m.offset() + 1 >= e) {
                done.insert(m.partition());
            }
            out.push(m.detach());
        }
    }
    out
}

/// A broker of the test's own, on its own port and data directory, for
/// tests that stop or kill it (the shared broker must stay up for others).
pub struct PrivateBroker {
    pub port: u16,
    data: std::path::PathBuf,
}

impl PrivateBroker {
    fn script(&self, action: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/dev/broker.sh");
        let out = Command::new(script)
            .arg(action)
            .envs(self.env())
            .output()
            .expect("running broker.sh");
        assert!(
            out.status.success(),
            "broker.sh {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// broker.sh's settings for this broker: its own ports (the controller's
    /// 1,000 above the client's), its own data, and no topics made in
    /// advance (herald creates what it needs).
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HERALD_BROKER_PORT", self.port.to_string()),
            (
                "HERALD_BROKER_CONTROLLER_PORT",
                (self.port + 1000).to_string(),
            ),
            ("HERALD_BROKER_DATA", self.data.display().to_string()),
            ("HERALD_BROKER_TOPICS", String::new()),
            ("HERALD_BROKER_HEAP", "256m".into()),
        ]
    }

    pub fn start(port: u16) -> PrivateBroker {
        let data =
            std::env::temp_dir().join(format!("herald-broker-{port}-{}", Uuid::new_v4().simple()));
        let b = PrivateBroker { port, data };
        b.script("start");
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same data.
    pub fn restart(&self) {
        self.script("start");
    }

    pub fn kill(&self) {
        self.script("kill");
    }

    /// SIGTERM, waiting for it to exit.
    pub fn stop(&self) {
        self.script("stop");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/dev/broker.sh");
        let _ = Command::new(script).arg("stop").envs(self.env()).output();
        if std::env::var_os("HERALD_TEST_KEEP_BROKER_DATA").is_none() {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// What a fault test counts per run.
#[derive(Debug, Default)]
pub struct Tally {
    pub acked: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
}

/// Compares acked (id, seq) per channel with what the application received.
pub fn tally(
    acked: &std::collections::HashMap<String, Vec<(Uuid, i64)>>,
    delivered: &[Msg],
) -> Tally {
    use std::collections::{HashMap, HashSet};
    let mut got: HashMap<&str, Vec<&Msg>> = HashMap::new();
    for m in delivered {
        got.entry(m.channel.as_str()).or_default().push(m);
    }
    let mut t = Tally {
        delivered: delivered.len(),
        ..Tally::default()
    };
    for (ch, list) in acked {
        t.acked += list.len();
        let msgs = got.get(ch.as_str()).cloned().unwrap_or_default();
        let mut seen = HashSet::new();
        for m in &msgs {
            if !seen.insert(m.id) {
                t.duplicated += 1;
            }
        }
        for (id, seq) in list {
            match msgs.iter().find(|m| m.id == *id) {
                Some(m) => assert_eq!(m.seq, *seq, "delivered seq differs from acked seq"),
                None => t.lost += 1,
            }
        }
        let seqs: Vec<i64> = msgs.iter().map(|m| m.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{ch}: delivered out of order"
        );
    }
    t
}

/// Prints a line `docs/reliability.md` quotes.
pub fn report(name: &str, t: &Tally, extra: &str) {
    eprintln!(
        "FAULT-REPORT {name}: acked={} delivered={} lost={} duplicated={} {extra}",
        t.acked, t.delivered, t.lost, t.duplicated
    );
}

/// The process's resident memory in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 request; returns (status, body).
pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    let (status, text) = exchange(host, &req).await;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A plain HTTP/1.1 GET: (status, whole response).
pub async fn http_get(base: &str, path: &str) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    exchange(
        host,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends `req` to `host` and reads the answer to the end: (status, whole
/// response).
async fn exchange(host: &str, req: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The `chat` namespace on two partitions, open to anonymous clients (a
/// configuration file's `[[namespace]]` block).
pub const OPEN_CHAT: &str = r#"
[[namespace]]
name = "chat"
partitions = 2
subscribe = "anonymous"
publish = "anonymous"
history = "anonymous"
"#;

/// Writes `toml` as the configuration file of the test `name` (in the
/// temporary directory); returns its path.
/// A request an HTTP server of [`serve_http`] received.
pub struct HttpRequest {
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a [`serve_http`] handler answers: status, JSON body, and a delay
/// before answering.
pub type HttpHandler = dyn Fn(HttpRequest) -> (u16, String, Duration) + Send + Sync;

/// A small HTTP/1.1 server on 127.0.0.1 (the "application" of hooks and
/// webhooks): one request per connection, answered by `handler`. Returns
/// its `http://` base URL.
pub async fn serve_http(handler: std::sync::Arc<HttpHandler>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or_default()
                    .to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[head_end..head_end + len].to_vec();
                let (status, text, delay) = handler(HttpRequest {
                    path,
                    headers,
                    body,
                });
                tokio::time::sleep(delay).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

pub fn config_file(name: &str, toml: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("herald-{name}.toml"));
    std::fs::write(&path, toml).expect("writing the config");
    path
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339, UTC, with milliseconds (`2026-11-22T10:04:05.123Z`), computed
/// without a date library so the tests check herald's formatting
/// independently (Howard Hinnant's days-to-civil algorithm).
pub fn rfc3339_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// The three-broker test cluster, driven through `infra/dev/cluster.sh` (its
/// data directory comes from `HERALD_CLUSTER_DATA`, as `infra/dev/test.sh`
/// sets it). Dropping it resumes and restarts every node a test stopped,
/// so the next test finds all three serving.
pub struct Cluster;

impl Cluster {
    pub fn script(args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/dev/cluster.sh");
        let out = Command::new(script)
            .args(args)
            .output()
            .expect("running cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn kill(n: i32) {
        Self::script(&["kill", &n.to_string()]);
    }

    /// SIGTERM, waiting for the node to exit.
    pub fn stop(n: i32) {
        Self::script(&["stop", &n.to_string()]);
    }

    /// Starts the node again on its data and waits until it serves.
    pub fn start(n: i32) {
        Self::script(&["start", &n.to_string()]);
    }

    pub fn pause(n: i32) {
        Self::script(&["pause", &n.to_string()]);
    }

    pub fn resume(n: i32) {
        Self::script(&["resume", &n.to_string()]);
    }

    /// The cluster's metadata of `topic`.
    pub fn metadata(topic: &str) -> rdkafka::metadata::Metadata {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster_brokers())
            .create()
            .expect("consumer");
        c.fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata")
    }

    /// The node (`node.id` 1-3) leading `partition` of `topic` now.
    pub fn leader_of(topic: &str, partition: i32) -> i32 {
        Self::metadata(topic).topics()[0].partitions()[partition as usize].leader()
    }

    /// A guard that brings every node back when the test ends, however it ends.
    pub fn restore_on_drop() -> ClusterRestore {
        ClusterRestore
    }
}

pub struct ClusterRestore;

impl Drop for ClusterRestore {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/dev/cluster.sh");
        for n in ["1", "2", "3"] {
            let _ = Command::new(script).args(["resume", n]).output();
        }
        for n in ["1", "2", "3"] {
            let _ = Command::new(script).args(["start", n]).output();
        }
    }
}

/// The value of the first sample of metric `name` in a Prometheus text page
/// (0 when absent).
pub fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
