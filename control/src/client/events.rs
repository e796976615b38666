//! Events written by controllers and the scheduler, as core/v1 `Event`s (what `kubectl get events`
//! and `kubectl describe` read). kube-runtime's recorder writes events.k8s.io/v1 instead, which
//! skiff does not serve as a separate resource, so this small recorder stands in for it.
//!
//! Repeats are folded as client-go's correlator does ([`skiff_k8s::events`]): the same
//! (object, reason, message) within a process advances one Event's `count` and
//! `lastTimestamp`, and more than ten distinct messages for one object and reason within ten
//! minutes share one "(combined from similar events)" Event, so a hot loop cannot flood the
//! store.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use skiff_k8s::events::{Correlator, Decision, Key};
use tokio::sync::Mutex;

/// `Normal` or `Warning`, the two event types Kubernetes knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something the user may need to act on.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Writes Events on behalf of one component (`deployment-controller`, `default-scheduler`, ...).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    /// The events this process wrote, for folding repeats.
    seen: Arc<Mutex<Correlator>>,
}

impl Recorder {
    /// A recorder writing as `component`.
    pub fn new(client: Client, component: &str) -> Self {
        Self {
            client,
            component: component.to_owned(),
            seen: Arc::default(),
        }
    }

    /// Records an event about `object`. Failures are logged, not returned: an event is advice,
    /// and a controller must not stop because one could not be written.
    pub async fn record(
        &self,
        object: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.write(object, kind, reason, message).await {
            tracing::debug!(reason, error = %e, "could not write event");
        }
    }

    async fn write(
        &self,
        object: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let namespace = object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let key = Key::new(&self.component, object, kind.as_str(), reason);
        let mut seen = self.seen.lock().await;
        let (message, id) = match seen.observe(&key, message, std::time::Instant::now()) {
            Decision::Update {
                name,
                count,
                message,
                id,
            } => {
                let patch = json!({"count": count, "lastTimestamp": now, "message": message});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return Ok(()),
                    // Deleted meanwhile (TTL, namespace gone): write a fresh one below.
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        seen.forget(&id);
                        (message, id)
                    }
                    Err(e) => return Err(e),
                }
            }
            Decision::Create { message, id } => (message, id),
        };
        let base = object.name.clone().unwrap_or_else(|| "object".to_owned());
        let event = Event {
            metadata: ObjectMeta {
                // Like client-go: the object's name and a unique suffix.
                name: Some(format!(
                    "{base}.{:x}",
                    uuid::Uuid::new_v4().as_u128() as u64
                )),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(kind.as_str().to_owned()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now.clone()),
            event_time: Some(MicroTime(now.0)),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            action: Some(reason.to_owned()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        if let Some(name) = created.metadata.name {
            seen.created(id, name);
        }
        Ok(())
    }
}

/// The reference an Event carries for a typed object.
pub fn reference<K>(object: &K) -> ObjectReference
where
    K: kube::Resource<DynamicType = ()>,
{
    object.object_ref(&())
}
