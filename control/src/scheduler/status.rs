//! The `PodScheduled=False` condition of pods that fit nowhere, as kube-scheduler sets it
//! (`kubectl describe` and `kubectl wait --for=condition=PodScheduled=false` read it).
//!
//! Unlike Events, these writes are not advice and are never dropped: the scheduler leaves the
//! latest decision per pod in [`Conditions`] (one entry per pending pod, so the memory is bounded
//! by the pods that exist), and [`write`] drains it a few requests at a time. A pod decided
//! twice before its first write gets one write, with the newer message; a message already
//! written is not written again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Condition patches in flight at once: few, so that a burst of decisions (10 000 pending pods)
/// adds little to the latency of the writes users make meanwhile; kube-scheduler limits its
/// client to 50 requests per second for the same reason.
const PARALLEL: usize = 2;

/// The conditions waiting to be written, by pod uid.
#[derive(Default)]
pub struct Conditions {
    pending: Mutex<HashMap<String, (ObjectReference, String)>>,
    wake: Notify,
}

impl Conditions {
    /// Pod `pod` fits nowhere, for `message`.
    pub fn unschedulable(&self, pod: ObjectReference, message: String) {
        let uid = pod.uid.clone().unwrap_or_default();
        self.lock().insert(uid, (pod, message));
        self.wake.notify_one();
    }

    /// Pod `uid` was bound or deleted: a condition not yet written is moot.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ObjectReference, String)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Vec<(ObjectReference, String)> {
        self.lock().drain().map(|(_, v)| v).collect()
    }

    /// How many wait to be written.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes the conditions left in `conditions` until `shutdown`.
pub async fn write(client: kube::Client, conditions: Arc<Conditions>, shutdown: CancellationToken) {
    // The message last written per pod uid, so a retry with the same outcome writes nothing.
    let mut written: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = conditions.wake.notified() => {}
        }
        loop {
            let batch: Vec<_> = conditions
                .take()
                .into_iter()
                .filter(|(pod, message)| {
                    written.get(pod.uid.as_deref().unwrap_or_default()) != Some(message)
                })
                .collect();
            if batch.is_empty() {
                break;
            }
            let done: Vec<_> = futures::stream::iter(batch)
                .map(|(pod, message)| {
                    let client = client.clone();
                    async move {
                        let ok = patch(client, &pod, &message).await;
                        (pod.uid.unwrap_or_default(), message, ok)
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            for (uid, message, ok) in done {
                if ok {
                    // Bounded: forget old decisions when there are very many pending pods.
                    if written.len() >= 65_536 {
                        written.clear();
                    }
                    written.insert(uid, message);
                }
            }
        }
    }
}

async fn patch(client: kube::Client, pod: &ObjectReference, message: &str) -> bool {
    let (Some(ns), Some(name)) = (pod.namespace.as_deref(), pod.name.as_deref()) else {
        return false;
    };
    // The version the decision was made on: a pod bound (or changed) since is left alone.
    let status = json!({
    "metadata": {"resourceVersion": pod.resource_version},
    "status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now()),
    }]}});
    match Api::<Pod>::namespaced(client, ns)
        // Strategic: conditions merge by type, so the kubelet's (or anyone's) other conditions
        // stay; a merge patch would replace the whole list (kube-scheduler patches this way).
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(pod = %name, error = %e, "could not write PodScheduled");
            false
        }
    }
}
