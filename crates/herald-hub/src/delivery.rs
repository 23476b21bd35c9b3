//! [`Delivery`]: one message serialised once for the wire, shared by every
//! subscriber it goes to.

use std::sync::Arc;

use herald_log::Record;
use herald_proto::envelope::EnvelopeRef;
use herald_proto::{Filter, Tags};
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
    /// The publish's tags, which subscriptions' filters read (`None` for
    /// most messages: no allocation).
    pub tags: Option<Box<Tags>>,
}

/// What one subscription takes of its partition's messages: those of its
/// channel that pass its filter.
#[derive(Clone, Debug)]
pub struct Interest {
    pub channel: Arc<str>,
    pub filter: Option<Arc<Filter>>,
    /// The channel conflates (docs/protocol.md, "Conflation"): a subscriber
    /// behind on it gets the newest message instead of being cut.
    pub conflate: bool,
}

impl Interest {
    /// Every message of `channel`.
    pub fn channel(channel: &str) -> Self {
        Interest {
            channel: Arc::from(channel),
            filter: None,
            conflate: false,
        }
    }

    /// Whether `d` (a message of this channel's partition) is for it.
    pub fn wants(&self, d: &Delivery) -> bool {
        *d.channel == *self.channel && self.passes(d)
    }

    /// Whether `d` (a message of this channel) passes the filter.
    pub fn passes(&self, d: &Delivery) -> bool {
        passes(self.filter.as_deref(), d.tags.as_deref())
    }
}

/// Whether a message with `tags` passes a subscription's `filter` (none:
/// every message does): the one test of resumes, live dispatch and
/// ephemeral messages.
pub(crate) fn passes(filter: Option<&Filter>, tags: Option<&Tags>) -> bool {
    filter.is_none_or(|f| f.matches(tags))
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
                tags: env.tags.map(Box::new),
            }),
            Err(e) => {
                metrics::counter!("herald_hub_malformed_records_total").increment(1);
                debug!(topic = %r.topic, partition = r.partition, offset = r.offset, %e, "Skipping record that is not a herald envelope");
                None
            }
        }
    }
}
