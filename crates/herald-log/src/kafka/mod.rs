//! [`Kafka`]: the one Kafka client a node needs, by component:
//! - [`admin`]: topic creation and checks, epochs, partition summaries;
//! - [`producer`]: the idempotent `acks=all` producer;
//! - [`ephemeral`]: the `acks=1` producer of ephemeral messages;
//! - [`ranges`]: watermark and time lookups and the pooled range readers;
//! - [`tail`]: the partition tail that feeds live delivery;
//! - [`group`]: a consumer-group member reading at least once (webhooks).
//!
//! This file holds the client itself, its librdkafka settings and the
//! [`LogRead`] / [`LogWrite`] / [`Log`] implementations.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio::sync::Semaphore;

use crate::{BoxFuture, Log, LogConfig, LogError, LogRead, RangeBatch, RecordSink, Watermarks};

mod admin;
mod ephemeral;
mod group;
mod producer;
mod ranges;
mod stats;
mod tail;

pub use admin::{PartitionSummary, TopicInfo};
pub use ephemeral::EPHEMERAL_DELIVERY_TIMEOUT;
pub use group::GroupReader;

use producer::ProducerSlot;
use ranges::{Reader, CONCURRENT_READS, RANGE_FETCH_WAIT_MS};

/// The least time librdkafka keeps trying to deliver an append
/// (`message.timeout.ms`; librdkafka's own default).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// The Kafka client of one herald node.
pub struct Kafka {
    cfg: LogConfig,
    producer: ProducerSlot,
    admin: AdminClient<DefaultClientContext>,
    /// Metadata and watermark lookups (blocking calls, run on the blocking pool).
    lookup: Arc<BaseConsumer>,
    /// Idle range readers.
    readers: Mutex<Vec<Reader>>,
    read_permits: Semaphore,
    tail: OnceLock<tail::Tail>,
    /// Made by the first ephemeral append.
    ephemeral: OnceLock<Arc<ephemeral::EphemeralProducer>>,
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
        // Readers stop at a record limit or at RANGE_MAX_BYTES (and may stay
        // assigned for a read that continues): a prefetch of one read's
        // bytes is what a continued read uses, and bounds what an idle
        // reader in the pool holds (docs/benchmarks.md, "Memory after the
        // attacks of docs/security.md": 4 MiB each kept ~16 MB after a
        // burst).
        .set(
            "queued.max.messages.kbytes",
            if eof { "1024" } else { "16384" },
        );
        c
    }

    /// Creates the clients. Does not wait for the broker: use [`Kafka::ping`].
    pub fn connect(cfg: LogConfig) -> Result<Arc<Self>, LogError> {
        let producer = ProducerSlot::new(&Self::producer_config(&cfg))?;
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
            ephemeral: OnceLock::new(),
        }))
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    pub(super) async fn blocking<T, F>(&self, what: &'static str, f: F) -> Result<T, LogError>
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
    /// with thousands of topics that request is slow. A producer that hit a
    /// fatal error is replaced first; if it cannot be, the probe fails.
    pub async fn ping(&self) -> Result<(), LogError> {
        self.healthy_producer()?;
        let t = self.cfg.request_timeout.min(Duration::from_secs(3));
        let topic = self.cfg.meta_topic();
        self.blocking("metadata", move |c| {
            c.fetch_metadata(Some(&topic), t).map(|_| ())
        })
        .await
    }
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
        self.follow_partition(topic, partition, from)
    }
    fn unfollow(&self, topic: &str, partition: i32) -> Result<(), LogError> {
        self.unfollow_partition(topic, partition)
    }
}

impl Log for Kafka {
    fn config(&self) -> &LogConfig {
        &self.cfg
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(Kafka::ping(self))
    }

    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: i32,
        config: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<TopicInfo, LogError>> {
        Box::pin(Kafka::ensure_topic(self, topic, partitions, config))
    }

    fn ensure_internal_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: i32,
        config: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<i32, LogError>> {
        Box::pin(Kafka::ensure_internal_topic(
            self, topic, partitions, config,
        ))
    }

    fn start_tail(&self, sink: Arc<dyn RecordSink>) -> Result<(), LogError> {
        Kafka::start_tail(self, sink)
    }

    fn prepare_reads<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(self.prepare_readers(topics))
    }

    fn group_reader(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn crate::GroupRead>, LogError> {
        Ok(Box::new(Kafka::group_reader(self, group, topics)?))
    }
}
