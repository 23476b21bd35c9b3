//! [`Delivery`]: one message serialised once for the wire, shared by every
//! subscriber it goes to.

use std::sync::Arc;

use herald_log::Record;
use herald_proto::envelope::EnvelopeRef;
use tracing::debug;

use crate::Text;

/// One message ready for the wire.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Arc<str>,
    pub seq: i64,
    /// The serialised `message` frame.
    pub text: Text,
    /// Re-delivered by `herald replay --live`.
    pub replayed: bool,
}

impl Delivery {
    /// Builds the `message` frame for a record, or `None` (and a metric) when
    /// the record is not a herald envelope, e.g. written by a foreign producer.
    pub fn from_record(r: &Record, epoch: &str) -> Option<Delivery> {
        let value = r.value.as_deref()?;
        match EnvelopeRef::decode(value, r.key.as_deref()) {
            Ok(env) => Some(Delivery {
                channel: Arc::from(&*env.channel),
                seq: r.offset,
                text: Text::from(env.message_json(r.offset, epoch)),
                replayed: env.replayed.is_some(),
            }),
            Err(e) => {
                metrics::counter!("herald_hub_malformed_records_total").increment(1);
                debug!(topic = %r.topic, partition = r.partition, offset = r.offset, %e, "Skipping record that is not a herald envelope");
                None
            }
        }
    }
}
