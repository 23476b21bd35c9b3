//! `history`: a page of one channel's messages, read from the partition's
//! recent-message ring when it covers the range and from Kafka otherwise.
//!
//! A channel shares its partition with other channels, so a page is found by
//! scanning partition offsets: forward from a `seq` or a time, or backward from
//! the end (or a `before_seq`). Every page is bounded three ways: messages
//! (`limit`), serialised bytes, and partition records scanned. When a bound
//! stops the scan, the page says where to continue (`next`) and `done` is false,
//! so a client pages through a sparse channel without the server ever reading
//! an unbounded range for one request.

use std::sync::Arc;

use herald_proto::HistoryFrom;

use super::Hub;
use crate::delivery::Delivery;
use crate::HubError;
use herald_log::Span;

/// Bounds of one history page.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Messages in the page.
    pub limit: usize,
    /// Sum of the serialised messages, in bytes. A single message larger
    /// than this is still returned, alone, so paging always progresses.
    pub max_bytes: usize,
    /// Partition records looked at for one page.
    pub max_scan: i64,
}

/// One page of a channel's history.
#[derive(Debug)]
pub struct HistoryPage {
    pub epoch: Arc<str>,
    /// Oldest first.
    pub messages: Vec<Arc<Delivery>>,
    /// Forward requests: the `since_seq` of the next page. Latest-first
    /// requests: the `before_seq` of the next (older) page.
    pub next: i64,
    /// No further page exists (as of this request).
    pub done: bool,
    /// Part of the requested range is older than the log start.
    pub truncated: bool,
    /// Where the messages came from.
    pub from_cache: bool,
}

impl HistoryPage {
    /// The metrics of a served page, the same for every entry point.
    pub fn count(&self, started: std::time::Instant) {
        let source = if self.from_cache { "cache" } else { "log" };
        metrics::counter!("herald_history_requests_total", "source" => source).increment(1);
        metrics::histogram!("herald_history_messages").record(self.messages.len() as f64);
        metrics::histogram!("herald_history_latency_seconds")
            .record(started.elapsed().as_secs_f64());
        let bytes: usize = self.messages.iter().map(|d| d.text.len()).sum();
        metrics::counter!("herald_history_bytes_total").increment(bytes as u64);
    }

    /// Counts a request the log could not serve.
    pub fn count_failure() {
        metrics::counter!("herald_history_errors_total").increment(1);
    }
}

/// Records read per Kafka request (and per backward step) while scanning.
const SCAN_CHUNK: i64 = 1_000;

impl Hub {
    /// A page of `channel`'s messages in `topic`.
    pub async fn history(
        &self,
        topic: &str,
        channel: &str,
        from: HistoryFrom,
        limits: HistoryLimits,
    ) -> Result<HistoryPage, HubError> {
        let partition = self.partition_of(topic, channel)?;
        let epoch = self.epoch(topic)?;
        let wm = self.log.watermarks(topic, partition).await?;
        let mut page = HistoryPage {
            epoch,
            messages: Vec::new(),
            next: 0,
            done: false,
            truncated: false,
            from_cache: true,
        };
        let mut budget = Budget {
            limits,
            bytes: 0,
            scanned: 0,
        };
        match from {
            HistoryFrom::AfterSeq(_) | HistoryFrom::SinceTime(_) => {
                let start = match from {
                    HistoryFrom::AfterSeq(s) => s.saturating_add(1),
                    HistoryFrom::SinceTime(t) => self
                        .log
                        .offset_for_time(topic, partition, t)
                        .await?
                        .unwrap_or(wm.high),
                    HistoryFrom::Latest { .. } => unreachable!("matched above"),
                };
                if start < wm.low {
                    page.truncated = true;
                }
                let mut pos = start.max(wm.low);
                'scan: while pos < wm.high && !budget.exhausted(page.messages.len()) {
                    let to = wm.high.min(pos + budget.chunk());
                    let (found, next, cached) =
                        self.span(topic, partition, channel, pos, to).await?;
                    page.from_cache &= cached;
                    for d in found {
                        if !budget.admit(&d, page.messages.len()) {
                            // Continue right before this message.
                            pos = d.seq;
                            break 'scan;
                        }
                        page.messages.push(d);
                    }
                    budget.scanned += next - pos;
                    pos = next;
                }
                page.next = pos - 1;
                page.done = pos >= wm.high;
            }
            HistoryFrom::Latest { before_seq } => {
                let mut end = before_seq.unwrap_or(wm.high).min(wm.high);
                let mut newest_first = Vec::new();
                'back: while end > wm.low && !budget.exhausted(newest_first.len()) {
                    let from = wm.low.max(end - budget.chunk());
                    let mut chunk = Vec::new();
                    let mut pos = from;
                    while pos < end {
                        let (found, next, cached) =
                            self.span(topic, partition, channel, pos, end).await?;
                        page.from_cache &= cached;
                        chunk.extend(found);
                        pos = next;
                    }
                    for d in chunk.into_iter().rev() {
                        if !budget.admit(&d, newest_first.len()) {
                            // The older page ends right after this message.
                            end = d.seq + 1;
                            break 'back;
                        }
                        newest_first.push(d);
                    }
                    budget.scanned += end - from;
                    end = from;
                }
                if end <= wm.low && before_seq.is_some_and(|b| b < wm.low) {
                    page.truncated = true;
                }
                page.next = end.max(wm.low);
                page.done = end <= wm.low;
                newest_first.reverse();
                page.messages = newest_first;
            }
        }
        Ok(page)
    }

    /// `channel`'s messages in `[from, to)`: from the ring when it holds the
    /// whole span, else one Kafka read. Returns the messages, the offset to
    /// continue from, and whether the ring answered.
    async fn span(
        &self,
        topic: &str,
        partition: i32,
        channel: &str,
        from: i64,
        to: i64,
    ) -> Result<(Vec<Arc<Delivery>>, i64, bool), HubError> {
        let ring = self
            .followed(topic, partition)
            .and_then(|p| p.lock().ring_span(channel, from, to));
        if let Some(found) = ring {
            return Ok((found, to, true));
        }
        let epoch = self.epoch(topic)?;
        let mut span = Span::new(&*self.log, topic, partition, from, to, SCAN_CHUNK as usize);
        let Some(batch) = span.next_batch().await? else {
            return Ok((Vec::new(), to, false));
        };
        let found = batch
            .records
            .iter()
            .filter(|r| r.key.as_deref() == Some(channel.as_bytes()))
            .filter_map(|r| Delivery::from_record(r, &epoch))
            .map(Arc::new)
            .collect();
        Ok((found, batch.next, false))
    }
}

/// Counts a page against its limits.
struct Budget {
    limits: HistoryLimits,
    bytes: usize,
    scanned: i64,
}

impl Budget {
    fn exhausted(&self, messages: usize) -> bool {
        messages >= self.limits.limit
            || self.bytes >= self.limits.max_bytes
            || self.scanned >= self.limits.max_scan
    }

    /// Records to read next: what is left of the scan bound, at most one
    /// Kafka read's worth.
    fn chunk(&self) -> i64 {
        (self.limits.max_scan - self.scanned).clamp(1, SCAN_CHUNK)
    }

    /// Takes `d` into the page unless a bound is reached (the first message
    /// is always taken, so a page is never empty for size alone).
    fn admit(&mut self, d: &Delivery, messages: usize) -> bool {
        if messages >= self.limits.limit
            || (messages > 0 && self.bytes + d.text.len() > self.limits.max_bytes)
        {
            return false;
        }
        self.bytes += d.text.len();
        true
    }
}
