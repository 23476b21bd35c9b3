//! The cluster-wide routes: `disconnect` and `unsubscribe` (commands sent
//! to every node through the control topic), `channels` (asked of every
//! node the same way) and `nodes` (from their heartbeats).

use std::collections::HashMap;
use std::sync::Arc;

use herald_proto::codes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{api_err, resolve, ApiError, ApiResult};
use crate::cluster::{Command, CommandOutcome};
use crate::ctx::Ctx;
use crate::revocations::{Revocation, RevokeBody};

/// Where a cluster command got: the nodes that applied it and those that
/// did not answer within `cluster.command_timeout_ms`.
fn nodes_summary(out: &CommandOutcome) -> Value {
    json!({
        "applied": out.applied.keys().collect::<Vec<_>>(),
        "missing": out.missing,
        "complete": out.missing.is_empty(),
    })
}

async fn run_command(ctx: &Ctx, command: Command) -> Result<CommandOutcome, ApiError> {
    ctx.cluster.command(ctx, command).await.map_err(|e| {
        api_err(
            codes::UNAVAILABLE,
            format!("could not send the command through Kafka: {e}"),
        )
    })
}

fn connections_total(out: &CommandOutcome) -> u64 {
    out.applied
        .values()
        .filter_map(|v| v["connections"].as_u64())
        .sum()
}

/// The body of `POST /api/disconnect`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default = "yes")]
    reconnect: bool,
}

fn yes() -> bool {
    true
}

/// Longest close reason: a WebSocket close frame holds 123 bytes of it.
const MAX_CLOSE_REASON: usize = 120;

pub(super) async fn disconnect(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let req: DisconnectBody = serde_json::from_slice(&body)
        .map_err(|e| api_err(codes::BAD_FRAME, format!("bad disconnect body: {e}")))?;
    let code = req.code.unwrap_or(codes::CLOSE_DISCONNECTED);
    if !(4000..=4999).contains(&code) {
        return Err(api_err(
            codes::BAD_FRAME,
            "`code` must be in 4000-4999 (application close codes)",
        ));
    }
    let reason = req
        .reason
        .unwrap_or_else(|| "disconnected by the server".into());
    if reason.len() > MAX_CLOSE_REASON {
        return Err(api_err(
            codes::BAD_FRAME,
            format!("`reason` is at most {MAX_CLOSE_REASON} bytes"),
        ));
    }
    if req.user.is_empty() {
        return Err(api_err(codes::BAD_FRAME, "`user` must not be empty"));
    }
    let out = run_command(
        &ctx,
        Command::Disconnect {
            user: req.user.clone(),
            code,
            reason,
            reconnect: req.reconnect,
        },
    )
    .await?;
    Ok(
        json!({ "user": req.user, "connections": connections_total(&out), "nodes": nodes_summary(&out) }),
    )
}

/// `POST /api/revoke`: written to the revocations topic; answered once
/// Kafka has it. Every node applies it when it reads it (its tail's fetch
/// wait, ~100 ms) and closes the connections it covers.
pub(super) async fn revoke(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let req: RevokeBody = serde_json::from_slice(&body)
        .map_err(|e| api_err(codes::BAD_FRAME, format!("bad revoke body: {e}")))?;
    let revocation = req.revocation().map_err(|m| api_err(codes::BAD_FRAME, m))?;
    let topic = ctx.log.config().revocations_topic();
    let written = ctx
        .log
        .append_record(
            &topic,
            0,
            revocation.key().as_bytes(),
            &revocation.to_json(),
            &[],
        )
        .map_err(|e| {
            api_err(
                codes::UNAVAILABLE,
                format!("could not write the revocation: {e}"),
            )
        })?;
    written.await.map_err(|e| {
        api_err(
            codes::UNAVAILABLE,
            format!("Kafka did not confirm the revocation: {e}"),
        )
    })?;
    metrics::counter!("herald_revocations_written_total").increment(1);
    Ok(match revocation {
        Revocation::Jti { jti, user, until } => {
            json!({ "revoked": "jti", "jti": jti, "user": user, "until": until })
        }
        Revocation::User { user, before } => {
            json!({ "revoked": "user", "user": user, "before": before })
        }
    })
}

/// The body of `POST /api/unsubscribe`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    user: String,
    channel: String,
}

pub(super) async fn unsubscribe(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let req: UnsubscribeBody = serde_json::from_slice(&body)
        .map_err(|e| api_err(codes::BAD_FRAME, format!("bad unsubscribe body: {e}")))?;
    let (channel, _) = resolve(&ctx, &req.channel)?;
    if req.user.is_empty() {
        return Err(api_err(codes::BAD_FRAME, "`user` must not be empty"));
    }
    let out = run_command(
        &ctx,
        Command::Unsubscribe {
            user: req.user.clone(),
            channel: channel.as_str().to_owned(),
        },
    )
    .await?;
    Ok(json!({
        "user": req.user,
        "channel": channel.as_str(),
        "connections": connections_total(&out),
        "nodes": nodes_summary(&out),
    }))
}

/// Channels with subscribers on any node, with their subscriber counts.
pub(super) async fn channels(ctx: Arc<Ctx>, q: HashMap<String, String>) -> ApiResult {
    let pattern = q.get("pattern").filter(|p| !p.is_empty()).cloned();
    if pattern.as_ref().is_some_and(|p| p.len() > 255) {
        return Err(api_err(codes::BAD_FRAME, "`pattern` is at most 255 bytes"));
    }
    let out = run_command(&ctx, Command::Channels { pattern }).await?;
    let mut total: std::collections::BTreeMap<String, u64> = Default::default();
    for v in out.applied.values() {
        if let Some(map) = v["channels"].as_object() {
            for (c, n) in map {
                *total.entry(c.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    let list: Vec<Value> = total
        .into_iter()
        .map(|(c, n)| json!({ "channel": c, "subscribers": n }))
        .collect();
    Ok(json!({ "channels": list, "nodes": nodes_summary(&out) }))
}

/// The live nodes, from their heartbeats in the control topic.
pub(super) fn nodes(ctx: &Ctx) -> Value {
    let now = herald_proto::envelope::now_ms();
    let list: Vec<Value> = ctx
        .cluster
        .live_nodes()
        .into_iter()
        .map(|n| {
            json!({
                "id": n.id,
                "address": n.address,
                "version": n.version,
                "started_ms": n.started_ms,
                "uptime_ms": (now - n.started_ms).max(0),
                "heartbeat_ms": n.ts,
                "connections": n.connections,
                "subscriptions": n.subscriptions,
            })
        })
        .collect();
    json!({ "self": ctx.cluster.node, "nodes": list })
}
