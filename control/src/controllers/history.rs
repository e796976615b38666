//! ControllerRevisions: the template history of DaemonSets and StatefulSets (Kubernetes'
//! `pkg/controller/history`).
//!
//! A revision's `data` is what kubectl's rollback applies as a strategic merge patch:
//! `{"spec": {"template": {..., "$patch": "replace"}}}`, so `kubectl rollout undo` puts the old
//! template back as it is, and `kubectl rollout history` lists the revisions owned by the set
//! whose labels match its selector (they carry the template's labels). Templates are compared
//! and hashed as the Deployment controller does ([`normalized_template`]), so a rolled-back
//! template finds its old revision again, which then gets the next revision number. An orphaned
//! revision of the same template (its set was deleted with `--cascade=orphan`) is adopted.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use super::deployment::{normalized_template, template_hash};
use super::machinery::ownership;

/// The label on revisions (and the pods made from them) naming the revision.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// How many name collisions are tried before giving up for this pass.
const MAX_COLLISIONS: i32 = 8;

/// Errors of keeping a set's history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// Every name tried was taken by a revision with another template.
    #[error("no free ControllerRevision name for {0} after {MAX_COLLISIONS} hash collisions")]
    Collisions(String),
}

/// The revision data for a template: a strategic merge patch that replaces the template.
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut t = normalized_template(template);
    if let Value::Object(m) = &mut t {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The normalised template a revision holds (what [`normalized_template`] gives), if any.
pub fn template_value(rev: &ControllerRevision) -> Option<Value> {
    let mut t = rev.data.0.pointer("/spec/template")?.clone();
    if let Value::Object(m) = &mut t {
        m.remove("$patch");
    }
    Some(t)
}

/// The template a revision holds, typed.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    serde_json::from_value(template_value(rev)?).ok()
}

/// A revision's number (0 when unset).
pub fn number(rev: &ControllerRevision) -> i64 {
    rev.revision.unwrap_or(0)
}

/// The hash part of a revision (its label, else the name's last dash-separated part).
pub fn hash_of(rev: &ControllerRevision) -> String {
    rev.labels().get(HASH_LABEL).cloned().unwrap_or_else(|| {
        let name = rev.name_any();
        name.rsplit('-').next().unwrap_or_default().to_owned()
    })
}

/// The revisions in `all` controlled by the object with `uid` in `namespace`, oldest revision
/// first.
pub fn owned_by(
    all: &[std::sync::Arc<ControllerRevision>],
    namespace: &str,
    uid: &str,
) -> Vec<ControllerRevision> {
    let mut revs: Vec<ControllerRevision> = all
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace))
        .filter(|r| ownership::is_controlled_by(&r.metadata, uid))
        .map(|r| (**r).clone())
        .collect();
    revs.sort_by_key(|r| (number(r), r.name_any()));
    revs
}

/// The revision among `revisions` whose template equals `template` (the newest such).
pub fn find_equal<'a>(
    revisions: &'a [ControllerRevision],
    template: &PodTemplateSpec,
) -> Option<&'a ControllerRevision> {
    let wanted = normalized_template(template);
    revisions
        .iter()
        .rev()
        .find(|r| template_value(r).as_ref() == Some(&wanted))
}

/// The result of [`sync`]: the revision of the current template and the collision count.
#[derive(Debug, Clone)]
pub struct Synced {
    /// The revision holding the set's current template (the update revision).
    pub update: ControllerRevision,
    /// The collision count to store in the set's status.
    pub collision_count: Option<i32>,
    /// Whether an API write happened (the caller's cache has not seen it yet).
    pub wrote: bool,
}

/// Makes sure a revision of `template` exists and is the newest: reuses an equal one (bumping
/// its revision number when the template was rolled back to it) or creates
/// `<owner>-<hash>`, bumping the collision count when that name holds something else.
pub async fn sync<K>(
    api: &Api<ControllerRevision>,
    owner: &K,
    revisions: &[ControllerRevision],
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
) -> Result<Synced, HistoryError>
where
    K: Resource<DynamicType = ()>,
{
    let max = revisions.iter().map(number).max().unwrap_or(0);
    if let Some(existing) = find_equal(revisions, template) {
        if number(existing) >= max {
            return Ok(Synced {
                update: existing.clone(),
                collision_count,
                wrote: false,
            });
        }
        let patched = bump(api, existing, max + 1).await?;
        return Ok(Synced {
            update: patched,
            collision_count,
            wrote: true,
        });
    }
    let owner_name = owner.meta().name.clone().unwrap_or_default();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let mut count = collision_count;
    for _ in 0..MAX_COLLISIONS {
        let hash = template_hash(template, count);
        let name = format!("{owner_name}-{hash}");
        let mut labels: BTreeMap<String, String> = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.into(), hash.clone());
        let rev = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: owner.meta().namespace.clone(),
                labels: Some(labels),
                // As Kubernetes: the set's annotations (kubernetes.io/change-cause, which
                // `kubectl rollout history` prints) go with the revision.
                annotations: owner.meta().annotations.clone(),
                owner_references: Some(vec![ownership::controller_ref(owner)]),
                ..ObjectMeta::default()
            },
            data: RawExtension(data_of(template)),
            revision: Some(max + 1),
        };
        match api.create(&PostParams::default(), &rev).await {
            Ok(created) => {
                return Ok(Synced {
                    update: created,
                    collision_count: count,
                    wrote: true,
                })
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours with this template (the cache lags) or a real collision.
                let existing = api.get(&name).await?;
                let same = template_value(&existing) == Some(normalized_template(template));
                let orphan = ownership::controller_of(&existing.metadata).is_none();
                if same && orphan {
                    // Left behind by a set deleted with `--cascade=orphan`: adopt it, so the
                    // pods made from it (adopted too) count as up to date.
                    let mut refs = existing
                        .metadata
                        .owner_references
                        .clone()
                        .unwrap_or_default();
                    refs.push(ownership::controller_ref(owner));
                    let patch = ownership::owner_refs_patch(&existing.metadata, refs);
                    let adopted = api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    let update = if number(&adopted) < max {
                        bump(api, &adopted, max + 1).await?
                    } else {
                        adopted
                    };
                    return Ok(Synced {
                        update,
                        collision_count: count,
                        wrote: true,
                    });
                }
                if same && ownership::is_controlled_by(&existing.metadata, &uid) {
                    let update = if number(&existing) < max {
                        bump(api, &existing, max + 1).await?
                    } else {
                        existing
                    };
                    return Ok(Synced {
                        update,
                        collision_count: count,
                        wrote: true,
                    });
                }
                count = Some(count.unwrap_or(0) + 1);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(HistoryError::Collisions(owner_name))
}

async fn bump(
    api: &Api<ControllerRevision>,
    rev: &ControllerRevision,
    to: i64,
) -> Result<ControllerRevision, kube::Error> {
    api.patch(
        &rev.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"revision": to})),
    )
    .await
}

/// The revisions to delete so at most `limit` revisions not in use remain, oldest first.
/// `live` names the revisions in use (by pods, or as current/update revision).
pub fn to_truncate<'a>(
    revisions: &'a [ControllerRevision],
    live: &HashSet<String>,
    limit: i32,
) -> Vec<&'a ControllerRevision> {
    let unused: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(&r.name_any()))
        .collect();
    let limit = limit.max(0) as usize;
    if unused.len() <= limit {
        return Vec::new();
    }
    // `revisions` is sorted oldest first.
    unused[..unused.len() - limit].to_vec()
}

/// Deletes the revisions [`to_truncate`] picks; ones already gone are fine.
pub async fn truncate(
    api: &Api<ControllerRevision>,
    revisions: &[ControllerRevision],
    live: &HashSet<String>,
    limit: i32,
) -> Result<(), kube::Error> {
    for rev in to_truncate(revisions, live, limit) {
        match api
            .delete(&rev.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }))
        .unwrap()
    }

    fn rev(name: &str, revision: i64, image: &str) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: RawExtension(data_of(&template(image))),
            revision: Some(revision),
        }
    }

    #[test]
    fn data_is_a_replacing_patch_that_gives_the_template_back() {
        let t = template("nginx:1");
        let data = data_of(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let r = rev("web-1", 1, "nginx:1");
        assert_eq!(template_value(&r), Some(normalized_template(&t)));
        assert_eq!(
            template_of(&r).map(|t| normalized_template(&t)),
            Some(normalized_template(&t))
        );
    }

    #[test]
    fn the_newest_equal_revision_is_found() {
        let revs = vec![rev("a", 1, "v1"), rev("b", 2, "v2"), rev("c", 3, "v1")];
        assert_eq!(find_equal(&revs, &template("v1")).map(number), Some(3));
        assert_eq!(find_equal(&revs, &template("v2")).map(number), Some(2));
        assert!(find_equal(&revs, &template("v3")).is_none());
    }

    #[test]
    fn truncation_keeps_live_revisions_and_the_newest_unused_ones() {
        let revs = vec![
            rev("a", 1, "v1"),
            rev("b", 2, "v2"),
            rev("c", 3, "v3"),
            rev("d", 4, "v4"),
        ];
        let live: HashSet<String> = ["a".to_owned(), "d".to_owned()].into();
        let gone: Vec<String> = to_truncate(&revs, &live, 1)
            .iter()
            .map(|r| r.name_any())
            .collect();
        assert_eq!(gone, ["b"]);
        assert!(to_truncate(&revs, &live, 2).is_empty());
        assert_eq!(to_truncate(&revs, &live, 0).len(), 2);
    }
}
