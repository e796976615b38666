//! What changed since the service proxy's last sync: the Services and EndpointSlices its
//! watches touched, and whether a watch listed everything again. A sync then recomputes only
//! the Services concerned (their service ports, their names in the cluster zone), so its cost
//! follows the changes rather than the cluster's size (kube-proxy's change trackers,
//! `ServiceChangeTracker` and `EndpointsChangeTracker`, keep such a list for the same reason).
//!
//! An EndpointSlice belongs to the Service its `kubernetes.io/service-name` label names. The
//! label can change and a deleted slice is gone from the store, so [`SliceIndex`] remembers
//! each slice's Service as last seen: a change recomputes the Service the slice left as well
//! as the one it belongs to now.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::api::SERVICE_NAME_LABEL;

/// A namespaced object: (namespace, name).
pub type ObjectKey = (String, String);

/// The key of the object with `meta`.
pub fn object_key(meta: &ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The Service `slice` belongs to, if it is labelled with one.
pub fn service_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

/// The changes one sync takes over.
#[derive(Debug, Default)]
pub struct Changes {
    /// Services added, changed or deleted.
    pub services: HashSet<ObjectKey>,
    /// EndpointSlices added, changed or deleted.
    pub slices: HashSet<ObjectKey>,
    /// A watch listed everything again (at start, or after it lost its place): deletions in
    /// between were never seen one by one, so everything is recomputed.
    pub relisted: bool,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty() && !self.relisted
    }
}

/// Where the watches note their changes, and the sync takes them from (shared by both).
#[derive(Debug, Clone, Default)]
pub struct ChangeLog(Arc<Mutex<Changes>>);

impl ChangeLog {
    fn with(&self, f: impl FnOnce(&mut Changes)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Notes that the Service `key` was added, changed or deleted.
    pub fn service(&self, key: ObjectKey) {
        self.with(|c| {
            c.services.insert(key);
        });
    }

    /// Notes that the EndpointSlice `key` was added, changed or deleted.
    pub fn slice(&self, key: ObjectKey) {
        self.with(|c| {
            c.slices.insert(key);
        });
    }

    /// Notes that a watch listed everything again.
    pub fn relisted(&self) {
        self.with(|c| c.relisted = true);
    }

    /// The changes noted since the last call.
    pub fn take(&self) -> Changes {
        let mut taken = Changes::default();
        self.with(|c| std::mem::swap(c, &mut taken));
        taken
    }
}

/// Each EndpointSlice's Service, and each Service's EndpointSlices.
#[derive(Debug, Default)]
pub struct SliceIndex {
    /// Slice -> its Service.
    owner: HashMap<ObjectKey, ObjectKey>,
    /// Service -> the names of its slices (in its namespace).
    slices: HashMap<ObjectKey, BTreeSet<String>>,
}

impl SliceIndex {
    /// The index of `slices`.
    pub fn build<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Self {
        let mut index = Self::default();
        for slice in slices {
            index.update(object_key(&slice.metadata), service_of(slice));
        }
        index
    }

    /// Records that the slice `slice` now belongs to `service` (`None`: deleted, or no longer
    /// labelled). Returns the Services whose slices changed: the one it left and the one it
    /// belongs to now.
    pub fn update(&mut self, slice: ObjectKey, service: Option<ObjectKey>) -> Vec<ObjectKey> {
        let mut touched = Vec::with_capacity(2);
        if let Some(before) = self.owner.remove(&slice) {
            if let Some(names) = self.slices.get_mut(&before) {
                names.remove(&slice.1);
                if names.is_empty() {
                    self.slices.remove(&before);
                }
            }
            touched.push(before);
        }
        if let Some(now) = service {
            self.slices
                .entry(now.clone())
                .or_default()
                .insert(slice.1.clone());
            self.owner.insert(slice, now.clone());
            if !touched.contains(&now) {
                touched.push(now);
            }
        }
        touched
    }

    /// The slices of `service`.
    pub fn slices_of<'a>(&'a self, service: &'a ObjectKey) -> impl Iterator<Item = ObjectKey> + 'a {
        self.slices
            .get(service)
            .into_iter()
            .flatten()
            .map(|name| (service.0.clone(), name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(ns: &str, name: &str) -> ObjectKey {
        (ns.to_owned(), name.to_owned())
    }

    fn slice(name: &str, service: Option<&str>) -> EndpointSlice {
        let labels = service.map(|s| json!({SERVICE_NAME_LABEL: s}));
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "labels": labels}, "addressType": "IPv4", "endpoints": []}))
        .unwrap()
    }

    #[test]
    fn a_slice_moving_between_services_touches_both() {
        let mut index = SliceIndex::build([&slice("a-1", Some("a")), &slice("a-2", Some("a"))]);
        let a = key("default", "a");
        let b = key("default", "b");
        let names = |index: &SliceIndex, s: &ObjectKey| -> Vec<String> {
            index.slices_of(s).map(|k| k.1).collect()
        };
        assert_eq!(names(&index, &a), ["a-1", "a-2"]);
        assert_eq!(
            index.update(key("default", "a-2"), Some(b.clone())),
            [a.clone(), b.clone()],
            "relabelled: the Service it left and the one it joined"
        );
        assert_eq!(names(&index, &a), ["a-1"]);
        assert_eq!(names(&index, &b), ["a-2"]);
        assert_eq!(
            index.update(key("default", "a-1"), Some(a.clone())),
            std::slice::from_ref(&a),
            "changed in place: its Service once"
        );
        assert_eq!(
            index.update(key("default", "a-1"), None),
            std::slice::from_ref(&a)
        );
        assert!(names(&index, &a).is_empty(), "deleted");
        assert!(index.update(key("default", "stray"), None).is_empty());
        assert_eq!(service_of(&slice("x", None)), None, "no label: no Service");
    }

    #[test]
    fn the_log_hands_each_change_to_one_sync() {
        let log = ChangeLog::default();
        assert!(log.take().is_empty());
        log.service(key("default", "a"));
        log.service(key("default", "a"));
        log.slice(key("default", "a-1"));
        let taken = log.take();
        assert_eq!(taken.services.len(), 1, "noted twice, recomputed once");
        assert_eq!(taken.slices.len(), 1);
        assert!(!taken.relisted);
        assert!(log.take().is_empty(), "taken");
        log.relisted();
        assert!(log.take().relisted);
    }
}
