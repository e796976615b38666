//! Handing freed heap back to the operating system.
//!
//! glibc's malloc keeps what a burst freed in its arenas: one Table list of 10 000 pods parses
//! every object (about 100 MB of JSON values) and frees it again, and the process's RSS then
//! stays at that high-water mark for good although the live heap is a fraction of it. A
//! periodic `malloc_trim` returns the free pages, so RSS follows what the process holds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Most malloc arenas (glibc's default is 8 per core). Every arena keeps its own free memory
/// and its own fragmentation; a control plane with 10 000 pods held about 40 MB more RSS with
/// one arena per thread than with two (`cargo xtask bench api`).
const ARENA_MAX: i32 = 2;

/// Allocations from this size up get their own mapping, returned to the OS when freed.
/// Setting it fixes glibc's threshold, which otherwise rises to the largest block freed (up to
/// 32 MB): after one list of 10 000 pods every later multi-megabyte response or parse buffer
/// came from the heap and left holes between long-lived objects that no trim could return.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Sets glibc's malloc up for a long-running server: few arenas, large blocks mapped. Call it
/// first in `main`, before any thread is started. The environment (`MALLOC_ARENA_MAX`,
/// `GLIBC_TUNABLES`) still wins, for experiments.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_env = |name: &str| std::env::var_os(name).is_some();
        #[allow(unsafe_code, reason = "mallopt is a C function")]
        // SAFETY: mallopt only changes malloc's parameters; it takes no pointers and is called
        // before other threads exist.
        unsafe {
            if !set_by_env("MALLOC_ARENA_MAX") && !set_by_env("GLIBC_TUNABLES") {
                libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
            }
            if !set_by_env("MALLOC_MMAP_THRESHOLD_") && !set_by_env("GLIBC_TUNABLES") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
        }
    }
}

/// How often free heap is returned.
const PERIOD: Duration = Duration::from_secs(10);

/// Returns free heap pages to the OS (a no-op where the allocator is not glibc's).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code, reason = "malloc_trim is a C function")]
    // SAFETY: malloc_trim only releases memory malloc holds free; it takes no pointers and is
    // thread-safe (it locks each arena it walks).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`PERIOD`] until `shutdown`.
pub async fn trim_periodically(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                // Walking the arenas takes milliseconds: keep it off the async workers.
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    }
}
