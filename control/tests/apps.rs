//! Component tests of the DaemonSet and StatefulSet controllers: the API server in process
//! (redb in a tempdir), a `kube::Client` calling its router, and `run_all` (controllers and
//! scheduler) converging. Nodes are written by hand; the tests play the kubelet: they set pod
//! status through pods/status, and a small loop finishes the graceful deletion of pods bound
//! to a node, as the agent would.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use common::Cluster;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::ResourceExt;
use serde_json::{json, Value};
use skiff_control::manager;
use skiff_test_support::eventually;
use tokio_util::sync::CancellationToken;

const HASH: &str = "controller-revision-hash";

async fn cluster() -> Cluster {
    let c = Cluster::start().await;
    tokio::spawn(manager::run_all(c.context()));
    tokio::spawn(finish_deletions(c.client.clone(), c.shutdown.clone()));
    c
}

/// The part of the kubelet these tests need: a bound pod marked for deletion is stopped (at
/// once, nothing runs) and deleted with grace 0.
async fn finish_deletions(client: kube::Client, shutdown: CancellationToken) {
    let all: Api<Pod> = Api::all(client.clone());
    while !shutdown.is_cancelled() {
        if let Ok(list) = all.list(&ListParams::default()).await {
            for p in list.items {
                let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                if !bound || p.metadata.deletion_timestamp.is_none() {
                    continue;
                }
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: p.uid(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let _ = api.delete(&p.name_any(), &params).await;
            }
        }
        // The kubelet's own pace, not a synchronisation: tests wait for conditions.
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

fn node(name: &str, taints: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

async fn add_node(client: &kube::Client, name: &str, taints: Value) {
    let api: Api<Node> = Api::all(client.clone());
    api.create(&PostParams::default(), &node(name, taints))
        .await
        .unwrap();
}

fn template(app: &str, image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": image}]}
    })
}

async fn pods_of(client: &kube::Client, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    api.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Plays the kubelet: the pod runs and is ready (or not).
async fn set_running(client: &kube::Client, name: &str, is_ready: bool) {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if is_ready {"True"} else {"False"},
            "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn event_messages(client: &kube::Client, object: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::default_namespaced(client.clone());
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(object))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

async fn revisions(client: &kube::Client) -> Vec<ControllerRevision> {
    let api: Api<ControllerRevision> = Api::default_namespaced(client.clone());
    let mut list = api.list(&ListParams::default()).await.unwrap().items;
    list.sort_by_key(|r| r.revision);
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_eligible_node_and_follows_nodes() {
    let c = cluster().await;
    for n in ["n1", "n2", "n3"] {
        add_node(&c.client, n, json!([])).await;
    }
    add_node(
        &c.client,
        "tainted",
        json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]),
    )
    .await;
    let api: Api<DaemonSet> = Api::default_namespaced(c.client.clone());
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent", "agent:v1")}
    }))
    .unwrap();
    let ds = api.create(&PostParams::default(), &ds).await.unwrap();
    let strategy = ds.spec.update_strategy.clone().unwrap();
    assert_eq!(
        strategy.type_.as_deref(),
        Some("RollingUpdate"),
        "defaulted"
    );

    // One pod per untainted node, bound there by the scheduler.
    let pods = eventually("3 bound pods and status", || async {
        let pods = pods_of(&c.client, "app=agent").await;
        let status = api.get("agent").await.unwrap().status?;
        let bound = pods.iter().filter(|p| node_of(p).is_some()).count();
        (pods.len() == 3
            && bound == 3
            && status.desired_number_scheduled == 3
            && status.current_number_scheduled == 3
            && status.observed_generation == Some(1))
        .then_some(pods)
    })
    .await;
    let mut nodes: Vec<String> = pods.iter().filter_map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "none on the tainted node");
    let p = &pods[0];
    let spec = p.spec.as_ref().unwrap();
    let term = &spec
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0];
    let field = &term.match_fields.as_ref().unwrap()[0];
    assert_eq!(
        (field.key.as_str(), field.operator.as_str()),
        ("metadata.name", "In")
    );
    assert_eq!(field.values.as_deref(), Some(&[node_of(p).unwrap()][..]));
    let tolerations = spec.tolerations.as_ref().unwrap();
    for (key, effect) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)),
            "{key} {effect} in {tolerations:?}"
        );
    }
    let revs = revisions(&c.client).await;
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0].revision, Some(1));
    assert_eq!(
        revs[0].labels()["app"],
        "agent",
        "kubectl finds it by selector"
    );
    assert_eq!(p.labels()[HASH], revs[0].labels()[HASH]);

    for p in &pods {
        set_running(&c.client, &p.name_any(), true).await;
    }
    eventually("ready and available", || async {
        let s = api.get("agent").await.unwrap().status?;
        (s.number_ready == 3
            && s.number_available == Some(3)
            && s.updated_number_scheduled == Some(3)
            && s.number_misscheduled == 0)
            .then_some(())
    })
    .await;

    // A new node gets a pod; a removed node's pod goes.
    add_node(&c.client, "n4", json!([])).await;
    eventually("a pod on n4", || async {
        let pods = pods_of(&c.client, "app=agent").await;
        pods.iter()
            .any(|p| node_of(p).as_deref() == Some("n4"))
            .then_some(())
    })
    .await;
    let nodes_api: Api<Node> = Api::all(c.client.clone());
    nodes_api
        .delete("n2", &DeleteParams::default())
        .await
        .unwrap();
    eventually("n2's pod gone, desired 3", || async {
        let pods = pods_of(&c.client, "app=agent").await;
        let s = api.get("agent").await.unwrap().status?;
        let on_n2 = pods.iter().any(|p| node_of(p).as_deref() == Some("n2"));
        (!on_n2 && pods.len() == 3 && s.desired_number_scheduled == 3).then_some(())
    })
    .await;

    // Tolerating the taint makes the tainted node eligible.
    api.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}}})),
    )
    .await
    .unwrap();
    eventually("a pod on the tainted node", || async {
        let pods = pods_of(&c.client, "app=agent").await;
        pods.iter()
            .any(|p| node_of(p).as_deref() == Some("tainted"))
            .then_some(())
    })
    .await;

    let created = event_messages(&c.client, "agent", "SuccessfulCreate").await;
    assert!(
        created.iter().all(|m| m.starts_with("Created pod: agent-")),
        "{created:?}"
    );
    assert!(!event_messages(&c.client, "agent", "SuccessfulDelete")
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_rolling_update_respects_max_unavailable_and_rolls_back() {
    let c = cluster().await;
    for n in ["n1", "n2", "n3"] {
        add_node(&c.client, n, json!([])).await;
    }
    let api: Api<DaemonSet> = Api::default_namespaced(c.client.clone());
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent", "agent:v1"),
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &ds).await.unwrap();
    let mark_all_ready = || async {
        let pods = pods_of(&c.client, "app=agent").await;
        for p in &pods {
            if node_of(p).is_some() && !ready(p) && p.metadata.deletion_timestamp.is_none() {
                set_running(&c.client, &p.name_any(), true).await;
            }
        }
    };
    eventually("3 ready pods", || async {
        mark_all_ready().await;
        let s = api.get("agent").await.unwrap().status?;
        (s.number_available == Some(3)).then_some(())
    })
    .await;
    let old_hash = pods_of(&c.client, "app=agent").await[0].labels()[HASH].clone();

    api.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "agent:v2"}]}}}})),
    )
    .await
    .unwrap();
    // Node by node: while one node's pod is replaced, the other two keep an available pod.
    let mut replaced = 0;
    while replaced < 3 {
        let new_pod = eventually("a new pod, not ready yet", || async {
            let pods = pods_of(&c.client, "app=agent").await;
            let per_node_available = |n: &str| {
                pods.iter().any(|p| {
                    node_of(p).as_deref() == Some(n)
                        && ready(p)
                        && p.metadata.deletion_timestamp.is_none()
                })
            };
            let unavailable = ["n1", "n2", "n3"]
                .iter()
                .filter(|n| !per_node_available(n))
                .count();
            assert!(unavailable <= 1, "maxUnavailable 1 exceeded: {pods:?}");
            pods.into_iter()
                .find(|p| p.labels()[HASH] != old_hash && node_of(p).is_some() && !ready(p))
        })
        .await;
        // The controller has created this pod and is waiting for it: no other old pod goes.
        let pods = pods_of(&c.client, "app=agent").await;
        let old_terminating = pods
            .iter()
            .filter(|p| p.labels()[HASH] == old_hash && p.metadata.deletion_timestamp.is_some())
            .count();
        assert_eq!(old_terminating, 0, "{pods:?}");
        set_running(&c.client, &new_pod.name_any(), true).await;
        replaced += 1;
    }
    let status = eventually("rollout complete", || async {
        let d = api.get("agent").await.unwrap();
        let s = d.status?;
        (s.updated_number_scheduled == Some(3)
            && s.number_available == Some(3)
            && s.observed_generation == d.metadata.generation)
            .then_some(s)
    })
    .await;
    assert_eq!(status.desired_number_scheduled, 3);
    let revs = eventually("2 revisions", || async {
        let r = revisions(&c.client).await;
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!((revs[0].revision, revs[1].revision), (Some(1), Some(2)));

    // `kubectl rollout undo` applies revision 1's data as a strategic merge patch.
    let data = revs[0].data.0.clone();
    api.patch("agent", &PatchParams::default(), &Patch::Strategic(data))
        .await
        .unwrap();
    let image = api
        .get("agent")
        .await
        .unwrap()
        .spec
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("agent:v1"));
    eventually("revision 1 becomes revision 3 and pods go back", || async {
        mark_all_ready().await;
        let r = revisions(&c.client).await;
        let back = r
            .iter()
            .any(|r| r.revision == Some(3) && r.labels()[HASH] == old_hash);
        let pods = pods_of(&c.client, "app=agent").await;
        let all_old = pods.len() == 3 && pods.iter().all(|p| p.labels()[HASH] == old_hash);
        (back && r.len() == 2 && all_old).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_and_statefulset_validation_is_a_422() {
    let c = cluster().await;
    let ds_api: Api<DaemonSet> = Api::default_namespaced(c.client.clone());
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("y", "i"),
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}}}
    }))
    .unwrap();
    match ds_api.create(&PostParams::default(), &ds).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
            assert!(
                s.message
                    .contains("`selector` does not match template `labels`"),
                "{}",
                s.message
            );
            assert!(
                s.message.contains("may not be 0 when `maxSurge` is 0"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    let sts_api: Api<StatefulSet> = Api::default_namespaced(c.client.clone());
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("x", "i"),
            "podManagementPolicy": "Sometimes"}
    }))
    .unwrap();
    match sts_api.create(&PostParams::default(), &sts).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(
                s.message.contains("spec.podManagementPolicy"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    // The identity of a set's pods is fixed once created.
    sts_api
        .create(&PostParams::default(), &statefulset("ok", 0, "Parallel", 0))
        .await
        .unwrap();
    let renamed = sts_api
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"serviceName": "other"}})),
        )
        .await;
    match renamed {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(
                s.message.contains("updates to statefulset spec"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    sts_api
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("replicas may change");
}

fn statefulset(name: &str, replicas: i32, policy: &str, partition: i32) -> StatefulSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "serviceName": name, "podManagementPolicy": policy,
            "selector": {"matchLabels": {"app": name}}, "template": template(name, "nginx:1"),
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))
    .unwrap()
}

async fn pod_names(client: &kube::Client, selector: &str) -> Vec<String> {
    let mut names: Vec<String> = pods_of(client, selector)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

async fn hold(client: &kube::Client, name: &str, finalizers: Value) {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_ordered_ready_creates_in_order_recreates_and_scales_down_from_the_top() {
    let c = cluster().await;
    let api: Api<StatefulSet> = Api::default_namespaced(c.client.clone());
    api.create(
        &PostParams::default(),
        &statefulset("web", 3, "OrderedReady", 0),
    )
    .await
    .unwrap();
    let pod_api: Api<Pod> = Api::default_namespaced(c.client.clone());

    for i in 0..3 {
        let name = format!("web-{i}");
        // The controller has seen web-i (status counts it) and must not go further until it
        // is Ready.
        eventually(&format!("{name} created and counted"), || async {
            let s = api.get("web").await.unwrap().status?;
            (s.replicas == i + 1 && s.observed_generation == Some(1)).then_some(())
        })
        .await;
        let names = pod_names(&c.client, "app=web").await;
        let expected: Vec<String> = (0..=i).map(|j| format!("web-{j}")).collect();
        assert_eq!(names, expected, "nothing beyond {name} before it is Ready");
        set_running(&c.client, &name, true).await;
    }
    let web1 = pod_api.get("web-1").await.unwrap();
    let labels = web1.labels();
    assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "web-1");
    assert_eq!(labels["apps.kubernetes.io/pod-index"], "1");
    let spec = web1.spec.clone().unwrap();
    assert_eq!(
        (spec.hostname.as_deref(), spec.subdomain.as_deref()),
        (Some("web-1"), Some("web"))
    );
    let data = spec.volumes.unwrap().into_iter().find(|v| v.name == "data");
    assert!(
        data.is_some_and(|v| v.empty_dir.is_some()),
        "claim stands in as emptyDir"
    );
    let status = eventually("3 ready, rollout complete", || async {
        let s = api.get("web").await.unwrap().status?;
        (s.ready_replicas == Some(3)
            && s.current_replicas == Some(3)
            && s.updated_replicas == Some(3))
        .then_some(s)
    })
    .await;
    assert_eq!(status.current_revision, status.update_revision);
    assert_eq!(labels[HASH], status.update_revision.clone().unwrap());

    // A deleted pod comes back under the same name.
    pod_api
        .delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    let back = eventually("web-1 recreated", || async {
        let p = pod_api.get_opt("web-1").await.unwrap()?;
        (p.uid() != web1.uid()).then_some(p)
    })
    .await;
    assert_eq!(back.name_any(), "web-1");
    set_running(&c.client, "web-1", true).await;
    eventually("3 ready again", || async {
        let s = api.get("web").await.unwrap().status?;
        (s.ready_replicas == Some(3)).then_some(())
    })
    .await;

    // Scale down to 1: web-2 goes first, and web-1 only once web-2 is gone. Finalizers hold
    // the pods in Terminating so the order can be seen.
    for name in ["web-1", "web-2"] {
        hold(&c.client, name, json!(["skiff.test/hold"])).await;
    }
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually("web-2 terminating", || async {
        let p = pod_api.get("web-2").await.unwrap();
        p.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    eventually("the controller saw web-2 terminating", || async {
        let s = api.get("web").await.unwrap().status?;
        (s.observed_generation == Some(2) && s.updated_replicas == Some(2)).then_some(())
    })
    .await;
    let web1_now = pod_api.get("web-1").await.unwrap();
    assert!(
        web1_now.metadata.deletion_timestamp.is_none(),
        "web-1 must wait for web-2"
    );
    hold(&c.client, "web-2", json!(null)).await;
    eventually("web-1 terminating after web-2 is gone", || async {
        let gone = pod_api.get_opt("web-2").await.unwrap().is_none();
        let p = pod_api.get("web-1").await.unwrap();
        (gone && p.metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await;
    hold(&c.client, "web-1", json!(null)).await;
    eventually("only web-0 left", || async {
        let s = api.get("web").await.unwrap().status?;
        let names = pod_names(&c.client, "app=web").await;
        (names == ["web-0"] && s.replicas == 1 && s.ready_replicas == Some(1)).then_some(())
    })
    .await;
    let deleted = event_messages(&c.client, "web", "SuccessfulDelete").await;
    assert!(
        deleted.contains(&"delete Pod web-2 in StatefulSet web successful".to_owned()),
        "{deleted:?}"
    );
    let created = event_messages(&c.client, "web", "SuccessfulCreate").await;
    assert!(
        created.contains(&"create Pod web-0 in StatefulSet web successful".to_owned()),
        "{created:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_parallel_creates_all_and_rolling_update_honours_the_partition() {
    let c = cluster().await;
    let api: Api<StatefulSet> = Api::default_namespaced(c.client.clone());
    api.create(&PostParams::default(), &statefulset("db", 3, "Parallel", 1))
        .await
        .unwrap();
    // Parallel: all three exist before any is ready.
    eventually("3 pods at once", || async {
        (pod_names(&c.client, "app=db").await == ["db-0", "db-1", "db-2"]).then_some(())
    })
    .await;
    let pod_api: Api<Pod> = Api::default_namespaced(c.client.clone());
    let mark_all_ready = || async {
        for p in pods_of(&c.client, "app=db").await {
            if !ready(&p) && p.metadata.deletion_timestamp.is_none() {
                set_running(&c.client, &p.name_any(), true).await;
            }
        }
    };
    let first = eventually("3 ready", || async {
        mark_all_ready().await;
        let s = api.get("db").await.unwrap().status?;
        (s.ready_replicas == Some(3) && s.current_revision == s.update_revision).then_some(s)
    })
    .await;
    let old_rev = first.update_revision.clone().unwrap();
    let db0 = pod_api.get("db-0").await.unwrap();

    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "nginx:2"}]}}}})),
    )
    .await
    .unwrap();
    // db-2 then db-1 are replaced, one at a time, each waiting for the one before to be ready.
    // Pod name -> the order in which it was first seen updated.
    let seen: RefCell<BTreeMap<String, usize>> = RefCell::new(BTreeMap::new());
    let status = eventually("ordinals >= 1 updated", || async {
        let pods = pods_of(&c.client, "app=db").await;
        let s = api.get("db").await.unwrap().status?;
        if s.observed_generation != Some(2) {
            // The status still names the old template's revision.
            return None;
        }
        let new_rev = s.update_revision.clone()?;
        let updating: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.labels()[HASH] == new_rev)
            .collect();
        let not_ready = updating.iter().filter(|p| !ready(p)).count();
        assert!(not_ready <= 1, "one pod at a time: {pods:?}");
        for p in &updating {
            {
                let mut seen = seen.borrow_mut();
                let n = seen.len();
                seen.entry(p.name_any()).or_insert(n);
            }
            if !ready(p) {
                set_running(&c.client, &p.name_any(), true).await;
            }
        }
        (s.observed_generation == Some(2)
            && s.updated_replicas == Some(2)
            && s.ready_replicas == Some(3))
        .then_some(s)
    })
    .await;
    let seen = seen.into_inner();
    assert_eq!(
        seen.get("db-2"),
        Some(&0),
        "the highest ordinal first: {seen:?}"
    );
    assert!(
        seen.contains_key("db-1") && !seen.contains_key("db-0"),
        "{seen:?}"
    );
    let db0_now = pod_api.get("db-0").await.unwrap();
    assert_eq!(
        db0_now.uid(),
        db0.uid(),
        "below the partition nothing is replaced"
    );
    assert_eq!(db0_now.labels()[HASH], old_rev);
    assert_eq!(status.current_revision.as_deref(), Some(old_rev.as_str()));
    assert_ne!(status.update_revision, status.current_revision);
    assert_eq!(revisions(&c.client).await.len(), 2);

    // Partition 0 finishes the rollout.
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    eventually("rollout complete", || async {
        mark_all_ready().await;
        let s = api.get("db").await.unwrap().status?;
        (s.updated_replicas == Some(3)
            && s.ready_replicas == Some(3)
            && s.current_revision == s.update_revision
            && s.current_replicas == Some(3))
        .then_some(())
    })
    .await;
    assert_ne!(pod_api.get("db-0").await.unwrap().uid(), db0.uid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_recreated_after_orphaning_adopts_its_pods() {
    let c = cluster().await;
    let api: Api<StatefulSet> = Api::default_namespaced(c.client.clone());
    api.create(
        &PostParams::default(),
        &statefulset("cache", 2, "Parallel", 0),
    )
    .await
    .unwrap();
    eventually("2 pods", || async {
        (pod_names(&c.client, "app=cache").await == ["cache-0", "cache-1"]).then_some(())
    })
    .await;
    api.delete("cache", &DeleteParams::orphan()).await.unwrap();
    let orphans = eventually("set gone, pods orphaned", || async {
        let gone = api.get_opt("cache").await.unwrap().is_none();
        let pods = pods_of(&c.client, "app=cache").await;
        (gone && pods.len() == 2 && pods.iter().all(|p| p.owner_references().is_empty()))
            .then_some(pods)
    })
    .await;
    let set = api
        .create(
            &PostParams::default(),
            &statefulset("cache", 2, "Parallel", 0),
        )
        .await
        .unwrap();
    eventually("both adopted", || async {
        let pods = pods_of(&c.client, "app=cache").await;
        let adopted = pods.iter().all(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == set.metadata.uid.as_ref() && o.controller == Some(true))
        });
        (pods.len() == 2 && adopted).then_some(())
    })
    .await;
    for p in orphans {
        let now = Api::<Pod>::default_namespaced(c.client.clone())
            .get(&p.name_any())
            .await
            .unwrap();
        assert_eq!(now.uid(), p.uid(), "adopted, not replaced");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_surge_starts_the_new_pod_before_the_old_one_goes() {
    let c = cluster().await;
    for n in ["n1", "n2"] {
        add_node(&c.client, n, json!([])).await;
    }
    let api: Api<DaemonSet> = Api::default_namespaced(c.client.clone());
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "proxy"},
        "spec": {"selector": {"matchLabels": {"app": "proxy"}}, "template": template("proxy", "proxy:v1"),
            "updateStrategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &ds).await.unwrap();
    eventually("2 ready pods", || async {
        for p in pods_of(&c.client, "app=proxy").await {
            if node_of(&p).is_some() && !ready(&p) {
                set_running(&c.client, &p.name_any(), true).await;
            }
        }
        let s = api.get("proxy").await.unwrap().status?;
        (s.number_available == Some(2)).then_some(())
    })
    .await;
    let old_hash = pods_of(&c.client, "app=proxy").await[0].labels()[HASH].clone();
    api.patch(
        "proxy",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "proxy:v2"}]}}}})),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        // A new pod next to an old one: the old one stays until the new one is ready.
        let new_pod = eventually("a surge pod", || async {
            let pods = pods_of(&c.client, "app=proxy").await;
            for n in ["n1", "n2"] {
                let serving = pods.iter().any(|p| {
                    node_of(p).as_deref() == Some(n)
                        && ready(p)
                        && p.metadata.deletion_timestamp.is_none()
                });
                assert!(
                    serving,
                    "maxUnavailable 0 but {n} has no ready pod: {pods:?}"
                );
            }
            pods.into_iter()
                .find(|p| p.labels()[HASH] != old_hash && node_of(p).is_some() && !ready(p))
        })
        .await;
        let node = node_of(&new_pod).unwrap();
        let pods = pods_of(&c.client, "app=proxy").await;
        let old_here = pods
            .iter()
            .find(|p| node_of(p).as_deref() == Some(node.as_str()) && p.labels()[HASH] == old_hash)
            .expect("the old pod is still there");
        assert!(old_here.metadata.deletion_timestamp.is_none());
        set_running(&c.client, &new_pod.name_any(), true).await;
        eventually("the old pod goes once the new one is ready", || async {
            let pods = pods_of(&c.client, "app=proxy").await;
            (!pods.iter().any(|p| p.name_any() == old_here.name_any())).then_some(())
        })
        .await;
    }
    eventually("rollout complete", || async {
        let s = api.get("proxy").await.unwrap().status?;
        let pods = pods_of(&c.client, "app=proxy").await;
        (s.updated_number_scheduled == Some(2) && s.number_available == Some(2) && pods.len() == 2)
            .then_some(())
    })
    .await;
}
