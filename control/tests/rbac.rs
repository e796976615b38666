//! rbac.authorization.k8s.io/v1 through the HTTP API: the four kinds stored, validated and
//! printed as Kubernetes does; the bootstrap policy and ClusterRole aggregation.

mod common;

use common::{api, Api};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_control::apiserver::auth::rbac::bootstrap;
use skiff_test_support::eventually;

const G: &str = "/apis/rbac.authorization.k8s.io/v1";

fn roles(ns: &str) -> String {
    format!("{G}/namespaces/{ns}/roles")
}

fn role_bindings(ns: &str) -> String {
    format!("{G}/namespaces/{ns}/rolebindings")
}

fn cluster_roles() -> String {
    format!("{G}/clusterroles")
}

fn cluster_role_bindings() -> String {
    format!("{G}/clusterrolebindings")
}

fn object(kind: &str, name: &str, rest: Value) -> Value {
    let mut o = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
        "metadata": {"name": name}});
    for (k, v) in rest.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

/// The `(field, message)` causes of a 422.
async fn rejected(a: &Api, uri: &str, body: Value) -> Vec<(String, String)> {
    let (code, status) = a.call(Method::POST, uri, Some(body)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(status["reason"], "Invalid");
    status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_owned(),
                c["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn cause(field: &str, message: &str) -> (String, String) {
    (field.to_owned(), message.to_owned())
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_four_kinds_are_created_read_and_listed() {
    let a = api().await;
    let rule = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]);
    let role = a
        .post(
            &roles("default"),
            object("Role", "pod-reader", json!({"rules": rule})),
        )
        .await;
    assert_eq!(role["metadata"]["namespace"], "default");
    a.post(
        &cluster_roles(),
        object("ClusterRole", "system:pod-reader", json!({"rules": rule})),
    )
    .await;
    let binding = a
        .post(
            &role_bindings("default"),
            object(
                "RoleBinding",
                "read-pods",
                json!({"roleRef": {"kind": "Role", "name": "pod-reader"},
                    "subjects": [{"kind": "User", "name": "alice"},
                                 {"kind": "ServiceAccount", "name": "bot", "namespace": "default"}]}),
            ),
        )
        .await;
    assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    assert_eq!(
        binding["subjects"][0]["apiGroup"],
        "rbac.authorization.k8s.io"
    );
    assert!(
        binding["subjects"][1].get("apiGroup").is_none(),
        "{binding}"
    );
    a.post(
        &cluster_role_bindings(),
        object(
            "ClusterRoleBinding",
            "system:read-pods",
            json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:pod-reader"},
                "subjects": [{"kind": "Group", "name": "readers"}]}),
        ),
    )
    .await;

    let got = a.get(&format!("{}/pod-reader", roles("default"))).await;
    assert_eq!(got["rules"], rule);
    let got = a
        .get(&format!("{}/system:pod-reader", cluster_roles()))
        .await;
    assert_eq!(got["kind"], "ClusterRole");
    assert_eq!(names(&a.get(&roles("default")).await), ["pod-reader"]);
    assert_eq!(
        names(&a.get(&role_bindings("default")).await),
        ["read-pods"]
    );
    assert!(names(&a.get(&cluster_roles()).await).contains(&"system:pod-reader"));
    assert!(names(&a.get(&cluster_role_bindings()).await).contains(&"system:read-pods"));
    // Across namespaces, beside the bootstrap policy's binding in kube-public.
    assert_eq!(
        names(&a.get(&format!("{G}/rolebindings")).await),
        ["read-pods", "kubeadm:bootstrap-signer-clusterinfo"]
    );

    let table = a.table(&role_bindings("default")).await;
    let columns: Vec<(&str, u64)> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", 0),
            ("Role", 0),
            ("Age", 0),
            ("Users", 1),
            ("Groups", 1),
            ("ServiceAccounts", 1)
        ]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[1], "Role/pod-reader");
    assert_eq!(cells[3], "alice");
    assert_eq!(cells[4], "");
    assert_eq!(cells[5], "default/bot");
    let table = a.table(&roles("default")).await;
    assert_eq!(table["columnDefinitions"][1]["name"], "Created At");
    assert_eq!(
        table["rows"][0]["cells"][1],
        role["metadata"]["creationTimestamp"]
    );
}

#[tokio::test]
async fn names_are_path_segments() {
    let a = api().await;
    let rule = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]);
    a.post(
        &cluster_roles(),
        object("ClusterRole", "system:x", json!({"rules": rule})),
    )
    .await;
    // A name with `/` cannot be addressed by URL, so it is refused.
    assert_eq!(
        rejected(
            &a,
            &cluster_roles(),
            object("ClusterRole", "a/b", json!({}))
        )
        .await,
        [cause(
            "metadata.name",
            r#"Invalid value: "a/b": may not contain '/'"#
        )]
    );
}

#[tokio::test]
async fn invalid_rules_are_rejected_with_kubernetes_causes() {
    let a = api().await;
    let causes = rejected(
        &a,
        &roles("default"),
        object(
            "Role",
            "r",
            json!({"rules": [
                {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods"]},
                {"verbs": ["get"]},
            ]}),
        ),
    )
    .await;
    assert_eq!(
        causes,
        [
            cause(
                "rules[0].nonResourceURLs",
                r#"Invalid value: []string{"/healthz"}: namespaced rules cannot apply to non-resource URLs"#
            ),
            cause(
                "rules[1].verbs",
                "Required value: verbs must contain at least one value"
            ),
            cause(
                "rules[2].apiGroups",
                "Required value: resource rules must supply at least one api group"
            ),
            cause(
                "rules[2].resources",
                "Required value: resource rules must supply at least one resource"
            ),
        ]
    );
    let causes = rejected(
        &a,
        &cluster_roles(),
        object(
            "ClusterRole",
            "c",
            json!({"rules": [{"nonResourceURLs": ["/x"], "resources": ["pods"], "verbs": ["get"]}],
                "aggregationRule": {"clusterRoleSelectors": [
                    {"matchExpressions": [{"key": "k", "operator": "In"}]}]}}),
        ),
    )
    .await;
    assert_eq!(
        causes,
        [
            cause(
                "rules[0].nonResourceURLs",
                r#"Invalid value: []string{"/x"}: rules cannot apply to both regular resources and non-resource URLs"#
            ),
            cause(
                "aggregationRule.clusterRoleSelectors[0].matchExpressions[0].values",
                "Required value: must be specified when `operator` is 'In' or 'NotIn'"
            ),
        ]
    );
}

#[tokio::test]
async fn invalid_bindings_are_rejected_with_kubernetes_causes() {
    let a = api().await;
    let causes = rejected(
        &a,
        &cluster_role_bindings(),
        object(
            "ClusterRoleBinding",
            "b",
            json!({"roleRef": {"apiGroup": "example.com", "kind": "Role"},
                "subjects": [{"kind": "ServiceAccount", "name": "bot"},
                             {"kind": "Robot", "name": "r2"},
                             {"kind": "User", "name": "u", "apiGroup": "example.com"}]}),
        ),
    )
    .await;
    assert_eq!(
        causes,
        [
            cause(
                "roleRef.apiGroup",
                r#"Unsupported value: "example.com": supported values: "rbac.authorization.k8s.io""#
            ),
            cause(
                "roleRef.kind",
                r#"Unsupported value: "Role": supported values: "ClusterRole""#
            ),
            cause("roleRef.name", "Required value"),
            cause("subjects[0].namespace", "Required value"),
            cause(
                "subjects[1].kind",
                r#"Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group""#
            ),
            cause(
                "subjects[2].apiGroup",
                r#"Unsupported value: "example.com": supported values: "rbac.authorization.k8s.io""#
            ),
        ]
    );
    let causes = rejected(
        &a,
        &role_bindings("default"),
        object(
            "RoleBinding",
            "b",
            json!({"roleRef": {"kind": "Secret", "name": "x"},
                "subjects": [{"kind": "ServiceAccount", "name": "Bad_Name", "apiGroup": "rbac.authorization.k8s.io"}]}),
        ),
    )
    .await;
    let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        ["roleRef.kind", "subjects[0].name", "subjects[0].apiGroup"]
    );
    assert_eq!(
        causes[0].1,
        r#"Unsupported value: "Secret": supported values: "Role", "ClusterRole""#
    );
}

#[tokio::test]
async fn a_bindings_role_ref_cannot_change() {
    let a = api().await;
    let uri = format!("{}/b", role_bindings("default"));
    a.post(
        &role_bindings("default"),
        object(
            "RoleBinding",
            "b",
            json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "alice"}]}),
        ),
    )
    .await;
    let (code, _) = a
        .merge_patch(&uri, json!({"subjects": [{"kind": "User", "name": "bob"}]}))
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, status) = a
        .merge_patch(&uri, json!({"roleRef": {"name": "edit"}}))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let causes = &status["details"]["causes"];
    assert_eq!(causes[0]["field"], "roleRef");
    assert_eq!(
        causes[0]["message"],
        r#"Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"edit"}: cannot change roleRef"#
    );
    assert_eq!(a.get(&uri).await["roleRef"]["name"], "view");
}

/// The rules of a ClusterRole.
async fn rules_of(a: &Api, name: &str) -> Vec<Value> {
    a.get(&format!("{}/{name}", cluster_roles())).await["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn the_bootstrap_policy_exists_from_the_start() {
    let a = api().await;
    let roles = a.get(&cluster_roles()).await;
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:aggregate-to-admin",
        "system:aggregate-to-edit",
        "system:aggregate-to-view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:auth-delegator",
        "system:node-proxier",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:skiff:controller-manager",
    ] {
        let role = roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            role["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        assert_eq!(
            role["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
            "true"
        );
    }
    let admin = a
        .get(&format!("{}/cluster-admin", cluster_role_bindings()))
        .await;
    assert_eq!(
        admin["subjects"],
        json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:masters"}])
    );
    let public = a
        .get(&format!(
            "{}/system:public-info-viewer",
            cluster_role_bindings()
        ))
        .await;
    let groups: Vec<&str> = public["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["system:authenticated", "system:unauthenticated"]);
    let table = a.table(&cluster_role_bindings()).await;
    let row = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cells"][0] == "system:kube-scheduler")
        .unwrap();
    assert_eq!(row["cells"][1], "ClusterRole/system:kube-scheduler");
    assert_eq!(row["cells"][3], "system:kube-scheduler");

    // A second start changes nothing; a removed subject and rule come back.
    let before = a.get(&cluster_roles()).await["metadata"]["resourceVersion"].clone();
    bootstrap::ensure(&a.state).await.unwrap();
    assert_eq!(
        a.get(&cluster_roles()).await["metadata"]["resourceVersion"],
        before
    );
    let uri = format!("{}/system:basic-user", cluster_role_bindings());
    let (code, _) = a
        .merge_patch(
            &uri,
            json!({"subjects": [{"kind": "User", "name": "alice"}]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let uri_role = format!("{}/system:discovery", cluster_roles());
    let (code, _) = a.merge_patch(&uri_role, json!({"rules": []})).await;
    assert_eq!(code, StatusCode::OK);
    bootstrap::ensure(&a.state).await.unwrap();
    let names: Vec<String> = a.get(&uri).await["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alice", "system:authenticated"]);
    assert_eq!(rules_of(&a, "system:discovery").await.len(), 1);
    // Unless the object says not to.
    let (code, _) = a
        .merge_patch(
            &uri_role,
            json!({"metadata": {"annotations": {"rbac.authorization.kubernetes.io/autoupdate": "false"}},
                "rules": []}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    bootstrap::ensure(&a.state).await.unwrap();
    assert!(rules_of(&a, "system:discovery").await.is_empty());
}

#[tokio::test]
async fn aggregated_roles_follow_the_roles_they_select() {
    let a = api().await;
    let to_view = rules_of(&a, "system:aggregate-to-view").await;
    assert!(!to_view.is_empty());
    // `view` aggregates both roles labelled for it, in name order: the built-in viewer's and
    // metrics-server's reader of metrics.k8s.io.
    let metrics = rules_of(&a, "system:aggregated-metrics-reader").await;
    assert_eq!(
        metrics,
        vec![
            json!({"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"],
            "verbs": ["get", "list", "watch"]})
        ]
    );
    let mut view = to_view.clone();
    view.extend(metrics);
    assert_eq!(rules_of(&a, "view").await, view);
    let edit = rules_of(&a, "edit").await;
    let admin = rules_of(&a, "admin").await;
    for rule in rules_of(&a, "system:aggregate-to-edit")
        .await
        .iter()
        .chain(&to_view)
    {
        assert!(edit.contains(rule), "edit lacks {rule}");
        assert!(admin.contains(rule), "admin lacks {rule}");
    }

    let crd_rule = json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]});
    a.post(
        &cluster_roles(),
        object(
            "ClusterRole",
            "widget-viewer",
            json!({"metadata": {"name": "widget-viewer",
                    "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                "rules": [crd_rule]}),
        ),
    )
    .await;
    eventually("view to aggregate widget-viewer", || async {
        rules_of(&a, "view").await.contains(&crd_rule).then_some(())
    })
    .await;
    // view is aggregated into edit, and edit into admin.
    eventually("admin to aggregate widget-viewer", || async {
        rules_of(&a, "admin")
            .await
            .contains(&crd_rule)
            .then_some(())
    })
    .await;

    let (code, _) = a
        .call(
            Method::DELETE,
            &format!("{}/widget-viewer", cluster_roles()),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    eventually("view to drop widget-viewer", || async {
        (rules_of(&a, "view").await == view).then_some(())
    })
    .await;
    eventually("admin to drop widget-viewer", || async {
        (!rules_of(&a, "admin").await.contains(&crd_rule)).then_some(())
    })
    .await;
}
