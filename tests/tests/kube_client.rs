//! The Rust `kube` client (list + watch) against a real skiff-control: library compatibility.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use skiff_e2e::ControlPlane;

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"suite": "kube-rs"}},
        "data": {"value": value},
    }))
    .unwrap()
}

type Events = futures::stream::BoxStream<'static, Result<Event<ConfigMap>, watcher::Error>>;

async fn next(events: &mut Events) -> Event<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(20), events.try_next())
        .await
        .expect("event in time")
        .expect("watch stream ok")
        .expect("watch stream open")
}

#[tokio::test]
async fn kube_client_lists_and_watches() {
    let cp = ControlPlane::start();
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    api.create(&PostParams::default(), &config_map("first", "1"))
        .await
        .unwrap();
    let listed = api
        .list(&ListParams::default().labels("suite=kube-rs"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.is_some());

    let mut events = watcher::watcher(
        api.clone(),
        watcher::Config::default().labels("suite=kube-rs"),
    )
    .boxed();
    // The initial list arrives as Init, InitApply(first), InitDone.
    assert!(matches!(next(&mut events).await, Event::Init));
    match next(&mut events).await {
        Event::InitApply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("first")),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(next(&mut events).await, Event::InitDone));

    api.create(&PostParams::default(), &config_map("second", "2"))
        .await
        .unwrap();
    match next(&mut events).await {
        Event::Apply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("second")),
        other => panic!("expected Apply(second), got {other:?}"),
    }
    api.patch(
        "second",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"value": "22"}})),
    )
    .await
    .unwrap();
    match next(&mut events).await {
        Event::Apply(cm) => assert_eq!(cm.data.unwrap()["value"], "22"),
        other => panic!("expected Apply(second'), got {other:?}"),
    }
    api.delete("first", &DeleteParams::default()).await.unwrap();
    match next(&mut events).await {
        Event::Delete(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("first")),
        other => panic!("expected Delete(first), got {other:?}"),
    }
}
