//! Resume strategy 3: from the log. What neither the ring nor the fill
//! holds is read from Kafka, `channel`'s records handed over in order.
//!
//! Invariant: nothing is handed over past a hole. herald's message topics
//! have no offset gaps, so a batch that skipped offsets means retention
//! deleted what the subscriber still needed; that is checked against the
//! log start before anything of the batch is handed over, and a real hole
//! cuts the subscriber ([`HubError::Gap`]; it resumes with
//! `recovered: false`) instead of handing it a silent gap.

use std::sync::Arc;

use herald_log::Span;
use tracing::warn;

use super::super::partition::Partition;
use super::super::Hub;
use crate::delivery::{Delivery, Interest};
use crate::outbox::{Outbound, Outbox};
use crate::HubError;

impl Hub {
    /// Hands `channel`'s messages in `[from, upto)` from Kafka to `outbox`.
    pub(super) async fn catch_up_from_log(
        &self,
        outbox: &Outbox,
        part: &Partition,
        want: &Interest,
        from: i64,
        upto: i64,
    ) -> Result<u64, HubError> {
        let mut total = 0u64;
        let mut span = Span::new(
            &*self.log,
            &part.topic,
            part.partition,
            from,
            upto,
            self.cfg.catchup_batch,
        );
        loop {
            let from = span.position();
            let Some(batch) = span.next_batch().await? else {
                return Ok(total);
            };
            if let Some(at) = batch.first_gap(from) {
                let low = self.log.watermarks(&part.topic, part.partition).await?.low;
                if low > at {
                    warn!(topic = %part.topic, partition = part.partition, from = at, low, "Records a catch-up needed were deleted; cutting the subscriber");
                    metrics::counter!("herald_hub_catchup_gaps_total").increment(1);
                    outbox.cut();
                    return Err(HubError::Gap { from: at, low });
                }
            }
            let mut n = 0u64;
            for r in &batch.records {
                if r.key.as_deref() != Some(want.channel.as_bytes()) {
                    continue;
                }
                if let Some(d) = Delivery::from_record(r, &part.epoch).filter(|d| want.passes(d)) {
                    if !outbox.push(Outbound::Message(Arc::new(d))).await {
                        return Err(HubError::Closed);
                    }
                    n += 1;
                }
            }
            total += n;
            metrics::counter!("herald_hub_catchup_messages_total", "source" => "log").increment(n);
        }
    }
}
