//! The producer: appends with the durability contract (idempotent,
//! `acks=all`).

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};

use super::Kafka;
use crate::{LogError, LogWrite, PendingPublish};

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
            Ok(f) => Ok(PendingPublish::kafka(f)),
            Err((e, _)) => Err(LogError::Kafka(e)),
        }
    }

    /// Waits up to `timeout` for every enqueued publish to be confirmed.
    fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        self.producer.flush(timeout).map_err(LogError::from)
    }
}
