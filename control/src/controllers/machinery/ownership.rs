//! ownerReferences: the controller of an object, references to set on what a controller
//! creates, and the patches that adopt and release.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

/// The ownerReference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// The reference a controller puts on what it owns: `controller` and `blockOwnerDeletion` set,
/// so foreground deletion of the owner waits for it.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `meta` is controlled by the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A JSON merge patch that sets `refs` as the ownerReferences, pinned to the object's uid and
/// resourceVersion so a concurrent change (or a replaced object) makes it fail with a conflict
/// instead of overwriting.
pub fn owner_refs_patch(meta: &ObjectMeta, refs: Vec<OwnerReference>) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "ownerReferences": refs,
            "resourceVersion": meta.resource_version,
            "uid": meta.uid,
        }
    })
}
