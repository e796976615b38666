//! Writes pods' statuses to the API server off the pods' syncs, as the kubelet's status
//! manager does: a pod worker hands over its newest status and goes on running containers
//! and probes; one task per agent writes what was handed over.
//!
//! Only the newest status of each pod is kept (a later one replaces an unwritten earlier one),
//! so what waits is bounded by the number of pods. A write that fails (the API server is
//! unreachable) stays pending and is retried with back-off up to [`MAX_BACKOFF`]; when the
//! API server is back, every pod's latest status reaches it, which is the reconciliation on
//! reconnection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;

/// The longest wait between retries while the API server fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod's newest status waiting to be written.
#[derive(Debug, Clone)]
struct Pending {
    namespace: String,
    name: String,
    status: PodStatus,
    /// Which hand-over this is: a write only clears the entry it wrote.
    version: u64,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    version: u64,
}

/// Hands statuses to the writer task (cheap to clone).
#[derive(Clone)]
pub struct StatusWriter {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    /// Woken whenever the pending set shrinks (tests and shutdown wait on it).
    drained: Arc<Notify>,
}

impl StatusWriter {
    /// A writer posting through `client`, with its task spawned here (it runs until the
    /// process ends; a writer with nothing pending sleeps).
    pub fn new(client: kube::Client) -> Self {
        let writer = Self {
            state: Arc::default(),
            wake: Arc::new(Notify::new()),
            drained: Arc::new(Notify::new()),
        };
        tokio::spawn(writer.clone().run(client));
        writer
    }

    /// Hands over `status` for the pod `uid` (`namespace/name`): it replaces any unwritten
    /// one. Never waits.
    pub fn set(&self, uid: &str, namespace: &str, name: &str, status: PodStatus) {
        {
            let mut state = lock(&self.state);
            state.version += 1;
            let version = state.version;
            state.pending.insert(
                uid.to_owned(),
                Pending {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    status,
                    version,
                },
            );
        }
        self.wake.notify_one();
    }

    /// How many pods' statuses wait to be written.
    pub fn pending(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// Waits until nothing is pending.
    pub async fn drained(&self) {
        self.until(|state| state.pending.is_empty()).await;
    }

    /// Waits until the pod `uid` has nothing pending.
    pub async fn written(&self, uid: &str) {
        self.until(|state| !state.pending.contains_key(uid)).await;
    }

    async fn until(&self, done: impl Fn(&State) -> bool) {
        loop {
            let woken = self.drained.notified();
            if done(&lock(&self.state)) {
                return;
            }
            woken.await;
        }
    }

    async fn run(self, client: kube::Client) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let batch: Vec<(String, Pending)> = lock(&self.state)
                .pending
                .iter()
                .map(|(uid, p)| (uid.clone(), p.clone()))
                .collect();
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let mut failed = false;
            for (uid, pending) in batch {
                match write(&client, &pending).await {
                    Ok(()) => {
                        let mut state = lock(&self.state);
                        if state.pending.get(&uid).map(|p| p.version) == Some(pending.version) {
                            state.pending.remove(&uid);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(pod = %pending.name, error = %e, "writing the pod's status; retried");
                        failed = true;
                    }
                }
            }
            self.drained.notify_waiters();
            if failed {
                tracing::warn!(
                    pending = self.pending(),
                    retry_in = ?backoff,
                    "pod statuses could not be written (is the API server reachable?)"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                backoff = Duration::from_secs(1);
            }
        }
    }
}

/// Why a status write did not land.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One merge patch of the status subresource. A pod that is gone (404) counts as written.
async fn write(client: &kube::Client, pending: &Pending) -> Result<(), WriteError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pending.namespace);
    let patch = json!({ "status": pending.status });
    let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
    let write = api.patch_status(&pending.name, &params, &patch);
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Err(_) => Err(WriteError::Timeout(WRITE_TIMEOUT)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        Ok(Err(e)) => Err(e.into()),
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::fakes::FakeApi;

    fn status(phase: &str) -> PodStatus {
        PodStatus {
            phase: Some(phase.to_owned()),
            ..PodStatus::default()
        }
    }

    /// Only the newest status of a pod is written, and every pod's reaches the API.
    #[tokio::test]
    async fn the_newest_status_of_each_pod_is_written() {
        let api = FakeApi::default();
        let writer = StatusWriter::new(api.client());
        writer.set("ua", "default", "a", status("Pending"));
        writer.set("ua", "default", "a", status("Running"));
        writer.set("ub", "default", "gone", status("Running"));
        writer.drained().await;
        let phases: Vec<String> = api
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/a/status"))
            .filter_map(|r| Some(r.body.pointer("/status/phase")?.as_str()?.to_owned()))
            .collect();
        assert_eq!(phases.last().map(String::as_str), Some("Running"));
        assert!(phases.len() <= 2, "{phases:?}");
    }

    /// While the API server does not answer, statuses wait (one per pod, however many
    /// hand-overs) and handing one over never blocks.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_api_server_keeps_one_pending_status_per_pod() {
        let hangs = tower::service_fn(|_: http::Request<kube::client::Body>| {
            std::future::pending::<Result<http::Response<kube::client::Body>, std::io::Error>>()
        });
        let writer = StatusWriter::new(kube::Client::new(hangs, "default"));
        let started = tokio::time::Instant::now();
        for i in 0..1000 {
            writer.set(&format!("u{}", i % 10), "default", "p", status("Running"));
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(writer.pending(), 10);
    }
}
