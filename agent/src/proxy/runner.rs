//! A bounded-frequency runner (after kube-proxy's): runs a sync when asked, but never more often
//! than `min_interval`, and at least every `max_interval` so drift is repaired.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Asks the runner for a sync; many requests before the sync runs coalesce into one.
#[derive(Debug, Clone)]
pub struct SyncRequest(mpsc::Sender<()>);

/// The runner's end of [`SyncRequest`].
#[derive(Debug)]
pub struct SyncRequests(mpsc::Receiver<()>);

impl SyncRequest {
    /// A request handle and the runner's receiving end.
    pub fn channel() -> (Self, SyncRequests) {
        let (tx, rx) = mpsc::channel(1);
        (Self(tx), SyncRequests(rx))
    }

    /// Requests a sync. A request already pending absorbs this one.
    pub fn request(&self) {
        let _ = self.0.try_send(());
    }
}

/// Runs `sync` until `shutdown`: once at start, then on request (rate-limited to one per
/// `min_interval`) and at least every `max_interval`.
pub async fn run<F, Fut>(
    mut requests: SyncRequests,
    min_interval: Duration,
    max_interval: Duration,
    shutdown: CancellationToken,
    mut sync: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut last: Option<Instant> = None;
    loop {
        if let Some(last) = last {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = requests.0.recv() => {}
                _ = tokio::time::sleep_until(last + max_interval) => {}
            }
            let earliest = last + min_interval;
            if Instant::now() < earliest {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(earliest) => {}
                }
            }
        }
        // Requests that came while waiting are served by this sync: it reads the latest state.
        while requests.0.try_recv().is_ok() {}
        last = Some(Instant::now());
        sync().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn requests_coalesce_and_are_rate_limited() {
        let (requests, receiver) = SyncRequest::channel();
        let count = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (count, shutdown) = (count.clone(), shutdown.clone());
            async move {
                run(
                    receiver,
                    Duration::from_millis(100),
                    Duration::from_secs(60),
                    shutdown,
                    || {
                        count.fetch_add(1, Ordering::SeqCst);
                        async {}
                    },
                )
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "one sync at start");
        for _ in 0..10 {
            requests.request();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "not before min_interval");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2, "ten requests, one sync");
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3, "max_interval resync");
        shutdown.cancel();
        task.await.unwrap();
    }
}
