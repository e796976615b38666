//! Certificates that renew themselves, as client-go's certificate manager does: a
//! certificate is renewed once 70–90 % of its lifetime (a random point, so that nodes that
//! joined together do not all renew together) has passed; a failed renewal is retried with a
//! growing delay. The renewed certificate goes to its file and into a [`CertSlot`], which TLS
//! reads at every handshake, so nothing restarts.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::csr::CsrError;
use super::store::{CertStore, KeyedCert};

/// The fraction of the lifetime after which renewal starts, at the earliest.
const RENEW_FROM: f64 = 0.7;
/// The width of the random window after [`RENEW_FROM`].
const RENEW_JITTER: f64 = 0.2;
/// The first retry delay after a failed renewal, and the largest.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// When a certificate valid from `not_before` to `not_after` (Unix seconds) is renewed, for a
/// `jitter` in `[0, 1)`: at 70 % of its lifetime plus up to 20 % more.
pub fn rotation_deadline(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0) as f64;
    let fraction = RENEW_FROM + RENEW_JITTER * jitter.clamp(0.0, 1.0);
    not_before + (lifetime * fraction).round() as i64
}

/// How long to wait at `now` before renewing a certificate with this deadline (zero: now).
pub fn wait_until(deadline: i64, now: i64) -> Duration {
    Duration::from_secs(u64::try_from(deadline - now).unwrap_or(0))
}

/// The delay before retry number `attempt` (0-based) of a failed renewal, never past the
/// certificate's end (`remaining` seconds from now) when there is time left.
pub fn retry_delay(attempt: u32, remaining: i64) -> Duration {
    let grown = RETRY_MIN
        .checked_mul(1u32 << attempt.min(16))
        .unwrap_or(RETRY_MAX)
        .min(RETRY_MAX);
    match u64::try_from(remaining) {
        // Near the end: try at least twice more before it.
        Ok(r) if r > 0 => grown.min(Duration::from_secs(r / 2).max(RETRY_MIN)),
        _ => grown,
    }
}

/// The wall clock, in Unix seconds (injected so that tests move it).
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// The certificate currently in use, read by TLS at every handshake and replaced in place.
#[derive(Default)]
pub struct CertSlot {
    current: RwLock<Option<(Arc<KeyedCert>, Arc<CertifiedKey>)>>,
    hooks: Mutex<Vec<Hook>>,
}

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSlot")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl CertSlot {
    /// A slot holding `cert` (or nothing yet).
    pub fn new(cert: Option<KeyedCert>) -> Result<Arc<Self>, super::store::StoreError> {
        let slot = Arc::new(Self::default());
        if let Some(c) = cert {
            slot.set(c)?;
        }
        Ok(slot)
    }

    /// The certificate in use.
    pub fn current(&self) -> Option<Arc<KeyedCert>> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|(c, _)| c.clone())
    }

    /// The certificate in use, for rustls.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|(_, k)| k.clone())
    }

    /// Puts `cert` in use, then runs the change hooks.
    pub fn set(&self, cert: KeyedCert) -> Result<(), super::store::StoreError> {
        let key = cert.certified_key()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((Arc::new(cert), key));
        for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook();
        }
        Ok(())
    }

    /// Runs `hook` after every change.
    pub fn on_change(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }
}

/// Gets a new certificate (a new key, a CSR, the wait for it).
pub trait Issue: Send + Sync {
    /// One attempt.
    fn issue(&self) -> BoxFuture<'_, Result<KeyedCert, CsrError>>;
}

/// Keeps a certificate renewed: the slot's certificate is renewed at its rotation deadline (at
/// once when the slot is empty), stored, and put in the slot.
pub struct Rotator {
    /// What it is, for logs ("client", "serving").
    pub what: &'static str,
    /// The slot.
    pub slot: Arc<CertSlot>,
    /// The file.
    pub store: CertStore,
    /// How new certificates are had.
    pub issuer: Arc<dyn Issue>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl Rotator {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let wait = match self.slot.current() {
                Some(cert) => {
                    let deadline =
                        rotation_deadline(cert.not_before, cert.not_after, rand::random::<f64>());
                    let wait = wait_until(deadline, self.clock.now());
                    tracing::info!(
                        certificate = self.what,
                        expires = cert.not_after,
                        renew_in_s = wait.as_secs(),
                        "certificate rotation scheduled"
                    );
                    wait
                }
                None => Duration::ZERO,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            if !self.renew(&shutdown).await {
                return;
            }
        }
    }

    /// Renews until it works (true) or shutdown (false).
    async fn renew(&self, shutdown: &CancellationToken) -> bool {
        let mut attempt = 0u32;
        loop {
            let result = tokio::select! {
                r = self.issuer.issue() => r,
                () = shutdown.cancelled() => return false,
            };
            let failure = match result {
                Ok(cert) => match self.store.save(&cert).map(|()| cert) {
                    Ok(cert) => {
                        let (cn, expires) = (cert.common_name.clone(), cert.not_after);
                        match self.slot.set(cert) {
                            Ok(()) => {
                                tracing::info!(certificate = self.what, subject = %cn, expires, "rotated the certificate");
                                return true;
                            }
                            Err(e) => e.to_string(),
                        }
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            let remaining = self
                .slot
                .current()
                .map_or(0, |c| c.not_after - self.clock.now());
            let delay = retry_delay(attempt, remaining);
            tracing::warn!(certificate = self.what, error = %failure, retry_in_s = delay.as_secs(), "renewing the certificate failed");
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::identity::store::tests::cert;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_the_lifetime() {
        assert_eq!(rotation_deadline(1000, 2000, 0.0), 1700);
        assert_eq!(rotation_deadline(1000, 2000, 0.5), 1800);
        assert_eq!(rotation_deadline(1000, 2000, 0.25), 1750);
        assert_eq!(rotation_deadline(1000, 2000, 1.0), 1900);
        for _ in 0..1000 {
            let d = rotation_deadline(0, 86_400, rand::random::<f64>());
            assert!((60_480..=77_760).contains(&d), "{d}");
        }
        // A year-long certificate, seen at various times.
        let (nb, na) = (0, 365 * 86_400);
        let deadline = rotation_deadline(nb, na, 0.25);
        assert_eq!(deadline, (365.0 * 86_400.0 * 0.75) as i64);
        assert_eq!(
            wait_until(deadline, nb),
            Duration::from_secs(deadline as u64)
        );
        assert_eq!(wait_until(deadline, deadline - 10), Duration::from_secs(10));
        assert_eq!(wait_until(deadline, deadline + 10), Duration::ZERO);
    }

    #[test]
    fn failed_renewals_back_off_but_not_past_the_end() {
        assert_eq!(retry_delay(0, 100_000), Duration::from_secs(2));
        assert_eq!(retry_delay(1, 100_000), Duration::from_secs(4));
        assert_eq!(retry_delay(5, 100_000), Duration::from_secs(64));
        assert_eq!(retry_delay(30, 100_000), Duration::from_secs(300));
        // 100 s left: at most half of it.
        assert_eq!(retry_delay(10, 100), Duration::from_secs(50));
        // Expired: the plain backoff.
        assert_eq!(retry_delay(3, -5), Duration::from_secs(16));
    }

    /// The wall clock of the test: a base plus tokio's (paused) time.
    struct TestClock {
        base: i64,
        start: tokio::time::Instant,
    }

    impl Clock for TestClock {
        fn now(&self) -> i64 {
            self.base + self.start.elapsed().as_secs() as i64
        }
    }

    /// Issues a certificate valid from the clock's now for `lifetime` seconds, failing the
    /// first `fail` attempts.
    struct TestIssuer {
        clock: Arc<TestClock>,
        lifetime: i64,
        fail: AtomicUsize,
        issued: AtomicUsize,
    }

    impl Issue for TestIssuer {
        fn issue(&self) -> BoxFuture<'_, Result<KeyedCert, CsrError>> {
            Box::pin(async move {
                if self.fail.load(Ordering::SeqCst) > 0 {
                    self.fail.fetch_sub(1, Ordering::SeqCst);
                    return Err(CsrError::Deleted("x".into()));
                }
                let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
                let now = self.clock.now();
                Ok(cert(&format!("cert-{n}"), &[], now, now + self.lifetime))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_certificate_is_renewed_in_its_window_stored_and_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock {
            base: 1_800_000_000,
            start: tokio::time::Instant::now(),
        });
        let issuer = Arc::new(TestIssuer {
            clock: clock.clone(),
            lifetime: 1000,
            fail: AtomicUsize::new(2),
            issued: AtomicUsize::new(0),
        });
        let first = cert("cert-0", &[], clock.now(), clock.now() + 1000);
        let slot = CertSlot::new(Some(first)).unwrap();
        let changes = Arc::new(AtomicUsize::new(0));
        slot.on_change({
            let changes = changes.clone();
            move || {
                changes.fetch_add(1, Ordering::SeqCst);
            }
        });
        let store = CertStore::new(dir.path().join("pki"), super::super::store::CLIENT_STEM);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            Rotator {
                what: "client",
                slot: slot.clone(),
                store: store.clone(),
                issuer: issuer.clone(),
                clock: clock.clone(),
            }
            .run(shutdown.clone()),
        );
        // Nothing before 70 % of the lifetime.
        tokio::time::sleep(Duration::from_secs(699)).await;
        assert_eq!(slot.current().unwrap().common_name, "cert-0");
        assert_eq!(changes.load(Ordering::SeqCst), 0);
        // By 90 % plus the two failed attempts' backoff (2 s + 4 s), renewed.
        tokio::time::sleep(Duration::from_secs(900 - 699 + 7)).await;
        let renewed = slot.current().unwrap();
        assert_eq!(renewed.common_name, "cert-1");
        assert_eq!(changes.load(Ordering::SeqCst), 1);
        assert_eq!(store.load().unwrap(), *renewed);
        // And again within the new certificate's window.
        let second_start = renewed.not_before;
        let until = rotation_deadline(second_start, second_start + 1000, 1.0) + 1;
        tokio::time::sleep(wait_until(until, clock.now())).await;
        assert_eq!(slot.current().unwrap().common_name, "cert-2");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_slot_is_filled_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock {
            base: 1_800_000_000,
            start: tokio::time::Instant::now(),
        });
        let slot = CertSlot::new(None).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            Rotator {
                what: "serving",
                slot: slot.clone(),
                store: CertStore::new(dir.path(), super::super::store::SERVER_STEM),
                issuer: Arc::new(TestIssuer {
                    clock: clock.clone(),
                    lifetime: 86_400,
                    fail: AtomicUsize::new(0),
                    issued: AtomicUsize::new(0),
                }),
                clock,
            }
            .run(shutdown.clone()),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(slot.current().unwrap().common_name, "cert-1");
        shutdown.cancel();
        task.await.unwrap();
    }
}
