//! PodSecurity admission (kube-apiserver's `PodSecurity` plugin, from
//! kubernetes/pod-security-admission `admission/admission.go`): the Pod Security Standards
//! by namespace labels.
//!
//! - A namespace's labels `pod-security.kubernetes.io/{enforce,audit,warn}` choose a level
//!   (`privileged`, `baseline`, `restricted`) per mode, and `...-version` pins the checks to
//!   `v1.X` (default `latest`). Unlabelled modes take the cluster default
//!   (`--pod-security-default`, privileged as in Kubernetes). Namespaces in
//!   `--pod-security-exempt-namespaces` are not checked.
//! - Pods: `enforce` refuses a create (403, `pods "x" is forbidden: violates PodSecurity
//!   "restricted:latest": ...`), and an update only when it changes what the checks read
//!   beyond the mutable fields (a container's image, a container added); `warn` adds a
//!   `Warning` (`would violate PodSecurity ...`); `audit` would annotate the audit event,
//!   and skiff, which keeps no audit log, logs that annotation at info instead.
//! - Workloads (the pod template of ReplicationControllers, PodTemplates, Deployments,
//!   ReplicaSets, StatefulSets, DaemonSets, Jobs and CronJobs): warn and audit only, never
//!   enforce; their pods are checked when created.
//! - Namespaces: invalid labels are refused (422); raising the enforce level answers
//!   warnings naming the existing pods that would be refused (at most
//!   [`NAMESPACE_MAX_PODS`] checked, for at most [`NAMESPACE_CHECK_TIMEOUT`]).
//!
//! Not carried over: user and RuntimeClass exemptions (skiff has no AdmissionConfiguration
//! file, and no RuntimeClasses), and metrics.

pub mod checks;
pub mod policy;

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use serde_json::Value;

use self::checks::PodView;
use self::policy::{Level, LevelVersion, Policy};
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::objects::Subresource;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::ApiState;
use crate::store::{keys, ListRequest};

/// At most this many existing pods are checked when a namespace's enforce level rises
/// (upstream's `defaultNamespaceMaxPodsToCheck`).
pub const NAMESPACE_MAX_PODS: usize = 3000;
/// The time that check may take (upstream's `defaultNamespacePodCheckTimeout`).
pub const NAMESPACE_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Pods read per store page during that check.
const PAGE: usize = 500;

/// The plugin's configuration: kube-apiserver reads it from a `PodSecurityConfiguration` in
/// its AdmissionConfiguration file; skiff from two flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The policy of modes a namespace's labels do not set (`--pod-security-default`).
    pub defaults: Policy,
    /// Namespaces not checked (`--pod-security-exempt-namespaces`).
    pub exempt_namespaces: Vec<String>,
}

impl Default for Config {
    /// Privileged for every mode, as Kubernetes, with `kube-system` exempt (its system pods
    /// need host access whatever the default becomes).
    fn default() -> Self {
        Self {
            defaults: Policy::uniform(LevelVersion::PRIVILEGED),
            exempt_namespaces: vec!["kube-system".to_owned()],
        }
    }
}

/// An invalid `--pod-security-*` flag value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--pod-security-default` is not `LEVEL[:VERSION]`.
    #[error("--pod-security-default: {0}")]
    Default(String),
    /// An exempt namespace is not a namespace name, or is listed twice.
    #[error("--pod-security-exempt-namespaces: {0}")]
    Exemption(String),
}

impl Config {
    /// Builds the configuration from the flags' values, checked as upstream validates its
    /// configuration file: a known level and version, exemptions that are DNS labels, once
    /// each.
    pub fn from_flags(default: &str, exempt: &[String]) -> Result<Config, ConfigError> {
        let defaults = LevelVersion::parse(default).map_err(ConfigError::Default)?;
        let mut seen = Vec::new();
        // An empty value (`--pod-security-exempt-namespaces=`) exempts nothing.
        for ns in exempt.iter().filter(|ns| !ns.is_empty()) {
            let errors = skiff_k8s::names::dns_label_errors(ns);
            if !errors.is_empty() {
                let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
                return Err(ConfigError::Exemption(format!(
                    "{ns:?}: {}",
                    why.join(", ")
                )));
            }
            if seen.contains(ns) {
                return Err(ConfigError::Exemption(format!("{ns:?}: Duplicate value")));
            }
            seen.push(ns.clone());
        }
        Ok(Config {
            defaults: Policy::uniform(defaults),
            exempt_namespaces: seen,
        })
    }
}

/// The plugin's state in the API server.
#[derive(Debug, Default)]
pub struct PodSecurity {
    config: RwLock<Config>,
}

impl PodSecurity {
    /// Replaces the configuration (at start, from the flags).
    pub fn configure(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where a kind keeps the pod it makes (upstream's `DefaultPodSpecExtractor`), by group and
/// resource as admission plugins see requests: `""` for a pod itself.
fn pod_template(group: &str, resource: &str) -> Option<&'static str> {
    match (group, resource) {
        ("", "pods") => Some(""),
        ("", "podtemplates") => Some("/template"),
        ("", "replicationcontrollers")
        | ("apps", "replicasets" | "deployments" | "statefulsets" | "daemonsets")
        | ("batch", "jobs") => Some("/spec/template"),
        ("batch", "cronjobs") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Runs the plugin on a create (`old` is `None`) or update of `new` through `sub`, after
/// validation: refuses it, or returns the warnings for the `Warning` header.
pub async fn admit(
    state: &ApiState,
    def: &ResourceDef,
    sub: Subresource,
    old: Option<&Value>,
    new: &Value,
) -> Result<Vec<String>, ApiError> {
    // Pod subresources (status, binding, ...) and workloads' (scale, status) are not checked;
    // nor are namespaces' (finalize, status).
    if !state.admission.pod_security_enabled() || sub != Subresource::Main {
        return Ok(Vec::new());
    }
    let config = state.admission.pod_security.config();
    if def.group.is_empty() && def.plural == "namespaces" {
        return admit_namespace(state, &config, old, new).await;
    }
    let Some(template) = pod_template(&def.group, &def.plural) else {
        return Ok(Vec::new());
    };
    let meta_str = |field: &str| {
        new.pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let request = Request {
        resource: &def.plural,
        namespace: meta_str("namespace"),
        name: meta_str("name"),
    };
    if config
        .exempt_namespaces
        .iter()
        .any(|n| n == request.namespace)
    {
        return Ok(Vec::new());
    }
    let namespace = state
        .store
        .get(&keys::NAMESPACES.key(None, request.namespace))
        .await;
    let enforce = template.is_empty();
    let namespace = match namespace {
        Ok(Some(ns)) => ns,
        failed => {
            tracing::error!(
                namespace = request.namespace,
                ?failed,
                "PodSecurity: reading the namespace"
            );
            // A pod's policy must be known (upstream answers an internal error); a workload
            // is let through, as upstream does, since its pods are checked anyway.
            return if enforce {
                Err(ApiError::Internal(format!(
                    "failed to lookup namespace {}",
                    skiff_k8s::go::quote(request.namespace)
                )))
            } else {
                Ok(Vec::new())
            };
        }
    };
    let (policy, errors) = policy::from_labels(
        namespace
            .pointer("/metadata/labels")
            .and_then(Value::as_object),
        config.defaults,
    );
    let privileged = if enforce {
        policy.fully_privileged()
    } else {
        policy.warn.level == Level::Privileged && policy.audit.level == Level::Privileged
    };
    if errors.is_empty() && privileged {
        return Ok(Vec::new());
    }
    if let (true, Some(old)) = (enforce, old) {
        if !significant_pod_update(old, new) {
            return Ok(Vec::new());
        }
    }
    let object = if enforce {
        Some(new)
    } else {
        new.pointer(template)
    };
    let Some(object) = object.filter(|o| !o.is_null()) else {
        return Ok(Vec::new());
    };
    let pod = PodView {
        meta: object.get("metadata").unwrap_or(&Value::Null),
        spec: object.get("spec").unwrap_or(&Value::Null),
    };
    evaluate(&request, policy, &errors, &pod, enforce)
}

/// What the audit and error lines name.
struct Request<'a> {
    resource: &'a str,
    namespace: &'a str,
    name: &'a str,
}

/// Upstream's `EvaluatePod`: enforce (pods only), then audit, then warn unless refused;
/// a level and version evaluated once.
fn evaluate(
    request: &Request<'_>,
    policy: Policy,
    errors: &[FieldError],
    pod: &PodView<'_>,
    enforce: bool,
) -> Result<Vec<String>, ApiError> {
    let Request {
        resource,
        namespace,
        name,
    } = *request;
    // Audit annotations: kube-apiserver attaches them to the request's audit event; skiff
    // has no audit log, so they are logged at info with the same keys and text.
    if !errors.is_empty() {
        let causes: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        tracing::info!(
            resource,
            namespace,
            name,
            "audit annotation error: Failed to parse policy: {}",
            crate::apiserver::auth::go_format::aggregate(&causes)
        );
    }
    let mut results: HashMap<LevelVersion, checks::Verdict> = HashMap::new();
    let mut verdict = |lv: LevelVersion| {
        results
            .entry(lv)
            .or_insert_with(|| checks::evaluate(lv, pod))
            .clone()
    };
    let mut refusal = None;
    if enforce {
        // Upstream annotates every audit event with it; a log line per pod is too many at
        // info.
        tracing::debug!(
            resource,
            namespace,
            name,
            "audit annotation pod-security.kubernetes.io/enforce-policy: {}",
            policy.enforce
        );
        let result = verdict(policy.enforce);
        if !result.allowed() {
            refusal = Some(ApiError::Denied {
                group: String::new(),
                resource: resource.to_owned(),
                name: name.to_owned(),
                message: format!(
                    "violates PodSecurity {}: {}",
                    skiff_k8s::go::quote(&policy.enforce.to_string()),
                    result.details()
                ),
            });
        }
    }
    let audit = verdict(policy.audit);
    if !audit.allowed() {
        tracing::info!(
            resource,
            namespace,
            name,
            "audit annotation pod-security.kubernetes.io/audit-violations: {}",
            would_violate(policy.audit, &audit)
        );
    }
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    let warn = verdict(policy.warn);
    Ok(if warn.allowed() {
        Vec::new()
    } else {
        vec![would_violate(policy.warn, &warn)]
    })
}

fn would_violate(lv: LevelVersion, verdict: &checks::Verdict) -> String {
    format!(
        "would violate PodSecurity {}: {}",
        skiff_k8s::go::quote(&lv.to_string()),
        verdict.details()
    )
}

/// Whether a pod update changes what the checks read beyond what may change without them
/// (upstream's `isSignificantPodUpdate`: container counts, a container's image, an
/// ephemeral container added or changed).
fn significant_pod_update(old: &Value, new: &Value) -> bool {
    let list = |pod: &Value, field: &str| -> Vec<Value> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let image = |c: &Value| c.get("image").cloned();
    for field in ["containers", "initContainers"] {
        let (a, b) = (list(new, field), list(old, field));
        if a.len() != b.len() || a.iter().zip(&b).any(|(n, o)| image(n) != image(o)) {
            return true;
        }
    }
    let old_ephemeral = list(old, "ephemeralContainers");
    list(new, "ephemeralContainers").iter().any(|c| {
        match old_ephemeral
            .iter()
            .find(|o| o.get("name") == c.get("name"))
        {
            None => true,
            Some(o) => image(o) != image(c),
        }
    })
}

/// Namespace writes: labels must be valid (unless an update keeps the same invalid ones);
/// a raised enforce level is tried on the existing pods.
async fn admit_namespace(
    state: &ApiState,
    config: &Config,
    old: Option<&Value>,
    new: &Value,
) -> Result<Vec<String>, ApiError> {
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let labels = |ns: &Value| {
        ns.pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
    };
    let new_labels = labels(new);
    let (new_policy, new_errors) = policy::from_labels(new_labels.as_ref(), config.defaults);
    let invalid = |causes: Vec<FieldError>| ApiError::Invalid {
        kind: "Namespace".into(),
        name: name.into(),
        causes,
    };
    let exempt = config.exempt_namespaces.iter().any(|n| n == name);
    let exempt_warning = || {
        exempt_namespace_warning(name, &new_policy, new_labels.as_ref(), config)
            .into_iter()
            .collect::<Vec<_>>()
    };
    let Some(old) = old else {
        if !new_errors.is_empty() {
            return Err(invalid(new_errors));
        }
        return Ok(if exempt { exempt_warning() } else { Vec::new() });
    };
    let (old_policy, old_errors) = policy::from_labels(labels(old).as_ref(), config.defaults);
    if !new_errors.is_empty() && new_errors != old_errors {
        return Err(invalid(new_errors));
    }
    let (enforce, was) = (new_policy.enforce, old_policy.enforce);
    if enforce == was
        || enforce.level == Level::Privileged
        || (enforce.version == was.version && enforce.level <= was.level)
    {
        return Ok(Vec::new());
    }
    if exempt {
        return Ok(exempt_warning());
    }
    Ok(existing_pods(state, name, enforce).await)
}

/// Upstream's `exemptNamespaceWarning`: an exempt namespace labelled with a policy other
/// than the default is told its labels are ignored.
fn exempt_namespace_warning(
    name: &str,
    policy: &Policy,
    labels: Option<&serde_json::Map<String, Value>>,
    config: &Config,
) -> Option<String> {
    if policy.fully_privileged() || policy.equivalent(&config.defaults) {
        return None;
    }
    let has = |mode: &str| {
        labels.is_some_and(|l| {
            l.contains_key(&policy::label(mode, false))
                || l.contains_key(&policy::label(mode, true))
        })
    };
    let parts: Vec<String> = [
        ("enforce", policy.enforce),
        ("audit", policy.audit),
        ("warn", policy.warn),
    ]
    .into_iter()
    .filter(|(mode, lv)| lv.level != Level::Privileged && has(mode))
    .map(|(mode, lv)| format!("{mode}={lv}"))
    .collect();
    Some(format!(
        "namespace {} is exempt from Pod Security, and the policy ({}) will be ignored",
        skiff_k8s::go::quote(name),
        parts.join(", ")
    ))
}

/// Upstream's `EvaluatePodsInNamespace`: the existing pods the new enforce level would
/// refuse, one line per distinct set of reasons naming the first pod (by name) and how many
/// others share it. One pod per controller is checked before the rest, at most
/// [`NAMESPACE_MAX_PODS`] and for at most [`NAMESPACE_CHECK_TIMEOUT`] (listing included).
async fn existing_pods(state: &ApiState, namespace: &str, enforce: LevelVersion) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + NAMESPACE_CHECK_TIMEOUT;
    let listed = tokio::time::timeout_at(deadline, prioritized_pods(state, namespace)).await;
    let Ok(Ok((pods, total))) = listed else {
        tracing::error!(
            namespace,
            ?listed,
            "PodSecurity: listing the namespace's pods"
        );
        return vec!["failed to list pods while checking new PodSecurity enforce level".into()];
    };
    // Distinct reasons in first-seen order, each with its smallest pod name and count.
    let mut found: Vec<(String, String, usize)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut checked = 0;
    for pod in &pods {
        checked += 1;
        let view = PodView {
            meta: pod.get("metadata").unwrap_or(&Value::Null),
            spec: pod.get("spec").unwrap_or(&Value::Null),
        };
        let verdict = checks::evaluate(enforce, &view);
        if !verdict.allowed() {
            let reasons = verdict.reasons();
            let name = pod
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match index.get(&reasons) {
                Some(&i) => {
                    let (_, first, count) = &mut found[i];
                    *count += 1;
                    if name < first.as_str() {
                        *first = name.to_owned();
                    }
                }
                None => {
                    index.insert(reasons.clone(), found.len());
                    found.push((reasons, name.to_owned(), 1));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    let mut warnings = Vec::new();
    if checked < total {
        warnings.push(format!(
            "new PodSecurity enforce level only checked against the first {checked} of {total} existing pods"
        ));
    }
    if !found.is_empty() {
        warnings.push(format!(
            "existing pods in namespace {} violate the new PodSecurity enforce level {}",
            skiff_k8s::go::quote(namespace),
            skiff_k8s::go::quote(&enforce.to_string())
        ));
    }
    let mut lines: Vec<String> = found
        .into_iter()
        .map(|(reasons, name, count)| match count {
            1 => format!("{name}: {reasons}"),
            2 => format!("{name} (and 1 other pod): {reasons}"),
            n => format!("{name} (and {} other pods): {reasons}", n - 1),
        })
        .collect();
    lines.sort();
    warnings.extend(lines);
    warnings
}

/// The namespace's pods to check, in upstream's priority (pods without a controller and the
/// first pod of each controller, then the other pods of controllers), at most
/// [`NAMESPACE_MAX_PODS`] kept; and how many pods there are.
async fn prioritized_pods(
    state: &ApiState,
    namespace: &str,
) -> Result<(Vec<Value>, usize), crate::store::StoreError> {
    let prefix = keys::PODS.namespace_prefix(Some(namespace));
    let (mut first, mut others) = (Vec::new(), Vec::new());
    let mut controllers = std::collections::HashSet::new();
    let mut total = 0;
    let mut request = ListRequest {
        limit: Some(PAGE),
        ..ListRequest::default()
    };
    loop {
        let page = state.store.list(&prefix, request.clone()).await?;
        for bytes in &page.items {
            total += 1;
            let Ok(pod) = serde_json::from_slice::<Value>(bytes) else {
                continue;
            };
            let controller = pod
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| {
                    refs.iter()
                        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                })
                .and_then(|r| r.get("uid"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let first_of_its_kind = controller.is_none_or(|uid| controllers.insert(uid));
            if first_of_its_kind {
                if first.len() < NAMESPACE_MAX_PODS {
                    first.push(pod);
                }
            } else if others.len() < NAMESPACE_MAX_PODS {
                others.push(pod);
            }
        }
        match page.continue_after {
            Some(after) => {
                request.start_after = Some(after);
                request.revision = Some(page.revision);
            }
            None => break,
        }
    }
    first.extend(others);
    first.truncate(NAMESPACE_MAX_PODS);
    Ok((first, total))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn flags_are_checked() {
        let ok = Config::from_flags("baseline", &["kube-system".into()]).unwrap();
        assert_eq!(ok.defaults.enforce.to_string(), "baseline:latest");
        assert_eq!(
            Config::from_flags("restricted:v1.30", &[])
                .unwrap()
                .defaults
                .warn
                .to_string(),
            "restricted:v1.30"
        );
        let e = Config::from_flags("strict", &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "--pod-security-default: \"strict\": must be one of privileged, baseline, restricted"
        );
        let e = Config::from_flags("baseline", &["Kube_System".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--pod-security-exempt-namespaces: \"Kube_System\": "),
            "{e}"
        );
        let e = Config::from_flags("baseline", &["a".into(), "a".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--pod-security-exempt-namespaces: \"a\": Duplicate value"
        );
        let none = Config::from_flags("baseline", &[String::new()]).unwrap();
        assert!(none.exempt_namespaces.is_empty());
    }

    #[test]
    fn only_image_and_container_changes_are_significant() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "a"}],
            "ephemeralContainers": [{"name": "e", "image": "x"}]}});
        let mut same = pod.clone();
        same["spec"]["activeDeadlineSeconds"] = json!(5);
        same["metadata"] = json!({"labels": {"a": "b"}});
        assert!(!significant_pod_update(&pod, &same));
        let mut image = pod.clone();
        image["spec"]["containers"][0]["image"] = json!("b");
        assert!(significant_pod_update(&pod, &image));
        let mut added = pod.clone();
        added["spec"]["ephemeralContainers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "f", "image": "x"}));
        assert!(significant_pod_update(&pod, &added));
        let mut init = pod.clone();
        init["spec"]["initContainers"] = json!([{"name": "i"}]);
        assert!(significant_pod_update(&pod, &init));
    }

    #[test]
    fn exempt_namespaces_with_their_own_policy_are_told_it_is_ignored() {
        let config = Config::default();
        let labels = json!({"pod-security.kubernetes.io/enforce": "restricted"});
        let (p, _) = policy::from_labels(labels.as_object(), config.defaults);
        assert_eq!(
            exempt_namespace_warning("kube-system", &p, labels.as_object(), &config).unwrap(),
            "namespace \"kube-system\" is exempt from Pod Security, and the policy \
             (enforce=restricted:latest) will be ignored"
        );
        let (p, _) = policy::from_labels(None, config.defaults);
        assert!(exempt_namespace_warning("kube-system", &p, None, &config).is_none());
    }
}
