//! Publish dedup: `(channel, id)` → the `seq` it was appended at.
//!
//! A publish first claims its key. The first claimant appends and records the
//! outcome; anyone claiming the same key meanwhile (a client retry racing the
//! original) waits for that outcome instead of appending again. A failed
//! append is forgotten so that a retry appends afresh. Entries live for the
//! dedup window and the cache is bounded by entry count.
//!
//! This window is per node. A retry that reaches another node after the first
//! node died is not caught here (cross-node dedup is a separate piece of work).

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::watch;
use uuid::Uuid;

/// The outcome of the first append of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupOutcome {
    Appended(i64),
    /// The append failed: (code, reason). Waiters report the same failure.
    Failed(&'static str, String),
}

/// Where the first attempt of a key records its outcome.
pub type Slot = Arc<watch::Sender<Option<DedupOutcome>>>;

/// What [`Dedup::claim`] found.
pub enum Claim {
    /// Nobody has this key: append, then call [`Dedup::complete`].
    First(Slot),
    /// Seen before, or being appended now: wait for the outcome.
    Seen(watch::Receiver<Option<DedupOutcome>>),
}

/// A dedup key: the channel's keyed 64-bit hash and the publish id. No
/// allocation per publish (the channel name is not copied), and hashed with
/// aHash rather than SipHash: the cache was ~9% of the node's CPU in the
/// ingest benchmark (P6, `perf record`), mostly hashing. Two channels
/// would share a key only if their hashes collided (seeded per process, so
/// not something a client can aim for) *and* a publish id were reused
/// across them.
type Key = (u64, Uuid);

#[derive(Clone)]
pub struct Dedup {
    cache: Cache<Key, Slot, ahash::RandomState>,
    channels: ahash::RandomState,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: u64) -> Self {
        Dedup {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(window)
                .build_with_hasher(ahash::RandomState::new()),
            channels: ahash::RandomState::new(),
        }
    }

    fn key(&self, channel: &str, id: Uuid) -> Key {
        (self.channels.hash_one(channel), id)
    }

    pub fn claim(&self, channel: &str, id: Uuid) -> Claim {
        let entry = self
            .cache
            .entry(self.key(channel, id))
            .or_insert_with(|| Arc::new(watch::channel(None).0));
        if entry.is_fresh() {
            Claim::First(entry.into_value())
        } else {
            Claim::Seen(entry.into_value().subscribe())
        }
    }

    /// Records the outcome of a [`Claim::First`].
    pub fn complete(&self, channel: &str, id: Uuid, slot: &Slot, outcome: DedupOutcome) {
        if matches!(outcome, DedupOutcome::Failed(..)) {
            self.cache.invalidate(&self.key(channel, id));
        }
        slot.send_replace(Some(outcome));
    }

    /// Waits for the outcome of a [`Claim::Seen`].
    pub async fn wait(mut rx: watch::Receiver<Option<DedupOutcome>>) -> DedupOutcome {
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(DedupOutcome::Failed(
                herald_proto::codes::INTERNAL,
                "dedup slot empty".into(),
            )),
            // The first claimant went away without an outcome (its
            // connection task ended mid-append); the client retries.
            Err(_) => DedupOutcome::Failed(
                herald_proto::codes::UNAVAILABLE,
                "the original publish of this id was interrupted; retry".into(),
            ),
        }
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_claim_sees_first_outcome() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        let id = Uuid::new_v4();
        let Claim::First(slot) = d.claim("chat:a", id) else {
            panic!("first claim must be First")
        };
        let Claim::Seen(rx) = d.claim("chat:a", id) else {
            panic!("second claim must be Seen")
        };
        // Same id on another channel is another message.
        assert!(matches!(d.claim("chat:b", id), Claim::First(_)));
        let waiter = tokio::spawn(Dedup::wait(rx));
        d.complete("chat:a", id, &slot, DedupOutcome::Appended(42));
        assert_eq!(waiter.await.unwrap(), DedupOutcome::Appended(42));
        let Claim::Seen(rx) = d.claim("chat:a", id) else {
            panic!()
        };
        assert_eq!(Dedup::wait(rx).await, DedupOutcome::Appended(42));
    }

    #[tokio::test]
    async fn failure_is_forgotten() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        let id = Uuid::new_v4();
        let Claim::First(slot) = d.claim("chat:a", id) else {
            panic!()
        };
        let Claim::Seen(rx) = d.claim("chat:a", id) else {
            panic!()
        };
        d.complete(
            "chat:a",
            id,
            &slot,
            DedupOutcome::Failed("unavailable", "down".into()),
        );
        assert!(matches!(Dedup::wait(rx).await, DedupOutcome::Failed(..)));
        assert!(matches!(d.claim("chat:a", id), Claim::First(_)));
    }
}
