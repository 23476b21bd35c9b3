//! [`MemLog`]: a log in memory, for tests of the hub and the edge without a
//! broker. Topics and partitions as on Kafka, offsets from 0, a tail that
//! delivers in offset order per partition, and switches that make appends
//! fail, or wait for their confirmation, the way a broker in trouble does.
//!
//! It is not a broker: no replication, no retention (records below
//! [`MemLog::truncate`] are simply gone), one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use herald_proto::envelope::now_ms;
use tokio::sync::{mpsc, watch};

use crate::{
    BoxFuture, Log, LogConfig, LogError, LogRead, LogWrite, PendingPublish, RangeBatch, Record,
    RecordSink, TopicInfo, Watermarks,
};

#[derive(Default)]
struct Partition {
    records: Vec<Record>,
    /// First retained offset.
    low: i64,
    /// Followed by the tail (records from here on go to the sink).
    followed: bool,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Vec<Partition>>,
    epochs: HashMap<String, String>,
    /// Error every append gets while set.
    append_error: Option<String>,
    /// How long each range read waits before reading.
    read_delay: Duration,
}

/// An in-memory log. See the module docs.
pub struct MemLog {
    cfg: LogConfig,
    state: Mutex<State>,
    /// The tail's queue; its task hands records to the sink in order.
    tail: OnceLock<mpsc::UnboundedSender<Record>>,
    /// While `true`, appends are stored but not confirmed.
    hold: watch::Sender<bool>,
    /// While `true`, appends are stored and confirmed without their offset
    /// (-1001), as librdkafka confirms an idempotent retry after a lost
    /// response.
    offsetless: std::sync::atomic::AtomicBool,
    pings: std::sync::atomic::AtomicU64,
    /// Range reads served so far.
    reads: std::sync::atomic::AtomicU64,
    /// Range reads allowed at once, like Kafka's reader pool (none: any).
    read_pool: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl MemLog {
    pub fn new(cfg: LogConfig) -> Arc<MemLog> {
        Arc::new(MemLog {
            cfg,
            state: Mutex::new(State::default()),
            tail: OnceLock::new(),
            hold: watch::channel(false).0,
            offsetless: Default::default(),
            pings: Default::default(),
            reads: Default::default(),
            read_pool: Mutex::new(None),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates `topic` with `partitions` and `epoch` (what a node's start-up
    /// would otherwise do through [`Log::ensure_topic`]).
    pub fn create_topic(&self, topic: &str, partitions: i32, epoch: &str) {
        let mut st = self.state();
        st.topics.entry(topic.to_owned()).or_insert_with(|| {
            (0..partitions.max(1))
                .map(|_| Partition::default())
                .collect()
        });
        st.epochs
            .entry(topic.to_owned())
            .or_insert_with(|| epoch.to_owned());
    }

    /// Every stored record of a partition (from the first retained).
    pub fn records(&self, topic: &str, partition: i32) -> Vec<Record> {
        let st = self.state();
        part(&st, topic, partition)
            .map(|p| p.records.clone())
            .unwrap_or_default()
    }

    /// Every appended record of `topic` whose key is `key`, in offset order
    /// per partition.
    pub fn records_with_key(&self, topic: &str, key: &str) -> Vec<Record> {
        let st = self.state();
        st.topics
            .get(topic)
            .into_iter()
            .flatten()
            .flat_map(|p| p.records.iter())
            .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
            .cloned()
            .collect()
    }

    /// Drops the records below `offset` (retention moving the log start).
    pub fn truncate(&self, topic: &str, partition: i32, offset: i64) {
        let mut st = self.state();
        if let Some(p) = part_mut(&mut st, topic, partition) {
            let drop_n = (offset - p.low).clamp(0, p.records.len() as i64) as usize;
            p.records.drain(..drop_n);
            p.low = p.low.max(offset);
        }
    }

    /// While set, every append fails with this error (retriable, like a
    /// broker that cannot be reached).
    pub fn fail_appends(&self, error: Option<&str>) {
        self.state().append_error = error.map(str::to_owned);
    }

    /// While `true`, appends are stored (and tailed) but their confirmation
    /// waits: a broker whose answer is late.
    pub fn hold_confirms(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// While `true`, appends are stored and confirmed at offset -1001: an
    /// answer that says "stored" without saying where.
    pub fn confirm_without_offsets(&self, on: bool) {
        self.offsetless
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times [`Log::ping`] was called.
    pub fn pings(&self) -> u64 {
        self.pings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serves at most `n` range reads at once, first come first served, like
    /// Kafka's pool of range readers.
    pub fn limit_concurrent_reads(&self, n: usize) {
        *self.read_pool.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(tokio::sync::Semaphore::new(n)));
    }

    /// Range reads served so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes every range read wait `delay` first.
    pub fn slow_reads(&self, delay: Duration) {
        self.state().read_delay = delay;
    }
}

fn part<'a>(st: &'a State, topic: &str, partition: i32) -> Option<&'a Partition> {
    st.topics.get(topic)?.get(usize::try_from(partition).ok()?)
}

fn part_mut<'a>(st: &'a mut State, topic: &str, partition: i32) -> Option<&'a mut Partition> {
    st.topics
        .get_mut(topic)?
        .get_mut(usize::try_from(partition).ok()?)
}

fn unknown(topic: &str, partition: i32) -> LogError {
    LogError::Other(format!("unknown partition {topic}/{partition}"))
}

impl LogRead for MemLog {
    fn watermarks<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
    ) -> BoxFuture<'a, Result<Watermarks, LogError>> {
        let r = {
            let st = self.state();
            part(&st, topic, partition)
                .map(|p| Watermarks {
                    low: p.low,
                    high: p.low + p.records.len() as i64,
                })
                .ok_or_else(|| unknown(topic, partition))
        };
        Box::pin(async move { r })
    }

    fn read_range<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        from: i64,
        to: i64,
        max: usize,
    ) -> BoxFuture<'a, Result<RangeBatch, LogError>> {
        Box::pin(async move {
            let pool = self
                .read_pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let _permit = match &pool {
                Some(p) => p.acquire().await.ok(),
                None => None,
            };
            let delay = self.state().read_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let st = self.state();
            let p = part(&st, topic, partition).ok_or_else(|| unknown(topic, partition))?;
            let mut bytes = 0usize;
            let mut full = false;
            let mut records: Vec<Record> = Vec::new();
            for r in p
                .records
                .iter()
                .filter(|r| r.offset >= from && r.offset < to)
            {
                if records.len() >= max || bytes >= crate::RANGE_MAX_BYTES {
                    full = true;
                    break;
                }
                bytes += crate::record_bytes(r);
                records.push(r.clone());
            }
            let high = p.low + p.records.len() as i64;
            let next = match records.last() {
                Some(r) if full => r.offset + 1,
                _ => to.min(high).max(from),
            };
            Ok(RangeBatch { records, next })
        })
    }

    fn offset_for_time<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        ts_ms: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, LogError>> {
        let r = {
            let st = self.state();
            part(&st, topic, partition)
                .map(|p| {
                    p.records
                        .iter()
                        .find(|r| r.timestamp_ms.is_some_and(|t| t >= ts_ms))
                        .map(|r| r.offset)
                })
                .ok_or_else(|| unknown(topic, partition))
        };
        Box::pin(async move { r })
    }

    fn follow(&self, topic: &str, partition: i32, from: i64) -> Result<(), LogError> {
        let tail = self
            .tail
            .get()
            .ok_or_else(|| LogError::Other("tail not started".into()))?;
        let mut st = self.state();
        let p = part_mut(&mut st, topic, partition).ok_or_else(|| unknown(topic, partition))?;
        if p.followed {
            return Ok(());
        }
        p.followed = true;
        // Under the lock: an append cannot slip between these and the next.
        for r in p.records.iter().filter(|r| r.offset >= from) {
            let _ = tail.send(r.clone());
        }
        Ok(())
    }

    fn unfollow(&self, topic: &str, partition: i32) -> Result<(), LogError> {
        let mut st = self.state();
        let p = part_mut(&mut st, topic, partition).ok_or_else(|| unknown(topic, partition))?;
        p.followed = false;
        Ok(())
    }
}

impl LogWrite for MemLog {
    fn append_record(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: &[u8],
        _headers: &[(&str, &[u8])],
    ) -> Result<PendingPublish, LogError> {
        self.append_value(topic, partition, key, Some(value))
    }

    fn append_tombstone(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
    ) -> Result<PendingPublish, LogError> {
        self.append_value(topic, partition, key, None)
    }

    fn flush(&self, _timeout: Duration) -> Result<(), LogError> {
        Ok(())
    }
}

impl MemLog {
    /// Appends (no compaction: every record stays) and tails the record.
    fn append_value(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<PendingPublish, LogError> {
        let offset = {
            let mut st = self.state();
            if let Some(e) = &st.append_error {
                return Err(LogError::Unavailable(e.clone()));
            }
            let p = part_mut(&mut st, topic, partition).ok_or_else(|| unknown(topic, partition))?;
            let offset = p.low + p.records.len() as i64;
            let record = Record {
                topic: Arc::from(topic),
                partition,
                offset,
                key: Some(key.to_vec()),
                value: value.map(<[u8]>::to_vec),
                timestamp_ms: Some(now_ms()),
            };
            if p.followed {
                if let Some(tail) = self.tail.get() {
                    let _ = tail.send(record.clone());
                }
            }
            p.records.push(record);
            offset
        };
        let mut hold = self.hold.subscribe();
        let offset = if self.offsetless.load(std::sync::atomic::Ordering::Relaxed) {
            -1001
        } else {
            offset
        };
        Ok(PendingPublish::from_future(async move {
            let _ = hold.wait_for(|h| !*h).await;
            Ok(offset)
        }))
    }
}

impl Log for MemLog {
    fn config(&self) -> &LogConfig {
        &self.cfg
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), LogError>> {
        self.pings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = match &self.state().append_error {
            Some(e) => Err(LogError::Unavailable(e.clone())),
            None => Ok(()),
        };
        Box::pin(async move { r })
    }

    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: i32,
        _config: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<TopicInfo, LogError>> {
        let created = !self.state().topics.contains_key(topic);
        self.create_topic(
            topic,
            partitions,
            &uuid::Uuid::new_v4().simple().to_string(),
        );
        let st = self.state();
        let info = TopicInfo {
            name: topic.to_owned(),
            partitions: st.topics.get(topic).map_or(0, |p| p.len() as i32),
            epoch: st.epochs.get(topic).cloned().unwrap_or_default(),
            created,
        };
        Box::pin(async move { Ok(info) })
    }

    fn ensure_internal_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: i32,
        _config: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<i32, LogError>> {
        self.create_topic(topic, partitions, "");
        let n = self.state().topics.get(topic).map_or(0, |p| p.len() as i32);
        Box::pin(async move { Ok(n) })
    }

    fn start_tail(&self, sink: Arc<dyn RecordSink>) -> Result<(), LogError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
        self.tail
            .set(tx)
            .map_err(|_| LogError::Other("tail already started".into()))?;
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                sink.on_record(r);
            }
        });
        Ok(())
    }
}
