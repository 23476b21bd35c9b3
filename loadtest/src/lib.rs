//! herald's load generator and the baselines it is compared with
//! (`docs/benchmarks.md`):
//!
//! - [`chaos`]: the randomized fault checker: clients across several nodes
//!   while a seeded nemesis faults brokers, nodes and connections, then
//!   every operation checked against the topic.
//! - [`gen`]: WebSocket subscribers and publishers speaking herald's frames,
//!   end-to-end latency in an HDR histogram, lost/duplicated per channel.
//! - [`proto`]: the wire protocols: herald's frames, Socket.IO 4 and
//!   Centrifugo's JSON protocol, decoded alike into typed structs.
//! - [`idle`]: P3, subscribed connections held idle across ping intervals
//!   while the caller reads the server's memory.
//! - [`kafkafloor`]: the bare Kafka floor: an rdkafka producer (same
//!   idempotence and `acks=all` as herald) and a consumer on the same broker.
//! - [`wsfloor`]: the bare WebSocket floor: an in-memory broadcast server
//!   with no Kafka, speaking the same frames.
//! - [`resume`]: P4, catching up N messages through herald against reading
//!   them straight from Kafka.
//! - [`storm`]: P5, the reconnect storm after an edge is killed.
//! - [`soak`]: the chaos checker's load without faults for a long time,
//!   with resumes, history and presence churn, sampling memory, file
//!   descriptors, tasks and p99 for growth.
//! - [`verify`]: the verifier (every acked message to every subscriber of its
//!   channel, exactly once).
//! - [`plot`]: SVG charts: latency distributions, load curves.
//! - [`report`]: the summary table and JSON.

pub mod chaos;
pub mod gen;
pub mod idle;
pub mod kafkafloor;
mod nodes;
pub mod plot;
pub mod proto;
pub mod report;
pub mod resume;
pub mod soak;
pub mod storm;
pub mod verify;
pub mod wsfloor;

/// Nanoseconds since the Unix epoch (the clock both ends of a latency
/// sample read: they run on the same host).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Latency in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| hdrhistogram::Histogram::new(3).expect("3 significant digits is valid"))
}
