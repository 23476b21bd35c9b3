//! Live dispatch: each record the tail reads goes into its partition's
//! ring and to every subscriber of its channel, serialised once.
//!
//! Invariant: dispatch never waits on a connection. A subscriber whose
//! queue is full is removed and its connection cut (it resumes from its
//! position); a record below `next_offset` was dispatched already and is
//! dropped; a record above it means the tail skipped deleted records, and
//! every subscriber of the partition is cut rather than carried on with a
//! silent gap.

use std::sync::{Arc, OnceLock};

use herald_log::{Record, RecordSink};
use herald_proto::envelope::EnvelopeRef;
use tracing::{debug, warn};

use super::Hub;
use crate::delivery::{passes, Delivery};
use crate::outbox::Outbound;

impl Hub {
    /// Live dispatch of one tailed record.
    fn dispatch(&self, r: Record) {
        // Keyed by the record's own `Arc<str>`: no allocation per record.
        let found = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(r.topic.clone(), r.partition))
            .cloned();
        let Some(part) = found else {
            // Fetched before the partition was retired.
            debug!(topic = %r.topic, partition = r.partition, "Record for a partition the hub no longer follows");
            return;
        };
        let delivery = Delivery::from_record(&r, &part.epoch).map(Arc::new);
        let mut st = part.lock();
        if r.offset < st.next_offset {
            // Already dispatched (a re-fetch after a broker reconnect).
            return;
        }
        if r.offset > st.next_offset {
            // The tail skipped records: herald's topics have no offset gaps
            // (no transactions, no compaction), so this is librdkafka
            // resetting a tail that fell behind the log start (the records
            // were deleted before it read them). No live subscriber of the
            // partition got them, and the ring is no longer contiguous.
            let (from, to) = (st.next_offset, r.offset);
            warn!(topic = %r.topic, partition = r.partition, from, to, "The tail skipped records; cutting the partition's subscribers");
            metrics::counter!("herald_hub_tail_gaps_total").increment(1);
            metrics::counter!("herald_hub_tail_skipped_records_total")
                .increment((to - from) as u64);
            st.forget(r.offset);
            let mut cut = 0usize;
            for (_, list) in st.subs.drain() {
                for sub in list {
                    sub.outbox.cut();
                    cut += 1;
                }
            }
            metrics::gauge!("herald_hub_subscriptions").decrement(cut as f64);
        }
        st.next_offset = r.offset + 1;
        let Some(d) = delivery else {
            return;
        };
        st.remember(d.clone(), &self.cfg);
        let mut delivered = 0u64;
        let mut dropped = 0usize;
        if let Some(list) = st.subs.get_mut(&d.channel) {
            list.retain_mut(|sub| {
                if d.seq <= sub.last_seq {
                    return true;
                }
                if !passes(sub.filter.as_deref(), d.tags.as_deref()) {
                    sub.last_seq = d.seq;
                    return true;
                }
                let queued = if sub.conflate {
                    sub.outbox.push_conflating(d.clone())
                } else {
                    sub.outbox.try_push(Outbound::Message(d.clone()))
                };
                if queued {
                    sub.last_seq = d.seq;
                    delivered += 1;
                    true
                } else {
                    // Slow consumer (or gone): its connection closes and the
                    // client resumes from its position.
                    dropped += 1;
                    false
                }
            });
            if list.is_empty() {
                st.subs.remove(&d.channel);
            }
        }
        drop(st);
        static DELIVERIES: OnceLock<metrics::Counter> = OnceLock::new();
        DELIVERIES
            .get_or_init(|| metrics::counter!("herald_hub_deliveries_total"))
            .increment(delivered);
        if d.replayed {
            metrics::counter!("herald_hub_replayed_records_total").increment(1);
        }
        if dropped > 0 {
            metrics::gauge!("herald_hub_subscriptions").decrement(dropped as f64);
        }
    }
}

impl Hub {
    /// An ephemeral message read from `topic`'s ephemeral topic: its
    /// `ephemeral` frame, serialised once, is offered to the subscribers of
    /// its channel whose filter passes it. No ring, no position: a full
    /// queue misses it (never a reason to cut), a resume never sees it.
    pub fn on_ephemeral(&self, topic: &str, r: &Record) {
        let Some(value) = r.value.as_deref() else {
            return;
        };
        let env = match EnvelopeRef::decode(value, r.key.as_deref()) {
            Ok(env) => env,
            Err(e) => {
                metrics::counter!("herald_hub_malformed_records_total").increment(1);
                debug!(topic = %r.topic, offset = r.offset, %e, "Skipping an ephemeral record that is not a herald envelope");
                return;
            }
        };
        let text = env.ephemeral_json();
        let (sent, dropped) = self.offer_all(topic, r.partition, &env.channel, &text, false, |s| {
            passes(s.filter.as_deref(), env.tags.as_ref())
        });
        static SENT: OnceLock<metrics::Counter> = OnceLock::new();
        SENT.get_or_init(|| metrics::counter!("herald_hub_ephemeral_deliveries_total"))
            .increment(sent as u64);
        if dropped > 0 {
            metrics::counter!("herald_hub_ephemeral_dropped_total").increment(dropped as u64);
        }
    }
}

impl RecordSink for Hub {
    fn on_record(&self, record: Record) {
        self.dispatch(record);
    }
}
