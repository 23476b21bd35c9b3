//! Resume strategy 2: from the ring fill under way. A resume on a cold
//! partition (its ring not yet filled back from the log) is fed the fill's
//! pieces as they are decoded, instead of reading Kafka itself.
//!
//! Invariant: a piece is taken only while it continues the subscriber's
//! position without a hole; the first piece that does not ends this
//! strategy, and what is left comes from the ring or the log.

use super::super::fill::FillPhase;
use super::super::partition::Partition;
use super::super::Hub;
use crate::delivery::Interest;
use crate::outbox::{Outbound, Outbox};
use crate::HubError;

impl Hub {
    /// Hands `channel`'s messages after `s` to `outbox` from the ring fill
    /// under way, piece by piece as the fill decodes them, for as long as
    /// the pieces continue `s` without a hole. Returns the last `seq` handed
    /// over (or `s`) and how many messages, once the fill is done or a piece
    /// does not continue `s` (what is left then comes from the ring or the
    /// log, as without the feed).
    pub(super) async fn stream_fill(
        &self,
        part: &Partition,
        outbox: &Outbox,
        want: &Interest,
        mut s: i64,
    ) -> Result<(i64, u64), HubError> {
        let mut n = 0u64;
        let mut next = 0;
        loop {
            let (pieces, done) = part
                .feed
                .wait(|st| {
                    let fresh = st.pieces.get(next..).unwrap_or_default();
                    let done = st.phase == FillPhase::Done;
                    (done || !fresh.is_empty()).then(|| (fresh.to_vec(), done))
                })
                .await;
            next += pieces.len();
            for piece in pieces {
                if piece.to <= s + 1 {
                    continue;
                }
                if piece.from > s + 1 {
                    return Ok((s, n));
                }
                for d in &piece.items {
                    if d.seq > s && want.wants(d) {
                        if !outbox.push(Outbound::Message(d.clone())).await {
                            return Err(HubError::Closed);
                        }
                        n += 1;
                    }
                }
                s = piece.to - 1;
            }
            if done {
                return Ok((s, n));
            }
        }
    }
}
