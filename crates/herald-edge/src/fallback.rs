//! The fallback transports' routes: herald's protocol over plain HTTP for
//! networks that block WebSocket ([`crate::conn::session`] has the
//! sessions they drive).
//!
//! - `GET /sse?channel=..&channel=..[&token=..][&client_id=..][&since=..]`:
//!   a Server-Sent Events stream. Its first event is a `session` frame
//!   (`{"type":"session","id":"..."}`); after it every event's `data` is one
//!   server frame, exactly as over WebSocket. `message` and `subscribed`
//!   events carry an `id`: the positions of every channel of the stream (a
//!   JSON object from channel to `{seq, epoch}`), so the browser's own
//!   reconnect (`Last-Event-ID`) resumes every channel where it stopped.
//! - `GET /poll?...` (the same parameters): a long-poll. Without `session`
//!   it starts a session and answers at once (with the session id and any
//!   frame already queued); with `session=ID` it continues one. The answer is
//!   `{"session": ID, "frames": [...], "closed": bool}` as soon as a frame
//!   is there (then with everything queued, up to [`POLL_MAX_FRAMES`]) or
//!   after `wait_ms` (default 25 s) with none.
//! - `POST /session/{id}`: one client frame (the JSON text a WebSocket
//!   would carry); `202` when queued. Its answer (`publish_ack`, `history`,
//!   an `error`, ...) comes on the session's stream or polls.
//!
//! A session id is 128 random bits handed only to the client that opened
//! the session: it stands for that client's identity, as the socket does
//! for a WebSocket. Sessions live on one node; behind a load balancer the
//! `POST`s and polls of a session must reach the node that holds it
//! (`docs/operations.md`, "Fallback transports").

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use herald_proto::filter::{Filter as TagFilter, FilterBody};
use herald_proto::{Position, Rewind, Since};
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Reply};

use crate::admission::{admit, parse_query, BadQuery};
use crate::conn::session::{self, Out, Positions, Refused, Transport};
use crate::ctx::Ctx;
use crate::http::PeerAddr;

/// Most frames one poll answers with.
pub const POLL_MAX_FRAMES: usize = 256;

/// Longest a poll waits for a frame.
pub const POLL_MAX_WAIT: Duration = Duration::from_secs(55);

const POLL_DEFAULT_WAIT: Duration = Duration::from_secs(25);

fn refusal(status: StatusCode, code: &str, reason: impl Into<String>) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "code": code, "reason": reason.into() })),
        status,
    )
    .into_response()
}

/// A stream or poll request's parameters.
struct Opening {
    /// Single-valued parameters (`token`, `client_id`, `session`, ...).
    single: HashMap<String, String>,
    subscribe: Vec<(String, Option<Since>)>,
    /// `filter` (JSON, as a `subscribe` frame's): for every channel.
    filter: Option<TagFilter>,
}

/// Reads `channel=` (repeatable) and the positions to resume from: `since`
/// or else the `Last-Event-ID` header. A channel without a position starts
/// live, or with its recent messages (`rewind`, `rewind_ms`).
/// A refusal is its HTTP answer.
/// The session's opening from its query string, or the refusal to answer.
fn opening(
    raw: &str,
    headers: &HeaderMap,
    ctx: &Ctx,
) -> Result<Opening, Box<warp::reply::Response>> {
    opening_of(raw, headers, ctx).map_err(|bad| {
        Box::new(refusal(
            bad.status,
            herald_proto::codes::BAD_FRAME,
            bad.reason,
        ))
    })
}

fn opening_of(raw: &str, headers: &HeaderMap, ctx: &Ctx) -> Result<Opening, BadQuery> {
    let bad = |reason: String| BadQuery {
        status: StatusCode::BAD_REQUEST,
        reason,
    };
    let crate::admission::Query { single, channels } = parse_query(
        raw,
        ctx.cfg.limits.max_query_bytes,
        ctx.cfg.limits.max_subscriptions,
    )?;
    let given = single.get("since").cloned().or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    });
    let mut positions: BTreeMap<String, Position> = match given {
        None => BTreeMap::new(),
        Some(text) => Positions::parse(&text).map_err(bad)?,
    };
    let cursor = single.get("durable").is_some_and(|v| v == "true");
    // `rewind` / `rewind_ms`: for the channels without a position (a first
    // connect rewinds; a reconnect with Last-Event-ID resumes).
    let number = |k: &str| -> Result<Option<i64>, _> {
        match single.get(k) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(bad(format!("`{k}` must be a number, 1 or more"))),
            },
        }
    };
    let rewind = match (number("rewind")?, number("rewind_ms")?) {
        (None, None) => None,
        (Some(n), None) if n as usize <= ctx.cfg.history_max_limit => Some(Rewind::Last(n as u32)),
        (Some(_), None) => {
            return Err(bad(format!(
                "`rewind` is at most {}",
                ctx.cfg.history_max_limit
            )))
        }
        (None, Some(ms)) => Some(Rewind::Age(ms)),
        (Some(_), Some(_)) => {
            return Err(bad("give at most one of `rewind` and `rewind_ms`".into()))
        }
    };
    let filter = match single.get("filter") {
        None => None,
        Some(text) => Some(
            serde_json::from_str::<FilterBody>(text)
                .map_err(|e| e.to_string())
                .and_then(TagFilter::from_body)
                .map_err(|e| bad(format!("bad `filter`: {e}")))?,
        ),
    };
    let subscribe = channels
        .into_iter()
        .map(|c| {
            let since = match positions.remove(&c) {
                Some(p) => Some(Since::Position(p)),
                None if cursor => Some(Since::Cursor),
                None => rewind.map(Since::Rewind),
            };
            (c, since)
        })
        .collect();
    Ok(Opening {
        single,
        subscribe,
        filter,
    })
}

async fn sse(
    o: Opening,
    headers: HeaderMap,
    ctx: Arc<Ctx>,
    remote: Option<SocketAddr>,
) -> warp::reply::Response {
    let admitted = match admit(&o.single, &headers, &ctx, remote).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let resumed: BTreeMap<String, Position> = o
        .subscribe
        .iter()
        .filter_map(|(c, s)| match s {
            Some(Since::Position(p)) => Some((c.clone(), p.clone())),
            _ => None,
        })
        .collect();
    let handle = session::start(ctx.clone(), admitted, o.subscribe, o.filter, Transport::Sse);
    let Some(rx) = handle.out.lock().await.take() else {
        return refusal(StatusCode::CONFLICT, "bad_frame", "session already read");
    };
    let hello = serde_json::json!({ "type": "session", "id": handle.id }).to_string();
    // `retry`: a browser's EventSource reconnects 1 s after the stream
    // breaks (Chromium's default is 3 s), with Last-Event-ID.
    let first = stream::once(async move {
        Ok::<_, Infallible>(
            warp::sse::Event::default()
                .retry(Duration::from_secs(1))
                .data(hello),
        )
    });
    let events = frames(rx, Positions::from(resumed), handle.clone());
    let keep = warp::sse::keep_alive()
        .interval(ctx.cfg.heartbeat.min(Duration::from_secs(15)))
        .text("");
    let reply = warp::sse::reply(keep.stream(futures_util::StreamExt::chain(first, events)));
    // nginx and some proxies buffer responses unless told not to.
    let reply = warp::reply::with_header(reply, "x-accel-buffering", "no");
    warp::reply::with_header(reply, "cache-control", "no-cache, no-transform").into_response()
}

/// The SSE events of a session's frames, ending with the session. Dropped
/// (the client went away), it ends the session.
fn frames(
    rx: tokio::sync::mpsc::Receiver<Out>,
    positions: Positions,
    handle: Arc<session::Handle>,
) -> impl Stream<Item = Result<warp::sse::Event, Infallible>> {
    struct State {
        rx: tokio::sync::mpsc::Receiver<Out>,
        positions: Positions,
        _gone: EndsSession,
    }
    struct EndsSession(Arc<session::Handle>);
    impl Drop for EndsSession {
        fn drop(&mut self) {
            self.0.stream_ended();
        }
    }
    let state = State {
        rx,
        positions,
        _gone: EndsSession(handle),
    };
    stream::unfold(state, |mut st| async move {
        let o = st.rx.recv().await?;
        let mut ev = warp::sse::Event::default();
        if st.positions.note(&o) {
            ev = ev.id(st.positions.id());
        }
        Some((Ok(ev.data(&*o.text)), st))
    })
}

async fn poll(
    o: Opening,
    headers: HeaderMap,
    ctx: Arc<Ctx>,
    remote: Option<SocketAddr>,
) -> warp::reply::Response {
    let wait = o
        .single
        .get("wait_ms")
        .and_then(|w| w.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(POLL_DEFAULT_WAIT)
        .min(POLL_MAX_WAIT);
    let (handle, wait) = match o.single.get("session") {
        Some(id) => match ctx.sessions.get(id) {
            Some(h) if h.transport == Transport::Poll => (h, wait),
            _ => {
                return refusal(
                    StatusCode::NOT_FOUND,
                    "unknown_session",
                    "no such session on this node (ended, or opened elsewhere): open a new one with since",
                )
            }
        },
        None => {
            let admitted = match admit(&o.single, &headers, &ctx, remote).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            // The opening poll answers at once: the client learns its
            // session id without waiting for a first frame.
            let h = session::start(ctx.clone(), admitted, o.subscribe, o.filter, Transport::Poll);
            (h, Duration::ZERO)
        }
    };
    let _poll = handle.poll_started();
    let Ok(mut out) = handle.out.try_lock() else {
        return refusal(
            StatusCode::CONFLICT,
            "poll_in_progress",
            "another poll of this session is waiting",
        );
    };
    let mut texts: Vec<herald_hub::Text> = Vec::new();
    let mut closed = false;
    if let Some(rx) = out.as_mut() {
        match tokio::time::timeout(wait, rx.recv()).await {
            Err(_) => {}
            Ok(None) => closed = true,
            Ok(Some(first)) => {
                texts.push(first.text);
                let mut bytes = texts[0].len();
                while texts.len() < POLL_MAX_FRAMES && bytes < ctx.cfg.limits.queue_bytes {
                    match rx.try_recv() {
                        Ok(o) => {
                            bytes += o.text.len();
                            texts.push(o.text);
                        }
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
        }
    } else {
        closed = true;
    }
    // The frames are JSON already: spliced in, not parsed again.
    let mut body = String::with_capacity(64 + texts.iter().map(|t| t.len() + 1).sum::<usize>());
    body.push_str(r#"{"session":"#);
    body.push_str(&serde_json::Value::from(handle.id.as_str()).to_string());
    body.push_str(r#","frames":["#);
    for (i, t) in texts.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(t);
    }
    body.push_str(r#"],"closed":"#);
    body.push_str(if closed { "true" } else { "false" });
    body.push('}');
    let reply = warp::reply::with_header(body, "content-type", "application/json");
    warp::reply::with_header(reply, "cache-control", "no-store").into_response()
}

async fn post(id: String, body: Bytes, ctx: Arc<Ctx>) -> warp::reply::Response {
    let Some(handle) = ctx.sessions.get(&id) else {
        return refusal(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no such session on this node (ended, or opened elsewhere)",
        );
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            herald_proto::codes::BAD_JSON,
            "the body must be UTF-8 JSON",
        );
    };
    match handle.send(text) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(Refused::Busy) => refusal(
            StatusCode::TOO_MANY_REQUESTS,
            herald_proto::codes::RATE_LIMITED,
            format!(
                "more than {} frames waiting in this session",
                session::INBOUND_FRAMES
            ),
        ),
        Err(Refused::Gone) => refusal(StatusCode::NOT_FOUND, "unknown_session", "session ended"),
    }
}

fn with_ctx(ctx: Arc<Ctx>) -> impl Filter<Extract = (Arc<Ctx>,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

/// `GET /sse`, `GET /poll`, `POST /session/{id}`, with CORS for the
/// configured origins (any when `server.allowed_origins` is empty).
pub fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let peer = warp::ext::optional::<PeerAddr>().map(|p: Option<PeerAddr>| p.map(|p| p.0));
    // `GET /sse` and `GET /poll`: the same parameters, one opening.
    let open = warp::get()
        .and(
            warp::path("sse")
                .map(|| true)
                .or(warp::path("poll").map(|| false))
                .unify(),
        )
        .and(warp::path::end())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(with_ctx(ctx.clone()))
        .and(peer)
        .then(
            |is_sse: bool, raw: String, headers: HeaderMap, ctx: Arc<Ctx>, remote| async move {
                let o = match opening(&raw, &headers, &ctx) {
                    Ok(o) => o,
                    Err(r) => return *r,
                };
                if is_sse {
                    sse(o, headers, ctx, remote).await
                } else {
                    poll(o, headers, ctx, remote).await
                }
            },
        );
    let limit = ctx.cfg.limits.max_frame_bytes as u64;
    let post = warp::post()
        .and(warp::path("session"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .and(with_ctx(ctx.clone()))
        .then(post);
    let mut cors = warp::cors()
        .allow_methods(["GET", "POST"])
        .allow_headers(["content-type", "last-event-id"]);
    cors = if ctx.cfg.allowed_origins.is_empty() {
        cors.allow_any_origin()
    } else {
        cors.allow_origins(ctx.cfg.allowed_origins.iter().map(String::as_str))
    };
    open.or(post).unify().with(cors).map(Reply::into_response)
}
