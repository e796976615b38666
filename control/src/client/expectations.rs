//! Expectations: after a controller creates or deletes children it must not act on the same key
//! again until its cache has seen those writes, or a burst of events would create twice.
//!
//! Instead of counting adds and deletes per key (kube-controller-manager's way, which needs a
//! hook on every watch event), a key remembers the resourceVersion of its last write and the
//! cache the highest resourceVersion it has applied. Revisions are global and a watch delivers
//! them in order, so `observed >= written` means every write of that key is in the cache. An
//! expectation that is not met within `EXPIRY` (say the object was deleted before the cache saw
//! it) lapses, as Kubernetes' do after five minutes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an unmet expectation holds a key back.
pub const EXPIRY: Duration = Duration::from_secs(30);

/// The highest resourceVersion a cache has applied.
#[derive(Debug, Clone, Default)]
pub struct Observed(Arc<AtomicU64>);

impl Observed {
    /// Records that the cache applied an object at `resource_version`.
    pub fn saw(&self, resource_version: Option<&str>) {
        if let Some(rv) = resource_version.and_then(|r| r.parse::<u64>().ok()) {
            self.0.fetch_max(rv, Ordering::SeqCst);
        }
    }

    /// The highest revision seen.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Per-key revision of the last write still to be observed.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Expectations {
    /// `key` wrote something at `resource_version`.
    pub fn wrote(&self, key: &str, resource_version: Option<&str>) {
        let Some(rv) = resource_version.and_then(|r| r.parse::<u64>().ok()) else {
            return;
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.entry(key.to_owned()).or_insert((0, Instant::now()));
        entry.0 = entry.0.max(rv);
        entry.1 = Instant::now();
    }

    /// Whether the cache has seen every write of `key` (or the wait expired). Returns the time
    /// left before expiry when it has not.
    pub fn satisfied(&self, key: &str, observed: &Observed) -> Result<(), Duration> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&(rv, at)) = pending.get(key) else {
            return Ok(());
        };
        let waited = at.elapsed();
        if observed.get() >= rv || waited >= EXPIRY {
            pending.remove(key);
            return Ok(());
        }
        Err(EXPIRY - waited)
    }

    /// Forgets `key` (its object is gone).
    pub fn forget(&self, key: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The check every reconcile that acts on a cache starts with: are the caches it reads listed
/// (before, every child would look missing), and has the cache seen this key's own writes.
#[derive(Default)]
pub struct Guard {
    caches: Vec<Box<dyn Fn() -> bool + Send + Sync>>,
    /// The writes each key still waits to see.
    pub expectations: Expectations,
}

impl Guard {
    /// A guard over no cache yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also waits for `informer`'s first list.
    pub fn after<K: super::informers::Kind>(
        mut self,
        informer: &super::informers::Informer<K>,
    ) -> Self {
        let listed = informer.listed_flag();
        self.caches.push(Box::new(move || *listed.borrow()));
        self
    }

    /// Whether every cache has been listed.
    pub fn synced(&self) -> bool {
        self.caches.iter().all(|synced| synced())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_waits_until_the_cache_saw_its_last_write() {
        let exp = Expectations::default();
        let observed = Observed::default();
        assert!(exp.satisfied("a", &observed).is_ok());
        exp.wrote("a", Some("10"));
        exp.wrote("a", Some("12"));
        observed.saw(Some("11"));
        assert!(exp.satisfied("a", &observed).is_err());
        assert!(exp.satisfied("b", &observed).is_ok());
        observed.saw(Some("12"));
        assert!(exp.satisfied("a", &observed).is_ok());
        // Met expectations are dropped.
        observed.0.store(0, Ordering::SeqCst);
        assert!(exp.satisfied("a", &observed).is_ok());
    }
}
