//! Filling a cold partition's ring back from the log.
//!
//! A partition starts (first subscribe on this node) with an empty ring at
//! the high watermark. The first resume that needs what lies below starts
//! one fill per start of the partition: a task that reads the ring's worth
//! of records below `follow_from`, decodes them on the blocking pool while
//! the next batch is read, and publishes each decoded piece to the
//! [`FillFeed`], so every resume waiting on it is fed as it reads (one read
//! of Kafka for a reconnect storm, not one per client). When it ends, what
//! it read joins the ring if the ring still starts where the fill ends.
//!
//! Invariant: a piece is every decodable record of offsets `[from, to)`;
//! after a hole (retention deleting under the read) the fill starts over
//! from after it, so the ring is complete from `recent_from` or not joined.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use herald_log::{LogRead, Span};
use tracing::warn;

use super::partition::Partition;
use super::{Hub, HubConfig};
use crate::delivery::Delivery;
use crate::HubError;

/// The pieces a ring fill has decoded so far, in offset order: the resumes
/// waiting on the fill are handed each piece as it is decoded, instead of
/// all of it after the whole fill (docs/benchmarks.md, P4 cold). Emptied
/// when the fill ends.
#[derive(Default)]
pub(super) struct FillFeed {
    state: Mutex<FeedState>,
    /// Wakes the resumes waiting on the fill: a piece, the log start, or
    /// the end.
    more: tokio::sync::Notify,
}

#[derive(Default)]
pub(super) struct FeedState {
    pub(super) pieces: Vec<Arc<FillPiece>>,
    pub(super) phase: FillPhase,
    /// The log start as the fill's first read found it: a resume on the
    /// cold partition checks its position against it instead of asking
    /// Kafka itself.
    pub(super) low: Option<i64>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum FillPhase {
    #[default]
    NotStarted,
    Running,
    /// Filled, or tried: what the ring lacks now comes from the log.
    Done,
}

/// Every record of offsets `[from, to)` that decoded (a record that did not
/// is skipped, as by the tail).
pub(super) struct FillPiece {
    pub(super) from: i64,
    pub(super) to: i64,
    pub(super) items: Vec<Arc<Delivery>>,
}

impl FillFeed {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_done(&self) -> bool {
        self.lock().phase == FillPhase::Done
    }

    /// True for the one caller that is to run the fill.
    pub(super) fn begin(&self) -> bool {
        let mut st = self.lock();
        let first = st.phase == FillPhase::NotStarted;
        if first {
            st.phase = FillPhase::Running;
        }
        first
    }

    pub(super) fn set_low(&self, low: i64) {
        self.lock().low = Some(low);
        self.more.notify_waiters();
    }

    pub(super) fn publish(&self, piece: FillPiece) {
        self.lock().pieces.push(Arc::new(piece));
        self.more.notify_waiters();
    }

    pub(super) fn finish(&self) {
        let mut st = self.lock();
        st.pieces = Vec::new();
        st.phase = FillPhase::Done;
        drop(st);
        self.more.notify_waiters();
    }

    /// Waits until `ready` says something of the state (`Some`).
    pub(super) async fn wait<T>(&self, mut ready: impl FnMut(&FeedState) -> Option<T>) -> T {
        loop {
            let more = self.more.notified();
            tokio::pin!(more);
            // Registered before looking, so a wake-up in between is kept.
            more.as_mut().enable();
            if let Some(v) = ready(&self.lock()) {
                return v;
            }
            more.await;
        }
    }
}

/// Ends a fill's feed however the fill ends (a panic included): the
/// resumes waiting on it go on from the ring or the log.
struct FeedDone<'a>(&'a FillFeed);

impl Drop for FeedDone<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

impl Hub {
    /// Starts filling a cold partition's ring back from the log, once per
    /// start of the partition: the records just below where the tail
    /// started, as many as the ring holds. The fill runs as its own task;
    /// the resumes that need it are fed from it as it reads
    /// ([`Hub::stream_fill`]), so a reconnect storm onto a node that has just
    /// started following the partition reads it from Kafka once, not once
    /// per client (docs/benchmarks.md, P5 cold). A failed fill is counted
    /// and left: resumes then read the log themselves, as before.
    pub(super) fn start_fill(&self, part: &Arc<Partition>) {
        if !part.feed.begin() {
            return;
        }
        let (log, cfg, part) = (self.log.clone(), self.cfg.clone(), part.clone());
        tokio::spawn(async move {
            let _done = FeedDone(&part.feed);
            let started = Instant::now();
            match read_ring_fill(&*log, &cfg, &part).await {
                Ok(n) => {
                    metrics::counter!("herald_hub_ring_fills_total", "outcome" => "filled")
                        .increment(1);
                    metrics::counter!("herald_hub_ring_fill_messages_total").increment(n);
                    metrics::histogram!("herald_hub_ring_fill_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    metrics::counter!("herald_hub_ring_fills_total", "outcome" => "failed")
                        .increment(1);
                    warn!(%e, topic = %part.topic, partition = part.partition, "Could not fill a partition's recent messages from the log; resumes read it themselves");
                }
            }
        });
    }
}

/// Reads the ring's worth of records below `follow_from` and puts them in
/// front of the ring, when the ring still starts there (nothing evicted,
/// no tail gap since). Returns the messages added.
async fn read_ring_fill(
    log: &dyn LogRead,
    cfg: &HubConfig,
    part: &Partition,
) -> Result<u64, HubError> {
    let cap = cfg.recent_messages;
    let end = part.lock().follow_from;
    if cap == 0 {
        return Ok(0);
    }
    let wm = log.watermarks(&part.topic, part.partition).await?;
    let mut from = wm.low.max(end - cap as i64);
    if from >= end {
        part.feed.set_low(wm.low);
    }
    // The offset from which `segments` hold every record up to `from`.
    let mut complete_from = from;
    let (start_from, mut first_read) = (from, true);
    // Batches decoded on the blocking pool while the next is read (the
    // read waits on the broker and the decode is CPU, so on more than one
    // core they overlap), each handed on as soon as it is decoded
    // (docs/benchmarks.md, P4 cold).
    let mut segments = VecDeque::new();
    // What was decoded and published, for the ring.
    let mut found: Vec<Arc<Delivery>> = Vec::new();
    let mut span = Span::new(
        log,
        &part.topic,
        part.partition,
        from,
        end,
        cfg.catchup_batch,
    );
    loop {
        // Read the next batch; meanwhile hand on each piece as it decodes.
        let read = span.next_batch();
        tokio::pin!(read);
        let batch = loop {
            let Some((_, decoding)) = segments.front_mut() else {
                break read.await?;
            };
            tokio::select! {
                biased;
                batch = &mut read => break batch?,
                items = decoding => {
                    if let Some((piece, _)) = segments.pop_front() {
                        publish_piece(part, piece, items, &mut found)?;
                    }
                }
            }
        };
        let Some(batch) = batch else {
            break;
        };
        let mut keep_from = 0;
        let mut taken = 0;
        for (i, r) in batch.records.iter().enumerate() {
            if r.offset >= end {
                break;
            }
            if r.offset != from {
                // Deleted under the read (retention): the ring can only
                // be complete from after the hole.
                segments.clear();
                found.clear();
                complete_from = r.offset;
                keep_from = i;
            }
            from = r.offset + 1;
            taken = i + 1;
        }
        let mut records = batch.records;
        records.truncate(taken);
        records.drain(..keep_from);
        if let Some(first) = records.first() {
            let piece = (first.offset, from);
            let epoch = part.epoch.clone();
            segments.push_back((
                piece,
                tokio::task::spawn_blocking(move || {
                    records
                        .iter()
                        .filter_map(|r| Delivery::from_record(r, &epoch))
                        .map(Arc::new)
                        .collect::<Vec<_>>()
                }),
            ));
        }
        if batch.next > from {
            // Offsets skipped without records: a hole as well (every
            // offset below `end` existed when the tail started).
            segments.clear();
            found.clear();
            complete_from = batch.next;
            from = batch.next;
        }
        if first_read {
            // Where the log starts, as far as the resumes waiting on the
            // fill are concerned: after a hole the first read found
            // (retention deleting while it read), else the watermark.
            first_read = false;
            part.feed.set_low(if complete_from > start_from {
                complete_from
            } else {
                wm.low
            });
        }
    }
    while let Some((piece, decoding)) = segments.pop_front() {
        let items = decoding.await;
        publish_piece(part, piece, items, &mut found)?;
    }
    let mut st = part.lock();
    if st.recent_from != end {
        // The ring moved on (it evicted, or the tail skipped): what was
        // read no longer joins it.
        return Ok(0);
    }
    let mut added = 0u64;
    let mut start = end;
    let mut all = true;
    for d in found.into_iter().rev() {
        if st.recent.len() >= cap
            || (!st.recent.is_empty() && st.recent_bytes + d.text.len() > cfg.recent_bytes)
        {
            all = false;
            break;
        }
        // Complete from the oldest message kept.
        start = d.seq;
        st.recent_bytes += d.text.len();
        st.recent.push_front(d);
        added += 1;
    }
    st.recent_from = if all { complete_from } else { start };
    Ok(added)
}

/// Keeps a decoded piece of a ring fill for the ring and hands it to the
/// resumes waiting on the fill.
fn publish_piece(
    part: &Partition,
    (from, to): (i64, i64),
    decoded: Result<Vec<Arc<Delivery>>, tokio::task::JoinError>,
    found: &mut Vec<Arc<Delivery>>,
) -> Result<(), HubError> {
    let items = decoded.map_err(|e| HubError::Log(herald_log::LogError::Task(e.to_string())))?;
    found.extend(items.iter().cloned());
    part.feed.publish(FillPiece { from, to, items });
    Ok(())
}
