//! Watermark and time lookups, and the pool of range readers: resume
//! catch-up, history, retry scans and cursor lookups all read through it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error};

use super::Kafka;
use crate::{LogError, RangeBatch, Record, Watermarks};

/// Range readers kept idle for reuse; creating a librdkafka consumer costs a
/// few threads and a connection.
pub(super) const IDLE_READERS: usize = 4;
/// Range reads running at once (a reconnect storm queues here, not in librdkafka).
pub(super) const CONCURRENT_READS: usize = 16;
/// How long a reader trusts that librdkafka still knows a topic it asked
/// about (its metadata cache keeps entries far longer; see [`warm_topic`]).
const WARM_FOR: Duration = Duration::from_secs(60);

/// Makes a client know `topic`'s partition leaders before (or right after)
/// it assigns one of its partitions. librdkafka's `assign()` of a topic the
/// client has never looked up does not ask for its metadata: the partition
/// waits for the once-a-second scan of unknown topics, so its first fetch
/// comes up to a second late (docs/benchmarks.md, P1). A metadata request for the topic fills
/// the client's cache, which `assign()` reads, and updates an already
/// assigned partition at once.
pub(super) fn warm_topic<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    consumer.fetch_metadata(Some(topic), timeout).map(|_| ())
}

/// `fetch.wait.max.ms` of range readers (`kafka.fetch_wait_max_ms` when
/// lower). A range read asks for records that exist, up to a known end; a
/// long wait buys it nothing, and a Fetch left waiting at the end of the log
/// when a read ends delays the reader's next read (another partition or
/// offset) until it returns (docs/benchmarks.md, P4 on Kafka).
pub(super) const RANGE_FETCH_WAIT_MS: u32 = 5;

/// How long an idle reader stays assigned where its last range read ended,
/// for the next read to continue without a new assignment.
const CONTINUE_FOR: Duration = Duration::from_secs(2);

/// The shortest metadata lookup a retried watermark read makes.
const MIN_LOOKUP: Duration = Duration::from_millis(500);

/// The range readers' librdkafka context. A reader stays assigned for a
/// while after its read ([`CONTINUE_FOR`]) and reports reaching the end of
/// the partition (`enable.partition.eof`); when nobody is reading it then,
/// the event comes out as a client-level error, which librdkafka's default
/// context logs at ERROR (hundreds per reconnect storm before 2026-12-02).
/// The end of a partition is no error: it is logged at debug; every other
/// error as before.
pub(super) struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_partition_end(&error) {
            debug!(%error, reason, "Range reader reached the end of a partition");
        } else {
            error!(%error, reason, "librdkafka: range reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

fn is_partition_end(e: &KafkaError) -> bool {
    matches!(e, KafkaError::PartitionEOF(_))
        || e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}

type ReaderConsumer = StreamConsumer<ReaderContext>;

/// A pooled range reader and the topics it has looked up.
pub(super) struct Reader {
    consumer: Arc<ReaderConsumer>,
    warmed: HashMap<String, Instant>,
    /// Still assigned at (topic, partition, next offset) since the instant:
    /// the previous read stopped at its record limit and the next record is
    /// already on its way.
    at: Option<(String, i32, i64, Instant)>,
}

impl Reader {
    fn continues(&self, topic: &str, partition: i32, from: i64) -> bool {
        matches!(&self.at, Some((t, p, o, since))
            if t == topic && *p == partition && *o == from && since.elapsed() < CONTINUE_FOR)
    }

    /// Drops a stale assignment (librdkafka keeps fetching for an assigned
    /// partition until its queue is full).
    fn release(&mut self) -> Result<(), KafkaError> {
        if self.at.take().is_some() {
            self.consumer.unassign()?;
        }
        Ok(())
    }
}

/// Drops a reader off the async workers: closing a librdkafka consumer
/// blocks until its threads have stopped.
fn retire(r: Reader) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(move || drop(r));
        }
        Err(_) => drop(r),
    }
}

/// Errors a broker answers for a partition its metadata has not caught up
/// with yet.
fn not_known_yet(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::UnknownPartition
                | C::UnknownTopicOrPartition
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
        )
    )
}

impl Kafka {
    pub(super) async fn watermarks_now(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Watermarks, LogError> {
        let t = self.cfg.request_timeout;
        let name = topic.to_owned();
        let (low, high) = self
            .blocking("watermarks", move |c| {
                // A partition just created or just given a new leader may
                // be unknown to the broker that metadata names as its leader
                // for a moment (KRaft applies metadata on each broker
                // asynchronously): asked again until the request timeout.
                // The client answers "unknown partition" from the metadata
                // it remembers (fewer partitions than exist: it looked while
                // the topic was being created) and refreshes that only every
                // few minutes, so each retry looks the topic up first.
                let deadline = Instant::now() + t;
                loop {
                    match c.fetch_watermarks(&name, partition, t) {
                        Err(e) if not_known_yet(&e) && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(200));
                            let left = deadline.saturating_duration_since(Instant::now());
                            let _ = c.fetch_metadata(Some(&name), left.max(MIN_LOOKUP));
                        }
                        r => return r,
                    }
                }
            })
            .await?;
        Ok(Watermarks { low, high })
    }

    /// The first offset whose timestamp is at or after `ts_ms`, or `None` if
    /// every record is older.
    pub async fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        ts_ms: i64,
    ) -> Result<Option<i64>, LogError> {
        let wm = self.watermarks_now(topic, partition).await?;
        self.offset_for_time_in(topic, partition, ts_ms, wm).await
    }

    /// [`Kafka::offset_for_time`] with watermarks the caller already has.
    async fn offset_for_time_in(
        &self,
        topic: &str,
        partition: i32,
        ts_ms: i64,
        wm: Watermarks,
    ) -> Result<Option<i64>, LogError> {
        if wm.high <= wm.low {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(ts_ms))?;
        let t = self.cfg.request_timeout;
        let res = self
            .blocking("offsets_for_times", move |c| c.offsets_for_times(tpl, t))
            .await?;
        let off = res
            .elements()
            .first()
            .map(|e| e.offset())
            .unwrap_or(Offset::End);
        Ok(match off {
            Offset::Offset(o) => Some(o.max(wm.low)),
            _ => None,
        })
    }
    /// An idle reader: the one whose last read ended at `from` of this
    /// partition if there is one (true: it is still assigned there), else
    /// any, unassigned.
    fn take_reader(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<(Reader, bool), LogError> {
        let found = {
            let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            match idle
                .iter()
                .position(|r| r.continues(topic, partition, from))
            {
                Some(i) => return Ok((idle.swap_remove(i), true)),
                None => idle.pop(),
            }
        };
        if let Some(mut r) = found {
            if let Err(e) = r.release() {
                retire(r);
                return Err(e.into());
            }
            return Ok((r, false));
        }
        Ok((
            Reader {
                consumer: self.reader_consumer()?,
                warmed: HashMap::new(),
                at: None,
            },
            false,
        ))
    }

    fn reader_consumer(&self) -> Result<Arc<ReaderConsumer>, KafkaError> {
        Ok(Arc::new(
            Self::consumer_config(&self.cfg, true).create_with_context(ReaderContext)?,
        ))
    }

    /// Fills the pool of idle readers, each connected to the leaders of
    /// `topics`' partitions with their metadata looked up. Creating a
    /// reader, looking the topic up and connecting to the partition's
    /// leader cost the first range read of a node just started about 15 ms
    /// on one local broker (docs/benchmarks.md, P4 cold).
    pub(super) async fn prepare_readers(&self, topics: &[String]) -> Result<(), LogError> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).len();
        let mut made = Vec::new();
        for _ in idle..IDLE_READERS {
            let consumer = self.reader_consumer()?;
            let (c, names, t) = (consumer.clone(), topics.to_vec(), self.cfg.request_timeout);
            made.push(tokio::task::spawn_blocking(
                move || -> Result<_, KafkaError> {
                    let mut warmed = HashMap::new();
                    for name in names {
                        let md = c.fetch_metadata(Some(&name), t)?;
                        // One partition per leader: a watermark request opens
                        // the connection a fetch from that leader will use.
                        let mut leaders = HashMap::new();
                        for tm in md.topics().iter().filter(|tm| tm.name() == name) {
                            // A partition without a leader (-1) has nobody
                            // to connect to yet.
                            for p in tm.partitions().iter().filter(|p| p.leader() >= 0) {
                                leaders.entry(p.leader()).or_insert(p.id());
                            }
                        }
                        for partition in leaders.into_values() {
                            c.fetch_watermarks(&name, partition, t)?;
                        }
                        warmed.insert(name, Instant::now());
                    }
                    Ok(Reader {
                        consumer: c,
                        warmed,
                        at: None,
                    })
                },
            ));
        }
        let mut first_error = None;
        for m in made {
            match m.await {
                Ok(Ok(r)) => {
                    let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
                    if idle.len() < IDLE_READERS {
                        idle.push(r);
                    } else {
                        drop(idle);
                        retire(r);
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(LogError::from(e));
                }
                Err(e) => {
                    first_error.get_or_insert(LogError::Task(format!("reader: {e}")));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Back to the pool; `next` when the read stopped at its record limit, so
    /// that a read continuing from there keeps this assignment.
    fn return_reader(&self, mut r: Reader, topic: &str, partition: i32, next: Option<i64>) {
        match next {
            Some(o) => r.at = Some((topic.to_owned(), partition, o, Instant::now())),
            None => {
                if r.consumer.unassign().is_err() {
                    return retire(r);
                }
                r.at = None;
            }
        }
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        // Readers left assigned and not continued in time are released here,
        // as other reads come and go.
        for other in idle.iter_mut() {
            if other
                .at
                .as_ref()
                .is_some_and(|a| a.3.elapsed() >= CONTINUE_FOR)
            {
                let _ = other.release();
            }
        }
        if idle.len() < IDLE_READERS {
            idle.push(r);
        } else {
            drop(idle);
            retire(r);
        }
    }

    pub(super) async fn range(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        max: usize,
    ) -> Result<RangeBatch, LogError> {
        if from >= to || max == 0 {
            return Ok(RangeBatch {
                records: Vec::new(),
                next: from,
            });
        }
        let _permit = self
            .read_permits
            .acquire()
            .await
            .map_err(|e| LogError::Task(e.to_string()))?;
        let (mut reader, continuing) = self.take_reader(topic, partition, from)?;
        if !continuing {
            if reader
                .warmed
                .get(topic)
                .is_none_or(|at| at.elapsed() > WARM_FOR)
            {
                let (c, name, t) = (
                    reader.consumer.clone(),
                    topic.to_owned(),
                    self.cfg.request_timeout,
                );
                tokio::task::spawn_blocking(move || warm_topic(&*c, &name, t))
                    .await
                    .map_err(|e| LogError::Task(format!("metadata: {e}")))??;
                reader.warmed.insert(topic.to_owned(), Instant::now());
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
            reader.consumer.assign(&tpl)?;
        }
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        // Ok(true): stopped at `to`, at `max` records or at RANGE_MAX_BYTES,
        // the consumer's next record being `next`; Ok(false): stopped at the
        // end of the log.
        let result = loop {
            if next >= to || out.len() >= max || bytes >= crate::RANGE_MAX_BYTES {
                break Ok(true);
            }
            // The deadline is per record, not per batch: a large catch-up on
            // a busy broker is slow but making progress, and must not fail.
            // A record already fetched is taken without arming a timer: a
            // timeout per record cost a read of 10,000 about a tenth of its
            // time (docs/benchmarks.md, P4 cold). Only a wait is bounded.
            let ready = reader.consumer.recv().now_or_never();
            let got = match ready {
                Some(r) => Ok(r),
                None => {
                    tokio::time::timeout(self.cfg.request_timeout, reader.consumer.recv()).await
                }
            };
            let msg = match got {
                Err(_) => break Err(LogError::Timeout(self.cfg.request_timeout, "a range read")),
                Ok(Err(KafkaError::PartitionEOF(_))) => {
                    let wm = self.watermarks_now(topic, partition).await?;
                    if wm.low > next {
                        // The records from `next` were deleted (retention)
                        // and the reader was reset past them: say where the
                        // log starts now; the caller decides what the hole
                        // means.
                        next = wm.low.min(to);
                        break Ok(false);
                    }
                    if wm.high > next {
                        // Records exist past this reader's position: the end
                        // it reached was passed since, or the event is left
                        // over from this reader's previous read (a continued
                        // reader). Read on; never skip them. (Should what
                        // lies there be undeliverable, such as a foreign
                        // producer's transaction markers, the read times out
                        // with an error rather than jump over it.)
                        continue;
                    }
                    // Everything that exists was read; the broker's view may
                    // be behind `to`, but nothing more exists yet.
                    next = to;
                    break Ok(false);
                }
                Ok(Err(e)) => break Err(LogError::Kafka(e)),
                Ok(Ok(m)) => m,
            };
            if msg.topic() != topic || msg.partition() != partition || msg.offset() < next {
                // A leftover of this reader's previous assignment, or a re-fetch.
                continue;
            }
            if msg.offset() >= to {
                next = to;
                break Ok(false);
            }
            next = msg.offset() + 1;
            let r = Record::from_message(&msg, topic_arc.clone());
            bytes += crate::record_bytes(&r);
            out.push(r);
        };
        match result {
            Ok(positioned) => {
                self.return_reader(reader, topic, partition, positioned.then_some(next));
                Ok(RangeBatch { records: out, next })
            }
            // A reader that failed mid-read is dropped, not reused.
            Err(e) => {
                retire(reader);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_end_of_a_partition_is_quieted() {
        assert!(is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(is_partition_end(&KafkaError::PartitionEOF(3)));
        for other in [
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            KafkaError::Global(RDKafkaErrorCode::UnknownTopicOrPartition),
        ] {
            assert!(!is_partition_end(&other), "{other}");
        }
    }
}
