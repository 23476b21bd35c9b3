//! Per-connection outbound queue, bounded by messages and by bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::delivery::Delivery;
use crate::Text;

/// Gauge of bytes waiting in all outbound queues of the process.
const QUEUED_BYTES: &str = "herald_hub_outbound_queued_bytes";

/// What a connection writes to its socket.
#[derive(Debug)]
pub enum Outbound {
    /// A channel message, serialised once and shared by every subscriber.
    Message(Arc<Delivery>),
    /// Any other server frame, already serialised.
    Frame(String),
    /// A presence event (`join`, `leave`) or an ephemeral message of a
    /// channel: serialised once and shared by every subscriber; offered,
    /// never a reason to cut ([`Outbox::offer`]).
    Event(Arc<Event>),
    /// An instruction to the connection itself (never written as is),
    /// queued behind what was queued before it.
    Command(ConnCommand),
}

/// What the server may tell a connection to do (admin commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnCommand {
    /// Close with `code` and `reason`; with `reconnect: false`, a
    /// `disconnect` frame tells the client not to come back.
    Close {
        code: u16,
        reason: String,
        reconnect: bool,
    },
    /// End the subscription to a channel (the client hears `unsubscribed`).
    Unsubscribe(String),
    /// A revocation may cover this connection's token: close it (4011) if
    /// it does.
    CheckRevoked,
}

/// A presence event or an ephemeral message for the subscribers of one
/// channel.
#[derive(Debug)]
pub struct Event {
    pub channel: Arc<str>,
    pub text: Text,
    /// A `join` / `leave` (shown only to subscribers the namespace's
    /// `presence` rule lets see them), not an ephemeral message.
    pub presence: bool,
}

impl Outbound {
    pub fn len(&self) -> usize {
        match self {
            Outbound::Message(d) => d.text.len(),
            Outbound::Event(e) => e.text.len(),
            Outbound::Frame(s) => s.len(),
            Outbound::Command(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text to write (empty for a [`Outbound::Command`]).
    pub fn text(&self) -> &str {
        match self {
            Outbound::Message(d) => &d.text,
            Outbound::Event(e) => &e.text,
            Outbound::Frame(s) => s,
            Outbound::Command(_) => "",
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    max_messages: usize,
    /// Bytes queued and not yet taken by the writer.
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Set once, when a live message could not be queued.
    overflowed: AtomicBool,
    /// Live `Outbox` handles; the receiver sees the end when none is left.
    senders: AtomicUsize,
    /// Wakes the writer: something was queued, or the last sender left.
    readable: Notify,
    /// Wakes a `push` waiting for a free slot, or the receiver dropped.
    writable: Notify,
    /// Wakes [`OverflowWatch`].
    overflow: Notify,
}

/// Two lanes, each of at most `max_messages` entries, under one byte bound:
/// replies (`Outbound::Frame`: acks, pongs, errors, subscribe answers,
/// history pages) are written before anything of the other lane, so they
/// never wait behind up to a full queue of messages; messages, presence
/// events, ephemeral messages and commands keep their order in theirs.
struct Queue {
    items: VecDeque<Outbound>,
    replies: VecDeque<Outbound>,
    /// The receiver is gone: nothing more is accepted.
    closed: bool,
}

impl Queue {
    /// The lane `item` goes to.
    fn lane(&mut self, item: &Outbound) -> &mut VecDeque<Outbound> {
        match item {
            Outbound::Frame(_) => &mut self.replies,
            _ => &mut self.items,
        }
    }

    fn len(&self) -> usize {
        self.items.len() + self.replies.len()
    }
}

/// A queue that drained after a burst gives its memory back once it held
/// more than this many entries (a smaller buffer is given back at the
/// connection's next heartbeat, [`OutboxReceiver::release_if_empty`]).
const KEEP_CAPACITY: usize = 64;

/// Bytes queued in all outbound queues of the process: one atomic add per
/// push and pop (a metrics gauge costs a compare-and-swap loop on a float
/// per message per subscriber, measured at 4 % of a fan-out's CPU by
/// loadtest/profile.sh); the gauge is set from it when metrics are read
/// ([`report_queued_bytes`]).
static QUEUED: AtomicI64 = AtomicI64::new(0);

fn queued_add(n: usize) {
    QUEUED.fetch_add(n as i64, Ordering::Relaxed);
}

fn queued_sub(n: usize) {
    QUEUED.fetch_sub(n as i64, Ordering::Relaxed);
}

/// Sets `herald_hub_outbound_queued_bytes`: call before rendering metrics.
pub fn report_queued_bytes() {
    metrics::gauge!(QUEUED_BYTES).set(QUEUED.load(Ordering::Relaxed).max(0) as f64);
}

/// The sending side, held by the hub (live dispatch, catch-up) and by the
/// connection's own request handlers.
pub struct Outbox {
    id: u64,
    shared: Arc<Shared>,
}

/// The connection's writer side.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Outbox {
            id: self.id,
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.readable.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The lock is never held across a panic-prone call; a poisoned
        // queue is still a consistent queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the oldest reply, else the oldest item (the receiver's side).
    fn pop(&self) -> Option<Outbound> {
        let item = {
            let mut q = self.lock();
            let lane = if q.replies.is_empty() {
                &mut q.items
            } else {
                &mut q.replies
            };
            let item = lane.pop_front()?;
            if lane.is_empty() && lane.capacity() > KEEP_CAPACITY {
                *lane = VecDeque::new();
            }
            item
        };
        // The bytes first: a `push` woken next looks at them.
        self.bytes.fetch_sub(item.len(), Ordering::AcqRel);
        queued_sub(item.len());
        // A slot and room are free: one waiting `push` may go on.
        self.writable.notify_one();
        Some(item)
    }
}

impl Outbox {
    /// A queue of at most `max_messages` entries and about `max_bytes` bytes.
    /// `id` identifies the connection in the hub's index.
    ///
    /// A `VecDeque` behind a mutex rather than a tokio mpsc channel: the
    /// channel allocates a 32-slot block and its state up front (1.3 KB per
    /// connection, measured), an empty `VecDeque` allocates nothing.
    pub fn new(id: u64, max_messages: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                replies: VecDeque::new(),
                closed: false,
            }),
            max_messages: max_messages.max(1),
            bytes: AtomicUsize::new(0),
            max_bytes: max_bytes.max(1),
            overflowed: AtomicBool::new(false),
            senders: AtomicUsize::new(1),
            readable: Notify::new(),
            writable: Notify::new(),
            overflow: Notify::new(),
        });
        (
            Outbox {
                id,
                shared: shared.clone(),
            },
            OutboxReceiver { shared },
        )
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Free message slots right now (in the lane of messages).
    pub fn capacity(&self) -> usize {
        let q = self.shared.lock();
        self.shared.max_messages.saturating_sub(q.items.len())
    }

    /// True when `bytes` more would stay within the byte bound right now.
    pub fn has_room_for_bytes(&self, bytes: usize) -> bool {
        self.shared.bytes.load(Ordering::Acquire) + bytes <= self.shared.max_bytes
    }

    pub fn is_overflowed(&self) -> bool {
        self.shared.overflowed.load(Ordering::Acquire)
    }

    /// Queues without waiting. On a full queue (messages or bytes) the
    /// connection is marked a slow consumer and `false` is returned; the
    /// connection then closes and the client resumes from its position.
    pub fn try_push(&self, item: Outbound) -> bool {
        if self.is_overflowed() {
            return false;
        }
        let len = item.len();
        let before = self.shared.bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.max_bytes && before > 0 {
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow();
            return false;
        }
        let mut q = self.shared.lock();
        if q.closed {
            drop(q);
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        let max = self.shared.max_messages;
        let lane = q.lane(&item);
        if lane.len() >= max {
            drop(q);
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow();
            return false;
        }
        lane.push_back(item);
        drop(q);
        queued_add(len);
        self.shared.readable.notify_one();
        true
    }

    /// [`Outbox::try_push`] of a message of a conflating channel
    /// (docs/protocol.md, "Conflation"): when there is no room, every
    /// message of its channel still queued is dropped, a `conflated` reply
    /// says which, and `d` takes their place, so the connection is not cut
    /// for being behind on that channel. When that frees no room (nothing
    /// of the channel was queued, or `d` is larger than what it freed), the
    /// connection is cut as by `try_push`. Returns whether `d` was queued.
    pub fn push_conflating(&self, d: Arc<Delivery>) -> bool {
        if self.is_overflowed() {
            return false;
        }
        let mut q = self.shared.lock();
        if q.closed {
            return false;
        }
        let bytes = self.shared.bytes.load(Ordering::Acquire);
        if q.items.len() < self.shared.max_messages
            && (bytes == 0 || bytes + d.text.len() <= self.shared.max_bytes)
        {
            let len = d.text.len();
            self.shared.bytes.fetch_add(len, Ordering::AcqRel);
            q.items.push_back(Outbound::Message(d));
            drop(q);
            queued_add(len);
            self.shared.readable.notify_one();
            return true;
        }
        let (mut skipped, mut freed, mut from, mut to) = (0usize, 0usize, i64::MAX, -1i64);
        q.items.retain(|item| match item {
            Outbound::Message(old) if old.channel == d.channel => {
                skipped += 1;
                freed += old.text.len();
                from = from.min(old.seq);
                to = to.max(old.seq);
                false
            }
            _ => true,
        });
        let notice = herald_proto::ServerFrame::Conflated {
            channel: d.channel.to_string(),
            skipped: skipped as u64,
            from_seq: from,
            to_seq: to,
        }
        .to_json();
        let len = d.text.len() + notice.len();
        let queued = self
            .shared
            .bytes
            .load(Ordering::Acquire)
            .saturating_sub(freed);
        let fits = skipped > 0
            && q.replies.len() < self.shared.max_messages
            && queued + len <= self.shared.max_bytes;
        if !fits {
            // What was dropped is dropped: the connection is cut anyway.
            self.shared.bytes.fetch_sub(freed, Ordering::AcqRel);
            drop(q);
            queued_sub(freed);
            self.overflow();
            return false;
        }
        self.shared.bytes.fetch_add(len, Ordering::AcqRel);
        self.shared.bytes.fetch_sub(freed, Ordering::AcqRel);
        q.replies.push_back(Outbound::Frame(notice));
        q.items.push_back(Outbound::Message(d));
        drop(q);
        queued_sub(freed);
        queued_add(len);
        metrics::counter!("herald_hub_conflated_messages_total").increment(skipped as u64);
        self.shared.readable.notify_one();
        true
    }

    /// Queues when there is room (messages and bytes) and the connection
    /// is not being cut; otherwise drops `item` and returns false, leaving
    /// the connection alone. For what may be lost without breaking a
    /// guarantee (presence events): a live member is never cut for them.
    pub fn offer(&self, item: Outbound) -> bool {
        if self.is_overflowed() {
            return false;
        }
        let len = item.len();
        let mut q = self.shared.lock();
        let queued = self.shared.bytes.load(Ordering::Acquire);
        let closed = q.closed;
        let lane = q.lane(&item);
        if closed || lane.len() >= self.shared.max_messages || queued + len > self.shared.max_bytes
        {
            return false;
        }
        self.shared.bytes.fetch_add(len, Ordering::AcqRel);
        lane.push_back(item);
        drop(q);
        queued_add(len);
        self.shared.readable.notify_one();
        true
    }

    /// Queues, waiting for a free slot and for room within the byte bound
    /// (an item larger than the whole bound goes into an empty queue). Used
    /// for replies and catch-up, where the producer of messages can wait for
    /// the client: a catch-up of large messages to a client that stops
    /// reading holds at most the byte bound here. `false` when the connection
    /// is gone.
    pub async fn push(&self, item: Outbound) -> bool {
        let len = item.len();
        loop {
            if self.is_overflowed() {
                return false;
            }
            // Registered before looking, so a slot freed in between is not
            // missed.
            let writable = self.shared.writable.notified();
            {
                let mut q = self.shared.lock();
                if q.closed {
                    return false;
                }
                let queued = self.shared.bytes.load(Ordering::Acquire);
                let room = queued == 0 || queued + len <= self.shared.max_bytes;
                let max = self.shared.max_messages;
                let lane = q.lane(&item);
                if lane.len() < max && room {
                    // Counted under the lock, so that pushes racing each
                    // other cannot all see the same room.
                    self.shared.bytes.fetch_add(len, Ordering::AcqRel);
                    lane.push_back(item);
                    drop(q);
                    queued_add(len);
                    self.shared.readable.notify_one();
                    return true;
                }
            }
            writable.await;
        }
    }

    /// Closes the connection the way an overflow does (the client resumes
    /// with `since`), for a reason other than a slow reader: the hub lost
    /// track of what the subscriber should have got.
    pub fn cut(&self) {
        if !self.shared.overflowed.swap(true, Ordering::AcqRel) {
            self.shared.overflow.notify_one();
        }
    }

    fn overflow(&self) {
        if !self.shared.overflowed.swap(true, Ordering::AcqRel) {
            metrics::counter!("herald_hub_slow_consumers_total").increment(1);
            self.shared.overflow.notify_one();
        }
    }
}

impl OutboxReceiver {
    /// Gives the queue's buffer back when nothing is queued (called on a
    /// quiet connection's heartbeat: an idle connection keeps no buffer).
    pub fn release_if_empty(&self) {
        let mut q = self.shared.lock();
        if q.items.is_empty() && q.items.capacity() > 0 {
            q.items = VecDeque::new();
        }
        if q.replies.is_empty() && q.replies.capacity() > 0 {
            q.replies = VecDeque::new();
        }
    }

    /// The next item to write; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let shared = &*self.shared;
        loop {
            let readable = shared.readable.notified();
            if let Some(item) = shared.pop() {
                return Some(item);
            }
            if shared.senders.load(Ordering::Acquire) == 0 {
                // A sender may have queued just before leaving.
                return shared.pop();
            }
            readable.await;
        }
    }

    /// The next item if one is queued right now (for writing in batches).
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.shared.pop()
    }

    /// A handle that resolves once the queue has overflowed.
    pub fn overflow_watch(&self) -> OverflowWatch {
        OverflowWatch {
            shared: self.shared.clone(),
        }
    }

    /// Resolves once the queue has overflowed.
    pub async fn overflowed(&self) {
        self.overflow_watch().overflowed().await
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// Whether a reply waits to be written.
    pub fn has_replies(&self) -> bool {
        !self.shared.lock().replies.is_empty()
    }

    /// Items queued now (both lanes).
    pub fn queued(&self) -> usize {
        self.shared.lock().len()
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        // Whatever was still queued is discarded with the connection; from
        // now on senders are refused.
        let left: usize = {
            let mut q = self.shared.lock();
            q.closed = true;
            let left = q.items.iter().chain(&q.replies).map(Outbound::len).sum();
            q.items = VecDeque::new();
            q.replies = VecDeque::new();
            left
        };
        self.shared.bytes.fetch_sub(
            left.min(self.shared.bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        queued_sub(left);
        // Every waiting `push` must see `closed`.
        self.shared.writable.notify_waiters();
    }
}

/// Watches a queue for overflow, apart from the receiver.
pub struct OverflowWatch {
    shared: Arc<Shared>,
}

impl OverflowWatch {
    /// Resolves once the queue has overflowed.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.shared.overflow.notified();
            if self.shared.overflowed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> Outbound {
        Outbound::Event(Arc::new(Event {
            channel: Arc::from("c:a"),
            text: crate::Text::from(text),
            presence: false,
        }))
    }

    fn message(channel: &str, seq: i64) -> Arc<Delivery> {
        Arc::new(Delivery {
            channel: Arc::from(channel),
            seq,
            text: crate::Text::from(format!(r#"{{"type":"message","seq":{seq}}}"#)),
            replayed: false,
            tags: None,
        })
    }

    #[tokio::test]
    async fn a_conflating_channel_behind_gets_its_newest_message_not_a_cut() {
        let (tx, mut rx) = Outbox::new(1, 4, 1 << 20);
        assert!(tx.try_push(Outbound::Message(message("c:b", 0))));
        for seq in 1..=3 {
            assert!(tx.push_conflating(message("c:a", seq)));
        }
        // Full: the three of c:a make room for the newest and a notice.
        assert!(tx.push_conflating(message("c:a", 4)));
        assert!(tx.push_conflating(message("c:a", 5)));
        assert!(!tx.is_overflowed());
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv())
            .map(|o| o.text().to_owned())
            .collect();
        assert_eq!(
            got,
            [
                r#"{"type":"conflated","channel":"c:a","skipped":3,"from_seq":1,"to_seq":3}"#,
                r#"{"type":"message","seq":0}"#,
                r#"{"type":"message","seq":4}"#,
                r#"{"type":"message","seq":5}"#,
            ]
        );
        assert_eq!(rx.queued_bytes(), 0);
        // A queue full of another channel's messages: nothing to conflate,
        // the connection is cut.
        for seq in 10..14 {
            assert!(tx.try_push(Outbound::Message(message("c:b", seq))));
        }
        assert!(!tx.push_conflating(message("c:a", 20)));
        assert!(tx.is_overflowed());
    }

    #[tokio::test]
    async fn a_reply_is_written_before_queued_messages_which_keep_their_order() {
        let (tx, mut rx) = Outbox::new(1, 3, 1 << 20);
        for t in ["m1", "m2", "m3"] {
            assert!(tx.try_push(event(t)));
        }
        // The lane of messages is full; a reply still has room, and goes
        // first.
        assert!(tx.try_push(Outbound::Frame("pong".into())));
        assert!(tx.try_push(Outbound::Frame("ack".into())));
        let order: Vec<String> = std::iter::from_fn(|| rx.try_recv())
            .map(|o| o.text().to_owned())
            .collect();
        assert_eq!(order, ["pong", "ack", "m1", "m2", "m3"]);
        assert_eq!(rx.queued_bytes(), 0);
        // Each lane has its own count bound, under the one byte bound.
        for t in ["m4", "m5", "m6"] {
            assert!(tx.try_push(event(t)));
        }
        assert!(!tx.try_push(event("m7")), "the message lane is full");
        assert!(tx.is_overflowed());
    }

    #[tokio::test]
    async fn overflow_by_count_marks_slow_consumer() {
        let (tx, mut rx) = Outbox::new(1, 2, 1 << 20);
        assert!(tx.try_push(Outbound::Frame("a".into())));
        assert!(tx.try_push(Outbound::Frame("b".into())));
        assert!(!tx.try_push(Outbound::Frame("c".into())));
        assert!(tx.is_overflowed());
        rx.overflowed().await;
        assert_eq!(rx.recv().await.unwrap().text(), "a");
        // Once overflowed, nothing more is queued: the connection is closing.
        assert!(!tx.try_push(Outbound::Frame("d".into())));
    }

    /// A drained queue keeps a small buffer for the next message; the
    /// heartbeat's release gives it back, and a queue that holds something
    /// keeps it.
    #[tokio::test]
    async fn an_empty_queue_gives_its_buffer_back_on_release() {
        let (tx, mut rx) = Outbox::new(1, 100, 1 << 20);
        assert!(tx.try_push(event("a")));
        assert!(tx.try_push(event("b")));
        rx.release_if_empty();
        assert!(tx.shared.lock().items.capacity() > 0, "not empty: kept");
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        assert!(tx.shared.lock().items.capacity() > 0);
        rx.release_if_empty();
        assert_eq!(tx.shared.lock().items.capacity(), 0);
        assert!(tx.try_push(Outbound::Frame("c".into())));
        assert_eq!(rx.recv().await.unwrap().text(), "c");
    }

    #[tokio::test]
    async fn overflow_by_bytes() {
        let (tx, mut rx) = Outbox::new(1, 100, 10);
        assert!(tx.try_push(Outbound::Frame("123456".into())));
        assert_eq!(rx.queued_bytes(), 6);
        assert!(!tx.try_push(Outbound::Frame("123456".into())));
        rx.recv().await.unwrap();
        assert_eq!(rx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn push_waits_for_a_slot() {
        let (tx, mut rx) = Outbox::new(1, 1, 1 << 20);
        assert!(tx.push(Outbound::Frame("a".into())).await);
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.push(Outbound::Frame("b".into())).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the queue is full: push waits");
        assert_eq!(rx.recv().await.unwrap().text(), "a");
        assert!(waiting.await.unwrap());
        assert_eq!(rx.recv().await.unwrap().text(), "b");
        assert!(!tx.is_overflowed(), "waiting is not overflowing");
    }

    #[tokio::test]
    async fn push_waits_for_room_within_the_byte_bound() {
        // Plenty of slots, 10 bytes: catch-up and replies may not queue more
        // bytes than that, however many messages the count would allow.
        let (tx, mut rx) = Outbox::new(1, 100, 10);
        assert!(tx.push(Outbound::Frame("123456".into())).await);
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.push(Outbound::Frame("abcdef".into())).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "12 bytes would exceed 10: push waits"
        );
        assert_eq!(rx.queued_bytes(), 6);
        assert_eq!(rx.recv().await.unwrap().text(), "123456");
        assert!(waiting.await.unwrap());
        assert_eq!(rx.queued_bytes(), 6);
        // An item larger than the whole bound still goes into an empty queue.
        assert_eq!(rx.recv().await.unwrap().text(), "abcdef");
        assert!(tx.push(Outbound::Frame("x".repeat(50))).await);
        assert!(!tx.is_overflowed(), "waiting is not overflowing");
    }

    #[tokio::test]
    async fn a_waiting_push_fails_when_the_receiver_goes() {
        let (tx, rx) = Outbox::new(1, 1, 1 << 20);
        assert!(tx.try_push(Outbound::Frame("a".into())));
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.push(Outbound::Frame("b".into())).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(rx);
        assert!(!waiting.await.unwrap());
        assert!(!tx.try_push(Outbound::Frame("c".into())));
    }

    #[tokio::test]
    async fn recv_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = Outbox::new(1, 10, 1 << 20);
        let tx2 = tx.clone();
        assert!(tx2.try_push(Outbound::Frame("last".into())));
        drop(tx);
        drop(tx2);
        assert_eq!(rx.recv().await.unwrap().text(), "last");
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn recv_wakes_for_a_later_push() {
        let (tx, mut rx) = Outbox::new(1, 10, 1 << 20);
        let reader = tokio::spawn(async move { rx.recv().await.map(|o| o.text().to_owned()) });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(tx.try_push(Outbound::Frame("x".into())));
        assert_eq!(reader.await.unwrap().as_deref(), Some("x"));
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = Outbox::new(1, 10_000, 1 << 20);
        for i in 0..1000 {
            assert!(tx.try_push(event(&i.to_string())));
        }
        assert_eq!((rx.queued(), tx.capacity()), (1000, 9000));
        for i in 0..1000 {
            assert_eq!(rx.try_recv().unwrap().text(), i.to_string());
        }
        assert_eq!(rx.queued_bytes(), 0);
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn a_single_large_item_fits_an_empty_queue() {
        let (tx, _rx) = Outbox::new(1, 100, 10);
        assert!(tx.try_push(Outbound::Frame("x".repeat(50))));
    }
}
