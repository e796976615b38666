//! Deployment controller: a ReplicaSet per pod template (`<deployment>-<pod-template-hash>`),
//! rolled with RollingUpdate (maxSurge/maxUnavailable) or Recreate, revisions in the
//! `deployment.kubernetes.io/revision` annotation (so `kubectl rollout history/undo` work),
//! old ReplicaSets beyond `revisionHistoryLimit` removed, and status with the Available and
//! Progressing conditions `kubectl rollout status` reads.
//!
//! The pod-template-hash has Kubernetes' form (FNV-32a, then `SafeEncodeString`) but is taken
//! over the template's normalised JSON, not Go's struct dump, so its value differs from what
//! kube-controller-manager would compute for the same template.

use crate::client::guard::guard;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::machinery::ownership;
use crate::client::events::{reference, EventType, Recorder};
use crate::client::expectations::{Expectations, Observed};
use crate::client::Context;

/// The label (and RS name suffix) that tells a Deployment's ReplicaSets apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// A ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had (it was rolled back to).
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of the Deployment not copied to its ReplicaSets (Kubernetes' skip list).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
const RESYNC: Duration = Duration::from_secs(30);

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The selector cannot be evaluated.
    #[error("invalid selector: {0}")]
    Selector(String),
}

/// The alphabet of Kubernetes' `rand.SafeEncodeString` (no vowels, no confusable characters).
const SAFE_ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-32a.
fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `rand.SafeEncodeString`: each byte mapped onto the safe alphabet.
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| SAFE_ALPHANUMS[usize::from(b) % SAFE_ALPHANUMS.len()] as char)
        .collect()
}

/// A template as JSON without nulls, empty objects and empty arrays, and without the hash
/// label: two templates that mean the same compare (and hash) equal whichever client wrote them.
pub fn normalized_template(template: &PodTemplateSpec) -> Value {
    fn strip(v: Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Object(m) => {
                let m: serde_json::Map<String, Value> = m
                    .into_iter()
                    .filter_map(|(k, v)| strip(v).map(|v| (k, v)))
                    .collect();
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Value::Array(a) => {
                let a: Vec<Value> = a
                    .into_iter()
                    .map(|v| strip(v).unwrap_or(Value::Null))
                    .collect();
                (!a.is_empty()).then_some(Value::Array(a))
            }
            other => Some(other),
        }
    }
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    strip(serde_json::to_value(&t).unwrap_or(Value::Null)).unwrap_or(Value::Null)
}

/// The pod-template-hash of a template (and the collision count, as Kubernetes mixes it in).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut data = serde_json::to_vec(&normalized_template(template)).unwrap_or_default();
    if let Some(c) = collision_count {
        data.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&data).to_string())
}

/// Resolves an int-or-percent against `total`, rounding up (maxSurge) or down (maxUnavailable)
/// as Kubernetes' `GetScaledValueFromIntOrPercent` does.
pub fn scaled(value: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let v = value
        .cloned()
        .unwrap_or_else(|| IntOrString::String(default.into()));
    match v {
        IntOrString::Int(n) => n,
        IntOrString::String(s) => {
            let Some(pct) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return s.parse().unwrap_or(0);
            };
            let x = pct * i64::from(total);
            let r = if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            };
            r as i32
        }
    }
}

/// maxSurge and maxUnavailable as numbers for `replicas` (never both zero: Kubernetes then
/// allows one unavailable so a rollout can proceed).
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = Some(&d.spec);
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let ru = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), replicas, true, "25%");
    let unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        "25%",
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    }
}

/// The new ReplicaSet's size in a rolling update step (`NewRSNewReplicas`).
pub fn new_rs_replicas(desired: i32, surge: i32, total_current: i32, new_current: i32) -> i32 {
    if new_current >= desired {
        return desired;
    }
    let max_total = desired + surge;
    if total_current >= max_total {
        return new_current;
    }
    let up = (max_total - total_current).min(desired - new_current);
    new_current + up
}

/// How many old replicas a rolling update step may remove (`reconcileOldReplicaSets`):
/// `(unhealthy_budget, healthy_budget)` given all replicas, the new RS's unavailable ones,
/// and the available count across all ReplicaSets.
pub fn old_scale_down_budget(
    desired: i32,
    max_unavailable: i32,
    all_replicas: i32,
    new_unavailable: i32,
) -> i32 {
    let min_available = desired - max_unavailable;
    all_replicas - min_available - new_unavailable
}

struct State {
    client: kube::Client,
    sets: Store<ReplicaSet>,
    observed: Observed,
    expectations: Expectations,
    recorder: Recorder,
}

/// Runs the Deployment controller until shutdown.
pub async fn run(ctx: Context) {
    let sets = ctx.informers.get::<ReplicaSet>();
    let Some(deployments) = ctx.informers.listed::<Deployment>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        sets: sets.store(),
        observed: sets.observed(),
        expectations: Expectations::default(),
        recorder: ctx.recorder("deployment-controller"),
    });
    Controller::for_shared_stream(deployments.objects(), deployments.store())
        .owns_shared_stream(sets.objects())
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("deployment", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(d: Arc<Deployment>, err: &DeploymentError, _: Arc<State>) -> Action {
    tracing::warn!(deployment = %d.name_any(), error = %err, "deployment reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

async fn reconcile(d: Arc<Deployment>, state: Arc<State>) -> Result<Action, DeploymentError> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let key = format!("{ns}/{name}");
    if let Err(wait) = state.expectations.satisfied(&key, &state.observed) {
        return Ok(Action::requeue(wait));
    }
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone();
    let selector = Selector::try_from(spec.selector.clone())
        .map_err(|e| DeploymentError::Selector(e.to_string()))?;
    let desired = spec.replicas.unwrap_or(1);
    let rs_api: Api<ReplicaSet> = Api::namespaced(state.client.clone(), &ns);
    let mut sets: Vec<ReplicaSet> = state
        .sets
        .state()
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
        .filter(|r| ownership::is_controlled_by(&r.metadata, &uid))
        .map(|r| (**r).clone())
        .collect();
    sets.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.name_any(),
        )
    });

    let wanted = normalized_template(&spec.template);
    let new_pos = sets.iter().position(|r| {
        r.spec
            .template
            .as_ref()
            .is_some_and(|t| normalized_template(t) == wanted)
    });
    let mut new_rs = new_pos.map(|i| sets.remove(i));
    let mut olds = sets;
    let max_old_revision = olds.iter().map(revision_of).max().unwrap_or(0);
    let (surge, max_unavailable) = surge_and_unavailable(&d);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let paused = spec.paused.unwrap_or(false);
    let mut collision_count = d.status.as_ref().and_then(|s| s.collision_count);
    let obj_ref = reference(d.as_ref());
    let annotations: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    if !paused {
        // Bring the new ReplicaSet's revision (and the Deployment's) up to date; a rolled-back
        // template makes an old ReplicaSet new again with the next revision.
        if let Some(rs) = &new_rs {
            let rev = revision_of(rs);
            let outdated = rev <= max_old_revision || rev == 0;
            // The Deployment's annotations (kubernetes.io/change-cause, ...) follow it onto its
            // current ReplicaSet, where `kubectl rollout history` reads them.
            let stale = annotations
                .iter()
                .any(|(k, v)| rs.annotations().get(k) != Some(v));
            if outdated || stale {
                let mut ann = annotations.clone();
                if outdated {
                    ann.insert(REVISION.into(), (max_old_revision + 1).to_string());
                }
                if outdated && rev > 0 {
                    let mut hist: Vec<String> = rs
                        .annotations()
                        .get(REVISION_HISTORY)
                        .map(|h| h.split(',').map(str::to_owned).collect())
                        .unwrap_or_default();
                    hist.push(rev.to_string());
                    ann.insert(REVISION_HISTORY.into(), hist.join(","));
                }
                let patched = rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"annotations": ann}})),
                    )
                    .await?;
                state
                    .expectations
                    .wrote(&key, patched.metadata.resource_version.as_deref());
                new_rs = Some(patched);
            }
        } else {
            // Create the ReplicaSet of the current template.
            let initial = if recreate {
                0
            } else {
                let total: i32 = olds.iter().map(spec_replicas).sum();
                new_rs_replicas(desired, surge, total, 0)
            };
            loop {
                let hash = template_hash(&spec.template, collision_count);
                let mut template = spec.template.clone();
                template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(HASH_LABEL.into(), hash.clone());
                let mut sel = spec.selector.clone();
                sel.match_labels
                    .get_or_insert_with(Default::default)
                    .insert(HASH_LABEL.into(), hash.clone());
                let mut labels = template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                labels.insert(HASH_LABEL.into(), hash.clone());
                let mut ann = annotations.clone();
                ann.insert(REVISION.into(), (max_old_revision + 1).to_string());
                ann.insert(DESIRED_REPLICAS.into(), desired.to_string());
                ann.insert(MAX_REPLICAS.into(), (desired + surge).to_string());
                let rs = ReplicaSet {
                    metadata: ObjectMeta {
                        name: Some(format!("{name}-{hash}")),
                        namespace: Some(ns.clone()),
                        labels: Some(labels),
                        annotations: Some(ann),
                        owner_references: Some(vec![ownership::controller_ref(d.as_ref())]),
                        ..ObjectMeta::default()
                    },
                    spec: k8s_openapi::api::apps::v1::ReplicaSetSpec {
                        replicas: Some(initial),
                        min_ready_seconds: spec.min_ready_seconds,
                        selector: sel,
                        template: Some(template),
                    },
                    status: None,
                };
                match rs_api.create(&PostParams::default(), &rs).await {
                    Ok(created) => {
                        state
                            .expectations
                            .wrote(&key, created.metadata.resource_version.as_deref());
                        if initial > 0 {
                            state
                                .recorder
                                .record(
                                    &obj_ref,
                                    EventType::Normal,
                                    "ScalingReplicaSet",
                                    &format!(
                                        "Scaled up replica set {} from 0 to {initial}",
                                        created.name_any()
                                    ),
                                )
                                .await;
                        }
                        new_rs = Some(created);
                        break;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        // A ReplicaSet of that name exists: ours with the same template (the
                        // cache lags; look again shortly) or a hash collision (bump the count).
                        let existing = rs_api.get(&format!("{name}-{hash}")).await?;
                        let ours = ownership::is_controlled_by(&existing.metadata, &uid);
                        let same = existing
                            .spec
                            .template
                            .as_ref()
                            .is_some_and(|t| normalized_template(t) == wanted);
                        if ours && same {
                            return Ok(Action::requeue(Duration::from_millis(200)));
                        }
                        collision_count = Some(collision_count.unwrap_or(0) + 1);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }

        let new = new_rs.clone().expect("set above");
        if recreate {
            let old_running = olds.iter().any(|r| spec_replicas(r) > 0);
            let old_pods = olds
                .iter()
                .any(|r| r.status.as_ref().is_some_and(|s| s.replicas > 0));
            for rs in olds.iter_mut().filter(|r| spec_replicas(r) > 0) {
                scale(&state, &rs_api, &key, &obj_ref, rs, 0, desired, surge).await?;
            }
            if !old_running && !old_pods && spec_replicas(&new) != desired {
                let mut new = new.clone();
                scale(
                    &state, &rs_api, &key, &obj_ref, &mut new, desired, desired, surge,
                )
                .await?;
            }
        } else {
            // Scale the new ReplicaSet up (within maxSurge) or down to the desired count.
            let total: i32 = olds.iter().map(spec_replicas).sum::<i32>() + spec_replicas(&new);
            let target = new_rs_replicas(desired, surge, total, spec_replicas(&new));
            let mut new_rs_now = new.clone();
            if target != spec_replicas(&new) {
                scale(
                    &state,
                    &rs_api,
                    &key,
                    &obj_ref,
                    &mut new_rs_now,
                    target,
                    desired,
                    surge,
                )
                .await?;
            }
            // Scale old ReplicaSets down as far as availability allows: unhealthy replicas
            // first, then healthy ones, oldest ReplicaSet first.
            let all: i32 = olds.iter().map(spec_replicas).sum::<i32>() + spec_replicas(&new_rs_now);
            let new_unavailable = (spec_replicas(&new_rs_now) - available(&new_rs_now)).max(0);
            let mut budget = old_scale_down_budget(desired, max_unavailable, all, new_unavailable);
            if olds.iter().map(spec_replicas).sum::<i32>() > 0 && budget > 0 {
                for rs in olds.iter_mut() {
                    if budget <= 0 {
                        break;
                    }
                    let unhealthy = (spec_replicas(rs) - available(rs)).max(0);
                    let cut = unhealthy.min(budget);
                    if cut > 0 {
                        let to = spec_replicas(rs) - cut;
                        scale(&state, &rs_api, &key, &obj_ref, rs, to, desired, surge).await?;
                        budget -= cut;
                    }
                }
                let min_available = desired - max_unavailable;
                let available_all: i32 =
                    olds.iter().map(available).sum::<i32>() + available(&new_rs_now);
                let mut healthy_budget = (available_all - min_available).min(budget.max(0));
                for rs in olds.iter_mut() {
                    if healthy_budget <= 0 {
                        break;
                    }
                    let cut = spec_replicas(rs).min(healthy_budget);
                    if cut > 0 {
                        let to = spec_replicas(rs) - cut;
                        scale(&state, &rs_api, &key, &obj_ref, rs, to, desired, surge).await?;
                        healthy_budget -= cut;
                    }
                }
            }
            new_rs = Some(new_rs_now);
        }

        // Old ReplicaSets beyond revisionHistoryLimit go, oldest first, once empty.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let mut empty: Vec<&ReplicaSet> = olds
            .iter()
            .filter(|r| spec_replicas(r) == 0 && r.status.as_ref().is_none_or(|s| s.replicas == 0))
            .collect();
        empty.sort_by_key(|r| revision_of(r));
        if empty.len() > limit {
            for rs in &empty[..empty.len() - limit] {
                match rs_api
                    .delete(&rs.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    update_status(
        &d,
        new_rs.as_ref(),
        &olds,
        collision_count,
        &state,
        &selector,
    )
    .await?;
    Ok(Action::requeue(RESYNC))
}

/// Sets a ReplicaSet's size and the deployment annotations, with a ScalingReplicaSet event.
#[allow(
    clippy::too_many_arguments,
    reason = "the pieces of one reconcile pass"
)]
async fn scale(
    state: &State,
    api: &Api<ReplicaSet>,
    key: &str,
    obj_ref: &k8s_openapi::api::core::v1::ObjectReference,
    rs: &mut ReplicaSet,
    to: i32,
    desired: i32,
    surge: i32,
) -> Result<(), DeploymentError> {
    let from = spec_replicas(rs);
    let patch = json!({
        "metadata": {"annotations": {
            DESIRED_REPLICAS: desired.to_string(),
            MAX_REPLICAS: (desired + surge).to_string(),
        }},
        "spec": {"replicas": to},
    });
    let patched = api
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    state
        .expectations
        .wrote(key, patched.metadata.resource_version.as_deref());
    let direction = if to > from { "up" } else { "down" };
    state
        .recorder
        .record(
            obj_ref,
            EventType::Normal,
            "ScalingReplicaSet",
            &format!(
                "Scaled {direction} replica set {} from {from} to {to}",
                rs.name_any()
            ),
        )
        .await;
    *rs = patched;
    Ok(())
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Keeps the transition time when the status did not change, and the update time when
/// nothing about the condition changed.
fn merge_condition(
    old: Option<&DeploymentCondition>,
    mut new: DeploymentCondition,
) -> DeploymentCondition {
    if let Some(old) = old {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
            if old.reason == new.reason && old.message == new.message {
                new.last_update_time = old.last_update_time.clone();
            }
        }
    }
    new
}

async fn update_status(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    olds: &[ReplicaSet],
    collision_count: Option<i32>,
    state: &State,
    _selector: &Selector,
) -> Result<(), DeploymentError> {
    let spec = d.spec.clone();
    let desired = spec.replicas.unwrap_or(1);
    let all: Vec<&ReplicaSet> = olds.iter().chain(new_rs).collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|r| f(r)).sum::<i32>();
    let replicas = sum(&|r| r.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(&|r| {
        r.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let avail = sum(&available);
    let updated = new_rs
        .and_then(|r| r.status.as_ref())
        .map_or(0, |s| s.replicas);
    let (_, max_unavailable) = surge_and_unavailable(d);
    let now = Time(Timestamp::now());
    let old_conditions = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let find = |t: &str| {
        old_conditions
            .iter()
            .find(|c| c.type_.as_deref() == Some(t))
    };
    let available_cond = if avail >= desired - max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            &now,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            &now,
        )
    };
    let new_name = new_rs.map(|r| r.name_any()).unwrap_or_default();
    let complete = updated == desired && replicas == desired && avail == desired;
    let old_progressing = find("Progressing");
    let progressing = if spec.paused.unwrap_or(false) {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            &now,
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            &now,
        )
    } else {
        let deadline = spec.progress_deadline_seconds.unwrap_or(600);
        let stuck = old_progressing.is_some_and(|c| {
            c.reason.as_deref() == Some("ReplicaSetUpdated")
                && c.last_update_time.as_ref().is_some_and(|t| {
                    t.0 + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(deadline)) < now.0
                })
        }) || old_progressing
            .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
        if stuck {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                &now,
            )
        } else {
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                &now,
            )
        }
    };
    let counts_changed = d.status.as_ref().is_none_or(|s| {
        s.replicas != Some(replicas)
            || s.available_replicas != Some(avail)
            || s.updated_replicas != Some(updated)
    });
    let mut progressing = merge_condition(old_progressing, progressing);
    // Progress made: the deadline starts over (Kubernetes refreshes lastUpdateTime so).
    if counts_changed && progressing.reason.as_deref() == Some("ReplicaSetUpdated") {
        progressing.last_update_time = Some(now.clone());
    }
    let conditions = vec![
        merge_condition(find("Available"), available_cond),
        progressing,
    ];
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "unavailableReplicas": (desired - avail).max(0),
        "collisionCount": collision_count,
        "conditions": conditions,
    });
    let current = serde_json::to_value(&d.status).unwrap_or(Value::Null);
    let same = status.as_object().is_some_and(|w| {
        w.iter().all(|(k, v)| {
            let have = current.get(k).cloned().unwrap_or(Value::Null);
            have == *v || (have.is_null() && (v == &json!(0) || v.is_null()))
        })
    });
    let mut patch = json!({"status": status});
    if let Some(rev) = new_rs.map(revision_of).filter(|r| *r > 0) {
        if d.annotations().get(REVISION) != Some(&rev.to_string()) {
            // The Deployment carries its new ReplicaSet's revision (kubectl rollout reads it).
            let api: Api<Deployment> =
                Api::namespaced(state.client.clone(), &d.namespace().unwrap_or_default());
            match api
                .patch(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {REVISION: rev.to_string()}}}),
                    ),
                )
                .await
            {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if same {
        return Ok(());
    }
    if patch["status"]["collisionCount"].is_null() {
        if let Some(o) = patch["status"].as_object_mut() {
            o.remove("collisionCount");
        }
    }
    let api: Api<Deployment> =
        Api::namespaced(state.client.clone(), &d.namespace().unwrap_or_default());
    match api
        .patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Which ReplicaSets a selector-matching label set belongs to (for callers listing pods).
pub fn selects(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    selector.matches(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};

    #[test]
    fn safe_encode_matches_kubernetes() {
        // rand.SafeEncodeString in Go maps byte % 27 onto the alphabet: '1' = 49 % 27 = 22 -> '5',
        // '9' = 57 % 27 = 3 -> 'f'; real hashes use only 4-9 and b, c, d, f ("7d5bd7c9f6").
        assert_eq!(safe_encode("1239"), "567f");
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn hash_ignores_its_own_label_and_empty_fields_and_mixes_collisions() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "kubia"}},
            "spec": {"containers": [{"name": "c", "image": "kubia:v1"}]}
        }))
        .unwrap();
        let with_noise: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "kubia", "pod-template-hash": "x"}},
            "spec": {"containers": [{"name": "c", "image": "kubia:v1", "resources": {}}]}
        }))
        .unwrap();
        assert_eq!(template_hash(&t, None), template_hash(&with_noise, None));
        assert_ne!(template_hash(&t, None), template_hash(&t, Some(1)));
        let h = template_hash(&t, None);
        assert!(h.bytes().all(|b| SAFE_ALPHANUMS.contains(&b)) && (6..=10).contains(&h.len()));
    }

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        }
    }

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        let s = |x: &str| IntOrString::String(x.into());
        assert_eq!(
            surge_and_unavailable(&deployment(10, s("25%"), s("25%"))),
            (3, 2)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(3, s("25%"), s("25%"))),
            (1, 0)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(1, s("0%"), s("0%"))),
            (0, 1)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(5, IntOrString::Int(2), IntOrString::Int(1))),
            (2, 1)
        );
        assert_eq!(scaled(Some(&s("50%")), 5, true, "25%"), 3);
        assert_eq!(scaled(Some(&s("50%")), 5, false, "25%"), 2);
    }

    #[test]
    fn rolling_steps_respect_surge_and_availability() {
        // 3 replicas, surge 1: new RS goes 0 -> 1 while the old one still has 3.
        assert_eq!(new_rs_replicas(3, 1, 3, 0), 1);
        // At the surge limit nothing more is added.
        assert_eq!(new_rs_replicas(3, 1, 4, 1), 1);
        // Scaling down a finished deployment is immediate.
        assert_eq!(new_rs_replicas(1, 1, 3, 3), 1);
        // maxUnavailable 0, 4 in all, new one not yet available: no old pod may go.
        assert_eq!(old_scale_down_budget(3, 0, 4, 1), 0);
        // Once it is available one old pod may go.
        assert_eq!(old_scale_down_budget(3, 0, 4, 0), 1);
    }
}
