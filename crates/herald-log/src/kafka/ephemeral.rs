//! The producer of ephemeral messages (docs/protocol.md, "Ephemeral
//! messages"): fanned out through Kafka like every message, but not kept,
//! so it skips what durability costs: `acks=1` (the leader's write), no
//! idempotence, a short delivery timeout, and no answer awaited per record
//! (a librdkafka thread counts the outcomes).
//!
//! Created on the first ephemeral append: a node without an ephemeral
//! namespace has no second producer.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use tracing::debug;

use super::Kafka;
use crate::{LogConfig, LogError};

/// How long librdkafka tries to deliver an ephemeral record: later than
/// this it is of no use to anyone (a typing indicator, a cursor).
pub const EPHEMERAL_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts each ephemeral record's outcome, on librdkafka's thread.
pub(super) struct Outcomes;

impl ClientContext for Outcomes {}

impl ProducerContext for Outcomes {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = match result {
            Ok(_) => "ok",
            Err((e, _)) => {
                debug!(%e, "An ephemeral record was not delivered");
                "failed"
            }
        };
        metrics::counter!("herald_ephemeral_appends_total", "outcome" => outcome).increment(1);
    }
}

pub(super) type EphemeralProducer = ThreadedProducer<Outcomes>;

impl Kafka {
    /// The librdkafka settings of the ephemeral producer.
    fn ephemeral_config(cfg: &LogConfig) -> rdkafka::ClientConfig {
        let mut p = Self::base_config(cfg);
        p.set("enable.idempotence", "false")
            .set("acks", "1")
            .set(
                "message.timeout.ms",
                EPHEMERAL_DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("partitioner", "murmur2_random");
        if !cfg.overrides.iter().any(|(k, _)| k == "linger.ms") {
            p.set("linger.ms", "1");
        }
        p
    }

    fn ephemeral_producer(&self) -> Result<Arc<EphemeralProducer>, LogError> {
        if let Some(p) = self.ephemeral.get() {
            return Ok(p.clone());
        }
        let fresh: EphemeralProducer =
            Self::ephemeral_config(&self.cfg).create_with_context(Outcomes)?;
        // Two first appends at once: one producer is kept, the other dropped.
        Ok(self.ephemeral.get_or_init(|| Arc::new(fresh)).clone())
    }

    /// Enqueues an ephemeral record; its outcome is only counted. Fails at
    /// once when the producer's queue is full (or the client is broken).
    pub(super) fn send_ephemeral(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), LogError> {
        let producer = self.ephemeral_producer()?;
        let rec = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .key(key)
            .payload(value)
            .headers(super::producer::owned_headers(headers));
        producer.send(rec).map_err(|(e, _)| {
            metrics::counter!("herald_ephemeral_appends_total", "outcome" => "refused")
                .increment(1);
            LogError::Kafka(e)
        })
    }
}
