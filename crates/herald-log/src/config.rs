//! Kafka client settings.

use std::time::Duration;

/// How herald talks to Kafka. Defaults suit the dev broker on 127.0.0.1:9092.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Prefix of every topic herald creates (`{prefix}{namespace}`,
    /// `{prefix}meta`). Lets several herald installations, or test runs,
    /// share one cluster.
    pub topic_prefix: String,
    /// `fetch.wait.max.ms` of the tail and range readers: how long the
    /// broker may hold a Fetch that found no new data. Kafka answers as soon
    /// as a record arrives, so this bounds idle polling, not latency.
    pub fetch_wait_max_ms: u32,
    /// How long Kafka has to confirm a publish before its client is told
    /// `unavailable`. The append itself goes on for at least
    /// [`crate::kafka::DELIVERY_TIMEOUT`] (`message.timeout.ms`).
    pub publish_timeout: Duration,
    /// Metadata, watermark and range-read deadline.
    pub request_timeout: Duration,
    /// Replication factor of topics herald creates; -1 = broker default.
    pub replication: i32,
    /// `min.insync.replicas` of topics herald creates; -1 = broker default.
    /// With `acks=all`, a publish is acked only once this many replicas have
    /// it.
    pub min_insync_replicas: i32,
    /// Extra librdkafka settings applied to every client (security, tuning).
    pub overrides: Vec<(String, String)>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "herald.".into(),
            fetch_wait_max_ms: 100,
            publish_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            replication: -1,
            min_insync_replicas: -1,
            overrides: Vec::new(),
        }
    }
}

impl LogConfig {
    /// The Kafka topic of a namespace.
    pub fn topic_for(&self, namespace: &str) -> String {
        format!("{}{}", self.topic_prefix, namespace)
    }

    /// The topic of a namespace's ephemeral messages: as many partitions as
    /// the namespace's, a short retention. Namespace names have no `.`, so
    /// it cannot be another namespace's topic.
    pub fn ephemeral_topic_for(&self, namespace: &str) -> String {
        format!("{}{}.ephemeral", self.topic_prefix, namespace)
    }

    /// The compacted topic holding topic epochs.
    pub fn meta_topic(&self) -> String {
        format!("{}meta", self.topic_prefix)
    }

    /// The compacted topic holding durable cursors.
    pub fn cursor_topic(&self) -> String {
        format!("{}cursors", self.topic_prefix)
    }

    /// The topic every node tails for the cluster's node list and admin
    /// commands (one partition, short retention).
    pub fn control_topic(&self) -> String {
        format!("{}control", self.topic_prefix)
    }

    /// The compacted topic of channel members (presence).
    pub fn presence_topic(&self) -> String {
        format!("{}presence", self.topic_prefix)
    }

    /// The compacted topic of token revocations (one partition, read by
    /// every node from its start).
    pub fn revocations_topic(&self) -> String {
        format!("{}revocations", self.topic_prefix)
    }
}
