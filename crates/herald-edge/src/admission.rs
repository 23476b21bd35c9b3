//! Admission: what a WebSocket upgrade and an HTTP session (SSE,
//! long-poll) pass before they become a connection, cheapest check first:
//! shutdown, the query string's length, `Origin`, `client_id`, the
//! connection limits (per node and per client address), then the token's
//! signature and the connect hook.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::warn;
use warp::http::{HeaderMap, StatusCode};
use warp::Reply;

use crate::ctx::{ConnSlot, Ctx};
use crate::hooks::{Hook, Verdict};

/// A query string, read once in linear time: single-valued parameters (the
/// last one wins) and the repeated `channel=`, without duplicates.
pub(crate) struct Query {
    pub single: HashMap<String, String>,
    pub channels: Vec<String>,
}

/// Why a query string was refused: its HTTP status and reason.
pub(crate) struct BadQuery {
    pub status: StatusCode,
    pub reason: String,
}

impl BadQuery {
    pub fn into_response(self) -> warp::reply::Response {
        warp::reply::with_status(self.reason, self.status).into_response()
    }
}

/// Parses a query string of at most `max_bytes` with at most
/// `max_channels` distinct `channel=` parameters: refused with 414 when
/// longer (before any parsing), 400 with more channels (as soon as one too
/// many is read).
pub(crate) fn parse_query(
    raw: &str,
    max_bytes: usize,
    max_channels: usize,
) -> Result<Query, BadQuery> {
    if raw.len() > max_bytes {
        metrics::counter!("herald_edge_connections_refused_total", "reason" => "query_too_long")
            .increment(1);
        return Err(BadQuery {
            status: StatusCode::URI_TOO_LONG,
            reason: format!("the query string is longer than {max_bytes} bytes"),
        });
    }
    let mut single = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut channels = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if k == "channel" {
            if seen.contains(v.as_ref()) {
                continue;
            }
            if channels.len() >= max_channels {
                return Err(BadQuery {
                    status: StatusCode::BAD_REQUEST,
                    reason: format!("at most {max_channels} channels per session"),
                });
            }
            let v = v.into_owned();
            seen.insert(v.clone());
            channels.push(v);
        } else {
            single.insert(k.into_owned(), v.into_owned());
        }
    }
    Ok(Query { single, channels })
}

/// The WebSocket handshake (RFC 6455 section 4.2), done here rather than by
/// warp's `ws()` filter so the connection gets herald's own tungstenite
/// configuration: warp cannot set the read buffer, and tungstenite's default
/// preallocates 128 KiB per connection.
pub(crate) async fn upgrade(
    raw_query: String,
    headers: HeaderMap,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ctx: Arc<Ctx>,
    remote: Option<SocketAddr>,
) -> warp::reply::Response {
    let status =
        |code: StatusCode, text: &'static str| warp::reply::with_status(text, code).into_response();
    if ctx.shutdown.is_draining() {
        return status(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let query = match parse_query(&raw_query, ctx.cfg.limits.max_query_bytes, usize::MAX) {
        Ok(q) => q.single,
        Err(bad) => return bad.into_response(),
    };
    let has_token = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        return status(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request",
        );
    }
    if headers
        .get("sec-websocket-version")
        .map(|v| v.as_bytes() != b"13")
        .unwrap_or(true)
    {
        return warp::reply::with_header(
            warp::reply::with_status(
                "unsupported WebSocket version",
                StatusCode::UPGRADE_REQUIRED,
            ),
            "sec-websocket-version",
            "13",
        )
        .into_response();
    }
    let Some(key) = headers.get("sec-websocket-key") else {
        return status(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let Some(on_upgrade) = on_upgrade else {
        return status(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded",
        );
    };
    let admitted = match admit(&query, &headers, &ctx, remote).await {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    let accept = derive_accept_key(key.as_bytes());
    // `?batch=true`: the client reads `batch` frames (several messages in
    // one WebSocket frame).
    let batch = match query.get("batch").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return status(StatusCode::BAD_REQUEST, "batch must be true or false"),
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(ctx.cfg.limits.read_buffer_bytes)
        .max_message_size(Some(ctx.cfg.limits.max_frame_bytes))
        .max_frame_size(Some(ctx.cfg.limits.max_frame_bytes));
    tokio::spawn(crate::conn::run(Box::new(crate::conn::Accepted {
        on_upgrade,
        config,
        ctx,
        remote,
        admitted,
        batch,
    })));
    let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
    let reply = warp::reply::with_header(reply, "connection", "upgrade");
    let reply = warp::reply::with_header(reply, "upgrade", "websocket");
    warp::reply::with_header(reply, "sec-websocket-accept", accept).into_response()
}

/// A client admitted by [`admit`]: who it is, its place under the limits and
/// the headers its hooks forward.
pub(crate) struct Admitted {
    pub client_id: Option<String>,
    /// The display name it gave (`?name=`), shown in presence.
    pub name: Option<Box<str>>,
    pub identity: Option<crate::auth::Identity>,
    pub slot: ConnSlot,
    pub hook_headers: Option<Box<[(String, String)]>>,
}

/// What a WebSocket upgrade and an HTTP session (SSE, long-poll) check
/// before they become a connection: shutdown, `Origin`, `client_id`, the
/// token, the connection limits and the connect hook. A refusal is the
/// HTTP answer to give.
pub(crate) async fn admit(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    ctx: &Arc<Ctx>,
    remote: Option<SocketAddr>,
) -> Result<Admitted, warp::reply::Response> {
    let status =
        |code: StatusCode, text: &'static str| warp::reply::with_status(text, code).into_response();
    if ctx.shutdown.is_draining() {
        return Err(status(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    if !origin_allowed(&ctx.cfg.allowed_origins, headers) {
        metrics::counter!("herald_edge_connections_refused_total", "reason" => "origin")
            .increment(1);
        return Err(status(StatusCode::FORBIDDEN, "this Origin may not connect"));
    }
    let mut client_id = match query.get("client_id") {
        None => None,
        Some(c) if valid_client_id(c) => Some(c.clone()),
        Some(_) => {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "client_id must be 1-128 characters of A-Z a-z 0-9 _ . : @ = + -",
            ))
        }
    };
    // The limits first: a token's signature check (RS/ES: the costly part
    // of admission) is made only for a client within them.
    let name = match query.get("name") {
        None => None,
        Some(n) if valid_name(n) => Some(Box::from(n.as_str())),
        Some(_) => {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "name must be 1-64 characters, none of them a control character",
            ))
        }
    };
    let client_ip = remote.map(|a| client_ip(a.ip(), headers, &ctx.cfg.trusted_proxies));
    let slot = match ConnSlot::acquire(ctx, client_ip) {
        Ok(s) => s,
        Err((code, text)) => return Err(status(code, text)),
    };
    // A token in the URL is checked before the upgrade: a bad one is
    // refused with 401 and never becomes a connection.
    let mut identity = match query.get("token") {
        None => None,
        Some(t) => match ctx.auth.verify_fresh(t).await {
            Ok(id) => Some(id),
            Err(e) => {
                metrics::counter!("herald_auth_failures_total", "reason" => "bad_token")
                    .increment(1);
                return Err(warp::reply::with_status(
                    format!("bad token: {e}"),
                    StatusCode::UNAUTHORIZED,
                )
                .into_response());
            }
        },
    };
    if let Some(id) = &identity {
        if client_id.as_ref().is_some_and(|c| **c != *id.sub) {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "client_id must equal the token's sub (or be left out)",
            ));
        }
        client_id = Some(id.sub.to_string());
        metrics::counter!("herald_auth_total", "kind" => "connect").increment(1);
    } else if let Some(c) = client_id.take() {
        client_id = Some(format!("{}{c}", crate::auth::ANONYMOUS_CLIENT_PREFIX));
    }
    // The application's hooks see the headers it asked for; the connect
    // hook may refuse the connection or say who it is (under the
    // connection limits, so it is not a way to flood the backend).
    let hooks = &ctx.hooks;
    let hook_headers = [Hook::Connect, Hook::Subscribe, Hook::Publish]
        .iter()
        .any(|h| hooks.has(*h))
        .then(|| hooks.forwarded(headers).into_boxed_slice());
    if hooks.has(Hook::Connect) {
        let body = serde_json::json!({
            "client_id": query.get("client_id"),
            "sub": identity.as_ref().map(|i| &i.sub),
            "remote": client_ip.map(|ip| ip.to_string()),
        });
        let forwarded = hook_headers.as_deref().unwrap_or_default();
        let refuse = |code: StatusCode, c: &str, reason: String| {
            metrics::counter!("herald_edge_connections_refused_total", "reason" => "hook")
                .increment(1);
            warp::reply::with_status(
                warp::reply::json(&serde_json::json!({ "code": c, "reason": reason })),
                code,
            )
            .into_response()
        };
        match hooks.call(Hook::Connect, &body, forwarded).await {
            Some(Verdict::Refuse { code, reason }) => {
                let st = if code == herald_proto::codes::UNAVAILABLE {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::FORBIDDEN
                };
                return Err(refuse(st, code, reason));
            }
            Some(Verdict::Allow(answer)) => {
                if let Some(raw) = answer.identity {
                    match crate::auth::identity_from_hook(&raw) {
                        Ok(id) => {
                            client_id = Some(id.sub.to_string());
                            identity = Some(id);
                        }
                        Err(e) => {
                            warn!(%e, "The connect hook answered an unusable identity");
                            return Err(refuse(
                                StatusCode::SERVICE_UNAVAILABLE,
                                herald_proto::codes::UNAVAILABLE,
                                format!("the application's connect hook answered: {e}"),
                            ));
                        }
                    }
                }
            }
            None => {}
        }
    }
    if let Some(id) = &identity {
        if crate::ctx::user_at_limit(ctx, &id.sub) {
            return Err(status(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections of this user",
            ));
        }
    }
    Ok(Admitted {
        client_id,
        name,
        identity,
        slot,
        hook_headers,
    })
}

/// Whether a WebSocket upgrade's `Origin` is allowed: any when the list is
/// empty or the request has none (it is not from a browser).
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get("origin") {
        None => true,
        Some(o) => o
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o))),
    }
}

/// The client's address for the per-IP limit: the peer, or, when the peer is
/// a trusted proxy, the rightmost `X-Forwarded-For` address that is not a
/// trusted proxy itself (the left part of the header is the client's own
/// claim and can be anything).
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            // Not an address where one must be: nothing left of it is
            // believed.
            Err(_) => return peer,
        }
    }
    peer
}

/// What the per-address limit counts a client under: its IPv4 address, or
/// the /64 of its IPv6 address (one subscriber line gets a whole /64, so
/// counting full IPv6 addresses would give it 2^64 budgets).
pub(crate) fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// A display name for presence: 1 to 64 characters, no control characters.
fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.chars().count()) && !s.chars().any(char::is_control)
}

/// A client id names the owner of durable cursors. Until connection auth
/// exists it is the client's own claim (`/ws?client_id=...`).
pub fn valid_client_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@=+-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().expect("header"));
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let trusted = [lb];
        // From an untrusted peer the header counts for nothing.
        assert_eq!(client_ip(other, &xff("203.0.113.7"), &trusted), other);
        assert_eq!(client_ip(lb, &xff("203.0.113.7"), &trusted), client);
        // The client's own claims to the left are not believed.
        assert_eq!(
            client_ip(lb, &xff("1.2.3.4, 203.0.113.7"), &trusted),
            client
        );
        // Hops through trusted proxies are skipped.
        assert_eq!(
            client_ip(lb, &xff("203.0.113.7, 10.0.0.1"), &trusted),
            client
        );
        // Garbage where the last hop should be: the peer counts.
        assert_eq!(client_ip(lb, &xff("1.2.3.4, nonsense"), &trusted), lb);
        assert_eq!(client_ip(lb, &HeaderMap::new(), &trusted), lb);
        // No trusted proxies: never believed.
        assert_eq!(client_ip(lb, &xff("203.0.113.7"), &[]), lb);
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(other));
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(limit_key(v4), v4);
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(limit_key(mapped), v4);
    }

    #[test]
    fn long_queries_are_refused_before_parsing() {
        assert_eq!(
            parse_query(&"a".repeat(300), 256, 8)
                .err()
                .map(|r| r.status),
            Some(StatusCode::URI_TOO_LONG)
        );
        let q = parse_query("channel=a&channel=b&channel=a&token=t", 256, 2)
            .ok()
            .unwrap();
        assert_eq!(q.channels, ["a", "b"]);
        assert_eq!(q.single["token"], "t");
        assert!(parse_query("channel=a&channel=b&channel=c", 256, 2).is_err());
    }

    #[test]
    fn origins_are_checked_only_when_configured() {
        let mut h = HeaderMap::new();
        h.insert("origin", "https://evil.example".parse().unwrap());
        let allowed = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(&[], &h));
        assert!(!origin_allowed(&allowed, &h));
        h.insert("origin", "https://app.example.com".parse().unwrap());
        assert!(origin_allowed(&allowed, &h));
        assert!(origin_allowed(&allowed, &HeaderMap::new()));
    }
}
