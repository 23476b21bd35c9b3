//! Results: a summary table on stdout and JSON for `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::verify::ChannelCounts;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (quantile, ms) from 0 to 0.9999, for the distribution charts.
    #[serde(default)]
    pub distribution: Vec<(f64, f64)>,
}

/// The quantiles [`Latency::distribution`] records.
const QUANTILES: [f64; 17] = [
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995,
    0.9999,
];

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
            distribution: if h.is_empty() {
                Vec::new()
            } else {
                QUANTILES.iter().map(|&q| (q, ms(q))).collect()
            },
        }
    }
}

/// One run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub config: serde_json::Value,
    pub sent: u64,
    pub acked: u64,
    pub nacked: u64,
    pub delivered: u64,
    pub acks_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub connect_secs: f64,
    pub latency: Latency,
    pub lost: u64,
    pub duplicated: u64,
    #[serde(default)]
    pub out_of_order: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<BTreeMap<String, ChannelCounts>>,
    /// Open loop: how far behind its schedule the generator sent a publish,
    /// at most (ms). Its latency counts from the schedule, so a lag shows
    /// there too; a large one says the generator, not the server under
    /// test, could not keep up.
    #[serde(default)]
    pub schedule_lag_ms: f64,
    /// CPU seconds (user + system) the generator's process used from the
    /// first publish to the end of the drain: against the run's length, its
    /// share of the two cores (the server under test had the rest). For
    /// the Kafka floor, the floor's own process.
    #[serde(default)]
    pub client_cpu_secs: f64,
    /// Bytes of the WebSocket text frames the subscribers received (headers
    /// included, as the server writes them: unmasked), from subscribed to
    /// the end of the drain.
    #[serde(default)]
    pub wire_bytes: u64,
    /// CPU seconds the server's process used over the same span as
    /// `client_cpu_secs`, when its PID was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_secs: Option<f64>,
}

/// CPU seconds (user + system) process `pid` has used so far, from
/// `/proc/{pid}/stat` (Linux); `None` when it cannot be read.
pub fn pid_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_sec > 0).then(|| ticks / per_sec as f64)
}

/// CPU seconds (user + system) this process has used so far.
pub fn process_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// A schedule lag beyond this says the generator fell behind: the run is
/// flagged in its output.
pub const LAG_FLAG_MS: f64 = 50.0;

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &str,
        config: &serde_json::Value,
        sent: u64,
        acked: u64,
        nacked: u64,
        delivered: u64,
        publish_secs: f64,
        total_secs: f64,
        connect_secs: f64,
        latency: &Histogram<u64>,
        channels: Option<BTreeMap<String, ChannelCounts>>,
    ) -> Report {
        let (lost, duplicated, out_of_order) = channels.as_ref().map_or((0, 0, 0), |c| {
            c.values().fold((0, 0, 0), |(l, d, o), x| {
                (l + x.lost, d + x.duplicated, o + x.out_of_order)
            })
        });
        Report {
            target: target.to_owned(),
            config: config.clone(),
            sent,
            acked,
            nacked,
            delivered,
            acks_per_sec: acked as f64 / publish_secs,
            deliveries_per_sec: delivered as f64 / total_secs.max(1e-3),
            connect_secs,
            latency: Latency::of(latency),
            lost,
            duplicated,
            out_of_order,
            channels,
            schedule_lag_ms: 0.0,
            client_cpu_secs: 0.0,
            wire_bytes: 0,
            server_cpu_secs: None,
        }
    }

    /// The strict verdict on this run ([`crate::verify::Strict`]).
    pub fn judge(&self, s: crate::verify::Strict) -> Result<(), String> {
        s.judge(&self.target, self.counts())
    }

    /// What the verdict reads of this run.
    pub fn counts(&self) -> crate::verify::Counts {
        let (unacked_delivered, misrouted) = self.channels.as_ref().map_or((0, 0), |c| {
            c.values().fold((0, 0), |(u, m), x| {
                (u + x.unacked_delivered, m + x.misrouted)
            })
        });
        crate::verify::Counts {
            sent: self.sent,
            acked: self.acked,
            nacked: self.nacked,
            lost: self.lost,
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
            unacked_delivered,
            misrouted,
        }
    }

    /// The summary table.
    pub fn print(&self) {
        let l = &self.latency;
        println!("target          {}", self.target);
        println!("config          {}", self.config);
        println!(
            "publishes       sent {}  acked {}  nacked {}  ({:.0} acks/s)",
            self.sent, self.acked, self.nacked, self.acks_per_sec
        );
        println!(
            "deliveries      {}  ({:.0}/s)",
            self.delivered, self.deliveries_per_sec
        );
        println!(
            "latency ms      p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
        );
        println!("lost            {}", self.lost);
        println!("duplicated      {}", self.duplicated);
        println!("out of order    {}", self.out_of_order);
        println!(
            "schedule lag    {:.1} ms at most{}",
            self.schedule_lag_ms,
            if self.schedule_lag_ms > LAG_FLAG_MS {
                "  (GENERATOR FELL BEHIND: the latency is partly its own)"
            } else {
                ""
            }
        );
        println!(
            "client CPU      {:.2} s ({:.2} ms per 1,000 acks, {:.2} per 1,000 deliveries)",
            self.client_cpu_secs,
            self.client_cpu_secs * 1e6 / (self.acked.max(1) as f64),
            self.client_cpu_secs * 1e6 / (self.delivered.max(1) as f64)
        );
        println!(
            "wire            {} bytes of text frames to subscribers ({:.1} per delivery)",
            self.wire_bytes,
            self.wire_bytes as f64 / self.delivered.max(1) as f64
        );
        if let Some(cpu) = self.server_cpu_secs {
            println!(
                "server CPU      {cpu:.2} s ({:.2} us per delivery)",
                cpu * 1e6 / self.delivered.max(1) as f64
            );
        }
    }
}

/// Progress lines on stderr every 5 s.
pub struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    pub fn new(on: bool) -> Progress {
        Progress {
            on,
            last: Instant::now(),
        }
    }

    pub fn tick(&mut self, elapsed: Duration, acks: u64, delivered: u64) {
        if !self.on || self.last.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last = Instant::now();
        eprintln!(
            "loadtest: {:>5.0}s  acked {acks}  delivered {delivered}",
            elapsed.as_secs_f64()
        );
    }

    pub fn done(&self) {
        if self.on {
            eprintln!("loadtest: done");
        }
    }
}
