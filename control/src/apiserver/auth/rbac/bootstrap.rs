//! The bootstrap RBAC policy (Kubernetes' `plugin/pkg/auth/authorizer/rbac/bootstrappolicy`):
//! the default ClusterRoles and ClusterRoleBindings every cluster starts with, labelled
//! `kubernetes.io/bootstrapping=rbac-defaults` and annotated
//! `rbac.authorization.kubernetes.io/autoupdate=true`, plus `system:skiff:controller-manager`
//! for what skiff's own controllers and scheduler do, and what kubeadm adds for nodes that
//! join with a bootstrap token: bootstrappers may ask for node client certificates, nodes may
//! renew their own, and anyone may read the `cluster-info` ConfigMap in `kube-public`.
//!
//! [`ensure`] runs at every start, as the API server's `rbac/bootstrap-roles` post-start hook
//! does: missing objects are created; existing ones are reconciled unless annotated
//! `autoupdate: "false"`: missing labels, annotations, rules, aggregation selectors and
//! subjects are added (nothing is removed), and a binding whose roleRef differs is recreated.

use serde_json::{json, Map, Value};

use crate::apiserver::objects::{DeleteOptions, Subresource, WriteOptions};
use crate::apiserver::{ApiError, ApiState, ResourceDef};

/// The RBAC API group.
const RBAC: &str = "rbac.authorization.k8s.io";
/// The annotation that lets [`ensure`] reconcile an existing object unless it is `"false"`.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// The label every bootstrap object carries.
pub const BOOTSTRAPPING: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const CREATE: &[&str] = &["create"];

/// A resource rule.
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// A resource rule limited to `names`.
fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "resourceNames": names, "verbs": verbs})
}

/// A non-resource URL rule.
fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

/// `eventsRule()`: writing core and events.k8s.io Events.
fn events() -> Value {
    rule(
        &["create", "patch", "update"],
        &["", "events.k8s.io"],
        &["events"],
    )
}

/// The metadata every bootstrap object has, plus `labels`.
fn metadata(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut all: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).into(), json!(v)))
        .collect();
    all.insert(BOOTSTRAPPING.0.into(), json!(BOOTSTRAPPING.1));
    json!({"name": name, "labels": all, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": metadata(name, labels), "rules": rules})
}

/// An aggregated ClusterRole: no rules of its own, those of the roles labelled `selects`.
fn aggregated(name: &str, labels: &[(&str, &str)], selects: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": metadata(name, labels),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {selects: "true"}}]}})
}

const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The bootstrap ClusterRoles, with Kubernetes' rules (in its sorted form).
pub fn cluster_roles() -> Vec<Value> {
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    CREATE,
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(CREATE, &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        aggregated("admin", &[], TO_ADMIN),
        aggregated("edit", &[(TO_ADMIN, "true")], TO_EDIT),
        aggregated("view", &[(TO_EDIT, "true")], TO_VIEW),
        cluster_role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            vec![
                rule(
                    CREATE,
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                rule(READ_WRITE, &[RBAC], &["rolebindings", "roles"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(TO_EDIT, "true")],
            aggregate_to_edit(),
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(TO_VIEW, "true")],
            aggregate_to_view(),
        ),
        // metrics-server's role: whoever may view a namespace may read its usage
        // (`kubectl top`), served here by the API server itself.
        cluster_role(
            "system:aggregated-metrics-reader",
            &[(TO_VIEW, "true"), (TO_EDIT, "true"), (TO_ADMIN, "true")],
            vec![rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
        ),
        // What the API server may do on kubelets (logs, exec, stats), bound to its client
        // certificate's user.
        cluster_role(
            "system:kubelet-api-admin",
            &[],
            vec![
                rule(&["get", "list", "watch", "proxy"], &[""], &["nodes"]),
                rule(
                    &["*"],
                    &[""],
                    &["nodes/log", "nodes/metrics", "nodes/proxy", "nodes/stats"],
                ),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(CREATE, &["authentication.k8s.io"], &["tokenreviews"]),
                rule(CREATE, &["authorization.k8s.io"], &["subjectaccessreviews"]),
            ],
        ),
        // Anyone who can verify a ServiceAccount token may fetch the keys (Kubernetes binds it
        // to every ServiceAccount).
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                rule(&["list", "watch"], &[""], &["endpoints", "services"]),
                rule(READ, &[""], &["nodes"]),
                events(),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        cluster_role("system:kube-scheduler", &[], kube_scheduler()),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            kube_controller_manager(),
        ),
        cluster_role("system:skiff:controller-manager", &[], skiff_controllers()),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(
                &["create", "get", "list", "watch"],
                &[CERTIFICATES],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![rule(
                CREATE,
                &[CERTIFICATES],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![rule(
                CREATE,
                &[CERTIFICATES],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        signer_approver("kube-apiserver-client"),
        signer_approver("kube-apiserver-client-kubelet"),
        signer_approver("kubelet-serving"),
        signer_approver("legacy-unknown"),
    ]
}

/// The certificates API group.
const CERTIFICATES: &str = "certificates.k8s.io";

/// `system:certificates.k8s.io:<signer>-approver`: approving CSRs of `kubernetes.io/<signer>`.
fn signer_approver(signer: &str) -> Value {
    cluster_role(
        &format!("system:certificates.k8s.io:{signer}-approver"),
        &[],
        vec![named(
            &["approve"],
            &[CERTIFICATES],
            &["signers"],
            &[&format!("kubernetes.io/{signer}")],
        )],
    )
}

fn aggregate_to_edit() -> Vec<Value> {
    let pods_sub = ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy"];
    let mut readable = pods_sub.to_vec();
    readable.extend(["secrets", "services/proxy"]);
    let mut pods = vec!["pods"];
    pods.extend(pods_sub);
    vec![
        rule(READ, &[""], &readable),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(WRITE, &[""], &pods),
        rule(CREATE, &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        rule(CREATE, &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "ingresses",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
    ]
}

fn aggregate_to_view() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
            ],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ]
}

fn kube_scheduler() -> Vec<Value> {
    vec![
        events(),
        rule(CREATE, &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
        ),
        rule(READ, &[""], &["nodes"]),
        rule(&["delete", "get", "list", "watch"], &[""], &["pods"]),
        rule(CREATE, &[""], &["bindings", "pods/binding"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(READ, &[""], &["replicationcontrollers", "services"]),
        rule(READ, &["apps", "extensions"], &["replicasets"]),
        rule(READ, &["apps"], &["statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(CREATE, &["authentication.k8s.io"], &["tokenreviews"]),
        rule(CREATE, &["authorization.k8s.io"], &["subjectaccessreviews"]),
        rule(READ, &["storage.k8s.io"], &["csinodes"]),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
    ]
}

fn kube_controller_manager() -> Vec<Value> {
    vec![
        events(),
        rule(CREATE, &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
        ),
        rule(CREATE, &[""], &["secrets", "serviceaccounts"]),
        rule(&["delete"], &[""], &["secrets"]),
        rule(
            &["get"],
            &[""],
            &["configmaps", "namespaces", "secrets", "serviceaccounts"],
        ),
        rule(&["update"], &[""], &["secrets", "serviceaccounts"]),
        rule(CREATE, &["authentication.k8s.io"], &["tokenreviews"]),
        rule(CREATE, &["authorization.k8s.io"], &["subjectaccessreviews"]),
        rule(&["list", "watch"], &["*"], &["*"]),
        rule(CREATE, &[""], &["serviceaccounts/token"]),
    ]
}

/// What skiff's controllers and scheduler (`controllers/`, `scheduler/`, `manager/`) do
/// beyond `system:kube-controller-manager`: the garbage collector reads, patches and deletes
/// any object (which also covers every controller's status, scale, taint and podCIDR writes
/// and their updates); the rest is what they create: pods (ReplicaSet, ReplicationController,
/// DaemonSet, StatefulSet, Job), ReplicaSets and ControllerRevisions (Deployment, DaemonSet,
/// StatefulSet), Jobs (CronJob), Endpoints and EndpointSlices, ServiceAccounts, Events, pod
/// bindings (the scheduler) and the leader-election Lease `kube-system/skiff-control`.
fn skiff_controllers() -> Vec<Value> {
    vec![
        rule(
            &["delete", "get", "list", "patch", "update", "watch"],
            &["*"],
            &["*"],
        ),
        rule(
            CREATE,
            &[""],
            &["endpoints", "events", "pods", "serviceaccounts"],
        ),
        rule(CREATE, &[""], &["bindings", "pods/binding"]),
        rule(CREATE, &["apps"], &["controllerrevisions", "replicasets"]),
        rule(CREATE, &["batch"], &["jobs"]),
        rule(CREATE, &["discovery.k8s.io"], &["endpointslices"]),
        rule(CREATE, &["coordination.k8s.io"], &["leases"]),
        // The root CA publisher.
        rule(CREATE, &[""], &["configmaps"]),
        // The CSR approver (it asks SubjectAccessReviews for the requester) and signer, as
        // Kubernetes' certificate controllers.
        rule(&["approve", "sign"], &["certificates.k8s.io"], &["signers"]),
        rule(CREATE, &["authorization.k8s.io"], &["subjectaccessreviews"]),
        rule(CREATE, &["authentication.k8s.io"], &["tokenreviews"]),
    ]
}

/// A ClusterRoleBinding of the ClusterRole of the same name to `subjects` (kind, name).
fn binding(role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| json!({"kind": kind, "apiGroup": RBAC, "name": name}))
        .collect();
    binding_named(role, role, subjects)
}

fn binding_named(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": metadata(name, &[]),
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
        "subjects": subjects})
}

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    const AUTHENTICATED: (&str, &str) = ("Group", "system:authenticated");
    const KCM: (&str, &str) = ("User", "system:kube-controller-manager");
    vec![
        binding("cluster-admin", &[("Group", "system:masters")]),
        binding("system:discovery", &[AUTHENTICATED]),
        binding("system:basic-user", &[AUTHENTICATED]),
        binding(
            "system:public-info-viewer",
            &[AUTHENTICATED, ("Group", "system:unauthenticated")],
        ),
        binding("system:node-proxier", &[("User", "system:kube-proxy")]),
        binding(
            "system:kubelet-api-admin",
            &[("User", crate::pki::KUBELET_CLIENT_USER)],
        ),
        binding(
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
        binding(
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding("system:kube-controller-manager", &[KCM]),
        binding("system:skiff:controller-manager", &[KCM]),
        // kubeadm's bindings for joining nodes (named after skiff instead of kubeadm): a
        // bootstrap token may ask for a node client certificate, which the approver then
        // grants; a node may ask to renew its own.
        binding_named(
            "skiff:kubelet-bootstrap",
            "system:node-bootstrapper",
            group_subjects(&[BOOTSTRAPPERS]),
        ),
        binding_named(
            "skiff:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            group_subjects(&[BOOTSTRAPPERS]),
        ),
        binding_named(
            "skiff:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            group_subjects(&["system:nodes"]),
        ),
    ]
}

/// The group of every bootstrap token.
const BOOTSTRAPPERS: &str = "system:bootstrappers";

fn group_subjects(groups: &[&str]) -> Vec<Value> {
    groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": RBAC, "name": g}))
        .collect()
}

/// The namespace kubeadm's discovery objects live in.
pub const KUBE_PUBLIC: &str = "kube-public";
/// The ConfigMap a joining node reads before it trusts anything (see
/// `crate::bootstrap::cluster_info`).
pub const CLUSTER_INFO: &str = "cluster-info";
/// kubeadm's name of the Role and RoleBinding that let anyone read `cluster-info`.
const CLUSTER_INFO_READER: &str = "kubeadm:bootstrap-signer-clusterinfo";

/// The bootstrap Roles, by namespace: reading `cluster-info` in `kube-public`.
pub fn roles() -> Vec<Value> {
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": namespaced(metadata(CLUSTER_INFO_READER, &[]), KUBE_PUBLIC),
        "rules": [named(&["get"], &[""], &["configmaps"], &[CLUSTER_INFO])]}),
    ]
}

/// The bootstrap RoleBindings: `cluster-info` is for anyone, before they hold credentials.
pub fn role_bindings() -> Vec<Value> {
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": namespaced(metadata(CLUSTER_INFO_READER, &[]), KUBE_PUBLIC),
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": CLUSTER_INFO_READER},
        "subjects": [{"kind": "User", "apiGroup": RBAC, "name": "system:anonymous"}]}),
    ]
}

fn namespaced(mut metadata: Value, namespace: &str) -> Value {
    metadata["namespace"] = json!(namespace);
    metadata
}

/// Creates the bootstrap policy's missing objects and reconciles the existing ones (see the
/// module documentation), through the same write path as any create or update.
pub async fn ensure(state: &ApiState) -> Result<(), ApiError> {
    for (plural, objects) in [
        ("clusterroles", cluster_roles()),
        ("clusterrolebindings", cluster_role_bindings()),
        ("roles", roles()),
        ("rolebindings", role_bindings()),
    ] {
        let def = state
            .registry
            .find(RBAC, "v1", plural)
            .expect("RBAC kinds are served");
        for expected in objects {
            reconcile(state, &def, expected).await?;
        }
    }
    Ok(())
}

/// Writes attempted per object before a conflicting writer wins.
const ATTEMPTS: usize = 5;

async fn reconcile(state: &ApiState, def: &ResourceDef, expected: Value) -> Result<(), ApiError> {
    let name = expected["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = expected["metadata"]["namespace"]
        .as_str()
        .map(str::to_owned);
    let ns = namespace.as_deref();
    let opts = WriteOptions::default();
    for _ in 0..ATTEMPTS {
        let existing = match state.get(def, ns, &name).await {
            Ok(existing) => existing,
            Err(ApiError::NotFound { .. }) => {
                match state.create(def, ns, expected.clone(), &opts).await {
                    Ok(_) => return Ok(()),
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if existing.pointer(&format!(
            "/metadata/annotations/{}",
            AUTOUPDATE.replace('/', "~1")
        )) == Some(&json!("false"))
        {
            return Ok(());
        }
        let wanted = reconciled(&existing, &expected);
        if wanted == existing {
            return Ok(());
        }
        let binding = def.kind == "ClusterRoleBinding" || def.kind == "RoleBinding";
        if binding && existing.get("roleRef") != expected.get("roleRef") {
            // A roleRef cannot change: the binding is replaced.
            match state
                .delete(def, ns, &name, &DeleteOptions::default())
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let mut fresh = wanted;
            if let Some(meta) = fresh.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.retain(|k, _| {
                    ["name", "namespace", "labels", "annotations"].contains(&k.as_str())
                });
            }
            match state.create(def, ns, fresh, &opts).await {
                Ok(_) => return Ok(()),
                Err(ApiError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        match state
            .update(def, ns, &name, wanted, Subresource::Main, &opts)
            .await
        {
            Ok(_) => return Ok(()),
            Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal(format!(
        "{} {name:?} kept changing while the bootstrap policy was reconciled",
        def.kind
    )))
}

/// `existing` with what `expected` has and it lacks: labels and annotations (existing values
/// win), rules, aggregation selectors and subjects (compared whole), and the expected roleRef.
fn reconciled(existing: &Value, expected: &Value) -> Value {
    let mut out = existing.clone();
    for field in ["labels", "annotations"] {
        let Some(want) = expected["metadata"][field].as_object() else {
            continue;
        };
        let have = out["metadata"]
            .as_object_mut()
            .expect("stored objects have metadata")
            .entry(field)
            .or_insert_with(|| json!({}));
        if let Some(have) = have.as_object_mut() {
            for (k, v) in want {
                have.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    add_missing(&mut out, expected, "/rules");
    add_missing(&mut out, expected, "/aggregationRule/clusterRoleSelectors");
    add_missing(&mut out, expected, "/subjects");
    if let Some(role_ref) = expected.get("roleRef") {
        out["roleRef"] = role_ref.clone();
    }
    out
}

/// Appends to the array at `pointer` of `out` the items of `expected`'s that it lacks.
fn add_missing(out: &mut Value, expected: &Value, pointer: &str) {
    let Some(want) = expected.pointer(pointer).and_then(Value::as_array) else {
        return;
    };
    let have: Vec<Value> = out
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let missing: Vec<Value> = want.iter().filter(|w| !have.contains(w)).cloned().collect();
    if missing.is_empty() {
        return;
    }
    let mut all = have;
    all.extend(missing);
    // Create the path's parents (an aggregationRule dropped by hand).
    let (parent, last) = pointer.rsplit_once('/').expect("pointers start with /");
    let mut at = &mut *out;
    for part in parent.split('/').skip(1) {
        if !at.get(part).is_some_and(Value::is_object) {
            at[part] = json!({});
        }
        at = &mut at[part];
    }
    at[last] = Value::Array(all);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::kinds::testing::{defaulted, validate};

    #[test]
    fn every_bootstrap_object_is_valid_and_labelled() {
        let all = cluster_roles()
            .into_iter()
            .chain(cluster_role_bindings())
            .chain(roles())
            .chain(role_bindings());
        for object in all {
            let kind = object["kind"].as_str().unwrap().to_owned();
            let object = defaulted(RBAC, &kind, object);
            assert_eq!(validate(RBAC, &kind, &object), [], "{object}");
            assert_eq!(
                object["metadata"]["labels"][BOOTSTRAPPING.0],
                BOOTSTRAPPING.1
            );
            assert_eq!(object["metadata"]["annotations"][AUTOUPDATE], "true");
        }
        let bindings = cluster_role_bindings();
        let roles = cluster_roles();
        for b in &bindings {
            let role = b["roleRef"]["name"].as_str().unwrap();
            assert!(
                roles.iter().any(|r| r["metadata"]["name"] == role),
                "{role}"
            );
        }
    }

    #[test]
    fn reconciling_adds_what_is_missing_and_keeps_the_rest() {
        let expected = binding("x", &[("User", "a"), ("User", "b")]);
        let mut existing = binding("x", &[("User", "b"), ("User", "c")]);
        existing["metadata"]["labels"] = json!({"kubernetes.io/bootstrapping": "mine"});
        existing["metadata"]["annotations"] = json!({});
        let got = reconciled(&existing, &expected);
        let names: Vec<&str> = got["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "c", "a"]);
        assert_eq!(got["metadata"]["labels"][BOOTSTRAPPING.0], "mine");
        assert_eq!(got["metadata"]["annotations"][AUTOUPDATE], "true");

        let expected = aggregated("r", &[], "k");
        let mut existing = expected.clone();
        existing.as_object_mut().unwrap().remove("aggregationRule");
        existing["rules"] = json!([rule(READ, &[""], &["pods"])]);
        let got = reconciled(&existing, &expected);
        assert_eq!(got["aggregationRule"], expected["aggregationRule"]);
        assert_eq!(got["rules"], existing["rules"]);
        assert_eq!(reconciled(&got, &expected), got);
    }
}
