//! Which pods a DaemonSet or StatefulSet owns (Kubernetes' `ClaimPods`): its own pods that still
//! match its selector, plus orphans that match it, which it adopts. Owned pods that stopped
//! matching are released. Without adoption a set recreated after `--cascade=orphan` would
//! duplicate its pods (DaemonSet) or wait forever for names its orphans hold (StatefulSet).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use super::ownership;

/// Sorts `pods` (one namespace) into those the owner keeps, adopting matching orphans that
/// `eligible` accepts and releasing owned pods that stopped matching. `deleting` owners adopt
/// nothing.
pub async fn claim(
    api: &Api<Pod>,
    owner: &OwnerReference,
    deleting: bool,
    selector: &Selector,
    pods: Vec<Arc<Pod>>,
    eligible: impl Fn(&Pod) -> bool,
) -> Result<Vec<Arc<Pod>>, kube::Error> {
    let mut owned = Vec::new();
    for pod in pods {
        let matches = !selector.selects_all() && selector.matches(pod.labels());
        match (ownership::controller_of(&pod.metadata), matches) {
            (Some(r), true) if r.uid == owner.uid => owned.push(pod),
            (Some(r), false) if r.uid == owner.uid => {
                let refs: Vec<OwnerReference> = pod
                    .owner_references()
                    .iter()
                    .filter(|o| o.uid != owner.uid)
                    .cloned()
                    .collect();
                set_owners(api, &pod.metadata, refs).await?;
            }
            (None, true)
                if !deleting && pod.metadata.deletion_timestamp.is_none() && eligible(&pod) =>
            {
                let mut refs = pod.owner_references().to_vec();
                refs.push(owner.clone());
                if set_owners(api, &pod.metadata, refs).await? {
                    owned.push(pod);
                }
            }
            _ => {}
        }
    }
    Ok(owned)
}

/// Writes a pod's ownerReferences; `false` when it changed or went away meanwhile (the next
/// pass looks again).
async fn set_owners(
    api: &Api<Pod>,
    meta: &ObjectMeta,
    refs: Vec<OwnerReference>,
) -> Result<bool, kube::Error> {
    let patch = ownership::owner_refs_patch(meta, refs);
    match api
        .patch(
            meta.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
