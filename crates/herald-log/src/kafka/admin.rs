//! Topic creation and checks, topic epochs, and partition summaries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, info, warn};

use super::Kafka;
use crate::epoch::{new_epoch, EpochRecord};
use crate::{LogError, LogWrite};
use herald_proto::envelope::now_ms;

/// How long a node that found a topic (rather than creating it) waits for
/// the creator's epoch record before recording one itself.
const EPOCH_WAIT: Duration = Duration::from_secs(3);
/// How long such a node waits after recording one, before reading back the
/// newest (other nodes in the same position write at about the same time).
const EPOCH_SETTLE: Duration = Duration::from_secs(1);

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

impl Kafka {
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

    /// True when every partition of `topic` has a leader in metadata.
    async fn leaders_known(&self, topic: &str) -> Result<bool, LogError> {
        let known = self
            .topic_metadata(topic, |tp| {
                !tp.partitions().is_empty()
                    && tp
                        .partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
            })
            .await?;
        Ok(known == Some(true))
    }

    async fn partition_count_once(&self, topic: &str) -> Result<Option<i32>, LogError> {
        let count = self
            .topic_metadata(topic, |tp| tp.partitions().len() as i32)
            .await?;
        Ok(count.filter(|n| *n > 0))
    }

    /// `f` of `topic`'s metadata, or `None` when the broker does not know
    /// the topic (or answers it with an error).
    async fn topic_metadata<T: Send + 'static>(
        &self,
        topic: &str,
        f: impl FnOnce(&rdkafka::metadata::MetadataTopic) -> T + Send + 'static,
    ) -> Result<Option<T>, LogError> {
        let t = self.cfg.request_timeout;
        let name = topic.to_owned();
        self.blocking("metadata", move |c| {
            let md = c.fetch_metadata(Some(&name), t)?;
            Ok(md
                .topics()
                .iter()
                .find(|tp| tp.name() == name && tp.error().is_none())
                .map(f))
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
        // Metadata can lag creation by a moment, and a topic this node just
        // created has its partitions' leaders a moment later still: reading
        // one before that fails (UnknownPartition on a three-broker
        // cluster). Wait for both; past the deadline the topic is returned
        // anyway (reads retry). A topic that existed is not waited for: a
        // broker may be down and its partitions leaderless for a while.
        let deadline = Instant::now() + self.cfg.request_timeout;
        loop {
            if let Some(n) = self.partition_count(topic).await? {
                if !created
                    || Instant::now() > deadline
                    || self.leaders_known(topic).await.unwrap_or(false)
                {
                    return Ok((n, created));
                }
            } else if Instant::now() > deadline {
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

    /// Reads every epoch record in the meta topic: topic -> newest record.
    async fn read_epochs(&self) -> Result<HashMap<String, EpochRecord>, LogError> {
        let meta = self.cfg.meta_topic();
        // Just created (by this node or another), its partition may not be
        // readable for a moment yet.
        let deadline = Instant::now() + self.cfg.request_timeout;
        let wm = loop {
            match self.watermarks_now(&meta, 0).await {
                Ok(wm) => break wm,
                Err(e) if Instant::now() < deadline => {
                    debug!(%e, "The meta topic is not readable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        };
        // A later record of a topic replaces the earlier.
        let newest = crate::newest_per_key::<EpochRecord, _>(
            self,
            &meta,
            0,
            (wm.low, wm.high),
            None,
            |_, _| true,
        )
        .await?;
        Ok(newest
            .into_iter()
            .map(|(k, e)| (String::from_utf8_lossy(&k).into_owned(), e))
            .collect())
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
        self.append_record(&meta, 0, topic.as_bytes(), &value, &[])?
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
}
