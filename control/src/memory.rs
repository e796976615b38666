//! Handing freed heap back to the operating system.
//!
//! glibc's malloc keeps what a burst freed in its arenas: one Table list of 10 000 pods parses
//! every object (about 100 MB of JSON values) and frees it again, and the process's RSS then
//! stays at that high-water mark for good although the live heap is a fraction of it. A
//! periodic `malloc_trim` returns the free pages, so RSS follows what the process holds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

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
