//! `POST /api/publish` and `POST /api/broadcast`: publishes through the
//! one publish pipeline, with the same dedup and ack as a WebSocket publish.

use std::sync::Arc;
use std::time::Instant;

use herald_hub::publish::refused;
use herald_hub::{PublishOutcome, PublishRequest};
use herald_proto::codes;
use herald_proto::filter::check_tags;
use herald_proto::frame::{json_depth, MAX_DATA_DEPTH};
use herald_proto::Tags;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{api_err, resolve, ApiError, ApiResult};
use crate::ctx::Ctx;

/// The body of `POST /api/publish`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: String,
    #[serde(default)]
    id: Option<Uuid>,
    data: Box<RawValue>,
    #[serde(default)]
    retry: bool,
    #[serde(default)]
    tags: Option<Tags>,
}

/// A refusal before the pipeline, counted like the pipeline's nacks.
fn refuse(code: &'static str, reason: impl Into<String>) -> ApiError {
    refused(code);
    api_err(code, reason)
}

pub(super) async fn publish(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let started = Instant::now();
    let req: PublishBody = serde_json::from_slice(&body)
        .map_err(|e| api_err(codes::BAD_FRAME, format!("bad publish body: {e}")))?;
    let id = req.id.unwrap_or_else(Uuid::new_v4);
    publish_one(&ctx, req, id, started).await
}

/// One publish through the pipeline (`req.id` is `id`); the answer is the
/// channel's result.
async fn publish_one(ctx: &Arc<Ctx>, req: PublishBody, id: Uuid, started: Instant) -> ApiResult {
    let (channel, topic) = resolve(ctx, &req.channel)?;
    let max = ctx
        .namespaces
        .get(channel.namespace())
        .and_then(|n| n.max_message_bytes)
        .unwrap_or(ctx.cfg.limits.max_message_bytes);
    if req.data.get().len() > max {
        return Err(refuse(
            codes::TOO_LARGE,
            format!("data is {} bytes; the limit is {max}", req.data.get().len()),
        ));
    }
    if json_depth(req.data.get()) > MAX_DATA_DEPTH {
        return Err(refuse(
            codes::BAD_FRAME,
            format!("`data` is nested deeper than {MAX_DATA_DEPTH} levels"),
        ));
    }
    if let Some(tags) = &req.tags {
        check_tags(tags).map_err(|e| refuse(codes::BAD_FRAME, e))?;
    }
    if ctx.shutdown.is_draining() {
        return Err(refuse(
            codes::SHUTTING_DOWN,
            "server is shutting down; retry on another node with the same id",
        ));
    }
    let partition = ctx
        .hub
        .partition_of(&topic, channel.as_str())
        .map_err(|e| refuse(codes::INTERNAL, e.to_string()))?;
    let answer = ctx.publisher.start(
        PublishRequest {
            topic,
            partition,
            channel: channel.as_str().to_owned(),
            id,
            data: req.data,
            publisher: Some("api".into()),
            retry: req.retry,
            replayed: None,
            tags: req.tags.filter(|t| !t.is_empty()),
            started,
        },
        (),
    );
    // In a task of its own: a client that hangs up drops this handler, and
    // the publish must still settle its dedup claim.
    let outcome = tokio::spawn(answer)
        .await
        .map_err(|e| api_err(codes::INTERNAL, format!("publish task failed: {e}")))?;
    match outcome {
        PublishOutcome::Acked { seq, duplicate } => {
            Ok(json!({ "channel": channel.as_str(), "id": id, "seq": seq, "duplicate": duplicate }))
        }
        PublishOutcome::Nacked { code, reason } => Err(api_err(code, reason)),
    }
}

/// Most channels in one `POST /api/broadcast`.
pub const MAX_BROADCAST_CHANNELS: usize = 1000;

/// The body of `POST /api/broadcast`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    channels: Vec<String>,
    /// Makes a retried broadcast idempotent: each channel's publish id is
    /// derived from it (UUID v5 of the channel name in this namespace).
    #[serde(default)]
    id: Option<Uuid>,
    data: Box<RawValue>,
    #[serde(default)]
    retry: bool,
    #[serde(default)]
    tags: Option<Tags>,
}

/// One payload to many channels: each appended and acked on its own (in
/// parallel); the answer lists each channel's result.
pub(super) async fn broadcast(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let started = Instant::now();
    let req: BroadcastBody = serde_json::from_slice(&body)
        .map_err(|e| api_err(codes::BAD_FRAME, format!("bad broadcast body: {e}")))?;
    if req.channels.is_empty() || req.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(api_err(
            codes::BAD_FRAME,
            format!("`channels` must list 1 to {MAX_BROADCAST_CHANNELS} channels"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = req.channels.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(api_err(
            codes::BAD_FRAME,
            format!("`{dup}` is listed twice"),
        ));
    }
    let tasks: Vec<_> = req
        .channels
        .iter()
        .map(|name| {
            let id = match req.id {
                Some(base) => Uuid::new_v5(&base, name.as_bytes()),
                None => Uuid::new_v4(),
            };
            let one = PublishBody {
                channel: name.clone(),
                id: Some(id),
                data: req.data.clone(),
                retry: req.retry,
                tags: req.tags.clone(),
            };
            let (ctx, name) = (ctx.clone(), name.clone());
            tokio::spawn(async move {
                let r = publish_one(&ctx, one, id, started).await;
                (name, id, r)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    let mut acked = 0usize;
    for t in tasks {
        let (name, id, r) = t
            .await
            .map_err(|e| api_err(codes::INTERNAL, format!("broadcast task failed: {e}")))?;
        results.push(match r {
            Ok(v) => {
                acked += 1;
                v
            }
            Err(e) => json!({ "channel": name, "id": id, "code": e.code, "reason": e.reason }),
        });
    }
    metrics::counter!("herald_api_broadcast_channels_total").increment(results.len() as u64);
    Ok(json!({ "acked": acked, "failed": results.len() - acked, "results": results }))
}
