//! The soak (`herald-loadtest soak`, and a short run in the test suite): the
//! chaos checker's load (resilient publishers and subscribers on several
//! channels across several nodes, checked against the topic at the end)
//! without its faults, for a long time, plus what a long-lived deployment
//! sees: resumes (every subscriber but one has its connection cut every
//! `cut_every`), history reads and presence churn. Every `sample_every` it
//! samples the nodes' resident memory, open file descriptors and live tokio
//! tasks, and the delivery p99 of the subscriber that is never cut, and
//! [`judge`] fails the run when one of them keeps growing after warm-up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

/// What the soak adds to a chaos run.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub sample_every: Duration,
    /// Every subscriber but the first has its connection cut this often
    /// (it resumes).
    pub cut_every: Duration,
    /// The part of the run left out of the growth check (start-up, caches
    /// and pools filling).
    pub warmup: f64,
}

/// One sample: sums over the nodes.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the run began.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub tasks: u64,
    /// The never-cut subscriber's deliveries since the previous sample:
    /// their p99 (accept to receipt), and how many.
    pub p99_ms: f64,
    pub deliveries: usize,
}

/// Accept-to-receipt latencies (ms) of the steady subscriber, taken by the
/// sampler.
pub type Latencies = Arc<Mutex<Vec<f64>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn proc_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// A plain `GET path` to `addr` (host:port), HTTP/1.1, the connection
/// closed after: the answer's body.
async fn get(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned()))
}

/// `herald_runtime_tasks` from the `/metrics` of the node at `addr`.
async fn tasks(addr: &str) -> u64 {
    let Ok(body) = get(addr, "/metrics").await else {
        return 0;
    };
    body.lines()
        .find(|l| l.starts_with("herald_runtime_tasks "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The p99 of `v` (0 when empty).
fn p99(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Samples every `every` until `stop`: `nodes` gives each live node's pid
/// and address (host:port).
pub async fn sample(
    every: Duration,
    began: Instant,
    nodes: impl Fn() -> Vec<(u32, String)>,
    latencies: Latencies,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        tick.tick().await;
        let mut s = Sample {
            t: began.elapsed().as_secs_f64(),
            ..Sample::default()
        };
        for (pid, addr) in nodes() {
            s.rss_kib += proc_rss_kib(pid);
            s.fds += proc_fds(pid);
            s.tasks += tasks(&addr).await;
        }
        let mut l = std::mem::take(&mut *lock(&latencies));
        s.deliveries = l.len();
        s.p99_ms = p99(&mut l);
        eprintln!(
            "soak: {:.0}s rss={} KiB fds={} tasks={} p99={:.1} ms ({} deliveries)",
            s.t, s.rss_kib, s.fds, s.tasks, s.p99_ms, s.deliveries
        );
        out.push(s);
    }
    out
}

/// Reads history and churns presence on `urls` until `stop`: a history page
/// of a chat channel and a subscribe/unsubscribe of a room with presence,
/// about five of each per second. Returns how many of each were answered.
pub async fn browse(
    urls: Vec<String>,
    channels: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64) {
    let (mut histories, mut churns) = (0u64, 0u64);
    let mut i = 0usize;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let url = &urls[i % urls.len()];
        i += 1;
        let Ok(mut c) = herald_client::Connection::connect(url).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        for _ in 0..10 {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let ch = &channels[i % channels.len()];
            let q = herald_client::HistoryQuery {
                limit: Some(50),
                ..Default::default()
            };
            if c.history(ch, &q).await.is_ok() {
                histories += 1;
            }
            let room = format!("room:soak-{}", i % 4);
            if c.subscribe(&room, None).await.is_ok() && c.unsubscribe(&room).await.is_ok() {
                churns += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = c.close().await;
    }
    (histories, churns)
}

/// A measure of a sample: its name, how to read it, the growth allowed
/// (a fraction of the first third's median) and the slack on top.
type Measure = (&'static str, fn(&Sample) -> f64, f64, f64);

/// What kept growing after warm-up: for each measure, the median of the
/// last third of the samples against the first third's, allowed `tol` of
/// it plus `slack`.
pub fn judge(samples: &[Sample], warmup: f64) -> Vec<String> {
    let skip = ((samples.len() as f64) * warmup).ceil() as usize;
    let kept = &samples[skip.min(samples.len())..];
    if kept.len() < 6 {
        return vec![format!(
            "only {} samples after warm-up: run longer or sample more often",
            kept.len()
        )];
    }
    let third = kept.len() / 3;
    let median = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut problems = Vec::new();
    let measures: [Measure; 4] = [
        ("rss_kib", |s| s.rss_kib as f64, 0.10, 8192.0),
        ("fds", |s| s.fds as f64, 0.10, 16.0),
        ("tasks", |s| s.tasks as f64, 0.10, 64.0),
        ("p99_ms", |s| s.p99_ms, 0.50, 20.0),
    ];
    for (name, f, tol, slack) in measures {
        let first = median(kept[..third].iter().map(f).collect());
        let last = median(kept[kept.len() - third..].iter().map(f).collect());
        if last > first * (1.0 + tol) + slack {
            problems.push(format!(
                "{name} kept growing after warm-up: median {first:.1} in the first third, {last:.1} in the last"
            ));
        }
    }
    problems
}

/// The samples as CSV.
pub fn csv(samples: &[Sample]) -> String {
    let mut s = String::from("t_secs,rss_kib,fds,tasks,p99_ms,deliveries\n");
    for x in samples {
        s.push_str(&format!(
            "{:.1},{},{},{},{:.2},{}\n",
            x.t, x.rss_kib, x.fds, x.tasks, x.p99_ms, x.deliveries
        ));
    }
    s
}

/// RSS (MiB) and p99 (ms) over time, one SVG.
pub fn plot(title: &str, samples: &[Sample]) -> String {
    use crate::plot::{svg, Chart, Series};
    let chart = Chart {
        title: title.to_owned(),
        x_label: "minutes".into(),
        y_label: "RSS (MiB, all nodes) / p99 (ms)".into(),
        ..Chart::default()
    };
    let series = [
        Series {
            label: "RSS MiB".into(),
            color: "#1f77b4",
            dashed: false,
            points: samples
                .iter()
                .map(|s| (s.t / 60.0, s.rss_kib as f64 / 1024.0))
                .collect(),
        },
        Series {
            label: "p99 ms".into(),
            color: "#d62728",
            dashed: true,
            points: samples.iter().map(|s| (s.t / 60.0, s.p99_ms)).collect(),
        },
    ];
    svg(&chart, &series)
}

/// The summary line's soak part.
pub fn summary(samples: &[Sample], browsed: (u64, u64)) -> String {
    let last = samples.last().cloned().unwrap_or_default();
    json!({
        "samples": samples.len(),
        "last_rss_kib": last.rss_kib,
        "last_fds": last.fds,
        "last_tasks": last.tasks,
        "last_p99_ms": last.p99_ms,
        "history_pages": browsed.0,
        "presence_churns": browsed.1,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(n: usize, grow: f64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                t: i as f64,
                rss_kib: (100_000.0 * (1.0 + grow * i as f64)) as u64,
                fds: 50,
                tasks: 200,
                p99_ms: 10.0,
                deliveries: 100,
            })
            .collect()
    }

    #[test]
    fn growth_after_warmup_fails_and_flat_passes() {
        assert!(judge(&flat(40, 0.0), 0.25).is_empty());
        let problems = judge(&flat(40, 0.02), 0.25);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("rss_kib"));
        // Growth only during warm-up is fine.
        let mut s = flat(40, 0.0);
        for (i, x) in s.iter_mut().take(10).enumerate() {
            x.rss_kib = 10_000 * (i as u64 + 1);
        }
        assert!(judge(&s, 0.25).is_empty());
        assert_eq!(judge(&flat(5, 0.0), 0.25).len(), 1, "too few samples");
        let mut v = vec![5.0, 1.0, 3.0];
        assert_eq!(p99(&mut v), 5.0);
    }
}
