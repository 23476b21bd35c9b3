//! The fault-scenario harness shared by the fault suites (`faults.rs`, the
//! cluster faults in `cluster.rs`): resilient publishers and a resilient
//! subscriber, a fault injected mid-stream, and the count of what was acked
//! against what the application received.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_client::resilient::{Publisher, Stats, Subscriber};
use herald_client::Msg;
use serde_json::json;
use uuid::Uuid;

use super::{report, tally, Tally};

pub type Acked = HashMap<String, Vec<(Uuid, i64)>>;

pub struct Outcome {
    pub tally: Tally,
    pub sub: Stats,
    pub publisher_retries: u64,
}

/// Publishers (one per channel, each with its own resilient connection) and
/// one resilient subscriber on every channel. `fault` runs once `fault_at`
/// publishes were acked; `abort_sub_at` cuts the subscriber with a TCP reset.
pub async fn scenario(
    urls: Vec<String>,
    channels: &[&str],
    per_channel: usize,
    fault_at: usize,
    fault: impl FnOnce() + Send + 'static,
    abort_sub_at: Option<usize>,
) -> Outcome {
    scenario_paced(
        urls,
        channels,
        per_channel,
        Duration::ZERO,
        fault_at,
        fault,
        abort_sub_at,
    )
    .await
}

/// [`scenario`] with each publisher waiting `pace` after every ack, so that
/// publishing goes on for as long as a slow fault (a rolling restart) takes.
pub async fn scenario_paced(
    urls: Vec<String>,
    channels: &[&str],
    per_channel: usize,
    pace: Duration,
    fault_at: usize,
    fault: impl FnOnce() + Send + 'static,
    abort_sub_at: Option<usize>,
) -> Outcome {
    let channels: Vec<String> = channels.iter().map(|s| s.to_string()).collect();
    let progress = Arc::new(AtomicUsize::new(0));
    let delivered: Arc<Mutex<Vec<Msg>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let mut sub = Subscriber::new(urls.clone(), channels.clone());
    sub.connect().await.expect("subscriber connects");
    let sub_task = {
        let (delivered, stop, progress) = (delivered.clone(), stop.clone(), progress.clone());
        tokio::spawn(async move {
            let mut aborted = false;
            loop {
                if let Some(at) = abort_sub_at {
                    if !aborted && progress.load(Ordering::SeqCst) >= at {
                        sub.abort();
                        aborted = true;
                    }
                }
                match sub.next_within(Duration::from_millis(100)).await {
                    Some(m) => delivered.lock().unwrap().push(m),
                    None if stop.load(Ordering::SeqCst) => break,
                    None => {}
                }
            }
            sub.stats
        })
    };

    let mut pubs = Vec::new();
    for ch in channels.clone() {
        let (urls, progress) = (urls.clone(), progress.clone());
        pubs.push(tokio::spawn(async move {
            let mut p = Publisher::new(urls);
            // As a client must: until acked, through a whole cluster's
            // restart on a slow machine (50 fast nacks last under a minute).
            p.max_attempts = 200;
            let mut acked = Vec::new();
            for i in 0..per_channel {
                let id = Uuid::new_v4();
                let seq = p
                    .publish(&ch, id, &json!({ "n": i }))
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "publish {i} on {ch} never acked after {} attempts: {e} ({:?})",
                            p.max_attempts, p.stats
                        )
                    });
                acked.push((id, seq));
                progress.fetch_add(1, Ordering::SeqCst);
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            (ch, acked, p.stats.retries)
        }));
    }

    let fault_task = {
        let progress = progress.clone();
        tokio::spawn(async move {
            while progress.load(Ordering::SeqCst) < fault_at {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::task::spawn_blocking(fault).await.unwrap();
        })
    };

    let mut acked: Acked = HashMap::new();
    let mut publisher_retries = 0;
    for p in pubs {
        let (ch, list, retries) = p.await.unwrap();
        acked.insert(ch, list);
        publisher_retries += retries;
    }
    fault_task.await.unwrap();
    let total: usize = acked.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(90);
    while delivered.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything extra (a duplicate) would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let sub = sub_task.await.unwrap();
    let delivered = delivered.lock().unwrap().clone();
    Outcome {
        tally: tally(&acked, &delivered),
        sub,
        publisher_retries,
    }
}

pub fn assert_all_once(name: &str, o: &Outcome) {
    let extra = format!(
        "publisher_retries={} subscriber_reconnects={} duplicates_dropped_by_client={} not_recovered={} close_codes={:?}",
        o.publisher_retries,
        o.sub.connects.saturating_sub(1),
        o.sub.duplicates_dropped,
        o.sub.not_recovered,
        o.sub.close_codes
    );
    report(name, &o.tally, &extra);
    // The whole report in every message: a CI excerpt shows the panic.
    let t = &o.tally;
    let all = format!(
        "{name}: acked={} delivered={} lost={} duplicated={} {extra}",
        t.acked, t.delivered, t.lost, t.duplicated
    );
    assert_eq!(t.lost, 0, "lost: {all}");
    assert_eq!(t.duplicated, 0, "duplicated: {all}");
    assert_eq!(t.delivered, t.acked, "delivered == acked: {all}");
    assert_eq!(o.sub.not_recovered, 0, "every resume recovered: {all}");
}

pub async fn burst(p: &mut Publisher, acked: &mut Acked, chans: &[&str], n: usize) {
    for ch in chans {
        for i in 0..n {
            let id = Uuid::new_v4();
            let seq = p.publish(ch, id, &json!({ "n": i })).await.unwrap();
            acked.entry(ch.to_string()).or_default().push((id, seq));
        }
    }
}
