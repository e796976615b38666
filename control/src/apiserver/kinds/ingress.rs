//! networking.k8s.io/v1 Ingress (namespaced, with `/status`) and IngressClass
//! (cluster-scoped): Kubernetes' `pkg/apis/networking/validation` for what a router needs to be
//! right (every path has a valid `pathType`, Exact and Prefix paths are absolute and clean,
//! hosts are DNS-1123 subdomains or `*.` wildcards of one, a backend is exactly one of a
//! Service or a resource, a Service port is a name or a number), the DefaultIngressClass
//! admission plugin (an Ingress created without a class gets the default class's name), and
//! kubectl's columns (CLASS, HOSTS, ADDRESS, PORTS; CONTROLLER, PARAMETERS).
//!
//! skiff's own class is [`SKIFF_CLASS`] (the names live in `skiff_k8s::ingress`), created at every start by
//! [`crate::apiserver::ApiState::ensure_default_ingress_class`] and marked default; the agents
//! route the Ingresses of classes whose controller is [`SKIFF_CONTROLLER`].

use futures::future::BoxFuture;
use k8s_openapi::api::networking::v1::{Ingress as IngressType, IngressClass as ClassType};
use serde_json::{json, Value};
use skiff_k8s::names::dns_subdomain_errors;

use super::Strategy;
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{arr, or_none, s, Column, AGE, NAME};
use crate::apiserver::validation::{not_supported, str_at};
use crate::apiserver::ApiState;
use crate::store::{keys::Collection, ListRequest};

/// The served resources.
pub fn resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::of::<ClassType>(IngressClass),
        ResourceDef::of::<IngressType>(Ingress)
            .short_names(&["ing"])
            .with_status(),
    ]
}

pub use skiff_k8s::ingress::{
    CLASS_ANNOTATION, DEFAULT_CLASS_ANNOTATION, SKIFF_CLASS, SKIFF_CONTROLLER,
};

const INGRESS_CLASSES: Collection<'static> = Collection {
    group: "networking.k8s.io",
    plural: "ingressclasses",
    namespaced: false,
};

const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];
/// `invalidPathSequences` and `invalidPathSuffixes` of Kubernetes' validation: what a path
/// matched element-wise may not hold, since proxies would normalise it away.
const INVALID_PATH_SEQUENCES: &[&str] = &["//", "/./", "/../", "%2f", "%2F"];
const INVALID_PATH_SUFFIXES: &[&str] = &["/..", "/."];

const WILDCARD_MESSAGE: &str = "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// The errors of a rule's or a TLS entry's host: a DNS name (not an IP address), optionally
/// a `*.` wildcard of one.
fn host_errors(host: &str, field: &str, errs: &mut Vec<FieldError>) {
    if host.parse::<std::net::IpAddr>().is_ok() {
        errs.push(FieldError::invalid(
            field,
            host,
            "must be a DNS name, not an IP address",
        ));
        return;
    }
    if host.contains('*') {
        let ok = host
            .strip_prefix("*.")
            .is_some_and(|rest| dns_subdomain_errors(rest).is_empty());
        if !ok {
            errs.push(FieldError::invalid(field, host, WILDCARD_MESSAGE));
        }
        return;
    }
    for e in dns_subdomain_errors(host) {
        errs.push(FieldError::invalid(field, host, e.to_string()));
    }
}

/// `IsValidPortName`: an IANA service name.
fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen");
    }
    errs
}

/// `IsDNS1035Label`: Service names.
fn dns1035_label(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `validateIngressBackend`: exactly one of a Service (name and port) and a resource.
fn validate_backend(backend: &Value, field: &str, errs: &mut Vec<FieldError>) {
    let service = backend.get("service").filter(|v| !v.is_null());
    let resource = backend.get("resource").filter(|v| !v.is_null());
    match (service, resource) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            field,
            "",
            "cannot set both resource and service backends",
        )),
        (None, None) => errs.push(FieldError::invalid(
            field,
            "",
            "must specify a resource or service",
        )),
        (None, Some(resource)) => {
            for key in ["kind", "name"] {
                if resource.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("{field}.resource.{key}")));
                }
            }
        }
        (Some(service), None) => {
            let at = format!("{field}.service");
            match service.get("name").and_then(Value::as_str) {
                None | Some("") => errs.push(FieldError::required(format!("{at}.name"))),
                Some(name) if !dns1035_label(name) => errs.push(FieldError::invalid(
                    format!("{at}.name"),
                    name,
                    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
                )),
                Some(_) => {}
            }
            let port = service.get("port");
            let name = port
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let number = port
                .and_then(|p| p.get("number"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let at = format!("{at}.port");
            match (name.is_empty(), number) {
                (false, n) if n != 0 => errs.push(FieldError::invalid(
                    at,
                    "",
                    "cannot set both port name & port number",
                )),
                (false, _) => {
                    for e in port_name_errors(name) {
                        errs.push(FieldError::invalid(format!("{at}.name"), name, e));
                    }
                }
                (true, 0) => errs.push(
                    FieldError::required(at).with_message("port name or number is required"),
                ),
                (true, n) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid(
                    format!("{at}.number"),
                    &n.to_string(),
                    "must be between 1 and 65535, inclusive",
                )),
                (true, _) => {}
            }
        }
    }
}

/// `validateHTTPIngressPath`.
fn validate_path(path: &Value, field: &str, errs: &mut Vec<FieldError>) {
    let value = path.get("path").and_then(Value::as_str).unwrap_or_default();
    match path.get("pathType").and_then(Value::as_str) {
        None | Some("") => errs.push(
            FieldError::required(format!("{field}.pathType"))
                .with_message("pathType must be specified"),
        ),
        Some("Exact" | "Prefix") => {
            let at = format!("{field}.path");
            if !value.starts_with('/') {
                errs.push(FieldError::invalid(&at, value, "must be an absolute path"));
            }
            for seq in INVALID_PATH_SEQUENCES {
                if value.contains(seq) {
                    errs.push(FieldError::invalid(
                        &at,
                        value,
                        format!("must not contain '{seq}'"),
                    ));
                }
            }
            for suffix in INVALID_PATH_SUFFIXES {
                if value.ends_with(suffix) {
                    errs.push(FieldError::invalid(
                        &at,
                        value,
                        format!("cannot end with '{suffix}'"),
                    ));
                }
            }
        }
        Some("ImplementationSpecific") => {
            if !value.is_empty() && !value.starts_with('/') {
                errs.push(FieldError::invalid(
                    format!("{field}.path"),
                    value,
                    "must be an absolute path",
                ));
            }
        }
        Some(other) => errs.push(not_supported(format!("{field}.pathType"), other, PATH_TYPES)),
    }
    match path.get("backend") {
        Some(backend) => validate_backend(backend, &format!("{field}.backend"), errs),
        None => errs.push(FieldError::required(format!("{field}.backend"))),
    }
}

struct Ingress;

impl Ingress {
    fn validate_spec(&self, object: &Value, errs: &mut Vec<FieldError>) {
        let spec = object.get("spec").unwrap_or(&Value::Null);
        let rules = arr(spec, "/rules");
        let default_backend = spec.get("defaultBackend").filter(|v| !v.is_null());
        if rules.is_empty() && default_backend.is_none() {
            errs.push(FieldError::invalid(
                "spec",
                "",
                "either `defaultBackend` or `rules` must be specified",
            ));
        }
        if let Some(backend) = default_backend {
            validate_backend(backend, "spec.defaultBackend", errs);
        }
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            if let Some(host) = rule.get("host").and_then(Value::as_str) {
                if !host.is_empty() {
                    host_errors(host, &format!("{at}.host"), errs);
                }
            }
            if let Some(http) = rule.get("http").filter(|v| !v.is_null()) {
                let paths = arr(http, "/paths");
                if paths.is_empty() {
                    errs.push(FieldError::required(format!("{at}.http.paths")));
                }
                for (j, path) in paths.iter().enumerate() {
                    validate_path(path, &format!("{at}.http.paths[{j}]"), errs);
                }
            }
        }
        for (i, tls) in arr(spec, "/tls").iter().enumerate() {
            for (j, host) in arr(tls, "/hosts").iter().enumerate() {
                if let Some(host) = host.as_str() {
                    host_errors(host, &format!("spec.tls[{i}].hosts[{j}]"), errs);
                }
            }
        }
        if let Some(class) = spec.get("ingressClassName").and_then(Value::as_str) {
            for e in dns_subdomain_errors(class) {
                errs.push(FieldError::invalid(
                    "spec.ingressClassName",
                    class,
                    e.to_string(),
                ));
            }
        }
    }
}

/// The class an Ingress names: `spec.ingressClassName`, else the deprecated annotation.
pub fn class_of(ingress: &Value) -> Option<&str> {
    str_at(ingress, "/spec/ingressClassName").or_else(|| {
        ingress
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(CLASS_ANNOTATION))
            .and_then(Value::as_str)
    })
}

/// DefaultIngressClass admission: the name of the default class (the newest, when several
/// claim it, as Kubernetes 1.30+ decides), if any.
async fn default_class(state: &ApiState) -> Result<Option<String>, ApiError> {
    let list = state
        .store
        .list(&INGRESS_CLASSES.prefix(), ListRequest::default())
        .await
        .map_err(|e| ApiError::from_store(e, "ingressclasses.networking.k8s.io", ""))?;
    let mut defaults: Vec<(String, String)> = list
        .items
        .iter()
        .filter_map(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .filter(|class| {
            class
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true")
        })
        .map(|class| {
            (
                s(&class, "/metadata/creationTimestamp").to_owned(),
                s(&class, "/metadata/name").to_owned(),
            )
        })
        .collect();
    // RFC 3339 timestamps of one form sort as text; the name breaks a tie.
    defaults.sort();
    Ok(defaults.pop().map(|(_, name)| name))
}

/// kubectl's HOSTS: every rule's host (`*` for a rule without one), the first three, then
/// `+ N more...`.
fn hosts(o: &Value) -> String {
    let hosts: Vec<&str> = arr(o, "/spec/rules")
        .iter()
        .map(|r| r.get("host").and_then(Value::as_str).unwrap_or("*"))
        .collect();
    if hosts.is_empty() {
        return "*".into();
    }
    let shown = hosts.iter().take(3).copied().collect::<Vec<_>>().join(",");
    if hosts.len() > 3 {
        format!("{shown} + {} more...", hosts.len() - 3)
    } else {
        shown
    }
}

/// The load-balancer addresses of a status, as kubectl joins them.
fn addresses(o: &Value) -> String {
    arr(o, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| {
            i.get("ip")
                .or_else(|| i.get("hostname"))
                .and_then(Value::as_str)
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Strategy for Ingress {
    /// A new Ingress reads `status: {loadBalancer: {}}`, as Kubernetes' struct serialises.
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"loadBalancer": {}}))
    }

    fn admit<'a>(
        &'a self,
        state: &'a ApiState,
        object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if class_of(object).is_some() {
                return Ok(());
            }
            if let Some(class) = default_class(state).await? {
                if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("ingressClassName".into(), json!(class));
                }
            }
            Ok(())
        })
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        self.validate_spec(object, errs);
        let annotation = object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(CLASS_ANNOTATION))
            .and_then(Value::as_str);
        if let (Some(class), Some(annotated)) =
            (str_at(object, "/spec/ingressClassName"), annotation)
        {
            if class != annotated {
                errs.push(FieldError::invalid(
                    format!("metadata.annotations[{CLASS_ANNOTATION}]"),
                    annotated,
                    "must match `ingressClassName` when both are specified",
                ));
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Class", "string", |o, _| {
                json!(or_none(class_of(o).unwrap_or_default().to_owned()))
            }),
            Column::new("Hosts", "string", |o, _| json!(hosts(o))),
            Column::new("Address", "string", |o, _| json!(addresses(o))),
            Column::new("Ports", "string", |o, _| {
                json!(if arr(o, "/spec/tls").is_empty() {
                    "80"
                } else {
                    "80, 443"
                })
            }),
            AGE,
        ]
    }
}

struct IngressClass;

/// `IsDomainPrefixedPath`: `example.com/path`.
fn domain_prefixed_path_errors(value: &str) -> Vec<String> {
    let Some((domain, path)) = value.split_once('/') else {
        return vec!["must be a domain-prefixed path (such as \"acme.io/foo\")".into()];
    };
    let mut errs: Vec<String> = dns_subdomain_errors(domain)
        .into_iter()
        .map(|e| e.to_string())
        .collect();
    if path.is_empty()
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:".contains(c))
    {
        errs.push(
            "path must be a valid path consisting of alphanumeric characters and /-._~%!$&'()*+,;=:"
                .into(),
        );
    }
    errs
}

impl Strategy for IngressClass {
    fn initial_status(&self) -> Option<Value> {
        None
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        match str_at(object, "/spec/controller") {
            None | Some("") => errs.push(FieldError::required("spec.controller")),
            Some(c) if c.len() > 250 => errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "spec.controller".into(),
                message: "Too long: may not be more than 250 bytes".into(),
            }),
            Some(c) => {
                for e in domain_prefixed_path_errors(c) {
                    errs.push(FieldError::invalid("spec.controller", c, e));
                }
            }
        }
        let Some(params) = object
            .pointer("/spec/parameters")
            .filter(|v| !v.is_null())
        else {
            return;
        };
        for key in ["kind", "name"] {
            if params.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
                errs.push(FieldError::required(format!("spec.parameters.{key}")));
            }
        }
        let namespace = params.get("namespace").and_then(Value::as_str);
        match params.get("scope").and_then(Value::as_str) {
            None | Some("Cluster") => {
                if namespace.is_some() {
                    errs.push(FieldError::forbidden(
                        "spec.parameters.namespace",
                        "`parameters.scope` is set to 'Cluster'",
                    ));
                }
            }
            Some("Namespace") => {
                if namespace.is_none_or(str::is_empty) {
                    errs.push(
                        FieldError::required("spec.parameters.namespace")
                            .with_message("`parameters.scope` is set to 'Namespace'"),
                    );
                }
            }
            Some(other) => errs.push(not_supported(
                "spec.parameters.scope",
                other,
                &["Cluster", "Namespace"],
            )),
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if old.pointer("/spec/controller") != new.pointer("/spec/controller") {
            errs.push(FieldError::immutable("spec.controller"));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Controller", "string", |o, _| {
                json!(s(o, "/spec/controller"))
            }),
            Column::new("Parameters", "string", |o, _| {
                json!(match o.pointer("/spec/parameters").filter(|p| !p.is_null()) {
                    Some(p) => format!(
                        "{}/{}",
                        s(p, "/kind"),
                        s(p, "/name")
                    ),
                    None => "<none>".into(),
                })
            }),
            AGE,
        ]
    }
}

/// skiff's default IngressClass, as [`crate::apiserver::ApiState::ensure_default_ingress_class`]
/// creates it.
pub fn skiff_class() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": SKIFF_CLASS,
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "spec": {"controller": SKIFF_CONTROLLER}})
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::apiserver::kinds::testing::{validate, validate_update};

    const G: &str = "networking.k8s.io";

    fn ingress(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    fn svc(name: &str, port: Value) -> Value {
        json!({"service": {"name": name, "port": port}})
    }

    #[test]
    fn a_valid_ingress_passes() {
        let ing = ingress(json!({
            "defaultBackend": svc("fallback", json!({"number": 80})),
            "tls": [{"hosts": ["a.example.com", "*.b.example.com"], "secretName": "tls"}],
            "rules": [
                {"host": "a.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": svc("a", json!({"name": "http"}))},
                    {"path": "/exact", "pathType": "Exact", "backend": svc("a", json!({"number": 8080}))},
                    {"pathType": "ImplementationSpecific", "backend":
                        {"resource": {"apiGroup": "x.io", "kind": "Bucket", "name": "b"}}}]}},
                {"host": "*.b.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": svc("b", json!({"number": 80}))}]}}]}));
        assert_eq!(validate(G, "Ingress", &ing), vec![]);
    }

    #[test]
    fn paths_hosts_and_backends_are_checked() {
        let ing = ingress(json!({"rules": [
            {"host": "10.0.0.1", "http": {"paths": [
                {"path": "/a", "backend": svc("a", json!({"number": 80}))},
                {"path": "relative", "pathType": "Prefix", "backend": svc("a", json!({"number": 80}))},
                {"path": "/a//b", "pathType": "Exact", "backend": svc("a", json!({"number": 80}))},
                {"path": "/", "pathType": "Regex", "backend": svc("a", json!({"number": 80}))},
                {"path": "/", "pathType": "Prefix", "backend": {}},
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "a", "port": {"number": 80}},
                    "resource": {"kind": "K", "name": "n"}}},
                {"path": "/", "pathType": "Prefix", "backend": svc("a", json!({"name": "http", "number": 80}))},
                {"path": "/", "pathType": "Prefix", "backend": svc("a", json!({}))},
                {"path": "/", "pathType": "Prefix", "backend": svc("A_b", json!({"number": 70000}))}]}},
            {"host": "*.*.example.com"},
            {"host": "Upper.example.com"}]}));
        let errs = validate(G, "Ingress", &ing);
        assert_eq!(
            fields(&errs),
            [
                "spec.rules[0].host",
                "spec.rules[0].http.paths[0].pathType",
                "spec.rules[0].http.paths[1].path",
                "spec.rules[0].http.paths[2].path",
                "spec.rules[0].http.paths[3].pathType",
                "spec.rules[0].http.paths[4].backend",
                "spec.rules[0].http.paths[5].backend",
                "spec.rules[0].http.paths[6].backend.service.port",
                "spec.rules[0].http.paths[7].backend.service.port",
                "spec.rules[0].http.paths[8].backend.service.name",
                "spec.rules[0].http.paths[8].backend.service.port.number",
                "spec.rules[1].host",
                "spec.rules[2].host",
            ],
            "{errs:#?}"
        );
        assert!(errs[0].message.contains("not an IP address"));
        assert_eq!(
            errs[1].message,
            "Required value: pathType must be specified"
        );
        assert!(errs[3].message.contains("must not contain '//'"));
        assert_eq!(errs[4].reason, "FieldValueNotSupported");
        assert!(errs[11].message.contains("wildcard DNS-1123 subdomain"));
    }

    #[test]
    fn an_ingress_needs_rules_or_a_default_backend() {
        let errs = validate(G, "Ingress", &ingress(json!({})));
        assert_eq!(fields(&errs), ["spec"]);
        let only_default = ingress(json!({"defaultBackend": svc("a", json!({"number": 80}))}));
        assert_eq!(validate(G, "Ingress", &only_default), vec![]);
    }

    #[test]
    fn classes_need_a_domain_prefixed_controller_that_stays() {
        let class = |controller: &str| {
            json!({"metadata": {"name": "c"}, "spec": {"controller": controller}})
        };
        assert_eq!(validate(G, "IngressClass", &class(SKIFF_CONTROLLER)), vec![]);
        assert_eq!(validate(G, "IngressClass", &skiff_class()), vec![]);
        assert_eq!(
            fields(&validate(G, "IngressClass", &class("nginx"))),
            ["spec.controller"]
        );
        let mut params = class("x.io/c");
        params["spec"]["parameters"] = json!({"kind": "P", "name": "p", "scope": "Namespace"});
        assert_eq!(
            fields(&validate(G, "IngressClass", &params)),
            ["spec.parameters.namespace"]
        );
        let errs = validate_update(G, "IngressClass", &class("x.io/a"), &class("x.io/b"));
        assert_eq!(fields(&errs), ["spec.controller"]);
    }

    #[test]
    fn hosts_column_lists_three_then_counts() {
        let rules: Vec<Value> = ["a", "b", "c", "d"]
            .iter()
            .map(|h| json!({"host": format!("{h}.io")}))
            .collect();
        assert_eq!(hosts(&ingress(json!({"rules": rules}))), "a.io,b.io,c.io + 1 more...");
        assert_eq!(hosts(&ingress(json!({"rules": [{}]}))), "*");
    }
}
