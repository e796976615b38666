//! Component tests of the controllers: the API server in process (redb in a tempdir), a
//! `kube::Client` that calls its router directly, and `run_all`'s controllers converging.
//! Pods are not run (no scheduler or agent here): tests set pod status through pods/status to
//! play the kubelet.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_quiet, Cluster};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Endpoints, Event, Pod, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use skiff_control::manager;
use skiff_test_support::eventually_within;

const WAIT: Duration = Duration::from_secs(15);

async fn cluster() -> Cluster {
    let c = Cluster::start().await;
    tokio::spawn(manager::run_all(c.context()));
    c
}

fn template(app: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "kubia:v1",
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    })
}

async fn pods_of(client: &kube::Client, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    api.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

/// Plays the kubelet: the pod runs on `node` with `ip`, ready or not.
async fn set_running(client: &kube::Client, name: &str, ip: &str, ready: bool) {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
            "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_creates_scales_replaces_and_reports_status() {
    let c = cluster().await;
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}
    }))
    .unwrap();
    let rs = rs_api.create(&PostParams::default(), &rs).await.unwrap();
    let uid = rs.uid().unwrap();

    let pods = eventually_within(WAIT, "3 pods", || async {
        let p = pods_of(&c.client, "app=web").await;
        (p.len() == 3).then_some(p)
    })
    .await;
    for p in &pods {
        assert!(p.name_any().starts_with("web-"));
        let owner = &p.owner_references()[0];
        assert_eq!(
            (
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            (uid.as_str(), Some(true), Some(true))
        );
    }
    // No burst duplicates: the count stays at 3 after the controller settles.
    tokio::task::yield_now().await;
    for (i, p) in pods.iter().enumerate() {
        set_running(&c.client, &p.name_any(), &format!("10.1.0.{}", i + 1), true).await;
    }
    eventually_within(WAIT, "status 3 ready", || async {
        let s = rs_api.get("web").await.unwrap().status?;
        (s.replicas == 3
            && s.ready_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.fully_labeled_replicas == Some(3)
            && s.observed_generation == Some(1))
        .then_some(())
    })
    .await;
    assert_eq!(pods_of(&c.client, "app=web").await.len(), 3);

    // A deleted pod is replaced.
    let pod_api: Api<Pod> = Api::default_namespaced(c.client.clone());
    pod_api
        .delete(&pods[0].name_any(), &DeleteParams::default())
        .await
        .unwrap();
    eventually_within(WAIT, "a replacement", || async {
        let p = pods_of(&c.client, "app=web").await;
        (p.len() == 3 && p.iter().all(|p| p.name_any() != pods[0].name_any())).then_some(())
    })
    .await;

    // Scale down to 1: the not-ready replacement goes first, a ready pod stays.
    rs_api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    let left = eventually_within(WAIT, "1 pod", || async {
        let p = pods_of(&c.client, "app=web").await;
        (p.len() == 1).then_some(p)
    })
    .await;
    assert!(
        pods[1..].iter().any(|p| p.name_any() == left[0].name_any()),
        "a ready pod is kept"
    );

    // An orphan matching the selector is adopted (and, being one too many, deleted).
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "web"}},
        "spec": template("web")["spec"]
    }))
    .unwrap();
    pod_api
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    eventually_within(WAIT, "orphan adopted or removed", || async {
        match pod_api.get_opt("orphan").await.unwrap() {
            None => Some(()),
            Some(p) => p
                .owner_references()
                .iter()
                .any(|o| o.uid == uid)
                .then_some(()),
        }
    })
    .await;
    eventually_within(WAIT, "back to 1 pod", || async {
        (pods_of(&c.client, "app=web").await.len() == 1).then_some(())
    })
    .await;

    // Events tell the story.
    let events: Api<Event> = Api::default_namespaced(c.client.clone());
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("web"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "SuccessfulCreate"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "SuccessfulDelete"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_releases_pods_that_stop_matching() {
    let c = cluster().await;
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "rel"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "rel"}}, "template": template("rel")}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    let first = eventually_within(WAIT, "1 pod", || async {
        let p = pods_of(&c.client, "app=rel").await;
        (p.len() == 1).then(|| p[0].name_any())
    })
    .await;
    let pod_api: Api<Pod> = Api::default_namespaced(c.client.clone());
    pod_api
        .patch(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "debug"}}})),
        )
        .await
        .unwrap();
    eventually_within(WAIT, "released and replaced", || async {
        let p = pod_api.get(&first).await.unwrap();
        let replaced = pods_of(&c.client, "app=rel").await.len() == 1;
        (p.owner_references().is_empty() && replaced).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controller_shares_the_logic() {
    let c = cluster().await;
    let api: Api<ReplicationController> = Api::default_namespaced(c.client.clone());
    let rc: ReplicationController = serde_json::from_value(json!({
        "metadata": {"name": "old"},
        "spec": {"replicas": 2, "selector": {"app": "old"}, "template": template("old")}
    }))
    .unwrap();
    api.create(&PostParams::default(), &rc).await.unwrap();
    eventually_within(WAIT, "2 pods and status", || async {
        let pods = pods_of(&c.client, "app=old").await.len();
        let replicas = api.get("old").await.unwrap().status.map(|s| s.replicas);
        (pods == 2 && replicas == Some(2)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_pod_readiness() {
    let c = cluster().await;
    let svc_api: Api<Service> = Api::default_namespaced(c.client.clone());
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    svc_api.create(&PostParams::default(), &svc).await.unwrap();
    let pod_api: Api<Pod> = Api::default_namespaced(c.client.clone());
    for name in ["a", "b"] {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": template("web")["spec"]
        }))
        .unwrap();
        pod_api.create(&PostParams::default(), &p).await.unwrap();
    }
    set_running(&c.client, "a", "10.1.0.1", true).await;
    set_running(&c.client, "b", "10.1.0.2", false).await;

    let slices: Api<EndpointSlice> = Api::default_namespaced(c.client.clone());
    let by_service = ListParams::default().labels("kubernetes.io/service-name=web");
    let slice = eventually_within(WAIT, "a slice with both pods", || async {
        let list = slices.list(&by_service).await.unwrap().items;
        (list.len() == 1 && list[0].endpoints.as_ref().map_or(0, Vec::len) == 2)
            .then(|| list[0].clone())
    })
    .await;
    assert!(slice.name_any().starts_with("web-"));
    assert_eq!(
        slice.labels()["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    let ports = slice.ports.clone().unwrap();
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].port),
        (Some("http"), Some(8080))
    );
    let cond = |ip: &str| {
        slice
            .endpoints
            .iter()
            .flatten()
            .find(|e| e.addresses[0] == ip)
            .and_then(|e| e.conditions.clone())
            .map(|c| (c.ready, c.serving, c.terminating))
    };
    assert_eq!(
        cond("10.1.0.1"),
        Some((Some(true), Some(true), Some(false)))
    );
    assert_eq!(
        cond("10.1.0.2"),
        Some((Some(false), Some(false), Some(false)))
    );

    let ep_api: Api<Endpoints> = Api::default_namespaced(c.client.clone());
    eventually_within(
        WAIT,
        "Endpoints with ready and not-ready addresses",
        || async {
            let ep = ep_api.get_opt("web").await.unwrap()?;
            let subset = ep.subsets?.into_iter().next()?;
            let ready: Vec<String> = subset.addresses?.into_iter().map(|a| a.ip).collect();
            let not_ready: Vec<String> = subset
                .not_ready_addresses?
                .into_iter()
                .map(|a| a.ip)
                .collect();
            (ready == ["10.1.0.1"] && not_ready == ["10.1.0.2"] && subset.ports?[0].port == 8080)
                .then_some(())
        },
    )
    .await;

    // b becomes ready; a relabelled out of the selector leaves.
    set_running(&c.client, "b", "10.1.0.2", true).await;
    pod_api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}})),
        )
        .await
        .unwrap();
    eventually_within(WAIT, "slice holds only b, ready", || async {
        let list = slices.list(&by_service).await.unwrap().items;
        let eps = list.first()?.endpoints.clone()?;
        (eps.len() == 1
            && eps[0].addresses[0] == "10.1.0.2"
            && eps[0].conditions.as_ref()?.ready == Some(true))
        .then_some(())
    })
    .await;
    eventually_within(WAIT, "Endpoints hold only b", || async {
        let ep = ep_api.get("web").await.unwrap();
        let subset = ep.subsets?.into_iter().next()?;
        let ready: Vec<String> = subset.addresses?.into_iter().map(|a| a.ip).collect();
        (ready == ["10.1.0.2"] && subset.not_ready_addresses.is_none()).then_some(())
    })
    .await;
    assert_quiet(&c.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectorless_services_keep_hand_written_slices() {
    let c = cluster().await;
    let svc_api: Api<Service> = Api::default_namespaced(c.client.clone());
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "ext"},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap();
    svc_api.create(&PostParams::default(), &svc).await.unwrap();
    let slices: Api<EndpointSlice> = Api::default_namespaced(c.client.clone());
    let hand: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "ext-1", "labels": {"kubernetes.io/service-name": "ext"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.1"]}],
        "ports": [{"port": 80}]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &hand).await.unwrap();
    // A Service with a selector in the same namespace proves the controller is running: once its
    // slice exists, the controller has had its chance to touch ext's.
    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"selector": {"app": "probe"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    svc_api.create(&PostParams::default(), &web).await.unwrap();
    eventually_within(WAIT, "the probe Service's slice", || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=probe"))
            .await
            .unwrap();
        (!l.items.is_empty()).then_some(())
    })
    .await;
    let all = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=ext"))
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].endpoints.as_ref().unwrap()[0].addresses,
        ["192.0.2.1"]
    );
    let ep_api: Api<Endpoints> = Api::default_namespaced(c.client.clone());
    assert!(ep_api.get_opt("ext").await.unwrap().is_none());
}

/// Plays kubelet for every pod matching `selector`: running and ready. Returns how many.
async fn make_all_ready(client: &kube::Client, selector: &str) -> usize {
    let pods = pods_of(client, selector).await;
    let mut n = 0;
    for (i, p) in pods.iter().enumerate() {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            set_running(
                client,
                &p.name_any(),
                &format!("10.2.{}.{}", i / 200, i % 200 + 1),
                true,
            )
            .await;
        }
        n += 1;
    }
    n
}

fn deployment(name: &str, image: &str, replicas: i32) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]}}
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_a_new_template_and_rolls_back() {
    use k8s_openapi::api::apps::v1::Deployment;
    let c = cluster().await;
    let d_api: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    d_api
        .create(&PostParams::default(), &deployment("kubia", "kubia:v1", 3))
        .await
        .unwrap();
    // Play kubelet until the rollout completes.
    let complete = |rev: &'static str| {
        let (client, d_api) = (c.client.clone(), d_api.clone());
        async move {
            eventually_within(WAIT, "rollout complete", || {
                let (client, d_api) = (client.clone(), d_api.clone());
                async move {
                    make_all_ready(&client, "app=kubia").await;
                    let d = d_api.get("kubia").await.unwrap();
                    let s = d.status.clone()?;
                    let progressing = s
                        .conditions
                        .as_ref()?
                        .iter()
                        .find(|c| c.type_.as_deref() == Some("Progressing"))?
                        .reason
                        .clone();
                    (s.observed_generation == d.metadata.generation
                        && s.updated_replicas == Some(3)
                        && s.replicas == Some(3)
                        && s.available_replicas == Some(3)
                        && progressing.as_deref() == Some("NewReplicaSetAvailable")
                        && d.annotations()
                            .get("deployment.kubernetes.io/revision")
                            .map(String::as_str)
                            == Some(rev))
                    .then_some(())
                }
            })
            .await
        }
    };
    complete("1").await;
    let first = rs_api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(first.len(), 1);
    let hash = first[0].labels()["pod-template-hash"].clone();
    assert_eq!(first[0].name_any(), format!("kubia-{hash}"));

    // Roll to v2 (as `kubectl set image` does) and watch surge stay within 1.
    d_api
        .patch("kubia", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "kubia:v2"}]}}}})))
        .await
        .unwrap();
    let max_pods = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    eventually_within(WAIT, "v2 rolled out", || {
        let (client, d_api, max_pods) = (c.client.clone(), d_api.clone(), max_pods.clone());
        async move {
            let n = make_all_ready(&client, "app=kubia").await;
            max_pods.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
            let d = d_api.get("kubia").await.unwrap();
            let s = d.status?;
            let done = s.updated_replicas == Some(3)
                && s.replicas == Some(3)
                && s.available_replicas == Some(3)
                && d.metadata
                    .annotations?
                    .get("deployment.kubernetes.io/revision")
                    .map(String::as_str)
                    == Some("2");
            done.then_some(())
        }
    })
    .await;
    let max_pods = max_pods.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        max_pods <= 4,
        "maxSurge 1 over 3 replicas, saw {max_pods} pods"
    );
    let sets = rs_api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(sets.len(), 2);
    let old = sets
        .iter()
        .find(|r| r.name_any() == first[0].name_any())
        .unwrap();
    assert_eq!(old.spec.replicas, Some(0));

    // Roll back to revision 1 as `kubectl rollout undo` does: a JSON patch of the template.
    let mut template = serde_json::to_value(old.spec.template.clone().unwrap()).unwrap();
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("pod-template-hash");
    d_api
        .patch(
            "kubia",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/spec/template", "value": template}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    complete("3").await;
    let old = rs_api.get(&first[0].name_any()).await.unwrap();
    assert_eq!(old.annotations()["deployment.kubernetes.io/revision"], "3");
    assert_eq!(
        old.annotations()["deployment.kubernetes.io/revision-history"],
        "1"
    );
    assert_eq!(
        rs_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2,
        "no third ReplicaSet"
    );

    let events: Api<Event> = Api::default_namespaced(c.client.clone());
    let messages: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ScalingReplicaSet"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        messages.contains(&format!("Scaled up replica set kubia-{hash} from 0 to 3")),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_cascades_in_background_foreground_and_orphan_modes() {
    use k8s_openapi::api::apps::v1::Deployment;
    let c = cluster().await;
    let d_api: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    for name in ["bg", "fg"] {
        d_api
            .create(&PostParams::default(), &deployment(name, "kubia:v1", 2))
            .await
            .unwrap();
        eventually_within(WAIT, "2 pods", || async {
            (pods_of(&c.client, &format!("app={name}")).await.len() == 2).then_some(())
        })
        .await;
    }
    // Background (the default): the Deployment goes at once, its ReplicaSet and pods after.
    d_api.delete("bg", &DeleteParams::default()).await.unwrap();
    eventually_within(WAIT, "bg's ReplicaSet and pods collected", || async {
        let rs = rs_api
            .list(&ListParams::default().labels("app=bg"))
            .await
            .unwrap()
            .items;
        (rs.is_empty() && pods_of(&c.client, "app=bg").await.is_empty()).then_some(())
    })
    .await;

    // Foreground: the Deployment stays (finalizer) until its dependents are gone.
    d_api
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    let marked = d_api.get_opt("fg").await.unwrap();
    if let Some(d) = marked {
        assert!(d.metadata.deletion_timestamp.is_some());
    }
    eventually_within(WAIT, "fg and everything under it gone", || async {
        let gone = d_api.get_opt("fg").await.unwrap().is_none();
        let rs = rs_api
            .list(&ListParams::default().labels("app=fg"))
            .await
            .unwrap()
            .items;
        (gone && rs.is_empty() && pods_of(&c.client, "app=fg").await.is_empty()).then_some(())
    })
    .await;

    // Orphan: the ReplicaSet goes, its pods stay, without the reference.
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "keep"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "keep"}}, "template": template("keep")}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    eventually_within(WAIT, "2 pods", || async {
        (pods_of(&c.client, "app=keep").await.len() == 2).then_some(())
    })
    .await;
    rs_api
        .delete("keep", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually_within(WAIT, "keep gone, pods orphaned", || async {
        let gone = rs_api.get_opt("keep").await.unwrap().is_none();
        let pods = pods_of(&c.client, "app=keep").await;
        (gone && pods.len() == 2 && pods.iter().all(|p| p.owner_references().is_empty()))
            .then_some(())
    })
    .await;
}

/// Every namespace gets a `default` ServiceAccount, also one created later, and gets it back
/// when it is deleted (kube-controller-manager's serviceaccount-controller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_has_a_default_service_account() {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let c = cluster().await;
    let default_of = |ns: &str| -> Api<ServiceAccount> { Api::namespaced(c.client.clone(), ns) };
    eventually_within(
        WAIT,
        "default ServiceAccounts of the system namespaces",
        || async {
            let both = default_of("default")
                .get_opt("default")
                .await
                .unwrap()
                .is_some()
                && default_of("kube-system")
                    .get_opt("default")
                    .await
                    .unwrap()
                    .is_some();
            both.then_some(())
        },
    )
    .await;

    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    eventually_within(
        WAIT,
        "the new namespace's default ServiceAccount",
        || async {
            default_of("team-a")
                .get_opt("default")
                .await
                .unwrap()
                .map(|_| ())
        },
    )
    .await;

    let first = default_of("team-a").get("default").await.unwrap().uid();
    default_of("team-a")
        .delete("default", &DeleteParams::default())
        .await
        .unwrap();
    eventually_within(WAIT, "the deleted ServiceAccount to come back", || async {
        let again = default_of("team-a").get_opt("default").await.unwrap();
        again.filter(|sa| sa.uid() != first).map(|_| ())
    })
    .await;
    assert_quiet(&c.client).await;
}

/// The Ingress status writer: an Ingress of skiff's class lists the InternalIPs of the Ready
/// Nodes whose agent runs the Ingress proxy (annotated), follows a node that stops serving,
/// and leaves an Ingress of another class alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_status_lists_the_nodes_whose_proxy_listens() {
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
    use skiff_k8s::ingress::LISTENING_ANNOTATION;

    let c = Cluster::start().await;
    tokio::spawn(skiff_control::controllers::ingress_status::run(c.context()));
    let classes: Api<IngressClass> = Api::all(c.client.clone());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "skiff",
                "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
                "spec": {"controller": "skiff.dev/ingress"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(c.client.clone());
    for (name, ip, listening) in [
        ("n1", "10.0.0.1", true),
        ("n2", "10.0.0.2", true),
        ("n3", "10.0.0.3", false),
    ] {
        let annotations = if listening {
            json!({LISTENING_ANNOTATION: "http=80,https=443"})
        } else {
            json!({})
        };
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": name, "annotations": annotations}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": ip}]}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let ingresses: Api<Ingress> = Api::default_namespaced(c.client.clone());
    let backend = json!({"service": {"name": "web", "port": {"number": 80}}});
    for (name, class) in [("ours", "skiff"), ("theirs", "nginx")] {
        ingresses
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name},
                    "spec": {"ingressClassName": class, "defaultBackend": backend}}))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let ips = |i: &Ingress| -> Vec<String> {
        i.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|l| l.iter().filter_map(|x| x.ip.clone()).collect())
            .unwrap_or_default()
    };
    eventually_within(WAIT, "the listening nodes' addresses", || async {
        let i = ingresses.get("ours").await.unwrap();
        (ips(&i) == ["10.0.0.1", "10.0.0.2"]).then_some(())
    })
    .await;
    // n2's proxy stops: its annotation goes, and so does its address.
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {LISTENING_ANNOTATION: null}}})),
        )
        .await
        .unwrap();
    eventually_within(WAIT, "n2 dropped", || async {
        let i = ingresses.get("ours").await.unwrap();
        (ips(&i) == ["10.0.0.1"]).then_some(())
    })
    .await;
    assert!(ips(&ingresses.get("theirs").await.unwrap()).is_empty());
}
