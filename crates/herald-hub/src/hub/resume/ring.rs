//! Resume strategy 1: from the ring. When the partition's ring reaches
//! back to the subscriber's position, the channel's messages after it are
//! copied from the ring.
//!
//! Invariant: when they fit the connection's queue they are queued and the
//! subscriber registered in the same critical section as live dispatch, so
//! no live message falls between them; when they do not, they are pushed
//! (waiting for room) outside the lock and the resume looks again.

use std::sync::Arc;

use super::super::partition::{PartState, Sub};
use super::Step;
use crate::delivery::{Delivery, Interest};
use crate::outbox::{Outbound, Outbox};
use crate::HubError;

/// Under the partition lock, with `st.recent_from <= s + 1`: hands over
/// the rest and registers (`Live`), or says what to push first.
pub(super) fn from_ring(
    st: &mut PartState,
    outbox: &Outbox,
    want: &Interest,
    s: i64,
    caught_up: &mut u64,
) -> Result<Step, HubError> {
    let upto = st.next_offset;
    let pending: Vec<Arc<Delivery>> = st
        .recent
        .iter()
        .filter(|d| d.seq > s && want.wants(d))
        .cloned()
        .collect();
    let bytes: usize = pending.iter().map(|d| d.text.len()).sum();
    if pending.len() >= outbox.capacity() || !outbox.has_room_for_bytes(bytes) {
        return Ok(Step::FromCache(pending, upto));
    }
    // Hand over the rest and go live in one step.
    let n = pending.len() as u64;
    for d in pending {
        if !outbox.try_push(Outbound::Message(d)) {
            return Err(HubError::SlowConsumer);
        }
    }
    st.subs.entry(want.channel.clone()).or_default().push(Sub {
        outbox: outbox.clone(),
        last_seq: upto - 1,
        filter: want.filter.clone(),
        conflate: want.conflate,
    });
    *caught_up += n;
    metrics::counter!("herald_hub_catchup_messages_total", "source" => "cache").increment(n);
    Ok(Step::Live)
}
