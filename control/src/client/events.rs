//! Events written by controllers and the scheduler, as core/v1 `Event`s (what `kubectl get events`
//! and `kubectl describe` read). kube-runtime's recorder writes events.k8s.io/v1 instead, which
//! skiff does not serve as a separate resource, so this small recorder stands in for it.
//!
//! Repeats of the same (object, reason, message) within a process are folded into one Event whose
//! `count` and `lastTimestamp` advance, as client-go's correlator does, so a hot loop cannot flood
//! the store.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
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

/// What folds repeats into one Event: (namespace, uid, reason, message).
type Correlation = (String, String, String, String);

/// Writes Events on behalf of one component (`deployment-controller`, `default-scheduler`, ...).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    /// The events this process wrote, by (namespace, uid, reason, message).
    seen: Arc<Mutex<Seen>>,
}

/// Events this process wrote, bounded: at most [`SEEN_MAX`] correlations are remembered.
#[derive(Default)]
struct Seen {
    /// correlation -> (event name, count, last use).
    events: HashMap<Correlation, (String, i32, u64)>,
    /// Advances on every use: the order in which correlations were last used.
    clock: u64,
}

/// How many correlations a recorder remembers (client-go's correlator keeps 4 096 in an LRU).
/// 10 000 pending pods each with a FailedScheduling event fit, so their repeats fold.
const SEEN_MAX: usize = 16_384;

impl Seen {
    fn touch(&mut self, key: &Correlation) -> Option<(String, i32)> {
        self.clock += 1;
        let clock = self.clock;
        let (name, count, used) = self.events.get_mut(key)?;
        *count += 1;
        *used = clock;
        Some((name.clone(), *count))
    }

    fn insert(&mut self, key: Correlation, name: String) {
        if self.events.len() >= SEEN_MAX {
            // Forget the least recently used quarter: an evicted repeat only starts a new Event.
            let mut used: Vec<u64> = self.events.values().map(|(_, _, u)| *u).collect();
            let cut = SEEN_MAX / 4;
            used.select_nth_unstable(cut);
            let oldest = used[cut];
            self.events.retain(|_, (_, _, u)| *u > oldest);
        }
        self.clock += 1;
        self.events.insert(key, (name, 1, self.clock));
    }
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
        let key = (
            namespace.clone(),
            object.uid.clone().unwrap_or_default(),
            reason.to_owned(),
            message.to_owned(),
        );
        let mut seen = self.seen.lock().await;
        if let Some((name, count)) = seen.touch(&key) {
            let patch = json!({"count": count, "lastTimestamp": now});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Deleted meanwhile (TTL, namespace gone): write a fresh one below.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
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
            message: Some(message.to_owned()),
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
            seen.insert(key, name);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Correlation {
        ("ns".into(), format!("uid-{i}"), "R".into(), "m".into())
    }

    #[test]
    fn repeats_count_and_the_least_recently_used_are_forgotten_first() {
        let mut seen = Seen::default();
        seen.insert(key(0), "e0".into());
        assert_eq!(seen.touch(&key(0)), Some(("e0".into(), 2)));
        for i in 1..SEEN_MAX {
            seen.insert(key(i), format!("e{i}"));
        }
        // Full: key 1 is the least recently used, key 0 was used after it was written.
        assert_eq!(seen.touch(&key(0)), Some(("e0".into(), 3)));
        seen.insert(key(SEEN_MAX), "new".into());
        assert!(seen.events.len() <= SEEN_MAX * 3 / 4 + 1);
        assert_eq!(seen.touch(&key(1)), None);
        assert_eq!(seen.touch(&key(0)), Some(("e0".into(), 4)));
        assert_eq!(seen.touch(&key(SEEN_MAX)), Some(("new".into(), 2)));
    }
}
