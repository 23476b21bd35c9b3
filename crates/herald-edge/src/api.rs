//! The server HTTP API, for backends: publish, history and channel position
//! over plain HTTP with an API key (`auth.api_key`), compared in constant
//! time. The OpenAPI document is `docs/openapi.json`, also served at
//! `/api/openapi.json` (without a key).
//!
//! The API is trusted: namespace access rules do not apply (that is how a
//! backend publishes to a namespace whose `publish` rule is `nobody`).
//! Publishes get the same dedup and ack semantics as WebSocket publishes: a
//! `200` means Kafka confirmed the record (`acks=all`), and the same `id`
//! sent again inside the dedup window returns the original `seq` with
//! `duplicate: true`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use herald_hub::publish::refused;
use herald_hub::{HistoryLimits, HistoryPage, PublishOutcome, PublishRequest};
use herald_proto::frame::{json_depth, HISTORY_DEFAULT_LIMIT, MAX_DATA_DEPTH};
use herald_proto::{codes, Channel, HistoryFrom};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::cluster::{Command, CommandOutcome};
use crate::ctx::Ctx;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// An error answer: `{"code", "reason"}` with an HTTP status.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    reason: String,
}

fn api_err(status: StatusCode, code: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        reason: reason.into(),
    }
}

type ApiResult = Result<Value, ApiError>;

fn respond(route: &'static str, r: ApiResult) -> warp::reply::Response {
    let (status, body) = match r {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => {
            // Inside the request's span: the line carries its request_id.
            if e.status.is_server_error() {
                tracing::warn!(route, status = e.status.as_u16(), code = e.code, reason = %e.reason, "API request failed");
            } else {
                tracing::debug!(route, status = e.status.as_u16(), code = e.code, reason = %e.reason, "API request refused");
            }
            (e.status, json!({ "code": e.code, "reason": e.reason }))
        }
    };
    metrics::counter!("herald_api_requests_total", "route" => route, "status" => status.as_str().to_owned())
        .increment(1);
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Wrong API keys a client address may send per minute; beyond, its
/// requests are refused (429) before any key is compared.
pub const FAILED_KEYS_PER_MINUTE: u32 = 20;

/// The key from `Authorization: Bearer KEY` or `X-Api-Key: KEY`; a client
/// address that sent [`FAILED_KEYS_PER_MINUTE`] wrong keys is refused
/// without a check until its budget refills.
fn check_key(
    ctx: &Ctx,
    peer: Option<std::net::IpAddr>,
    authorization: Option<String>,
    x_api_key: Option<String>,
) -> Result<(), ApiError> {
    let failures = peer.map(|ip| ctx.api_failures.of(crate::admission::limit_key(ip)));
    if failures.as_ref().is_some_and(|f| f.is_spent()) {
        metrics::counter!("herald_auth_failures_total", "reason" => "api_throttled").increment(1);
        return Err(api_err(
            StatusCode::TOO_MANY_REQUESTS,
            codes::RATE_LIMITED,
            format!(
                "more than {FAILED_KEYS_PER_MINUTE} wrong API keys per minute from this address"
            ),
        ));
    }
    let result = check_key_given(ctx, authorization, x_api_key);
    if result.is_err() {
        if let Some(f) = failures {
            f.spend();
        }
    }
    result
}

fn check_key_given(
    ctx: &Ctx,
    authorization: Option<String>,
    x_api_key: Option<String>,
) -> Result<(), ApiError> {
    let given = x_api_key
        .or_else(|| authorization.and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned)));
    let Some(given) = given else {
        metrics::counter!("herald_auth_failures_total", "reason" => "api_no_key").increment(1);
        return Err(api_err(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "an API key is required: Authorization: Bearer <key> or X-Api-Key: <key>",
        ));
    };
    if ctx.auth.check_api_key(given.as_bytes()) {
        Ok(())
    } else {
        metrics::counter!("herald_auth_failures_total", "reason" => "api_bad_key").increment(1);
        Err(api_err(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "wrong API key (or the API is disabled: auth.api_key is not set)",
        ))
    }
}

/// The channel and its topic (the API is trusted: no access rules).
fn resolve(ctx: &Ctx, name: &str) -> Result<(Channel, String), ApiError> {
    let (channel, _, topic) = ctx.resolve(name).map_err(|(code, reason)| {
        let status = if code == codes::UNKNOWN_NAMESPACE {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        api_err(status, code, reason)
    })?;
    Ok((channel, topic.to_owned()))
}

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
}

/// Reads a request body of at most `max` bytes (its declared length was
/// checked by `content_length_limit`; this holds a lying one to it too).
async fn read_body<S, B>(body: S, max: usize) -> Result<bytes::Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::StreamExt;
    let mut out = bytes::BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            api_err(
                StatusCode::BAD_REQUEST,
                codes::BAD_FRAME,
                format!("reading the body: {e}"),
            )
        })?;
        if out.len() + chunk.remaining() > max {
            return Err(api_err(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::TOO_LARGE,
                format!("the body exceeds {max} bytes"),
            ));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            out.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// A refusal before the pipeline, counted like the pipeline's nacks.
fn refuse(status: StatusCode, code: &'static str, reason: impl Into<String>) -> ApiError {
    refused(code);
    api_err(status, code, reason)
}

async fn publish(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let started = Instant::now();
    let req: PublishBody = serde_json::from_slice(&body).map_err(|e| {
        api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("bad publish body: {e}"),
        )
    })?;
    let id = req.id.unwrap_or_else(Uuid::new_v4);
    publish_one(&ctx, &req.channel, id, req.data, req.retry, started).await
}

/// One publish through the pipeline; the answer is the channel's result.
async fn publish_one(
    ctx: &Arc<Ctx>,
    name: &str,
    id: Uuid,
    data: Box<RawValue>,
    retry: bool,
    started: Instant,
) -> ApiResult {
    let req = PublishBody {
        channel: name.to_owned(),
        id: Some(id),
        data,
        retry,
    };
    let (channel, topic) = resolve(ctx, &req.channel)?;
    let max = ctx
        .namespaces
        .get(channel.namespace())
        .and_then(|n| n.max_message_bytes)
        .unwrap_or(ctx.cfg.max_message_bytes);
    if req.data.get().len() > max {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::TOO_LARGE,
            format!("data is {} bytes; the limit is {max}", req.data.get().len()),
        ));
    }
    if json_depth(req.data.get()) > MAX_DATA_DEPTH {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("`data` is nested deeper than {MAX_DATA_DEPTH} levels"),
        ));
    }
    if ctx.shutdown.is_draining() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::SHUTTING_DOWN,
            "server is shutting down; retry on another node with the same id",
        ));
    }
    let partition = ctx
        .hub
        .partition_of(&topic, channel.as_str())
        .map_err(|e| {
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                e.to_string(),
            )
        })?;
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
            started,
        },
        (),
    );
    // In a task of its own: a client that hangs up drops this handler, and
    // the publish must still settle its dedup claim.
    let outcome = tokio::spawn(answer).await.map_err(|e| {
        api_err(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            format!("publish task failed: {e}"),
        )
    })?;
    match outcome {
        PublishOutcome::Acked { seq, duplicate } => {
            Ok(json!({ "channel": channel.as_str(), "id": id, "seq": seq, "duplicate": duplicate }))
        }
        PublishOutcome::Nacked { code, reason } => {
            let status = match code {
                codes::UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
                codes::TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Err(api_err(status, code, reason))
        }
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
}

/// One payload to many channels: each appended and acked on its own (in
/// parallel); the answer lists each channel's result.
async fn broadcast(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let started = Instant::now();
    let req: BroadcastBody = serde_json::from_slice(&body).map_err(|e| {
        api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("bad broadcast body: {e}"),
        )
    })?;
    if req.channels.is_empty() || req.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("`channels` must list 1 to {MAX_BROADCAST_CHANNELS} channels"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = req.channels.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
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
            let (ctx, name, data, retry) = (ctx.clone(), name.clone(), req.data.clone(), req.retry);
            tokio::spawn(async move {
                let r = publish_one(&ctx, &name, id, data, retry, started).await;
                (name, id, r)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    let mut acked = 0usize;
    for t in tasks {
        let (name, id, r) = t.await.map_err(|e| {
            api_err(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                format!("broadcast task failed: {e}"),
            )
        })?;
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
            StatusCode::SERVICE_UNAVAILABLE,
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

async fn disconnect(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let req: DisconnectBody = serde_json::from_slice(&body).map_err(|e| {
        api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("bad disconnect body: {e}"),
        )
    })?;
    let code = req.code.unwrap_or(codes::CLOSE_DISCONNECTED);
    if !(4000..=4999).contains(&code) {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            "`code` must be in 4000-4999 (application close codes)",
        ));
    }
    let reason = req
        .reason
        .unwrap_or_else(|| "disconnected by the server".into());
    if reason.len() > MAX_CLOSE_REASON {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("`reason` is at most {MAX_CLOSE_REASON} bytes"),
        ));
    }
    if req.user.is_empty() {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            "`user` must not be empty",
        ));
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

/// The body of `POST /api/unsubscribe`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    user: String,
    channel: String,
}

async fn unsubscribe(ctx: Arc<Ctx>, body: bytes::Bytes) -> ApiResult {
    let req: UnsubscribeBody = serde_json::from_slice(&body).map_err(|e| {
        api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("bad unsubscribe body: {e}"),
        )
    })?;
    let (channel, _) = resolve(&ctx, &req.channel)?;
    if req.user.is_empty() {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            "`user` must not be empty",
        ));
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
async fn channels(ctx: Arc<Ctx>, q: HashMap<String, String>) -> ApiResult {
    let pattern = q.get("pattern").filter(|p| !p.is_empty()).cloned();
    if pattern.as_ref().is_some_and(|p| p.len() > 255) {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            "`pattern` is at most 255 bytes",
        ));
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

/// A channel's members on every live node (`stats`: only the counts), from
/// this node's view of the presence topic.
fn presence(ctx: &Ctx, q: &HashMap<String, String>, stats: bool) -> ApiResult {
    if let Some(k) = q.keys().find(|k| k.as_str() != "channel") {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("unknown parameter `{k}`"),
        ));
    }
    let name = q.get("channel").ok_or_else(|| {
        api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            "`channel` is required",
        )
    })?;
    let (channel, _) = resolve(ctx, name)?;
    if !ctx
        .namespaces
        .get(channel.namespace())
        .is_some_and(|n| n.records_presence())
    {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
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
            .members(ctx, channel.as_str(), ctx.cfg.presence_max_members);
    Ok(json!({ "channel": channel.as_str(), "members": members, "truncated": truncated }))
}

/// The live nodes, from their heartbeats in the control topic.
fn nodes(ctx: &Ctx) -> Value {
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

fn int(q: &HashMap<String, String>, k: &str) -> Result<Option<i64>, ApiError> {
    q.get(k)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                api_err(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_FRAME,
                    format!("`{k}` must be an integer"),
                )
            })
        })
        .transpose()
}

async fn history(ctx: Arc<Ctx>, q: HashMap<String, String>) -> ApiResult {
    const KNOWN: [&str; 6] = [
        "channel",
        "since_seq",
        "since_time",
        "before_seq",
        "limit",
        "reverse",
    ];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            format!("unknown parameter `{k}`"),
        ));
    }
    let name = q.get("channel").ok_or_else(|| {
        api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_FRAME,
            "`channel` is required",
        )
    })?;
    let (channel, topic) = resolve(&ctx, name)?;
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
                StatusCode::BAD_REQUEST,
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
                StatusCode::BAD_REQUEST,
                codes::BAD_FRAME,
                format!("`limit` must be 1-{max}"),
            ))
        }
    };
    let reverse = match q.get("reverse").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(api_err(
                StatusCode::BAD_REQUEST,
                codes::BAD_FRAME,
                "`reverse` must be true or false",
            ))
        }
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
            api_err(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::UNAVAILABLE,
                format!("history failed: {e}"),
            )
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

async fn position(ctx: Arc<Ctx>, raw: String) -> ApiResult {
    let name = percent_decode(&raw).ok_or_else(|| {
        api_err(
            StatusCode::BAD_REQUEST,
            codes::BAD_CHANNEL,
            "bad percent-encoding",
        )
    })?;
    let (channel, topic) = resolve(&ctx, &name)?;
    let partition = ctx
        .hub
        .partition_of(&topic, channel.as_str())
        .map_err(|e| {
            api_err(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                e.to_string(),
            )
        })?;
    let epoch = ctx.hub.epoch(&topic).map_err(|e| {
        api_err(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            e.to_string(),
        )
    })?;
    let wm = ctx.log.watermarks(&topic, partition).await.map_err(|e| {
        api_err(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UNAVAILABLE,
            e.to_string(),
        )
    })?;
    Ok(json!({
        "channel": channel.as_str(),
        "topic": topic,
        "partition": partition,
        "position": { "seq": wm.high - 1, "epoch": &*epoch },
        "log_start": wm.low,
    }))
}

fn with_ctx(ctx: Arc<Ctx>) -> impl Filter<Extract = (Arc<Ctx>,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

/// `/api/*`.
pub fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let peer = warp::ext::optional::<crate::http::PeerAddr>()
        .map(|p: Option<crate::http::PeerAddr>| p.map(|p| p.0.ip()));
    let keyed =
        with_ctx(ctx.clone())
            .and(peer)
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::header::optional::<String>("x-api-key"))
            .and_then(
                |ctx: Arc<Ctx>,
                 ip: Option<std::net::IpAddr>,
                 a: Option<String>,
                 k: Option<String>| async move {
                    match check_key(&ctx, ip, a, k) {
                        Ok(()) => Ok::<_, warp::Rejection>(Ok(ctx)),
                        Err(e) => Ok(Err(e)),
                    }
                },
            );
    let max_body = ctx.cfg.max_frame_bytes as u64;
    let publish_route = warp::path!("api" / "publish")
        .and(warp::post())
        .and(keyed.clone())
        .and(warp::body::content_length_limit(max_body))
        .and(warp::body::stream())
        .then(move |ctx: Result<Arc<Ctx>, ApiError>, body| async move {
            // The key first: a request without a valid one is answered
            // without its body ever being read.
            let r = match ctx {
                Ok(ctx) => match read_body(body, max_body as usize).await {
                    Ok(body) => publish(ctx, body).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            respond("publish", r)
        });
    let history_route = warp::path!("api" / "history")
        .and(warp::get())
        .and(keyed.clone())
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .then(
            |ctx: Result<Arc<Ctx>, ApiError>, q: HashMap<String, String>| async move {
                let r = match ctx {
                    Ok(ctx) => history(ctx, q).await,
                    Err(e) => Err(e),
                };
                respond("history", r)
            },
        );
    let position_route = warp::path!("api" / "channels" / String / "position")
        .and(warp::get())
        .and(keyed.clone())
        .then(|raw: String, ctx: Result<Arc<Ctx>, ApiError>| async move {
            let r = match ctx {
                Ok(ctx) => position(ctx, raw).await,
                Err(e) => Err(e),
            };
            respond("position", r)
        });
    let post = |name: &'static str| {
        warp::path("api")
            .and(warp::path(name))
            .and(warp::path::end())
            .and(warp::post())
            .and(keyed.clone())
            .and(warp::body::content_length_limit(max_body))
            .and(warp::body::stream())
    };
    let broadcast_route =
        post("broadcast").then(move |ctx: Result<Arc<Ctx>, ApiError>, body| async move {
            let r = match ctx {
                Ok(ctx) => match read_body(body, max_body as usize).await {
                    Ok(body) => broadcast(ctx, body).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            respond("broadcast", r)
        });
    let disconnect_route =
        post("disconnect").then(move |ctx: Result<Arc<Ctx>, ApiError>, body| async move {
            let r = match ctx {
                Ok(ctx) => match read_body(body, max_body as usize).await {
                    Ok(body) => disconnect(ctx, body).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            respond("disconnect", r)
        });
    let unsubscribe_route =
        post("unsubscribe").then(move |ctx: Result<Arc<Ctx>, ApiError>, body| async move {
            let r = match ctx {
                Ok(ctx) => match read_body(body, max_body as usize).await {
                    Ok(body) => unsubscribe(ctx, body).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            respond("unsubscribe", r)
        });
    let channels_route = warp::path!("api" / "channels")
        .and(warp::get())
        .and(keyed.clone())
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .then(
            |ctx: Result<Arc<Ctx>, ApiError>, q: HashMap<String, String>| async move {
                let r = match ctx {
                    Ok(ctx) => channels(ctx, q).await,
                    Err(e) => Err(e),
                };
                respond("channels", r)
            },
        );
    let nodes_route = warp::path!("api" / "nodes")
        .and(warp::get())
        .and(keyed.clone())
        .map(|ctx: Result<Arc<Ctx>, ApiError>| respond("nodes", ctx.map(|c| nodes(&c))));
    let presence_route = warp::path("api")
        .and(
            warp::path("presence")
                .map(|| false)
                .or(warp::path("presence_stats").map(|| true))
                .unify(),
        )
        .and(warp::path::end())
        .and(warp::get())
        .and(keyed.clone())
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .map(
            |stats: bool, ctx: Result<Arc<Ctx>, ApiError>, q: HashMap<String, String>| {
                let name = if stats { "presence_stats" } else { "presence" };
                respond(name, ctx.and_then(|c| presence(&c, &q, stats)))
            },
        );
    let openapi = warp::path!("api" / "openapi.json")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response()
        });
    publish_route
        .or(history_route)
        .unify()
        .or(position_route)
        .unify()
        .or(broadcast_route)
        .unify()
        .or(disconnect_route)
        .unify()
        .or(unsubscribe_route)
        .unify()
        .or(channels_route)
        .unify()
        .or(nodes_route)
        .unify()
        .or(presence_route)
        .unify()
        .or(openapi)
        .unify()
}
