//! The subscription index, live dispatch and the resume hand-off.
//!
//! One [`Partition`] per Kafka topic-partition that a local subscriber needs.
//! It holds, under one mutex:
//! - `next_offset`: every record below it has been dispatched live;
//! - `recent`: the newest messages of the partition (bounded by count and
//!   bytes), complete from offset `recent_from` up to `next_offset`;
//! - `subs`: channel → subscribers, each with the last `seq` it was handed.
//!
//! Resume (`since = s`): while `s + 1 < next_offset`, copy what is missing from
//! `recent` (when it reaches back to `s + 1`) or read it from Kafka, then look
//! again; once nothing is missing, register under the same lock that live
//! dispatch takes. So no message is skipped at the hand-off, and none is
//! handed twice (a subscriber's `last_seq` filters anything already sent).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use herald_log::{LogRead, Record, RecordSink};
use herald_proto::{partition::partition_for_key, Position, ServerFrame};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::delivery::Delivery;
use crate::outbox::{Outbound, Outbox};
use crate::HubError;

/// Tuning of the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Messages kept per partition for fast resume.
    pub recent_messages: usize,
    /// Bytes of serialised messages kept per partition for fast resume.
    pub recent_bytes: usize,
    /// Records per Kafka read during a catch-up.
    pub catchup_batch: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            recent_messages: 10_000,
            recent_bytes: 8 << 20,
            catchup_batch: 1_000,
        }
    }
}

struct Sub {
    outbox: Outbox,
    /// Last seq handed to this subscriber on this channel.
    last_seq: i64,
}

struct PartState {
    next_offset: i64,
    recent: VecDeque<Arc<Delivery>>,
    recent_from: i64,
    recent_bytes: usize,
    /// The offset the tail started from: the ring's start until it is
    /// filled back from the log ([`Hub::start_fill`]) or evicts.
    follow_from: i64,
    subs: HashMap<Arc<str>, Vec<Sub>>,
    /// Subscribes under way (between finding the partition and
    /// registering); the partition is not retired while any is.
    entering: usize,
    /// Since when the partition has had no subscriber (seen by a sweep).
    idle_since: Option<Instant>,
}

struct Partition {
    topic: Arc<str>,
    partition: i32,
    epoch: Arc<str>,
    started: OnceCell<()>,
    /// The ring's fill back from the log, once per start of the partition
    /// ([`Hub::start_fill`]), and what it has read so far for the resumes
    /// waiting on it.
    feed: FillFeed,
    state: Mutex<PartState>,
}

/// The pieces a ring fill has decoded so far, in offset order: the resumes
/// waiting on the fill are handed each piece as it is decoded, instead of
/// all of it after the whole fill (docs/benchmarks.md, P4 cold). Emptied
/// when the fill ends.
#[derive(Default)]
struct FillFeed {
    state: Mutex<FeedState>,
    /// Wakes the resumes waiting on the fill: a piece, the log start, or
    /// the end.
    more: tokio::sync::Notify,
}

#[derive(Default)]
struct FeedState {
    pieces: Vec<Arc<FillPiece>>,
    phase: FillPhase,
    /// The log start as the fill's first read found it: a resume on the
    /// cold partition checks its position against it instead of asking
    /// Kafka itself.
    low: Option<i64>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum FillPhase {
    #[default]
    NotStarted,
    Running,
    /// Filled, or tried: what the ring lacks now comes from the log.
    Done,
}

/// Every record of offsets `[from, to)` that decoded (a record that did not
/// is skipped, as by the tail).
struct FillPiece {
    from: i64,
    to: i64,
    items: Vec<Arc<Delivery>>,
}

impl FillFeed {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_done(&self) -> bool {
        self.lock().phase == FillPhase::Done
    }

    /// True for the one caller that is to run the fill.
    fn begin(&self) -> bool {
        let mut st = self.lock();
        let first = st.phase == FillPhase::NotStarted;
        if first {
            st.phase = FillPhase::Running;
        }
        first
    }

    fn set_low(&self, low: i64) {
        self.lock().low = Some(low);
        self.more.notify_waiters();
    }

    fn publish(&self, piece: FillPiece) {
        self.lock().pieces.push(Arc::new(piece));
        self.more.notify_waiters();
    }

    fn finish(&self) {
        let mut st = self.lock();
        st.pieces = Vec::new();
        st.phase = FillPhase::Done;
        drop(st);
        self.more.notify_waiters();
    }

    /// Waits until `ready` says something of the state (`Some`).
    async fn wait<T>(&self, mut ready: impl FnMut(&FeedState) -> Option<T>) -> T {
        loop {
            let more = self.more.notified();
            tokio::pin!(more);
            // Registered before looking, so a wake-up in between is kept.
            more.as_mut().enable();
            if let Some(v) = ready(&self.lock()) {
                return v;
            }
            more.await;
        }
    }
}

/// Ends a fill's feed however the fill ends (a panic included): the
/// resumes waiting on it go on from the ring or the log.
struct FeedDone<'a>(&'a FillFeed);

impl Drop for FeedDone<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

impl Partition {
    fn lock(&self) -> MutexGuard<'_, PartState> {
        // A panic while holding this lock would be a bug; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct TopicMeta {
    epoch: Arc<str>,
    partitions: i32,
}

enum Step {
    Live,
    FillRing,
    FromCache(Vec<Arc<Delivery>>, i64),
    FromLog(i64),
}

/// What a subscribe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOutcome {
    pub position: Position,
    pub recovered: bool,
    /// Messages handed over from history before going live.
    pub caught_up: u64,
}

/// (topic, partition).
type PartitionKey = (Arc<str>, i32);

/// A partition a subscribe is using: while this lives, the partition is not
/// retired (see [`Hub::retire_idle`]).
struct Entered(Arc<Partition>);

impl std::ops::Deref for Entered {
    type Target = Partition;
    fn deref(&self) -> &Partition {
        &self.0
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.lock().entering -= 1;
    }
}

/// The fan-out hub of one node.
pub struct Hub {
    log: Arc<dyn LogRead>,
    cfg: HubConfig,
    topics: RwLock<HashMap<String, TopicMeta>>,
    parts: Mutex<HashMap<PartitionKey, Arc<Partition>>>,
}

impl Hub {
    pub fn new(log: Arc<dyn LogRead>, cfg: HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            log,
            cfg,
            topics: RwLock::new(HashMap::new()),
            parts: Mutex::new(HashMap::new()),
        })
    }

    /// Makes a topic known: its epoch and partition count.
    pub fn register_topic(&self, topic: &str, epoch: &str, partitions: i32) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                topic.to_owned(),
                TopicMeta {
                    epoch: Arc::from(epoch),
                    partitions,
                },
            );
    }

    fn topic(&self, topic: &str) -> Result<TopicMeta, HubError> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
            .ok_or_else(|| HubError::UnknownTopic(topic.to_owned()))
    }

    /// The partition `channel` lives in.
    pub fn partition_of(&self, topic: &str, channel: &str) -> Result<i32, HubError> {
        Ok(partition_for_key(
            channel.as_bytes(),
            self.topic(topic)?.partitions,
        ))
    }

    /// The epoch of a topic.
    pub fn epoch(&self, topic: &str) -> Result<Arc<str>, HubError> {
        Ok(self.topic(topic)?.epoch)
    }

    /// The partition (created on first use), counted as entered: it is not
    /// retired until the returned guard is dropped.
    fn enter(&self, topic: &str, partition: i32) -> Result<Entered, HubError> {
        let meta = self.topic(topic)?;
        // Counted under the map lock, which the sweep holds too: a partition
        // the sweep retires was not handed to anyone.
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let t: Arc<str> = Arc::from(topic);
        let p = parts
            .entry((t.clone(), partition))
            .or_insert_with(|| {
                Arc::new(Partition {
                    topic: t,
                    partition,
                    epoch: meta.epoch,
                    started: OnceCell::new(),
                    feed: FillFeed::default(),
                    state: Mutex::new(PartState {
                        next_offset: 0,
                        recent: VecDeque::new(),
                        recent_from: 0,
                        recent_bytes: 0,
                        follow_from: 0,
                        subs: HashMap::new(),
                        entering: 0,
                        idle_since: None,
                    }),
                })
            })
            .clone();
        p.lock().entering += 1;
        Ok(Entered(p))
    }

    /// The partition, tailed from the current high watermark on first use.
    async fn started(&self, topic: &str, partition: i32) -> Result<Entered, HubError> {
        let p = self.enter(topic, partition)?;
        p.started
            .get_or_try_init(|| async {
                let wm = self.log.watermarks(topic, partition).await?;
                {
                    let mut st = p.lock();
                    st.next_offset = wm.high;
                    st.recent_from = wm.high;
                    st.follow_from = wm.high;
                }
                self.log.follow(topic, partition, wm.high)?;
                Ok::<(), HubError>(())
            })
            .await?;
        Ok(p)
    }

    /// Subscribes `outbox` to `channel` of `topic`, sending the `subscribed`
    /// reply, then (when resuming) every message after `since`, then live
    /// messages. Returns once the subscription is live.
    pub async fn subscribe(
        &self,
        outbox: &Outbox,
        topic: &str,
        channel: &str,
        since: Option<&Position>,
    ) -> Result<SubscribeOutcome, HubError> {
        let never = std::sync::atomic::AtomicBool::new(false);
        self.subscribe_until(outbox, topic, channel, since, false, &never)
            .await
    }

    /// [`Hub::subscribe`] that registers nothing once `cancelled` is set:
    /// the flag is checked under the partition lock at registration, so a
    /// caller that sets it and then calls [`Hub::unsubscribe`] leaves no
    /// registration behind, however the two race (`Closed` is returned).
    /// `auto` marks the reply as the server's own subscription (a personal
    /// channel): only ever live.
    pub async fn subscribe_until(
        &self,
        outbox: &Outbox,
        topic: &str,
        channel: &str,
        since: Option<&Position>,
        auto: bool,
        cancelled: &std::sync::atomic::AtomicBool,
    ) -> Result<SubscribeOutcome, HubError> {
        use std::sync::atomic::Ordering;
        let began = std::time::Instant::now();
        let partition = self.partition_of(topic, channel)?;
        let entered = self.started(topic, partition).await?;
        let part: &Partition = &entered;
        let chan: Arc<str> = Arc::from(channel);
        let epoch = part.epoch.to_string();

        let start = match since {
            Some(pos) if pos.epoch == epoch => self.check_position(&entered.0, pos.seq).await?,
            _ => None,
        };
        let Some(mut s) = start else {
            // Live from now. The reply and the registration happen under the
            // lock so the position is exactly where live delivery starts.
            let mut st = part.lock();
            if cancelled.load(Ordering::Acquire) {
                return Err(HubError::Closed);
            }
            let position = Position {
                seq: st.next_offset - 1,
                epoch,
            };
            let reply = ServerFrame::Subscribed {
                channel: channel.to_owned(),
                position: position.clone(),
                recovered: false,
                auto,
            };
            if !outbox.try_push(Outbound::Frame(reply.to_json())) {
                return Err(HubError::SlowConsumer);
            }
            st.subs.entry(chan).or_default().push(Sub {
                outbox: outbox.clone(),
                last_seq: position.seq,
            });
            drop(st);
            if since.is_some() {
                metrics::counter!("herald_hub_resume_total", "outcome" => "not_recovered")
                    .increment(1);
            }
            metrics::gauge!("herald_hub_subscriptions").increment(1.0);
            return Ok(SubscribeOutcome {
                position,
                recovered: false,
                caught_up: 0,
            });
        };

        let position = Position {
            seq: part.lock().next_offset - 1,
            epoch,
        };
        let reply = ServerFrame::Subscribed {
            channel: channel.to_owned(),
            position: position.clone(),
            recovered: true,
            auto: false,
        };
        if !outbox.push(Outbound::Frame(reply.to_json())).await {
            return Err(HubError::Closed);
        }

        let mut caught_up = 0u64;
        let mut from_log = false;
        loop {
            // Decide under the lock; anything that waits happens after it.
            let step = {
                let mut st = part.lock();
                if cancelled.load(Ordering::Acquire) {
                    return Err(HubError::Closed);
                }
                let upto = st.next_offset;
                if s + 1 >= upto {
                    st.subs.entry(chan.clone()).or_default().push(Sub {
                        outbox: outbox.clone(),
                        last_seq: s,
                    });
                    Step::Live
                } else if st.recent_from <= s + 1 {
                    let pending: Vec<Arc<Delivery>> = st
                        .recent
                        .iter()
                        .filter(|d| d.seq > s && *d.channel == *channel)
                        .cloned()
                        .collect();
                    let bytes: usize = pending.iter().map(|d| d.text.len()).sum();
                    if pending.len() < outbox.capacity() && outbox.has_room_for_bytes(bytes) {
                        // Hand over the rest and go live in one step.
                        let n = pending.len() as u64;
                        for d in pending {
                            if !outbox.try_push(Outbound::Message(d)) {
                                return Err(HubError::SlowConsumer);
                            }
                        }
                        st.subs.entry(chan.clone()).or_default().push(Sub {
                            outbox: outbox.clone(),
                            last_seq: upto - 1,
                        });
                        caught_up += n;
                        metrics::counter!("herald_hub_catchup_messages_total", "source" => "cache")
                            .increment(n);
                        Step::Live
                    } else {
                        Step::FromCache(pending, upto)
                    }
                } else if !part.feed.is_done() {
                    Step::FillRing
                } else {
                    // Only what the ring lacks: the rest comes from it next.
                    Step::FromLog(st.recent_from.min(upto))
                }
            };
            match step {
                Step::Live => break,
                Step::FromCache(pending, upto) => {
                    let n = pending.len() as u64;
                    for d in pending {
                        if !outbox.push(Outbound::Message(d)).await {
                            return Err(HubError::Closed);
                        }
                    }
                    caught_up += n;
                    metrics::counter!("herald_hub_catchup_messages_total", "source" => "cache")
                        .increment(n);
                    s = upto - 1;
                }
                Step::FillRing => {
                    // Fed as the fill reads, then what is left from the ring.
                    self.start_fill(&entered.0);
                    let (to, n) = self.stream_fill(part, outbox, channel, s).await?;
                    part.feed
                        .wait(|st| (st.phase == FillPhase::Done).then_some(()))
                        .await;
                    s = to;
                    caught_up += n;
                    metrics::counter!("herald_hub_catchup_messages_total", "source" => "fill")
                        .increment(n);
                }
                Step::FromLog(upto) => {
                    from_log = true;
                    caught_up += self
                        .catch_up_from_log(outbox, part, channel, s + 1, upto)
                        .await?;
                    s = upto - 1;
                }
            }
        }
        metrics::counter!("herald_hub_resume_total", "outcome" => "recovered").increment(1);
        // Until live: every missed message is in the connection's queue.
        metrics::histogram!("herald_hub_resume_seconds", "source" => if from_log { "log" } else { "cache" })
            .record(began.elapsed().as_secs_f64());
        metrics::gauge!("herald_hub_subscriptions").increment(1.0);
        Ok(SubscribeOutcome {
            position,
            recovered: true,
            caught_up,
        })
    }

    /// One Kafka read of the partition from `from` (before `to`), at most
    /// a catch-up batch.
    async fn read_batch(
        &self,
        part: &Partition,
        from: i64,
        to: i64,
    ) -> Result<herald_log::RangeBatch, HubError> {
        read_batch(&*self.log, &self.cfg, part, from, to).await
    }

    /// Hands `channel`'s messages in `[from, upto)` from Kafka to `outbox`.
    async fn catch_up_from_log(
        &self,
        outbox: &Outbox,
        part: &Partition,
        channel: &str,
        mut from: i64,
        upto: i64,
    ) -> Result<u64, HubError> {
        let mut total = 0u64;
        while from < upto {
            let batch = self.read_batch(part, from, upto).await?;
            // herald's topics have no offset gaps (no transactions, no
            // compaction): a batch that skips offsets means the reader was
            // reset to the log start, i.e. retention deleted what this
            // subscriber still needed. A skip is checked against the log
            // start before anything of the batch is handed over.
            let mut expected = from;
            let mut skipped = None;
            for r in &batch.records {
                if r.offset > expected {
                    skipped = Some(expected);
                    break;
                }
                expected = r.offset + 1;
            }
            let skipped = skipped.or((batch.next > expected).then_some(expected));
            if let Some(at) = skipped {
                let low = self.log.watermarks(&part.topic, part.partition).await?.low;
                if low > at {
                    warn!(topic = %part.topic, partition = part.partition, from = at, low, "Records a catch-up needed were deleted; cutting the subscriber");
                    metrics::counter!("herald_hub_catchup_gaps_total").increment(1);
                    outbox.cut();
                    return Err(HubError::Gap { from: at, low });
                }
            }
            let mut n = 0u64;
            for r in &batch.records {
                if r.key.as_deref() != Some(channel.as_bytes()) {
                    continue;
                }
                if let Some(d) = Delivery::from_record(r, &part.epoch) {
                    if !outbox.push(Outbound::Message(Arc::new(d))).await {
                        return Err(HubError::Closed);
                    }
                    n += 1;
                }
            }
            total += n;
            metrics::counter!("herald_hub_catchup_messages_total", "source" => "log").increment(n);
            if batch.next <= from {
                return Err(no_progress(&part.topic, part.partition, from));
            }
            from = batch.next;
        }
        Ok(total)
    }

    /// Starts filling a cold partition's ring back from the log, once per
    /// start of the partition: the records just below where the tail
    /// started, as many as the ring holds. The fill runs as its own task;
    /// the resumes that need it are fed from it as it reads
    /// ([`Hub::stream_fill`]), so a reconnect storm onto a node that has just
    /// started following the partition reads it from Kafka once, not once
    /// per client (docs/benchmarks.md, P5 cold). A failed fill is counted
    /// and left: resumes then read the log themselves, as before.
    fn start_fill(&self, part: &Arc<Partition>) {
        if !part.feed.begin() {
            return;
        }
        let (log, cfg, part) = (self.log.clone(), self.cfg.clone(), part.clone());
        tokio::spawn(async move {
            let _done = FeedDone(&part.feed);
            let started = Instant::now();
            match read_ring_fill(&*log, &cfg, &part).await {
                Ok(n) => {
                    metrics::counter!("herald_hub_ring_fills_total", "outcome" => "filled")
                        .increment(1);
                    metrics::counter!("herald_hub_ring_fill_messages_total").increment(n);
                    metrics::histogram!("herald_hub_ring_fill_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    metrics::counter!("herald_hub_ring_fills_total", "outcome" => "failed")
                        .increment(1);
                    warn!(%e, topic = %part.topic, partition = part.partition, "Could not fill a partition's recent messages from the log; resumes read it themselves");
                }
            }
        });
    }

    /// Hands `channel`'s messages after `s` to `outbox` from the ring fill
    /// under way, piece by piece as the fill decodes them, for as long as
    /// the pieces continue `s` without a hole. Returns the last `seq` handed
    /// over (or `s`) and how many messages, once the fill is done or a piece
    /// does not continue `s` (what is left then comes from the ring or the
    /// log, as without the feed).
    async fn stream_fill(
        &self,
        part: &Partition,
        outbox: &Outbox,
        channel: &str,
        mut s: i64,
    ) -> Result<(i64, u64), HubError> {
        let mut n = 0u64;
        let mut next = 0;
        loop {
            let (pieces, done) = part
                .feed
                .wait(|st| {
                    let fresh = st.pieces.get(next..).unwrap_or_default();
                    let done = st.phase == FillPhase::Done;
                    (done || !fresh.is_empty()).then(|| (fresh.to_vec(), done))
                })
                .await;
            next += pieces.len();
            for piece in pieces {
                if piece.to <= s + 1 {
                    continue;
                }
                if piece.from > s + 1 {
                    return Ok((s, n));
                }
                for d in &piece.items {
                    if d.seq > s && *d.channel == *channel {
                        if !outbox.push(Outbound::Message(d.clone())).await {
                            return Err(HubError::Closed);
                        }
                        n += 1;
                    }
                }
                s = piece.to - 1;
            }
            if done {
                return Ok((s, n));
            }
        }
    }

    /// `Some(seq)` when resuming from `seq` loses nothing: it is inside the
    /// retained log (`low - 1 <= seq < high`).
    async fn check_position(
        &self,
        part: &Arc<Partition>,
        seq: i64,
    ) -> Result<Option<i64>, HubError> {
        if seq < -1 {
            return Ok(None);
        }
        let in_ring = || {
            let st = part.lock();
            // `seq >= from - 1`, not `seq + 1 >= from`: a client's seq may
            // be i64::MAX.
            seq >= st.recent_from - 1 && seq < st.next_offset
        };
        if in_ring() {
            return Ok(Some(seq));
        }
        if !part.feed.is_done() && seq < part.lock().next_offset {
            // A cold partition: the fill asks Kafka for the log start once
            // for all the resumes (below `next_offset` is below the end).
            self.start_fill(part);
            let low = part.feed.wait(|st| match st.low {
                Some(low) => Some(Some(low)),
                None if st.phase == FillPhase::Done => Some(None),
                None => None,
            });
            if let Some(low) = low.await {
                return Ok((seq >= low - 1).then_some(seq));
            }
            if in_ring() {
                return Ok(Some(seq));
            }
        }
        let wm = self.log.watermarks(&part.topic, part.partition).await?;
        Ok((seq >= wm.low - 1 && seq < wm.high).then_some(seq))
    }

    /// Removes `outbox`'s subscription to `channel`. True if there was one.
    pub fn unsubscribe(&self, outbox: &Outbox, topic: &str, channel: &str) -> bool {
        let Ok(partition) = self.partition_of(topic, channel) else {
            return false;
        };
        let Some(part) = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(Arc::from(topic), partition))
            .cloned()
        else {
            return false;
        };
        let mut st = part.lock();
        let Some(list) = st.subs.get_mut(channel) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| s.outbox.id() != outbox.id());
        let removed = before - list.len();
        if list.is_empty() {
            st.subs.remove(channel);
        }
        if removed > 0 {
            metrics::gauge!("herald_hub_subscriptions").decrement(removed as f64);
        }
        removed > 0
    }

    /// Stops following the partitions that have had no local subscriber
    /// (and no subscribe under way) for at least `grace`, as seen by two
    /// sweeps that far apart: the first marks a partition idle, a later one
    /// retires it. A retired partition's tail assignment and ring are
    /// dropped; the next subscriber starts it again from the high watermark
    /// (and resumes from Kafka). Returns how many were retired.
    pub fn retire_idle(&self, grace: Duration) -> usize {
        let now = Instant::now();
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let mut retired = Vec::new();
        parts.retain(|key, part| {
            let mut st = part.lock();
            if !st.subs.is_empty() || st.entering > 0 {
                st.idle_since = None;
                return true;
            }
            match st.idle_since {
                None => {
                    st.idle_since = Some(now);
                    true
                }
                Some(since) if now.duration_since(since) < grace => true,
                Some(_) => {
                    if part.started.get().is_some() {
                        retired.push(key.clone());
                    }
                    false
                }
            }
        });
        // Still under the map lock: a subscribe that starts the partition
        // again cannot follow it before this unfollow has happened.
        for (topic, partition) in &retired {
            if let Err(e) = self.log.unfollow(topic, *partition) {
                metrics::counter!("herald_log_errors_total", "op" => "unfollow").increment(1);
                warn!(%e, %topic, partition, "Could not stop following a partition");
            }
        }
        drop(parts);
        if !retired.is_empty() {
            metrics::counter!("herald_hub_partitions_retired_total")
                .increment(retired.len() as u64);
            debug!(
                count = retired.len(),
                "Stopped following partitions without subscribers"
            );
        }
        retired.len()
    }

    /// Runs [`Hub::retire_idle`] every `grace / 2` (at least every 100 ms)
    /// until the hub is dropped. Needs a Tokio runtime.
    pub fn spawn_retirement(self: &Arc<Self>, grace: Duration) {
        let hub: Weak<Hub> = Arc::downgrade(self);
        let every = (grace / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hub) = hub.upgrade() else { return };
                hub.retire_idle(grace);
            }
        });
    }

    /// Offers `text` (a presence event: no `seq`) to every local subscriber
    /// of `channel`, shared by all; a subscriber whose queue is full misses
    /// it and is not cut. Returns (queued, dropped).
    pub fn notify(&self, topic: &str, channel: &str, text: &str) -> (usize, usize) {
        let Ok(partition) = self.partition_of(topic, channel) else {
            return (0, 0);
        };
        let Some(part) = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(Arc::from(topic), partition))
            .cloned()
        else {
            return (0, 0);
        };
        let event = Arc::new(crate::outbox::Event {
            channel: Arc::from(channel),
            text: Arc::from(text),
        });
        let st = part.lock();
        st.subs.get(channel).map_or((0, 0), |list| {
            let sent = list
                .iter()
                .filter(|s| s.outbox.offer(Outbound::Event(event.clone())))
                .count();
            (sent, list.len() - sent)
        })
    }

    /// Channels with subscribers on this node, with their subscriber count.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let parts: Vec<Arc<Partition>> = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for part in parts {
            let st = part.lock();
            out.extend(st.subs.iter().map(|(c, l)| (c.to_string(), l.len())));
        }
        out
    }

    /// Subscriptions on this node.
    pub fn subscription_count(&self) -> usize {
        let parts: Vec<Arc<Partition>> = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        parts
            .iter()
            .map(|p| p.lock().subs.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// The newest offset dispatched live in `channel`'s partition, when this
    /// node follows that partition.
    pub fn tail_seq(&self, topic: &str, channel: &str) -> Option<i64> {
        let partition = self.partition_of(topic, channel).ok()?;
        let next = self.followed(topic, partition)?.lock().next_offset;
        Some(next - 1)
    }

    /// The partition, when this node is tailing it.
    fn followed(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        let part = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(Arc::from(topic), partition))
            .cloned()?;
        part.started.get()?;
        Some(part)
    }

    pub(crate) fn log_read(&self) -> &dyn LogRead {
        &*self.log
    }

    /// `channel`'s messages with `from <= seq < to` from the partition's
    /// ring, or `None` unless the ring is complete over that whole span.
    pub(crate) fn ring_span(
        &self,
        topic: &str,
        partition: i32,
        channel: &str,
        from: i64,
        to: i64,
    ) -> Option<Vec<Arc<Delivery>>> {
        let part = self.followed(topic, partition)?;
        let st = part.lock();
        if from < st.recent_from || to > st.next_offset {
            return None;
        }
        let first = st.recent.partition_point(|d| d.seq < from);
        Some(
            st.recent
                .range(first..)
                .take_while(|d| d.seq < to)
                .filter(|d| *d.channel == *channel)
                .cloned()
                .collect(),
        )
    }

    /// Live dispatch of one tailed record.
    fn dispatch(&self, r: Record) {
        let part = {
            let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            match parts.get(&(r.topic.clone(), r.partition)) {
                Some(p) => p.clone(),
                None => {
                    // Fetched before the partition was retired.
                    debug!(topic = %r.topic, partition = r.partition, "Record for a partition the hub no longer follows");
                    return;
                }
            }
        };
        let delivery = Delivery::from_record(&r, &part.epoch).map(Arc::new);
        let mut st = part.lock();
        if r.offset < st.next_offset {
            // Already dispatched (a re-fetch after a broker reconnect).
            return;
        }
        if r.offset > st.next_offset {
            // The tail skipped records: herald's topics have no offset gaps
            // (no transactions, no compaction), so this is librdkafka
            // resetting a tail that fell behind the log start (the records
            // were deleted before it read them). No live subscriber of the
            // partition got them, and the ring is no longer contiguous. Every
            // subscriber of the partition is cut (it resumes with `since` and
            // learns `recovered: false` if the records are gone) instead of
            // carrying on with a silent gap.
            let (from, to) = (st.next_offset, r.offset);
            warn!(topic = %r.topic, partition = r.partition, from, to, "The tail skipped records; cutting the partition's subscribers");
            metrics::counter!("herald_hub_tail_gaps_total").increment(1);
            metrics::counter!("herald_hub_tail_skipped_records_total")
                .increment((to - from) as u64);
            st.recent.clear();
            st.recent_bytes = 0;
            st.recent_from = r.offset;
            let mut cut = 0usize;
            for (_, list) in st.subs.drain() {
                for sub in list {
                    sub.outbox.cut();
                    cut += 1;
                }
            }
            metrics::gauge!("herald_hub_subscriptions").decrement(cut as f64);
        }
        st.next_offset = r.offset + 1;
        let Some(d) = delivery else {
            return;
        };
        st.recent_bytes += d.text.len();
        st.recent.push_back(d.clone());
        while st.recent.len() > self.cfg.recent_messages
            || (st.recent_bytes > self.cfg.recent_bytes && st.recent.len() > 1)
        {
            if let Some(old) = st.recent.pop_front() {
                st.recent_bytes -= old.text.len();
                st.recent_from = old.seq + 1;
            }
        }
        let mut delivered = 0u64;
        let mut dropped = 0usize;
        if let Some(list) = st.subs.get_mut(&d.channel) {
            list.retain_mut(|sub| {
                if d.seq <= sub.last_seq {
                    return true;
                }
                if sub.outbox.try_push(Outbound::Message(d.clone())) {
                    sub.last_seq = d.seq;
                    delivered += 1;
                    true
                } else {
                    // Slow consumer (or gone): its connection closes and the
                    // client resumes from its position.
                    dropped += 1;
                    false
                }
            });
            if list.is_empty() {
                st.subs.remove(&d.channel);
            }
        }
        drop(st);
        metrics::counter!("herald_hub_deliveries_total").increment(delivered);
        if d.replayed {
            metrics::counter!("herald_hub_replayed_records_total").increment(1);
        }
        if dropped > 0 {
            metrics::gauge!("herald_hub_subscriptions").decrement(dropped as f64);
        }
    }
}

/// Reads the ring's worth of records below `follow_from` and puts them in
/// front of the ring, when the ring still starts there (nothing evicted,
/// no tail gap since). Returns the messages added.
async fn read_ring_fill(
    log: &dyn LogRead,
    cfg: &HubConfig,
    part: &Partition,
) -> Result<u64, HubError> {
    let cap = cfg.recent_messages;
    let end = part.lock().follow_from;
    if cap == 0 {
        return Ok(0);
    }
    let wm = log.watermarks(&part.topic, part.partition).await?;
    let mut from = wm.low.max(end - cap as i64);
    if from >= end {
        part.feed.set_low(wm.low);
    }
    // The offset from which `segments` hold every record up to `from`.
    let mut complete_from = from;
    let (start_from, mut first_read) = (from, true);
    // Batches decoded on the blocking pool while the next is read (the
    // read waits on the broker and the decode is CPU, so on more than one
    // core they overlap), each handed on as soon as it is decoded
    // (docs/benchmarks.md, P4 cold).
    let mut segments = VecDeque::new();
    // What was decoded and published, for the ring.
    let mut found: Vec<Arc<Delivery>> = Vec::new();
    while from < end {
        // Read the next batch; meanwhile hand on each piece as it decodes.
        let read = read_batch(log, cfg, part, from, end);
        tokio::pin!(read);
        let batch = loop {
            let Some((_, decoding)) = segments.front_mut() else {
                break read.await?;
            };
            tokio::select! {
                biased;
                batch = &mut read => break batch?,
                items = decoding => {
                    if let Some((piece, _)) = segments.pop_front() {
                        publish_piece(part, piece, items, &mut found)?;
                    }
                }
            }
        };
        let mut keep_from = 0;
        let mut taken = 0;
        for (i, r) in batch.records.iter().enumerate() {
            if r.offset >= end {
                break;
            }
            if r.offset != from {
                // Deleted under the read (retention): the ring can only
                // be complete from after the hole.
                segments.clear();
                found.clear();
                complete_from = r.offset;
                keep_from = i;
            }
            from = r.offset + 1;
            taken = i + 1;
        }
        let mut records = batch.records;
        records.truncate(taken);
        records.drain(..keep_from);
        if let Some(first) = records.first() {
            let piece = (first.offset, from);
            let epoch = part.epoch.clone();
            segments.push_back((
                piece,
                tokio::task::spawn_blocking(move || {
                    records
                        .iter()
                        .filter_map(|r| Delivery::from_record(r, &epoch))
                        .map(Arc::new)
                        .collect::<Vec<_>>()
                }),
            ));
        }
        if batch.next > from {
            // Offsets skipped without records: a hole as well (every
            // offset below `end` existed when the tail started).
            segments.clear();
            found.clear();
            complete_from = batch.next;
            from = batch.next;
        } else if taken == 0 {
            return Err(no_progress(&part.topic, part.partition, from));
        }
        if first_read {
            // Where the log starts, as far as the resumes waiting on the
            // fill are concerned: after a hole the first read found
            // (retention deleting while it read), else the watermark.
            first_read = false;
            part.feed.set_low(if complete_from > start_from {
                complete_from
            } else {
                wm.low
            });
        }
    }
    while let Some((piece, decoding)) = segments.pop_front() {
        let items = decoding.await;
        publish_piece(part, piece, items, &mut found)?;
    }
    let mut st = part.lock();
    if st.recent_from != end {
        // The ring moved on (it evicted, or the tail skipped): what was
        // read no longer joins it.
        return Ok(0);
    }
    let mut added = 0u64;
    let mut start = end;
    let mut all = true;
    for d in found.into_iter().rev() {
        if st.recent.len() >= cap
            || (!st.recent.is_empty() && st.recent_bytes + d.text.len() > cfg.recent_bytes)
        {
            all = false;
            break;
        }
        // Complete from the oldest message kept.
        start = d.seq;
        st.recent_bytes += d.text.len();
        st.recent.push_front(d);
        added += 1;
    }
    st.recent_from = if all { complete_from } else { start };
    Ok(added)
}

/// One Kafka read of the partition from `from` (before `to`), at most a
/// catch-up batch.
async fn read_batch(
    log: &dyn LogRead,
    cfg: &HubConfig,
    part: &Partition,
    from: i64,
    to: i64,
) -> Result<herald_log::RangeBatch, HubError> {
    Ok(log
        .read_range(&part.topic, part.partition, from, to, cfg.catchup_batch)
        .await?)
}

/// Keeps a decoded piece of a ring fill for the ring and hands it to the
/// resumes waiting on the fill.
fn publish_piece(
    part: &Partition,
    (from, to): (i64, i64),
    decoded: Result<Vec<Arc<Delivery>>, tokio::task::JoinError>,
    found: &mut Vec<Arc<Delivery>>,
) -> Result<(), HubError> {
    let items = decoded.map_err(|e| HubError::Log(herald_log::LogError::Task(e.to_string())))?;
    found.extend(items.iter().cloned());
    part.feed.publish(FillPiece { from, to, items });
    Ok(())
}

/// A range read that returned nothing and did not move: an error, never a
/// loop.
pub(crate) fn no_progress(topic: &str, partition: i32, from: i64) -> HubError {
    HubError::Log(herald_log::LogError::Other(format!(
        "range read made no progress at {topic}/{partition}@{from}"
    )))
}

impl RecordSink for Hub {
    fn on_record(&self, record: Record) {
        self.dispatch(record);
    }
}
