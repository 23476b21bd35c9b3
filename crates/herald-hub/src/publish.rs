//! The publish pipeline, one for every entry point (WebSocket, the server
//! HTTP API, `herald replay --live`): claim the id, look for an earlier
//! attempt when the client says it is retrying, append, wait for Kafka's
//! answer, settle the claim, count the outcome.
//!
//! Validation and authorization are the caller's: by the time a publish gets
//! here it is allowed and within the limits.
//!
//! # The answer's deadline
//! A publish Kafka has not confirmed within the publish timeout is nacked
//! `unavailable`, but its record may still be stored: after a leader fails
//! over, a record the old leader took can be committed by the new one seconds
//! later. So the append stays in flight (librdkafka keeps retrying it under
//! the same producer sequence, for at least `herald_log`'s delivery timeout)
//! and its dedup claim stays held until Kafka answers; a re-send with the
//! same id joins it and gets the seq it ends up with, instead of appending a
//! second record next to the first.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use herald_log::{LogError, LogWrite, PendingPublish};
use herald_proto::envelope::now_ms;
use herald_proto::frame::Replayed;
use herald_proto::{codes, Envelope};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::dedup::{Claim, Dedup, DedupOutcome, Slot};

/// How far back (in records of the channel's partition) a retried publish
/// is looked for, besides the dedup window's time bound.
pub const RETRY_SCAN_RECORDS: i64 = 50_000;

/// What a node's publishes share: the log, the dedup window and the
/// deadline of an answer.
pub struct Publisher {
    log: Arc<dyn LogWrite>,
    dedup: Dedup,
    /// How long a client waits for Kafka's answer (`kafka.publish_timeout_ms`).
    timeout: Duration,
    /// Retry scans running at once on this node: any publisher may set
    /// `retry: true` on every publish, and each scan reads up to
    /// [`RETRY_SCAN_RECORDS`]; the rest wait (and their connections with
    /// them, through their in-flight permits).
    scans: tokio::sync::Semaphore,
}

/// Retry scans at once per node.
pub const RETRY_SCANS: usize = 4;

/// One publish, validated and authorized by its caller.
pub struct PublishRequest {
    pub topic: String,
    pub partition: i32,
    pub channel: String,
    pub id: Uuid,
    pub data: Box<RawValue>,
    /// Who publishes, written into the envelope (see [`Envelope::publisher`]).
    pub publisher: Option<std::sync::Arc<str>>,
    /// The client says an earlier attempt's answer was lost: look for that
    /// record before appending.
    pub retry: bool,
    /// Set by `herald replay --live`: where the original record is.
    pub replayed: Option<Replayed>,
    /// The message's tags (checked against their bounds by the caller).
    pub tags: Option<herald_proto::Tags>,
    /// When the caller took the publish in (the latency histogram's start).
    pub started: Instant,
}

/// A publish on its way: where it goes and its record.
struct Job {
    topic: String,
    partition: i32,
    env: Envelope,
}

/// What the publisher is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Kafka has the record (now, or from an earlier attempt: `duplicate`).
    Acked { seq: i64, duplicate: bool },
    /// Not stored, or not known to be: the code and reason of a nack.
    Nacked { code: &'static str, reason: String },
}

impl Publisher {
    pub fn new(log: Arc<dyn LogWrite>, dedup: Dedup, timeout: Duration) -> Arc<Publisher> {
        Arc::new(Publisher {
            log,
            dedup,
            timeout,
            scans: tokio::sync::Semaphore::new(RETRY_SCANS),
        })
    }

    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Starts a publish. The claim and, unless it is a retry, the append
    /// are done before this returns, so appends started in order by one
    /// caller are stored in that order. The returned future does the rest
    /// and owns all it needs; `guard` (a caller's in-flight permit) is
    /// dropped when the append is settled, which can be after the future's
    /// answer when Kafka is late.
    ///
    /// Dropping the future before it resolves abandons the claim: callers
    /// that may be cancelled (an HTTP handler) spawn it.
    pub fn start(
        self: &Arc<Self>,
        req: PublishRequest,
        guard: impl Send + 'static,
    ) -> impl Future<Output = PublishOutcome> + Send + 'static {
        let this = self.clone();
        let mut env = Envelope::new(req.id, req.channel, req.publisher, req.data);
        env.replayed = req.replayed;
        env.tags = req.tags;
        let job = Job {
            topic: req.topic,
            partition: req.partition,
            env,
        };
        let claim = self.dedup.claim(&job.env.channel, job.env.id);
        // Enqueued now, in the caller's order; a retry looks first.
        let appended = match &claim {
            Claim::First(_) if !req.retry => Some(self.append(&job)),
            _ => None,
        };
        async move {
            let outcome = match claim {
                Claim::Seen(seen) => {
                    let waited = tokio::time::timeout(this.timeout, Dedup::wait(seen)).await;
                    drop(guard);
                    match waited {
                        Ok(DedupOutcome::Appended(seq)) => PublishOutcome::Acked {
                            seq,
                            duplicate: true,
                        },
                        Ok(DedupOutcome::Failed(code, reason)) => {
                            PublishOutcome::Nacked { code, reason }
                        }
                        Err(_) => unconfirmed(this.timeout),
                    }
                }
                Claim::First(slot) => match appended {
                    Some(pending) => this.confirm(&job, slot, pending, guard).await,
                    None => this.retry(&job, slot, guard).await,
                },
            };
            record(&outcome, req.started);
            outcome
        }
    }

    fn append(&self, job: &Job) -> Result<PendingPublish, LogError> {
        self.log.append(&job.topic, job.partition, &job.env)
    }

    /// A retry: the first attempt may have been appended by a node that died
    /// before answering, so the partition is searched (the dedup window back)
    /// before appending.
    async fn retry(
        self: &Arc<Self>,
        job: &Job,
        slot: Slot,
        guard: impl Send + 'static,
    ) -> PublishOutcome {
        let found = self
            .find_stored(&job.topic, job.partition, &job.env.channel, job.env.id)
            .await;
        match found {
            Ok(Some(seq)) => {
                metrics::counter!("herald_publish_retries_found_total").increment(1);
                let o = DedupOutcome::Appended(seq);
                self.dedup.complete(&slot, o);
                PublishOutcome::Acked {
                    seq,
                    duplicate: true,
                }
            }
            Ok(None) => {
                let pending = self.append(job);
                self.confirm(job, slot, pending, guard).await
            }
            Err(e) => {
                self.dedup.complete(&slot, failed(&e));
                nacked(&e)
            }
        }
    }

    /// Waits up to the publish timeout for Kafka's answer, settles the claim
    /// with it and drops `guard`. When the answer is late, a task takes the
    /// append over and does both when it comes.
    async fn confirm(
        self: &Arc<Self>,
        job: &Job,
        slot: Slot,
        pending: Result<PendingPublish, LogError>,
        guard: impl Send + 'static,
    ) -> PublishOutcome {
        let mut pending = match pending {
            Ok(p) => p,
            Err(e) => {
                self.dedup.complete(&slot, failed(&e));
                return nacked(&e);
            }
        };
        match tokio::time::timeout(self.timeout, &mut pending).await {
            Ok(result) => {
                let (topic, channel) = (&job.topic, &job.env.channel);
                let result = self
                    .locate(topic, job.partition, channel, job.env.id, result)
                    .await;
                self.settle(&slot, &result);
                drop(guard);
                match result {
                    Ok(seq) => PublishOutcome::Acked {
                        seq,
                        duplicate: false,
                    },
                    Err(e) => nacked(&e),
                }
            }
            Err(_) => {
                metrics::counter!("herald_publish_unconfirmed_total").increment(1);
                let this = self.clone();
                let (topic, partition) = (job.topic.clone(), job.partition);
                let (channel, id) = (job.env.channel.clone(), job.env.id);
                tokio::spawn(async move {
                    let result = pending.await;
                    let result = this.locate(&topic, partition, &channel, id, result).await;
                    this.settle(&slot, &result);
                    drop(guard);
                });
                unconfirmed(self.timeout)
            }
        }
    }

    /// The record of `channel`'s publish `id` in its partition, searched
    /// the dedup window back (at most [`RETRY_SCAN_RECORDS`]), at most
    /// [`RETRY_SCANS`] searches at once.
    async fn find_stored(
        &self,
        topic: &str,
        partition: i32,
        channel: &str,
        id: Uuid,
    ) -> Result<Option<i64>, LogError> {
        let since = now_ms() - self.dedup.window().as_millis() as i64;
        let _scan = self.scans.acquire().await;
        self.log
            .find_message(topic, partition, channel, id, since, RETRY_SCAN_RECORDS)
            .await
    }

    /// Kafka's answer, with the offset of a record it said was stored
    /// without saying where (a negative offset: librdkafka's -1001 for an
    /// idempotent retry the broker already had) looked up in the partition:
    /// a client is acked with the record's real seq or nacked as possibly
    /// stored ([`LogError::OffsetUnknown`]), never given an offset that is
    /// not one. Appends whose offset nobody is told (cursors, presence)
    /// take such an answer as it is.
    async fn locate(
        &self,
        topic: &str,
        partition: i32,
        channel: &str,
        id: Uuid,
        result: Result<i64, LogError>,
    ) -> Result<i64, LogError> {
        if !matches!(result, Ok(offset) if offset < 0) {
            return result;
        }
        match self.find_stored(topic, partition, channel, id).await {
            Ok(Some(seq)) => {
                metrics::counter!("herald_publish_offsets_located_total").increment(1);
                Ok(seq)
            }
            Ok(None) => Err(LogError::OffsetUnknown),
            Err(e) => Err(e),
        }
    }

    fn settle(&self, slot: &Slot, result: &Result<i64, LogError>) {
        let outcome = match result {
            Ok(seq) => DedupOutcome::Appended(*seq),
            Err(e) => failed(e),
        };
        self.dedup.complete(slot, outcome);
    }
}

/// The nack code for a failed append.
pub fn error_code(e: &LogError) -> &'static str {
    if e.is_too_large() {
        codes::TOO_LARGE
    } else if e.is_retriable() {
        codes::UNAVAILABLE
    } else {
        codes::INTERNAL
    }
}

/// Why an append failed, as a client is told.
fn reason(e: &LogError) -> String {
    if e.may_be_stored() {
        format!("{e}; it may have been stored: retry with `retry: true` and the same id")
    } else {
        format!("not stored: {e}")
    }
}

fn failed(e: &LogError) -> DedupOutcome {
    DedupOutcome::Failed(error_code(e), reason(e))
}

fn nacked(e: &LogError) -> PublishOutcome {
    metrics::counter!("herald_log_errors_total", "op" => "publish").increment(1);
    PublishOutcome::Nacked {
        code: error_code(e),
        reason: reason(e),
    }
}

/// The nack of a publish still waiting for Kafka.
fn unconfirmed(limit: Duration) -> PublishOutcome {
    PublishOutcome::Nacked {
        code: codes::UNAVAILABLE,
        reason: format!(
            "not confirmed by Kafka within {} ms; it may still be stored: \
             retry with `retry: true` and the same id",
            limit.as_millis()
        ),
    }
}

/// The metrics of a publish's outcome, the same for every entry point.
fn record(outcome: &PublishOutcome, started: Instant) {
    match outcome {
        PublishOutcome::Acked {
            duplicate: true, ..
        } => metrics::counter!("herald_publish_duplicates_total").increment(1),
        PublishOutcome::Acked { .. } => {
            // Handles registered once: a lookup by name per publish showed
            // in the profile (loadtest/profile.sh).
            static ACKS: OnceLock<(metrics::Counter, metrics::Histogram)> = OnceLock::new();
            let (acks, latency) = ACKS.get_or_init(|| {
                (
                    metrics::counter!("herald_publish_acks_total"),
                    metrics::histogram!("herald_publish_latency_seconds"),
                )
            });
            acks.increment(1);
            latency.record(started.elapsed().as_secs_f64());
        }
        PublishOutcome::Nacked { code, .. } => refused(code),
    }
}

/// Counts a nack: the pipeline's own, and a caller's refusal before it (a
/// rate limit, a size limit, an access rule).
pub fn refused(code: &'static str) {
    metrics::counter!("herald_publish_nacks_total", "code" => code).increment(1);
}
