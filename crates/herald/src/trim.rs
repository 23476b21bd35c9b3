//! Gives memory the process freed back to the system.
//!
//! glibc's allocator keeps freed memory in its arenas (one per thread that
//! allocated: herald's workers and librdkafka's threads), so after a burst
//! (a large catch-up, history pages, a client attack that was cut) the node
//! keeps its peak RSS although the memory is free. Measured with
//! `loadtest/attack-memory.sh` (docs/benchmarks.md, "Memory after the
//! attacks of docs/security.md"): the attacks left the node ~124 MiB above
//! its baseline 30 s after they closed; one `malloc_trim(0)` brought it
//! back within 10 MiB, which an arena limit or `mmap` thresholds did not.
//! So the node trims every [`EVERY`], on a blocking thread (1-5 ms a trim),
//! and reports how long it took and what it gave back.

use std::time::Duration;

/// How often the node trims.
pub const EVERY: Duration = Duration::from_secs(10);

/// Trims every [`EVERY`] for the life of the runtime (on Linux with
/// glibc; other allocators give memory back on their own).
pub fn spawn() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if tokio::task::spawn_blocking(trim_once).await.is_err() {
                return;
            }
        }
    });
}

/// One trim: its duration and the RSS it gave back, as metrics.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_once() {
    let before = rss_bytes();
    let started = std::time::Instant::now();
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is
    // safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
    metrics::histogram!("herald_process_trim_seconds").record(started.elapsed().as_secs_f64());
    if let (Some(b), Some(a)) = (before, rss_bytes()) {
        metrics::counter!("herald_process_trimmed_bytes_total").increment(b.saturating_sub(a));
    }
}

/// The process's resident set, from `/proc/self/statm` (pages).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
