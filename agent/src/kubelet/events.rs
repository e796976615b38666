//! Events the agent writes about pods (`Pulling`, `Started`, `BackOff`, `Unhealthy`, ...), as
//! core/v1 Events from source `kubelet` on this node, so `kubectl describe pod` and
//! `kubectl get events` tell what happened.
//!
//! Recording never waits for the API server: an Event goes into a bounded queue and one
//! writer task per agent posts it, as client-go's broadcaster does. While the API server is
//! unreachable the pods keep running and the writer retries; when the queue is full, new
//! Events are dropped (and counted in the log) rather than blocking a pod's sync or growing
//! memory. Repeats are folded by the shared correlator ([`skiff_k8s::events`]): the same
//! reason and message for the same container advances one Event's `count`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_k8s::events::{Correlator, Decision, Key};
use tokio::sync::{mpsc, oneshot};

/// Events waiting for the API server, at most (client-go's broadcaster queues 1000).
pub const QUEUE: usize = 1000;
/// How long one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often one Event is tried while the API server fails (client-go: 12 tries, 10 s apart).
const TRIES: u32 = 12;
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// What the writer task receives.
enum Message {
    Record(Box<Record>),
    Flush(oneshot::Sender<()>),
}

/// One observed Event, before correlation.
struct Record {
    object: ObjectReference,
    type_: &'static str,
    reason: String,
    message: String,
    at: Time,
}

/// Records Events for pods of one node.
#[derive(Clone)]
pub struct Events {
    queue: mpsc::Sender<Message>,
    node: String,
}

impl Events {
    /// Events reported by the kubelet of `node`, written through `client` by a task spawned
    /// here (it ends when the last `Events` is dropped).
    pub fn new(client: kube::Client, node: &str) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(
            Writer {
                client,
                node: node.to_owned(),
                seen: Correlator::default(),
            }
            .run(rx),
        );
        Self {
            queue,
            node: node.to_owned(),
        }
    }

    /// Records an event about `pod`, optionally about one of its containers
    /// (`spec.containers{name}`, as the kubelet sets `fieldPath`). Never waits for the API
    /// server and never fails: a full queue drops the Event with a warning.
    pub fn pod(
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
        let object = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: Some(namespace),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
        };
        self.object(object, warning, reason, message);
    }

    /// Records an event about any object (an Ingress the node's proxy cannot serve as
    /// asked), with the same guarantees as [`Events::pod`].
    pub fn object(&self, object: ObjectReference, warning: bool, reason: &str, message: &str) {
        let record = Record {
            object,
            type_: if warning { "Warning" } else { "Normal" },
            reason: reason.to_owned(),
            message: message.to_owned(),
            at: Time(k8s_openapi::jiff::Timestamp::now()),
        };
        if self
            .queue
            .try_send(Message::Record(Box::new(record)))
            .is_err()
        {
            tracing::warn!(
                node = %self.node,
                reason,
                "the event queue is full (the API server is unreachable?): event dropped"
            );
        }
    }

    /// Waits until every Event recorded before the call has been written or given up.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The task that writes queued Events, one at a time, in order.
struct Writer {
    client: kube::Client,
    node: String,
    seen: Correlator,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        while let Some(message) = rx.recv().await {
            match message {
                Message::Flush(done) => {
                    let _ = done.send(());
                }
                Message::Record(record) => self.deliver(&record).await,
            }
        }
    }

    /// Writes one Event, retrying while the API server fails.
    async fn deliver(&mut self, record: &Record) {
        let source = format!("kubelet/{}", self.node);
        let key = Key::new(&source, &record.object, record.type_, &record.reason);
        let decision = self
            .seen
            .observe(&key, &record.message, std::time::Instant::now());
        for attempt in 1..=TRIES {
            let write = tokio::time::timeout(WRITE_TIMEOUT, self.write(record, &decision));
            match write.await {
                Ok(Ok(())) => return,
                // Refused for good (bad input, namespace gone): retrying cannot help.
                Ok(Err(kube::Error::Api(s))) if s.code < 500 && s.code != 429 => {
                    tracing::debug!(reason = %record.reason, error = %s.message, "event not written");
                    return;
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::debug!(reason = %record.reason, attempt, %error, "writing an event");
                    if attempt < TRIES {
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
        }
        tracing::warn!(reason = %record.reason, "event dropped after {TRIES} tries");
    }

    async fn write(&mut self, record: &Record, decision: &Decision) -> Result<(), kube::Error> {
        let namespace = record.object.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let (message, id) = match decision {
            Decision::Update {
                name,
                count,
                message,
                id,
            } => {
                let patch = json!({"count": count, "lastTimestamp": record.at, "message": message});
                match api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return Ok(()),
                    // Deleted meanwhile (TTL, namespace gone): write a fresh one below.
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        self.seen.forget(id);
                        (message, id)
                    }
                    Err(e) => return Err(e),
                }
            }
            Decision::Create { message, id } => (message, id),
        };
        let name = record.object.name.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", uuid_ish())),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: record.object.clone(),
            reason: Some(record.reason.clone()),
            message: Some(message.clone()),
            type_: Some(record.type_.to_owned()),
            count: Some(1),
            first_timestamp: Some(record.at.clone()),
            last_timestamp: Some(record.at.clone()),
            event_time: Some(MicroTime(record.at.0)),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        if let Some(name) = created.metadata.name {
            self.seen.created(id.clone(), name);
        }
        Ok(())
    }
}

/// A unique-enough suffix for event names (time and a process-wide counter).
fn uuid_ish() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::fakes::FakeApi;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"}
        }))
        .unwrap()
    }

    /// Repeats of one Event become one Event with a count, as `kubectl describe` shows
    /// "x3 over ...".
    #[tokio::test]
    async fn repeats_advance_one_events_count() {
        let api = FakeApi::default();
        let events = Events::new(api.client(), "node-1");
        for _ in 0..3 {
            events.pod(&pod(), Some("app"), true, "BackOff", "Back-off restarting");
        }
        events.pod(&pod(), Some("app"), false, "Pulled", "pulled");
        events.flush().await;
        let writes: Vec<(String, Option<i64>)> = api
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/events"))
            .map(|r| {
                (
                    r.method.to_string(),
                    r.body.get("count").and_then(|c| c.as_i64()),
                )
            })
            .collect();
        assert_eq!(
            writes,
            [
                ("POST".to_owned(), Some(1)),
                ("PATCH".to_owned(), Some(2)),
                ("PATCH".to_owned(), Some(3)),
                ("POST".to_owned(), Some(1)),
            ]
        );
    }

    /// With an API server that never answers, recording returns at once and the queue stays
    /// bounded: a pod's sync is never held up by its Events.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_api_server_never_blocks_recording() {
        let hangs = tower::service_fn(|_: http::Request<kube::client::Body>| {
            std::future::pending::<Result<http::Response<kube::client::Body>, std::io::Error>>()
        });
        let events = Events::new(kube::Client::new(hangs, "default"), "node-1");
        let started = tokio::time::Instant::now();
        for i in 0..QUEUE * 3 {
            events.pod(&pod(), None, true, "Failed", &format!("message {i}"));
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "no recording waited");
        assert!(
            events.queue.capacity() == 0,
            "the queue is full, not growing"
        );
    }
}
