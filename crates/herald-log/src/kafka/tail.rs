//! The partition tail: one consumer, assigned the partitions subscribers
//! need, feeding every record to the hub in offset order per partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::ranges::warm_topic;
use super::stats::{TailConsumer, TailStats, STATS_INTERVAL_MS};
use super::Kafka;
use crate::{LogError, Record, RecordSink};
use herald_proto::envelope::now_ms;

impl Kafka {
    /// Starts the partition tail feeding `sink`. Call once, before
    /// [`LogRead::follow`].
    pub fn start_tail(&self, sink: Arc<dyn RecordSink>) -> Result<(), LogError> {
        // With librdkafka's statistics: the tail is always being polled, so
        // they are consumed as they come (an idle, unpolled client would
        // queue them).
        let mut config = Self::consumer_config(&self.cfg, false);
        if !self
            .cfg
            .overrides
            .iter()
            .any(|(k, _)| k == "statistics.interval.ms")
        {
            config.set("statistics.interval.ms", STATS_INTERVAL_MS);
        }
        let consumer: TailConsumer = config.create_with_context(TailStats::default())?;
        let consumer = Arc::new(consumer);
        let tail = Tail {
            consumer: consumer.clone(),
            followed: Mutex::new(HashMap::new()),
        };
        if self.tail.set(tail).is_err() {
            return Err(LogError::Other("tail already started".into()));
        }
        tokio::spawn(async move {
            let mut topics: HashMap<String, Arc<str>> = HashMap::new();
            // Handles looked up once, not per record.
            let records = metrics::counter!("herald_log_tail_records_total");
            let delay = metrics::histogram!("herald_log_tail_delay_seconds");
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        // How long the record took from the producer to the
                        // tail (its CreateTime; same clock on one host, a
                        // cross-host skew shows up here too).
                        if let Some(ts) = m.timestamp().to_millis() {
                            delay.record((now_ms() - ts).max(0) as f64 / 1000.0);
                        }
                        let topic = match topics.get(m.topic()) {
                            Some(t) => t.clone(),
                            None => {
                                let t: Arc<str> = Arc::from(m.topic());
                                topics.insert(m.topic().to_owned(), t.clone());
                                t
                            }
                        };
                        records.increment(1);
                        sink.on_record(Record::from_message(&m, topic));
                    }
                    Err(e) => {
                        metrics::counter!("herald_log_errors_total", "op" => "tail").increment(1);
                        warn!(%e, "Tail read failed; librdkafka retries");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }

    /// Makes the tail follow a partition from `from` (see [`crate::LogRead::follow`]).
    pub(super) fn follow_partition(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<(), LogError> {
        let tail = self
            .tail
            .get()
            .ok_or_else(|| LogError::Other("tail not started".into()))?;
        let mut followed = tail.followed.lock().unwrap_or_else(|p| p.into_inner());
        if followed.contains_key(&(topic.to_owned(), partition)) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
        let first_of_topic = !followed.keys().any(|(t, _)| t == topic);
        tail.consumer.incremental_assign(&tpl)?;
        followed.insert((topic.to_owned(), partition), from);
        if first_of_topic {
            // Off the caller's thread: the answer updates the assigned
            // partition inside librdkafka; if it fails, the once-a-second
            // scan still finds the leader, only later.
            let (c, name, t) = (
                tail.consumer.clone(),
                topic.to_owned(),
                self.cfg.request_timeout,
            );
            let spawned = std::thread::Builder::new()
                .name("herald-tail-metadata".into())
                .spawn(move || {
                    if let Err(e) = warm_topic(&*c, &name, t) {
                        metrics::counter!("herald_log_errors_total", "op" => "metadata")
                            .increment(1);
                        warn!(%e, topic = %name, "Metadata for a newly tailed topic failed; librdkafka finds its leader within a second");
                    }
                });
            if let Err(e) = spawned {
                warn!(%e, "Could not start the tail's metadata lookup");
            }
        }
        debug!(topic, partition, from, "Tailing partition");
        set_tailed_gauge(&followed, topic);
        Ok(())
    }

    /// Takes a partition off the tail (see [`crate::LogRead::unfollow`]).
    pub(super) fn unfollow_partition(&self, topic: &str, partition: i32) -> Result<(), LogError> {
        let tail = self
            .tail
            .get()
            .ok_or_else(|| LogError::Other("tail not started".into()))?;
        let mut followed = tail.followed.lock().unwrap_or_else(|p| p.into_inner());
        if !followed.contains_key(&(topic.to_owned(), partition)) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        tail.consumer.incremental_unassign(&tpl)?;
        followed.remove(&(topic.to_owned(), partition));
        debug!(topic, partition, "No longer tailing partition");
        set_tailed_gauge(&followed, topic);
        Ok(())
    }
}

/// `herald_log_tailed_partitions{topic}`: per topic, so herald's own
/// always-followed topics (control, presence) stay apart from the
/// namespaces' partitions that come and go with subscribers.
fn set_tailed_gauge(followed: &HashMap<(String, i32), i64>, topic: &str) {
    let n = followed.keys().filter(|(t, _)| t == topic).count();
    metrics::gauge!("herald_log_tailed_partitions", "topic" => topic.to_owned()).set(n as f64);
}

pub(super) struct Tail {
    consumer: Arc<TailConsumer>,
    /// Partitions assigned to the tail, with the offset they started from.
    followed: Mutex<HashMap<(String, i32), i64>>,
}
