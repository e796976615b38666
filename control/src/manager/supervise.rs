//! Keeps each controller's loop running: a loop that panics or ends before shutdown is logged,
//! counted and restarted with back-off, on its own task, so that the other controllers and the
//! scheduler never stop with it. [`Health`] is what `/readyz` reads of it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::guard::{exponential_backoff, panic_message, record_panic};

/// The first restart delay; it doubles per consecutive failure.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest restart delay.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A loop that ran this long before failing starts its back-off over.
const RESET_AFTER: Duration = Duration::from_secs(120);

/// The health of the controller manager: which loops are waiting to be restarted, and
/// whether the manager itself stopped.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// controller -> (restarts so far, why it last failed), while it waits for its restart.
    failing: BTreeMap<&'static str, (u32, String)>,
    /// Why the manager stopped, if it did before shutdown.
    stopped: Option<String>,
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ok when every loop runs (or this instance is a standby); else why not.
    pub fn check(&self) -> Result<(), String> {
        let state = self.state();
        if let Some(why) = &state.stopped {
            return Err(format!("controller manager stopped: {why}"));
        }
        match state.failing.iter().next() {
            None => Ok(()),
            Some((name, (restarts, why))) => Err(format!(
                "controller {name} failed ({why}) and is restarting (restarts: {restarts})"
            )),
        }
    }

    /// Records that the manager stopped before shutdown.
    pub fn set_stopped(&self, why: &str) {
        self.state().stopped = Some(why.to_owned());
    }

    fn set_failing(&self, name: &'static str, restarts: u32, why: String) {
        self.state().failing.insert(name, (restarts, why));
    }

    fn set_running(&self, name: &'static str) {
        self.state().failing.remove(name);
    }
}

/// Aborts its task when dropped, so that a supervisor that is itself dropped (the term of
/// leadership ended) leaves no loop behind.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn delay(failures: u32) -> Duration {
    exponential_backoff(FIRST_DELAY, MAX_DELAY, failures)
}

/// Runs `start()` on its own task until `shutdown`, restarting it with back-off whenever it
/// panics or returns early.
pub async fn supervise<F, Fut>(
    name: &'static str,
    health: Health,
    shutdown: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut failures = 0u32;
    let mut restarts = 0u32;
    loop {
        let started = Instant::now();
        let mut task = AbortOnDrop(tokio::spawn(start()));
        let outcome = (&mut task.0).await;
        if shutdown.is_cancelled() {
            health.set_running(name);
            return;
        }
        let why = match outcome {
            Ok(()) => "its loop ended before shutdown".to_owned(),
            Err(e) if e.is_panic() => {
                record_panic(name);
                format!("panicked: {}", panic_message(e.into_panic().as_ref()))
            }
            Err(e) => e.to_string(),
        };
        if started.elapsed() > RESET_AFTER {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        restarts = restarts.saturating_add(1);
        let wait = delay(failures);
        tracing::error!(controller = name, reason = %why, restart_in = ?wait, "controller failed; restarting");
        health.set_failing(name, restarts, why);
        tokio::select! {
            _ = shutdown.cancelled() => {
                health.set_running(name);
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        health.set_running(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn restart_delay_doubles_up_to_a_minute() {
        assert_eq!(delay(1), Duration::from_secs(1));
        assert_eq!(delay(3), Duration::from_secs(4));
        assert_eq!(delay(7), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_loop_is_restarted_and_its_neighbour_keeps_running() {
        let health = Health::default();
        let shutdown = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let ticks = Arc::new(AtomicU32::new(0));
        let crashing = tokio::spawn(supervise("crashing", health.clone(), shutdown.clone(), {
            let (starts, shutdown) = (starts.clone(), shutdown.clone());
            move || {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                let shutdown = shutdown.clone();
                async move {
                    // The first two runs hit a bug; the third runs until shutdown.
                    assert!(n >= 2, "bug in run {n}");
                    shutdown.cancelled().await;
                }
            }
        }));
        let steady = tokio::spawn(supervise("steady", health.clone(), shutdown.clone(), {
            let (ticks, shutdown) = (ticks.clone(), shutdown.clone());
            move || {
                let (ticks, shutdown) = (ticks.clone(), shutdown.clone());
                async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tick.tick() => { ticks.fetch_add(1, Ordering::SeqCst); }
                        }
                    }
                }
            }
        }));
        // The first failure: /readyz says so while the loop waits for its restart.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let err = health.check().unwrap_err();
        assert!(
            err.contains("crashing") && err.contains("bug in run 0"),
            "{err}"
        );
        // 1 s, then 2 s later the third run stays up.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(health.check(), Ok(()));
        let ticked = ticks.load(Ordering::SeqCst);
        assert!(ticked >= 40, "the neighbour kept running: {ticked} ticks");
        shutdown.cancel();
        crashing.await.unwrap();
        steady.await.unwrap();
        assert_eq!(health.check(), Ok(()));
        health.set_stopped("leader election ended");
        assert!(health.check().unwrap_err().contains("stopped"));
    }
}
