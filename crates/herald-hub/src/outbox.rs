//! Per-connection outbound queue, bounded by messages and by bytes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::hub::Delivery;

/// Gauge of bytes waiting in all outbound queues of the process.
const QUEUED_BYTES: &str = "herald_hub_outbound_queued_bytes";

/// What a connection writes to its socket.
#[derive(Debug)]
pub enum Outbound {
    /// A channel message, serialised once and shared by every subscriber.
    Message(Arc<Delivery>),
    /// Any other server frame, already serialised.
    Frame(String),
}

impl Outbound {
    pub fn len(&self) -> usize {
        match self {
            Outbound::Message(d) => d.text.len(),
            Outbound::Frame(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn text(&self) -> &str {
        match self {
            Outbound::Message(d) => &d.text,
            Outbound::Frame(s) => s,
        }
    }
}

struct Shared {
    /// Bytes queued and not yet taken by the writer.
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Set once, when a live message could not be queued.
    overflowed: AtomicBool,
    /// The process-wide queued-bytes gauge, looked up once per connection
    /// rather than on every message.
    queued: metrics::Gauge,
    notify: Notify,
}

/// The sending side, held by the hub (live dispatch, catch-up) and by the
/// connection's own request handlers.
#[derive(Clone)]
pub struct Outbox {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
}

/// The connection's writer side.
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// A queue of at most `max_messages` entries and about `max_bytes` bytes.
    /// `id` identifies the connection in the hub's index.
    pub fn new(id: u64, max_messages: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(max_messages.max(1));
        let shared = Arc::new(Shared {
            bytes: AtomicUsize::new(0),
            max_bytes: max_bytes.max(1),
            overflowed: AtomicBool::new(false),
            queued: metrics::gauge!(QUEUED_BYTES),
            notify: Notify::new(),
        });
        (
            Outbox {
                id,
                tx,
                shared: shared.clone(),
            },
            OutboxReceiver { rx, shared },
        )
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Free message slots right now.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
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
        match self.tx.try_send(item) {
            Ok(()) => {
                self.shared.queued.increment(len as f64);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
                self.overflow();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
                false
            }
        }
    }

    /// Queues, waiting for a free slot. Used for replies and catch-up, where
    /// the producer of messages can wait for the client. `false` when the
    /// connection is gone.
    pub async fn push(&self, item: Outbound) -> bool {
        if self.is_overflowed() {
            return false;
        }
        let len = item.len();
        self.shared.bytes.fetch_add(len, Ordering::AcqRel);
        if self.tx.send(item).await.is_err() {
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        self.shared.queued.increment(len as f64);
        true
    }

    fn overflow(&self) {
        if !self.shared.overflowed.swap(true, Ordering::AcqRel) {
            metrics::counter!("herald_hub_slow_consumers_total").increment(1);
            self.shared.notify.notify_one();
        }
    }
}

impl OutboxReceiver {
    /// The next item to write; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        self.shared.bytes.fetch_sub(item.len(), Ordering::AcqRel);
        self.shared.queued.decrement(item.len() as f64);
        Some(item)
    }

    /// The next item if one is queued right now (for writing in batches).
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let item = self.rx.try_recv().ok()?;
        self.shared.bytes.fetch_sub(item.len(), Ordering::AcqRel);
        self.shared.queued.decrement(item.len() as f64);
        Some(item)
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

    /// Messages queued now.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        // Whatever was still queued is discarded with the connection. A
        // sender racing this drop may add a few bytes the gauge keeps; the
        // connection is gone, so that error is bounded by one queue.
        self.rx.close();
        let mut left = 0usize;
        while let Ok(item) = self.rx.try_recv() {
            left += item.len();
        }
        self.shared.bytes.fetch_sub(
            left.min(self.shared.bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        self.shared.queued.decrement(left as f64);
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
            let notified = self.shared.notify.notified();
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
    async fn a_single_large_item_fits_an_empty_queue() {
        let (tx, _rx) = Outbox::new(1, 100, 10);
        assert!(tx.try_push(Outbound::Frame("x".repeat(50))));
    }
}
