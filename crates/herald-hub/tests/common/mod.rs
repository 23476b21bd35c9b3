//! Shared by the hub's tests: a one-partition in-memory log and helpers.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use herald_hub::{Hub, HubConfig, Outbound, OutboxReceiver};
use herald_log::{BoxFuture, LogError, LogRead, RangeBatch, Record, Watermarks};
use herald_proto::{envelope, Envelope, Position};
use serde_json::value::RawValue;
use uuid::Uuid;

pub const TOPIC: &str = "t.chat";
pub const EPOCH: &str = "e1";

/// A one-partition log in memory.
#[derive(Default)]
pub struct MemLog {
    pub records: Mutex<Vec<Record>>,
    pub low: Mutex<i64>,
    /// Offset the hub asked the tail to follow from.
    pub followed: Mutex<Option<i64>>,
    /// Yield inside range reads, so other tasks run mid catch-up.
    pub yield_in_reads: bool,
    /// Moves the log start here at the first range read that starts below
    /// it (retention deleting records while a catch-up reads).
    pub delete_on_read: Mutex<Option<i64>>,
    /// When set, every range read waits for a permit of this semaphore.
    pub read_gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Range reads made so far.
    pub reads: std::sync::atomic::AtomicUsize,
}

impl MemLog {
    pub fn append(&self, channel: &str, n: i64) -> Record {
        self.append_tagged(channel, n, None)
    }

    /// [`MemLog::append`] of a message with `tags`.
    pub fn append_tagged(&self, channel: &str, n: i64, tags: Option<herald_proto::Tags>) -> Record {
        let mut recs = self.records.lock().unwrap();
        let offset = recs.len() as i64;
        let env = Envelope {
            v: envelope::ENVELOPE_VERSION,
            id: Uuid::new_v4(),
            channel: channel.into(),
            publisher: None,
            ts: offset * 10,
            content_type: envelope::CONTENT_TYPE_JSON.into(),
            data: RawValue::from_string(n.to_string()).unwrap(),
            replayed: None,
            tags,
        };
        let r = Record {
            topic: Arc::from(TOPIC),
            partition: 0,
            offset,
            key: Some(channel.as_bytes().to_vec()),
            value: Some(env.to_json()),
            timestamp_ms: Some(offset * 10),
        };
        recs.push(r.clone());
        r
    }
}

impl LogRead for MemLog {
    fn watermarks<'a>(
        &'a self,
        _t: &'a str,
        _p: i32,
    ) -> BoxFuture<'a, Result<Watermarks, LogError>> {
        Box::pin(async move {
            Ok(Watermarks {
                low: *self.low.lock().unwrap(),
                high: self.records.lock().unwrap().len() as i64,
            })
        })
    }

    fn read_range<'a>(
        &'a self,
        _t: &'a str,
        _p: i32,
        from: i64,
        to: i64,
        max: usize,
    ) -> BoxFuture<'a, Result<RangeBatch, LogError>> {
        Box::pin(async move {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.yield_in_reads {
                tokio::task::yield_now().await;
            }
            if let Some(gate) = &self.read_gate {
                if let Ok(p) = gate.acquire().await {
                    p.forget();
                }
            }
            {
                let mut delete = self.delete_on_read.lock().unwrap();
                if let Some(low) = delete.take_if(|low| from < *low) {
                    *self.low.lock().unwrap() = low;
                }
            }
            // Like Kafka's readers, a read below the log start starts there.
            let low = *self.low.lock().unwrap();
            let recs = self.records.lock().unwrap();
            let records: Vec<Record> = recs
                .iter()
                .filter(|r| r.offset >= from.max(low) && r.offset < to)
                .take(max)
                .cloned()
                .collect();
            let next = records.last().map(|r| r.offset + 1).unwrap_or(to);
            Ok(RangeBatch { records, next })
        })
    }

    fn offset_for_time<'a>(
        &'a self,
        _t: &'a str,
        _p: i32,
        ts_ms: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, LogError>> {
        Box::pin(async move {
            let low = *self.low.lock().unwrap();
            Ok(self
                .records
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.offset >= low && r.timestamp_ms.is_some_and(|t| t >= ts_ms))
                .map(|r| r.offset))
        })
    }

    fn follow(&self, _t: &str, _p: i32, from: i64) -> Result<(), LogError> {
        *self.followed.lock().unwrap() = Some(from);
        Ok(())
    }

    fn unfollow(&self, _t: &str, _p: i32) -> Result<(), LogError> {
        *self.followed.lock().unwrap() = None;
        Ok(())
    }
}

pub fn hub(log: Arc<MemLog>, ring: usize) -> Arc<Hub> {
    let h = Hub::new(
        log,
        HubConfig {
            recent_messages: ring,
            recent_bytes: 1 << 30,
            catchup_batch: 7,
        },
    );
    h.register_topic(TOPIC, EPOCH, 1);
    h
}

/// Everything in the queue right now.
pub async fn drain(rx: &mut OutboxReceiver) -> Vec<Outbound> {
    let mut out = Vec::new();
    while rx.queued() > 0 {
        match rx.recv().await {
            Some(o) => out.push(o),
            None => break,
        }
    }
    out
}

pub fn seqs(items: &[Outbound]) -> Vec<i64> {
    items
        .iter()
        .filter_map(|o| match o {
            Outbound::Message(d) => Some(d.seq),
            Outbound::Frame(_) | Outbound::Event(_) | Outbound::Command(_) => None,
        })
        .collect()
}

pub fn position(seq: i64) -> Position {
    Position {
        seq,
        epoch: EPOCH.into(),
    }
}
