//! Publish dedup: `(channel, id)` → the `seq` it was appended at.
//!
//! A publish first claims its key. The first claimant appends and records the
//! outcome; anyone claiming the same key meanwhile (a client retry racing the
//! original) waits for that outcome instead of appending again. A failed
//! append is forgotten so that a retry appends afresh. Appended keys live for
//! the dedup window, at most `capacity` of them, oldest dropped first.
//!
//! Two maps under one lock: the appends in flight (a watch channel each, for
//! the waiters) and the window of appended keys (key → seq, in the order they
//! were appended). The window is a hash map and a FIFO rather than a cache
//! with eviction policies: every key lives exactly the window and leaves in
//! insertion order, so admission policies, access-order lists and timer
//! wheels buy nothing here and cost CPU and memory on the publish path (about
//! 150 bytes per remembered id; docs/benchmarks.md, P6). Only appends in
//! flight have a watch channel; remembered ids keep just their seq.
//!
//! This window is per node. A retry that reaches another node after the first
//! node died is not caught here (the `retry` scan of the partition does that).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

/// The outcome of the first append of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupOutcome {
    Appended(i64),
    /// The append failed: (code, reason). Waiters report the same failure.
    Failed(&'static str, String),
}

/// Where the first attempt of a key records its outcome
/// ([`Dedup::complete`]). Dropping it without completing (the publish was
/// abandoned mid-append) tells the waiters to retry, and the next claim of
/// the key appends afresh. Costs no allocation: a duplicate waiting for it
/// is rare, and only a waiter makes a channel.
pub struct Slot {
    state: Arc<Mutex<State>>,
    key: Key,
    /// Tells this claim's entry from a later claim of the same key.
    token: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let waiters = lock(&self.state).take_in_flight(self);
        // Completed already, or abandoned now: then the waiters hear it.
        for w in waiters.into_iter().flat_map(|f| f.waiters) {
            let _ = w.send(interrupted());
        }
    }
}

/// A key seen before: appended already, or being appended now.
pub enum Seen {
    Appended(i64),
    InFlight(oneshot::Receiver<DedupOutcome>),
}

/// What [`Dedup::claim`] found.
pub enum Claim {
    /// Nobody has this key: append, then call [`Dedup::complete`].
    First(Slot),
    /// Seen before, or being appended now: [`Dedup::wait`] for the outcome.
    Seen(Seen),
}

/// A dedup key: the channel's keyed 64-bit hash and the publish id. No
/// allocation per publish (the channel name is not copied), and hashed with
/// aHash rather than SipHash. Two channels would share a key only if their
/// hashes collided (seeded per process, so not something a client can aim
/// for) *and* a publish id were reused across them.
type Key = (u64, Uuid);

/// An append in flight: its claim's token, and the duplicates waiting.
struct InFlight {
    token: u64,
    waiters: Vec<oneshot::Sender<DedupOutcome>>,
}

struct State {
    /// Appended keys: seq, and when (to tell a key's current entry from an
    /// older one still queued in `order`).
    appended: HashMap<Key, (i64, Instant), ahash::RandomState>,
    /// Appended keys, oldest first.
    order: VecDeque<(Key, Instant)>,
    in_flight: HashMap<Key, InFlight, ahash::RandomState>,
    next_token: u64,
}

/// What a duplicate hears when the first attempt of its key was abandoned.
fn interrupted() -> DedupOutcome {
    DedupOutcome::Failed(
        herald_proto::codes::UNAVAILABLE,
        "the original publish of this id was interrupted; retry".into(),
    )
}

impl State {
    /// Takes `slot`'s in-flight entry, unless a later claim of its key holds
    /// it now (or it was taken already).
    fn take_in_flight(&mut self, slot: &Slot) -> Option<InFlight> {
        match self.in_flight.get(&slot.key) {
            Some(f) if f.token == slot.token => self.in_flight.remove(&slot.key),
            _ => None,
        }
    }

    /// Drops keys older than the window, and the oldest beyond `capacity`.
    fn evict(&mut self, now: Instant, window: Duration, capacity: usize) {
        while let Some(&(key, at)) = self.order.front() {
            if self.order.len() <= capacity && now.duration_since(at) < window {
                break;
            }
            self.order.pop_front();
            if self.appended.get(&key).is_some_and(|e| e.1 == at) {
                self.appended.remove(&key);
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Entries of slack kept when the window gives memory back.
const KEEP: usize = 1024;

#[derive(Clone)]
pub struct Dedup {
    state: Arc<Mutex<State>>,
    window: Duration,
    capacity: usize,
    channels: ahash::RandomState,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: u64) -> Self {
        Dedup {
            state: Arc::new(Mutex::new(State {
                appended: HashMap::with_hasher(ahash::RandomState::new()),
                order: VecDeque::new(),
                in_flight: HashMap::with_hasher(ahash::RandomState::new()),
                next_token: 0,
            })),
            window,
            capacity: usize::try_from(max_entries).unwrap_or(usize::MAX),
            channels: ahash::RandomState::new(),
        }
    }

    fn key(&self, channel: &str, id: Uuid) -> Key {
        (self.channels.hash_one(channel), id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// How long an appended id is remembered.
    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn claim(&self, channel: &str, id: Uuid) -> Claim {
        let key = self.key(channel, id);
        let mut st = self.lock();
        if let Some(&(seq, at)) = st.appended.get(&key) {
            if at.elapsed() < self.window {
                return Claim::Seen(Seen::Appended(seq));
            }
        }
        if let Some(f) = st.in_flight.get_mut(&key) {
            let (tx, rx) = oneshot::channel();
            f.waiters.push(tx);
            return Claim::Seen(Seen::InFlight(rx));
        }
        st.next_token += 1;
        let token = st.next_token;
        st.in_flight.insert(
            key,
            InFlight {
                token,
                waiters: Vec::new(),
            },
        );
        Claim::First(Slot {
            state: self.state.clone(),
            key,
            token,
        })
    }

    /// Records the outcome of a [`Claim::First`].
    pub fn complete(&self, slot: &Slot, outcome: DedupOutcome) {
        let waiters = {
            let mut st = self.lock();
            if let DedupOutcome::Appended(seq) = outcome {
                let now = Instant::now();
                st.appended.insert(slot.key, (seq, now));
                st.order.push_back((slot.key, now));
                st.evict(now, self.window, self.capacity);
            }
            st.take_in_flight(slot)
        };
        for w in waiters.into_iter().flat_map(|f| f.waiters) {
            let _ = w.send(outcome.clone());
        }
    }

    /// The outcome of a [`Claim::Seen`]: at once if it was appended, else
    /// when the first claimant completes.
    pub async fn wait(seen: Seen) -> DedupOutcome {
        match seen {
            Seen::Appended(seq) => DedupOutcome::Appended(seq),
            Seen::InFlight(rx) => rx.await.unwrap_or_else(|_| interrupted()),
        }
    }

    /// Drops the keys that have outlived the window (a node that stopped
    /// receiving publishes lets go of them here), gives back the memory of a
    /// burst once the window holds a quarter of it, and returns the keys in
    /// the window plus the appends in flight. Call it periodically.
    pub fn upkeep(&self) -> u64 {
        let mut st = self.lock();
        st.evict(Instant::now(), self.window, self.capacity);
        if st.appended.capacity() > 4 * st.appended.len() + KEEP {
            st.appended.shrink_to_fit();
            st.order.shrink_to_fit();
        }
        (st.appended.len() + st.in_flight.len()) as u64
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
        d.complete(&slot, DedupOutcome::Appended(42));
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
        d.complete(&slot, DedupOutcome::Failed("unavailable", "down".into()));
        assert!(matches!(Dedup::wait(rx).await, DedupOutcome::Failed(..)));
        assert!(matches!(d.claim("chat:a", id), Claim::First(_)));
    }

    #[tokio::test]
    async fn a_vanished_first_claimant_releases_the_key() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        let id = Uuid::new_v4();
        let Claim::First(slot) = d.claim("chat:a", id) else {
            panic!()
        };
        let Claim::Seen(seen) = d.claim("chat:a", id) else {
            panic!()
        };
        drop(slot);
        assert!(matches!(
            Dedup::wait(seen).await,
            DedupOutcome::Failed(herald_proto::codes::UNAVAILABLE, _)
        ));
        let Claim::First(slot) = d.claim("chat:a", id) else {
            panic!("a key whose first claimant vanished is claimed anew")
        };
        d.complete(&slot, DedupOutcome::Appended(7));
        let Claim::Seen(seen) = d.claim("chat:a", id) else {
            panic!()
        };
        assert_eq!(Dedup::wait(seen).await, DedupOutcome::Appended(7));
    }

    #[tokio::test]
    async fn vanished_claimants_leave_nothing_behind() {
        let d = Dedup::new(Duration::from_secs(60), 100_000);
        for _ in 0..3000 {
            let Claim::First(slot) = d.claim("chat:a", Uuid::new_v4()) else {
                panic!()
            };
            drop(slot);
        }
        assert_eq!(d.upkeep(), 0);
    }

    #[tokio::test]
    async fn an_old_slot_dropped_late_does_not_release_a_newer_claim() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        let id = Uuid::new_v4();
        let Claim::First(old) = d.claim("chat:a", id) else {
            panic!()
        };
        d.complete(&old, DedupOutcome::Failed("unavailable", String::new()));
        let Claim::First(new) = d.claim("chat:a", id) else {
            panic!("a failed key is claimed anew")
        };
        drop(old);
        let Claim::Seen(seen) = d.claim("chat:a", id) else {
            panic!("the newer claim still holds the key")
        };
        d.complete(&new, DedupOutcome::Appended(3));
        assert_eq!(Dedup::wait(seen).await, DedupOutcome::Appended(3));
    }

    /// Claims racing on two threads with completes: every key is appended
    /// once, and every other claim of it sees that append.
    #[test]
    fn racing_claims_append_each_key_once() {
        let d = Dedup::new(Duration::from_secs(60), 100_000);
        let ids: Vec<Uuid> = (0..2000).map(|_| Uuid::new_v4()).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let firsts: Vec<usize> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let (d, ids) = (d.clone(), &ids);
                    s.spawn(move || {
                        let mut firsts = 0;
                        for (n, id) in ids.iter().enumerate() {
                            match d.claim("chat:a", *id) {
                                Claim::First(slot) => {
                                    firsts += 1;
                                    d.complete(&slot, DedupOutcome::Appended(n as i64));
                                }
                                Claim::Seen(Seen::Appended(seq)) => {
                                    assert_eq!(seq, n as i64, "thread {t}")
                                }
                                Claim::Seen(Seen::InFlight(_)) => {}
                            }
                        }
                        firsts
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(firsts.iter().sum::<usize>(), ids.len());
        for (n, id) in ids.iter().enumerate() {
            let Claim::Seen(seen) = d.claim("chat:a", *id) else {
                panic!("appended key claimed anew")
            };
            assert_eq!(
                rt.block_on(Dedup::wait(seen)),
                DedupOutcome::Appended(n as i64)
            );
        }
    }

    #[test]
    fn the_window_keeps_the_newest_keys_up_to_its_capacity() {
        let d = Dedup::new(Duration::from_secs(60), 3);
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for (n, id) in ids.iter().enumerate() {
            let Claim::First(slot) = d.claim("chat:a", *id) else {
                panic!()
            };
            d.complete(&slot, DedupOutcome::Appended(n as i64));
        }
        assert_eq!(d.upkeep(), 3);
        // The two oldest were dropped: claimed anew (then failed, forgotten).
        for id in &ids[..2] {
            let Claim::First(slot) = d.claim("chat:a", *id) else {
                panic!("an id beyond the capacity is forgotten")
            };
            d.complete(&slot, DedupOutcome::Failed("unavailable", String::new()));
        }
        for (n, id) in ids.iter().enumerate().skip(2) {
            assert!(
                matches!(d.claim("chat:a", *id), Claim::Seen(Seen::Appended(s)) if s == n as i64)
            );
        }
    }

    #[test]
    fn keys_leave_after_the_window() {
        let d = Dedup::new(Duration::from_millis(50), 100);
        let id = Uuid::new_v4();
        let Claim::First(slot) = d.claim("chat:a", id) else {
            panic!()
        };
        d.complete(&slot, DedupOutcome::Appended(1));
        assert!(matches!(
            d.claim("chat:a", id),
            Claim::Seen(Seen::Appended(1))
        ));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(d.upkeep(), 0, "expired keys are dropped");
        let Claim::First(slot) = d.claim("chat:a", id) else {
            panic!("an id older than the window is appended afresh")
        };
        // Appended again: the key's new entry outlives its old place in the
        // queue.
        d.complete(&slot, DedupOutcome::Appended(2));
        assert!(matches!(
            d.claim("chat:a", id),
            Claim::Seen(Seen::Appended(2))
        ));
    }

    #[test]
    fn the_memory_of_a_burst_is_given_back() {
        let d = Dedup::new(Duration::from_secs(60), 1_000_000);
        for n in 0..20_000 {
            let id = Uuid::new_v4();
            let Claim::First(slot) = d.claim("chat:a", id) else {
                panic!()
            };
            d.complete(&slot, DedupOutcome::Appended(n));
        }
        assert_eq!(d.upkeep(), 20_000);
        assert!(d.lock().appended.capacity() >= 20_000);
        // The same window, seen by a clock past it.
        let later = Dedup {
            window: Duration::ZERO,
            ..d.clone()
        };
        assert_eq!(later.upkeep(), 0);
        let st = d.lock();
        assert!(st.appended.capacity() < 1_000, "{}", st.appended.capacity());
        assert!(st.order.capacity() < 1_000, "{}", st.order.capacity());
    }
}
