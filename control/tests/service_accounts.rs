//! ServiceAccount tokens end to end inside one API server: TokenRequest, authentication with
//! the token (and its refusal once the account or bound pod is gone), TokenReview audiences,
//! OIDC discovery, ServiceAccount admission of pods and the root CA publisher.

mod common;

use common::{api_with_service_account_admission as api, Api, Cluster};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};
use skiff_test_support::eventually;

const NS: &str = "/api/v1/namespaces/default";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings";

async fn account(a: &Api, name: &str, extra: Value) -> Value {
    let mut body =
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    a.post(&format!("{NS}/serviceaccounts"), body).await
}

fn token_request(spec: Value) -> Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
}

/// Requests a token for `sa`, asserting it is issued.
async fn token(a: &Api, sa: &str, spec: Value) -> String {
    let (code, answer) = a
        .call(
            Method::POST,
            &format!("{NS}/serviceaccounts/{sa}/token"),
            Some(token_request(spec)),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["kind"], "TokenRequest");
    assert!(
        answer["status"]["expirationTimestamp"].is_string(),
        "{answer}"
    );
    answer["status"]["token"].as_str().unwrap().to_owned()
}

async fn whoami(a: &Api, token: &str) -> (StatusCode, Value) {
    a.call_with(
        Method::POST,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(token),
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await
}

#[tokio::test]
async fn a_requested_token_is_the_account_and_gets_what_rbac_grants() {
    let a = api().await;
    let sa = account(&a, "builder", json!({})).await;
    let token = token(&a, "builder", json!({})).await;

    let (code, me) = whoami(&a, &token).await;
    assert_eq!(code, StatusCode::CREATED, "{me}");
    let user = &me["status"]["userInfo"];
    assert_eq!(user["username"], "system:serviceaccount:default:builder");
    assert_eq!(user["uid"], sa["metadata"]["uid"]);
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    assert!(
        user["extra"]["authentication.kubernetes.io/credential-id"][0]
            .as_str()
            .unwrap()
            .starts_with("JTI=")
    );

    // Nothing is granted until a binding says so.
    let (code, denied) = a
        .call_with(Method::GET, &format!("{NS}/pods"), Some(&token), None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{denied}");
    assert_eq!(
        denied["message"],
        "pods is forbidden: User \"system:serviceaccount:default:builder\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    a.post(
        RBAC,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "builder-view"},
            "subjects": [{"kind": "ServiceAccount", "name": "builder", "namespace": "default"}],
            "roleRef": {"kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io"}}),
    )
    .await;
    let (code, list) = a
        .call_with(Method::GET, &format!("{NS}/pods"), Some(&token), None)
        .await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let (code, _) = a
        .call_with(Method::GET, &format!("{NS}/secrets"), Some(&token), None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "view does not read Secrets");

    // The account deleted, and recreated under the same name: the old token is dead.
    let (code, _) = a
        .call(
            Method::DELETE,
            &format!("{NS}/serviceaccounts/builder"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(whoami(&a, &token).await.0, StatusCode::UNAUTHORIZED);
    account(&a, "builder", json!({})).await;
    assert_eq!(whoami(&a, &token).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_bound_to_a_pod_dies_with_the_pod() {
    let a = api().await;
    account(&a, "default", json!({})).await;
    let pod = a
        .post(
            &format!("{NS}/pods"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
        )
        .await;
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let bound =
        json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": uid}});
    let token = token(&a, "default", bound.clone()).await;
    let (code, me) = whoami(&a, &token).await;
    assert_eq!(code, StatusCode::CREATED, "{me}");
    let extra = &me["status"]["userInfo"]["extra"];
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        json!(["web"])
    );
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], json!([uid]));

    // Unscheduled, so deleted at once; a new pod of the same name is another pod.
    let (code, _) = a
        .call(Method::DELETE, &format!("{NS}/pods/web"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, status) = whoami(&a, &token).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{status}");
    assert_eq!(status["reason"], "Unauthorized");
    a.post(
        &format!("{NS}/pods"),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
    )
    .await;
    assert_eq!(whoami(&a, &token).await.0, StatusCode::UNAUTHORIZED);

    // A token for the old uid is refused outright.
    let (code, status) = a
        .call(
            Method::POST,
            &format!("{NS}/serviceaccounts/default/token"),
            Some(token_request(bound)),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("does not match the UID in record"));
}

#[tokio::test]
async fn bad_token_requests_get_kubernetes_errors() {
    let a = api().await;
    account(&a, "builder", json!({})).await;
    let request = |sa: &str, spec: Value| {
        let a = &a;
        let uri = format!("{NS}/serviceaccounts/{sa}/token");
        async move { a.call(Method::POST, &uri, Some(token_request(spec))).await }
    };
    let (code, s) = request("builder", json!({"expirationSeconds": 599})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(s["details"]["causes"][0]["field"], "spec.expirationSeconds");
    assert!(s["message"]
        .as_str()
        .unwrap()
        .contains("may not specify a duration less than 10 minutes"));
    let (code, s) = request("ghost", json!({})).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{s}");
    assert_eq!(s["message"], "serviceaccounts \"ghost\" not found");
    let (code, s) = request(
        "builder",
        json!({"boundObjectRef": {"apiVersion": "v1", "kind": "ConfigMap", "name": "x"}}),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    assert_eq!(
        s["message"],
        "cannot bind token for object of type v1, Kind=ConfigMap"
    );
    let (code, s) = request(
        "builder",
        json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "nowhere"}}),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{s}");
    let (code, s) = a
        .call(
            Method::POST,
            &format!("{NS}/serviceaccounts/builder/token"),
            Some(json!({"apiVersion": "v1", "kind": "Pod"})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    let (code, _) = a
        .call(
            Method::GET,
            &format!("{NS}/serviceaccounts/builder/token"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);

    // Garbage and forged tokens are 401s, never 500s.
    let issued = token(&a, "builder", json!({})).await;
    let mut parts: Vec<String> = issued.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    for bad in ["x.y.z", "eyJhbGciOiJub25lIn0.e30.", &parts.join(".")] {
        assert_eq!(whoami(&a, bad).await.0, StatusCode::UNAUTHORIZED, "{bad}");
    }
    // Only someone allowed to create serviceaccounts/token gets one.
    let (code, _) = a
        .call_with(
            Method::POST,
            &format!("{NS}/serviceaccounts/builder/token"),
            Some(&issued),
            Some(token_request(json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn audiences_decide_where_a_token_is_accepted() {
    let a = api().await;
    account(&a, "builder", json!({})).await;
    let issuer = a.state.tokens.issuer().to_owned();
    let vault = token(&a, "builder", json!({"audiences": ["vault"]})).await;
    // Not for the API server...
    assert_eq!(whoami(&a, &vault).await.0, StatusCode::UNAUTHORIZED);
    // ...but a TokenReview for its audience accepts it.
    let review = |token: &str, audiences: Value| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences}})
    };
    let uri = "/apis/authentication.k8s.io/v1/tokenreviews";
    let ok = a.post(uri, review(&vault, json!(["vault", "x"]))).await;
    assert_eq!(ok["status"]["authenticated"], true, "{ok}");
    assert_eq!(ok["status"]["audiences"], json!(["vault"]));
    assert_eq!(
        ok["status"]["user"]["username"],
        "system:serviceaccount:default:builder"
    );
    let wrong = a.post(uri, review(&vault, json!([issuer]))).await;
    assert_eq!(wrong["status"]["authenticated"], Value::Null, "{wrong}");
    assert!(wrong["status"]["error"]
        .as_str()
        .unwrap()
        .contains("token audiences [\"vault\"] is invalid"));
    let default = token(&a, "builder", json!({})).await;
    let own = a.post(uri, review(&default, json!([]))).await;
    assert_eq!(own["status"]["authenticated"], true, "{own}");
}

#[tokio::test]
async fn issuer_discovery_is_for_service_accounts() {
    let a = api().await;
    account(&a, "builder", json!({})).await;
    let (code, _) = a
        .call_with(Method::GET, "/.well-known/openid-configuration", None, None)
        .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "anonymous callers need a binding"
    );
    let token = token(&a, "builder", json!({})).await;
    let (code, config) = a
        .call_with(
            Method::GET,
            "/.well-known/openid-configuration",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{config}");
    assert_eq!(config["issuer"], a.state.tokens.issuer());
    assert_eq!(
        config["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let (code, jwks) = a
        .call_with(Method::GET, "/openid/v1/jwks", Some(&token), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    // The token names the published key.
    use base64::Engine as _;
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert_eq!(header["alg"], "ES256");
}

#[tokio::test]
async fn pods_get_their_account_and_its_token_volume() {
    let a = api().await;
    let pod = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "nginx"}]);
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
    };
    let (code, s) = a
        .call(
            Method::POST,
            &format!("{NS}/pods"),
            Some(pod("early", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    assert_eq!(
        s["message"],
        "pods \"early\" is forbidden: error looking up service account default/default: serviceaccount \"default\" not found"
    );

    account(
        &a,
        "default",
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    )
    .await;
    let p = a.post(&format!("{NS}/pods"), pod("web", json!({}))).await;
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    assert_eq!(p["spec"]["serviceAccount"], "default");
    assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
    let volume = &p["spec"]["volumes"][0];
    let name = volume["name"].as_str().unwrap();
    assert!(name.starts_with("kube-api-access-"), "{volume}");
    assert_eq!(
        volume["projected"]["sources"][1]["configMap"]["name"],
        "kube-root-ca.crt"
    );
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"][0],
        json!({"name": name, "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    );

    account(&a, "quiet", json!({"automountServiceAccountToken": false})).await;
    let p = a
        .post(
            &format!("{NS}/pods"),
            pod("quiet", json!({"serviceAccountName": "quiet"})),
        )
        .await;
    assert!(p["spec"].get("volumes").is_none(), "{p}");
    // The pod's own setting wins over its account's.
    let p = a
        .post(
            &format!("{NS}/pods"),
            pod(
                "loud",
                json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true}),
            ),
        )
        .await;
    assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn every_namespace_gets_the_root_ca() {
    let cluster = Cluster::start().await;
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned();
    tokio::spawn(skiff_control::controllers::root_ca::run(
        cluster.context(),
        Some(ca.clone()),
    ));
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(cluster.client.clone(), "default");
    let read = || async {
        maps.get_opt("kube-root-ca.crt")
            .await
            .unwrap()
            .and_then(|m| m.data)
            .and_then(|d| d.get("ca.crt").cloned())
    };
    eventually("kube-root-ca.crt holds the CA", || async {
        (read().await.as_ref() == Some(&ca)).then_some(())
    })
    .await;

    // Edited: put back; deleted: recreated.
    maps.patch(
        "kube-root-ca.crt",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"ca.crt": "forged"}})),
    )
    .await
    .unwrap();
    eventually("kube-root-ca.crt holds the CA", || async {
        (read().await.as_ref() == Some(&ca)).then_some(())
    })
    .await;
    maps.delete("kube-root-ca.crt", &Default::default())
        .await
        .unwrap();
    eventually("kube-root-ca.crt holds the CA", || async {
        (read().await.as_ref() == Some(&ca)).then_some(())
    })
    .await;

    // A new namespace gets it too.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(cluster.client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    let team: kube::Api<ConfigMap> = kube::Api::namespaced(cluster.client.clone(), "team");
    eventually("kube-root-ca.crt in a new namespace", || async {
        team.get_opt("kube-root-ca.crt").await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_pod_created_with_its_namespace_waits_for_the_default_account() {
    let a = std::sync::Arc::new(api().await);
    a.post(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fresh"}}),
    )
    .await;
    // The pod is sent first; the account (the controller's job) comes while it waits.
    let pod = tokio::spawn({
        let a = a.clone();
        async move {
            a.call(
                Method::POST,
                "/api/v1/namespaces/fresh/pods",
                Some(
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
                ),
            )
            .await
        }
    });
    a.post(
        "/api/v1/namespaces/fresh/serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )
    .await;
    let (code, body) = pod.await.unwrap();
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["serviceAccountName"], "default");
}
