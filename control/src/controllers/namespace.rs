//! Namespace lifecycle: a namespace marked for deletion is emptied (every namespaced object
//! deleted, waiting for graceful pod deletion and finalizers), then removed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::apiserver::objects::{DeleteOptions, ListOptions};
use crate::apiserver::{ApiError, ApiState};
use crate::store::keys;

/// How long to wait for a change before looking at a namespace again.
const RECHECK: Duration = Duration::from_secs(2);

/// Runs until shutdown: finalizes namespaces from the queue and any found terminating at start.
pub async fn run(state: Arc<ApiState>, mut queue: mpsc::UnboundedReceiver<String>) {
    let def = state
        .registry
        .find("", "v1", "namespaces")
        .expect("namespaces are served")
        .clone();
    if let Ok(page) = state.list(&def, None, &ListOptions::default()).await {
        for ns in page
            .values()
            .unwrap_or_default()
            .iter()
            .filter(|n| n.pointer("/metadata/deletionTimestamp").is_some())
        {
            if let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) {
                let _ = state.namespace_queue.send(name.to_owned());
            }
        }
    }
    let mut active = HashSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            Some(name) = done_rx.recv() => { active.remove(&name); }
            Some(name) = queue.recv() => {
                // One worker per namespace: the same key is never reconciled twice at once.
                if active.insert(name.clone()) {
                    let (state, done) = (state.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        if let Err(e) = finalize(&state, &name).await {
                            tracing::warn!(namespace = %name, error = %e, "namespace finalization stopped");
                        }
                        let _ = done.send(name);
                    });
                }
            }
        }
    }
}

/// Deletes what is in `namespace` until nothing is left, then the namespace itself.
async fn finalize(state: &ApiState, namespace: &str) -> Result<(), ApiError> {
    let ns_def = state
        .registry
        .find("", "v1", "namespaces")
        .expect("namespaces are served")
        .clone();
    loop {
        // Subscribe before looking, so a change between the look and the wait is not missed.
        let mut watch = state.store.watch("", state.store.revision()).await.ok();
        let mut remaining = 0usize;
        for def in state
            .registry
            .all()
            .iter()
            .filter(|d| d.namespaced && d.strategy.stored())
        {
            let page = state
                .list(def, Some(namespace), &ListOptions::default())
                .await?;
            remaining += page.items.len();
            for item in page
                .values()?
                .iter()
                .filter(|i| i.pointer("/metadata/deletionTimestamp").is_none())
            {
                let name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match state
                    .delete(def, Some(namespace), name, &DeleteOptions::default())
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(namespace, name, error = %e, "deleting namespace content failed")
                    }
                }
            }
        }
        if remaining == 0 {
            break;
        }
        // Wait for something in the namespace to change (or recheck after a while).
        let wait = async {
            match watch.as_mut() {
                Some(w) => loop {
                    match w.next().await {
                        Some(Ok(e)) if keys::in_namespace(&e.key, namespace) => break,
                        Some(Ok(_)) => continue,
                        _ => break,
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::timeout(RECHECK, wait) => {}
        }
    }
    // Empty: drop the "kubernetes" finalizer and remove the namespace.
    let key = ns_def.key(None, namespace);
    let Some(mut ns) = state
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, "namespaces", namespace))?
    else {
        return Ok(());
    };
    let expected = crate::store::object_revision(&ns);
    ns["spec"]["finalizers"] = json!([]);
    let empty_finalizers = ns
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    let result = if empty_finalizers {
        state.store.delete(&key, Some(expected)).await
    } else {
        state.store.update(&key, Some(expected), ns).await
    };
    match result {
        Ok(_) => {
            tracing::info!(namespace, "namespace deleted");
            Ok(())
        }
        // Changed meanwhile: go round again.
        Err(crate::store::StoreError::Conflict { .. }) => {
            Box::pin(finalize(state, namespace)).await
        }
        Err(e) => Err(ApiError::from_store(e, "namespaces", namespace)),
    }
}
