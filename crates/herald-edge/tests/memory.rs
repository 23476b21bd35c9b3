//! What a subscription keeps on an idle connection (P3 in
//! docs/benchmarks.md), counted by this test binary's global allocator: the
//! live heap bytes after N connections subscribed, against before. The
//! clients run in this process too; between the two readings they only
//! send a `subscribe` and read its reply.
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::*;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live heap bytes once the node has gone quiet.
async fn live() -> isize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    LIVE.load(Ordering::Relaxed)
}

/// A finished subscribe task must not stay allocated for the life of the
/// subscription (a kept `JoinHandle` held ~1.4 KB per subscription: the
/// task's cell, sized for the whole subscribe future).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_keeps_under_a_kilobyte() {
    const N: usize = 400;
    let node = Node::start().await;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(node.connect().await);
    }
    // One subscription first, so that the node's one-off state (the
    // partition, its tail, metrics) is not counted.
    clients[0].subscribe("chat:warm", None).await;
    let before = live().await;
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        c.subscribe(&format!("chat:room-{}", i % 40), None).await;
    }
    let after = live().await;
    let per = (after - before) / (N as isize - 1);
    eprintln!("live heap per idle subscription: {per} bytes");
    assert!(
        per < 1024,
        "an idle subscription keeps {per} bytes of heap (bound 1,024)"
    );
    drop(clients);
}
