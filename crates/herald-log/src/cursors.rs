//! Durable cursors: the last `seq` a client acknowledged on a channel, kept
//! in the compacted topic `{prefix}cursors`.
//!
//! Record key: the JSON array `["<client id>","<channel>"]` (unambiguous, and
//! readable with any Kafka tool); value: a [`CursorRecord`]. The newest record
//! of a key is the cursor, so Kafka's compaction keeps exactly one per key.
//!
//! Acks are cumulative and frequent, so they are not written one by one: an
//! ack updates a pending map (one entry per key, the newest wins) that a
//! flusher writes every `flush_interval` and on shutdown. A node that dies
//! without shutting down loses at most one interval of acks: those messages
//! are delivered again on resume (at-least-once for the unflushed tail, never
//! a loss).
//!
//! Lookups are for the rare "client lost its local state" path. The log is
//! the authority (another node may have written the key since), so a lookup
//! reads the key's partition from where this node last looked up to its end;
//! a moka cache remembers, per key, the cursor and how far the partition was
//! read, so a repeated lookup reads only what was appended since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_proto::envelope::now_ms;
use herald_proto::partition::partition_for_key;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{newest_per_key, Kafka, Log, LogError, LogRead};

/// The cursor record format version this code writes.
pub const CURSOR_VERSION: u32 = 1;

/// One stored cursor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    pub v: u32,
    pub client: String,
    pub channel: String,
    /// Every message of the channel up to and including `seq` was acked.
    pub seq: i64,
    /// Topic incarnation `seq` belongs to.
    pub epoch: String,
    /// When the ack was taken, ms since the Unix epoch.
    pub ts: i64,
}

impl CursorRecord {
    /// True when `self` should replace `old`: a different epoch (the topic
    /// was re-created) or a later position in the same one. Acks are
    /// cumulative, so a cursor never moves back within an epoch.
    fn supersedes(&self, old: &CursorRecord) -> bool {
        self.epoch != old.epoch || self.seq > old.seq
    }
}

/// The record key of a cursor.
pub fn cursor_key(client: &str, channel: &str) -> Vec<u8> {
    serde_json::to_vec(&[client, channel]).unwrap_or_default()
}

type Key = (String, String);

#[derive(Clone)]
struct Known {
    cursor: Option<CursorRecord>,
    /// The key's partition was read up to (not including) this offset.
    scanned_to: i64,
}

/// Reads and writes durable cursors. One per node.
pub struct CursorStore {
    log: Arc<dyn Log>,
    topic: String,
    partitions: i32,
    known: moka::sync::Cache<Key, Known>,
    pending: Mutex<HashMap<Key, CursorRecord>>,
}

impl CursorStore {
    /// Opens the cursor topic (created compacted with `partitions` when
    /// missing; an existing topic's count is used). `cache_capacity` bounds
    /// the lookup cache in entries.
    pub async fn open(
        log: Arc<dyn Log>,
        partitions: i32,
        cache_capacity: u64,
    ) -> Result<Arc<CursorStore>, LogError> {
        let topic = log.config().cursor_topic();
        let partitions = log
            .ensure_internal_topic(&topic, partitions, &[("cleanup.policy", "compact")])
            .await?;
        Ok(Arc::new(CursorStore {
            log,
            topic,
            partitions,
            known: moka::sync::Cache::new(cache_capacity),
            pending: Mutex::new(HashMap::new()),
        }))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Key, CursorRecord>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an ack; written by the next flush. Returns false when it does
    /// not move the cursor (an older or repeated ack).
    pub fn ack(&self, client: &str, channel: &str, seq: i64, epoch: &str) -> bool {
        let rec = CursorRecord {
            v: CURSOR_VERSION,
            client: client.to_owned(),
            channel: channel.to_owned(),
            seq,
            epoch: epoch.to_owned(),
            ts: now_ms(),
        };
        let key = (client.to_owned(), channel.to_owned());
        let mut pending = self.pending();
        if let Some(old) = pending.get(&key) {
            if !rec.supersedes(old) {
                return false;
            }
        } else if let Some(k) = self.known.get(&key) {
            if k.cursor.as_ref().is_some_and(|old| !rec.supersedes(old)) {
                return false;
            }
        }
        pending.insert(key, rec);
        metrics::gauge!("herald_cursor_pending").set(pending.len() as f64);
        true
    }

    /// Writes every pending cursor and waits for Kafka to confirm. Failed
    /// writes stay pending (unless a newer ack replaced them meanwhile).
    /// Returns how many were written.
    pub async fn flush(&self) -> Result<usize, LogError> {
        let batch: Vec<(Key, CursorRecord)> =
            std::mem::take(&mut *self.pending()).into_iter().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let mut waits = Vec::with_capacity(batch.len());
        for (key, rec) in &batch {
            let k = cursor_key(&key.0, &key.1);
            let partition = partition_for_key(&k, self.partitions);
            let value = serde_json::to_vec(rec).map_err(|e| LogError::Other(e.to_string()))?;
            waits.push(
                self.log
                    .append_record(&self.topic, partition, &k, &value, &[]),
            );
        }
        let mut written = 0usize;
        let mut first_err = None;
        for ((key, rec), pending) in batch.into_iter().zip(waits) {
            let result = match pending {
                Ok(p) => p.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => {
                    written += 1;
                    // Remembered so an older ack that arrives later is not
                    // written again (lookups still read the log).
                    let mut k = self.known.get(&key).unwrap_or(Known {
                        cursor: None,
                        scanned_to: 0,
                    });
                    if k.cursor.as_ref().is_none_or(|old| rec.supersedes(old)) {
                        k.cursor = Some(rec);
                        self.known.insert(key, k);
                    }
                }
                Err(e) => {
                    metrics::counter!("herald_cursor_commit_errors_total").increment(1);
                    let mut pending = self.pending();
                    let newer = pending.get(&key).is_some_and(|p| p.supersedes(&rec));
                    if !newer {
                        pending.insert(key, rec);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        metrics::counter!("herald_cursor_commits_total").increment(written as u64);
        metrics::histogram!("herald_cursor_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("herald_cursor_pending").set(self.pending().len() as f64);
        match first_err {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// Flushes every `every` until the process ends.
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match store.flush().await {
                    Ok(0) => {}
                    Ok(n) => debug!(cursors = n, "Cursors committed"),
                    Err(e) => warn!(%e, "Cursor commit failed; retrying next interval"),
                }
            }
        })
    }

    /// The stored cursor of `client` on `channel` (an ack not yet flushed by
    /// this node counts too), or `None` when there is none.
    pub async fn lookup(
        &self,
        client: &str,
        channel: &str,
    ) -> Result<Option<CursorRecord>, LogError> {
        let key = (client.to_owned(), channel.to_owned());
        let k = cursor_key(client, channel);
        let partition = partition_for_key(&k, self.partitions);
        let wm = self.log.watermarks(&self.topic, partition).await?;
        let mut known = self.known.get(&key).unwrap_or(Known {
            cursor: None,
            scanned_to: wm.low,
        });
        let from = known.scanned_to.max(wm.low);
        let found = newest_per_key(
            &*self.log,
            &self.topic,
            partition,
            (from, wm.high),
            Some(&k),
            CursorRecord::supersedes,
        )
        .await?;
        if let Some(rec) = found.into_values().next() {
            if known.cursor.as_ref().is_none_or(|old| rec.supersedes(old)) {
                known.cursor = Some(rec);
            }
        }
        let scanned = (wm.high - from).max(0) as u64;
        known.scanned_to = wm.high.max(known.scanned_to);
        metrics::counter!("herald_cursor_scan_records_total").increment(scanned);
        self.known.insert(key.clone(), known.clone());
        let mut found = known.cursor;
        if let Some(p) = self.pending().get(&key) {
            if found.as_ref().is_none_or(|old| p.supersedes(old)) {
                found = Some(p.clone());
            }
        }
        let result = if found.is_some() { "found" } else { "none" };
        metrics::counter!("herald_cursor_lookups_total", "result" => result).increment(1);
        Ok(found)
    }

    /// Every stored cursor (the newest record per key), for operators'
    /// `herald offsets`. Reads the whole topic.
    pub async fn read_all(kafka: &Kafka) -> Result<Vec<CursorRecord>, LogError> {
        let topic = kafka.config().cursor_topic();
        let Some(partitions) = kafka.partition_count(&topic).await? else {
            return Ok(Vec::new());
        };
        let mut all = Vec::new();
        for p in 0..partitions {
            let wm = LogRead::watermarks(kafka, &topic, p).await?;
            let latest = newest_per_key(
                kafka,
                &topic,
                p,
                (wm.low, wm.high),
                None,
                CursorRecord::supersedes,
            )
            .await?;
            all.extend(latest.into_values());
        }
        all.sort_by(|a, b| (&a.client, &a.channel).cmp(&(&b.client, &b.channel)));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: i64, epoch: &str) -> CursorRecord {
        CursorRecord {
            v: CURSOR_VERSION,
            client: "c".into(),
            channel: "chat:a".into(),
            seq,
            epoch: epoch.into(),
            ts: 0,
        }
    }

    #[test]
    fn cursors_only_move_forward_within_an_epoch() {
        assert!(rec(5, "e").supersedes(&rec(4, "e")));
        assert!(!rec(4, "e").supersedes(&rec(4, "e")));
        assert!(!rec(3, "e").supersedes(&rec(4, "e")));
        assert!(rec(0, "f").supersedes(&rec(4, "e")));
    }

    #[test]
    fn keys_are_unambiguous_json() {
        assert_eq!(cursor_key("a", "chat:b"), br#"["a","chat:b"]"#.to_vec());
        assert_ne!(cursor_key("a\",\"b", "c"), cursor_key("a", "b\",\"c"));
    }
}
