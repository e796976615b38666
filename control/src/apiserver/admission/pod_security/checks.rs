//! The Pod Security Standards' checks, one function per upstream check version
//! (kubernetes/pod-security-admission `policy/check_*.go`), with their reasons and details
//! word for word, because users and tools read and match them.
//!
//! The checks read the pod (or pod template) as JSON: it was decoded through the typed Pod
//! already, so the shapes are right, and init, regular and ephemeral containers have the same
//! fields there, which lets one visitor walk all three lists as upstream's does.
//!
//! Evaluation follows upstream's registry: a check applies from its first version on, its
//! newest version not above the one asked for; `latest` (and any version past the newest
//! known) is [`NEWEST_MINOR`]. Baseline evaluates the baseline checks; restricted evaluates
//! the restricted ones and the baseline ones no active restricted check overrides. Results
//! come baseline checks first, then restricted, each sorted by check ID.

use std::collections::BTreeSet;

use serde_json::Value;

use super::policy::{Level, LevelVersion, Version};

/// The newest policy version the checks know: the Kubernetes minor version skiff serves
/// (`discovery::KUBE_MINOR`, kept equal by a test), which upstream's `latest` means too
/// (its evaluator is capped at the API server's emulated version).
pub const NEWEST_MINOR: i64 = 37;

/// The pod a check reads: its metadata (annotations) and spec, either of which may be
/// missing (`Value::Null`).
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    /// `metadata` of the pod or template.
    pub meta: &'a Value,
    /// `spec` of the pod or template.
    pub spec: &'a Value,
}

/// A failed check: the short reason and the detail in parentheses after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// E.g. `allowPrivilegeEscalation != false`.
    pub reason: String,
    /// E.g. `container "c" must set securityContext.allowPrivilegeEscalation=false`.
    pub detail: String,
}

/// The violations of one evaluation, in check order (upstream's `AggregateCheckResult`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict(pub Vec<Violation>);

impl Verdict {
    /// Whether no check failed.
    pub fn allowed(&self) -> bool {
        self.0.is_empty()
    }

    /// The reasons, comma-separated (`ForbiddenReason`), as the namespace check lists pods.
    pub fn reasons(&self) -> String {
        self.0
            .iter()
            .map(|v| v.reason.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Each reason with its detail in parentheses, comma-separated (`ForbiddenDetail`): the
    /// text after `violates PodSecurity "<level>:<version>": `.
    pub fn details(&self) -> String {
        self.0
            .iter()
            .map(|v| {
                if v.detail.is_empty() {
                    v.reason.clone()
                } else {
                    format!("{} ({})", v.reason, v.detail)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

type CheckFn = fn(&PodView<'_>) -> Option<Violation>;

/// One version of a check: from `since` (v1.<since>) until the next version's.
struct Versioned {
    since: i64,
    check: CheckFn,
    /// Baseline checks this restricted one replaces while it applies.
    overrides: &'static [&'static str],
}

struct Check {
    id: &'static str,
    level: Level,
    versions: &'static [Versioned],
}

const fn v(since: i64, check: CheckFn) -> Versioned {
    Versioned {
        since,
        check,
        overrides: &[],
    }
}

const fn over(since: i64, check: CheckFn, overrides: &'static [&'static str]) -> Versioned {
    Versioned {
        since,
        check,
        overrides,
    }
}

/// Every check, baseline ones then restricted ones, each part sorted by ID as upstream's
/// registry orders them (a unit test keeps it so).
const CHECKS: &[Check] = &[
    Check {
        id: "appArmorProfile",
        level: Level::Baseline,
        versions: &[v(0, app_armor_profile)],
    },
    Check {
        id: "capabilities_baseline",
        level: Level::Baseline,
        versions: &[v(0, capabilities_baseline)],
    },
    Check {
        id: "hostNamespaces",
        level: Level::Baseline,
        versions: &[v(0, host_namespaces)],
    },
    Check {
        id: "hostPathVolumes",
        level: Level::Baseline,
        versions: &[v(0, host_path_volumes)],
    },
    Check {
        id: "hostPorts",
        level: Level::Baseline,
        versions: &[v(0, host_ports)],
    },
    Check {
        id: "hostProbesAndHostLifecycle",
        level: Level::Baseline,
        versions: &[v(34, host_probes_and_lifecycle)],
    },
    Check {
        id: "privileged",
        level: Level::Baseline,
        versions: &[v(0, privileged)],
    },
    Check {
        id: "procMount",
        level: Level::Baseline,
        versions: &[v(0, proc_mount), v(35, proc_mount_1_35)],
    },
    Check {
        id: "seLinuxOptions",
        level: Level::Baseline,
        versions: &[v(0, se_linux_options_1_0), v(31, se_linux_options_1_31)],
    },
    Check {
        id: "seccompProfile_baseline",
        level: Level::Baseline,
        versions: &[v(0, seccomp_annotations), v(19, seccomp_baseline)],
    },
    Check {
        id: "sysctls",
        level: Level::Baseline,
        versions: &[
            v(0, sysctls_1_0),
            v(27, sysctls_1_27),
            v(29, sysctls_1_29),
            v(32, sysctls_1_32),
            v(37, sysctls_1_37),
        ],
    },
    Check {
        id: "windowsHostProcess",
        level: Level::Baseline,
        versions: &[v(0, windows_host_process)],
    },
    Check {
        id: "allowPrivilegeEscalation",
        level: Level::Restricted,
        versions: &[
            v(8, allow_privilege_escalation),
            v(25, allow_privilege_escalation_1_25),
        ],
    },
    Check {
        id: "capabilities_restricted",
        level: Level::Restricted,
        versions: &[
            over(22, capabilities_restricted, &["capabilities_baseline"]),
            over(25, capabilities_restricted_1_25, &["capabilities_baseline"]),
        ],
    },
    Check {
        id: "procMount_restricted",
        level: Level::Restricted,
        versions: &[over(35, proc_mount, &["procMount"])],
    },
    Check {
        id: "restrictedVolumes",
        level: Level::Restricted,
        versions: &[over(0, restricted_volumes, &["hostPathVolumes"])],
    },
    Check {
        id: "runAsNonRoot",
        level: Level::Restricted,
        versions: &[v(0, run_as_non_root), v(35, run_as_non_root_1_35)],
    },
    Check {
        id: "runAsUser",
        level: Level::Restricted,
        versions: &[v(23, run_as_user), v(35, run_as_user_1_35)],
    },
    Check {
        id: "seccompProfile_restricted",
        level: Level::Restricted,
        versions: &[
            over(19, seccomp_restricted, &["seccompProfile_baseline"]),
            over(25, seccomp_restricted_1_25, &["seccompProfile_baseline"]),
        ],
    },
];

/// The version of `check` that applies at v1.`minor`, if any.
fn at(check: &Check, minor: i64) -> Option<&Versioned> {
    check.versions.iter().rev().find(|v| v.since <= minor)
}

/// Evaluates a pod against a level and version (upstream's `EvaluatePod` then
/// `AggregateCheckResults`).
pub fn evaluate(lv: LevelVersion, pod: &PodView<'_>) -> Verdict {
    let minor = match lv.version {
        Version::Latest => NEWEST_MINOR,
        Version::Minor(m) => m.min(NEWEST_MINOR),
    };
    let active = |level: Level| {
        CHECKS
            .iter()
            .filter(move |c| c.level == level)
            .filter_map(move |c| at(c, minor).map(|v| (c.id, v)))
    };
    let overridden: Vec<&str> = match lv.level {
        Level::Privileged => return Verdict::default(),
        Level::Baseline => Vec::new(),
        Level::Restricted => active(Level::Restricted)
            .flat_map(|(_, v)| v.overrides.iter().copied())
            .collect(),
    };
    let restricted = (lv.level == Level::Restricted)
        .then(|| active(Level::Restricted))
        .into_iter()
        .flatten();
    let checks = active(Level::Baseline)
        .filter(|(id, _)| !overridden.contains(id))
        .chain(restricted);
    Verdict(checks.filter_map(|(_, v)| (v.check)(pod)).collect())
}

// --- helpers (upstream's policy/helpers.go and visitor.go) --------------------------------------

/// Go's `pluralize`.
fn plural(singular: &'static str, plural: &'static str, count: usize) -> &'static str {
    if count == 1 {
        singular
    } else {
        plural
    }
}

/// Go's `joinQuote`: `"a", "b"` (plain quotes, no escaping, as upstream).
fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let inner: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", inner.join("\", \""))
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase<S: AsRef<str>>(names: &[S]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Init containers, then containers, then ephemeral containers (`visitContainers`).
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .filter_map(move |field| spec.get(field).and_then(Value::as_array))
        .flatten()
}

fn name(container: &Value) -> String {
    str_at(container, "/name").unwrap_or_default().to_owned()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn bool_at(v: &Value, pointer: &str) -> Option<bool> {
    v.pointer(pointer).and_then(Value::as_bool)
}

/// Whether a field holds something (Go's non-nil pointer: present and not null).
fn set(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer).is_some_and(|x| !x.is_null())
}

fn strings_at<'a>(v: &'a Value, pointer: &str) -> impl Iterator<Item = &'a str> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn annotations(meta: &Value) -> impl Iterator<Item = (&String, &str)> {
    meta.get("annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k, v)))
}

fn windows(pod: &PodView<'_>) -> bool {
    str_at(pod.spec, "/os/name") == Some("windows")
}

/// `hostUsers: false`: the pod runs in a user namespace (`relaxPolicyForUserNamespacePod`).
fn user_namespace(pod: &PodView<'_>) -> bool {
    bool_at(pod.spec, "/hostUsers") == Some(false)
}

fn violation(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail: detail.into(),
    })
}

// --- baseline ------------------------------------------------------------------------------------

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

fn app_armor_type_allowed(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

fn app_armor_profile(pod: &PodView<'_>) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    if set(pod.spec, "/securityContext/appArmorProfile") {
        let t = str_at(pod.spec, "/securityContext/appArmorProfile/type").unwrap_or_default();
        if !app_armor_type_allowed(t) {
            setters.push("pod".to_owned());
            bad_values.insert(t.to_owned());
        }
    }
    let mut bad_containers = Vec::new();
    for c in containers(pod.spec) {
        if set(c, "/securityContext/appArmorProfile") {
            let t = str_at(c, "/securityContext/appArmorProfile/type").unwrap_or_default();
            if !app_armor_type_allowed(t) {
                bad_containers.push(name(c));
                bad_values.insert(t.to_owned());
            }
        }
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    let mut bad_annotations: Vec<String> = annotations(pod.meta)
        .filter(|(k, v)| {
            k.starts_with(APPARMOR_ANNOTATION_PREFIX)
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={}", skiff_k8s::go::quote(v)))
        .collect();
    let mut values: Vec<String> = bad_values.into_iter().collect();
    if !bad_annotations.is_empty() {
        bad_annotations.sort();
        setters.push(plural("annotation", "annotations", bad_annotations.len()).to_owned());
        values.extend(bad_annotations);
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        plural(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

/// The capabilities a container runtime grants by default, which baseline lets a container
/// add back.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn capabilities_baseline(pod: &PodView<'_>) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut added = BTreeSet::new();
    for c in containers(pod.spec) {
        let mut valid = true;
        for cap in strings_at(c, "/securityContext/capabilities/add") {
            if !DEFAULT_CAPABILITIES.contains(&cap) {
                valid = false;
                added.insert(cap);
            }
        }
        if !valid {
            bad_containers.push(name(c));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad_containers),
            join_quote(&added.into_iter().collect::<Vec<_>>())
        ),
    )
}

fn host_namespaces(pod: &PodView<'_>) -> Option<Violation> {
    let shared: Vec<&str> = [
        ("hostNetwork", "hostNetwork=true"),
        ("hostPID", "hostPID=true"),
        ("hostIPC", "hostIPC=true"),
    ]
    .into_iter()
    .filter(|(field, _)| pod.spec.get(field).and_then(Value::as_bool) == Some(true))
    .map(|(_, text)| text)
    .collect();
    if shared.is_empty() {
        return None;
    }
    violation("host namespaces", shared.join(", "))
}

fn volumes<'a>(pod: &PodView<'a>) -> impl Iterator<Item = &'a Value> {
    pod.spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn host_path_volumes(pod: &PodView<'_>) -> Option<Violation> {
    let names: Vec<String> = volumes(pod)
        .filter(|v| set(v, "/hostPath"))
        .map(name)
        .collect();
    if names.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            plural("volume", "volumes", names.len()),
            join_quote(&names)
        ),
    )
}

fn host_ports(pod: &PodView<'_>) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    // Sorted as strings, as Go's string set lists them.
    let mut ports = BTreeSet::new();
    for c in containers(pod.spec) {
        let mut valid = true;
        for port in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let host_port = port.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
            if host_port != 0 {
                valid = false;
                ports.insert(host_port.to_string());
            }
        }
        if !valid {
            bad_containers.push(name(c));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            plural("uses", "use", bad_containers.len()),
            plural("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

fn host_probes_and_lifecycle(pod: &PodView<'_>) -> Option<Violation> {
    let mut bad_containers = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in containers(pod.spec) {
        for handler in [
            "/livenessProbe",
            "/readinessProbe",
            "/startupProbe",
            "/lifecycle/postStart",
            "/lifecycle/preStop",
        ] {
            for kind in ["httpGet", "tcpSocket"] {
                let host = str_at(c, &format!("{handler}/{kind}/host")).unwrap_or_default();
                if !host.is_empty() {
                    bad_containers.insert(name(c));
                    hosts.insert(host.to_owned());
                }
            }
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let bad_containers: Vec<String> = bad_containers.into_iter().collect();
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            plural("uses", "use", bad_containers.len()),
            plural(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&hosts.into_iter().collect::<Vec<_>>())
        ),
    )
}

fn privileged(pod: &PodView<'_>) -> Option<Violation> {
    let bad: Vec<String> = containers(pod.spec)
        .filter(|c| bool_at(c, "/securityContext/privileged") == Some(true))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

fn proc_mount(pod: &PodView<'_>) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for c in containers(pod.spec) {
        if let Some(t) = str_at(c, "/securityContext/procMount") {
            if t != "Default" {
                bad.push(name(c));
                types.insert(t);
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&types.into_iter().collect::<Vec<_>>())
        ),
    )
}

fn proc_mount_1_35(pod: &PodView<'_>) -> Option<Violation> {
    if user_namespace(pod) {
        return None;
    }
    proc_mount(pod)
}

const SELINUX_TYPES_1_0: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t"];
const SELINUX_TYPES_1_31: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

fn se_linux_options_1_0(pod: &PodView<'_>) -> Option<Violation> {
    se_linux_options(pod, SELINUX_TYPES_1_0)
}

fn se_linux_options_1_31(pod: &PodView<'_>) -> Option<Violation> {
    se_linux_options(pod, SELINUX_TYPES_1_31)
}

fn se_linux_options(pod: &PodView<'_>, allowed: &[&str]) -> Option<Violation> {
    let mut bad_types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut valid = |holder: &Value| -> bool {
        if !set(holder, "/securityContext/seLinuxOptions") {
            return true;
        }
        let field = |f: &str| {
            str_at(holder, &format!("/securityContext/seLinuxOptions/{f}"))
                .unwrap_or_default()
                .to_owned()
        };
        let mut ok = true;
        let t = field("type");
        if !allowed.contains(&t.as_str()) {
            ok = false;
            bad_types.insert(t);
        }
        if !field("user").is_empty() {
            ok = false;
            user = true;
        }
        if !field("role").is_empty() {
            ok = false;
            role = true;
        }
        ok
    };
    let mut setters = Vec::new();
    if !valid(pod.spec) {
        setters.push("pod".to_owned());
    }
    let bad_containers: Vec<String> = containers(pod.spec)
        .filter(|c| !valid(c))
        .map(name)
        .collect();
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        data.push(format!(
            "{} {}",
            plural("type", "types", bad_types.len()),
            join_quote(&bad_types.into_iter().collect::<Vec<_>>())
        ));
    }
    if user {
        data.push("user may not be set".to_owned());
    }
    if role {
        data.push("role may not be set".to_owned());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

/// Before v1.19 seccomp was set by annotations.
fn seccomp_annotations(pod: &PodView<'_>) -> Option<Violation> {
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let annotation = |key: &str| {
        pod.meta
            .pointer("/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    };
    let mut forbidden = BTreeSet::new();
    let keys = std::iter::once(SECCOMP_POD_ANNOTATION.to_owned()).chain(
        containers(pod.spec).map(|c| format!("{SECCOMP_CONTAINER_ANNOTATION_PREFIX}{}", name(c))),
    );
    for key in keys {
        if let Some(value) = annotation(&key).filter(|v| !valid(v)) {
            forbidden.insert(format!("{key}={}", skiff_k8s::go::quote(value)));
        }
    }
    if forbidden.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "forbidden {} {}",
            plural("annotation", "annotations", forbidden.len()),
            forbidden.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

fn seccomp_type_valid(t: &str) -> bool {
    matches!(t, "Localhost" | "RuntimeDefault")
}

/// Baseline (`require: false`) and restricted (`require: true`, where a container without a
/// profile is bad unless the pod sets a valid one) seccomp checks from v1.19.
fn seccomp_fields(pod: &PodView<'_>, require: bool) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    let mut pod_set = false;
    if set(pod.spec, "/securityContext/seccompProfile") {
        let t = str_at(pod.spec, "/securityContext/seccompProfile/type").unwrap_or_default();
        if seccomp_type_valid(t) {
            pod_set = true;
        } else {
            setters.push("pod".to_owned());
            bad_values.insert(t.to_owned());
        }
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(pod.spec) {
        if set(c, "/securityContext/seccompProfile") {
            let t = str_at(c, "/securityContext/seccompProfile/type").unwrap_or_default();
            if !seccomp_type_valid(t) {
                explicit.push(name(c));
                bad_values.insert(t.to_owned());
            }
        } else if !pod_set {
            implicit.push(name(c));
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&bad_values.into_iter().collect::<Vec<_>>())
            ),
        );
    }
    if require && !implicit.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

fn seccomp_baseline(pod: &PodView<'_>) -> Option<Violation> {
    seccomp_fields(pod, false)
}

/// Sysctls namespaced in the pod and isolated from other pods, by the version that allowed
/// them.
const SYSCTLS_1_0: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
];
const SYSCTLS_1_27: &[&str] = &["net.ipv4.ip_local_reserved_ports"];
const SYSCTLS_1_29: &[&str] = &[
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SYSCTLS_1_32: &[&str] = &["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"];
const SYSCTLS_1_37: &[&str] = &[
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

fn sysctls_1_0(pod: &PodView<'_>) -> Option<Violation> {
    sysctls(pod, &[SYSCTLS_1_0])
}

fn sysctls_1_27(pod: &PodView<'_>) -> Option<Violation> {
    sysctls(pod, &[SYSCTLS_1_0, SYSCTLS_1_27])
}

fn sysctls_1_29(pod: &PodView<'_>) -> Option<Violation> {
    sysctls(pod, &[SYSCTLS_1_0, SYSCTLS_1_27, SYSCTLS_1_29])
}

fn sysctls_1_32(pod: &PodView<'_>) -> Option<Violation> {
    sysctls(
        pod,
        &[SYSCTLS_1_0, SYSCTLS_1_27, SYSCTLS_1_29, SYSCTLS_1_32],
    )
}

fn sysctls_1_37(pod: &PodView<'_>) -> Option<Violation> {
    sysctls(
        pod,
        &[
            SYSCTLS_1_0,
            SYSCTLS_1_27,
            SYSCTLS_1_29,
            SYSCTLS_1_32,
            SYSCTLS_1_37,
        ],
    )
}

fn sysctls(pod: &PodView<'_>, allowed: &[&[&str]]) -> Option<Violation> {
    let forbidden: Vec<&str> = pod
        .spec
        .pointer("/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| str_at(s, "/name").unwrap_or_default())
        .filter(|n| !allowed.iter().any(|set| set.contains(n)))
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    violation("forbidden sysctls", forbidden.join(", "))
}

fn windows_host_process(pod: &PodView<'_>) -> Option<Violation> {
    let host_process = |v: &Value| bool_at(v, "/securityContext/windowsOptions/hostProcess");
    let bad: Vec<String> = containers(pod.spec)
        .filter(|c| host_process(c) == Some(true))
        .map(name)
        .collect();
    let mut setters = Vec::new();
    if host_process(pod.spec) == Some(true) {
        setters.push("pod".to_owned());
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

// --- restricted ----------------------------------------------------------------------------------

fn allow_privilege_escalation(pod: &PodView<'_>) -> Option<Violation> {
    let bad: Vec<String> = containers(pod.spec)
        .filter(|c| bool_at(c, "/securityContext/allowPrivilegeEscalation") != Some(false))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

/// From v1.25 a Windows pod (`spec.os.name: windows`) passes the Linux-only restricted
/// checks: API validation forbids it those fields.
fn allow_privilege_escalation_1_25(pod: &PodView<'_>) -> Option<Violation> {
    if windows(pod) {
        return None;
    }
    allow_privilege_escalation(pod)
}

fn capabilities_restricted(pod: &PodView<'_>) -> Option<Violation> {
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in containers(pod.spec) {
        if !set(c, "/securityContext/capabilities") {
            missing_drop.push(name(c));
            continue;
        }
        if !strings_at(c, "/securityContext/capabilities/drop").any(|d| d == "ALL") {
            missing_drop.push(name(c));
        }
        let mut added_forbidden = false;
        for cap in strings_at(c, "/securityContext/capabilities/add") {
            if cap != "NET_BIND_SERVICE" {
                added_forbidden = true;
                forbidden.insert(cap);
            }
        }
        if added_forbidden {
            adding.push(name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&forbidden.into_iter().collect::<Vec<_>>())
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

fn capabilities_restricted_1_25(pod: &PodView<'_>) -> Option<Violation> {
    if windows(pod) {
        return None;
    }
    capabilities_restricted(pod)
}

/// The volume types a restricted pod may use.
const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The other volume types upstream names (their JSON field names); anything else is
/// `unknown`.
const OTHER_VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

fn restricted_volumes(pod: &PodView<'_>) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for volume in volumes(pod) {
        if RESTRICTED_VOLUME_SOURCES
            .iter()
            .any(|s| set(volume, &format!("/{s}")))
        {
            continue;
        }
        bad.push(name(volume));
        let kind = OTHER_VOLUME_SOURCES
            .iter()
            .find(|s| set(volume, &format!("/{s}")))
            .copied()
            .unwrap_or("unknown");
        types.insert(kind);
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            plural("volume", "volumes", bad.len()),
            join_quote(&bad),
            plural("uses", "use", bad.len()),
            plural(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            join_quote(&types.into_iter().collect::<Vec<_>>())
        ),
    )
}

fn run_as_non_root(pod: &PodView<'_>) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut pod_non_root = false;
    match bool_at(pod.spec, "/securityContext/runAsNonRoot") {
        Some(false) => setters.push("pod".to_owned()),
        Some(true) => pod_non_root = true,
        None => {}
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(pod.spec) {
        match bool_at(c, "/securityContext/runAsNonRoot") {
            Some(false) => explicit.push(name(c)),
            Some(true) => {}
            None if !pod_non_root => implicit.push(name(c)),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

/// From v1.35 a pod in a user namespace (`hostUsers: false`) may run as root inside it.
fn run_as_non_root_1_35(pod: &PodView<'_>) -> Option<Violation> {
    if user_namespace(pod) {
        return None;
    }
    run_as_non_root(pod)
}

fn run_as_user(pod: &PodView<'_>) -> Option<Violation> {
    let root = |v: &Value| {
        v.pointer("/securityContext/runAsUser")
            .and_then(Value::as_i64)
            == Some(0)
    };
    let mut setters = Vec::new();
    if root(pod.spec) {
        setters.push("pod".to_owned());
    }
    let bad: Vec<String> = containers(pod.spec).filter(|c| root(c)).map(name).collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters.join(" and ")),
    )
}

fn run_as_user_1_35(pod: &PodView<'_>) -> Option<Violation> {
    if user_namespace(pod) {
        return None;
    }
    run_as_user(pod)
}

fn seccomp_restricted(pod: &PodView<'_>) -> Option<Violation> {
    seccomp_fields(pod, true)
}

fn seccomp_restricted_1_25(pod: &PodView<'_>) -> Option<Violation> {
    if windows(pod) {
        return None;
    }
    seccomp_restricted(pod)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lv(level: Level, version: Version) -> LevelVersion {
        LevelVersion { level, version }
    }

    fn check(level: Level, version: Version, spec: Value) -> String {
        check_with(level, version, json!({}), spec)
    }

    fn check_with(level: Level, version: Version, meta: Value, spec: Value) -> String {
        let pod = PodView {
            meta: &meta,
            spec: &spec,
        };
        evaluate(lv(level, version), &pod).details()
    }

    fn restricted(spec: Value) -> String {
        check(Level::Restricted, Version::Latest, spec)
    }

    fn baseline(spec: Value) -> String {
        check(Level::Baseline, Version::Latest, spec)
    }

    /// A container that passes restricted, with `extra` merged into its securityContext.
    fn good(name: &str) -> Value {
        json!({"name": name, "image": "i", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}})
    }

    #[test]
    fn checks_are_ordered_as_upstream_registry_orders_them() {
        for level in [Level::Baseline, Level::Restricted] {
            let ids: Vec<&str> = CHECKS
                .iter()
                .filter(|c| c.level == level)
                .map(|c| c.id)
                .collect();
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            assert_eq!(ids, sorted, "{level:?} checks sorted by ID (byte order)");
        }
        let first_restricted = CHECKS
            .iter()
            .position(|c| c.level == Level::Restricted)
            .unwrap();
        assert!(CHECKS[first_restricted..]
            .iter()
            .all(|c| c.level == Level::Restricted));
        for c in CHECKS {
            assert!(
                c.versions.windows(2).all(|w| w[0].since < w[1].since),
                "{}: versions strictly increasing",
                c.id
            );
        }
    }

    #[test]
    fn newest_minor_is_the_served_version() {
        assert_eq!(
            NEWEST_MINOR.to_string(),
            crate::apiserver::discovery::KUBE_MINOR
        );
    }

    #[test]
    fn a_default_pod_violates_restricted_as_kubectl_shows_it() {
        let spec = json!({"containers": [{"name": "c", "image": "nginx",
            "securityContext": {"privileged": true}}]});
        assert_eq!(
            restricted(spec),
            "privileged (container \"c\" must not set securityContext.privileged=true), \
             allowPrivilegeEscalation != false (container \"c\" must set \
             securityContext.allowPrivilegeEscalation=false), unrestricted capabilities \
             (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"c\" must set \
             securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must \
             set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert_eq!(restricted(json!({"containers": [good("c")]})), "");
        // The pod-level fields cover every container.
        assert_eq!(
            restricted(json!({
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Localhost"}},
                "initContainers": [{"name": "i", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
                "containers": [{"name": "c", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            })),
            ""
        );
    }

    #[test]
    fn baseline_names_each_forbidden_thing() {
        let spec = json!({
            "hostNetwork": true, "hostPID": true,
            "securityContext": {
                "sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}],
                "seLinuxOptions": {"type": "spc_t", "user": "root"},
                "seccompProfile": {"type": "Unconfined"},
                "appArmorProfile": {"type": "Unconfined"},
                "windowsOptions": {"hostProcess": true},
            },
            "containers": [
                {"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}, {"containerPort": 1, "hostPort": 10000}],
                 "securityContext": {"capabilities": {"add": ["SYS_ADMIN", "CHOWN", "NET_ADMIN"]}, "procMount": "Unmasked"},
                 "livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}}},
                {"name": "b", "securityContext": {"privileged": true, "seccompProfile": {"type": "Unconfined"}}},
            ],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}],
        });
        let meta = json!({"annotations": {
            "container.apparmor.security.beta.kubernetes.io/a": "unconfined"}});
        assert_eq!(
            check_with(Level::Baseline, Version::Latest, meta, spec),
            "forbidden AppArmor profiles (pod and annotation must not set AppArmor profile type \
             to \"Unconfined\", \"container.apparmor.security.beta.kubernetes.io/a=\"unconfined\"\"), \
             non-default capabilities (container \"a\" must not include \"NET_ADMIN\", \"SYS_ADMIN\" \
             in securityContext.capabilities.add), \
             host namespaces (hostNetwork=true, hostPID=true), \
             hostPath volumes (volume \"root\"), \
             hostPort (container \"a\" uses hostPorts 10000, 80), \
             probe or lifecycle host (container \"a\" uses probe or lifecycle host \"10.0.0.1\"), \
             privileged (container \"b\" must not set securityContext.privileged=true), \
             procMount (container \"a\" must not set securityContext.procMount to \"Unmasked\"), \
             seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type \"spc_t\"; \
             user may not be set), \
             seccompProfile (pod and container \"b\" must not set securityContext.seccompProfile.type \
             to \"Unconfined\"), \
             forbidden sysctls (kernel.msgmax), \
             hostProcess (pod must not set securityContext.windowsOptions.hostProcess=true)"
        );
    }

    #[test]
    fn restricted_volumes_and_capabilities_replace_their_baseline_checks() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN", "NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "n", "nfs": {"server": "s", "path": "/"}},
                        {"name": "c", "configMap": {"name": "x"}}],
        });
        assert_eq!(
            restricted(spec),
            "unrestricted capabilities (container \"c\" must not include \"SYS_ADMIN\" in \
             securityContext.capabilities.add), restricted volume types (volumes \"h\", \"n\" use \
             restricted volume types \"hostPath\", \"nfs\")"
        );
    }

    #[test]
    fn explicit_bad_values_are_reported_before_missing_ones() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": false, "runAsUser": 0},
            "containers": [good("a"), {"name": "b", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": false, "runAsUser": 0, "seccompProfile": {"type": "Unconfined"}}}],
        });
        assert_eq!(
            restricted(spec),
            "runAsNonRoot != true (pod and container \"b\" must not set \
             securityContext.runAsNonRoot=false), runAsUser=0 (pod and container \"b\" must not \
             set runAsUser=0), seccompProfile (container \"b\" must not set \
             securityContext.seccompProfile.type to \"Unconfined\")"
        );
    }

    #[test]
    fn versions_change_what_is_checked() {
        let sysctl = json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}]},
            "containers": [{"name": "c"}]});
        assert_eq!(baseline(sysctl.clone()), "");
        assert_eq!(
            check(Level::Baseline, Version::Minor(24), sysctl.clone()),
            "forbidden sysctls (net.ipv4.tcp_keepalive_time)"
        );
        // A version past the newest known is evaluated as the newest.
        assert_eq!(check(Level::Baseline, Version::Minor(99), sysctl), "");

        // runAsUser joined restricted in v1.23; seccomp fields replaced annotations in v1.19.
        let root = json!({"securityContext": {"runAsUser": 0}, "containers": [good("c")]});
        assert_eq!(
            restricted(root.clone()),
            "runAsUser=0 (pod must not set runAsUser=0)"
        );
        assert_eq!(check(Level::Restricted, Version::Minor(22), root), "");
        let meta =
            json!({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}});
        let plain = json!({"containers": [{"name": "c"}]});
        assert_eq!(
            check_with(Level::Baseline, Version::Minor(18), meta.clone(), plain.clone()),
            "seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod=\"unconfined\")"
        );
        assert_eq!(
            check_with(Level::Baseline, Version::Minor(19), meta, plain),
            ""
        );

        // A pod in a user namespace may run as root from v1.35.
        let userns = json!({"hostUsers": false, "containers": [{"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}, "runAsUser": 0}}]});
        assert_eq!(restricted(userns.clone()), "");
        assert_eq!(
            check(Level::Restricted, Version::Minor(34), userns),
            "runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
             runAsUser=0 (container \"c\" must not set runAsUser=0)"
        );

        // Windows pods pass the Linux-only restricted checks from v1.25.
        let win = json!({"os": {"name": "windows"}, "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c"}]});
        assert_eq!(restricted(win.clone()), "");
        assert!(check(Level::Restricted, Version::Minor(24), win)
            .starts_with("allowPrivilegeEscalation"));
    }

    #[test]
    fn privileged_checks_nothing() {
        let spec = json!({"hostNetwork": true, "containers": [{"name": "c", "securityContext": {"privileged": true}}]});
        assert_eq!(check(Level::Privileged, Version::Latest, spec), "");
    }
}
