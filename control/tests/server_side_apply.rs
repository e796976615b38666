//! Server-side apply and managedFields through the in-process router: the kube crate's
//! `Patch::Apply` on a built-in kind and on a custom resource (create by apply, conflicts
//! naming the other manager, force, removal of fields an applier drops, shared ownership,
//! dry run), the managedFields of ordinary writes, and bad or unauthorized applies.

mod common;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api as KubeApi, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use skiff_test_support::wait::eventually;
use tower::ServiceExt;

use common::{api, Api, TOKEN};

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

/// An apply of `body` (YAML or JSON) to `uri` with these query parameters.
async fn apply_raw(api: &Api, uri: &str, query: &str, body: Body) -> (StatusCode, Value) {
    api.call_raw(
        Method::PATCH,
        &format!("{uri}?{query}"),
        "application/apply-patch+yaml",
        Some(TOKEN),
        body,
    )
    .await
}

fn managers(object: &Value) -> Vec<(String, String)> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default().to_owned(),
                e["operation"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn deployment(replicas: i32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image,
                    "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}
            }
        }
    })
}

#[tokio::test]
async fn kube_applies_a_deployment_conflicts_forces_and_removes() {
    let api = api().await;
    let deployments: KubeApi<Deployment> = KubeApi::namespaced(api.client(), "default");
    let alice = PatchParams::apply("alice");

    // Create by apply.
    let created = deployments
        .patch("web", &alice, &Patch::Apply(deployment(2, "nginx:1")))
        .await
        .unwrap();
    let entries = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].manager.as_deref(), Some("alice"));
    assert_eq!(entries[0].operation.as_deref(), Some("Apply"));
    let fields = &entries[0].fields_v1.as_ref().unwrap().0;
    assert_eq!(fields.pointer("/f:spec/f:replicas"), Some(&json!({})));
    assert!(
        fields
            .pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"web\"}/f:image")
            .is_some(),
        "{fields}"
    );
    // Defaults are set but not owned by the applier.
    assert!(fields.pointer("/f:spec/f:strategy").is_none(), "{fields}");

    // The same apply again is a no-op: no new resourceVersion.
    let again = deployments
        .patch("web", &alice, &Patch::Apply(deployment(2, "nginx:1")))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        created.metadata.resource_version
    );

    // Bob changing replicas conflicts with alice, named in message and causes.
    let bob_config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 5}});
    match deployments
        .patch(
            "web",
            &PatchParams::apply("bob"),
            &Patch::Apply(&bob_config),
        )
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409, "{status:?}");
            assert_eq!(
                status.message,
                "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let (code, status) = apply_raw(
        &api,
        "/apis/apps/v1/namespaces/default/deployments/web",
        "fieldManager=bob",
        Body::from(bob_config.to_string()),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "message": "conflict with \"alice\"", "field": ".spec.replicas"}])
    );

    // Forced, bob takes replicas over.
    let forced = deployments
        .patch(
            "web",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(&bob_config),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&forced).unwrap();
    assert_eq!(v["spec"]["replicas"], 5);
    let alice_fields = v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "alice")
        .unwrap()["fieldsV1"]
        .clone();
    assert!(
        alice_fields.pointer("/f:spec/f:replicas").is_none(),
        "{alice_fields}"
    );

    // Alice dropping the labels removes them (only she set them); the shared container image
    // stays when bob applies it too and alice drops it.
    // (Bob keeps applying replicas: what an applier leaves out of its configuration it gives up.)
    let bob_image = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}}});
    deployments
        .patch("web", &PatchParams::apply("bob"), &Patch::Apply(&bob_image))
        .await
        .unwrap();
    let mut alice_again = deployment(2, "nginx:1");
    alice_again["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    alice_again["spec"]
        .as_object_mut()
        .unwrap()
        .remove("replicas");
    alice_again["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("image");
    let after = deployments
        .patch("web", &alice, &Patch::Apply(&alice_again))
        .await
        .unwrap();
    let after = serde_json::to_value(&after).unwrap();
    assert!(after["metadata"].get("labels").is_none(), "{after}");
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1"
    );
    assert_eq!(after["spec"]["replicas"], 5);
}

#[tokio::test]
async fn dry_run_apply_stores_nothing_and_field_manager_is_required() {
    let api = api().await;
    let configmaps: KubeApi<ConfigMap> = KubeApi::namespaced(api.client(), "default");
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dry"}, "data": {"a": "1"}});
    let dry = configmaps
        .patch(
            "dry",
            &PatchParams::apply("me").dry_run(),
            &Patch::Apply(&config),
        )
        .await
        .unwrap();
    assert_eq!(dry.data.unwrap()["a"], "1");
    let (code, _) = api
        .call(Method::GET, &format!("{CONFIGMAPS}/dry"), None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a dry run stores nothing");

    // Without fieldManager (a User-Agent does not stand in): 422 on PatchOptions.
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(format!("{CONFIGMAPS}/dry"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/apply-patch+yaml")
        .header("user-agent", "kubectl/v1.35.0")
        .body(Body::from(config.to_string()))
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let status: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status["details"]["causes"][0]["field"], "fieldManager");
    assert_eq!(
        status["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );

    // YAML bodies are applied as JSON ones.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dry\ndata:\n  a: \"2\"\n";
    let (code, cm) = apply_raw(
        &api,
        &format!("{CONFIGMAPS}/dry"),
        "fieldManager=me",
        Body::from(yaml),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{cm}");
    assert_eq!(cm["data"]["a"], "2");
    assert_eq!(managers(&cm), [("me".to_owned(), "Apply".to_owned())]);

    // force only goes with apply.
    let (code, _) = api
        .call_raw(
            Method::PATCH,
            &format!("{CONFIGMAPS}/dry?force=true"),
            "application/merge-patch+json",
            Some(TOKEN),
            Body::from(r#"{"data":{"b":"1"}}"#),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn ordinary_writes_record_update_entries() {
    let api = api().await;
    let (code, created) = api
        .call_raw(
            Method::POST,
            &format!("{CONFIGMAPS}?fieldManager=creator"),
            "application/json",
            Some(TOKEN),
            Body::from(
                json!({"metadata": {"name": "c", "labels": {"x": "1"}}, "data": {"a": "1"}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let entry = &created["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "creator");
    assert_eq!(entry["operation"], "Update");
    assert_eq!(entry["apiVersion"], "v1");
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert_eq!(
        entry["fieldsV1"],
        json!({"f:data": {".": {}, "f:a": {}}, "f:metadata": {"f:labels": {".": {}, "f:x": {}}}})
    );

    // A merge patch from another client (named by its User-Agent) owns what it changed.
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(format!("{CONFIGMAPS}/c"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/merge-patch+json")
        .header(
            "user-agent",
            "kubectl/v1.35.0 (linux/amd64) kubernetes/abcdef",
        )
        .body(Body::from(r#"{"data":{"a":"2"}}"#))
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let patched: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        managers(&patched),
        [
            ("creator".to_owned(), "Update".to_owned()),
            ("kubectl".to_owned(), "Update".to_owned())
        ]
    );
    assert_eq!(
        patched["metadata"]["managedFields"][1]["fieldsV1"],
        json!({"f:data": {"f:a": {}}})
    );

    // Malformed managedFields in an update are a 422; `[{}]` strips them.
    let mut bad = patched.clone();
    bad["metadata"]["managedFields"] =
        json!([{"manager": "x", "operation": "Sideways", "fieldsType": "FieldsV1"}]);
    let (code, status) = api
        .call(Method::PUT, &format!("{CONFIGMAPS}/c"), Some(bad))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let (code, stripped) = api
        .merge_patch(
            &format!("{CONFIGMAPS}/c"),
            json!({"metadata": {"managedFields": [{}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{stripped}");
    assert!(
        stripped["metadata"].get("managedFields").is_none(),
        "{stripped}"
    );
}

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const GIZMOS: &str = "/apis/example.com/v1/namespaces/default/gizmos";

#[tokio::test]
async fn custom_resources_merge_by_their_schema_list_types() {
    let api = api().await;
    api.post(
        CRDS,
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gizmos.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {"type": "object", "properties": {
                        "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "required": ["name"], "properties": {
                                "name": {"type": "string"}, "port": {"type": "integer"}}}},
                        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                        "args": {"type": "array", "items": {"type": "string"}}
                    }}}
                }}}]
            }
        }),
    )
    .await;
    eventually("gizmos to be served", || async {
        (api.call(Method::GET, GIZMOS, None).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let resource = kube::api::ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Gizmo".into(),
        plural: "gizmos".into(),
    };
    let gizmos: KubeApi<DynamicObject> =
        KubeApi::namespaced_with(api.client(), "default", &resource);
    let gizmo = |spec: Value| -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": {"name": "g"}, "spec": spec})
    };
    gizmos
        .patch(
            "g",
            &PatchParams::apply("one"),
            &Patch::Apply(gizmo(
                json!({"ports": [{"name": "http", "port": 80}], "tags": ["a"], "args": ["x"]}),
            )),
        )
        .await
        .unwrap();
    // A second manager adds a port, a tag and replaces the atomic args (not a conflict for
    // the keyed and set lists, a conflict for args, which "one" owns).
    let two = gizmo(json!({"ports": [{"name": "https", "port": 443}], "tags": ["b"]}));
    let merged = gizmos
        .patch("g", &PatchParams::apply("two"), &Patch::Apply(&two))
        .await
        .unwrap();
    assert_eq!(
        merged.data["spec"],
        json!({"ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}], "tags": ["a", "b"], "args": ["x"]})
    );
    match gizmos
        .patch(
            "g",
            &PatchParams::apply("two"),
            &Patch::Apply(gizmo(json!({"args": ["y"]}))),
        )
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("conflict with \"one\": .spec.args"),
                "{}",
                s.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // "one" dropping its port and tag removes them; "two"'s stay.
    let dropped = gizmos
        .patch(
            "g",
            &PatchParams::apply("one"),
            &Patch::Apply(gizmo(json!({"args": ["x"]}))),
        )
        .await
        .unwrap();
    assert_eq!(
        dropped.data["spec"],
        json!({"ports": [{"name": "https", "port": 443}], "tags": ["b"], "args": ["x"]})
    );
    let fields = &dropped.metadata.managed_fields.unwrap();
    let two_fields = &fields
        .iter()
        .find(|e| e.manager.as_deref() == Some("two"))
        .unwrap();
    assert_eq!(
        two_fields.fields_v1.as_ref().unwrap().0,
        json!({"f:spec": {"f:ports": {"k:{\"name\":\"https\"}": {".": {}, "f:name": {}, "f:port": {}}}, "f:tags": {"v:\"b\"": {}}}})
    );
}

#[tokio::test]
async fn a_user_who_may_only_read_cannot_apply() {
    let api = api().await;
    api.post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        json!({"metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"]}]}),
    )
    .await;
    api.post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        json!({"metadata": {"name": "carol-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "User", "name": "carol"}]}),
    )
    .await;
    api.post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        json!({"metadata": {"name": "dave-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "getter"},
            "subjects": [{"kind": "User", "name": "dave"}]}),
    )
    .await;
    api.post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        json!({"metadata": {"name": "getter"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
    )
    .await;
    let apply_as = |user: &'static str, name: &'static str| {
        let router = api.router.clone();
        async move {
            let req = Request::builder()
                .method(Method::PATCH)
                .uri(format!("{CONFIGMAPS}/{name}?fieldManager={user}"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("impersonate-user", user)
                .header("content-type", "application/apply-patch+yaml")
                .body(Body::from(
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}})
                        .to_string(),
                ))
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let code = resp.status();
            let body: Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap_or_default();
            (code, body)
        }
    };
    // Only get: refused before anything happens.
    let (code, status) = apply_as("dave", "x").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(status["kind"], "Status");
    // Patch but not create: applying to a missing object cannot create it.
    let (code, status) = apply_as("carol", "x").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    let (code, _) = api
        .call(Method::GET, &format!("{CONFIGMAPS}/x"), None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "nothing stored");
    // An existing object carol may apply to.
    api.post(CONFIGMAPS, json!({"metadata": {"name": "x"}}))
        .await;
    let (code, cm) = apply_as("carol", "x").await;
    assert_eq!(code, StatusCode::OK, "{cm}");
}

#[tokio::test]
async fn oversized_deep_and_malformed_apply_bodies_are_statuses() {
    let api = api().await;
    let uri = format!("{CONFIGMAPS}/big");
    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 * 1024 * 1024)
    );
    let (code, status) = apply_raw(&api, &uri, "fieldManager=m", Body::from(huge)).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{status}");
    assert_eq!(status["kind"], "Status");

    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let (code, status) = apply_raw(&api, &uri, "fieldManager=m", Body::from(deep)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert_eq!(status["kind"], "Status");

    for bad in [
        "[1, 2]",
        "kind: ConfigMap\nmetadata: {name: big}\n",
        "{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"other\"}}",
        "{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"big\", \"managedFields\": [{}]}}",
        "{: nope",
    ] {
        let (code, status) = apply_raw(&api, &uri, "fieldManager=m", Body::from(bad)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {status}");
        assert_eq!(status["kind"], "Status");
    }
    // Duplicate keys in a keyed list: 400, nothing stored.
    let mut dup = deployment(1, "a");
    dup["spec"]["template"]["spec"]["containers"] =
        json!([{"name": "a", "image": "a"}, {"name": "a", "image": "b"}]);
    let (code, status) = apply_raw(
        &api,
        "/apis/apps/v1/namespaces/default/deployments/web",
        "fieldManager=m",
        Body::from(dup.to_string()),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    let (code, _) = api
        .call(
            Method::GET,
            "/apis/apps/v1/namespaces/default/deployments/web",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // The typed PostParams path still works alongside.
    let configmaps: KubeApi<ConfigMap> = KubeApi::namespaced(api.client(), "default");
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "plain"}})).unwrap(),
        )
        .await
        .unwrap();
}

/// What managedFields cost in storage: a Pod as `kubectl run` creates it (one Update entry)
/// and after a server-side apply of the same configuration (one Apply entry besides). The
/// figures are in docs/benchmarks.md; the bound keeps the entries from growing unnoticed.
#[tokio::test]
async fn managed_fields_of_a_typical_pod_stay_small() {
    let api = api().await;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"run": "web"}},
        "spec": {"containers": [{
            "name": "web", "image": "nginx:1.27",
            "ports": [{"containerPort": 80, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
        }]}
    });
    let (code, created) = api
        .call_raw(
            Method::POST,
            "/api/v1/namespaces/default/pods?fieldManager=kubectl-run",
            "application/json",
            Some(TOKEN),
            Body::from(pod.to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let key = api
        .state
        .registry
        .find("", "v1", "pods")
        .unwrap()
        .key(Some("default"), "web");
    let stored = |object: &Value| -> (usize, usize) {
        let with = serde_json::to_vec(object).unwrap().len();
        let mut without = object.clone();
        without["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        (with, serde_json::to_vec(&without).unwrap().len())
    };
    let after_create = api.state.store.get(&key).await.unwrap().unwrap();
    let (with, without) = stored(&after_create);
    println!(
        "typical pod stored: {without} bytes without managedFields, {with} with one Update entry"
    );
    assert!(with - without < 1000, "{with} vs {without}");
    let (code, applied) = apply_raw(
        &api,
        "/api/v1/namespaces/default/pods/web",
        "fieldManager=kubectl",
        Body::from(pod.to_string()),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{applied}");
    let after_apply = api.state.store.get(&key).await.unwrap().unwrap();
    let (with, without) = stored(&after_apply);
    println!("after an apply: {without} bytes without managedFields, {with} with both entries");
    assert!(with - without < 1600, "{with} vs {without}");
}

/// A write through `/status` is attributed to the status subresource's fields; an apply pinned
/// to a stale resourceVersion is a 409.
#[tokio::test]
async fn status_writes_and_stale_applies() {
    let api = api().await;
    let (code, _) = apply_raw(
        &api,
        "/apis/apps/v1/namespaces/default/deployments/web",
        "fieldManager=alice",
        Body::from(deployment(1, "nginx:1").to_string()),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let mut object = api
        .get("/apis/apps/v1/namespaces/default/deployments/web")
        .await;
    object["status"] = json!({"observedGeneration": 1, "replicas": 1});
    let (code, written) = api
        .call_raw(
            Method::PUT,
            "/apis/apps/v1/namespaces/default/deployments/web/status?fieldManager=controller",
            "application/json",
            Some(TOKEN),
            Body::from(object.to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{written}");
    let entry = written["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "controller")
        .cloned()
        .unwrap();
    assert_eq!(entry["subresource"], "status");
    assert_eq!(entry["operation"], "Update");
    assert_eq!(
        entry["fieldsV1"],
        json!({"f:status": {"f:observedGeneration": {}, "f:replicas": {}}})
    );

    // An apply through /status owns what it applied, under the status subresource.
    let (code, applied) = apply_raw(
        &api,
        "/apis/apps/v1/namespaces/default/deployments/web/status",
        "fieldManager=reporter",
        Body::from(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "status": {"availableReplicas": 1}})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{applied}");
    assert_eq!(applied["status"]["availableReplicas"], 1, "{applied}");
    let entry = applied["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "reporter")
        .cloned()
        .unwrap_or_else(|| panic!("no entry of the status applier in {applied}"));
    assert_eq!(
        (&entry["operation"], &entry["subresource"]),
        (&json!("Apply"), &json!("status"))
    );
    assert_eq!(
        entry["fieldsV1"],
        json!({"f:status": {"f:availableReplicas": {}}})
    );

    let mut stale = deployment(3, "nginx:1");
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, status) = apply_raw(
        &api,
        "/apis/apps/v1/namespaces/default/deployments/web",
        "fieldManager=alice",
        Body::from(stale.to_string()),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    assert_eq!(status["reason"], "Conflict");
    let current = api
        .get("/apis/apps/v1/namespaces/default/deployments/web")
        .await;
    assert_eq!(current["spec"]["replicas"], 1, "nothing applied");
}
