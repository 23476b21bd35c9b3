//! `history`: a page of a channel's messages, served in a task of its own.

use std::time::Instant;

use herald_hub::{HistoryLimits, HistoryPage, Outbound};
use herald_proto::{codes, HistoryRequest, ServerFrame};
use serde_json::value::RawValue;

use super::Conn;
use crate::auth::Capability;

impl Conn {
    /// Serves a `history` request in its own task; at most
    /// `history_concurrency` per connection (waiting stops reading, like
    /// publishes).
    pub(super) async fn history(&mut self, req: HistoryRequest) {
        let (_, topic) = match self.resolve(&req.channel, Capability::History) {
            Ok(x) => x,
            Err((code, reason)) => return self.reply(history_error(&req, code, reason)),
        };
        let max = self.ctx.cfg.history_max_limit;
        let limit = req
            .limit
            .unwrap_or(herald_proto::frame::HISTORY_DEFAULT_LIMIT.min(max));
        if limit > max {
            return self.reply(history_error(
                &req,
                codes::BAD_FRAME,
                format!("`limit` is at most {max}"),
            ));
        }
        let permit = match self.history_permits().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let ctx = self.ctx.clone();
        let outbox = self.outbox.clone();
        let conn = self.id;
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let limits = page_limits(&ctx, limit);
            // The node's share for history (see `ReadBudget`).
            let Ok(_node) = ctx.reads.history.acquire().await else {
                return;
            };
            let reply = match ctx
                .hub
                .history(&topic, &req.channel, req.from, limits)
                .await
            {
                Ok(page) => {
                    page.count(started);
                    let mut messages: Vec<Box<RawValue>> = page
                        .messages
                        .iter()
                        .filter_map(|d| RawValue::from_string(d.text.to_string()).ok())
                        .collect();
                    if req.reverse {
                        messages.reverse();
                    }
                    Outbound::Frame(
                        ServerFrame::History {
                            id: req.id,
                            channel: req.channel,
                            epoch: page.epoch.to_string(),
                            messages,
                            next: page.next,
                            done: page.done,
                            truncated: page.truncated,
                        }
                        .to_json(),
                    )
                }
                Err(e) => {
                    HistoryPage::count_failure();
                    tracing::warn!(conn, channel = %req.channel, %e, "History failed");
                    history_error(
                        &req,
                        codes::UNAVAILABLE,
                        format!("history failed: {e}; retry"),
                    )
                }
            };
            // A reply that does not fit is a slow consumer, like any frame.
            let _ = outbox.try_push(reply);
            drop(permit);
        });
        // Aborted if the connection closes first: nobody would read it.
        self.reads.retain(|t| !t.is_finished());
        self.reads.push(task.abort_handle());
    }
}

fn history_error(req: &HistoryRequest, code: &'static str, reason: impl Into<String>) -> Outbound {
    metrics::counter!("herald_edge_errors_total", "code" => code).increment(1);
    Outbound::Frame(
        ServerFrame::Error {
            code,
            reason: reason.into(),
            id: req.id.clone(),
            channel: Some(req.channel.clone()),
        }
        .to_json(),
    )
}

/// A history page's limits on this node: `limit` messages, the node's byte
/// bound (at most half a connection's queue) and scan bound.
fn page_limits(ctx: &crate::ctx::Ctx, limit: usize) -> HistoryLimits {
    HistoryLimits {
        limit,
        max_bytes: ctx
            .cfg
            .history_max_bytes
            .min(ctx.cfg.limits.queue_bytes / 2)
            .max(1),
        max_scan: ctx.cfg.history_max_scan,
    }
}

/// Where a `rewind` subscription resumes from: right before the oldest of
/// the channel's last N messages (as a `history` page finds them, within its
/// byte and scan limits), or before the first record of the age window.
/// With nothing to rewind, the partition's end when asked: live from then,
/// nothing published meanwhile missed.
pub(super) async fn rewind_position(
    ctx: &crate::ctx::Ctx,
    topic: &str,
    channel: &str,
    rewind: herald_proto::Rewind,
) -> Result<herald_proto::Position, herald_hub::HubError> {
    use herald_proto::{HistoryFrom, Position, Rewind};
    let partition = ctx.hub.partition_of(topic, channel)?;
    let epoch = ctx.hub.epoch(topic)?.to_string();
    let end = ctx.log.watermarks(topic, partition).await?.high;
    let from = match rewind {
        Rewind::Last(n) => {
            let limits = page_limits(ctx, n as usize);
            let _node = ctx.reads.history.acquire().await;
            let page = ctx
                .hub
                .history(
                    topic,
                    channel,
                    HistoryFrom::Latest { before_seq: None },
                    limits,
                )
                .await?;
            page.messages.first().map(|d| d.seq)
        }
        Rewind::Age(ms) => {
            let at = herald_proto::envelope::now_ms().saturating_sub(ms);
            ctx.log.offset_for_time(topic, partition, at).await?
        }
    };
    metrics::counter!("herald_edge_rewinds_total").increment(1);
    Ok(Position {
        seq: from.unwrap_or(end).min(end) - 1,
        epoch,
    })
}
