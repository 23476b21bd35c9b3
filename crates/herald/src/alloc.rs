//! With the `count-allocs` feature (for the allocation profile of
//! `loadtest/profile.sh`): a count of every heap allocation, published as
//! the gauge `herald_allocations` (allocations since start) every 50 ms.
//! Without it, herald uses the system allocator as is.
//!
//! The allocator is glibc's. Measured 2026-12-07 (loadtest/profile.sh,
//! loadtest/idle-memory.sh 5000): mimalloc took herald's CPU per 1,000
//! acked publishes from 29.8 to 25.8 ms, but an idle subscribed connection
//! from 5,650 to 8,756 bytes, and jemalloc to 6,381 bytes (with one arena
//! too): both above P3's 6 KB, from their coarser size classes. So the
//! publish path makes fewer allocations instead.
//!
//! Hand-written rather than a crate: the count is one relaxed atomic add in
//! front of the system allocator, and dhat, the maintained heap profiler,
//! records a backtrace per allocation, which would change the very speed
//! being profiled. Allocations made by librdkafka (C, its own `malloc`) are
//! not counted.

#[cfg(feature = "count-allocs")]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering};

    pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    /// The system allocator, counting allocations (not frees).
    pub struct Counting;

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            System.realloc(ptr, layout, new_size)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }
}

/// Publishes the count as a gauge from a thread of its own (with the
/// feature; nothing without it).
pub fn publish_count() {
    #[cfg(feature = "count-allocs")]
    {
        use std::sync::atomic::Ordering;
        let _ = std::thread::Builder::new()
            .name("herald-alloc-count".into())
            .spawn(|| loop {
                let n = counting::ALLOCATIONS.load(Ordering::Relaxed);
                metrics::gauge!("herald_allocations").set(n as f64);
                std::thread::sleep(std::time::Duration::from_millis(50));
            });
    }
}
