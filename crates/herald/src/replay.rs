//! `herald replay`: read a range of one partition of a namespace's topic and
//! write it out as JSON Lines, republish it raw to another topic, or
//! re-deliver it live to the channel's subscribers (marked `replayed`).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use herald_hub::{Dedup, PublishOutcome, PublishRequest, Publisher};
use herald_log::{Kafka, LogConfig, LogRead, LogWrite, Record};
use herald_proto::partition::partition_for_key;
use herald_proto::{Envelope, Replayed};

use crate::Topics;

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub topics: Topics,
    /// The namespace whose topic is read.
    #[arg(long)]
    pub namespace: String,
    /// The partition to read.
    #[arg(long, allow_negative_numbers = true)]
    pub partition: i32,
    /// First offset to replay (default: the log start).
    #[arg(long, conflicts_with = "from_time", allow_negative_numbers = true)]
    pub from_offset: Option<i64>,
    /// Replay up to, not including, this offset (default: the log end when
    /// the replay starts).
    #[arg(long, conflicts_with = "to_time", allow_negative_numbers = true)]
    pub to_offset: Option<i64>,
    /// First record time to replay, RFC 3339 (e.g. 2026-11-22T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub from_time: Option<i64>,
    /// Replay records older than this time, RFC 3339.
    #[arg(long, value_parser = parse_time)]
    pub to_time: Option<i64>,
    /// Only this channel's records.
    #[arg(long)]
    pub channel: Option<String>,
    /// Write JSON Lines to this file instead of stdout.
    #[arg(long, conflicts_with_all = ["to_topic", "live"])]
    pub output: Option<std::path::PathBuf>,
    /// Republish the records, unchanged, to this topic (created with the
    /// source's partition count if missing; placed by key like any producer).
    #[arg(long, conflicts_with = "live")]
    pub to_topic: Option<String>,
    /// Re-deliver to the channels' live subscribers: each record is appended
    /// again to the namespace's topic with a new id and a `replayed` field
    /// naming the original.
    #[arg(long)]
    pub live: bool,
    /// Count what would be replayed; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many records written per second (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
}

fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{s}` is not an RFC 3339 time ({e}); e.g. 2026-11-22T10:00:00Z"))
}

/// Where the replayed records go.
enum Sink {
    Lines(Box<dyn Write>),
    Topic {
        name: String,
        partitions: i32,
    },
    /// Through the publish pipeline, as a backend's publish would go.
    Live {
        topic: String,
        publisher: Arc<Publisher>,
    },
    Count,
}

/// Progress on stderr: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Progress {
            bar,
            total,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, scanned: u64, written: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(scanned);
            return;
        }
        if self.last_line.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_line = Instant::now();
        self.line(scanned, written);
    }

    fn line(&self, scanned: u64, written: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = scanned as f64 / secs;
        let eta = if rate > 0.0 {
            format!("{:.0}s", (self.total.saturating_sub(scanned)) as f64 / rate)
        } else {
            "-".into()
        };
        eprintln!(
            "replay: {scanned}/{} records scanned ({:.0}%), {written} written, {rate:.0} records/s, ETA {eta}",
            self.total,
            100.0 * scanned as f64 / self.total.max(1) as f64
        );
    }

    fn finish(&self, scanned: u64, written: u64) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.line(scanned, written);
    }
}

pub async fn run(a: ReplayArgs) -> anyhow::Result<()> {
    let cfg = LogConfig {
        brokers: a.topics.kafka_brokers.clone(),
        topic_prefix: a.topics.topic_prefix.clone(),
        fetch_wait_max_ms: 5,
        ..LogConfig::default()
    };
    let kafka = Kafka::connect(cfg.clone())?;
    if !a.topics.namespaces.iter().any(|n| n.name == a.namespace) {
        bail!(
            "namespace `{}` is not configured (configured: {})",
            a.namespace,
            a.topics
                .namespaces
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let topic = cfg.topic_for(&a.namespace);
    let partitions = kafka
        .partition_count(&topic)
        .await?
        .with_context(|| format!("topic {topic} does not exist"))?;
    if a.partition < 0 || a.partition >= partitions {
        bail!(
            "partition {} is out of range: {topic} has partitions 0..={}",
            a.partition,
            partitions - 1
        );
    }
    if let Some(ch) = &a.channel {
        let channel = herald_proto::Channel::parse(ch).map_err(|e| anyhow::anyhow!("{e}"))?;
        if channel.namespace() != a.namespace {
            bail!("channel `{ch}` is not in namespace `{}`", a.namespace);
        }
        let p = partition_for_key(ch.as_bytes(), partitions);
        if p != a.partition {
            bail!(
                "channel `{ch}` lives in partition {p} of {topic}, not {}",
                a.partition
            );
        }
    }
    let wm = LogRead::watermarks(&*kafka, &topic, a.partition).await?;
    let from = bound(
        &kafka,
        &topic,
        a.partition,
        wm,
        "from",
        a.from_offset,
        a.from_time,
        wm.low,
    )
    .await?;
    let to = bound(
        &kafka,
        &topic,
        a.partition,
        wm,
        "to",
        a.to_offset,
        a.to_time,
        wm.high,
    )
    .await?;
    if let (Some(f), Some(t)) = (a.from_time, a.to_time) {
        if f > t {
            bail!("--from-time is after --to-time");
        }
    }
    if from > to {
        bail!("the range is empty or reversed: from offset {from} > to offset {to}");
    }

    let mut sink = if a.dry_run {
        Sink::Count
    } else if let Some(t) = &a.to_topic {
        if *t == topic {
            bail!("--to-topic is the source topic; use --live to re-deliver to subscribers");
        }
        let n = kafka
            .ensure_internal_topic(t, partitions, &[])
            .await
            .with_context(|| format!("creating or opening topic {t}"))?;
        Sink::Topic {
            name: t.clone(),
            partitions: n,
        }
    } else if a.live {
        // Every replayed record gets a new id, so the dedup window only
        // needs to hold the records in flight.
        let dedup = Dedup::new(Duration::from_secs(60), 10_000);
        let timeout = kafka.config().publish_timeout;
        Sink::Live {
            topic: topic.clone(),
            publisher: Publisher::new(kafka.clone(), dedup, timeout),
        }
    } else if let Some(path) = &a.output {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Sink::Lines(Box::new(std::io::BufWriter::new(f)))
    } else {
        Sink::Lines(Box::new(std::io::BufWriter::new(std::io::stdout())))
    };

    eprintln!(
        "replay: {topic} partition {} offsets [{from}, {to}){}{}",
        a.partition,
        a.channel
            .as_ref()
            .map(|c| format!(", channel {c}"))
            .unwrap_or_default(),
        if a.dry_run { " (dry run)" } else { "" }
    );
    let mut progress = Progress::new((to - from).max(0) as u64);
    let started = Instant::now();
    let (mut scanned, mut written) = (0u64, 0u64);
    let mut pending = Vec::new();
    let mut span = herald_log::Span::new(&*kafka, &topic, a.partition, from, to, 1000);
    loop {
        let pos = span.position();
        let Some(batch) = span.next_batch().await? else {
            break;
        };
        for r in &batch.records {
            if let Some(ch) = &a.channel {
                if r.key.as_deref() != Some(ch.as_bytes()) {
                    continue;
                }
            }
            if a.rate > 0 {
                let due = started + Duration::from_secs_f64(written as f64 / a.rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            write_one(&kafka, &mut sink, r, &mut pending)?;
            written += 1;
            if pending.len() >= 1000 {
                settle(&mut pending).await?;
            }
            progress.update((r.offset + 1 - from) as u64, written);
        }
        scanned += (batch.next - pos) as u64;
        progress.update(scanned, written);
    }
    settle(&mut pending).await?;
    if let Sink::Lines(w) = &mut sink {
        w.flush().context("writing output")?;
    }
    progress.finish(scanned, written);
    if a.dry_run {
        println!(
            "{}",
            serde_json::json!({
                "topic": topic,
                "partition": a.partition,
                "from": from,
                "to": to,
                "scanned": scanned,
                "matched": written,
            })
        );
    }
    eprintln!(
        "replay: done: {written} {} of {scanned} records scanned in {:.1}s",
        if a.dry_run {
            "would be replayed"
        } else {
            "replayed"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One end of the range: an explicit offset (which must be inside the log),
/// the first offset at or after a time, or `default`.
#[allow(clippy::too_many_arguments)]
async fn bound(
    kafka: &Kafka,
    topic: &str,
    partition: i32,
    wm: herald_log::Watermarks,
    flag: &str,
    offset: Option<i64>,
    time: Option<i64>,
    default: i64,
) -> anyhow::Result<i64> {
    if let Some(o) = offset {
        if o < wm.low {
            bail!(
                "--{flag}-offset {o} is below the log start {} of {topic}/{partition} (older records were removed by retention)",
                wm.low
            );
        }
        if o > wm.high {
            bail!(
                "--{flag}-offset {o} is past the log end {} of {topic}/{partition}",
                wm.high
            );
        }
        return Ok(o);
    }
    Ok(match time {
        Some(t) => kafka
            .offset_for_time(topic, partition, t)
            .await?
            .unwrap_or(wm.high),
        None => default,
    })
}

/// Appends waiting for Kafka's answer: an error names why one failed.
type Pending = Vec<BoxFuture<'static, Result<(), String>>>;

/// Waits for every republished record to be confirmed.
async fn settle(pending: &mut Pending) -> anyhow::Result<()> {
    for p in pending.drain(..) {
        if let Err(e) = p.await {
            bail!("Kafka did not confirm a republished record: {e}");
        }
    }
    Ok(())
}

fn write_one(
    kafka: &Arc<Kafka>,
    sink: &mut Sink,
    r: &Record,
    pending: &mut Pending,
) -> anyhow::Result<()> {
    match sink {
        Sink::Count => {}
        Sink::Lines(w) => {
            let key = r.key.as_deref().map(String::from_utf8_lossy);
            // The value as JSON when it is (herald's envelope), else a string.
            let value = r.value.as_deref().map(|v| {
                serde_json::from_slice::<serde_json::Value>(v).unwrap_or_else(|_| {
                    serde_json::Value::from(String::from_utf8_lossy(v).into_owned())
                })
            });
            let line = serde_json::json!({
                "topic": &*r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": r.timestamp_ms,
                "key": key,
                "value": value,
            });
            serde_json::to_writer(&mut *w, &line).context("writing output")?;
            w.write_all(b"\n").context("writing output")?;
        }
        Sink::Topic { name, partitions } => {
            let key = r.key.as_deref().unwrap_or_default();
            let value = r.value.as_deref().unwrap_or_default();
            // Copied unchanged; herald's headers go with a herald record.
            let headers = Envelope::decode(value, None).ok().map(|e| e.headers());
            let pairs = headers.as_ref().map(|h| h.pairs());
            let p = partition_for_key(key, *partitions);
            let append =
                kafka.append_record(name, p, key, value, pairs.as_ref().map_or(&[], |p| p))?;
            pending.push(
                append
                    .map(|r| r.map(drop).map_err(|e| e.to_string()))
                    .boxed(),
            );
        }
        Sink::Live { topic, publisher } => {
            let value = r.value.as_deref().unwrap_or_default();
            let Ok(orig) = Envelope::decode(value, r.key.as_deref()) else {
                // Not a herald record: nothing a subscriber could receive.
                return Ok(());
            };
            let answer = publisher.start(
                PublishRequest {
                    topic: topic.clone(),
                    partition: r.partition,
                    channel: orig.channel,
                    id: uuid::Uuid::new_v4(),
                    data: orig.data,
                    publisher: Some("herald-replay".into()),
                    retry: false,
                    tags: orig.tags,
                    replayed: Some(Replayed {
                        topic: r.topic.to_string(),
                        partition: r.partition,
                        offset: r.offset,
                        id: orig.id,
                    }),
                    started: Instant::now(),
                },
                (),
            );
            pending.push(
                answer
                    .map(|o| match o {
                        PublishOutcome::Acked { .. } => Ok(()),
                        PublishOutcome::Nacked { code, reason } => Err(format!("{code}: {reason}")),
                    })
                    .boxed(),
            );
        }
    }
    Ok(())
}
