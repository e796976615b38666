//! The harness of the client-side component tests: the API in process on a redb store in a
//! tempdir, driven over its router, and kube clients whose transport is that router.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kube::api::ListParams;
use serde_json::Value;
use skiff_control::apiserver::auth::rbac::{aggregation, bootstrap};
use skiff_control::apiserver::{app, ApiState};
use skiff_control::client::Context;
use skiff_control::store::RedbStore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub mod csr;

pub const TOKEN: &str = "test-token";

pub struct Api {
    pub router: Router,
    pub state: Arc<ApiState>,
    _dir: tempfile::TempDir,
}

pub async fn api() -> Api {
    let a = api_with_service_account_admission().await;
    // No ServiceAccount controller runs here to create the accounts pods need (Kubernetes'
    // integration tests turn the plugin off alike); control/tests/service_accounts.rs runs it.
    a.state.admission.disable("ServiceAccount").unwrap();
    a
}

/// [`api`] with every admission plugin on: a pod needs its ServiceAccount to exist.
#[allow(dead_code, reason = "each test binary uses a part of the harness")]
pub async fn api_with_service_account_admission() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
    let (state, _queue) = ApiState::new(Arc::new(store), TOKEN.into(), CancellationToken::new());
    state.ensure_system_namespaces().await.unwrap();
    rbac_policy(&state).await;
    Api {
        router: app(state.clone()),
        state,
        _dir: dir,
    }
}

/// [`api`] with the namespace controller running (namespace deletion cascades) until
/// `shutdown`: the base of the controller tests, which add the controllers they exercise on
/// [`Api::client`].
pub async fn api_with_namespaces(shutdown: CancellationToken) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
    let (state, queue) = ApiState::new(Arc::new(store), TOKEN.into(), shutdown);
    state.ensure_system_namespaces().await.unwrap();
    // No ServiceAccount controller runs here to create the accounts pods need (Kubernetes'
    // integration tests turn the plugin off alike); control/tests/service_accounts.rs runs it.
    state.admission.disable("ServiceAccount").unwrap();
    rbac_policy(&state).await;
    tokio::spawn(skiff_control::controllers::namespace::run(
        state.clone(),
        queue,
    ));
    Api {
        router: app(state.clone()),
        state,
        _dir: dir,
    }
}

/// The bootstrap RBAC policy, aggregated, and the aggregation loop, as the server starts them.
async fn rbac_policy(state: &Arc<ApiState>) {
    // Custom resources are served as the server serves them (every test gets the follower).
    skiff_control::apiserver::apiextensions::controller::start(state)
        .await
        .unwrap();
    bootstrap::ensure(state).await.unwrap();
    aggregation::aggregate(state).await.unwrap();
    tokio::spawn(aggregation::run(state.clone()));
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(method, uri, "application/json", Some(TOKEN), body)
            .await
    }

    /// A JSON request with another bearer token, or none.
    #[allow(dead_code, reason = "each test binary uses a part of the harness")]
    pub async fn call_with(
        &self,
        method: Method,
        uri: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(method, uri, "application/json", bearer, body)
            .await
    }

    /// A JSON merge patch.
    pub async fn merge_patch(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call_as(
            Method::PATCH,
            uri,
            "application/merge-patch+json",
            Some(TOKEN),
            Some(body),
        )
        .await
    }

    async fn call_as(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        self.call_raw(method, uri, content_type, bearer, body).await
    }

    /// A request with any body (YAML, a malformed or oversized one), decoded as JSON when it
    /// is JSON.
    pub async fn call_raw(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        bearer: Option<&str>,
        body: Body,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type);
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(body).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    /// GETs `uri` as a `meta.k8s.io/v1` Table, as kubectl does.
    pub async fn table(&self, uri: &str) -> Value {
        let req = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(Body::empty())
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    pub async fn get(&self, uri: &str) -> Value {
        self.call(Method::GET, uri, None).await.1
    }

    pub async fn post(&self, uri: &str, body: Value) -> Value {
        let (code, v) = self.call(Method::POST, uri, Some(body)).await;
        assert!(code.is_success(), "POST {uri}: {code} {v}");
        v
    }

    /// A kube client whose transport is this router.
    pub fn client(&self) -> kube::Client {
        let service = self
            .router
            .clone()
            .map_request(|mut req: Request<kube::client::Body>| {
                req.headers_mut().insert(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
                );
                req
            });
        kube::Client::new(service, "default")
    }
}

/// The controller tests' cluster: [`api_with_namespaces`] and a client of it; the tests start
/// the controllers they exercise with [`Cluster::context`]. Dropping it stops them all.
pub struct Cluster {
    pub client: kube::Client,
    pub shutdown: CancellationToken,
    /// The API server (and its store's tempdir), alive as long as the cluster.
    _api: Api,
}

impl Cluster {
    pub async fn start() -> Self {
        let shutdown = CancellationToken::new();
        let api = api_with_namespaces(shutdown.clone()).await;
        Self {
            client: api.client(),
            shutdown,
            _api: api,
        }
    }

    /// The context controllers run in: this cluster's client, stopped with it.
    pub fn context(&self) -> Context {
        Context::new(self.client.clone(), self.shutdown.clone())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The store's revision (a list's resourceVersion is the latest one).
pub async fn revision(client: &kube::Client) -> String {
    let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    ns.list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

/// Once converged the controllers must stop writing: no status or slice update loops. An
/// observation window, not a synchronisation: any write during it fails the test.
pub async fn assert_quiet(client: &kube::Client) {
    let before = revision(client).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        before,
        revision(client).await,
        "controllers kept writing after converging"
    );
}
