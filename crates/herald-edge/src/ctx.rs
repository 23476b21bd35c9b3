//! [`Ctx`], the state every connection and request of a node shares; a
//! connection's place under the connection limits; channel resolution.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use herald_hub::{ConnCommand, Hub, Outbound, Outbox, Publisher};
use herald_log::{CursorStore, Log};
use herald_proto::{codes, Channel};
use tokio::sync::watch;
use warp::http::StatusCode;

use crate::auth::Auth;
use crate::config::{EdgeConfig, NamespaceConfig};

/// Shared state of one edge node.
pub struct Ctx {
    pub cfg: EdgeConfig,
    /// The log: Kafka, or an in-memory log in tests.
    pub log: Arc<dyn Log>,
    pub hub: Arc<Hub>,
    /// The publish pipeline, with the node's dedup window.
    pub publisher: Arc<Publisher>,
    /// Durable cursors of this node's clients.
    pub cursors: Arc<CursorStore>,
    /// Token and API-key checks.
    pub auth: Arc<Auth>,
    /// namespace → Kafka topic.
    pub topics: HashMap<String, String>,
    /// namespace → its settings (access rules, limits).
    pub namespaces: HashMap<String, NamespaceConfig>,
    /// The node's shutdown: draining, then closing.
    pub shutdown: Shutdown,
    pub conns: Connections,
    pub frames: FrameCounters,
    pub readiness: Readiness,
    pub reads: ReadBudget,
    /// Authenticated connections by user, for admin commands.
    pub users: Users,
    /// The other nodes, and commands they all apply.
    pub cluster: crate::cluster::Cluster,
    /// Channel members on every node.
    pub presence: crate::presence::Presence,
    /// Calls to the application's backend.
    pub hooks: crate::hooks::Hooks,
    /// Webhook events this node writes.
    pub events: crate::webhooks::Events,
    /// Channel occupancy across the cluster (webhooks).
    pub occupancy: crate::webhooks::occupancy::Occupancy,
    /// Connections over HTTP (SSE, long-poll), by session id.
    pub sessions: crate::conn::session::Sessions,
    /// Wrong API keys per client address.
    pub api_failures: FailureBudgets,
}

/// Per client address, a budget of failures (wrong API keys) that refills
/// over a minute; addresses not seen for ten minutes are forgotten (at most
/// 100,000 remembered).
pub struct FailureBudgets {
    by_ip: moka::sync::Cache<IpAddr, Arc<FailureBudget>>,
}

impl Default for FailureBudgets {
    fn default() -> Self {
        FailureBudgets {
            by_ip: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
        }
    }
}

impl FailureBudgets {
    pub fn of(&self, ip: IpAddr) -> Arc<FailureBudget> {
        self.by_ip.get_with(ip, || {
            Arc::new(FailureBudget::new(crate::api::FAILED_KEYS_PER_MINUTE))
        })
    }
}

/// Failures allowed per minute, counted in one-minute windows:
/// [`FailureBudget::is_spent`] looks, [`FailureBudget::spend`] counts one.
pub struct FailureBudget {
    per_minute: u32,
    /// The current window's start and its failures.
    window: std::sync::Mutex<(std::time::Instant, u32)>,
}

impl FailureBudget {
    fn new(per_minute: u32) -> FailureBudget {
        FailureBudget {
            per_minute,
            window: std::sync::Mutex::new((std::time::Instant::now(), 0)),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, (std::time::Instant, u32)> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= std::time::Duration::from_secs(60) {
            *w = (std::time::Instant::now(), 0);
        }
        w
    }

    /// This window's failures are spent.
    pub fn is_spent(&self) -> bool {
        self.current().1 >= self.per_minute
    }

    pub fn spend(&self) {
        self.current().1 += 1;
    }
}

/// A node's shutdown, in two steps: [`Shutdown::drain`] (`/readyz` fails;
/// new connections, publishes and node heartbeats stop), then
/// [`Shutdown::close`] (every connection is told to finish and close).
pub struct Shutdown {
    draining: AtomicBool,
    closing: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            draining: AtomicBool::new(false),
            closing: watch::channel(false).0,
        }
    }
}

impl Shutdown {
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn close(&self) {
        self.drain();
        self.closing.send_replace(true);
    }

    /// A handle that resolves once [`Shutdown::close`] was called.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.closing.subscribe())
    }
}

/// Resolves once the node closes its connections.
pub struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    pub async fn closing(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// This node's authenticated connections by user (`sub`): what admin
/// commands (disconnect, unsubscribe) reach. Anonymous connections are not
/// listed (no user to name them by).
#[derive(Default)]
pub struct Users {
    by_sub: std::sync::Mutex<HashMap<String, Vec<(u64, Outbox)>>>,
}

/// How many connections a user must hold on a node before the node's
/// heartbeat names them, for `limit`: a quarter of it (at least 1). So a
/// user spread thin over N other nodes may exceed the limit by up to
/// N × (limit/4 - 1), plus what opens within one heartbeat interval.
pub fn heavy_threshold(limit: usize) -> usize {
    (limit / 4).max(1)
}

/// Most users a heartbeat names (the most connected first).
pub const HEAVY_USERS_MAX: usize = 10_000;

/// True when `sub` already holds `limits.max_connections_per_user`
/// connections: its connections here, plus those the other live nodes'
/// last heartbeats named. One check for every way a connection gets a user
/// (a token or hook at connect, an `auth` frame).
pub fn user_at_limit(ctx: &Ctx, sub: &str) -> bool {
    let limit = ctx.cfg.limits.max_connections_per_user;
    if limit == 0 {
        return false;
    }
    let n = ctx.users.count(sub) as u64 + ctx.cluster.remote_user_connections(sub);
    let full = n >= limit as u64;
    if full {
        metrics::counter!("herald_edge_connections_refused_total", "reason" => "max_connections_per_user")
            .increment(1);
    }
    full
}

impl Users {
    pub fn add(&self, sub: &str, conn: u64, outbox: &Outbox) {
        self.by_sub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sub.to_owned())
            .or_default()
            .push((conn, outbox.clone()));
    }

    pub fn remove(&self, sub: &str, conn: u64) {
        let mut by_sub = self.by_sub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = by_sub.get_mut(sub) {
            list.retain(|(id, _)| *id != conn);
            if list.is_empty() {
                by_sub.remove(sub);
            }
        }
    }

    /// Queues `command(conn id)` on each of `sub`'s connections (behind
    /// what is queued for it); returns how many took it. A connection whose
    /// queue is full is being cut as a slow consumer anyway.
    pub fn tell(&self, sub: &str, command: impl Fn(u64) -> Option<ConnCommand>) -> usize {
        let by_sub = self.by_sub.lock().unwrap_or_else(|p| p.into_inner());
        by_sub.get(sub).map_or(0, |list| {
            list.iter()
                .filter(|(id, outbox)| {
                    command(*id).is_some_and(|c| outbox.try_push(Outbound::Command(c)))
                })
                .count()
        })
    }

    /// `sub`'s connections on this node.
    pub fn count(&self, sub: &str) -> usize {
        let by_sub = self.by_sub.lock().unwrap_or_else(|p| p.into_inner());
        by_sub.get(sub).map_or(0, Vec::len)
    }

    /// The users with at least `min` connections here, at most `cap` of
    /// them (the most connected first): what a heartbeat tells the other
    /// nodes for their per-user limit.
    pub fn heavy(&self, min: usize, cap: usize) -> std::collections::BTreeMap<String, u32> {
        let by_sub = self.by_sub.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(&String, usize)> = by_sub
            .iter()
            .map(|(s, l)| (s, l.len()))
            .filter(|(_, n)| *n >= min)
            .collect();
        v.sort_unstable_by_key(|(_, n)| std::cmp::Reverse(*n));
        v.into_iter()
            .take(cap)
            .map(|(s, n)| (s.clone(), n as u32))
            .collect()
    }

    /// Queues `command` on every listed connection; returns how many took
    /// it.
    pub fn tell_all(&self, command: ConnCommand) -> usize {
        let by_sub = self.by_sub.lock().unwrap_or_else(|p| p.into_inner());
        by_sub
            .values()
            .flatten()
            .filter(|(_, outbox)| outbox.try_push(Outbound::Command(command.clone())))
            .count()
    }
}

/// How much of the node's read capacity each kind of optional read may take
/// at once, so that resumes of live clients are never queued behind them:
/// Kafka's pool serves 16 range reads at once, history pages may hold at
/// most 8 of them and cursor lookups 4 (retry scans have their own 4 in the
/// publish pipeline); catch-ups of resuming subscriptions are bounded per
/// connection instead ([`crate::conn`]: 4 at once).
pub struct ReadBudget {
    pub history: tokio::sync::Semaphore,
    pub lookups: tokio::sync::Semaphore,
}

impl Default for ReadBudget {
    fn default() -> Self {
        ReadBudget {
            history: tokio::sync::Semaphore::new(HISTORY_READS),
            lookups: tokio::sync::Semaphore::new(CURSOR_LOOKUPS),
        }
    }
}

/// History pages read at once per node.
pub const HISTORY_READS: usize = 8;
/// Cursor lookups (`since: "cursor"`) at once per node.
pub const CURSOR_LOOKUPS: usize = 4;

/// `/readyz`'s answer about the log, asked at most once per
/// [`Readiness::FOR`] however often the probe is hit (concurrent hits wait
/// for the one check in flight).
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl Readiness {
    /// How long an answer is reused.
    pub const FOR: std::time::Duration = std::time::Duration::from_secs(1);

    pub async fn check(&self, log: &dyn Log) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = &*last {
            if at.elapsed() < Self::FOR {
                return r.clone();
            }
        }
        let r = match tokio::time::timeout(std::time::Duration::from_secs(3), log.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("kafka unreachable: {e}")),
            Err(_) => Err("kafka unreachable: timed out".to_owned()),
        };
        *last = Some((std::time::Instant::now(), r.clone()));
        r
    }
}

/// The node's WebSocket connections, counted.
#[derive(Default)]
pub struct Connections {
    /// The next connection's id.
    pub next_id: AtomicU64,
    /// One clone per live connection; shutdown waits for the count to drop.
    pub live: Arc<()>,
    /// Open connections per client IP, for the per-IP limit.
    pub per_ip: std::sync::Mutex<HashMap<IpAddr, usize>>,
    /// Open connections on this node, for the global limit.
    pub open: AtomicUsize,
}

impl Connections {
    /// Connections still running (their tasks hold a clone of `live`).
    pub fn live(&self) -> usize {
        Arc::strong_count(&self.live) - 1
    }
}

/// Frame counters, registered once for every connection (a handle per
/// connection costs an allocation each).
pub struct FrameCounters {
    pub inbound: metrics::Counter,
    pub outbound: metrics::Counter,
}

impl Default for FrameCounters {
    fn default() -> Self {
        FrameCounters {
            inbound: metrics::counter!("herald_edge_frames_in_total"),
            outbound: metrics::counter!("herald_edge_frames_out_total"),
        }
    }
}

/// Why a channel name cannot be used: a code and a reason.
pub type Refusal = (&'static str, String);

impl Ctx {
    /// The channel, its namespace's settings and its topic, when the name is
    /// valid and its namespace configured (access rules are the caller's).
    pub fn resolve(&self, name: &str) -> Result<(Channel, &NamespaceConfig, &str), Refusal> {
        let channel = Channel::parse(name).map_err(|e| (codes::BAD_CHANNEL, e.to_string()))?;
        let found = self
            .namespaces
            .get(channel.namespace())
            .zip(self.topics.get(channel.namespace()));
        match found {
            Some((ns, topic)) => Ok((channel, ns, topic.as_str())),
            None => Err((
                codes::UNKNOWN_NAMESPACE,
                format!("namespace `{}` is not configured", channel.namespace()),
            )),
        }
    }

    /// The most bytes of `data` a publish to a namespace may carry.
    pub fn max_message_bytes(&self, ns: &NamespaceConfig) -> usize {
        ns.max_message_bytes
            .unwrap_or(self.cfg.limits.max_message_bytes)
    }
}

/// A connection's place under the connection limits, released on drop.
pub struct ConnSlot {
    ctx: Arc<Ctx>,
    ip: Option<IpAddr>,
}

impl ConnSlot {
    /// Takes a slot, or says which limit refuses it.
    pub(crate) fn acquire(
        ctx: &Arc<Ctx>,
        ip: Option<IpAddr>,
    ) -> Result<ConnSlot, (StatusCode, &'static str)> {
        let open = ctx.conns.open.fetch_add(1, Ordering::SeqCst);
        if open >= ctx.cfg.limits.max_connections {
            ctx.conns.open.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!("herald_edge_connections_refused_total", "reason" => "max_connections").increment(1);
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections on this node",
            ));
        }
        let ip = ip.map(crate::admission::limit_key);
        if let Some(ip) = ip {
            let mut per_ip = ctx.conns.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= ctx.cfg.limits.max_connections_per_ip {
                drop(per_ip);
                ctx.conns.open.fetch_sub(1, Ordering::SeqCst);
                metrics::counter!("herald_edge_connections_refused_total", "reason" => "max_connections_per_ip").increment(1);
                return Err((
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                ));
            }
            *n += 1;
        }
        Ok(ConnSlot {
            ctx: ctx.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.ctx.conns.open.fetch_sub(1, Ordering::SeqCst);
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .ctx
                .conns
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}
