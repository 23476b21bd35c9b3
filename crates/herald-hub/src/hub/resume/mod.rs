//! `subscribe` with a position: the resume hand-off from history to live.
//!
//! Resume (`since = s`): while `s + 1 < next_offset`, take what is missing
//! by one of three strategies, then look again; once nothing is missing,
//! register under the same lock that live dispatch takes. So no message is
//! skipped at the hand-off, and none is handed twice (a subscriber's
//! `last_seq` filters anything already sent). The strategies, cheapest
//! first, each in its own file:
//! - [`ring`]: the ring reaches back to `s + 1`;
//! - [`fill`]: the partition is cold and its ring fill is under way (or
//!   is started now): take its pieces as they are decoded;
//! - [`log`]: read what the ring lacks from Kafka.
//!
//! A position outside the retained log (or of another epoch) is not
//! resumed: the subscriber goes live from now with `recovered: false`.

mod fill;
mod log;
mod ring;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use herald_proto::{Position, ServerFrame};

use super::fill::FillPhase;
use super::partition::{Partition, Sub};
use super::Hub;
use crate::delivery::{Delivery, Interest};
use crate::outbox::{Outbound, Outbox};
use crate::HubError;

/// What a subscribe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOutcome {
    pub position: Position,
    pub recovered: bool,
    /// Messages handed over from history before going live.
    pub caught_up: u64,
}

/// The next step of a resume, decided under the partition lock.
pub(super) enum Step {
    /// Registered: nothing is missing.
    Live,
    /// Push these (waiting for room), then look again from `upto - 1`.
    FromCache(Vec<Arc<Delivery>>, i64),
    /// Feed from the ring fill.
    FillRing,
    /// Read `[s + 1, upto)` from the log.
    FromLog(i64),
}

impl Hub {
    /// Subscribes `outbox` to `channel` of `topic`, sending the `subscribed`
    /// reply, then (when resuming) every message after `since`, then live
    /// messages. Returns once the subscription is live.
    pub async fn subscribe(
        &self,
        outbox: &Outbox,
        topic: &str,
        channel: &str,
        since: Option<&Position>,
    ) -> Result<SubscribeOutcome, HubError> {
        let never = AtomicBool::new(false);
        self.subscribe_until(
            outbox,
            topic,
            &Interest::channel(channel),
            since,
            false,
            &never,
        )
        .await
    }

    /// [`Hub::subscribe`] that registers nothing once `cancelled` is set:
    /// the flag is checked under the partition lock at registration, so a
    /// caller that sets it and then calls [`Hub::unsubscribe`] leaves no
    /// registration behind, however the two race (`Closed` is returned).
    /// `auto` marks the reply as the server's own subscription (a personal
    /// channel): only ever live. `want` names the channel and the filter
    /// its messages must pass (the others advance the subscription's
    /// position without being queued).
    pub async fn subscribe_until(
        &self,
        outbox: &Outbox,
        topic: &str,
        want: &Interest,
        since: Option<&Position>,
        auto: bool,
        cancelled: &AtomicBool,
    ) -> Result<SubscribeOutcome, HubError> {
        let began = Instant::now();
        let channel = &*want.channel;
        let partition = self.partition_of(topic, channel)?;
        let entered = self.started(topic, partition).await?;
        let start = match since {
            Some(pos) if *pos.epoch == *entered.epoch => {
                self.check_position(&entered.0, pos.seq).await?
            }
            _ => None,
        };
        let Some(s) = start else {
            return subscribe_live(&entered, outbox, want, since.is_some(), auto, cancelled);
        };
        let position = Position {
            seq: entered.lock().next_offset - 1,
            epoch: entered.epoch.to_string(),
        };
        let reply = ServerFrame::Subscribed {
            channel: channel.to_owned(),
            position: position.clone(),
            recovered: true,
            auto: false,
        };
        if !outbox.push(Outbound::Frame(reply.to_json())).await {
            return Err(HubError::Closed);
        }
        let (caught_up, from_log) = self
            .catch_up(&entered.0, outbox, want, s, cancelled)
            .await?;
        metrics::counter!("herald_hub_resume_total", "outcome" => "recovered").increment(1);
        // Until live: every missed message is in the connection's queue.
        metrics::histogram!("herald_hub_resume_seconds", "source" => if from_log { "log" } else { "cache" })
            .record(began.elapsed().as_secs_f64());
        metrics::gauge!("herald_hub_subscriptions").increment(1.0);
        Ok(SubscribeOutcome {
            position,
            recovered: true,
            caught_up,
        })
    }

    /// Hands over everything after `s` and registers. Returns the messages
    /// handed over and whether any came from the log.
    async fn catch_up(
        &self,
        part: &Arc<Partition>,
        outbox: &Outbox,
        want: &Interest,
        mut s: i64,
        cancelled: &AtomicBool,
    ) -> Result<(u64, bool), HubError> {
        let mut caught_up = 0u64;
        let mut from_log = false;
        loop {
            // Decide under the lock; anything that waits happens after it.
            let step = {
                let mut st = part.lock();
                if cancelled.load(Ordering::Acquire) {
                    return Err(HubError::Closed);
                }
                let upto = st.next_offset;
                if s + 1 >= upto {
                    st.subs.entry(want.channel.clone()).or_default().push(Sub {
                        outbox: outbox.clone(),
                        last_seq: s,
                        filter: want.filter.clone(),
                        conflate: want.conflate,
                    });
                    Step::Live
                } else if st.recent_from <= s + 1 {
                    ring::from_ring(&mut st, outbox, want, s, &mut caught_up)?
                } else if !part.feed.is_done() {
                    Step::FillRing
                } else {
                    // Only what the ring lacks: the rest comes from it next.
                    Step::FromLog(st.recent_from.min(upto))
                }
            };
            match step {
                Step::Live => return Ok((caught_up, from_log)),
                Step::FromCache(pending, upto) => {
                    let n = pending.len() as u64;
                    for d in pending {
                        if !outbox.push(Outbound::Message(d)).await {
                            return Err(HubError::Closed);
                        }
                    }
                    caught_up += n;
                    metrics::counter!("herald_hub_catchup_messages_total", "source" => "cache")
                        .increment(n);
                    s = upto - 1;
                }
                Step::FillRing => {
                    // Fed as the fill reads, then what is left from the ring.
                    self.start_fill(part);
                    let (to, n) = self.stream_fill(part, outbox, want, s).await?;
                    part.feed
                        .wait(|st| (st.phase == FillPhase::Done).then_some(()))
                        .await;
                    s = to;
                    caught_up += n;
                    metrics::counter!("herald_hub_catchup_messages_total", "source" => "fill")
                        .increment(n);
                }
                Step::FromLog(upto) => {
                    from_log = true;
                    caught_up += self
                        .catch_up_from_log(outbox, part, want, s + 1, upto)
                        .await?;
                    s = upto - 1;
                }
            }
        }
    }

    /// `Some(seq)` when resuming from `seq` loses nothing: it is inside the
    /// retained log (`low - 1 <= seq < high`).
    async fn check_position(
        &self,
        part: &Arc<Partition>,
        seq: i64,
    ) -> Result<Option<i64>, HubError> {
        if seq < -1 {
            return Ok(None);
        }
        let in_ring = || {
            let st = part.lock();
            // `seq >= from - 1`, not `seq + 1 >= from`: a client's seq may
            // be i64::MAX.
            seq >= st.recent_from - 1 && seq < st.next_offset
        };
        if in_ring() {
            return Ok(Some(seq));
        }
        if !part.feed.is_done() && seq < part.lock().next_offset {
            // A cold partition: the fill asks Kafka for the log start once
            // for all the resumes (below `next_offset` is below the end).
            self.start_fill(part);
            let low = part.feed.wait(|st| match st.low {
                Some(low) => Some(Some(low)),
                None if st.phase == FillPhase::Done => Some(None),
                None => None,
            });
            if let Some(low) = low.await {
                return Ok((seq >= low - 1).then_some(seq));
            }
            if in_ring() {
                return Ok(Some(seq));
            }
        }
        let wm = self.log.watermarks(&part.topic, part.partition).await?;
        Ok((seq >= wm.low - 1 && seq < wm.high).then_some(seq))
    }
}

/// Registers `outbox` live from now (no resume). The reply and the
/// registration happen under the lock, so the position is exactly where
/// live delivery starts.
fn subscribe_live(
    part: &Partition,
    outbox: &Outbox,
    want: &Interest,
    asked_to_resume: bool,
    auto: bool,
    cancelled: &AtomicBool,
) -> Result<SubscribeOutcome, HubError> {
    let mut st = part.lock();
    if cancelled.load(Ordering::Acquire) {
        return Err(HubError::Closed);
    }
    let position = Position {
        seq: st.next_offset - 1,
        epoch: part.epoch.to_string(),
    };
    let reply = ServerFrame::Subscribed {
        channel: want.channel.to_string(),
        position: position.clone(),
        recovered: false,
        auto,
    };
    if !outbox.try_push(Outbound::Frame(reply.to_json())) {
        return Err(HubError::SlowConsumer);
    }
    st.subs.entry(want.channel.clone()).or_default().push(Sub {
        outbox: outbox.clone(),
        last_seq: position.seq,
        filter: want.filter.clone(),
        conflate: want.conflate,
    });
    drop(st);
    if asked_to_resume {
        metrics::counter!("herald_hub_resume_total", "outcome" => "not_recovered").increment(1);
    }
    metrics::gauge!("herald_hub_subscriptions").increment(1.0);
    Ok(SubscribeOutcome {
        position,
        recovered: false,
        caught_up: 0,
    })
}
