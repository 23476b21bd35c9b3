//! The read routes of one channel: `presence`, `presence_stats`,
//! `history` and `channels/{channel}/position`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use herald_hub::{HistoryLimits, HistoryPage};
use herald_proto::frame::HISTORY_DEFAULT_LIMIT;
use herald_proto::{codes, HistoryFrom};
use serde_json::{json, Value};

use super::{api_err, resolve, ApiError, ApiResult};
use crate::ctx::Ctx;

/// The query's `channel`, resolved, once every parameter is one of `known`.
fn channel_param(
    ctx: &Ctx,
    q: &HashMap<String, String>,
    known: &[&str],
) -> Result<(herald_proto::Channel, String), ApiError> {
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(api_err(
            codes::BAD_FRAME,
            format!("unknown parameter `{k}`"),
        ));
    }
    let name = q
        .get("channel")
        .ok_or_else(|| api_err(codes::BAD_FRAME, "`channel` is required"))?;
    resolve(ctx, name)
}

/// A channel's members on every live node (`stats`: only the counts), from
/// this node's view of the presence topic.
pub(super) fn presence(ctx: &Ctx, q: &HashMap<String, String>, stats: bool) -> ApiResult {
    let (channel, _) = channel_param(ctx, q, &["channel"])?;
    if !ctx
        .namespaces
        .get(channel.namespace())
        .is_some_and(|n| n.records_presence())
    {
        return Err(api_err(
            codes::BAD_FRAME,
            format!(
                "presence is off in namespace `{}` (set `presence` or `join_leave`)",
                channel.namespace()
            ),
        ));
    }
    if stats {
        let (clients, users) = ctx.presence.stats(ctx, channel.as_str());
        return Ok(json!({ "channel": channel.as_str(), "clients": clients, "users": users }));
    }
    let (members, truncated) =
        ctx.presence
            .members(ctx, channel.as_str(), ctx.cfg.limits.presence_max_members);
    Ok(json!({ "channel": channel.as_str(), "members": members, "truncated": truncated }))
}

fn int(q: &HashMap<String, String>, k: &str) -> Result<Option<i64>, ApiError> {
    q.get(k)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| api_err(codes::BAD_FRAME, format!("`{k}` must be an integer")))
        })
        .transpose()
}

pub(super) async fn history(ctx: Arc<Ctx>, q: HashMap<String, String>) -> ApiResult {
    const KNOWN: [&str; 6] = [
        "channel",
        "since_seq",
        "since_time",
        "before_seq",
        "limit",
        "reverse",
    ];
    let (channel, topic) = channel_param(&ctx, &q, &KNOWN)?;
    let from = match (
        int(&q, "since_seq")?,
        int(&q, "since_time")?,
        int(&q, "before_seq")?,
    ) {
        (None, None, b) if b.is_none_or(|b| b >= 0) => HistoryFrom::Latest { before_seq: b },
        (Some(s), None, None) if s >= -1 => HistoryFrom::AfterSeq(s),
        (None, Some(t), None) => HistoryFrom::SinceTime(t),
        _ => {
            return Err(api_err(
                codes::BAD_FRAME,
                "give at most one of since_seq (>= -1), since_time, before_seq (>= 0)",
            ))
        }
    };
    let max = ctx.cfg.history_max_limit;
    let limit = match int(&q, "limit")? {
        None => HISTORY_DEFAULT_LIMIT.min(max),
        Some(l) if l >= 1 && (l as u64) <= max as u64 => l as usize,
        Some(_) => {
            return Err(api_err(
                codes::BAD_FRAME,
                format!("`limit` must be 1-{max}"),
            ))
        }
    };
    let reverse = match q.get("reverse").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(api_err(codes::BAD_FRAME, "`reverse` must be true or false")),
    };
    let limits = HistoryLimits {
        limit,
        max_bytes: ctx.cfg.history_max_bytes,
        max_scan: ctx.cfg.history_max_scan,
    };
    let started = Instant::now();
    let page = ctx
        .hub
        .history(&topic, channel.as_str(), from, limits)
        .await
        .map_err(|e| {
            HistoryPage::count_failure();
            api_err(codes::UNAVAILABLE, format!("history failed: {e}"))
        })?;
    let mut messages: Vec<Value> = page
        .messages
        .iter()
        .filter_map(|d| serde_json::from_str(&d.text).ok())
        .collect();
    if reverse {
        messages.reverse();
    }
    page.count(started);
    Ok(json!({
        "channel": channel.as_str(),
        "epoch": &*page.epoch,
        "messages": messages,
        "next": page.next,
        "done": page.done,
        "truncated": page.truncated,
    }))
}

/// Minimal percent-decoding of a path segment (`chat%3Alobby`).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(super) async fn position(ctx: Arc<Ctx>, raw: String) -> ApiResult {
    let name =
        percent_decode(&raw).ok_or_else(|| api_err(codes::BAD_CHANNEL, "bad percent-encoding"))?;
    let (channel, topic) = resolve(&ctx, &name)?;
    let partition = ctx
        .hub
        .partition_of(&topic, channel.as_str())
        .map_err(|e| api_err(codes::INTERNAL, e.to_string()))?;
    let epoch = ctx
        .hub
        .epoch(&topic)
        .map_err(|e| api_err(codes::INTERNAL, e.to_string()))?;
    let wm = ctx
        .log
        .watermarks(&topic, partition)
        .await
        .map_err(|e| api_err(codes::UNAVAILABLE, e.to_string()))?;
    Ok(json!({
        "channel": channel.as_str(),
        "topic": topic,
        "partition": partition,
        "position": { "seq": wm.high - 1, "epoch": &*epoch },
        "log_start": wm.low,
    }))
}
