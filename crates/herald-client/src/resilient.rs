//! Clients that survive disconnects, node failures and broker outages.
//!
//! [`Publisher`] re-sends a publish with the **same id** until it gets an
//! ack: after a lost answer it sets `retry`, so whichever node receives the
//! retry looks for the first attempt in the log before appending.
//! [`Subscriber`] reconnects (rotating through the node URLs) and resumes each
//! channel from the last `seq` it handed to the application.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::{ChannelCursor, ClientError, Connection, Frame, Msg, Published};

/// Retry pacing: 50 ms, doubling to at most 1 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(5)).min(1000))
}

/// Counters a test (or an operator) can check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connects: u64,
    pub disconnects: u64,
    /// Publishes re-sent after a nack or a lost answer.
    pub retries: u64,
    /// Messages dropped because their `seq` was already handed over.
    pub duplicates_dropped: u64,
    /// Resumes the server could not recover (history gone or new epoch).
    pub not_recovered: u64,
    /// Close codes received from servers.
    pub close_codes: Vec<u16>,
}

/// Publishes with retries across reconnects and nodes.
pub struct Publisher {
    urls: Vec<String>,
    next_url: usize,
    conn: Option<Connection>,
    /// Attempts before [`Publisher::publish`] gives up.
    pub max_attempts: u32,
    pub stats: Stats,
}

impl Publisher {
    pub fn new(urls: Vec<String>) -> Self {
        Publisher {
            urls,
            next_url: 0,
            conn: None,
            max_attempts: 50,
            stats: Stats::default(),
        }
    }

    async fn connection(&mut self) -> Result<&mut Connection, ClientError> {
        if self.conn.is_none() {
            let url = &self.urls[self.next_url % self.urls.len()];
            self.next_url += 1;
            let mut c = Connection::connect(url).await?;
            c.timeout = Duration::from_secs(20);
            self.stats.connects += 1;
            self.conn = Some(c);
        }
        self.conn.as_mut().ok_or(ClientError::Closed(None))
    }

    /// Cuts the connection with a TCP reset; the next publish reconnects.
    pub fn abort(&mut self) {
        if let Some(c) = self.conn.take() {
            self.stats.disconnects += 1;
            c.abort();
        }
    }

    fn drop_connection(&mut self) {
        if let Some(c) = self.conn.take() {
            self.stats.disconnects += 1;
            if let Some(code) = c.close_code() {
                self.stats.close_codes.push(code);
            }
        }
    }

    /// Publishes `data` with `id` until acked; returns the `seq`. Retries on
    /// `unavailable`, `shutting_down` and `rate_limited` nacks and on lost
    /// connections; fails on any other nack.
    pub async fn publish(
        &mut self,
        channel: &str,
        id: Uuid,
        data: &Value,
    ) -> Result<i64, ClientError> {
        let mut retry = false;
        let mut last_err = ClientError::Timeout("a publish ack");
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                self.stats.retries += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            let conn = match self.connection().await {
                Ok(c) => c,
                Err(e) => {
                    last_err = e;
                    continue;
                }
            };
            let sent = if retry {
                conn.send_publish_retry(channel, id, data).await
            } else {
                conn.send_publish(channel, id, data).await
            };
            let outcome = match sent {
                Ok(()) => conn.publish_result(id).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Published::Ack { seq, .. }) => return Ok(seq),
                Ok(Published::Nack { code, reason }) => {
                    if !matches!(
                        code.as_str(),
                        "unavailable" | "shutting_down" | "rate_limited"
                    ) {
                        return Err(ClientError::Server { code, reason });
                    }
                    // "unavailable" can mean Kafka stored it but did not confirm.
                    retry = true;
                    last_err = ClientError::Server { code, reason };
                }
                Err(e) => {
                    // The answer is lost with the connection: unknown outcome.
                    self.drop_connection();
                    retry = true;
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }
}

/// Subscribes to channels and hands each message to the application once,
/// across reconnects and nodes.
pub struct Subscriber {
    urls: Vec<String>,
    next_url: usize,
    channels: Vec<String>,
    conn: Option<Connection>,
    pub cursor: ChannelCursor,
    pub stats: Stats,
}

impl Subscriber {
    pub fn new(urls: Vec<String>, channels: Vec<String>) -> Self {
        Subscriber {
            urls,
            next_url: 0,
            channels,
            conn: None,
            cursor: ChannelCursor::default(),
            stats: Stats::default(),
        }
    }

    /// Connects (or reconnects) and (re)subscribes every channel with its
    /// resume position.
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        let url = self.urls[self.next_url % self.urls.len()].clone();
        self.next_url += 1;
        let mut c = Connection::connect(&url).await?;
        c.timeout = Duration::from_secs(20);
        self.stats.connects += 1;
        for ch in &self.channels {
            let since = self.cursor.since(ch).cloned();
            let (pos, recovered) = c.subscribe(ch, since.as_ref()).await?;
            if since.is_some() && !recovered {
                self.stats.not_recovered += 1;
            }
            self.cursor.on_subscribed(ch, &pos, recovered);
        }
        self.conn = Some(c);
        Ok(())
    }

    /// Drops the connection without a close handshake.
    pub fn disconnect(&mut self) {
        if self.conn.take().is_some() {
            self.stats.disconnects += 1;
        }
    }

    /// Cuts the connection with a TCP reset, as a crash or a network cut
    /// would; the next [`Subscriber::next_within`] reconnects and resumes.
    pub fn abort(&mut self) {
        if let Some(c) = self.conn.take() {
            self.stats.disconnects += 1;
            c.abort();
        }
    }

    /// The next message new to the application, waiting at most `wait`
    /// (reconnecting and resuming as needed). `None` when `wait` passed.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut attempt = 0u32;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            if self.conn.is_none() {
                if attempt > 0 {
                    tokio::time::sleep(backoff(attempt).min(left)).await;
                }
                attempt += 1;
                if self.connect().await.is_err() {
                    self.conn = None;
                    continue;
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            match conn.next_frame_within(left).await {
                Ok(Frame::Message(m)) => {
                    if self.cursor.accept(&m) {
                        return Some(m);
                    }
                    self.stats.duplicates_dropped += 1;
                }
                Ok(Frame::Reconnect { after_ms }) => {
                    // The node is draining: go elsewhere after the hint.
                    tokio::time::sleep(Duration::from_millis(after_ms).min(left)).await;
                    self.disconnect();
                }
                Ok(Frame::Error { .. }) => {
                    // A subscription failed server-side (e.g. Kafka briefly
                    // unreachable): resubscribe everything from the cursor.
                    self.disconnect();
                }
                Ok(_) => {}
                Err(ClientError::Timeout(_)) => return None,
                Err(_) => {
                    if let Some(code) = conn.close_code() {
                        self.stats.close_codes.push(code);
                    }
                    self.disconnect();
                }
            }
        }
    }
}
