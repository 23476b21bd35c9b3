//! The producer: appends with the durability contract (idempotent,
//! `acks=all`), and its replacement after a fatal error.
//!
//! An idempotent producer that hits a fatal error (an out-of-order sequence
//! the broker cannot reconcile, a fenced producer id) refuses every append
//! from then on. herald does not leave a node in that state: the next append
//! or readiness probe replaces the producer with a new one (a new producer
//! id), counts it in `herald_log_producer_recoveries_total` and logs why.
//! Appends the old producer still held fail with the fatal error; they are
//! nacked as possibly stored (a retry with `retry: true` finds them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, warn};

use super::Kafka;
use crate::{LogConfig, LogError, LogWrite, PendingPublish};

/// The producer type of a node.
pub(super) type Producer = FutureProducer<FatalWatch>;

/// Notes a fatal error when librdkafka reports one (from its own thread).
pub(super) struct FatalWatch {
    fatal: Arc<AtomicBool>,
}

impl ClientContext for FatalWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::Release);
            error!(%error, reason, "Kafka producer hit a fatal error; it will be replaced");
        } else {
            debug!(%error, reason, "librdkafka producer error");
        }
    }
}

/// A producer and the flag its context raises on a fatal error.
#[derive(Clone)]
struct Current {
    producer: Arc<Producer>,
    fatal: Arc<AtomicBool>,
}

impl Current {
    fn create(cfg: &ClientConfig) -> Result<Current, KafkaError> {
        let fatal = Arc::new(AtomicBool::new(false));
        let producer = cfg.create_with_context(FatalWatch {
            fatal: fatal.clone(),
        })?;
        Ok(Current {
            producer: Arc::new(producer),
            fatal,
        })
    }
}

/// The current producer, replaced after a fatal error.
pub(super) struct ProducerSlot {
    current: RwLock<Current>,
}

impl ProducerSlot {
    pub(super) fn new(cfg: &ClientConfig) -> Result<Self, KafkaError> {
        Ok(ProducerSlot {
            current: RwLock::new(Current::create(cfg)?),
        })
    }

    fn get(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Kafka {
    /// The librdkafka settings of the producer.
    pub(super) fn producer_config(cfg: &LogConfig) -> ClientConfig {
        let mut p = Self::base_config(cfg);
        // The durability contract: nothing is acked until every in-sync
        // replica has it, and retries never duplicate or reorder.
        p.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            // How long librdkafka keeps retrying an append (same producer
            // sequence, so never stored twice). Far longer than the publish
            // timeout on purpose: a publish that times out for its client is
            // not abandoned while its record may still be committed (a
            // leader failover); see herald-hub's publish pipeline.
            .set(
                "message.timeout.ms",
                cfg.publish_timeout
                    .max(super::DELIVERY_TIMEOUT)
                    .as_millis()
                    .to_string(),
            )
            // Only used if a partition were not given; herald always gives one.
            .set("partitioner", "murmur2_random");
        // Tuning, not contract: `[kafka.client]` may change it.
        if !cfg.overrides.iter().any(|(k, _)| k == "linger.ms") {
            p.set("linger.ms", "1");
        }
        p
    }

    /// The producer, replaced first if it hit a fatal error. Fails only when
    /// a replacement cannot be created.
    pub(super) fn healthy_producer(&self) -> Result<Arc<Producer>, LogError> {
        let p = self.producer.get();
        if !p.fatal.load(Ordering::Acquire) && p.producer.client().fatal_error().is_none() {
            return Ok(p.producer);
        }
        let mut slot = self
            .producer
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Another caller may have replaced it meanwhile.
        let Some((code, reason)) = slot.producer.client().fatal_error() else {
            return Ok(slot.producer.clone());
        };
        let fresh = Current::create(&Self::producer_config(&self.cfg)).map_err(|e| {
            LogError::Other(format!(
                "the producer failed ({code:?}: {reason}) and a new one could not be created: {e}"
            ))
        })?;
        let old = std::mem::replace(&mut *slot, fresh);
        metrics::counter!("herald_log_producer_recoveries_total").increment(1);
        warn!(
            ?code,
            reason, "Replaced the Kafka producer after a fatal error"
        );
        // Destroying a librdkafka client can block; not on this thread.
        let _ = std::thread::Builder::new()
            .name("herald-old-producer".into())
            .spawn(move || drop(old));
        Ok(slot.producer.clone())
    }

    /// Raises a fatal error in the producer, as a broker's answer would:
    /// for tests of the recovery.
    #[doc(hidden)]
    pub fn inject_fatal_error(&self, reason: &str) {
        let p = self.producer.get().producer;
        let reason = std::ffi::CString::new(reason).unwrap_or_default();
        // SAFETY: the client pointer is valid while `p` is held, and
        // librdkafka copies `reason` before returning.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                p.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    fn send(
        producer: &Producer,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<PendingPublish, KafkaError> {
        let rec = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .key(key)
            .headers(owned_headers(headers));
        // No payload: a tombstone (null value), which compaction removes.
        let rec = match value {
            Some(v) => rec.payload(v),
            None => rec,
        };
        producer
            .send_result(rec)
            .map(PendingPublish::kafka)
            .map_err(|(e, _)| e)
    }
}

/// A record's headers as librdkafka takes them.
pub(super) fn owned_headers(headers: &[(&str, &[u8])]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        },
    )
}

impl Kafka {
    fn append_value(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<PendingPublish, LogError> {
        let producer = self.healthy_producer()?;
        match Self::send(&producer, topic, partition, key, value, headers) {
            // Failed between the check and the send: once more, on a new one.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
                let producer = self.healthy_producer()?;
                Self::send(&producer, topic, partition, key, value, headers)
                    .map_err(LogError::Kafka)
            }
            r => r.map_err(LogError::Kafka),
        }
    }
}

impl LogWrite for Kafka {
    /// Enqueues a record for `partition` of `topic`. Records enqueued in order
    /// are appended in order. The returned future resolves to the record's
    /// offset once Kafka acknowledged it with `acks=all`.
    fn append_record(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<PendingPublish, LogError> {
        self.append_value(topic, partition, key, Some(value), headers)
    }

    fn append_tombstone(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
    ) -> Result<PendingPublish, LogError> {
        self.append_value(topic, partition, key, None, &[])
    }

    fn append_ephemeral(
        &self,
        topic: &str,
        partition: i32,
        env: &herald_proto::Envelope,
    ) -> Result<(), LogError> {
        let headers = env.headers();
        self.send_ephemeral(
            topic,
            partition,
            env.key(),
            &env.to_json(),
            &headers.pairs(),
        )
    }

    /// Waits up to `timeout` for every enqueued publish to be confirmed.
    fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        self.producer
            .get()
            .producer
            .flush(timeout)
            .map_err(LogError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_tune_the_producer_but_cannot_weaken_its_contract() {
        let cfg = LogConfig {
            overrides: vec![
                ("linger.ms".into(), "5".into()),
                ("acks".into(), "1".into()),
                ("enable.idempotence".into(), "false".into()),
            ],
            ..LogConfig::default()
        };
        let p = Kafka::producer_config(&cfg);
        assert_eq!(p.get("linger.ms"), Some("5"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(
            Kafka::producer_config(&LogConfig::default()).get("linger.ms"),
            Some("1")
        );
    }
}
