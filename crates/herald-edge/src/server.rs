//! Start-up and graceful shutdown: topics, epochs, the hub, the tail, the
//! listeners; serving is [`crate::http`]'s, admission
//! [`crate::admission`]'s, the connections [`crate::conn`]'s.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_hub::{Dedup, Hub, HubConfig, Publisher};
use herald_log::{CursorStore, Kafka, Log, LogConfig, LogError, LogRead};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::auth::{AccessRule, Auth};
use crate::cluster::Cluster;
use crate::config::EdgeConfig;
use crate::ctx::{Connections, Ctx, FrameCounters, ReadBudget, Readiness, Users};
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
    /// `/metrics`, `/healthz`, `/readyz` only (`server.admin_listen`).
    admin: Option<TcpListener>,
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
        let mut ephemeral = Vec::new();
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
            if ns.ephemeral {
                let eph = log.config().ephemeral_topic_for(&ns.name);
                let n = log
                    .ensure_internal_topic(&eph, ns.partitions, EPHEMERAL_TOPIC_CONFIG)
                    .await
                    .step(|| format!("readying topic {eph} (namespace {})", ns.name))?;
                if n != ns.partitions {
                    return Err(EdgeError::Config(format!(
                        "namespace `{}`: its ephemeral topic {eph} has {n} partitions, the namespace {}; \
                         delete {eph} (it holds nothing kept) and start again",
                        ns.name, ns.partitions
                    )));
                }
                hub.register_ephemeral(&info.name, &eph)
                    .map_err(|e| EdgeError::Config(e.to_string()))?;
                ephemeral.push((eph, Arc::<str>::from(info.name.as_str())));
            }
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
        let revocations_topic = log.config().revocations_topic();
        log.ensure_internal_topic(&revocations_topic, 1, &[("cleanup.policy", "compact")])
            .await
            .step(|| format!("readying the revocations topic {revocations_topic}"))?;
        let webhooks = crate::webhooks::prepare(&*log, &cfg.webhooks)
            .await
            .map_err(|(topic, source)| EdgeError::Step {
                step: format!("readying the webhook topic {topic}"),
                source,
            })?;
        let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
        let (revocations_tx, revocations_rx) = tokio::sync::mpsc::unbounded_channel();
        let (occupancy_tx, occupancy_rx) = tokio::sync::mpsc::unbounded_channel();
        log.start_tail(Arc::new(Router {
            hub: hub.clone(),
            ephemeral,
            internal: vec![
                (control_topic, control_tx),
                (presence_topic, presence_tx),
                (revocations_topic.clone(), revocations_tx),
                (webhooks.occupancy.topic().to_owned(), occupancy_tx),
            ],
        }))?;
        let listener = listen(cfg.listen).map_err(|source| EdgeError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let admin = match cfg.admin_listen {
            Some(addr) => Some(listen(addr).map_err(|source| EdgeError::Bind { addr, source })?),
            None => None,
        };
        if cfg.allowed_origins.is_empty() {
            let cookies = cfg
                .hooks
                .forward_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case("cookie"));
            if cookies {
                warn!("server.allowed_origins is empty and the hooks forward cookies: any web page can open a connection with its visitors' cookies (cross-site WebSocket hijacking); list the origins of your application");
            } else {
                warn!("server.allowed_origins is empty: browsers on any web page may connect");
            }
        }
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
                shutdown: Default::default(),
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
                events: webhooks.events,
                occupancy: webhooks.occupancy,
                sessions: Default::default(),
                api_failures: Default::default(),
            }),
            listener,
            admin,
            metrics,
        }
        .join_cluster(Internal {
            control: control_rx,
            presence_partitions,
            presence: presence_rx,
            revocations_topic,
            revocations: revocations_rx,
            occupancy_partitions: webhooks.occupancy_partitions,
            occupancy: occupancy_rx,
            dead_topic: webhooks.dead_topic,
        })
        .await
    }

    async fn join_cluster(self, topics: Internal) -> Result<Edge, EdgeError> {
        let Internal {
            control,
            presence_partitions,
            presence,
            revocations_topic,
            revocations,
            occupancy_partitions,
            occupancy,
            dead_topic,
        } = topics;
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
        crate::revocations::start(
            self.ctx.clone(),
            revocations_topic.clone(),
            revocations,
            REVOCATIONS_READ_WITHIN,
        )
        .await
        .step(|| format!("reading the revocations topic {revocations_topic}"))?;
        if let Some(n) = occupancy_partitions {
            let topic = self.ctx.occupancy.topic().to_owned();
            crate::webhooks::occupancy::Occupancy::start(self.ctx.clone(), n, occupancy)
                .await
                .step(|| format!("reading the occupancy topic {topic}"))?;
        }
        crate::webhooks::deliver::start(&self.ctx, dead_topic);
        Ok(self)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
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
            tokio::spawn(remote.clone().run(ctx.shutdown.signal()));
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.map(|listener| {
            tokio::spawn(crate::http::serve_admin(
                ctx.clone(),
                self.metrics.clone(),
                listener,
                async move {
                    let _ = admin_stopped.await;
                },
            ))
        });
        let server = tokio::spawn(crate::http::serve_http(
            ctx.clone(),
            self.metrics,
            self.listener,
            stop_rx,
        ));

        shutdown.await;
        info!("Shutting down: refusing new connections, closing live ones");
        ctx.shutdown.drain();
        // Readiness fails first; load balancers get a moment to notice.
        if ctx.conns.live() > 0 {
            tokio::time::sleep(ctx.cfg.drain_delay).await;
        }
        ctx.shutdown.close();
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
        let _ = admin_stop.send(());
        if let Some(admin) = admin {
            let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
        }
        upkeep.abort();
        info!("Shutdown complete");
    }
}

/// The listening socket. `TCP_NODELAY` is set on it because accepted
/// sockets inherit it (Linux) and warp offers no hook to set it per
/// connection: without it, small frames (a message, an ack) wait for
/// Nagle's algorithm and the peer's delayed ACK, tens of milliseconds each
/// (docs/benchmarks.md, P1).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
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

/// How long a starting node may take to read the revocations written
/// before it started (it serves no one until it has).
const REVOCATIONS_READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

type Records = tokio::sync::mpsc::UnboundedReceiver<herald_log::Record>;

/// What the tail routes to the tasks of herald's internal topics.
struct Internal {
    control: Records,
    presence_partitions: i32,
    presence: Records,
    revocations_topic: String,
    revocations: Records,
    occupancy_partitions: Option<i32>,
    occupancy: Records,
    dead_topic: String,
}

/// The tail's records: each internal topic's (control, presence,
/// revocations, webhook occupancy) to its task, every other record to the hub.
struct Router {
    hub: Arc<Hub>,
    /// (ephemeral topic, its namespace's topic).
    ephemeral: Vec<(String, Arc<str>)>,
    internal: Vec<(
        String,
        tokio::sync::mpsc::UnboundedSender<herald_log::Record>,
    )>,
}

impl herald_log::RecordSink for Router {
    fn on_record(&self, record: herald_log::Record) {
        if let Some((_, task)) = self.internal.iter().find(|(t, _)| **t == *record.topic) {
            let _ = task.send(record);
        } else if let Some((_, ns)) = self.ephemeral.iter().find(|(t, _)| **t == *record.topic) {
            self.hub.on_ephemeral(ns, &record);
        } else {
            self.hub.on_record(record);
        }
    }
}

/// A namespace's ephemeral topic: kept a minute (a segment rolls each
/// minute, so retention can delete it), nothing compacted.
const EPHEMERAL_TOPIC_CONFIG: &[(&str, &str)] = &[
    ("retention.ms", "60000"),
    ("segment.ms", "60000"),
    ("cleanup.policy", "delete"),
];
