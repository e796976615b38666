//! ClusterRole aggregation (Kubernetes' `pkg/controller/clusterroleaggregation`), in process on
//! [`ApiState`] like `controllers::namespace`: the `rules` of every ClusterRole with an
//! `aggregationRule` become the rules of the ClusterRoles its `clusterRoleSelectors` match
//! (itself excluded), selector by selector, the matches in name order, each rule once. A
//! ClusterRole is written only when its rules differ. Any change under the clusterroles
//! prefix of the store triggers a new pass over all of them, as any ClusterRole event
//! requeues every aggregated one in Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde_json::Value;
use skiff_k8s::labels::LabelSelector;

use crate::apiserver::objects::{ListOptions, Subresource, WriteOptions};
use crate::apiserver::{ApiError, ApiState, ResourceDef};

/// How long to wait before watching again after the store's watch failed.
const RETRY: Duration = Duration::from_secs(1);

/// Passes [`aggregate`] makes at most: an aggregated role that others aggregate (`edit` in
/// `admin`) settles one pass after the roles it aggregates.
const MAX_PASSES: usize = 8;

fn cluster_roles(state: &ApiState) -> Arc<ResourceDef> {
    state
        .registry
        .find("rbac.authorization.k8s.io", "v1", "clusterroles")
        .expect("clusterroles are served")
}

/// Runs until shutdown: aggregates now and after every change to a ClusterRole.
pub async fn run(state: Arc<ApiState>) {
    let prefix = cluster_roles(&state).prefix();
    loop {
        // Subscribe before aggregating, so a change during the pass is not missed.
        let watch = state.store.watch(&prefix, state.store.revision()).await;
        if let Err(e) = aggregate(&state).await {
            tracing::warn!(error = %e, "clusterrole aggregation failed");
        }
        let Ok(mut events) = watch else {
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY) => continue,
            }
        };
        loop {
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(_)) => {
                        // One pass for a burst of changes.
                        while let Some(Some(Ok(_))) = events.next().now_or_never() {}
                        if let Err(e) = aggregate(&state).await {
                            tracing::warn!(error = %e, "clusterrole aggregation failed");
                        }
                    }
                    // The watch ended or fell behind: watch again from now.
                    _ => break,
                },
            }
        }
    }
}

/// Brings every aggregated ClusterRole up to date, pass after pass until one writes nothing.
pub async fn aggregate(state: &ApiState) -> Result<(), ApiError> {
    for _ in 0..MAX_PASSES {
        if pass(state).await? == 0 {
            return Ok(());
        }
    }
    Ok(())
}

/// One pass over all ClusterRoles; answers how many were rewritten.
async fn pass(state: &ApiState) -> Result<usize, ApiError> {
    let def = cluster_roles(state);
    // Listed in key order, which is name order.
    let roles = state
        .list(&def, None, &ListOptions::default())
        .await?
        .values()?;
    let mut written = 0;
    for role in roles
        .iter()
        .filter(|r| r.get("aggregationRule").is_some_and(|a| !a.is_null()))
    {
        let name = role
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(rules) = aggregated_rules(role, &roles) else {
            tracing::warn!(clusterrole = %name, "clusterrole has an invalid aggregation selector");
            continue;
        };
        let current = role.get("rules").and_then(Value::as_array);
        if same_rules(current.map_or(&[][..], Vec::as_slice), &rules) {
            continue;
        }
        let mut updated = role.clone();
        updated["rules"] = Value::Array(rules);
        match state
            .update(
                &def,
                None,
                name,
                updated,
                Subresource::Main,
                &WriteOptions::default(),
            )
            .await
        {
            Ok(_) => written += 1,
            // Changed or deleted meanwhile: the watch brings another pass.
            Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// The rules `role` aggregates from `all` (sorted by name), or `None` when a selector is
/// invalid.
fn aggregated_rules(role: &Value, all: &[Value]) -> Option<Vec<Value>> {
    let name = role.pointer("/metadata/name");
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array);
    let mut rules: Vec<Value> = Vec::new();
    for selector in selectors.into_iter().flatten() {
        let selector = LabelSelector::from_object(selector).ok()?;
        for other in all
            .iter()
            .filter(|o| o.pointer("/metadata/name") != name && selector.matches(o))
        {
            for rule in other
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !rules.iter().any(|r| same_rule(r, rule)) {
                    rules.push(rule.clone());
                }
            }
        }
    }
    Some(rules)
}

/// A rule without its empty fields: Kubernetes compares rules semantically, where an empty
/// list equals a missing one.
fn canonical(rule: &Value) -> Value {
    let mut rule = rule.clone();
    if let Some(map) = rule.as_object_mut() {
        map.retain(|_, v| !(v.is_null() || v.as_array().is_some_and(Vec::is_empty)));
    }
    rule
}

fn same_rule(a: &Value, b: &Value) -> bool {
    canonical(a) == canonical(b)
}

fn same_rules(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_rule(x, y))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::aggregated_rules;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn rules_are_the_deduplicated_union_of_the_matching_roles_in_name_order() {
        let get = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]});
        let list = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]});
        let mut parent = role("parent", json!({"x": "1"}), json!([]));
        parent["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {"x": "1"}}]});
        let all = vec![
            role("a", json!({"x": "1"}), json!([list.clone(), get.clone()])),
            role(
                "b",
                json!({"x": "1"}),
                json!([get.clone(), {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": []}]),
            ),
            role(
                "c",
                json!({"x": "2"}),
                json!([{"nonResourceURLs": ["/x"], "verbs": ["get"]}]),
            ),
            parent.clone(),
        ];
        assert_eq!(aggregated_rules(&parent, &all), Some(vec![list, get]));
        parent["aggregationRule"]["clusterRoleSelectors"] =
            json!([{"matchExpressions": [{"key": "x", "operator": "Bad"}]}]);
        assert_eq!(aggregated_rules(&parent, &all), None);
    }
}
