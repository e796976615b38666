//! rbac.authorization.k8s.io/v1 Role, ClusterRole, RoleBinding and ClusterRoleBinding, stored
//! as Kubernetes' `pkg/registry/rbac` stores them: names are URL path segments
//! (`system:basic-user`), subjects' and roleRefs' apiGroup defaulted (`pkg/apis/rbac/v1`
//! `SetDefaults_*`), rules, roleRefs, subjects and aggregation rules validated as
//! `pkg/apis/rbac/validation` does, with its messages, and a binding's roleRef immutable.
//! Columns: roles have NAME and CREATED AT (the default table convertor), bindings NAME, ROLE
//! and AGE, with USERS, GROUPS and SERVICEACCOUNTS under `-o wide`.
//!
//! Whether the writer may grant what a role or binding holds (escalation) is decided by the
//! authorizer, not here.

use k8s_openapi::api::rbac::v1 as rbac;
use serde_json::{json, Value};
use skiff_k8s::names::{dns_subdomain_errors, path_segment_errors};

use futures::future::BoxFuture;

use super::Strategy;
use crate::apiserver::auth::rbac::escalation;
use crate::apiserver::ApiState;
use crate::apiserver::ApiError;
use crate::apiserver::defaults::default_field;
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{arr, s, Column, AGE, NAME};
use crate::apiserver::validation::{not_supported, str_at, validate_label_selector, NameRule};

/// The RBAC API group, which roleRefs and User/Group subjects name.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// The served resources.
pub fn resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::of::<rbac::ClusterRoleBinding>(Binding { namespaced: false }),
        ResourceDef::of::<rbac::ClusterRole>(RoleKind { namespaced: false }),
        ResourceDef::of::<rbac::RoleBinding>(Binding { namespaced: true }),
        ResourceDef::of::<rbac::Role>(RoleKind { namespaced: true }),
    ]
}

/// Role (`namespaced`) or ClusterRole.
struct RoleKind {
    namespaced: bool,
}

/// RoleBinding (`namespaced`) or ClusterRoleBinding.
struct Binding {
    namespaced: bool,
}

/// The non-empty string array at `key` of `v`.
fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|x| x.as_str().unwrap_or_default())
        .collect()
}

fn non_empty(v: &Value, key: &str) -> bool {
    v.get(key)
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Go's `%#v` of a `[]string`: `[]string{"a", "b"}`.
fn go_strings(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// `ValidatePolicyRule` for the rule at `at`.
pub fn validate_policy_rule(rule: &Value, namespaced: bool, at: &str, errs: &mut Vec<FieldError>) {
    if !non_empty(rule, "verbs") {
        errs.push(
            FieldError::required(format!("{at}.verbs"))
                .with_message("verbs must contain at least one value"),
        );
    }
    if non_empty(rule, "nonResourceURLs") {
        let urls = go_strings(&strings(rule, "nonResourceURLs"));
        let field = format!("{at}.nonResourceURLs");
        if namespaced {
            errs.push(FieldError::invalid_rendered(
                &field,
                &urls,
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if ["apiGroups", "resources", "resourceNames"]
            .iter()
            .any(|k| non_empty(rule, k))
        {
            errs.push(FieldError::invalid_rendered(
                &field,
                &urls,
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return;
    }
    if !non_empty(rule, "apiGroups") {
        errs.push(
            FieldError::required(format!("{at}.apiGroups"))
                .with_message("resource rules must supply at least one api group"),
        );
    }
    if !non_empty(rule, "resources") {
        errs.push(
            FieldError::required(format!("{at}.resources"))
                .with_message("resource rules must supply at least one resource"),
        );
    }
    if non_empty(rule, "resourceNames") && strings(rule, "resources").len() > 1 {
        errs.push(
            FieldError::required(format!("{at}.resourceNames"))
                .with_message("resource names cannot apply to multiple resources"),
        );
    }
}

impl Strategy for RoleKind {
    /// A role or binding works from the next request on: the write waits (at most a second)
    /// until the authorizer's index has applied it.
    fn after_write<'a>(&'a self, state: &'a ApiState, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(wait_until_indexed(state, key))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn before_create<'a>(
        &'a self,
        state: &'a ApiState,
        def: &'a ResourceDef,
        _key: &'a str,
        object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { escalation::check_role(state, &def.plural, None, object) })
    }

    fn before_update(
        &self,
        state: &ApiState,
        _key: &str,
        old: &Value,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        let resource = if self.namespaced { "roles" } else { "clusterroles" };
        escalation::check_role(state, resource, Some(old), new)
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        let rules = object.get("rules").and_then(Value::as_array);
        for (i, rule) in rules.into_iter().flatten().enumerate() {
            validate_policy_rule(rule, self.namespaced, &format!("rules[{i}]"), errs);
        }
        let Some(aggregation) = object.get("aggregationRule").filter(|a| !a.is_null()) else {
            return;
        };
        let field = "aggregationRule.clusterRoleSelectors";
        let selectors = aggregation
            .get("clusterRoleSelectors")
            .and_then(Value::as_array);
        if selectors.is_none_or(Vec::is_empty) {
            errs.push(FieldError::required(field).with_message(
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            ));
        }
        for (i, selector) in selectors.into_iter().flatten().enumerate() {
            validate_label_selector(selector, &format!("{field}[{i}]"), errs);
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Created At", "date", |o, _| {
                json!(s(o, "/metadata/creationTimestamp"))
            }),
        ]
    }
}

/// `SetDefaults_Subject`: User and Group subjects are in the RBAC group, ServiceAccounts in
/// the core group (`""`, which JSON omits).
fn default_subject(subject: &mut Value) {
    let Some(map) = subject.as_object_mut() else {
        return;
    };
    if map
        .get("apiGroup")
        .and_then(Value::as_str)
        .is_some_and(|g| !g.is_empty())
    {
        return;
    }
    match map.get("kind").and_then(Value::as_str) {
        Some("User" | "Group") => {
            map.insert("apiGroup".into(), json!(GROUP));
        }
        _ => {
            map.remove("apiGroup");
        }
    }
}

/// `validateRoleBindingSubject` for the subject at `at`.
fn validate_subject(subject: &Value, namespaced: bool, at: &str, errs: &mut Vec<FieldError>) {
    let name = str_at(subject, "/name").unwrap_or("");
    let api_group = str_at(subject, "/apiGroup").unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(format!("{at}.name")));
    }
    match str_at(subject, "/kind").unwrap_or("") {
        "ServiceAccount" => {
            if !name.is_empty() {
                for p in dns_subdomain_errors(name) {
                    errs.push(FieldError::invalid(format!("{at}.name"), name, p.to_string()));
                }
            }
            if !api_group.is_empty() {
                errs.push(not_supported(format!("{at}.apiGroup"), api_group, &[""]));
            }
            if !namespaced && str_at(subject, "/namespace").unwrap_or("").is_empty() {
                errs.push(FieldError::required(format!("{at}.namespace")));
            }
        }
        kind @ ("User" | "Group") => {
            if name.is_empty() {
                let what = if kind == "User" { "user" } else { "group" };
                errs.push(FieldError::invalid(
                    format!("{at}.name"),
                    name,
                    format!("{what} name cannot be empty"),
                ));
            }
            if api_group != GROUP {
                errs.push(not_supported(format!("{at}.apiGroup"), api_group, &[GROUP]));
            }
        }
        other => errs.push(not_supported(
            format!("{at}.kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// Go's `%#v` of the internal `rbac.RoleRef`, as "cannot change roleRef" shows it.
fn go_role_ref(object: &Value) -> String {
    let part = |k: &str| str_at(object, &format!("/roleRef/{k}")).unwrap_or("");
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        part("apiGroup"),
        part("kind"),
        part("name")
    )
}

/// ROLE, `Kind/name`.
fn role_cell(o: &Value) -> Value {
    json!(format!(
        "{}/{}",
        s(o, "/roleRef/kind"),
        s(o, "/roleRef/name")
    ))
}

/// The subjects of `kind` as `-o wide` lists them (`SubjectsStrings`): names, and
/// `namespace/name` for ServiceAccounts.
fn subjects_cell(o: &Value, kind: &str) -> Value {
    let names: Vec<String> = arr(o, "/subjects")
        .iter()
        .filter(|sub| str_at(sub, "/kind") == Some(kind))
        .map(|sub| {
            let name = s(sub, "/name");
            if kind == "ServiceAccount" {
                format!("{}/{name}", s(sub, "/namespace"))
            } else {
                name.to_owned()
            }
        })
        .collect();
    json!(names.join(", "))
}

impl Strategy for Binding {
    /// A role or binding works from the next request on: the write waits (at most a second)
    /// until the authorizer's index has applied it.
    fn after_write<'a>(&'a self, state: &'a ApiState, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(wait_until_indexed(state, key))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn before_create<'a>(
        &'a self,
        state: &'a ApiState,
        def: &'a ResourceDef,
        _key: &'a str,
        object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { escalation::check_binding(state, &def.plural, None, object) })
    }

    fn before_update(
        &self,
        state: &ApiState,
        _key: &str,
        old: &Value,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        let resource = if self.namespaced {
            "rolebindings"
        } else {
            "clusterrolebindings"
        };
        escalation::check_binding(state, resource, Some(old), new)
    }

    fn default(&self, object: &mut Value) {
        if let Some(role_ref) = object.get_mut("roleRef").and_then(Value::as_object_mut) {
            if role_ref.get("apiGroup").and_then(Value::as_str) == Some("") {
                role_ref.remove("apiGroup");
            }
            default_field(role_ref, "apiGroup", json!(GROUP));
        }
        let subjects = object.get_mut("subjects").and_then(Value::as_array_mut);
        for subject in subjects.into_iter().flatten() {
            default_subject(subject);
        }
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        let api_group = str_at(object, "/roleRef/apiGroup").unwrap_or("");
        if api_group != GROUP {
            errs.push(not_supported("roleRef.apiGroup", api_group, &[GROUP]));
        }
        let kinds: &[&str] = if self.namespaced {
            &["Role", "ClusterRole"]
        } else {
            &["ClusterRole"]
        };
        let kind = str_at(object, "/roleRef/kind").unwrap_or("");
        if !kinds.contains(&kind) {
            errs.push(not_supported("roleRef.kind", kind, kinds));
        }
        let name = str_at(object, "/roleRef/name").unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required("roleRef.name"));
        }
        for p in path_segment_errors(name) {
            errs.push(FieldError::invalid("roleRef.name", name, p.to_string()));
        }
        let subjects = object.get("subjects").and_then(Value::as_array);
        for (i, subject) in subjects.into_iter().flatten().enumerate() {
            validate_subject(subject, self.namespaced, &format!("subjects[{i}]"), errs);
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if old.get("roleRef") != new.get("roleRef") {
            errs.push(FieldError::invalid_rendered(
                "roleRef",
                &go_role_ref(new),
                "cannot change roleRef",
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Role", "string", |o, _| role_cell(o)),
            AGE,
            Column::wide("Users", "string", |o, _| subjects_cell(o, "User")),
            Column::wide("Groups", "string", |o, _| subjects_cell(o, "Group")),
            Column::wide("ServiceAccounts", "string", |o, _| {
                subjects_cell(o, "ServiceAccount")
            }),
        ]
    }
}

/// Waits until the RBAC index has applied the object stored at `key`, if there is one.
async fn wait_until_indexed(state: &ApiState, key: &str) {
    let Ok(Some(stored)) = state.store.get(key).await else {
        return;
    };
    let revision = crate::store::object_revision(&stored);
    let index = state.authorizer.index();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        index.wait_for(revision),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::GROUP;
    use crate::apiserver::kinds::testing::{defaulted, validate, validate_update};

    fn causes(kind: &str, object: Value) -> Vec<(String, String)> {
        validate(GROUP, kind, &defaulted(GROUP, kind, object))
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    fn pair(field: &str, message: &str) -> (String, String) {
        (field.to_owned(), message.to_owned())
    }

    #[test]
    fn rules_follow_kubernetes_validation() {
        let role = |rules: Value| json!({"metadata": {"name": "system:r", "namespace": "d"}, "rules": rules});
        assert!(causes(
            "Role",
            role(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]))
        )
        .is_empty());
        assert_eq!(
            causes("Role", role(json!([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]))),
            [pair(
                "rules[0].nonResourceURLs",
                r#"Invalid value: []string{"/healthz"}: namespaced rules cannot apply to non-resource URLs"#
            )]
        );
        assert_eq!(
            causes(
                "ClusterRole",
                json!({"metadata": {"name": "c"}, "rules": [
                    {"nonResourceURLs": ["/a", "/b"], "resources": ["pods"], "verbs": ["get"]},
                    {"resources": ["pods"]},
                ]})
            ),
            [
                pair(
                    "rules[0].nonResourceURLs",
                    r#"Invalid value: []string{"/a", "/b"}: rules cannot apply to both regular resources and non-resource URLs"#
                ),
                pair("rules[1].verbs", "Required value: verbs must contain at least one value"),
                pair(
                    "rules[1].apiGroups",
                    "Required value: resource rules must supply at least one api group"
                ),
            ]
        );
    }

    #[test]
    fn aggregation_rules_need_valid_selectors() {
        let cr = |agg: Value| json!({"metadata": {"name": "c"}, "aggregationRule": agg});
        assert!(causes(
            "ClusterRole",
            cr(json!({"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}))
        )
        .is_empty());
        assert_eq!(
            causes("ClusterRole", cr(json!({}))),
            [pair(
                "aggregationRule.clusterRoleSelectors",
                "Required value: at least one clusterRoleSelector required if aggregationRule is non-nil"
            )]
        );
        let bad = causes(
            "ClusterRole",
            cr(json!({"clusterRoleSelectors": [{"matchExpressions": [{"key": "a", "operator": "Bad"}]}]})),
        );
        assert_eq!(bad[0].0, "aggregationRule.clusterRoleSelectors[0].matchExpressions[0].operator");
    }

    #[test]
    fn bindings_default_and_validate_subjects_and_role_refs() {
        let b = defaulted(
            GROUP,
            "RoleBinding",
            json!({"metadata": {"name": "b", "namespace": "d"},
                "roleRef": {"kind": "Role", "name": "r"},
                "subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s", "apiGroup": ""}]}),
        );
        assert_eq!(b["roleRef"]["apiGroup"], GROUP);
        assert_eq!(b["subjects"][0]["apiGroup"], GROUP);
        assert!(b["subjects"][1].get("apiGroup").is_none());
        assert!(validate(GROUP, "RoleBinding", &b).is_empty());

        let got = causes(
            "ClusterRoleBinding",
            json!({"metadata": {"name": "b"},
                "roleRef": {"kind": "Role", "name": "", "apiGroup": "x"},
                "subjects": [{"kind": "ServiceAccount", "name": "s"}, {"kind": "Robot", "name": "r"},
                             {"kind": "Group", "name": "g", "apiGroup": "y"}]}),
        );
        assert_eq!(
            got,
            [
                pair(
                    "roleRef.apiGroup",
                    r#"Unsupported value: "x": supported values: "rbac.authorization.k8s.io""#
                ),
                pair("roleRef.kind", r#"Unsupported value: "Role": supported values: "ClusterRole""#),
                pair("roleRef.name", "Required value"),
                pair("subjects[0].namespace", "Required value"),
                pair(
                    "subjects[1].kind",
                    r#"Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group""#
                ),
                pair(
                    "subjects[2].apiGroup",
                    r#"Unsupported value: "y": supported values: "rbac.authorization.k8s.io""#
                ),
            ]
        );
    }

    #[test]
    fn role_ref_is_immutable() {
        let b = |name: &str| {
            defaulted(
                GROUP,
                "ClusterRoleBinding",
                json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": name}}),
            )
        };
        assert!(validate_update(GROUP, "ClusterRoleBinding", &b("view"), &b("view")).is_empty());
        let errs = validate_update(GROUP, "ClusterRoleBinding", &b("view"), &b("edit"));
        assert_eq!(
            errs[0].message,
            r#"Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"edit"}: cannot change roleRef"#
        );
    }
}

