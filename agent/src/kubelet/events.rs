//! Events the agent writes about pods (`Pulling`, `Started`, `BackOff`, `Unhealthy`, ...), as
//! core/v1 Events from source `kubelet` on this node, so `kubectl describe pod` and
//! `kubectl get events` tell what happened.
//!
//! Recording one never waits for the API server: it goes into a bounded queue that one writer
//! task drains, so a pod's sync goes on while the server is unreachable, and the queued Events
//! are written when it is back (beyond [`QUEUE`] pending ones, new ones are dropped and
//! counted). Repeats are folded as client-go's correlator does ([`skiff_k8s::events`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_k8s::events::{Correlator, Decision, Key};
use tokio::sync::mpsc;

/// Events waiting to be written, at most (client-go's broadcaster queues 1 000).
pub const QUEUE: usize = 1000;
/// The longest wait between two attempts while the API server is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One Event to write.
struct Pending {
    object: ObjectReference,
    warning: bool,
    reason: String,
    message: String,
    /// When it happened (written as its timestamps, however late it is written).
    at: Timestamp,
}

/// Writes Events for pods of one node.
#[derive(Clone)]
pub struct Events {
    queue: mpsc::Sender<Pending>,
    dropped: Arc<AtomicU64>,
}

impl Events {
    /// Events reported by the kubelet of `node`; starts their writer on the current runtime.
    pub fn new(client: kube::Client, node: &str) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(write_all(client, node.to_owned(), pending));
        Self {
            queue,
            dropped: Arc::default(),
        }
    }

    /// How many Events were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records an event about `pod`, optionally about one of its containers
    /// (`spec.containers{name}`, as the kubelet sets `fieldPath`). Returns at once.
    pub async fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let pending = Pending {
            object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: Some(namespace),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            },
            warning,
            reason: reason.to_owned(),
            message: message.to_owned(),
            at: Timestamp::now(),
        };
        if self.queue.try_send(pending).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(reason, dropped, "event queue full; event dropped");
        }
    }
}

/// Writes the queued Events in order until every sender is gone.
async fn write_all(client: kube::Client, node: String, mut pending: mpsc::Receiver<Pending>) {
    let mut correlator = Correlator::default();
    let source = format!("kubelet/{node}");
    while let Some(event) = pending.recv().await {
        let mut wait = Duration::from_millis(500);
        // Retried while the server cannot be reached; an answer, even a refusal, ends it.
        while let Err(e) = write(&client, &node, &source, &mut correlator, &event).await {
            if matches!(e, kube::Error::Api(_)) {
                tracing::debug!(reason = %event.reason, error = %e, "event refused");
                break;
            }
            tracing::debug!(error = %e, retry_in = ?wait, "API server unreachable; event kept");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    }
}

async fn write(
    client: &kube::Client,
    node: &str,
    source: &str,
    correlator: &mut Correlator,
    event: &Pending,
) -> Result<(), kube::Error> {
    let namespace = event.object.namespace.clone().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let type_ = if event.warning { "Warning" } else { "Normal" };
    let key = Key::new(source, &event.object, type_, &event.reason);
    let at = Time(event.at);
    let (message, id) = match correlator.observe(&key, &event.message, std::time::Instant::now()) {
        Decision::Update {
            name,
            count,
            message,
            id,
        } => {
            let patch = json!({"count": count, "lastTimestamp": at, "message": message});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired (--event-ttl) or otherwise gone: write a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    correlator.forget(&id);
                    (message, id)
                }
                Err(e) => {
                    // Not counted until written: the retry observes it again.
                    correlator.forget(&id);
                    return Err(e);
                }
            }
        }
        Decision::Create { message, id } => (message, id),
    };
    let name = event.object.name.clone().unwrap_or_default();
    let created = api
        .create(
            &PostParams::default(),
            &Event {
                metadata: ObjectMeta {
                    name: Some(format!("{name}.{:x}", uuid_ish())),
                    namespace: Some(namespace),
                    ..ObjectMeta::default()
                },
                involved_object: event.object.clone(),
                reason: Some(event.reason.clone()),
                message: Some(message),
                type_: Some(type_.to_owned()),
                count: Some(1),
                first_timestamp: Some(at.clone()),
                last_timestamp: Some(at),
                event_time: Some(MicroTime(event.at)),
                reporting_component: Some("kubelet".into()),
                reporting_instance: Some(node.to_owned()),
                source: Some(EventSource {
                    component: Some("kubelet".into()),
                    host: Some(node.to_owned()),
                }),
                ..Event::default()
            },
        )
        .await?;
    if let Some(name) = created.metadata.name {
        correlator.created(id, name);
    }
    Ok(())
}

/// A unique-enough suffix for event names (time and a process-wide counter).
fn uuid_ish() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}
