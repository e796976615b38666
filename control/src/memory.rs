//! skiff-control's allocator: jemalloc, and how it hands freed memory back to the OS.
//!
//! glibc's malloc was the allocator before. In a burst of creates a perf profile put 17% of
//! skiff-control's CPU samples in glibc's malloc and free: its arenas are locked, and a few
//! arenas were needed to keep fragmentation down. Returning freed memory also needed a
//! `malloc_trim` every 10 s that walked the heap for 1.5-10 ms under the arena locks. With
//! jemalloc, the same benchmark (`cargo xtask bench api`, 10 000 pods, 2 CPUs) went from 3 507
//! to 4 288 creates/s, create p99 from 10.6 to 7.5 ms and the Table list p50 from 309 to 229 ms.
//! RSS after an idle minute was unchanged (215 and 216 MB).
//!
//! jemalloc returns memory by itself: its background threads purge pages freed longer than
//! `dirty_decay_ms` ago, so nothing here trims.

/// jemalloc's options, which the binary exports as `malloc_conf` (jemalloc reads them at its
/// first allocation; `_RJEM_MALLOC_CONF` in the environment still overrides them):
/// - `background_thread`: purging happens on jemalloc's own threads, not in a request's
///   `free`;
/// - `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: freed pages go back to the OS after about a
///   second (the default, 10 s, kept a burst's memory through the next one);
/// - `narenas:2`: one arena per CPU of the machines skiff runs on, not four. Each arena keeps
///   its own partly used pages, so fewer arenas leave less memory stranded after a burst.
pub const MALLOC_CONF: &[u8; 70] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0";
