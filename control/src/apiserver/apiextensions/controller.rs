//! Keeps the served custom resources in step with the stored CustomResourceDefinitions
//! (apiextensions-apiserver's naming, establishing and finalizing controllers, in the API
//! server process as there): every API server follows the definitions in the store and
//! registers what they declare, so a new definition is served within one store event.
//!
//! On every change it re-reads all definitions, oldest first, and
//! - accepts a definition's names unless an older one in its group holds any of them
//!   (NamesAccepted; the loser is not served), and serves its served versions (Established);
//! - records `acceptedNames`, the conditions and `storedVersions` in its status, writing only
//!   what changed (so its own writes settle);
//! - for a definition being deleted (Terminating), deletes its objects, waits until they are
//!   gone (their own finalizers first), then removes the `customresourcecleanup` finalizer,
//!   which completes the deletion.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::custom::{resource_defs, CLEANUP_FINALIZER};
use crate::apiserver::error::ApiError;
use crate::apiserver::objects::{DeleteOptions, ListOptions, Subresource, WriteOptions};
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::ApiState;
use crate::store::{ListRequest, StoreError};

/// How long to wait before following the store again after the watch broke.
const RETRY: Duration = Duration::from_secs(1);

/// How often a cleanup looks again at objects that wait on their own finalizers.
const CLEANUP_RECHECK: Duration = Duration::from_secs(2);

fn definitions_def(state: &ApiState) -> Option<Arc<ResourceDef>> {
    state
        .registry
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
}

/// Serves what the stored definitions declare now, once (the server calls this before it
/// listens, so a restart serves every custom resource from its first request), then follows
/// the store in the background until shutdown.
pub async fn start(state: &Arc<ApiState>) -> Result<(), ApiError> {
    let cleanups = Arc::new(Follower::default());
    let revision = sync(state, &cleanups).await?;
    tokio::spawn(follow(state.clone(), cleanups, revision));
    Ok(())
}

/// The resources built from a definition (or why it cannot be served), with the fingerprint
/// they were built from.
type Built = (u64, Result<Vec<ResourceDef>, String>);

/// What the follower keeps between syncs.
#[derive(Default)]
struct Follower {
    /// Definitions whose objects are being deleted.
    cleanups: Mutex<HashSet<String>>,
    /// The resources built from each definition, by fingerprint: a sync after a status write
    /// (the follower's own, mostly) compiles no schema again.
    built: std::sync::Mutex<HashMap<String, Built>>,
}

async fn follow(state: Arc<ApiState>, cleanups: Arc<Follower>, mut revision: u64) {
    let Some(def) = definitions_def(&state) else {
        return;
    };
    let prefix = def.prefix();
    loop {
        let watched = state.store.watch(&prefix, revision).await;
        let mut events = match watched {
            Ok(events) => events,
            Err(StoreError::Closed) => return,
            Err(error) => {
                tracing::warn!(%error, "custom resources: watching the definitions failed");
                if !pause(&state).await {
                    return;
                }
                match sync(&state, &cleanups).await {
                    Ok(r) => revision = r,
                    Err(error) => tracing::warn!(%error, "custom resources: sync failed"),
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = state.shutdown.cancelled() => return,
            };
            match next {
                Some(Ok(event)) => {
                    revision = revision.max(event.revision);
                    // Whatever else is ready goes into the same sync.
                    while let Some(Some(Ok(more))) = futures::FutureExt::now_or_never(events.next())
                    {
                        revision = revision.max(more.revision);
                    }
                    if let Err(error) = sync(&state, &cleanups).await {
                        tracing::warn!(%error, "custom resources: sync failed");
                    }
                }
                Some(Err(error)) => {
                    tracing::info!(%error, "custom resources: the watch broke; listing again");
                    break;
                }
                None => return,
            }
        }
        if !pause(&state).await {
            return;
        }
        match sync(&state, &cleanups).await {
            Ok(r) => revision = r,
            Err(error) => tracing::warn!(%error, "custom resources: sync failed"),
        }
    }
}

/// Waits [`RETRY`]; false at shutdown.
async fn pause(state: &ApiState) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => true,
        _ = state.shutdown.cancelled() => false,
    }
}

/// The names a definition claims in its group.
fn claimed(crd: &CustomResourceDefinition) -> Vec<(String, &'static str)> {
    let n = &crd.spec.names;
    let mut names = vec![(n.plural.clone(), "plural"), (n.kind.clone(), "kind")];
    if let Some(s) = &n.singular {
        names.push((s.clone(), "singular"));
    }
    if let Some(l) = &n.list_kind {
        names.push((l.clone(), "listKind"));
    }
    for s in n.short_names.iter().flatten() {
        names.push((s.clone(), "shortNames"));
    }
    names
}

/// Reads every definition, serves the accepted ones, writes their status, starts the cleanup
/// of those being deleted. Returns the revision read at.
async fn sync(state: &Arc<ApiState>, cleanups: &Arc<Follower>) -> Result<u64, ApiError> {
    let Some(def) = definitions_def(state) else {
        return Ok(0);
    };
    let page = state
        .store
        .list(&def.prefix(), ListRequest::default())
        .await
        .map_err(|e| ApiError::from_store(e, &def.group_resource(), ""))?;
    let mut crds: Vec<(Value, CustomResourceDefinition)> = page
        .items
        .iter()
        .filter_map(|raw| {
            let value: Value = serde_json::from_slice(raw).ok()?;
            let crd = serde_json::from_value(value.clone()).ok()?;
            Some((value, crd))
        })
        .collect();
    // Definitions whose names were accepted before keep them; then the oldest first.
    crds.sort_by(|a, b| {
        let t = |c: &CustomResourceDefinition| {
            let accepted = c.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "NamesAccepted" && c.status == "True")
            });
            (
                !accepted,
                c.metadata.creation_timestamp.as_ref().map(|t| t.0),
                c.metadata.name.clone(),
            )
        };
        t(&a.1).cmp(&t(&b.1))
    });
    // Names taken per group, by the definition that holds them.
    let mut taken: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let mut serve = Vec::new();
    let mut statuses = Vec::new();
    for (value, crd) in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let group_names = taken.entry(crd.spec.group.clone()).or_default();
        let conflict = claimed(crd).into_iter().find_map(|(n, field)| {
            group_names
                .get(&n)
                .filter(|holder| **holder != name)
                .map(|_| (n, field))
        });
        let terminating = crd.metadata.deletion_timestamp.is_some();
        let (accepted, built) = match conflict {
            Some((n, field)) => (Err(format!("{field} {n:?} is already in use")), None),
            None => {
                for (n, _) in claimed(crd) {
                    group_names.insert(n, name.clone());
                }
                match built(cleanups, &name, crd, terminating) {
                    Ok(defs) => (Ok(()), Some(defs)),
                    Err(e) => (Err(format!("cannot serve: {e}")), None),
                }
            }
        };
        if let Some(defs) = built {
            serve.extend(defs);
        }
        statuses.push((
            value.clone(),
            desired_status(value, crd, &accepted, terminating),
        ));
        if terminating {
            let mut running = cleanups.cleanups.lock().await;
            if running.insert(name.clone()) {
                tokio::spawn(cleanup(state.clone(), name.clone(), cleanups.clone()));
            }
        }
    }
    {
        let present: HashSet<&str> = crds
            .iter()
            .filter_map(|(_, c)| c.metadata.name.as_deref())
            .collect();
        let mut built = cleanups.built.lock().unwrap_or_else(|p| p.into_inner());
        built.retain(|name, _| present.contains(name.as_str()));
    }
    if state.registry.sync_custom(serve) {
        tracing::info!("custom resources: serving a new set of definitions");
    }
    for (value, status) in statuses {
        if value.get("status") != Some(&status) {
            write_status(state, &def, &value, status).await;
        }
    }
    Ok(page.revision)
}

/// The resources of a definition, compiled once per fingerprint.
fn built(
    follower: &Follower,
    name: &str,
    crd: &CustomResourceDefinition,
    terminating: bool,
) -> Result<Vec<ResourceDef>, String> {
    let fingerprint = super::custom::fingerprint(crd, terminating);
    let mut built = follower.built.lock().unwrap_or_else(|p| p.into_inner());
    match built.get(name) {
        Some((f, defs)) if *f == fingerprint => defs.clone(),
        _ => {
            let defs = resource_defs(crd, terminating);
            built.insert(name.to_owned(), (fingerprint, defs.clone()));
            defs
        }
    }
}

/// A condition, keeping its transition time when its status did not change.
fn condition(old: &Value, kind: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let previous = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == kind));
    let since = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(skiff_k8s::time::now()),
    };
    json!({"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
}

fn desired_status(
    old: &Value,
    crd: &CustomResourceDefinition,
    accepted: &Result<(), String>,
    terminating: bool,
) -> Value {
    let mut conditions = Vec::new();
    let accepted_names = match accepted {
        Ok(()) => {
            conditions.push(condition(
                old,
                "NamesAccepted",
                true,
                "NoConflicts",
                "no conflicts found",
            ));
            conditions.push(condition(
                old,
                "Established",
                true,
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ));
            serde_json::to_value(&crd.spec.names).unwrap_or_default()
        }
        Err(message) => {
            let reason = if message.starts_with("cannot serve") {
                "InvalidDefinition"
            } else {
                "NameConflict"
            };
            conditions.push(condition(old, "NamesAccepted", false, reason, message));
            conditions.push(condition(
                old,
                "Established",
                false,
                "NotAccepted",
                "not all names are accepted",
            ));
            old.pointer("/status/acceptedNames")
                .cloned()
                .unwrap_or_else(|| json!({"plural": "", "kind": ""}))
        }
    };
    if terminating {
        conditions.push(condition(
            old,
            "Terminating",
            true,
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        ));
    }
    let mut stored: Vec<Value> = old
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(storage) = crd.spec.versions.iter().find(|v| v.storage) {
        if !stored.iter().any(|s| s == storage.name.as_str()) {
            stored.push(json!(storage.name));
        }
    }
    json!({"acceptedNames": accepted_names, "conditions": conditions, "storedVersions": stored})
}

async fn write_status(state: &ApiState, def: &ResourceDef, old: &Value, status: Value) {
    let name = old
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut object = old.clone();
    object["status"] = status;
    let written = state
        .update(
            def,
            None,
            name,
            object,
            Subresource::Status,
            &WriteOptions::default(),
        )
        .await;
    match written {
        Ok(_) => {}
        // Changed meanwhile: its event brings another sync.
        Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => {}
        Err(error) => {
            tracing::warn!(%error, definition = name, "custom resources: writing the status failed")
        }
    }
}

/// Deletes every object of a definition being deleted, then lets the definition go.
async fn cleanup(state: Arc<ApiState>, name: String, cleanups: Arc<Follower>) {
    let result = cleanup_once(&state, &name).await;
    cleanups.cleanups.lock().await.remove(&name);
    if let Err(error) = result {
        tracing::warn!(%error, definition = name, "custom resources: cleanup failed; retrying on the next change");
    }
}

async fn cleanup_once(state: &Arc<ApiState>, name: &str) -> Result<(), ApiError> {
    let Some(crds) = definitions_def(state) else {
        return Ok(());
    };
    loop {
        let Some(current) = state.store.get(&crds.key(None, name)).await.ok().flatten() else {
            return Ok(());
        };
        let Ok(crd) = serde_json::from_value::<CustomResourceDefinition>(current.clone()) else {
            return Ok(());
        };
        if crd.metadata.deletion_timestamp.is_none() {
            return Ok(());
        }
        // Any served version addresses every object (they share their keys).
        let def = state
            .registry
            .all()
            .into_iter()
            .find(|d| d.origin.as_ref().is_some_and(|o| o.definition == name));
        let remaining = match &def {
            Some(def) => delete_all(state, def).await?,
            None => 0,
        };
        if remaining == 0 {
            let mut object = current.clone();
            if let Some(list) = object
                .pointer_mut("/metadata/finalizers")
                .and_then(Value::as_array_mut)
            {
                list.retain(|f| f != CLEANUP_FINALIZER);
            }
            return match state
                .update(
                    &crds,
                    None,
                    name,
                    object,
                    Subresource::Main,
                    &WriteOptions::default(),
                )
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => {
                    tracing::info!(
                        definition = name,
                        "custom resources: objects deleted, definition released"
                    );
                    Ok(())
                }
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => Err(e),
            };
        }
        // Some wait on their own finalizers: look again in a while.
        tokio::select! {
            _ = tokio::time::sleep(CLEANUP_RECHECK) => {}
            _ = state.shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Asks every object of `def` to be deleted; returns how many there still are.
async fn delete_all(state: &ApiState, def: &ResourceDef) -> Result<usize, ApiError> {
    let page = state.list(def, None, &ListOptions::default()).await?;
    let count = page.items.len();
    for raw in page.items {
        let Ok(object) = serde_json::from_slice::<Value>(&raw) else {
            continue;
        };
        if object.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match state.delete(def, ns, name, &DeleteOptions::default()).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if count == 0 {
        return Ok(0);
    }
    Ok(state
        .list(def, None, &ListOptions::default())
        .await?
        .items
        .len())
}
