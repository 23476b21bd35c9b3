//! [`Kafka`]: producer, admin, lookups, range readers and the partition tail.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::epoch::{new_epoch, EpochRecord};
use crate::{BoxFuture, LogConfig, LogError, LogRead, RangeBatch, Record, RecordSink, Watermarks};

/// Range readers kept idle for reuse; creating a librdkafka consumer costs a
/// few threads and a connection.
const IDLE_READERS: usize = 4;
/// Range reads running at once (a reconnect storm queues here, not in librdkafka).
const CONCURRENT_READS: usize = 16;
/// How long a reader trusts that librdkafka still knows a topic it asked
/// about (its metadata cache keeps entries far longer; see [`warm_topic`]).
const WARM_FOR: Duration = Duration::from_secs(60);

/// Makes a client know `topic`'s partition leaders before (or right after)
/// it assigns one of its partitions. librdkafka's `assign()` of a topic the
/// client has never looked up does not ask for its metadata: the partition
/// waits for the once-a-second scan of unknown topics, so its first fetch
/// came up to a second late (measured: 330-530 ms of delay on the first
/// messages a node delivered after a subscriber made its tail follow a new
/// partition; docs/benchmarks.md, P1). A metadata request for the topic fills
/// the client's cache, which `assign()` reads, and updates an already
/// assigned partition at once.
fn warm_topic(consumer: &impl Consumer, topic: &str, timeout: Duration) -> Result<(), KafkaError> {
    consumer.fetch_metadata(Some(topic), timeout).map(|_| ())
}

/// `fetch.wait.max.ms` of range readers (`kafka.fetch_wait_max_ms` when
/// lower). A range read asks for records that exist, up to a known end; a
/// long wait buys it nothing, and a Fetch left waiting at the end of the log
/// when a read ends delays the reader's next read (another partition or
/// offset) until it returns: with 100 ms, a 10,000-message resume from Kafka
/// took 120-180 ms instead of 50-75 (docs/benchmarks.md, P4 on Kafka).
const RANGE_FETCH_WAIT_MS: u32 = 5;

/// The least time librdkafka keeps trying to deliver an append
/// (`message.timeout.ms`; librdkafka's own default).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a node that found a topic (rather than creating it) waits for
/// the creator's epoch record before recording one itself.
const EPOCH_WAIT: Duration = Duration::from_secs(3);
/// How long such a node waits after recording one, before reading back the
/// newest (other nodes in the same position write at about the same time).
const EPOCH_SETTLE: Duration = Duration::from_secs(1);

/// How long an idle reader stays assigned where its last range read ended,
/// for the next read to continue without a new assignment.
const CONTINUE_FOR: Duration = Duration::from_secs(2);

/// A pooled range reader and the topics it has looked up.
struct Reader {
    consumer: Arc<StreamConsumer>,
    warmed: HashMap<String, Instant>,
    /// Still assigned at (topic, partition, next offset) since the instant:
    /// the previous read stopped at its record limit and the next record is
    /// already on its way.
    at: Option<(String, i32, i64, Instant)>,
}

impl Reader {
    fn continues(&self, topic: &str, partition: i32, from: i64) -> bool {
        matches!(&self.at, Some((t, p, o, since))
            if t == topic && *p == partition && *o == from && since.elapsed() < CONTINUE_FOR)
    }

    /// Drops a stale assignment (librdkafka keeps fetching for an assigned
    /// partition until its queue is full).
    fn release(&mut self) -> Result<(), KafkaError> {
        if self.at.take().is_some() {
            self.consumer.unassign()?;
        }
        Ok(())
    }
}

/// A topic herald uses, as found (or created) at start.
#[derive(Clone, Debug)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: i32,
    pub epoch: String,
    /// True when this call created the topic.
    pub created: bool,
}

/// One partition as `herald offsets` reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PartitionSummary {
    pub partition: i32,
    /// First retained offset.
    pub log_start: i64,
    /// Offset the next record gets (high watermark).
    pub log_end: i64,
    /// Retained offsets (`log_end - log_start`); equals records for herald's
    /// non-transactional, non-compacted topics.
    pub messages: i64,
    /// Timestamp (ms) of the first retained record.
    pub first_ms: Option<i64>,
    /// Timestamp (ms) of the last record.
    pub last_ms: Option<i64>,
}

/// The Kafka client of one herald node.
pub struct Kafka {
    cfg: LogConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Metadata and watermark lookups (blocking calls, run on the blocking pool).
    lookup: Arc<BaseConsumer>,
    /// Idle range readers.
    readers: Mutex<Vec<Reader>>,
    read_permits: Semaphore,
    tail: OnceLock<Tail>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Kafka {
    fn base_config(cfg: &LogConfig) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cfg.brokers)
            .set("socket.keepalive.enable", "true")
            .set("log_level", "4");
        for (k, v) in &cfg.overrides {
            c.set(k, v);
        }
        c
    }

    fn consumer_config(cfg: &LogConfig, eof: bool) -> ClientConfig {
        let mut c = Self::base_config(cfg);
        // Readers assign partitions themselves and commit nothing, but
        // librdkafka's assign() needs a group handle: a unique, never-joined
        // group id.
        c.set(
            "group.id",
            format!("herald-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .set(
            "fetch.wait.max.ms",
            if eof {
                RANGE_FETCH_WAIT_MS.min(cfg.fetch_wait_max_ms)
            } else {
                cfg.fetch_wait_max_ms
            }
            .to_string(),
        )
        .set("fetch.min.bytes", "1")
        .set("fetch.queue.backoff.ms", "5")
        // Readers stop at a record limit (and may stay assigned for a read
        // that continues): a smaller prefetch bounds what an idle one holds.
        .set(
            "queued.max.messages.kbytes",
            if eof { "4096" } else { "16384" },
        );
        c
    }

    /// Creates the clients. Does not wait for the broker: use [`Kafka::ping`].
    pub fn connect(cfg: LogConfig) -> Result<Arc<Self>, LogError> {
        let mut p = Self::base_config(&cfg);
        // The durability contract: nothing is acked until every in-sync
        // replica has it, and retries never duplicate or reorder.
        p.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            // How long librdkafka keeps retrying an append (same producer
            // sequence, so never stored twice). Far longer than the publish
            // timeout on purpose: a publish that times out for its client is
            // not abandoned while its record may still be committed (a
            // leader failover); see herald-edge's `confirm`.
            .set(
                "message.timeout.ms",
                cfg.publish_timeout
                    .max(DELIVERY_TIMEOUT)
                    .as_millis()
                    .to_string(),
            )
            .set("linger.ms", "1")
            // Only used if a partition were not given; herald always gives one.
            .set("partitioner", "murmur2_random");
        let producer: FutureProducer = p.create()?;
        let admin: AdminClient<DefaultClientContext> = Self::base_config(&cfg).create()?;
        let lookup: BaseConsumer = Self::consumer_config(&cfg, false).create()?;
        Ok(Arc::new(Kafka {
            cfg,
            producer,
            admin,
            lookup: Arc::new(lookup),
            readers: Mutex::new(Vec::new()),
            read_permits: Semaphore::new(CONCURRENT_READS),
            tail: OnceLock::new(),
        }))
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    async fn blocking<T, F>(&self, what: &'static str, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&BaseConsumer) -> Result<T, KafkaError> + Send + 'static,
    {
        let lookup = self.lookup.clone();
        tokio::task::spawn_blocking(move || f(&lookup))
            .await
            .map_err(|e| LogError::Task(format!("{what}: {e}")))?
            .map_err(LogError::from)
    }

    /// Asks the broker for the metadata of one topic (the meta topic, which
    /// may not exist yet): the readiness probe. Not all topics: on a cluster
    /// with thousands of topics that request is slow.
    pub async fn ping(&self) -> Result<(), LogError> {
        let t = self.cfg.request_timeout.min(Duration::from_secs(3));
        let topic = self.cfg.meta_topic();
        self.blocking("metadata", move |c| {
            c.fetch_metadata(Some(&topic), t).map(|_| ())
        })
        .await
    }

    /// The partition count of `topic`, or `None` if it does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<Option<i32>, LogError> {
        // A busy broker can miss one deadline; give it three.
        let mut attempt = 0;
        loop {
            match self.partition_count_once(topic).await {
                Err(LogError::Kafka(e))
                    if attempt < 2
                        && e.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut) =>
                {
                    attempt += 1;
                    warn!(topic, attempt, "Metadata request timed out; retrying");
                }
                other => return other,
            }
        }
    }

    async fn partition_count_once(&self, topic: &str) -> Result<Option<i32>, LogError> {
        let t = self.cfg.request_timeout;
        let name = topic.to_owned();
        self.blocking("metadata", move |c| {
            let md = c.fetch_metadata(Some(&name), t)?;
            Ok(md
                .topics()
                .iter()
                .find(|tp| tp.name() == name && tp.error().is_none())
                .map(|tp| tp.partitions().len() as i32)
                .filter(|n| *n > 0))
        })
        .await
    }

    /// Makes sure `topic` exists (creating it with `partitions` if missing) and
    /// returns its real partition count and epoch. `config` is applied only
    /// when the topic is created.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<TopicInfo, LogError> {
        let (count, created) = self.create_if_missing(topic, partitions, config).await?;
        if count != partitions {
            warn!(
                topic,
                configured = partitions,
                actual = count,
                "Topic has a different partition count than configured; using the topic's"
            );
        }
        let epoch = self.epoch_for(topic, count, created).await?;
        Ok(TopicInfo {
            name: topic.to_owned(),
            partitions: count,
            epoch,
            created,
        })
    }

    /// Creates `topic` with `config` if it does not exist, without an epoch
    /// (for herald's own bookkeeping topics). Returns its partition count.
    pub async fn ensure_internal_topic(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<i32, LogError> {
        Ok(self.create_if_missing(topic, partitions, config).await?.0)
    }

    async fn create_if_missing(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<(i32, bool), LogError> {
        if let Some(n) = self.partition_count(topic).await? {
            self.check_replication(topic).await;
            return Ok((n, false));
        }
        let created = self.create(topic, partitions, config).await?;
        self.check_replication(topic).await;
        Ok(created)
    }

    async fn create(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<(i32, bool), LogError> {
        let mut nt = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.cfg.replication),
        );
        for (k, v) in config {
            nt = nt.set(k, v);
        }
        let min_isr = self.cfg.min_insync_replicas.to_string();
        if self.cfg.min_insync_replicas > 0 {
            nt = nt.set("min.insync.replicas", &min_isr);
        }
        // Said before asking: a broker that never answers CreateTopics
        // otherwise leaves nothing in the log until the request times out.
        info!(
            topic,
            partitions,
            replication = self.cfg.replication,
            "Creating topic"
        );
        let opts = AdminOptions::new().operation_timeout(Some(self.cfg.request_timeout));
        let results = self.admin.create_topics([&nt], &opts).await?;
        let mut created = false;
        for r in results {
            match r {
                Ok(_) => created = true,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Other(format!("creating topic {name}: {code}")))
                }
            }
        }
        if created {
            info!(topic, partitions, "Created topic");
        }
        // Metadata can lag creation by a moment.
        let deadline = Instant::now() + self.cfg.request_timeout;
        loop {
            if let Some(n) = self.partition_count(topic).await? {
                return Ok((n, created));
            }
            if Instant::now() > deadline {
                return Err(LogError::Timeout(
                    self.cfg.request_timeout,
                    "a created topic to appear in metadata",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Warns (log and `herald_log_topic_below_configured`) when an existing
    /// topic has a lower replication factor or `min.insync.replicas` than
    /// configured: herald does not change a topic it did not create, but an
    /// operator must know that its acks promise less than the configuration
    /// says. A failed lookup is logged and counted, never fatal.
    async fn check_replication(&self, topic: &str) {
        if self.cfg.replication <= 0 && self.cfg.min_insync_replicas <= 0 {
            return;
        }
        match self.topic_replication(topic).await {
            Ok((rf, min_isr)) => {
                for (setting, actual, wanted) in [
                    ("replication", rf, self.cfg.replication),
                    ("min_insync_replicas", min_isr, self.cfg.min_insync_replicas),
                ] {
                    let below = wanted > 0 && actual.is_some_and(|a| a < wanted);
                    if below {
                        warn!(
                            topic,
                            setting,
                            actual = actual.unwrap_or(-1),
                            configured = wanted,
                            "Existing topic is below the configured replication setting; \
                             herald does not change it (kafka-configs / kafka-reassign-partitions do)"
                        );
                    }
                    metrics::gauge!("herald_log_topic_below_configured",
                        "topic" => topic.to_owned(), "setting" => setting)
                    .set(if below { 1.0 } else { 0.0 });
                }
            }
            Err(e) => {
                warn!(topic, %e, "Could not check the topic's replication settings");
                metrics::counter!("herald_log_errors_total", "op" => "describe_configs")
                    .increment(1);
            }
        }
    }

    /// The replication factor (the smallest replica count of any partition)
    /// and `min.insync.replicas` of `topic`, each `None` if not reported.
    async fn topic_replication(&self, topic: &str) -> Result<(Option<i32>, Option<i32>), LogError> {
        let t = self.cfg.request_timeout;
        let name = topic.to_owned();
        let rf = self
            .blocking("metadata", move |c| {
                let md = c.fetch_metadata(Some(&name), t)?;
                Ok(md
                    .topics()
                    .iter()
                    .find(|tp| tp.name() == name)
                    .and_then(|tp| {
                        tp.partitions()
                            .iter()
                            .map(|p| p.replicas().len() as i32)
                            .min()
                    }))
            })
            .await?;
        let opts = AdminOptions::new().request_timeout(Some(t));
        let res = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
            .await?;
        let mut min_isr = None;
        for r in res {
            let r = r.map_err(|e| LogError::Other(format!("describing {topic}: {e}")))?;
            min_isr = r
                .get("min.insync.replicas")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.parse().ok());
        }
        Ok((rf, min_isr))
    }

    /// The epoch herald recorded for `topic`, if any.
    pub async fn topic_epoch(&self, topic: &str) -> Result<Option<String>, LogError> {
        if self
            .partition_count(&self.cfg.meta_topic())
            .await?
            .is_none()
        {
            return Ok(None);
        }
        Ok(self.read_epochs().await?.remove(topic).map(|e| e.epoch))
    }

    /// Reads every epoch record in the meta topic: topic → newest epoch.
    /// Reads every epoch record in the meta topic: topic -> newest record.
    async fn read_epochs(&self) -> Result<HashMap<String, EpochRecord>, LogError> {
        let meta = self.cfg.meta_topic();
        let wm = self.watermarks_now(&meta, 0).await?;
        let mut out = HashMap::new();
        let mut from = wm.low;
        while from < wm.high {
            let batch = self.range(&meta, 0, from, wm.high, 1000).await?;
            for r in &batch.records {
                let (Some(k), Some(v)) = (&r.key, &r.value) else {
                    continue;
                };
                match serde_json::from_slice::<EpochRecord>(v) {
                    Ok(e) => {
                        out.insert(String::from_utf8_lossy(k).into_owned(), e);
                    }
                    Err(e) => warn!(offset = r.offset, %e, "Skipping malformed epoch record"),
                }
            }
            if batch.next <= from {
                break;
            }
            from = batch.next;
        }
        Ok(out)
    }

    async fn epoch_for(
        &self,
        topic: &str,
        partitions: i32,
        created: bool,
    ) -> Result<String, LogError> {
        let meta = self.cfg.meta_topic();
        self.create_if_missing(&meta, 1, &[("cleanup.policy", "compact")])
            .await?;
        if !created {
            // The node that created the topic records its epoch a moment
            // after: wait for that record rather than race it with one of
            // our own (several nodes deployed at once must agree).
            let deadline = Instant::now() + EPOCH_WAIT;
            loop {
                if let Some(e) = self.read_epochs().await?.remove(topic) {
                    // A record written a moment ago may be one of several
                    // that nodes starting together wrote at about the same
                    // time: let the others land, then take the newest.
                    let age = now_ms().saturating_sub(e.recorded_at_ms).max(0) as u64;
                    let settle = EPOCH_SETTLE.as_millis() as u64;
                    if age >= settle {
                        return Ok(e.epoch);
                    }
                    tokio::time::sleep(Duration::from_millis(settle - age + 100)).await;
                    let newest = self.read_epochs().await?.remove(topic);
                    return Ok(newest.map(|n| n.epoch).unwrap_or(e.epoch));
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            info!(
                topic,
                "No epoch recorded for an existing topic (created outside herald?); recording one"
            );
        }
        let rec = EpochRecord {
            epoch: new_epoch(),
            partitions,
            recorded_at_ms: now_ms(),
        };
        let value = serde_json::to_vec(&rec).map_err(|e| LogError::Other(e.to_string()))?;
        self.publish(&meta, 0, topic.as_bytes(), &value, &[])?
            .await?;
        // Another node may have recorded one at the same moment: the newest
        // wins (the only rule compaction keeps). Nodes that found a topic
        // without an epoch all waited as long and wrote about now: give
        // their records time to land before reading the newest.
        if !created {
            tokio::time::sleep(EPOCH_SETTLE).await;
        }
        let epochs = self.read_epochs().await?;
        let epoch = epochs
            .get(topic)
            .map(|e| e.epoch.clone())
            .unwrap_or(rec.epoch);
        info!(topic, epoch, "Recorded topic epoch");
        Ok(epoch)
    }

    /// Log start and end of a partition, with the timestamps of its first and
    /// last retained records (operators' `herald offsets`).
    pub async fn partition_summary(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionSummary, LogError> {
        let wm = self.watermarks_now(topic, partition).await?;
        let (mut first_ms, mut last_ms) = (None, None);
        if wm.high > wm.low {
            let first = self.range(topic, partition, wm.low, wm.high, 1).await?;
            first_ms = first.records.first().and_then(|r| r.timestamp_ms);
            let last = self
                .range(topic, partition, wm.high - 1, wm.high, 1)
                .await?;
            last_ms = last.records.first().and_then(|r| r.timestamp_ms);
        }
        Ok(PartitionSummary {
            partition,
            log_start: wm.low,
            log_end: wm.high,
            messages: wm.high - wm.low,
            first_ms,
            last_ms,
        })
    }

    /// Enqueues a record for `partition` of `topic`. Records enqueued in order
    /// are appended in order. The returned future resolves to the record's
    /// offset once Kafka acknowledged it with `acks=all`.
    pub fn publish(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<PendingPublish, LogError> {
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let rec = FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(value)
            .headers(h);
        match self.producer.send_result(rec) {
            Ok(f) => Ok(PendingPublish { inner: f }),
            Err((e, _)) => Err(LogError::Kafka(e)),
        }
    }

    /// Waits up to `timeout` for every enqueued publish to be confirmed.
    pub fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        self.producer.flush(timeout).map_err(LogError::from)
    }

    async fn watermarks_now(&self, topic: &str, partition: i32) -> Result<Watermarks, LogError> {
        let t = self.cfg.request_timeout;
        let name = topic.to_owned();
        let (low, high) = self
            .blocking("watermarks", move |c| {
                c.fetch_watermarks(&name, partition, t)
            })
            .await?;
        Ok(Watermarks { low, high })
    }

    /// The first offset whose timestamp is at or after `ts_ms`, or `None` if
    /// every record is older.
    pub async fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        ts_ms: i64,
    ) -> Result<Option<i64>, LogError> {
        let wm = self.watermarks_now(topic, partition).await?;
        self.offset_for_time_in(topic, partition, ts_ms, wm).await
    }

    /// [`Kafka::offset_for_time`] with watermarks the caller already has.
    async fn offset_for_time_in(
        &self,
        topic: &str,
        partition: i32,
        ts_ms: i64,
        wm: Watermarks,
    ) -> Result<Option<i64>, LogError> {
        if wm.high <= wm.low {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(ts_ms))?;
        let t = self.cfg.request_timeout;
        let res = self
            .blocking("offsets_for_times", move |c| c.offsets_for_times(tpl, t))
            .await?;
        let off = res
            .elements()
            .first()
            .map(|e| e.offset())
            .unwrap_or(Offset::End);
        Ok(match off {
            Offset::Offset(o) => Some(o.max(wm.low)),
            _ => None,
        })
    }

    /// Looks for a record of `channel` whose envelope id is `id` among the
    /// partition's records newer than `since_ms`, scanning at most `max_scan`
    /// records back from the end. Returns its offset. This is how a publish
    /// retried on another node finds out the first attempt was appended.
    pub async fn find_message(
        &self,
        topic: &str,
        partition: i32,
        channel: &str,
        id: uuid::Uuid,
        since_ms: i64,
        max_scan: i64,
    ) -> Result<Option<i64>, LogError> {
        #[derive(serde::Deserialize)]
        struct IdOnly {
            id: uuid::Uuid,
        }
        let wm = self.watermarks_now(topic, partition).await?;
        if wm.high <= wm.low {
            return Ok(None);
        }
        let by_time = self
            .offset_for_time_in(topic, partition, since_ms, wm)
            .await?
            .unwrap_or(wm.high);
        let mut from = by_time.max(wm.low).max(wm.high - max_scan);
        while from < wm.high {
            let batch = self.range(topic, partition, from, wm.high, 1000).await?;
            for r in &batch.records {
                if r.key.as_deref() != Some(channel.as_bytes()) {
                    continue;
                }
                let Some(v) = r.value.as_deref() else {
                    continue;
                };
                if serde_json::from_slice::<IdOnly>(v).is_ok_and(|e| e.id == id) {
                    return Ok(Some(r.offset));
                }
            }
            if batch.next <= from {
                break;
            }
            from = batch.next;
        }
        Ok(None)
    }

    /// An idle reader: the one whose last read ended at `from` of this
    /// partition if there is one (true: it is still assigned there), else
    /// any, unassigned.
    fn take_reader(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<(Reader, bool), LogError> {
        let found = {
            let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            match idle
                .iter()
                .position(|r| r.continues(topic, partition, from))
            {
                Some(i) => return Ok((idle.swap_remove(i), true)),
                None => idle.pop(),
            }
        };
        if let Some(mut r) = found {
            r.release()?;
            return Ok((r, false));
        }
        Ok((
            Reader {
                consumer: Arc::new(Self::consumer_config(&self.cfg, true).create()?),
                warmed: HashMap::new(),
                at: None,
            },
            false,
        ))
    }

    /// Back to the pool; `next` when the read stopped at its record limit, so
    /// that a read continuing from there keeps this assignment.
    fn return_reader(&self, mut r: Reader, topic: &str, partition: i32, next: Option<i64>) {
        match next {
            Some(o) => r.at = Some((topic.to_owned(), partition, o, Instant::now())),
            None => {
                if r.consumer.unassign().is_err() {
                    return;
                }
                r.at = None;
            }
        }
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        // Readers left assigned and not continued in time are released here,
        // as other reads come and go.
        for other in idle.iter_mut() {
            if other
                .at
                .as_ref()
                .is_some_and(|a| a.3.elapsed() >= CONTINUE_FOR)
            {
                let _ = other.release();
            }
        }
        if idle.len() < IDLE_READERS {
            idle.push(r);
        }
    }

    async fn range(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        max: usize,
    ) -> Result<RangeBatch, LogError> {
        if from >= to || max == 0 {
            return Ok(RangeBatch {
                records: Vec::new(),
                next: from,
            });
        }
        let _permit = self
            .read_permits
            .acquire()
            .await
            .map_err(|e| LogError::Task(e.to_string()))?;
        let (mut reader, continuing) = self.take_reader(topic, partition, from)?;
        if !continuing {
            if reader
                .warmed
                .get(topic)
                .is_none_or(|at| at.elapsed() > WARM_FOR)
            {
                let (c, name, t) = (
                    reader.consumer.clone(),
                    topic.to_owned(),
                    self.cfg.request_timeout,
                );
                tokio::task::spawn_blocking(move || warm_topic(&*c, &name, t))
                    .await
                    .map_err(|e| LogError::Task(format!("metadata: {e}")))??;
                reader.warmed.insert(topic.to_owned(), Instant::now());
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
            reader.consumer.assign(&tpl)?;
        }
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut out = Vec::new();
        let mut next = from;
        // Ok(true): stopped at `to` or at `max` records, the consumer's next
        // record being `next`; Ok(false): stopped at the end of the log.
        let result = loop {
            if next >= to || out.len() >= max {
                break Ok(true);
            }
            // The deadline is per record, not per batch: a large catch-up on
            // a busy broker is slow but making progress, and must not fail.
            let msg = match tokio::time::timeout(self.cfg.request_timeout, reader.consumer.recv())
                .await
            {
                Err(_) => break Err(LogError::Timeout(self.cfg.request_timeout, "a range read")),
                Ok(Err(KafkaError::PartitionEOF(_))) => {
                    if self.watermarks_now(topic, partition).await?.high > next {
                        // Records exist past this reader's position: the end
                        // it reached was passed since, or the event is left
                        // over from this reader's previous read (a continued
                        // reader). Read on; never skip them. (Should what
                        // lies there be undeliverable, such as a foreign
                        // producer's transaction markers, the read times out
                        // with an error rather than jump over it.)
                        continue;
                    }
                    // Everything that exists was read; the broker's view may
                    // be behind `to`, but nothing more exists yet.
                    next = to;
                    break Ok(false);
                }
                Ok(Err(e)) => break Err(LogError::Kafka(e)),
                Ok(Ok(m)) => m,
            };
            if msg.topic() != topic || msg.partition() != partition || msg.offset() < next {
                // A leftover of this reader's previous assignment, or a re-fetch.
                continue;
            }
            if msg.offset() >= to {
                next = to;
                break Ok(false);
            }
            next = msg.offset() + 1;
            out.push(Record::from_message(&msg, topic_arc.clone()));
        };
        match result {
            Ok(positioned) => {
                self.return_reader(reader, topic, partition, positioned.then_some(next));
                Ok(RangeBatch { records: out, next })
            }
            // A reader that failed mid-read is dropped, not reused.
            Err(e) => Err(e),
        }
    }

    /// Starts the partition tail feeding `sink`. Call once, before
    /// [`LogRead::follow`].
    pub fn start_tail(self: &Arc<Self>, sink: Arc<dyn RecordSink>) -> Result<(), LogError> {
        let consumer: StreamConsumer = Self::consumer_config(&self.cfg, false).create()?;
        let consumer = Arc::new(consumer);
        let tail = Tail {
            consumer: consumer.clone(),
            followed: Mutex::new(HashMap::new()),
        };
        if self.tail.set(tail).is_err() {
            return Err(LogError::Other("tail already started".into()));
        }
        tokio::spawn(async move {
            let mut topics: HashMap<String, Arc<str>> = HashMap::new();
            // Handles looked up once, not per record.
            let records = metrics::counter!("herald_log_tail_records_total");
            let delay = metrics::histogram!("herald_log_tail_delay_seconds");
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        // How long the record took from the producer to the
                        // tail (its CreateTime; same clock on one host, a
                        // cross-host skew shows up here too).
                        if let Some(ts) = m.timestamp().to_millis() {
                            delay.record((now_ms() - ts).max(0) as f64 / 1000.0);
                        }
                        let topic = match topics.get(m.topic()) {
                            Some(t) => t.clone(),
                            None => {
                                let t: Arc<str> = Arc::from(m.topic());
                                topics.insert(m.topic().to_owned(), t.clone());
                                t
                            }
                        };
                        records.increment(1);
                        sink.on_record(Record::from_message(&m, topic));
                    }
                    Err(e) => {
                        metrics::counter!("herald_log_errors_total", "op" => "tail").increment(1);
                        warn!(%e, "Tail read failed; librdkafka retries");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }
}

struct Tail {
    consumer: Arc<StreamConsumer>,
    /// Partitions assigned to the tail, with the offset they started from.
    followed: Mutex<HashMap<(String, i32), i64>>,
}

impl LogRead for Kafka {
    fn watermarks<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
    ) -> BoxFuture<'a, Result<Watermarks, LogError>> {
        Box::pin(async move {
            let r = self.watermarks_now(topic, partition).await;
            if r.is_err() {
                metrics::counter!("herald_log_errors_total", "op" => "watermarks").increment(1);
            }
            r
        })
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
            let r = self.range(topic, partition, from, to, max).await;
            match &r {
                Ok(b) => metrics::counter!("herald_log_range_records_total")
                    .increment(b.records.len() as u64),
                Err(_) => {
                    metrics::counter!("herald_log_errors_total", "op" => "range").increment(1)
                }
            }
            r
        })
    }

    fn offset_for_time<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        ts_ms: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, LogError>> {
        Box::pin(async move {
            let r = Kafka::offset_for_time(self, topic, partition, ts_ms).await;
            if r.is_err() {
                metrics::counter!("herald_log_errors_total", "op" => "offset_for_time")
                    .increment(1);
            }
            r
        })
    }

    fn follow(&self, topic: &str, partition: i32, from: i64) -> Result<(), LogError> {
        let tail = self
            .tail
            .get()
            .ok_or_else(|| LogError::Other("tail not started".into()))?;
        let mut followed = tail.followed.lock().unwrap_or_else(|p| p.into_inner());
        if followed.contains_key(&(topic.to_owned(), partition)) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
        let first_of_topic = !followed.keys().any(|(t, _)| t == topic);
        tail.consumer.incremental_assign(&tpl)?;
        followed.insert((topic.to_owned(), partition), from);
        if first_of_topic {
            // Off the caller's thread: the answer updates the assigned
            // partition inside librdkafka; if it fails, the once-a-second
            // scan still finds the leader, only later.
            let (c, name, t) = (
                tail.consumer.clone(),
                topic.to_owned(),
                self.cfg.request_timeout,
            );
            let spawned = std::thread::Builder::new()
                .name("herald-tail-metadata".into())
                .spawn(move || {
                    if let Err(e) = warm_topic(&*c, &name, t) {
                        metrics::counter!("herald_log_errors_total", "op" => "metadata")
                            .increment(1);
                        warn!(%e, topic = %name, "Metadata for a newly tailed topic failed; librdkafka finds its leader within a second");
                    }
                });
            if let Err(e) = spawned {
                warn!(%e, "Could not start the tail's metadata lookup");
            }
        }
        debug!(topic, partition, from, "Tailing partition");
        metrics::gauge!("herald_log_tailed_partitions").set(followed.len() as f64);
        Ok(())
    }
}

/// A publish Kafka has not confirmed yet. Resolves to the record's offset.
pub struct PendingPublish {
    inner: DeliveryFuture,
}

impl Future for PendingPublish {
    type Output = Result<i64, LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner).poll(cx).map(|r| match r {
            Ok(Ok(delivery)) => Ok(delivery.offset),
            Ok(Err((e, _msg))) => Err(LogError::Kafka(e)),
            Err(_canceled) => Err(LogError::Canceled),
        })
    }
}
