//! A small operator written with the `kube` crate's runtime, as people write them, running
//! against skiff: it owns a CustomResourceDefinition (`WebApp`), reconciles each WebApp into a
//! Deployment with server-side apply (an owner reference, so the Deployment goes with it), and
//! writes the WebApp's status with server-side apply on `/status`. A hand-made change to the
//! Deployment is put back by the next reconcile (the operator applies with force).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{CustomResource, CustomResourceExt, Resource as _, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use skiff_e2e::ControlPlane;
use skiff_test_support::wait::eventually_within;

/// What a WebApp asks for.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "operator.example.com",
    version = "v1",
    kind = "WebApp",
    namespaced,
    status = "WebAppStatus"
)]
pub struct WebAppSpec {
    image: String,
    replicas: i32,
}

/// What the operator reports.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebAppStatus {
    deployment: String,
    replicas: i32,
    observed_generation: i64,
}

const MANAGER: &str = "webapp-operator";

/// The Deployment a WebApp stands for.
fn deployment_of(app: &WebApp) -> serde_json::Value {
    let name = app.name_any();
    let owner = app
        .controller_owner_ref(&())
        .expect("a stored WebApp has a uid");
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "spec": {
            "replicas": app.spec.replicas,
            "selector": {"matchLabels": {"webapp": name}},
            "template": {
                "metadata": {"labels": {"webapp": name}},
                "spec": {"containers": [{"name": "web", "image": app.spec.image}]},
            },
        },
    })
}

async fn reconcile(app: Arc<WebApp>, client: Arc<kube::Client>) -> Result<Action, kube::Error> {
    let ns = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let apply = PatchParams::apply(MANAGER).force();
    let deployments: Api<Deployment> = Api::namespaced((*client).clone(), &ns);
    let deployment = deployments
        .patch(&name, &apply, &Patch::Apply(deployment_of(&app)))
        .await?;
    let status = json!({
        "apiVersion": "operator.example.com/v1",
        "kind": "WebApp",
        "status": {
            "deployment": deployment.name_any(),
            "replicas": deployment.spec.replicas.unwrap_or_default(),
            "observedGeneration": app.meta().generation.unwrap_or_default(),
        },
    });
    let apps: Api<WebApp> = Api::namespaced((*client).clone(), &ns);
    apps.patch_status(&name, &apply, &Patch::Apply(status))
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_app: Arc<WebApp>, _e: &kube::Error, _client: Arc<kube::Client>) -> Action {
    Action::requeue(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_runtime_operator_reconciles_its_resource_with_server_side_apply() {
    let cp = ControlPlane::start();
    let client = cp.client().await;

    // The operator installs its definition, as operators do at start.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "webapps.operator.example.com",
        &PatchParams::apply(MANAGER),
        &Patch::Apply(WebApp::crd()),
    )
    .await
    .expect("applying the CRD");
    eventually_within(
        Duration::from_secs(20),
        "the WebApp CRD to be established",
        || {
            let crds = crds.clone();
            async move {
                let crd = crds.get("webapps.operator.example.com").await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;

    let apps: Api<WebApp> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let operator = tokio::spawn({
        let client = client.clone();
        let apps = apps.clone();
        let deployments = deployments.clone();
        async move {
            Controller::new(apps, watcher::Config::default())
                .owns(deployments, watcher::Config::default())
                .run(reconcile, error_policy, Arc::new(client))
                .for_each(|_| futures::future::ready(()))
                .await;
        }
    });

    let app = WebApp::new(
        "shop",
        WebAppSpec {
            image: "nginx:stable".into(),
            replicas: 2,
        },
    );
    apps.create(&PostParams::default(), &app).await.unwrap();
    let replicas = |want: i32| {
        let deployments = deployments.clone();
        let apps = apps.clone();
        async move {
            let d = deployments.get("shop").await.ok()?;
            let app = apps.get("shop").await.ok()?;
            let status = app.status?;
            (d.spec.replicas == Some(want)
                && status.replicas == want
                && status.observed_generation == app.metadata.generation?)
                .then_some(())
        }
    };
    eventually_within(
        Duration::from_secs(20),
        "the Deployment with 2 replicas and the status",
        || replicas(2),
    )
    .await;

    // The Deployment is the WebApp's, and each field is owned by the manager that applied it.
    let d = deployments.get("shop").await.unwrap();
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("WebApp", Some(true))
    );
    let app = apps.get("shop").await.unwrap();
    let managers: Vec<(String, String, Option<String>)> = app
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
                m.subresource.clone(),
            )
        })
        .collect();
    assert!(
        managers.contains(&(MANAGER.into(), "Apply".into(), Some("status".into()))),
        "{managers:?} in {}",
        serde_json::to_string(&app.metadata).unwrap()
    );

    // A change of the spec reaches the Deployment.
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    eventually_within(Duration::from_secs(20), "3 replicas", || replicas(3)).await;

    // Someone scales the Deployment by hand: the next reconcile takes the field back.
    deployments
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    eventually_within(
        Duration::from_secs(20),
        "the operator to put 3 back",
        || replicas(3),
    )
    .await;

    // Deleting the WebApp takes its Deployment with it (garbage collection by owner).
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    eventually_within(Duration::from_secs(30), "the Deployment to go", || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get_opt("shop")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    operator.abort();
}
