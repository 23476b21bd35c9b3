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

mod commands;
mod publish;
mod read;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_proto::{codes, Channel};
use serde_json::{json, Value};
use warp::http::{Method, StatusCode};
use warp::{Filter, Reply};

use crate::ctx::Ctx;

pub use publish::MAX_BROADCAST_CHANNELS;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// An error answer: `{"code", "reason"}`, its HTTP status given by the
/// code ([`status_of`]).
struct ApiError {
    code: &'static str,
    reason: String,
}

fn api_err(code: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError {
        code,
        reason: reason.into(),
    }
}

/// The one place an error code becomes an HTTP status.
fn status_of(code: &str) -> StatusCode {
    match code {
        codes::BAD_JSON | codes::BAD_FRAME | codes::BAD_CHANNEL => StatusCode::BAD_REQUEST,
        codes::UNAUTHORIZED => StatusCode::UNAUTHORIZED,
        codes::UNKNOWN_NAMESPACE => StatusCode::NOT_FOUND,
        codes::TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        codes::RATE_LIMITED => StatusCode::TOO_MANY_REQUESTS,
        codes::UNAVAILABLE | codes::SHUTTING_DOWN => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

type ApiResult = Result<Value, ApiError>;

fn respond(route: &'static str, r: ApiResult) -> warp::reply::Response {
    let (status, body) = match r {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => {
            let status = status_of(e.code);
            // Inside the request's span: the line carries its request_id.
            if status.is_server_error() {
                tracing::warn!(route, status = status.as_u16(), code = e.code, reason = %e.reason, "API request failed");
            } else {
                tracing::debug!(route, status = status.as_u16(), code = e.code, reason = %e.reason, "API request refused");
            }
            (status, json!({ "code": e.code, "reason": e.reason }))
        }
    };
    metrics::counter!("herald_api_requests_total", "route" => route, "status" => status.as_str().to_owned())
        .increment(1);
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// What a route's handler is given: the query (GET) or the body (POST),
/// and the `*` segment of its path, if it has one (still percent-encoded).
struct Request {
    query: HashMap<String, String>,
    body: Bytes,
    segment: String,
}

type Handler = fn(Arc<Ctx>, Request) -> BoxFuture<'static, ApiResult>;

/// One route: `/api/` + `path` (a `*` segment matches any one segment).
struct Route {
    name: &'static str,
    method: Method,
    path: &'static [&'static str],
    handler: Handler,
}

/// Every keyed route of the API. Each goes through [`handle`]: the key
/// first, then the body (POST, bounded by `max_frame_bytes`), then the
/// handler, then [`respond`] (status from the code, the log line, the
/// request counter).
const ROUTES: &[Route] = &[
    route("publish", Method::POST, &["publish"], |c, r| {
        Box::pin(publish::publish(c, r.body))
    }),
    route("broadcast", Method::POST, &["broadcast"], |c, r| {
        Box::pin(publish::broadcast(c, r.body))
    }),
    route("disconnect", Method::POST, &["disconnect"], |c, r| {
        Box::pin(commands::disconnect(c, r.body))
    }),
    route("revoke", Method::POST, &["revoke"], |c, r| {
        Box::pin(commands::revoke(c, r.body))
    }),
    route("unsubscribe", Method::POST, &["unsubscribe"], |c, r| {
        Box::pin(commands::unsubscribe(c, r.body))
    }),
    route("channels", Method::GET, &["channels"], |c, r| {
        Box::pin(commands::channels(c, r.query))
    }),
    route("nodes", Method::GET, &["nodes"], |c, _| {
        Box::pin(async move { Ok(commands::nodes(&c)) })
    }),
    route("history", Method::GET, &["history"], |c, r| {
        Box::pin(read::history(c, r.query))
    }),
    route(
        "position",
        Method::GET,
        &["channels", "*", "position"],
        |c, r| Box::pin(read::position(c, r.segment)),
    ),
    route("presence", Method::GET, &["presence"], |c, r| {
        Box::pin(async move { read::presence(&c, &r.query, false) })
    }),
    route(
        "presence_stats",
        Method::GET,
        &["presence_stats"],
        |c, r| Box::pin(async move { read::presence(&c, &r.query, true) }),
    ),
];

const fn route(
    name: &'static str,
    method: Method,
    path: &'static [&'static str],
    handler: Handler,
) -> Route {
    Route {
        name,
        method,
        path,
        handler,
    }
}

/// The route for `method` and the path after `/api/`, with its `*`
/// segment.
fn find(method: &Method, tail: &str) -> Option<(&'static Route, String)> {
    let segments: Vec<&str> = tail.split('/').collect();
    ROUTES.iter().find_map(|r| {
        if r.method != *method || r.path.len() != segments.len() {
            return None;
        }
        let mut star = String::new();
        for (want, got) in r.path.iter().zip(&segments) {
            if *want == "*" {
                star = (*got).to_owned();
            } else if want != got {
                return None;
            }
        }
        Some((r, star))
    })
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
            codes::UNAUTHORIZED,
            "an API key is required: Authorization: Bearer <key> or X-Api-Key: <key>",
        ));
    };
    if ctx.auth.check_api_key(given.as_bytes()) {
        Ok(())
    } else {
        metrics::counter!("herald_auth_failures_total", "reason" => "api_bad_key").increment(1);
        Err(api_err(
            codes::UNAUTHORIZED,
            "wrong API key (or the API is disabled: auth.api_key is not set)",
        ))
    }
}

/// The channel and its topic (the API is trusted: no access rules).
fn resolve(ctx: &Ctx, name: &str) -> Result<(Channel, String), ApiError> {
    let (channel, _, topic) = ctx
        .resolve(name)
        .map_err(|(code, reason)| api_err(code, reason))?;
    Ok((channel, topic.to_owned()))
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
        let mut chunk =
            chunk.map_err(|e| api_err(codes::BAD_FRAME, format!("reading the body: {e}")))?;
        if out.len() + chunk.remaining() > max {
            return Err(api_err(
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

/// `/api/*`: the OpenAPI document (no key), then [`ROUTES`] through one
/// wrapper. A path no route has is left to the server's other routes (a
/// 404 in the end).
pub fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let openapi = warp::path!("api" / "openapi.json")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response()
        });
    let keyed = warp::path("api")
        .and(warp::path::tail())
        .and(warp::method())
        .and_then(|tail: warp::path::Tail, method: Method| async move {
            find(&method, tail.as_str()).ok_or_else(warp::reject::not_found)
        })
        .and(warp::any().map(move || ctx.clone()))
        .and(
            warp::ext::optional::<crate::http::PeerAddr>()
                .map(|p: Option<crate::http::PeerAddr>| p.map(|p| p.0.ip())),
        )
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("x-api-key"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and(warp::body::stream())
        .then(
            |(route, segment): (&'static Route, String),
             ctx: Arc<Ctx>,
             peer: Option<IpAddr>,
             authorization: Option<String>,
             x_api_key: Option<String>,
             length: Option<u64>,
             query: HashMap<String, String>,
             body| async move {
                let r = handle(
                    route,
                    ctx,
                    (peer, authorization, x_api_key),
                    length,
                    Request {
                        query,
                        body: Bytes::new(),
                        segment,
                    },
                    body,
                )
                .await;
                respond(route.name, r)
            },
        );
    openapi.or(keyed).unify()
}

/// The one wrapper every keyed route goes through.
async fn handle<S, B>(
    route: &'static Route,
    ctx: Arc<Ctx>,
    (peer, authorization, x_api_key): (Option<IpAddr>, Option<String>, Option<String>),
    length: Option<u64>,
    mut req: Request,
    body: S,
) -> ApiResult
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    // The key first: a request without a valid one is answered without
    // its body ever being read.
    check_key(&ctx, peer, authorization, x_api_key)?;
    if route.method == Method::POST {
        let max = ctx.cfg.limits.max_frame_bytes;
        if length.is_some_and(|l| l > max as u64) {
            return Err(api_err(
                codes::TOO_LARGE,
                format!("the body exceeds {max} bytes"),
            ));
        }
        req.body = read_body(body, max).await?;
    }
    (route.handler)(ctx, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_by_method_and_path() {
        let name = |m: Method, p: &str| find(&m, p).map(|(r, s)| (r.name, s));
        assert_eq!(
            name(Method::POST, "publish"),
            Some(("publish", String::new()))
        );
        assert_eq!(name(Method::GET, "publish"), None);
        assert_eq!(
            name(Method::GET, "channels/chat%3Aa/position"),
            Some(("position", "chat%3Aa".to_owned()))
        );
        assert_eq!(
            name(Method::GET, "channels"),
            Some(("channels", String::new()))
        );
        assert_eq!(name(Method::GET, "channels/x"), None);
        assert_eq!(name(Method::GET, "nope"), None);
        // Every route's name is its own: the metrics and logs tell them apart.
        let mut names: Vec<_> = ROUTES.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ROUTES.len());
    }

    #[test]
    fn every_error_code_has_one_status() {
        assert_eq!(status_of(codes::BAD_FRAME), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(codes::UNKNOWN_NAMESPACE), StatusCode::NOT_FOUND);
        assert_eq!(status_of(codes::TOO_LARGE), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            status_of(codes::RATE_LIMITED),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status_of(codes::SHUTTING_DOWN),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_of(codes::INTERNAL),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
