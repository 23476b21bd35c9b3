//! Reading a span of one partition: the one loop every reader of the log
//! uses (resume, ring fill, history, the dedup scan, cursors, epochs,
//! `herald replay`).
//!
//! [`Span`] reads `[from, to)` batch by batch through
//! [`LogRead::read_range`]. Its rules, the same for every caller:
//! - **End of data**: the span is done when a batch reaches `to`
//!   ([`Span::next_batch`] answers `None`). A caller that wants "up to the
//!   end" snapshots the high watermark as `to` first.
//! - **A hole** (offsets a batch skipped: retention deleted them under the
//!   read, or compaction removed them) is not an error here. herald's
//!   message topics have no offset gaps, so there a hole means retention,
//!   and the caller decides what that costs ([`RangeBatch::first_gap`]
//!   names it); compacted topics have holes by design.
//! - **No progress** (a read that returns nothing and does not move) is an
//!   error, [`LogError::NoProgress`], never a silent stop and never a loop:
//!   a scan that stopped early would answer "not there" for something that
//!   is (an id appended twice, a cursor lost, a second epoch).
//! - **A timeout** (the broker sends nothing for the request timeout) is
//!   an error of the read itself ([`LogError::Timeout`]).

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use tracing::warn;

use crate::{LogError, LogRead, RangeBatch};

/// `[from, to)` of one partition, read in batches of at most `max` records.
pub struct Span<'a, L: LogRead + ?Sized> {
    log: &'a L,
    topic: &'a str,
    partition: i32,
    next: i64,
    to: i64,
    max: usize,
}

impl<'a, L: LogRead + ?Sized> Span<'a, L> {
    pub fn new(log: &'a L, topic: &'a str, partition: i32, from: i64, to: i64, max: usize) -> Self {
        Span {
            log,
            topic,
            partition,
            next: from,
            to,
            max: max.max(1),
        }
    }

    /// Where the next batch starts: everything below it has been read.
    pub fn position(&self) -> i64 {
        self.next
    }

    /// The next batch, or `None` once the span is read to its end.
    pub async fn next_batch(&mut self) -> Result<Option<RangeBatch>, LogError> {
        let from = self.next;
        if from >= self.to {
            return Ok(None);
        }
        let batch = self
            .log
            .read_range(self.topic, self.partition, from, self.to, self.max)
            .await?;
        if batch.next <= from {
            metrics::counter!("herald_log_range_no_progress_total").increment(1);
            return Err(LogError::NoProgress {
                topic: self.topic.to_owned(),
                partition: self.partition,
                at: from,
            });
        }
        self.next = batch.next;
        Ok(Some(batch))
    }
}

impl RangeBatch {
    /// The first offset at or after `from` that this batch skipped (a
    /// record missing between `from` and `next`), if any.
    pub fn first_gap(&self, from: i64) -> Option<i64> {
        let mut expected = from;
        for r in &self.records {
            if r.offset > expected {
                return Some(expected);
            }
            expected = r.offset + 1;
        }
        (self.next > expected).then_some(expected)
    }
}

/// The newest record per key of a compacted topic's partition in
/// `[from, to)`, decoded as JSON; `only_key` limits the scan to one key.
/// `newer(candidate, kept)` says whether a later record replaces the one
/// kept (a record can be stale although written later, such as a cursor
/// moved back by another node). Malformed records are logged and skipped.
pub async fn newest_per_key<T, L>(
    log: &L,
    topic: &str,
    partition: i32,
    (from, to): (i64, i64),
    only_key: Option<&[u8]>,
    newer: impl Fn(&T, &T) -> bool,
) -> Result<HashMap<Vec<u8>, T>, LogError>
where
    T: DeserializeOwned,
    L: LogRead + ?Sized,
{
    let mut latest: HashMap<Vec<u8>, T> = HashMap::new();
    let mut span = Span::new(log, topic, partition, from, to, 1000);
    while let Some(batch) = span.next_batch().await? {
        for r in batch.records {
            let (Some(k), Some(v)) = (r.key, r.value) else {
                continue;
            };
            if only_key.is_some_and(|only| only != k.as_slice()) {
                continue;
            }
            match serde_json::from_slice::<T>(&v) {
                Ok(rec) => {
                    if latest.get(k.as_slice()).is_none_or(|old| newer(&rec, old)) {
                        latest.insert(k, rec);
                    }
                }
                Err(e) => {
                    warn!(%topic, partition, offset = r.offset, %e, "Skipping a malformed record")
                }
            }
        }
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Record;
    use std::sync::Arc;

    fn rec(offset: i64) -> Record {
        Record {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            key: None,
            value: None,
            timestamp_ms: None,
        }
    }

    #[tokio::test]
    async fn a_read_that_makes_no_progress_is_an_error_not_a_stop() -> Result<(), LogError> {
        use crate::memory::MemLog;
        use crate::{LogConfig, LogWrite};
        let log = MemLog::new(LogConfig::default());
        log.create_topic("t", 1, "e");
        for i in 0..3u8 {
            log.append_record("t", 0, b"k", &[i], &[])?.await?;
        }
        // Asked past the end: the records there are read, then a read that
        // returns nothing and stays put fails the span.
        let mut span = Span::new(&*log, "t", 0, 0, 10, 2);
        let mut read = 0;
        let err = loop {
            match span.next_batch().await {
                Ok(Some(b)) => read += b.records.len(),
                Ok(None) => panic!("the span ended without reaching its end"),
                Err(e) => break e,
            }
        };
        assert_eq!(read, 3);
        assert!(
            matches!(
                err,
                LogError::NoProgress {
                    at: 3,
                    partition: 0,
                    ..
                }
            ),
            "{err}"
        );
        // Within the log it ends at `to`.
        let mut span = Span::new(&*log, "t", 0, 1, 3, 1);
        let mut offsets = Vec::new();
        while let Some(b) = span.next_batch().await? {
            offsets.extend(b.records.iter().map(|r| r.offset));
        }
        assert_eq!(offsets, vec![1, 2]);
        Ok(())
    }

    #[test]
    fn a_gap_is_the_first_offset_a_batch_skipped() {
        let b = |offsets: &[i64], next| RangeBatch {
            records: offsets.iter().map(|&o| rec(o)).collect(),
            next,
        };
        assert_eq!(b(&[5, 6, 7], 8).first_gap(5), None);
        assert_eq!(b(&[5, 7], 8).first_gap(5), Some(6));
        assert_eq!(b(&[6, 7], 8).first_gap(5), Some(5));
        assert_eq!(b(&[5, 6], 9).first_gap(5), Some(7));
        assert_eq!(b(&[], 9).first_gap(5), Some(5));
        assert_eq!(b(&[], 5).first_gap(5), None);
    }
}
