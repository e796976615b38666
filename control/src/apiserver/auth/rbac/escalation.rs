//! Privilege escalation prevention for RBAC writes (Kubernetes' policy-based storage for roles
//! and bindings): a user may write a Role or ClusterRole only with rules they hold themselves,
//! and bind a role only if they hold its rules, unless they are allowed the `escalate` verb on
//! that role (for roles) or the `bind` verb on the referenced role (for bindings). Writes made
//! by skiff itself (the bootstrap policy, aggregation) carry no user and are not checked.

use std::sync::{Arc, LazyLock};

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;

use super::rules::{covers, escalation_message};
use crate::apiserver::auth::{current_user, RequestInfo, UserInfo};
use crate::apiserver::{ApiError, ApiState};

const GROUP: &str = "rbac.authorization.k8s.io";

/// Everything: what an aggregationRule may only be set with (it can pull in any rule).
static FULL_AUTHORITY: LazyLock<Vec<PolicyRule>> = LazyLock::new(|| {
    let all = || Some(vec!["*".to_owned()]);
    vec![
        PolicyRule {
            verbs: vec!["*".into()],
            api_groups: all(),
            resources: all(),
            ..PolicyRule::default()
        },
        PolicyRule {
            verbs: vec!["*".into()],
            non_resource_urls: all(),
            ..PolicyRule::default()
        },
    ]
});

fn request(verb: &str, resource: &str, namespace: &str, name: &str) -> RequestInfo {
    RequestInfo {
        is_resource_request: true,
        verb: verb.into(),
        api_prefix: "apis".into(),
        api_group: GROUP.into(),
        api_version: "v1".into(),
        namespace: namespace.into(),
        resource: resource.into(),
        name: name.into(),
        ..RequestInfo::default()
    }
}

fn denied(resource: &str, name: &str, message: String) -> ApiError {
    ApiError::Denied {
        group: GROUP.into(),
        resource: resource.into(),
        name: name.into(),
        message,
    }
}

fn rules_of(object: &Value) -> Vec<PolicyRule> {
    object
        .get("rules")
        .cloned()
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_default()
}

/// Whether `new` differs from `old` only in what the garbage collector writes (owners and
/// finalizers) or the server sets; such updates are not checked, as in Kubernetes.
fn only_gc_fields_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "managedFields",
                "generation",
            ] {
                m.remove(f);
            }
        }
        v
    };
    strip(old) == strip(new)
}

/// The writer, namespace and name of a write to check: `None` for skiff's own writes and for
/// updates that change only what the garbage collector writes.
fn to_check<'a>(old: Option<&Value>, new: &'a Value) -> Option<(Arc<UserInfo>, &'a str, &'a str)> {
    let user = current_user()?;
    if old.is_some_and(|old| only_gc_fields_changed(old, new)) {
        return None;
    }
    let field = |pointer: &str| {
        new.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    Some((user, field("/metadata/namespace"), field("/metadata/name")))
}

/// Checks a write of a Role or ClusterRole (`resource` is `roles` or `clusterroles`).
pub fn check_role(
    state: &ApiState,
    resource: &str,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    let Some((user, namespace, name)) = to_check(old, new) else {
        return Ok(());
    };
    let escalate = request("escalate", resource, namespace, name);
    if state.authorizer.decide(&user, &escalate).allowed {
        return Ok(());
    }
    let snapshot = state.authorizer.index().snapshot();
    let aggregates = |v: &Value| v.get("aggregationRule").is_some_and(|a| !a.is_null());
    if aggregates(new) || old.is_some_and(aggregates) {
        let (held, _) = snapshot.rules_for(&user, "");
        if !covers(&held, &FULL_AUTHORITY).0 {
            return Err(denied(
                resource,
                name,
                "must have cluster-admin privileges to use the aggregationRule".into(),
            ));
        }
        return Ok(());
    }
    let (held, errors) = snapshot.rules_for(&user, namespace);
    let (covered, missing) = covers(&held, &rules_of(new));
    if covered {
        return Ok(());
    }
    Err(denied(
        resource,
        name,
        escalation_message(&user, &missing, &errors),
    ))
}

/// Checks a write of a RoleBinding or ClusterRoleBinding (`resource` is `rolebindings` or
/// `clusterrolebindings`).
pub fn check_binding(
    state: &ApiState,
    resource: &str,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    let Some((user, namespace, name)) = to_check(old, new) else {
        return Ok(());
    };
    let Some(role_ref) = new
        .get("roleRef")
        .cloned()
        .and_then(|r| serde_json::from_value::<RoleRef>(r).ok())
    else {
        // Validation reports a missing or malformed roleRef.
        return Ok(());
    };
    let role_resource = if role_ref.kind == "ClusterRole" {
        "clusterroles"
    } else {
        "roles"
    };
    let bind = request("bind", role_resource, namespace, &role_ref.name);
    if state.authorizer.decide(&user, &bind).allowed {
        return Ok(());
    }
    let snapshot = state.authorizer.index().snapshot();
    let granted = snapshot
        .role_ref_rules(&role_ref, namespace)
        .map_err(|e| denied(resource, name, e))?;
    let (held, errors) = snapshot.rules_for(&user, namespace);
    let (covered, missing) = covers(&held, granted);
    if covered {
        return Ok(());
    }
    Err(denied(
        resource,
        name,
        escalation_message(&user, &missing, &errors),
    ))
}
