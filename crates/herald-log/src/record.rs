//! An owned Kafka record.

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Message};

#[derive(Clone, Debug)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Broker or producer timestamp in milliseconds, when the record has one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub(crate) fn from_message(m: &BorrowedMessage<'_>, topic: Arc<str>) -> Self {
        Record {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}
