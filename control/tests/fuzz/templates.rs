//! A valid object of every built-in kind, the starting point of the body generators (the
//! corpus of objects the server returned adds to them as the run goes).

use serde_json::{json, Value};

/// A certificate request (PEM, base64) for a user `fz`, made once per run: the key is random,
/// what the server does with the request is not.
static CSR_PEM_BASE64: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fz");
    let pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .expect("a CSR");
    base64::engine::general_purpose::STANDARD.encode(pem)
});

/// A pod spec with every duration and count field the issue lists as overflow-prone.
fn pod_spec() -> Value {
    json!({
        "containers": [{
            "name": "c",
            "image": "busybox",
            "command": ["sleep", "1"],
            "ports": [{"containerPort": 80}],
            "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 10},
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
        }],
        "activeDeadlineSeconds": 60,
        "terminationGracePeriodSeconds": 30,
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
        "restartPolicy": "Always",
    })
}

fn template_spec(labels: &Value) -> Value {
    json!({"metadata": {"labels": labels}, "spec": pod_spec()})
}

/// The body of a `kind` object (without apiVersion, kind and metadata.name).
pub fn body(kind: &str) -> Value {
    let labels = json!({"app": "fz"});
    let selector = json!({"matchLabels": labels});
    match kind {
        "Pod" => json!({"spec": pod_spec()}),
        "Service" => json!({"spec": {
            "selector": labels,
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
        }}),
        "ConfigMap" => json!({"data": {"k": "v"}, "binaryData": {"b": "aGVsbG8="}}),
        "Secret" => json!({"type": "Opaque", "data": {"k": "dg=="}, "stringData": {"s": "v"}}),
        "ServiceAccount" => json!({"automountServiceAccountToken": false}),
        "Node" => {
            json!({"spec": {"podCIDR": "10.244.9.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]}})
        }
        "Endpoints" => {
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]})
        }
        "Event" => json!({
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reason": "Fuzz", "message": "m", "type": "Normal", "count": 1,
            "firstTimestamp": "2020-01-01T00:00:00Z", "lastTimestamp": "2020-01-01T00:00:00Z",
        }),
        "ReplicationController" => {
            json!({"spec": {"replicas": 1, "selector": labels, "template": template_spec(&labels)}})
        }
        "ReplicaSet" => {
            json!({"spec": {"replicas": 1, "selector": selector, "template": template_spec(&labels)}})
        }
        "Deployment" => json!({"spec": {
            "replicas": 1, "selector": selector, "template": template_spec(&labels),
            "progressDeadlineSeconds": 600, "minReadySeconds": 0, "revisionHistoryLimit": 10,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
        }}),
        "DaemonSet" => json!({"spec": {"selector": selector, "template": template_spec(&labels)}}),
        "StatefulSet" => {
            json!({"spec": {"replicas": 1, "serviceName": "s", "selector": selector, "template": template_spec(&labels)}})
        }
        "ControllerRevision" => json!({"revision": 1, "data": {"spec": {}}}),
        "Job" => json!({"spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}},
            "backoffLimit": 6, "activeDeadlineSeconds": 100, "ttlSecondsAfterFinished": 100, "parallelism": 1, "completions": 1,
        }}),
        "CronJob" => json!({"spec": {
            "schedule": "*/5 * * * *", "startingDeadlineSeconds": 100, "timeZone": "Etc/UTC",
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}}},
        }}),
        "EndpointSlice" => json!({
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"port": 80, "protocol": "TCP"}],
        }),
        "Lease" => {
            json!({"spec": {"holderIdentity": "h", "leaseDurationSeconds": 15, "renewTime": "2020-01-01T00:00:00.000000Z"}})
        }
        "PriorityClass" => json!({"value": 1000, "globalDefault": false}),
        "IngressClass" => json!({"spec": {"controller": "example.com/fz"}}),
        "Ingress" => json!({"spec": {
            "defaultBackend": {"service": {"name": "fz", "port": {"number": 80}}},
            "tls": [{"hosts": ["fz.example.com"], "secretName": "fz"}],
            "rules": [{"host": "fz.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "fz", "port": {"name": "http"}}}}]}}],
        }}),
        "Role" | "ClusterRole" => {
            json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
        }
        "RoleBinding" | "ClusterRoleBinding" => json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}],
        }),
        "CertificateSigningRequest" => json!({"spec": {
            "request": &*CSR_PEM_BASE64,
            "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"], "expirationSeconds": 3600,
        }}),
        "TokenReview" => json!({"spec": {"token": "x.y.z"}}),
        "SubjectAccessReview" => {
            json!({"spec": {"user": "alice", "resourceAttributes": {"verb": "get", "resource": "pods"}}})
        }
        "SelfSubjectAccessReview" | "LocalSubjectAccessReview" => {
            json!({"spec": {"user": "alice", "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "default"}}})
        }
        "SelfSubjectRulesReview" => json!({"spec": {"namespace": "default"}}),
        "SelfSubjectReview" => json!({}),
        _ => json!({}),
    }
}
