//! Fault containment for reconcilers. A panic in one object's reconcile (a bug met by one odd
//! object) must not end the controller's loop, let alone the task every controller shares:
//! [`guard`] catches it, logs it with the object's key, counts it for `/metrics` and requeues
//! the key with exponential back-off, as client-go's work queue does for a failed key, while
//! the controller goes on with the other keys.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kube::runtime::controller::Action;
use kube::Resource;

/// Panics caught per controller since the process started.
static PANICS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// The first retry after a panic; it doubles per consecutive panic of the key.
const BASE_DELAY: Duration = Duration::from_millis(5);
/// The longest retry delay (client-go's default item rate limiter: 5 ms to 1000 s).
const MAX_DELAY: Duration = Duration::from_secs(1000);
/// Keys whose consecutive panics are remembered; beyond it the count starts over, which only
/// shortens one back-off.
const MAX_KEYS: usize = 10_000;

/// Counts a panic caught in `controller` (reconcile or whole loop).
pub fn record_panic(controller: &'static str) {
    *PANICS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(controller)
        .or_default() += 1;
}

/// How many panics each controller has had caught.
pub fn panics() -> Vec<(&'static str, u64)> {
    let panics = PANICS.lock().unwrap_or_else(|p| p.into_inner());
    panics.iter().map(|(c, n)| (*c, *n)).collect()
}

/// The `/metrics` lines of the caught panics.
pub fn metrics() -> String {
    let mut out = String::from("# TYPE skiff_controller_panics_total counter\n");
    for (controller, n) in panics() {
        out.push_str(&format!(
            "skiff_controller_panics_total{{controller=\"{controller}\"}} {n}\n"
        ));
    }
    out
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".to_owned())
}

/// `base` doubled per failure after the first, capped at `max` (client-go's exponential
/// item back-off).
pub fn exponential_backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    base.checked_mul(
        1u32.checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX),
    )
    .map_or(max, |d| d.min(max))
}

/// The delay before retrying a key after its `failures`-th consecutive panic.
fn backoff(failures: u32) -> Duration {
    exponential_backoff(BASE_DELAY, MAX_DELAY, failures)
}

/// `reconcile` with its panics caught: a panicking key is requeued with back-off
/// (`Ok(Action::requeue(..))`, so the controller's error policy is not involved), a key that
/// reconciles again has its back-off reset.
pub fn guard<K, C, E, F, Fut>(
    controller: &'static str,
    mut reconcile: F,
) -> impl FnMut(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, E>>
where
    K: Resource,
    F: FnMut(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Send + 'static,
{
    let failures: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    move |object, ctx| {
        let meta = object.meta();
        let key = match &meta.namespace {
            Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
            None => meta.name.clone().unwrap_or_default(),
        };
        let failures = failures.clone();
        // Building the future runs code too (a plain fn returning a future may panic there).
        let future = std::panic::catch_unwind(AssertUnwindSafe(|| reconcile(object, ctx)));
        async move {
            let outcome = match future {
                Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
                Err(payload) => Err(payload),
            };
            let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(result) => {
                    if result.is_ok() {
                        failures.remove(&key);
                    }
                    result
                }
                Err(payload) => {
                    if failures.len() >= MAX_KEYS && !failures.contains_key(&key) {
                        failures.clear();
                    }
                    let count = failures.entry(key.clone()).or_default();
                    *count = count.saturating_add(1);
                    let delay = backoff(*count);
                    record_panic(controller);
                    tracing::error!(
                        controller,
                        key,
                        panic = %panic_message(payload.as_ref()),
                        retry_in = ?delay,
                        "reconcile panicked; key requeued"
                    );
                    Ok(Action::requeue(delay))
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config_map(name: &str) -> Arc<ConfigMap> {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        Arc::new(cm)
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(11), Duration::from_millis(5 * 1024));
        assert_eq!(backoff(30), MAX_DELAY);
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
    }

    #[tokio::test]
    async fn a_panicking_key_is_requeued_with_back_off_and_the_others_reconcile() {
        let reconciled = Arc::new(Mutex::new(Vec::new()));
        let mut reconcile = guard("test-guard", {
            let reconciled = reconciled.clone();
            move |cm: Arc<ConfigMap>, _: Arc<()>| {
                let reconciled = reconciled.clone();
                async move {
                    let name = cm.metadata.name.clone().unwrap_or_default();
                    assert!(name != "bad", "reconcile of {name} hit a bug");
                    reconciled.lock().unwrap().push(name);
                    Ok::<_, std::io::Error>(Action::await_change())
                }
            }
        });
        let before = panics()
            .into_iter()
            .find(|(c, _)| *c == "test-guard")
            .map_or(0, |(_, n)| n);
        let requeue = |ms| Action::requeue(Duration::from_millis(ms));
        assert_eq!(
            reconcile(config_map("bad"), Arc::new(())).await.unwrap(),
            requeue(5)
        );
        assert_eq!(
            reconcile(config_map("good"), Arc::new(())).await.unwrap(),
            Action::await_change()
        );
        assert_eq!(
            reconcile(config_map("bad"), Arc::new(())).await.unwrap(),
            requeue(10)
        );
        assert_eq!(
            reconcile(config_map("other"), Arc::new(())).await.unwrap(),
            Action::await_change()
        );
        assert_eq!(*reconciled.lock().unwrap(), ["good", "other"]);
        let after = panics()
            .into_iter()
            .find(|(c, _)| *c == "test-guard")
            .map_or(0, |(_, n)| n);
        assert_eq!(after - before, 2);
        assert!(metrics().contains("skiff_controller_panics_total{controller=\"test-guard\"}"));
    }
}
