//! Waiting for a condition with a deadline: tests poll for the state they expect instead of
//! sleeping for a guessed time, so they are as fast as the system allows and fail with what
//! they waited for when it never comes.
//!
//! The async forms poll with `tokio::time`, so under a paused clock the deadline is virtual.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often the waits poll. Short: a condition is usually a cheap in-process check or one
/// request, and a test waits for several in a row.
const POLL: Duration = Duration::from_millis(20);

/// The deadline of [`eventually`].
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, and returns that; panics with `what` after `limit`.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually_within`] [`EVENTUALLY`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(EVENTUALLY, what, check).await
}

/// Blocks until `check` returns `Some`, and returns that; panics with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Blocks until `condition` holds; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    wait_until(what, timeout, || condition().then_some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_the_first_value() {
        let mut n = 0;
        let v = eventually("n to reach 3", || {
            n += 1;
            let v = n;
            async move { (v >= 3).then_some(v) }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out waiting for never")]
    async fn eventually_panics_at_the_deadline() {
        eventually_within(Duration::from_secs(1), "never", || async { None::<()> }).await;
    }

    #[test]
    fn wait_until_polls_until_some() {
        let mut n = 0;
        let v = wait_until("n to reach 2", Duration::from_secs(5), || {
            n += 1;
            (n >= 2).then_some(n)
        });
        assert_eq!(v, 2);
    }

    #[test]
    #[should_panic(expected = "waiting for never")]
    fn wait_for_panics_at_the_deadline() {
        wait_for("never", Duration::from_millis(50), || false);
    }
}
