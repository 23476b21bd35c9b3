//! Start-up, routes and graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_hub::{Dedup, Hub, HubConfig, Publisher};
use herald_log::{CursorStore, Kafka, Log, LogConfig, LogError, LogRead};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{info, warn, Instrument};
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Reply};

use crate::auth::{AccessRule, Auth};
use crate::cluster::Cluster;
use crate::config::EdgeConfig;
use crate::ctx::{ConnSlot, Connections, Ctx, FrameCounters, ReadBudget, Readiness, Users};
use crate::hooks::{Hook, Verdict};
use crate::presence::{Presence, PRESENCE_PARTITIONS};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    /// A start-up step that failed, named so an operator knows which topic
    /// or partition to look at.
    #[error("{step}: {source}")]
    Step { step: String, source: LogError },
}

/// Names the start-up step a [`LogError`] came from.
trait StepContext<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, EdgeError>;
}

impl<T> StepContext<T> for Result<T, LogError> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, EdgeError> {
        self.map_err(|source| EdgeError::Step {
            step: step(),
            source,
        })
    }
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// A started edge node, bound to its address and ready to serve.
pub struct Edge {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    metrics: PrometheusHandle,
}

impl Edge {
    /// Connects to Kafka, makes sure every namespace's topic exists (recording
    /// its epoch), starts the tail and binds the listener.
    pub async fn start(
        cfg: EdgeConfig,
        log_cfg: LogConfig,
        auth: Auth,
        metrics: PrometheusHandle,
    ) -> Result<Edge, EdgeError> {
        if cfg.namespaces.is_empty() {
            return Err(EdgeError::Config("at least one namespace is needed".into()));
        }
        let kafka = Kafka::connect(log_cfg)?;
        // A broker that is still starting (or busy) gets a few chances.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match kafka.ping().await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    warn!(%e, "Kafka not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Edge::with_log(cfg, kafka, auth, metrics).await
    }

    /// [`Edge::start`] on a log the caller connected: Kafka, or an in-memory
    /// log ([`herald_log::memory::MemLog`]) for tests without a broker.
    pub async fn with_log(
        cfg: EdgeConfig,
        log: Arc<dyn Log>,
        auth: Auth,
        metrics: PrometheusHandle,
    ) -> Result<Edge, EdgeError> {
        if cfg.namespaces.is_empty() {
            return Err(EdgeError::Config("at least one namespace is needed".into()));
        }
        let needs_tokens = cfg.namespaces.iter().any(|n| {
            [n.subscribe, n.publish, n.history]
                .iter()
                .any(|r| matches!(r, AccessRule::Grant | AccessRule::Owner))
        });
        if needs_tokens && !auth.accepts_tokens() {
            warn!("A namespace needs token grants or owners but no token key is configured (auth.*): nobody can use it over WebSocket");
        }
        let reader: Arc<dyn LogRead> = log.clone();
        let hub = Hub::new(
            reader,
            HubConfig {
                recent_messages: cfg.recent_messages,
                recent_bytes: cfg.recent_bytes,
                ..HubConfig::default()
            },
        );
        if let Some(grace) = cfg.follow_grace {
            hub.spawn_retirement(grace);
        }
        let mut topics = HashMap::new();
        for ns in &cfg.namespaces {
            let topic = log.config().topic_for(&ns.name);
            let retention = ns.retention_ms.map(|r| r.to_string());
            let mut topic_cfg = Vec::new();
            if let Some(r) = &retention {
                topic_cfg.push(("retention.ms", r.as_str()));
            }
            let info = log
                .ensure_topic(&topic, ns.partitions, &topic_cfg)
                .await
                .step(|| format!("readying topic {topic} (namespace {})", ns.name))?;
            if info.partitions != ns.partitions {
                return Err(EdgeError::Config(format!(
                    "namespace `{}`: topic {} has {} partitions but the configuration says {}; \
                     set the namespace's partitions to {} (a channel's partition depends on the count)",
                    ns.name, info.name, info.partitions, ns.partitions, info.partitions
                )));
            }
            info!(
                namespace = %ns.name,
                topic = %info.name,
                partitions = info.partitions,
                epoch = %info.epoch,
                created = info.created,
                "Namespace ready"
            );
            hub.register_topic(&info.name, &info.epoch, info.partitions);
            topics.insert(ns.name.clone(), info.name);
        }
        // In the background: a start never waits for it (a partition
        // without a leader would hold it for the request timeout), and a
        // resume that comes first connects its own reader, as before.
        let topic_names: Vec<String> = topics.values().cloned().collect();
        let preparing = log.clone();
        tokio::spawn(async move {
            if let Err(e) = preparing.prepare_reads(&topic_names).await {
                // Only the first resumes are slower: they connect their own.
                metrics::counter!("herald_log_errors_total", "op" => "prepare_reads").increment(1);
                warn!(%e, "Could not ready the range readers");
            }
        });
        let cursors = CursorStore::open(
            log.clone(),
            cfg.cursor_partitions,
            cfg.cursor_cache_capacity,
        )
        .await
        .step(|| format!("readying the cursor topic {}", log.config().cursor_topic()))?;
        cursors.spawn_flusher(cfg.cursor_flush_interval);
        let control_topic = log.config().control_topic();
        log.ensure_internal_topic(
            &control_topic,
            1,
            &[("retention.ms", "3600000"), ("cleanup.policy", "delete")],
        )
        .await
        .step(|| format!("readying the control topic {control_topic}"))?;
        let cluster = Cluster::new(
            control_topic.clone(),
            cfg.node_heartbeat,
            cfg.command_timeout,
        );
        let presence_topic = log.config().presence_topic();
        let presence_partitions = log
            .ensure_internal_topic(
                &presence_topic,
                PRESENCE_PARTITIONS,
                &[("cleanup.policy", "compact")],
            )
            .await
            .step(|| format!("readying the presence topic {presence_topic}"))?;
        let join_leave = cfg
            .namespaces
            .iter()
            .filter(|n| n.join_leave)
            .map(|n| n.name.clone())
            .collect();
        let presence = Presence::new(presence_topic.clone(), join_leave);
        let hooks = crate::hooks::Hooks::new(cfg.hooks.clone());
        let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
        log.start_tail(Arc::new(Router {
            hub: hub.clone(),
            control_topic,
            control: control_tx,
            presence_topic,
            presence: presence_tx,
        }))?;
        let listener = listen(cfg.listen).map_err(|source| EdgeError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let publisher = Publisher::new(
            log.clone(),
            Dedup::new(cfg.dedup_window, cfg.dedup_capacity),
            log.config().publish_timeout,
        );
        let namespaces = cfg
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), n.clone()))
            .collect();
        let (shutdown, _) = watch::channel(false);
        Edge {
            ctx: Arc::new(Ctx {
                cfg,
                log,
                hub,
                publisher,
                cursors,
                auth: Arc::new(auth),
                namespaces,
                topics,
                shutting_down: AtomicBool::new(false),
                shutdown,
                conns: Connections {
                    next_id: AtomicU64::new(1),
                    ..Connections::default()
                },
                frames: FrameCounters::default(),
                readiness: Readiness::default(),
                reads: ReadBudget::default(),
                users: Users::default(),
                cluster,
                presence,
                hooks,
                sessions: Default::default(),
            }),
            listener,
            metrics,
        }
        .join_cluster(control_rx, presence_partitions, presence_rx)
        .await
    }

    async fn join_cluster(
        self,
        control: tokio::sync::mpsc::UnboundedReceiver<herald_log::Record>,
        presence_partitions: i32,
        presence: tokio::sync::mpsc::UnboundedReceiver<herald_log::Record>,
    ) -> Result<Edge, EdgeError> {
        let address = self
            .listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        Cluster::start(self.ctx.clone(), address, control)
            .await
            .step(|| format!("following the control topic {}", self.ctx.cluster.topic()))?;
        Presence::start(self.ctx.clone(), presence_partitions, presence)
            .await
            .step(|| format!("reading the presence topic {}", self.ctx.presence.topic()))?;
        Ok(self)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: readiness
    /// fails, connections finish their in-flight publishes and close with
    /// 1001, the producer is flushed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let ctx = self.ctx.clone();
        // The recorder keeps every histogram sample until upkeep drains it
        // into the buckets; `install_recorder` leaves that to the caller.
        // Without it a node nobody scrapes grows by 8 bytes per publish and
        // per tailed record, and the next scrape drains it all at once.
        // The same task drops dedup keys that outlived the window on a node
        // that no longer receives publishes, and reports the window's size.
        let upkeep = {
            let handle = self.metrics.clone();
            let dedup = ctx.publisher.dedup().clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(METRICS_UPKEEP);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let entries = metrics::gauge!("herald_dedup_entries");
                loop {
                    every.tick().await;
                    handle.run_upkeep();
                    entries.set(dedup.upkeep() as f64);
                }
            })
        };
        // Token keys from a JWKS URL: fetched now and every refresh
        // interval until shutdown.
        if let Some(remote) = ctx.auth.remote_jwks() {
            tokio::spawn(remote.clone().run(ctx.shutdown.subscribe()));
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(
            ctx.clone(),
            self.metrics,
            self.listener,
            stop_rx,
        ));

        shutdown.await;
        info!("Shutting down: refusing new connections, closing live ones");
        ctx.shutting_down.store(true, Ordering::SeqCst);
        // Readiness fails first; load balancers get a moment to notice.
        if ctx.conns.live() > 0 {
            tokio::time::sleep(ctx.cfg.drain_delay).await;
        }
        ctx.shutdown.send_replace(true);
        let _ = stop_tx.send(());

        let deadline = Instant::now() + ctx.cfg.shutdown_grace;
        while ctx.conns.live() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = ctx.conns.live();
        if left > 0 {
            warn!(
                connections = left,
                "Shutdown grace over with connections still open"
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ctx.cluster.leave(&ctx)).await;
        // Acks taken until the last connection closed become durable now.
        match tokio::time::timeout(Duration::from_secs(5), ctx.cursors.flush()).await {
            Ok(Ok(n)) => info!(cursors = n, "Cursors committed at shutdown"),
            Ok(Err(e)) => warn!(%e, "Cursor commit at shutdown failed"),
            Err(_) => warn!("Cursor commit at shutdown timed out"),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = ctx.log.flush(remaining.max(Duration::from_millis(100))) {
            warn!(%e, "Producer flush incomplete at shutdown");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
        upkeep.abort();
        info!("Shutdown complete");
    }
}

/// The WebSocket handshake (RFC 6455 section 4.2), done here rather than by
/// warp's `ws()` filter so the connection gets herald's own tungstenite
/// configuration: warp cannot set the read buffer, and tungstenite's default
/// preallocates 128 KiB per connection.
async fn upgrade(
    query: HashMap<String, String>,
    headers: HeaderMap,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ctx: Arc<Ctx>,
    remote: Option<SocketAddr>,
) -> warp::reply::Response {
    let status =
        |code: StatusCode, text: &'static str| warp::reply::with_status(text, code).into_response();
    if ctx.shutting_down.load(Ordering::SeqCst) {
        return status(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
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
    let Admitted {
        client_id,
        identity,
        slot,
        hook_headers,
    } = match admit(&query, &headers, &ctx, remote).await {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    let accept = derive_accept_key(key.as_bytes());
    let config = WebSocketConfig::default()
        .read_buffer_size(ctx.cfg.read_buffer_bytes)
        .max_message_size(Some(ctx.cfg.max_frame_bytes))
        .max_frame_size(Some(ctx.cfg.max_frame_bytes));
    tokio::spawn(crate::conn::run(Box::new(crate::conn::Accepted {
        on_upgrade,
        config,
        ctx,
        remote,
        client_id,
        identity,
        slot,
        hook_headers,
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
    if ctx.shutting_down.load(Ordering::SeqCst) {
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
        if client_id.as_ref().is_some_and(|c| *c != id.sub) {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "client_id must equal the token's sub (or be left out)",
            ));
        }
        client_id = Some(id.sub.clone());
        metrics::counter!("herald_auth_total", "kind" => "connect").increment(1);
    } else if let Some(c) = client_id.take() {
        client_id = Some(format!("{}{c}", crate::auth::ANONYMOUS_CLIENT_PREFIX));
    }
    let client_ip = remote.map(|a| client_ip(a.ip(), headers, &ctx.cfg.trusted_proxies));
    let slot = match ConnSlot::acquire(ctx, client_ip) {
        Ok(s) => s,
        Err((code, text)) => return Err(status(code, text)),
    };
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
                            client_id = Some(id.sub.clone());
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
    Ok(Admitted {
        client_id,
        identity,
        slot,
        hook_headers,
    })
}

/// The listening socket. `TCP_NODELAY` is set on it because accepted
/// sockets inherit it (Linux) and warp offers no hook to set it per
/// connection: without it, small frames (a message, an ack) wait for
/// Nagle's algorithm and the peer's delayed ACK, tens of milliseconds each
/// (docs/benchmarks.md, P1).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
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

/// A client id names the owner of durable cursors. Until connection auth
/// exists it is the client's own claim (`/ws?client_id=...`).
pub fn valid_client_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@=+-".contains(&b))
}

/// The tail's records: the control topic's to the cluster task, the rest to
/// the hub.
struct Router {
    hub: Arc<Hub>,
    control_topic: String,
    control: tokio::sync::mpsc::UnboundedSender<herald_log::Record>,
    presence_topic: String,
    presence: tokio::sync::mpsc::UnboundedSender<herald_log::Record>,
}

impl herald_log::RecordSink for Router {
    fn on_record(&self, record: herald_log::Record) {
        if *record.topic == *self.control_topic {
            let _ = self.control.send(record);
        } else if *record.topic == *self.presence_topic {
            let _ = self.presence.send(record);
        } else {
            self.hub.on_record(record);
        }
    }
}

/// The TCP peer of a request, put in its extensions by [`serve_http`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// The id of an HTTP request: the client's `X-Request-Id` when it is a
/// plausible id (1 to 128 characters of `A-Za-z0-9._:-`), else a new UUID.
/// Answered in `X-Request-Id` and carried by every log line of the request.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// HTTP connections (plain requests and WebSocket handshakes) open at once
/// beyond `max_connections`: what a node accepts before any WebSocket limit
/// applies.
const PENDING_HEADROOM: usize = 1024;

/// The HTTP server: warp's routes served by hyper, with what warp's own
/// loop does not offer: a time limit on reading a request's headers
/// (`server.header_read_timeout_secs`; a socket that drips headers is
/// closed), and a cap on HTTP connections open at once (those not yet
/// upgraded to WebSockets, which have their own limits). Stops accepting
/// when `stop` fires, then gives open requests a second to finish.
async fn serve_http(
    ctx: Arc<Ctx>,
    metrics: PrometheusHandle,
    listener: TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let service = warp::service(routes(ctx.clone(), metrics));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(
        ctx.cfg.max_connections.saturating_add(PENDING_HEADROOM),
    ));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    warn!(%e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("herald_edge_connections_refused_total", "reason" => "http_connections")
                .increment(1);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(service.clone());
        let svc = hyper::service::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                let id = request_id(req.headers());
                let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
                let answer = hyper::service::Service::call(&svc, req);
                async move {
                    let mut resp = answer.await?;
                    if let Ok(v) = warp::http::HeaderValue::from_str(&id) {
                        resp.headers_mut().insert("x-request-id", v);
                    }
                    Ok::<_, Infallible>(resp)
                }
                .instrument(span)
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}

fn with_ctx(ctx: Arc<Ctx>) -> impl Filter<Extract = (Arc<Ctx>,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

fn routes(
    ctx: Arc<Ctx>,
    metrics: PrometheusHandle,
) -> impl Filter<Extract = (impl Reply,), Error = warp::Rejection> + Clone {
    let ctx_api = ctx.clone();
    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<hyper::upgrade::OnUpgrade>())
        .and(with_ctx(ctx.clone()))
        .and(warp::ext::optional::<PeerAddr>().map(|p: Option<PeerAddr>| p.map(|p| p.0)))
        .then(upgrade);

    let healthz = warp::path("healthz").and(warp::path::end()).map(|| "ok");

    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(with_ctx(ctx))
        .then(|ctx: Arc<Ctx>| async move {
            if ctx.shutting_down.load(Ordering::SeqCst) {
                return warp::reply::with_status(
                    "shutting down".to_string(),
                    StatusCode::SERVICE_UNAVAILABLE,
                );
            }
            match ctx.readiness.check(&*ctx.log).await {
                Ok(()) => warp::reply::with_status("ready".to_string(), StatusCode::OK),
                Err(why) => warp::reply::with_status(why, StatusCode::SERVICE_UNAVAILABLE),
            }
        });

    let metrics = warp::path("metrics").and(warp::path::end()).map(move || {
        warp::reply::with_header(
            metrics.render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
    });

    let fallback = crate::fallback::routes(ctx_api.clone());
    // The demo: static files, only when configured.
    let demo_dir = ctx_api.cfg.demo_dir.clone();
    let demo_on = demo_dir.is_some();
    let demo = warp::path("demo")
        .and(warp::any().and_then(move || async move {
            if demo_on {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        }))
        .untuple_one()
        .and(warp::fs::dir(demo_dir.unwrap_or_default()));
    let api = crate::api::routes(ctx_api);
    warp::get()
        .and(ws.or(healthz).or(readyz).or(metrics).or(demo))
        .map(|r| Box::new(r) as Box<dyn Reply>)
        .or(fallback.map(|r| Box::new(r) as Box<dyn Reply>))
        .unify()
        .or(api.map(|r| Box::new(r) as Box<dyn Reply>))
        .unify()
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
