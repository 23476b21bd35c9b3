//! Finding a record by message id: how a publish retried on another node
//! (or after a lost answer) finds out the first attempt was appended.

use uuid::Uuid;

use crate::{LogError, LogRead, Span};

/// Records read per range read while scanning.
const SCAN_BATCH: usize = 1000;

/// Looks for a record of `channel` whose envelope id is `id` among the
/// partition's records newer than `since_ms`, scanning at most `max_scan`
/// records back from the end. Returns its offset.
pub async fn find_message<L: LogRead + ?Sized>(
    log: &L,
    topic: &str,
    partition: i32,
    channel: &str,
    id: Uuid,
    since_ms: i64,
    max_scan: i64,
) -> Result<Option<i64>, LogError> {
    let wm = log.watermarks(topic, partition).await?;
    if wm.high <= wm.low {
        return Ok(None);
    }
    let by_time = log
        .offset_for_time(topic, partition, since_ms)
        .await?
        .unwrap_or(wm.high);
    let from = by_time.max(wm.low).max(wm.high - max_scan);
    let mut span = Span::new(log, topic, partition, from, wm.high, SCAN_BATCH);
    while let Some(batch) = span.next_batch().await? {
        for r in &batch.records {
            if r.key.as_deref() != Some(channel.as_bytes()) {
                continue;
            }
            let Some(v) = r.value.as_deref() else {
                continue;
            };
            if herald_proto::envelope::peek_id(v) == Some(id) {
                return Ok(Some(r.offset));
            }
        }
    }
    Ok(None)
}
