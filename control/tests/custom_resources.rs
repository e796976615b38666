//! CustomResourceDefinitions through the in-process router: a definition is served within
//! moments, its objects are pruned, defaulted and validated against its schema, printed with
//! its columns, scaled through `/scale`, served in every version, and deleted with it.

mod common;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_test_support::wait::eventually;

use common::{api, Api};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const WIDGETS: &str = "/apis/example.com/v1/namespaces/default/widgets";

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [
                {
                    "name": "v1", "served": true, "storage": true,
                    "subresources": {
                        "status": {},
                        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}
                    },
                    "additionalPrinterColumns": [
                        {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}
                    ],
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["color"],
                                "properties": {
                                    "color": {"type": "string", "enum": ["red", "blue", "green"]},
                                    "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
                                    "replicas": {"type": "integer", "format": "int32", "minimum": 0},
                                    "code": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                                    "port": {"x-kubernetes-int-or-string": true},
                                    "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "maxItems": 3},
                                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                                }
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "replicas": {"type": "integer"},
                                    "selector": {"type": "string"},
                                    "conditions": {"type": "array", "items": {"type": "object", "properties": {"type": {"type": "string"}, "status": {"type": "string"}}}}
                                }
                            }
                        }
                    }}
                },
                {
                    "name": "v1beta1", "served": true, "storage": false,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                }
            ]
        }
    })
}

fn widget(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})
}

/// Creates the Widget definition and waits until it is Established and served.
async fn with_widgets() -> Api {
    let api = api().await;
    let (code, body) = api.call(Method::POST, CRDS, Some(widget_crd())).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    established(&api, "widgets.example.com", WIDGETS).await;
    api
}

async fn established(api: &Api, name: &str, collection: &str) {
    eventually("the definition to be established and served", || async {
        let crd = api.get(&format!("{CRDS}/{name}")).await;
        let ok = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
        let (code, _) = api.call(Method::GET, collection, None).await;
        (ok && code == StatusCode::OK).then_some(())
    })
    .await;
}

fn causes(status: &Value) -> Vec<String> {
    status
        .pointer("/details/causes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}: {}",
                c["field"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test]
async fn a_definition_is_served_with_its_names_conditions_and_discovery() {
    let api = with_widgets().await;
    let crd = api.get(&format!("{CRDS}/widgets.example.com")).await;
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "Widget");
    assert_eq!(crd["status"]["acceptedNames"]["listKind"], "WidgetList");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    let names = crd["status"]["conditions"].as_array().unwrap();
    assert!(names.iter().any(|c| c["type"] == "NamesAccepted"
        && c["status"] == "True"
        && c["reason"] == "NoConflicts"));

    let resources = api.get("/apis/example.com/v1").await;
    let widgets = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "widgets")
        .expect("widgets in discovery")
        .clone();
    assert_eq!(widgets["kind"], "Widget");
    assert_eq!(widgets["namespaced"], true);
    assert_eq!(widgets["shortNames"], json!(["wd"]));
    assert_eq!(widgets["categories"], json!(["all"]));
    let subs: Vec<&str> = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        subs.contains(&"widgets/status") && subs.contains(&"widgets/scale"),
        "{subs:?}"
    );

    // Both versions are listed, the GA one preferred.
    let group = api.get("/apis/example.com").await;
    assert_eq!(group["preferredVersion"]["version"], "v1");
    assert_eq!(group["versions"].as_array().unwrap().len(), 2);

    // Published for kubectl explain.
    let doc = api.get("/openapi/v3/apis/example.com/v1").await;
    let schema = &doc["components"]["schemas"]["com.example.v1.Widget"];
    assert_eq!(
        schema["properties"]["spec"]["properties"]["color"]["enum"],
        json!(["red", "blue", "green"]),
        "{doc}"
    );
    assert_eq!(
        schema["x-kubernetes-group-version-kind"][0]["kind"],
        "Widget"
    );
}

#[tokio::test]
async fn objects_are_pruned_defaulted_and_validated_against_the_schema() {
    let api = with_widgets().await;
    let created = api
        .post(
            WIDGETS,
            widget(
                "w1",
                json!({"color": "red", "unknown": 1, "port": "http", "extra": {"anything": [1]}, "labels": {"a": "b"}}),
            ),
        )
        .await;
    assert_eq!(created["spec"]["size"], 3, "the default applies: {created}");
    assert!(
        created["spec"].get("unknown").is_none(),
        "pruned: {created}"
    );
    assert_eq!(created["spec"]["extra"], json!({"anything": [1]}));
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(created.get("status").is_none(), "{created}");

    // Strict field validation reports the pruned field instead.
    let (code, status) = api
        .call(
            Method::POST,
            &format!("{WIDGETS}?fieldValidation=Strict"),
            Some(widget("w2", json!({"color": "red", "bogus": true}))),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.bogus\""),
        "{status}"
    );

    // Every cause at once, nothing stored.
    let (code, status) = api
        .call(
            Method::POST,
            WIDGETS,
            Some(widget(
                "bad",
                json!({"color": "pink", "size": 11, "replicas": "two", "code": "ABCDEFG", "port": 1.5, "tags": ["a", "a"]}),
            )),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let found = causes(&status);
    for expected in [
        "spec.color: Unsupported value: \"pink\"",
        "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
        "spec.replicas: Invalid value: \"two\": spec.replicas in body must be of type integer: \"string\"",
        "spec.code: Too long: may not be more than 5 bytes",
        "spec.code: Invalid value: \"ABCDEFG\": spec.code in body should match '^[a-z]+$'",
        "spec.port: Invalid value: 1.5: spec.port in body must be of type integer or string: \"number\"",
        "spec.tags[1]: Duplicate value: \"a\"",
    ] {
        assert!(
            found.iter().any(|c| c.starts_with(expected)),
            "missing {expected:?} in {found:#?}"
        );
    }
    let (code, _) = api.call(Method::GET, &format!("{WIDGETS}/bad"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, status) = api
        .call(Method::POST, WIDGETS, Some(widget("nocolor", json!({}))))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        causes(&status).contains(&"spec.color: Required value".to_owned()),
        "{status}"
    );

    // Merge patches work; strategic merge is 415, as in Kubernetes.
    let (code, patched) = api
        .merge_patch(&format!("{WIDGETS}/w1"), json!({"spec": {"color": "blue"}}))
        .await;
    assert_eq!(code, StatusCode::OK, "{patched}");
    assert_eq!(patched["metadata"]["generation"], 2);
    let (code, _) = api
        .call_raw(
            Method::PATCH,
            &format!("{WIDGETS}/w1"),
            "application/strategic-merge-patch+json",
            Some(common::TOKEN),
            axum::body::Body::from(r#"{"spec":{"color":"green"}}"#),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn status_and_scale_subresources_and_printer_columns() {
    let api = with_widgets().await;
    api.post(
        WIDGETS,
        widget("w", json!({"color": "green", "replicas": 2})),
    )
    .await;
    // A write of the object keeps the status; /status changes only the status.
    let mut w = api.get(&format!("{WIDGETS}/w")).await;
    w["status"] = json!({"replicas": 2, "selector": "app=w", "conditions": [{"type": "Ready", "status": "True"}]});
    let (code, updated) = api
        .call(Method::PUT, &format!("{WIDGETS}/w"), Some(w.clone()))
        .await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert!(updated.get("status").is_none(), "{updated}");
    let (code, updated) = api
        .call(Method::PUT, &format!("{WIDGETS}/w/status"), Some(w))
        .await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert_eq!(updated["status"]["replicas"], 2);
    assert_eq!(
        updated["metadata"]["generation"], 1,
        "status writes keep the generation"
    );

    let scale = api.get(&format!("{WIDGETS}/w/scale")).await;
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=w");
    let (code, scaled) = api
        .merge_patch(
            &format!("{WIDGETS}/w/scale"),
            json!({"spec": {"replicas": 5}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{scaled}");
    let w = api.get(&format!("{WIDGETS}/w")).await;
    assert_eq!(w["spec"]["replicas"], 5);
    assert_eq!(w["metadata"]["generation"], 2);

    let table = api.table(WIDGETS).await;
    let headers: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(headers, ["Name", "Color", "Replicas", "Ready"]);
    assert_eq!(table["rows"][0]["cells"], json!(["w", "green", 5, "True"]));
}

#[tokio::test]
async fn every_served_version_reads_and_writes_the_same_objects() {
    let api = with_widgets().await;
    let beta = "/apis/example.com/v1beta1/namespaces/default/widgets";
    let mut object = widget("multi", json!({"color": "red"}));
    object["apiVersion"] = json!("example.com/v1beta1");
    let created = api.post(beta, object).await;
    assert_eq!(created["apiVersion"], "example.com/v1beta1");
    let v1 = api.get(&format!("{WIDGETS}/multi")).await;
    assert_eq!(v1["apiVersion"], "example.com/v1");
    assert_eq!(v1["spec"]["size"], 3, "v1's defaults apply on read: {v1}");
    let list = api.get(beta).await;
    assert_eq!(list["items"][0]["apiVersion"], "example.com/v1beta1");
    // Lists default too: the object was stored without v1's default (v1beta1 has none).
    let list = api.get(WIDGETS).await;
    assert_eq!(list["items"][0]["spec"]["size"], 3, "{list}");
    // Stored in the storage version.
    let stored = api
        .state
        .store
        .get("example.com/widgets/default/multi")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored["apiVersion"], "example.com/v1");
    // Without a /status subresource (v1beta1 has none) every change but metadata is a new
    // generation; a write through another version that changes nothing is none.
    let (code, bumped) = api
        .merge_patch(&format!("{beta}/multi"), json!({"status": {"seen": true}}))
        .await;
    assert_eq!(code, StatusCode::OK, "{bumped}");
    assert_eq!(bumped["metadata"]["generation"], 2, "{bumped}");
    let (code, same) = api
        .merge_patch(
            &format!("{beta}/multi"),
            json!({"metadata": {"labels": {"a": "b"}}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{same}");
    assert_eq!(same["metadata"]["generation"], 2, "{same}");

    // An unchanged write is no write (read back through v1, whose defaults it now has).
    let plain = api
        .post(WIDGETS, widget("plain", json!({"color": "red"})))
        .await;
    let (code, again) = api
        .call(
            Method::PUT,
            &format!("{WIDGETS}/plain"),
            Some(plain.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{again}");
    assert_eq!(
        again["metadata"]["resourceVersion"],
        plain["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn invalid_definitions_are_refused_with_their_causes() {
    let api = api().await;
    let mut bad = widget_crd();
    bad["metadata"]["name"] = json!("wrong.example.com");
    bad["spec"]["versions"][1]["storage"] = json!(true);
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["color"] = json!({"enum": ["x"]});
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["code"]["pattern"] = json!("([");
    let (code, status) = api.call(Method::POST, CRDS, Some(bad)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let causes = causes(&status);
    for expected in [
        "metadata.name: Invalid value: \"wrong.example.com\": must be spec.names.plural+\".\"+spec.group",
        "spec.versions: Invalid value: \"2\": must have exactly one version marked as storage version",
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[color].type: Required value",
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[code].pattern: Invalid value",
    ] {
        assert!(
            causes.iter().any(|c| c.starts_with(expected)),
            "missing {expected:?} in {causes:#?}"
        );
    }

    // A built-in group is not for custom resources.
    let mut builtin = widget_crd();
    builtin["metadata"]["name"] = json!("widgets.apps");
    builtin["spec"]["group"] = json!("apps");
    let (code, status) = api.call(Method::POST, CRDS, Some(builtin)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("spec.group"),
        "{status}"
    );
    let (code, _) = api
        .call(
            Method::GET,
            "/apis/apps/v1/namespaces/default/widgets",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_name_taken_by_an_older_definition_is_not_accepted() {
    let api = with_widgets().await;
    let mut rival = widget_crd();
    rival["metadata"]["name"] = json!("gadgets.example.com");
    rival["spec"]["names"] = json!({"plural": "gadgets", "kind": "Widget"});
    let (code, body) = api.call(Method::POST, CRDS, Some(rival)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let condition = eventually("the rival's NamesAccepted condition", || async {
        let crd = api.get(&format!("{CRDS}/gadgets.example.com")).await;
        crd.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "NamesAccepted").cloned())
    })
    .await;
    assert_eq!(condition["status"], "False", "{condition}");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("\"Widget\""),
        "{condition}"
    );
    let (code, _) = api
        .call(
            Method::GET,
            "/apis/example.com/v1/namespaces/default/gadgets",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_a_definition_deletes_its_objects_first() {
    let api = with_widgets().await;
    api.post(WIDGETS, widget("a", json!({"color": "red"})))
        .await;
    let mut held = widget("held", json!({"color": "red"}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.post(WIDGETS, held).await;

    let (code, body) = api
        .call(Method::DELETE, &format!("{CRDS}/widgets.example.com"), None)
        .await;
    assert!(code.is_success(), "{code} {body}");
    // The held object keeps the definition (Terminating) until its finalizer goes.
    eventually("the plain object to be deleted", || async {
        let (code, _) = api.call(Method::GET, &format!("{WIDGETS}/a"), None).await;
        (code == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let crd = api.get(&format!("{CRDS}/widgets.example.com")).await;
    assert!(crd["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .contains(&json!("customresourcecleanup.apiextensions.k8s.io")));
    let terminating = eventually("the Terminating condition", || async {
        let crd = api.get(&format!("{CRDS}/widgets.example.com")).await;
        crd.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "Terminating").cloned())
    })
    .await;
    assert_eq!(terminating["reason"], "InstanceDeletionInProgress");
    // No new objects while terminating.
    let (code, _) = api
        .call(
            Method::POST,
            WIDGETS,
            Some(widget("late", json!({"color": "red"}))),
        )
        .await;
    assert!(code.is_client_error(), "{code}");

    let (code, body) = api
        .merge_patch(
            &format!("{WIDGETS}/held"),
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    eventually("the definition to be gone", || async {
        let (code, _) = api
            .call(Method::GET, &format!("{CRDS}/widgets.example.com"), None)
            .await;
        (code == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    eventually("the resource to be no longer served", || async {
        let (code, _) = api.call(Method::GET, WIDGETS, None).await;
        (code == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

/// Aggregated discovery (what kubectl asks for first) lists the custom resource as soon as it
/// is served, and a cached copy is revalidated by its ETag.
#[tokio::test]
async fn aggregated_discovery_lists_custom_resources_and_honours_etags() {
    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let api = api().await;
    let get = |etag: Option<String>| {
        let router = api.router.clone();
        async move {
            let mut req = Request::builder()
                .uri("/apis")
                .header("authorization", format!("Bearer {}", common::TOKEN))
                .header("accept", AGGREGATED);
            if let Some(etag) = etag {
                req = req.header("if-none-match", etag);
            }
            let resp = router
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
            let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                etag,
                content_type,
                serde_json::from_slice::<Value>(&body).unwrap_or_default(),
            )
        }
    };
    let (code, etag, content_type, doc) = get(None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        content_type.contains("as=APIGroupDiscoveryList") && content_type.contains("v=v2"),
        "{content_type}"
    );
    assert_eq!(doc["kind"], "APIGroupDiscoveryList");
    let apps = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .unwrap();
    let deployments = apps["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "deployments")
        .unwrap();
    assert_eq!(deployments["responseKind"]["kind"], "Deployment");
    assert_eq!(deployments["scope"], "Namespaced");
    let scale = deployments["subresources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subresource"] == "scale")
        .unwrap();
    assert_eq!(scale["responseKind"]["group"], "autoscaling");
    let (code, _, _, _) = get(Some(etag.clone())).await;
    assert_eq!(code, StatusCode::NOT_MODIFIED);

    let (code, body) = api.call(Method::POST, CRDS, Some(widget_crd())).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    established(&api, "widgets.example.com", WIDGETS).await;
    let (code, new_etag, _, doc) = get(Some(etag.clone())).await;
    assert_eq!(code, StatusCode::OK, "a new resource changes the document");
    assert_ne!(new_etag, etag);
    let example = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "example.com")
        .expect("the custom group");
    let versions: Vec<&str> = example["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v1beta1"]);
    let widgets = &example["versions"][0]["resources"][0];
    assert_eq!(widgets["resource"], "widgets");
    assert_eq!(widgets["shortNames"], json!(["wd"]));
    assert_eq!(widgets["categories"], json!(["all"]));
}

/// CEL rules (`x-kubernetes-validations`): plain rules on every write, transition rules
/// (`oldSelf`) on updates, messages and message expressions; a rule that does not compile
/// makes the definition invalid.
#[tokio::test]
async fn cel_validation_rules_and_transition_rules() {
    let api = api().await;
    let mut crd = widget_crd();
    crd["spec"]["versions"] = json!([{
        "name": "v1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {
                "type": "object",
                "x-kubernetes-validations": [
                    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
                    {"rule": "self.size < 100", "messageExpression": "'size ' + string(self.size) + ' is too big'"},
                    {"rule": "!has(oldSelf.owner) || self.owner == oldSelf.owner", "message": "owner is immutable", "fieldPath": ".owner"}
                ],
                "properties": {
                    "minReplicas": {"type": "integer"},
                    "maxReplicas": {"type": "integer"},
                    "size": {"type": "integer", "default": 1},
                    "owner": {"type": "string"},
                    "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "name is immutable"}]}
                }
            }}
        }}
    }]);
    let (code, body) = api.call(Method::POST, CRDS, Some(crd.clone())).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    established(&api, "widgets.example.com", WIDGETS).await;

    let (code, status) = api
        .call(
            Method::POST,
            WIDGETS,
            Some(widget(
                "w",
                json!({"minReplicas": 5, "maxReplicas": 2, "size": 500}),
            )),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let found = causes(&status);
    assert!(
        found.contains(
            &"spec: Invalid value: \"object\": minReplicas must not exceed maxReplicas".to_owned()
        ),
        "{found:#?}"
    );
    assert!(
        found.contains(&"spec: Invalid value: \"object\": size 500 is too big".to_owned()),
        "{found:#?}"
    );
    // Transition rules do not run on create.
    api.post(
        WIDGETS,
        widget(
            "w",
            json!({"minReplicas": 1, "maxReplicas": 2, "owner": "a", "name": "n"}),
        ),
    )
    .await;
    let (code, status) = api
        .merge_patch(
            &format!("{WIDGETS}/w"),
            json!({"spec": {"owner": "b", "name": "m"}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let found = causes(&status);
    assert!(
        found.contains(&"spec.owner: Invalid value: \"object\": owner is immutable".to_owned()),
        "{found:#?}"
    );
    assert!(
        found.contains(&"spec.name: Invalid value: \"string\": name is immutable".to_owned()),
        "{found:#?}"
    );
    let (code, body) = api
        .merge_patch(&format!("{WIDGETS}/w"), json!({"spec": {"maxReplicas": 3}}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // A rule that does not compile.
    crd["metadata"]["name"] = json!("gizmos.example.com");
    crd["spec"]["names"] = json!({"plural": "gizmos", "kind": "Gizmo"});
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["x-kubernetes-validations"] = json!([{"rule": "self.size <"}]);
    let (code, status) = api.call(Method::POST, CRDS, Some(crd)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(
        causes(&status).iter().any(|c| c.starts_with(
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: \"self.size <\": compilation failed"
        )),
        "{status}"
    );
}

/// A deprecated version warns on every request; protobuf bodies are refused (custom
/// resources have no protobuf form); deleting a namespace deletes its custom resources.
#[tokio::test]
async fn deprecated_versions_warn_protobuf_is_refused_and_namespaces_take_their_objects() {
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let api = common::api_with_namespaces(shutdown.clone()).await;
    let mut crd = widget_crd();
    crd["spec"]["versions"][1]["deprecated"] = json!(true);
    crd["spec"]["versions"][1]["deprecationWarning"] =
        json!("example.com/v1beta1 Widget is deprecated; use example.com/v1");
    let (code, body) = api.call(Method::POST, CRDS, Some(crd)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    established(&api, "widgets.example.com", WIDGETS).await;

    let request = |uri: &str, content_type: &str, body: Body| {
        Request::builder()
            .method(if content_type.is_empty() {
                Method::GET
            } else {
                Method::POST
            })
            .uri(uri)
            .header("authorization", format!("Bearer {}", common::TOKEN))
            .header(
                "content-type",
                if content_type.is_empty() {
                    "application/json"
                } else {
                    content_type
                },
            )
            .body(body)
            .unwrap()
    };
    let resp = api
        .router
        .clone()
        .oneshot(request(
            "/apis/example.com/v1beta1/namespaces/default/widgets",
            "",
            Body::empty(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["warning"].to_str().unwrap(),
        "299 - \"example.com/v1beta1 Widget is deprecated; use example.com/v1\""
    );
    let resp = api
        .router
        .clone()
        .oneshot(request(WIDGETS, "", Body::empty()))
        .await
        .unwrap();
    assert!(resp.headers().get("warning").is_none());

    let resp = api
        .router
        .clone()
        .oneshot(request(
            WIDGETS,
            "application/vnd.kubernetes.protobuf",
            Body::from(vec![0x6b, 0x38, 0x73, 0x00]),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    api.post(
        "/api/v1/namespaces",
        json!({"metadata": {"name": "doomed"}}),
    )
    .await;
    api.post(
        "/apis/example.com/v1/namespaces/doomed/widgets",
        widget("w", json!({"color": "red"})),
    )
    .await;
    let (code, body) = api
        .call(Method::DELETE, "/api/v1/namespaces/doomed", None)
        .await;
    assert!(code.is_success(), "{body}");
    eventually("the namespace and its widget to be gone", || async {
        let (code, _) = api
            .call(Method::GET, "/api/v1/namespaces/doomed", None)
            .await;
        (code == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (code, _) = api
        .call(
            Method::GET,
            "/apis/example.com/v1/namespaces/doomed/widgets/w",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    shutdown.cancel();
}

/// The garbage collector follows custom resources both ways: a ConfigMap owned by a Widget
/// goes with it, and a Widget owned by a ConfigMap goes with that.
#[tokio::test]
async fn garbage_collection_follows_custom_resources_both_ways() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api as KubeApi, ApiResource, DeleteParams, DynamicObject, PostParams};

    let cluster = common::Cluster::start().await;
    tokio::spawn(skiff_control::controllers::garbage_collector::run(
        cluster.context(),
    ));
    let client = cluster.client.clone();
    let crds: KubeApi<DynamicObject> = KubeApi::all_with(
        client.clone(),
        &ApiResource {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
        },
    );
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd()).unwrap(),
    )
    .await
    .unwrap();
    let resource = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: KubeApi<DynamicObject> =
        KubeApi::namespaced_with(client.clone(), "default", &resource);
    let owner = eventually("the Widget kind to be served", || async {
        widgets
            .create(
                &PostParams::default(),
                &serde_json::from_value(widget("owner", json!({"color": "red"}))).unwrap(),
            )
            .await
            .ok()
    })
    .await;
    let maps: KubeApi<ConfigMap> = KubeApi::default_namespaced(client.clone());
    let owned_by = |api_version: &str, kind: &str, name: &str, uid: &str| json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}]);
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "owned", "ownerReferences":
            owned_by("example.com/v1", "Widget", "owner", owner.metadata.uid.as_deref().unwrap())}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let parent = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "parent"}})).unwrap(),
        )
        .await
        .unwrap();
    let mut child = widget("child", json!({"color": "blue"}));
    child["metadata"]["ownerReferences"] = owned_by(
        "v1",
        "ConfigMap",
        "parent",
        parent.metadata.uid.as_deref().unwrap(),
    );
    widgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(child).unwrap(),
        )
        .await
        .unwrap();

    widgets
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    maps.delete("parent", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the ConfigMap owned by the deleted Widget to go",
        || async { maps.get_opt("owned").await.unwrap().is_none().then_some(()) },
    )
    .await;
    eventually(
        "the Widget owned by the deleted ConfigMap to go",
        || async {
            widgets
                .get_opt("child")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// `selectableFields` become field selectors of the custom resource; other fields are refused.
#[tokio::test]
async fn selectable_fields_filter_lists() {
    let api = api().await;
    let mut crd = widget_crd();
    crd["spec"]["versions"][0]["selectableFields"] = json!([{"jsonPath": ".spec.color"}]);
    let (code, body) = api.call(Method::POST, CRDS, Some(crd.clone())).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    established(&api, "widgets.example.com", WIDGETS).await;
    api.post(WIDGETS, widget("r", json!({"color": "red"})))
        .await;
    api.post(WIDGETS, widget("b", json!({"color": "blue"})))
        .await;
    let list = api
        .get(&format!("{WIDGETS}?fieldSelector=spec.color%3Dred"))
        .await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["r"]);
    let (code, _) = api
        .call(
            Method::GET,
            &format!("{WIDGETS}?fieldSelector=spec.size%3D3"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    crd["metadata"]["name"] = json!("gizmos.example.com");
    crd["spec"]["names"] = json!({"plural": "gizmos", "kind": "Gizmo"});
    crd["spec"]["versions"][0]["selectableFields"] =
        json!([{"jsonPath": ".spec.labels"}, {"jsonPath": ".spec.nothing"}]);
    let (code, status) = api.call(Method::POST, CRDS, Some(crd)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(causes(&status).len(), 2, "{status}");
}

mod typed {
    //! The kube crate's typed custom resources (`#[derive(CustomResource)]`): the definition
    //! it generates is accepted and served, and typed create, status, list and watch work.

    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use kube::runtime::{watcher, WatchStreamExt};
    use kube::{CustomResource, CustomResourceExt};
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use skiff_test_support::wait::eventually;

    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    #[kube(
        group = "tools.example.com",
        version = "v1",
        kind = "Gadget",
        namespaced,
        status = "GadgetStatus",
        shortname = "gd",
        printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#
    )]
    pub struct GadgetSpec {
        size: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        color: Option<String>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
    pub struct GadgetStatus {
        ready: bool,
    }

    #[tokio::test]
    async fn a_derived_custom_resource_is_served_and_watched() {
        let cluster = super::common::Cluster::start().await;
        let client = cluster.client.clone();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &Gadget::crd())
            .await
            .expect("the derived definition is valid");
        let gadgets: Api<Gadget> = Api::default_namespaced(client.clone());
        eventually("Gadgets to be served", || async {
            gadgets.list(&Default::default()).await.ok()
        })
        .await;

        let events = watcher(gadgets.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        let created = gadgets
            .create(
                &PostParams::default(),
                &Gadget::new(
                    "g1",
                    GadgetSpec {
                        size: 2,
                        color: None,
                    },
                ),
            )
            .await
            .unwrap();
        assert_eq!(created.spec.size, 2);
        let status = Patch::Merge(serde_json::json!({"status": {"ready": true}}));
        let patched = gadgets
            .patch_status("g1", &PatchParams::default(), &status)
            .await
            .unwrap();
        assert!(patched.status.unwrap().ready);
        let seen: Vec<Gadget> = events
            .try_filter(|g| std::future::ready(g.status.as_ref().is_some_and(|s| s.ready)))
            .take(1)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(seen[0].spec.size, 2);

        // The schema kube generated is enforced: size is an integer.
        let untyped: Api<kube::api::DynamicObject> = Api::default_namespaced_with(
            client.clone(),
            &kube::api::ApiResource::erase::<Gadget>(&()),
        );
        let bad: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "tools.example.com/v1", "kind": "Gadget",
            "metadata": {"name": "g2"}, "spec": {"size": "big"}
        }))
        .unwrap();
        match untyped.create(&PostParams::default(), &bad).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{s:?}"),
            other => panic!("expected a 422, got {other:?}"),
        }
    }
}

/// Custom resources are authorized like every resource: a user without a grant on `widgets`
/// is refused (and nothing is stored), anonymous callers too; a Role on the group's resource
/// lets the same user in.
#[tokio::test]
async fn custom_resources_are_authorized_by_rbac() {
    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let api = with_widgets().await;
    let as_alice = |method: Method, uri: &str, body: Option<Value>| {
        let router = api.router.clone();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", common::TOKEN))
            .header("impersonate-user", "alice")
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        async move {
            let resp = router.oneshot(req).await.unwrap();
            let code = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                code,
                serde_json::from_slice::<Value>(&bytes).unwrap_or_default(),
            )
        }
    };
    let (code, status) = as_alice(
        Method::POST,
        WIDGETS,
        Some(widget("w", json!({"color": "red"}))),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("widgets.example.com"),
        "{status}"
    );
    let (code, _) = api.call(Method::GET, &format!("{WIDGETS}/w"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "nothing stored");
    let (code, _) = api.call_with(Method::GET, WIDGETS, None, None).await;
    assert!(
        code == StatusCode::FORBIDDEN || code == StatusCode::UNAUTHORIZED,
        "{code}"
    );

    api.post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        json!({"metadata": {"name": "widget-maker"},
            "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["create", "get"]}]}),
    )
    .await;
    api.post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        json!({"metadata": {"name": "alice-widgets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "widget-maker"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
    )
    .await;
    let created = eventually("alice's grant to apply", || async {
        let (code, body) = as_alice(
            Method::POST,
            WIDGETS,
            Some(widget("w", json!({"color": "red"}))),
        )
        .await;
        (code == StatusCode::CREATED).then_some(body)
    })
    .await;
    assert_eq!(created["metadata"]["name"], "w");
    // The grant is on widgets only: their status is another resource.
    let (code, _) = as_alice(Method::PUT, &format!("{WIDGETS}/w/status"), Some(created)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}
