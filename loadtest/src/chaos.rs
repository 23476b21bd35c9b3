//! The randomized fault checker (`herald-loadtest chaos`, and a short run in
//! the test suite): resilient publishers and subscribers on several channels
//! across several herald nodes, while a nemesis on a seeded schedule kills,
//! restarts and pauses brokers and herald nodes and cuts client connections.
//! Every operation is recorded; afterwards the history is checked against
//! the topic itself, read straight from Kafka:
//!
//! - every acked publish is in the log, at the `seq` it was acked with;
//! - no message id is stored twice (so a publish whose outcome the client
//!   never learned is in the log exactly once, or not at all);
//! - nothing is in the log that no publisher sent;
//! - every subscriber got, per channel, exactly the log's records of that
//!   channel, in order, once each: nothing lost, nothing twice, nothing
//!   that was not published.
//!
//! One fault at a time: each is injected, held a while, healed, and the
//! schedule goes on, so a run never takes down two brokers or two nodes at
//! once (that case has its own deterministic test). The schedule is a
//! function of the seed (a SplitMix64 stream, written out here so that a
//! seed replays the same schedule whatever crate versions are in use); the
//! timing of everything else is the machine's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::nodes::{cluster, free_port, namespaces_file, Node};
use herald_client::resilient::{Publisher, Stats, Subscriber};
use herald_proto::Envelope;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

/// What a run does.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// The `herald` binary the nodes run.
    pub herald_bin: PathBuf,
    pub brokers: String,
    /// `infra/dev/cluster.sh`: broker faults are injected through it (nodes
    /// 1-3). Without it only herald nodes and clients are faulted.
    pub cluster_script: Option<PathBuf>,
    /// herald nodes (2 or more: one may be down at any time).
    pub nodes: usize,
    pub channels: usize,
    pub subscribers: usize,
    /// How long faults are injected; the run then heals and checks.
    pub duration: Duration,
    pub seed: u64,
    /// Pause between publishes of one publisher.
    pub pace: Duration,
    /// Extra `herald serve` arguments (replication settings, say).
    pub herald_args: Vec<String>,
    pub topic_prefix: String,
    /// A soak instead of faults ([`crate::soak`]).
    pub soak: Option<crate::soak::SoakConfig>,
}

/// One fault the nemesis can inject.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL a herald node, start it again after a while.
    KillNode(usize),
    /// SIGTERM a herald node (it drains), start it again.
    RestartNode(usize),
    /// SIGKILL a broker, start it again after a while.
    KillBroker(i32),
    /// SIGSTOP a broker for a while, then SIGCONT.
    PauseBroker(i32),
    /// Reset every client connection (TCP RST).
    CutClients,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub ran_for: Duration,
    pub faults: Vec<String>,
    pub invoked: usize,
    pub acked: usize,
    /// Publishes whose client gave up without an answer.
    pub unknown: usize,
    pub unknown_stored: usize,
    pub stored: usize,
    pub delivered: usize,
    pub publisher_retries: u64,
    pub subscriber_reconnects: u64,
    pub not_recovered: u64,
    pub duplicates_dropped_by_clients: u64,
    /// What the checker found wrong; empty when the run holds.
    pub problems: Vec<String>,
    /// A soak's samples, and its (history pages, presence churns).
    pub samples: Vec<crate::soak::Sample>,
    pub browsed: (u64, u64),
}

impl ChaosReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "chaos seed={} ran={:.0}s faults={} invoked={} acked={} unknown={} (stored {}) \
             stored={} delivered={} publisher_retries={} subscriber_reconnects={} \
             not_recovered={} duplicates_dropped_by_clients={} problems={}",
            self.seed,
            self.ran_for.as_secs_f64(),
            self.faults.len(),
            self.invoked,
            self.acked,
            self.unknown,
            self.unknown_stored,
            self.stored,
            self.delivered,
            self.publisher_retries,
            self.subscriber_reconnects,
            self.not_recovered,
            self.duplicates_dropped_by_clients,
            self.problems.len()
        );
        for f in &self.faults {
            s.push_str("\n  fault: ");
            s.push_str(f);
        }
        for p in self.problems.iter().take(20) {
            s.push_str("\n  PROBLEM: ");
            s.push_str(p);
        }
        s
    }
}

/// SplitMix64: the schedule's random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// What the clients did.
#[derive(Default)]
struct History {
    invoked: Vec<(String, Uuid)>,
    acked: Vec<(String, Uuid, i64)>,
    unknown: Vec<(String, Uuid)>,
}

/// Runs the clients and the nemesis, heals, and checks.
pub async fn run(cfg: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let began = Instant::now();
    let mut base_args = vec![
        "--kafka-brokers".to_owned(),
        cfg.brokers.clone(),
        "--topic-prefix".to_owned(),
        cfg.topic_prefix.clone(),
        "--config".to_owned(),
        namespaces_file(&cfg.topic_prefix)?,
        "--drain-delay-ms".to_owned(),
        "100".to_owned(),
        "--reconnect-jitter-ms".to_owned(),
        "300".to_owned(),
        "--shutdown-grace-secs".to_owned(),
        "5".to_owned(),
        "--fetch-wait-max-ms".to_owned(),
        "5".to_owned(),
    ];
    base_args.extend(cfg.herald_args.iter().cloned());
    let mut nodes = Vec::new();
    for _ in 0..cfg.nodes.max(2) {
        nodes.push(Node {
            port: free_port()?,
            args: base_args.clone(),
            bin: cfg.herald_bin.clone(),
            child: None,
        });
    }
    // One at a time: the first creates the topic and its epoch.
    for n in &mut nodes {
        n.start()?;
    }
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let channels: Vec<String> = (0..cfg.channels.max(1))
        .map(|i| format!("chat:chaos-{i}"))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    // Bumped to make every client cut its connection.
    let cuts = Arc::new(AtomicU64::new(0));
    let delivered: Arc<Mutex<Vec<Vec<herald_client::Msg>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); cfg.subscribers.max(1)]));

    // Subscribers first, from the start of every channel.
    let mut sub_tasks = Vec::new();
    let latencies: crate::soak::Latencies = Arc::default();
    for i in 0..cfg.subscribers.max(1) {
        let mut sub = Subscriber::new(rotate(&urls, i), channels.clone());
        sub.connect().await.context("subscriber connects")?;
        let (stop, cuts, delivered) = (stop.clone(), cuts.clone(), delivered.clone());
        // A soak's first subscriber is never cut: its latencies are the p99.
        let steady = (cfg.soak.is_some() && i == 0).then(|| latencies.clone());
        sub_tasks.push(tokio::spawn(async move {
            let mut seen_cuts = 0;
            loop {
                let c = cuts.load(Ordering::SeqCst);
                if c != seen_cuts && steady.is_none() {
                    seen_cuts = c;
                    sub.abort();
                }
                match sub.next_within(Duration::from_millis(100)).await {
                    Some(m) => {
                        if let Some(l) = &steady {
                            let ms = crate::soak::now_ms() - m.ts as f64;
                            lock(l).push(ms);
                        }
                        delivered.lock().unwrap_or_else(|p| p.into_inner())[i].push(m)
                    }
                    None if stop.load(Ordering::SeqCst) => break,
                    None => {}
                }
            }
            sub.stats
        }));
    }

    let history = Arc::new(Mutex::new(History::default()));
    let publishing = Arc::new(AtomicBool::new(true));
    let mut pub_tasks = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let (history, publishing, cuts) = (history.clone(), publishing.clone(), cuts.clone());
        let (ch, urls, pace) = (ch.clone(), rotate(&urls, i), cfg.pace);
        pub_tasks.push(tokio::spawn(async move {
            let mut p = Publisher::new(urls);
            // About 30 s of retrying before an outcome counts as unknown.
            p.max_attempts = 40;
            let mut seen_cuts = 0;
            let mut n = 0u64;
            while publishing.load(Ordering::SeqCst) {
                let c = cuts.load(Ordering::SeqCst);
                if c != seen_cuts {
                    seen_cuts = c;
                    p.abort();
                }
                let id = Uuid::new_v4();
                lock(&history).invoked.push((ch.clone(), id));
                match p.publish(&ch, id, &json!({ "n": n })).await {
                    Ok(seq) => lock(&history).acked.push((ch.clone(), id, seq)),
                    Err(_) => lock(&history).unknown.push((ch.clone(), id)),
                }
                n += 1;
                tokio::time::sleep(pace).await;
            }
            p.stats
        }));
    }

    // The nemesis, on this task: one fault at a time, then heal.
    let mut rng = Rng(cfg.seed);
    let mut faults = Vec::new();
    let nemesis_end = Instant::now() + cfg.duration;
    let nodes = Arc::new(Mutex::new(nodes));
    // Sampling and browsing end with the load, before the settling.
    let soak_done = Arc::new(AtomicBool::new(false));
    let soaking = cfg.soak.clone().map(|soak| {
        let listed = nodes.clone();
        let pids = move || {
            lock(&listed)
                .iter()
                .filter_map(|n| Some((n.child.as_ref()?.id(), format!("127.0.0.1:{}", n.port))))
                .collect()
        };
        let sampler = tokio::spawn(crate::soak::sample(
            soak.sample_every,
            began,
            pids,
            latencies.clone(),
            soak_done.clone(),
        ));
        let browser = tokio::spawn(crate::soak::browse(
            urls.clone(),
            channels.clone(),
            soak_done.clone(),
        ));
        (soak, sampler, browser)
    });
    if let Some((soak, ..)) = &soaking {
        // No faults: the subscribers but the first resume every cut_every.
        while Instant::now() < nemesis_end {
            tokio::time::sleep(soak.cut_every.min(nemesis_end - Instant::now())).await;
            cuts.fetch_add(1, Ordering::SeqCst);
        }
        soak_done.store(true, Ordering::SeqCst);
    }
    while soaking.is_none() && Instant::now() < nemesis_end {
        tokio::time::sleep(rng.millis(1_000, 4_000)).await;
        if Instant::now() >= nemesis_end {
            break;
        }
        let kinds = if cfg.cluster_script.is_some() { 5 } else { 3 };
        let n_nodes = lock(&nodes).len() as u64;
        let fault = match rng.below(kinds) {
            0 => Fault::KillNode(rng.below(n_nodes) as usize),
            1 => Fault::RestartNode(rng.below(n_nodes) as usize),
            2 => Fault::CutClients,
            3 => Fault::KillBroker(1 + rng.below(3) as i32),
            _ => Fault::PauseBroker(1 + rng.below(3) as i32),
        };
        let hold = rng.millis(1_000, 6_000);
        let at = began.elapsed().as_secs_f64();
        let what = format!("{at:.1}s {fault:?} for {:.1}s", hold.as_secs_f64());
        eprintln!("chaos: {what}");
        faults.push(what);
        let (nodes, script) = (nodes.clone(), cfg.cluster_script.clone());
        let cuts = cuts.clone();
        let done = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            match fault {
                Fault::KillNode(i) => {
                    lock(&nodes)[i].kill();
                    std::thread::sleep(hold);
                    lock(&nodes)[i].start()
                }
                Fault::RestartNode(i) => {
                    lock(&nodes)[i].stop();
                    std::thread::sleep(hold.min(Duration::from_secs(2)));
                    lock(&nodes)[i].start()
                }
                Fault::CutClients => {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
                Fault::KillBroker(b) => {
                    let script = script.context("no cluster script")?;
                    cluster(&script, &["kill", &b.to_string()])?;
                    std::thread::sleep(hold);
                    cluster(&script, &["start", &b.to_string()])
                }
                Fault::PauseBroker(b) => {
                    let script = script.context("no cluster script")?;
                    cluster(&script, &["pause", &b.to_string()])?;
                    std::thread::sleep(hold);
                    cluster(&script, &["resume", &b.to_string()])
                }
            }
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the nemesis could not heal: {e:#}"),
            Err(e) => bail!("the nemesis task failed: {e}"),
        }
    }

    // Healed (every fault undoes itself): stop publishing, let deliveries
    // finish, then read the log and check.
    publishing.store(false, Ordering::SeqCst);
    let mut publisher_retries = 0;
    for t in pub_tasks {
        publisher_retries += t.await.map(|s: Stats| s.retries).unwrap_or(0);
    }
    let topic = format!("{}chat", cfg.topic_prefix);
    // Appends still in flight when their client gave up finish meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = read_log(&cfg.brokers, &topic)?
        .values()
        .map(Vec::len)
        .sum::<usize>();
    let settle_until = Instant::now() + Duration::from_secs(60);
    loop {
        let done = lock(&delivered).iter().all(|d| d.len() >= stored);
        if done || Instant::now() >= settle_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything extra (a duplicate) would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut sub_stats = Vec::new();
    for t in sub_tasks {
        sub_stats.push(t.await.unwrap_or_default());
    }
    let (samples, browsed, warmup) = match soaking {
        Some((soak, sampler, browser)) => (
            sampler.await.unwrap_or_default(),
            browser.await.unwrap_or_default(),
            soak.warmup,
        ),
        None => (Vec::new(), (0, 0), 0.0),
    };
    drop(nodes);
    let log = read_log(&cfg.brokers, &topic)?;

    let history = std::mem::take(&mut *lock(&history));
    let delivered = std::mem::take(&mut *lock(&delivered));
    let mut report = check(&history, &log, &delivered);
    report.seed = cfg.seed;
    report.ran_for = began.elapsed();
    report.faults = faults;
    report.publisher_retries = publisher_retries;
    report.subscriber_reconnects = sub_stats.iter().map(|s| s.connects.saturating_sub(1)).sum();
    report.not_recovered = sub_stats.iter().map(|s| s.not_recovered).sum();
    report.duplicates_dropped_by_clients = sub_stats.iter().map(|s| s.duplicates_dropped).sum();
    if !samples.is_empty() {
        report.problems.extend(crate::soak::judge(&samples, warmup));
        report.samples = samples;
        report.browsed = browsed;
    }
    Ok(report)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `urls` starting at index `i`, so clients spread over the nodes.
fn rotate(urls: &[String], i: usize) -> Vec<String> {
    let mut v = urls.to_vec();
    v.rotate_left(i % urls.len().max(1));
    v
}

/// Per channel, the stored records in offset order: (seq, id).
type Log = BTreeMap<String, Vec<(i64, Uuid)>>;

/// Reads every record of `topic` from Kafka.
fn read_log(brokers: &str, topic: &str) -> anyhow::Result<Log> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("herald-chaos-{}", Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let t = Duration::from_secs(30);
    let md = c.fetch_metadata(Some(topic), t)?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|tp| tp.partitions().iter().map(|p| p.id()))
        .collect();
    let mut log = Log::new();
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, t)?;
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        c.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = low;
        while next < high {
            if Instant::now() > deadline {
                bail!("reading {topic}/{p} stalled at {next} of {high}");
            }
            match c.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    let Some(value) = m.payload() else { continue };
                    let env = Envelope::decode(value, m.key())
                        .with_context(|| format!("{topic}/{p}@{}", m.offset()))?;
                    log.entry(env.channel)
                        .or_default()
                        .push((m.offset(), env.id));
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
    Ok(log)
}

/// Checks the history against the log; see the module docs.
fn check(h: &History, log: &Log, delivered: &[Vec<herald_client::Msg>]) -> ChaosReport {
    let mut r = ChaosReport {
        invoked: h.invoked.len(),
        acked: h.acked.len(),
        unknown: h.unknown.len(),
        stored: log.values().map(Vec::len).sum(),
        delivered: delivered.iter().map(Vec::len).sum(),
        ..ChaosReport::default()
    };
    let mut where_stored: HashMap<Uuid, (String, i64)> = HashMap::new();
    for (ch, recs) in log {
        for (seq, id) in recs {
            if let Some((c0, s0)) = where_stored.insert(*id, (ch.clone(), *seq)) {
                r.problems
                    .push(format!("id {id} stored twice: {c0}@{s0} and {ch}@{seq}"));
            }
        }
    }
    let invoked: HashSet<Uuid> = h.invoked.iter().map(|(_, id)| *id).collect();
    for (id, (ch, seq)) in &where_stored {
        if !invoked.contains(id) {
            r.problems
                .push(format!("{ch}@{seq} (id {id}) stored but never published"));
        }
    }
    for (ch, id, seq) in &h.acked {
        match where_stored.get(id) {
            Some((c, s)) if c == ch && s == seq => {}
            Some((c, s)) => r
                .problems
                .push(format!("{ch} id {id} acked at {seq} but stored at {c}@{s}")),
            None => r.problems.push(format!(
                "{ch} id {id} acked at {seq} but not in the log: lost"
            )),
        }
    }
    r.unknown_stored = h
        .unknown
        .iter()
        .filter(|(_, id)| where_stored.contains_key(id))
        .count();
    for (i, got) in delivered.iter().enumerate() {
        let mut per: BTreeMap<&str, Vec<(i64, Uuid)>> = BTreeMap::new();
        for m in got {
            per.entry(m.channel.as_str())
                .or_default()
                .push((m.seq, m.id));
        }
        for (ch, want) in log {
            let have = per.remove(ch.as_str()).unwrap_or_default();
            if &have != want {
                r.problems.push(describe(i, ch, &have, want));
            }
        }
        for (ch, have) in per {
            r.problems.push(format!(
                "subscriber {i}: {} messages on {ch}, which has nothing stored",
                have.len()
            ));
        }
    }
    r
}

/// How subscriber `i`'s deliveries on `ch` differ from the log.
fn describe(i: usize, ch: &str, have: &[(i64, Uuid)], want: &[(i64, Uuid)]) -> String {
    let want_set: HashSet<&(i64, Uuid)> = want.iter().collect();
    let have_set: HashSet<&(i64, Uuid)> = have.iter().collect();
    let lost = want.iter().filter(|x| !have_set.contains(x)).count();
    let phantom = have.iter().filter(|x| !want_set.contains(x)).count();
    let dup = have.len() - have_set.len();
    let out_of_order = have.windows(2).filter(|w| w[1].0 <= w[0].0).count();
    let first_lost = want.iter().find(|x| !have_set.contains(x)).map(|x| x.0);
    format!(
        "subscriber {i} on {ch}: got {} of {} stored; lost {lost} (first at seq {first_lost:?}), \
         twice {dup}, not published {phantom}, out of order {out_of_order}",
        have.len(),
        want.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng(42);
                move |_| r.below(1000)
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng(42);
                move |_| r.below(1000)
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(
            a,
            (0..5)
                .map({
                    let mut r = Rng(43);
                    move |_| r.below(1000)
                })
                .collect::<Vec<_>>()
        );
    }

    fn msg(ch: &str, seq: i64, id: Uuid) -> herald_client::Msg {
        herald_client::Msg {
            channel: ch.into(),
            seq,
            epoch: "e".into(),
            id,
            ts: 0,
            data: json!(null),
            replayed: None,
            tags: None,
        }
    }

    #[test]
    fn the_checker_finds_each_kind_of_problem() {
        let (a, b, c, d) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let h = History {
            invoked: vec![("x".into(), a), ("x".into(), b), ("x".into(), c)],
            acked: vec![("x".into(), a, 0), ("x".into(), b, 1), ("x".into(), c, 9)],
            unknown: vec![],
        };
        let mut log = Log::new();
        // b stored twice, c acked but lost, d never published.
        log.insert("x".into(), vec![(0, a), (1, b), (2, b), (3, d)]);
        let delivered = vec![vec![msg("x", 0, a), msg("x", 0, a), msg("x", 1, b)]];
        let r = check(&h, &log, &delivered);
        let all = r.problems.join("\n");
        assert!(all.contains("stored twice"), "{all}");
        assert!(all.contains("not in the log: lost"), "{all}");
        assert!(all.contains("never published"), "{all}");
        assert!(all.contains("twice 1"), "{all}");
        // A clean history passes.
        let h = History {
            invoked: vec![("x".into(), a)],
            acked: vec![("x".into(), a, 0)],
            unknown: vec![],
        };
        let mut log = Log::new();
        log.insert("x".into(), vec![(0, a)]);
        assert!(check(&h, &log, &[vec![msg("x", 0, a)]]).ok());
    }
}
