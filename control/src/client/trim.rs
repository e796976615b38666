//! What the shared caches leave out of the objects they keep, as client-go's
//! `SharedIndexInformer.SetTransform` lets a process drop fields it never reads (kube-scheduler
//! drops `managedFields` that way).
//!
//! Pods are most of a control plane's cache: with 10 000 pods the typed Pod cache was the
//! largest single part of skiff-control's heap, and a Pod admitted with its ServiceAccount
//! token volume carries a `Volume` struct (k8s-openapi keeps every volume source inline) that
//! no controller and not the scheduler reads. The cached Pod keeps what they do read:
//! metadata (owners, labels, deletion), status, node name and scheduling constraints,
//! hostname and subdomain, and per container its name, image, ports, resources and restart
//! policy (a sidecar's resources count while it runs).
//!
//! The rule this puts on the controllers: a cached Pod is for reading those fields. A pod is
//! written with patches (as every controller here does), never by sending the cached object
//! back, which would drop what the cache left out. A consumer that needs a dropped field reads
//! the pod from the API, or the field is taken off the list below.

use std::any::Any;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::informers::Kind;

/// Drops from `obj` what no cache reader uses.
pub fn trim<K: Kind>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(pod) = (obj as &mut dyn Any).downcast_mut::<Pod>() {
        trim_pod(pod);
    }
}

fn trim_pod(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    spec.volumes = None;
    spec.ephemeral_containers = None;
    spec.security_context = None;
    spec.dns_config = None;
    spec.host_aliases = None;
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        trim_container(c);
    }
}

fn trim_container(c: &mut Container) {
    c.command = None;
    c.args = None;
    c.env = None;
    c.env_from = None;
    c.volume_mounts = None;
    c.volume_devices = None;
    c.liveness_probe = None;
    c.readiness_probe = None;
    c.startup_probe = None;
    c.lifecycle = None;
    c.security_context = None;
    c.working_dir = None;
    c.termination_message_path = None;
    c.termination_message_policy = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d", "labels": {"app": "a"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": "u", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {
                "nodeName": "n1", "hostname": "h", "subdomain": "s",
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {"podAntiAffinity": {}},
                "overhead": {"cpu": "10m"},
                "securityContext": {"runAsUser": 1000},
                "volumes": [{"name": "kube-api-access-x", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
                "initContainers": [{"name": "side", "image": "i", "restartPolicy": "Always",
                    "resources": {"requests": {"cpu": "50m"}}, "env": [{"name": "A"}]}],
                "containers": [{"name": "c", "image": "kubia:v1",
                    "command": ["/app"], "env": [{"name": "A", "value": "1"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                    "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "kubia:v1", "imageID": "",
                    "ready": true, "restartCount": 2}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_pod_keeps_what_controllers_and_the_scheduler_read() {
        let mut trimmed = pod();
        trim(&mut trimmed);
        let full = pod();
        // Everything the readers use is as it was.
        let (t, f) = (trimmed.spec.as_ref().unwrap(), full.spec.as_ref().unwrap());
        assert_eq!(trimmed.metadata.labels, full.metadata.labels);
        assert_eq!(
            trimmed.metadata.owner_references,
            full.metadata.owner_references
        );
        assert_eq!(trimmed.status, full.status);
        assert_eq!(t.node_name, f.node_name);
        assert_eq!((&t.hostname, &t.subdomain), (&f.hostname, &f.subdomain));
        assert_eq!(t.node_selector, f.node_selector);
        assert_eq!(t.tolerations, f.tolerations);
        assert_eq!(t.affinity, f.affinity);
        assert_eq!(t.overhead, f.overhead);
        for (t, f) in [
            (&t.containers[0], &f.containers[0]),
            (
                &t.init_containers.as_ref().unwrap()[0],
                &f.init_containers.as_ref().unwrap()[0],
            ),
        ] {
            assert_eq!(t.name, f.name);
            assert_eq!(t.image, f.image);
            assert_eq!(t.ports, f.ports);
            assert_eq!(t.resources, f.resources);
            assert_eq!(t.restart_policy, f.restart_policy);
        }
        // What none of them reads is gone.
        assert!(trimmed.metadata.managed_fields.is_none());
        assert!(t.volumes.is_none() && t.security_context.is_none());
        let c = &t.containers[0];
        assert!(c.env.is_none() && c.command.is_none() && c.volume_mounts.is_none());
        assert!(c.readiness_probe.is_none());
        assert!(t.init_containers.as_ref().unwrap()[0].env.is_none());
    }

    #[test]
    fn other_kinds_lose_only_managed_fields() {
        let svc = serde_json::json!({"metadata": {"name": "s",
            "managedFields": [{"manager": "kubectl"}]},
            "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}});
        let mut trimmed: Service = serde_json::from_value(svc.clone()).unwrap();
        trim(&mut trimmed);
        let mut expected: Service = serde_json::from_value(svc).unwrap();
        expected.metadata.managed_fields = None;
        assert_eq!(trimmed, expected);
    }
}
