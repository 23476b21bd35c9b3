//! Waiting for Kafka to confirm an append: a deadline for the answer to the
//! client, none for the append itself.
//!
//! A publish Kafka has not confirmed within `kafka.publish_timeout_ms` is
//! nacked `unavailable`, but its record may still be stored: after a leader
//! fails over, a record the old leader took can be committed by the new one
//! seconds later. So the append stays in flight (librdkafka keeps retrying it
//! under the same producer sequence, for at least [`herald_log`]'s delivery
//! timeout) and its dedup slot stays claimed until Kafka answers; a client's
//! re-send with the same id joins it and gets the seq it ends up with,
//! instead of appending a second record next to the first.

use std::sync::Arc;
use std::time::Duration;

use herald_hub::dedup::{Dedup, DedupOutcome, Seen, Slot};
use herald_log::{LogError, PendingPublish};
use herald_proto::codes;
use uuid::Uuid;

use crate::conn::publish_error_code;
use crate::server::Ctx;

/// What a publish's client is told.
pub(crate) enum Confirmed {
    /// Kafka answered within the publish timeout.
    Answer(Result<i64, LogError>),
    /// It did not (yet): nack `unavailable`; the append goes on.
    Pending(Duration),
}

/// Waits up to the publish timeout for Kafka's answer to `pending`, completes
/// the publish's dedup slot with it and drops `guard` (the connection's
/// in-flight permit: unconfirmed appends still count against it). When the
/// answer is late, a task takes the append over and does both when it comes.
pub(crate) async fn confirm_append(
    ctx: &Arc<Ctx>,
    channel: &str,
    id: Uuid,
    slot: Slot,
    pending: Result<PendingPublish, LogError>,
    guard: impl Send + 'static,
) -> Confirmed {
    let pending = match pending {
        Ok(p) => p,
        Err(e) => {
            ctx.dedup.complete(channel, id, &slot, outcome_of(&e));
            return Confirmed::Answer(Err(e));
        }
    };
    let mut pending = pending;
    let limit = ctx.kafka.config().publish_timeout;
    // The usual case stays in the caller's task: no second task per publish.
    match tokio::time::timeout(limit, &mut pending).await {
        Ok(result) => {
            complete(&ctx.dedup, channel, id, &slot, &result);
            drop(guard);
            Confirmed::Answer(result)
        }
        Err(_) => {
            metrics::counter!("herald_publish_unconfirmed_total").increment(1);
            let ctx = ctx.clone();
            let channel = channel.to_owned();
            tokio::spawn(async move {
                let result = pending.await;
                complete(&ctx.dedup, &channel, id, &slot, &result);
                drop(guard);
            });
            Confirmed::Pending(limit)
        }
    }
}

fn complete(dedup: &Dedup, channel: &str, id: Uuid, slot: &Slot, result: &Result<i64, LogError>) {
    let outcome = match result {
        Ok(seq) => DedupOutcome::Appended(*seq),
        Err(e) => outcome_of(e),
    };
    dedup.complete(channel, id, slot, outcome);
}

/// Waits, up to the publish timeout, for the outcome of an earlier attempt
/// with the same id; `None` when it is still waiting for Kafka.
pub(crate) async fn wait_for_first(ctx: &Ctx, seen: Seen) -> Option<DedupOutcome> {
    tokio::time::timeout(ctx.kafka.config().publish_timeout, Dedup::wait(seen))
        .await
        .ok()
}

/// The nack reason for a publish still waiting for Kafka.
pub(crate) fn unconfirmed_reason(limit: Duration) -> (&'static str, String) {
    (
        codes::UNAVAILABLE,
        format!(
            "not confirmed by Kafka within {} ms; it may still be stored: \
             retry with `retry: true` and the same id",
            limit.as_millis()
        ),
    )
}

/// The dedup outcome of a failed append.
pub(crate) fn outcome_of(e: &LogError) -> DedupOutcome {
    DedupOutcome::Failed(publish_error_code(e), format!("not stored: {e}"))
}
