//! The route table: from skiff's Ingresses, the Services and their EndpointSlices to "this
//! request goes to these pod addresses", as pure functions (no I/O) so the matching rules are
//! unit-tested.
//!
//! The rules are the Ingress specification's:
//!
//! - a rule's host is matched exactly, or as `*.suffix` matching exactly one more label
//!   (`*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`); an
//!   exact host wins over a wildcard, a wildcard over rules without a host;
//! - paths: `Exact` matches the whole path; `Prefix` matches element-wise (`/foo` matches
//!   `/foo`, `/foo/` and `/foo/bar`, not `/foobar`; a trailing `/` in the rule is ignored);
//!   `ImplementationSpecific` is `Prefix` here. The longest matching path wins, `Exact` over
//!   `Prefix` at equal length;
//! - a request no rule matches goes to the default backend (`spec.defaultBackend` of the
//!   oldest Ingress that has one), else it is a 404.
//!
//! Rules of several Ingresses for one host merge, as in ingress-nginx; where two name the same
//! path and type, the oldest Ingress's wins.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use skiff_k8s::ingress::is_skiffs;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Ready pod addresses of a Service port (never empty).
    Endpoints {
        /// `namespace/name:port`, for logs and errors.
        service: String,
        /// The pods' addresses and target port.
        addresses: Vec<SocketAddr>,
    },
    /// The route exists but cannot be served: a 503, and the reason in an Event.
    Unavailable {
        /// Why, as the Event says it.
        reason: String,
    },
}

/// How a path rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathKind {
    /// The whole path.
    Exact,
    /// Element-wise prefix (also `ImplementationSpecific`).
    Prefix,
}

/// One path of a host's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The rule's path, without a trailing `/` for prefixes (`/` itself stays).
    pub path: String,
    /// How it matches.
    pub kind: PathKind,
    /// Where it goes.
    pub target: Arc<Target>,
}

/// The Ingress an unavailable route belongs to, and why: what the proxy tells in an Event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The Ingress's namespace.
    pub namespace: String,
    /// The Ingress's name.
    pub name: String,
    /// The reason.
    pub reason: String,
}

/// Everything the proxy routes by, rebuilt whole on every change.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Route>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Vec<Route>>,
    any_host: Vec<Route>,
    default: Option<Arc<Target>>,
    /// TLS Secrets by SNI host (exact or `*.suffix`): `(namespace, secret name)`.
    pub tls: BTreeMap<String, (String, String)>,
    /// Routes that answer 503, with their Ingress.
    pub problems: Vec<Problem>,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A route or the default backend matched.
    Target(Arc<Target>),
    /// Nothing matched and there is no default backend: 404.
    NotFound,
}

/// Whether the request path `path` matches the rule `route` (`route.path` normalised as
/// [`Route::path`] says).
pub fn path_matches(route_path: &str, kind: PathKind, path: &str) -> bool {
    match kind {
        PathKind::Exact => path == route_path,
        PathKind::Prefix => {
            if route_path == "/" {
                return true;
            }
            // Element-wise: the request's elements start with the rule's, so the next
            // character after the prefix, if any, is a separator.
            match path.strip_prefix(route_path) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            }
        }
    }
}

/// The best route of `routes` for `path`: the longest matching path, Exact before Prefix.
/// `routes` are kept sorted so that the first match is the best.
fn best<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    routes.iter().find(|r| path_matches(&r.path, r.kind, path))
}

/// Sorts routes best-first: longer paths first, then Exact before Prefix; stable, so the
/// first-inserted (oldest Ingress) of two equal ones comes first.
fn sort_routes(routes: &mut Vec<Route>) {
    routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.kind.cmp(&b.kind)));
    routes.dedup_by(|later, earlier| later.path == earlier.path && later.kind == earlier.kind);
}

/// The host of a request (`Host` header or URI authority) as rules compare it: lowercase,
/// without the port and a trailing dot.
pub fn normalize_host(host: &str) -> String {
    let without_port = match host.strip_prefix('[') {
        // An IPv6 literal keeps its colons inside the brackets.
        Some(rest) => rest.find(']').map_or(host, |i| &host[..i + 2]),
        None => host.split(':').next().unwrap_or(host),
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

impl RouteTable {
    /// Where a request for `host` (normalised, see [`normalize_host`]) and `path` goes.
    pub fn lookup(&self, host: &str, path: &str) -> Lookup {
        let wildcard = host
            .split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix));
        let group = self
            .exact
            .get(host)
            .or(wildcard)
            .map(Vec::as_slice)
            .unwrap_or(&self.any_host);
        if let Some(route) = best(group, path) {
            return Lookup::Target(route.target.clone());
        }
        match &self.default {
            Some(target) => Lookup::Target(target.clone()),
            None => Lookup::NotFound,
        }
    }

    /// The TLS Secret for an SNI name: the exact host's, else the one of a `*.` wildcard
    /// one label up.
    pub fn tls_secret(&self, sni: &str) -> Option<&(String, String)> {
        self.tls.get(sni).or_else(|| {
            sni.split_once('.')
                .and_then(|(_, suffix)| self.tls.get(&format!("*.{suffix}")))
        })
    }

    /// The table of `ingresses` (only skiff's, see [`is_skiffs`]) over the Services and
    /// EndpointSlices the node watches.
    pub fn build(
        ingresses: &[Arc<Ingress>],
        classes: &[Arc<IngressClass>],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Self {
        let mut ours: Vec<&Arc<Ingress>> = ingresses
            .iter()
            .filter(|i| i.metadata.deletion_timestamp.is_none() && is_skiffs(i, classes))
            .collect();
        // Oldest first: the oldest wins conflicts.
        ours.sort_by_key(|i| {
            (
                i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            )
        });
        // Only the Services the Ingresses name are indexed: the table is rebuilt on every
        // endpoint change in the cluster, most of which concern other Services.
        let named: std::collections::HashSet<(&str, &str)> = ours
            .iter()
            .filter_map(|i| Some((i.metadata.namespace.as_deref()?, i.spec.as_ref()?)))
            .flat_map(|(ns, spec)| {
                let paths = spec
                    .rules
                    .iter()
                    .flatten()
                    .flat_map(|r| r.http.iter().flat_map(|h| &h.paths))
                    .map(|p| &p.backend);
                spec.default_backend
                    .iter()
                    .chain(paths)
                    .filter_map(move |b| Some((ns, b.service.as_ref()?.name.as_str())))
            })
            .collect();
        let resolver = Resolver::new(services, slices, &named);
        let mut table = RouteTable::default();
        let mut problems = std::collections::BTreeSet::new();
        for ingress in ours {
            let ns = ingress.metadata.namespace.as_deref().unwrap_or("default");
            let name = ingress.metadata.name.as_deref().unwrap_or_default();
            let Some(spec) = &ingress.spec else { continue };
            let mut target = |backend: &IngressBackend| {
                let t = Arc::new(resolver.target(ns, backend));
                if let Target::Unavailable { reason } = t.as_ref() {
                    problems.insert(Problem {
                        namespace: ns.to_owned(),
                        name: name.to_owned(),
                        reason: reason.clone(),
                    });
                }
                t
            };
            if table.default.is_none() {
                if let Some(backend) = &spec.default_backend {
                    table.default = Some(target(backend));
                }
            }
            for rule in spec.rules.iter().flatten() {
                let group = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                    None => &mut table.any_host,
                    Some(h) => match h.strip_prefix("*.") {
                        Some(suffix) => table.wildcard.entry(suffix.to_owned()).or_default(),
                        None => table.exact.entry(h.to_owned()).or_default(),
                    },
                };
                for path in rule.http.iter().flat_map(|h| &h.paths) {
                    let kind = match path.path_type.as_str() {
                        "Exact" => PathKind::Exact,
                        _ => PathKind::Prefix,
                    };
                    let mut p = path.path.clone().unwrap_or_else(|| "/".into());
                    if p.is_empty() {
                        p = "/".into();
                    }
                    if kind == PathKind::Prefix && p.len() > 1 {
                        p = p.trim_end_matches('/').to_owned();
                        if p.is_empty() {
                            p = "/".into();
                        }
                    }
                    group.push(Route {
                        path: p,
                        kind,
                        target: target(&path.backend),
                    });
                }
            }
            for tls in spec.tls.iter().flatten() {
                let Some(secret) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                    continue;
                };
                for host in tls.hosts.iter().flatten() {
                    table
                        .tls
                        .entry(host.to_ascii_lowercase())
                        .or_insert_with(|| (ns.to_owned(), secret.to_owned()));
                }
            }
        }
        for routes in table.exact.values_mut().chain(table.wildcard.values_mut()) {
            sort_routes(routes);
        }
        sort_routes(&mut table.any_host);
        table.problems = problems.into_iter().collect();
        table
    }
}

/// Service ports to pod addresses, from the watch caches.
struct Resolver<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> Resolver<'a> {
    /// The index of the Services in `named` (namespace, name).
    fn new(
        services: &'a [Arc<Service>],
        slices: &'a [Arc<EndpointSlice>],
        named: &std::collections::HashSet<(&str, &str)>,
    ) -> Self {
        let services = services
            .iter()
            .filter_map(|s| {
                let key = (
                    s.metadata.namespace.as_deref()?,
                    s.metadata.name.as_deref()?,
                );
                named.contains(&key).then_some((key, s.as_ref()))
            })
            .collect();
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            if named.contains(&(ns, svc.as_str())) {
                by_service
                    .entry((ns, svc.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        Self {
            services,
            slices: by_service,
        }
    }

    fn target(&self, ns: &str, backend: &IngressBackend) -> Target {
        let unavailable = |reason: String| Target::Unavailable { reason };
        let Some(backend) = &backend.service else {
            return unavailable(
                "resource backends are not supported by skiff's Ingress proxy".into(),
            );
        };
        let name = backend.name.as_str();
        let port = backend.port.as_ref();
        let port_text = match port {
            Some(p) => p
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| p.number.unwrap_or(0).to_string()),
            None => "<none>".into(),
        };
        let Some(svc) = self.services.get(&(ns, name)) else {
            return unavailable(format!("service \"{ns}/{name}\" not found"));
        };
        let svc_port = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .find(|p| {
                p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                    && match port {
                        Some(want) => match want.name.as_deref().filter(|n| !n.is_empty()) {
                            Some(n) => p.name.as_deref() == Some(n),
                            None => Some(p.port) == want.number,
                        },
                        None => false,
                    }
            });
        let Some(svc_port) = svc_port else {
            return unavailable(format!(
                "service \"{ns}/{name}\" does not have port {port_text}"
            ));
        };
        let port_name = svc_port.name.as_deref().unwrap_or("");
        let slices = self
            .slices
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let addresses = endpoint_addresses(slices, port_name);
        let service = format!("{ns}/{name}:{port_text}");
        if addresses.is_empty() {
            return unavailable(format!(
                "service \"{ns}/{name}\" has no ready endpoints for port {port_text}"
            ));
        }
        Target::Endpoints { service, addresses }
    }
}

/// The ready, not terminating endpoints of a port; when there are none, the serving
/// terminating ones (kube-proxy's fallback, so a rollout's last old pod still answers).
fn endpoint_addresses(slices: &[&EndpointSlice], port_name: &str) -> Vec<SocketAddr> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let list = if is_ready && !is_terminating {
                &mut ready
            } else if is_terminating && serving {
                &mut terminating
            } else {
                continue;
            };
            list.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, port))),
            );
        }
    }
    let mut out = if ready.is_empty() { terminating } else { ready };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn class() -> Arc<IngressClass> {
        use skiff_k8s::ingress::{DEFAULT_CLASS_ANNOTATION, SKIFF_CONTROLLER};
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "skiff",
                "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
                "spec": {"controller": SKIFF_CONTROLLER}}))
            .unwrap(),
        )
    }

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
                "creationTimestamp": created}, "spec": spec}))
            .unwrap(),
        )
    }

    fn service(name: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
            .unwrap(),
        )
    }

    fn slice(svc: &str, endpoints: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": format!("{svc}-x"),
                "namespace": "default", "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints}))
            .unwrap(),
        )
    }

    fn path(p: &str, kind: &str, svc: &str) -> serde_json::Value {
        json!({"path": p, "pathType": kind,
            "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Which Service a lookup reaches (by its only pod's address), or the outcome.
    fn goes(table: &RouteTable, host: &str, p: &str) -> String {
        match table.lookup(host, p) {
            Lookup::NotFound => "404".into(),
            Lookup::Target(t) => match t.as_ref() {
                Target::Endpoints { service, .. } => service.clone(),
                Target::Unavailable { .. } => "503".into(),
            },
        }
    }

    #[test]
    fn prefix_matching_is_element_wise() {
        let m = |rule, path| path_matches(rule, PathKind::Prefix, path);
        assert!(m("/foo", "/foo"));
        assert!(m("/foo", "/foo/"));
        assert!(m("/foo", "/foo/bar"));
        assert!(!m("/foo", "/foobar"));
        assert!(!m("/foo/bar", "/foo"));
        assert!(m("/", "/anything"));
        assert!(path_matches("/foo", PathKind::Exact, "/foo"));
        assert!(!path_matches("/foo", PathKind::Exact, "/foo/"));
    }

    #[test]
    fn hosts_wildcards_paths_and_the_default_backend() {
        let services: Vec<_> = ["a", "b", "c", "d", "e", "fallback"]
            .iter()
            .map(|s| service(s))
            .collect();
        let slices: Vec<_> = ["a", "b", "c", "d", "e", "fallback"]
            .iter()
            .enumerate()
            .map(|(i, s)| slice(s, json!([{"addresses": [format!("10.0.0.{}", i + 1)]}])))
            .collect();
        let ingresses = [
            ingress(
                "one",
                "2024-01-01T00:00:00Z",
                json!({
                "defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
                "rules": [
                    {"host": "a.example.com", "http": {"paths": [
                        path("/", "Prefix", "a"),
                        path("/api/", "Prefix", "b"),
                        path("/api", "Exact", "c")]}},
                    {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "d")]}}]}),
            ),
            ingress(
                "two",
                "2024-01-02T00:00:00Z",
                json!({"rules": [
                {"http": {"paths": [path("/", "ImplementationSpecific", "e")]}},
                // Merged into one's host; one's own "/" stays (oldest wins).
                {"host": "a.example.com", "http": {"paths": [
                    path("/", "Prefix", "e"), path("/other", "Prefix", "e")]}}]}),
            ),
        ];
        let table = RouteTable::build(&ingresses, &[class()], &services, &slices);
        assert_eq!(goes(&table, "a.example.com", "/"), "default/a:80");
        assert_eq!(goes(&table, "a.example.com", "/x"), "default/a:80");
        assert_eq!(goes(&table, "a.example.com", "/api"), "default/c:80");
        assert_eq!(goes(&table, "a.example.com", "/api/v1"), "default/b:80");
        assert_eq!(goes(&table, "a.example.com", "/apiv1"), "default/a:80");
        assert_eq!(goes(&table, "a.example.com", "/other/1"), "default/e:80");
        assert_eq!(goes(&table, "b.example.com", "/"), "default/d:80");
        assert_eq!(goes(&table, "x.b.example.com", "/"), "default/e:80");
        assert_eq!(goes(&table, "example.com", "/"), "default/e:80");
        assert!(table.problems.is_empty(), "{:?}", table.problems);

        let no_default = [ingress(
            "h",
            "2024-01-01T00:00:00Z",
            json!({"rules": [
            {"host": "h.io", "http": {"paths": [path("/only", "Exact", "a")]}}]}),
        )];
        let table = RouteTable::build(&no_default, &[class()], &services, &slices);
        assert_eq!(goes(&table, "h.io", "/only"), "default/a:80");
        assert_eq!(goes(&table, "h.io", "/"), "404");
        assert_eq!(goes(&table, "other.io", "/only"), "404");
        // Without the hostless rule, what no rule matches goes to the default backend, its
        // port name resolved to the pod's target port.
        let table = RouteTable::build(&ingresses[..1], &[class()], &services, &slices);
        let Lookup::Target(t) = table.lookup("nothing.io", "/") else {
            panic!()
        };
        assert_eq!(
            *t,
            Target::Endpoints {
                service: "default/fallback:http".into(),
                addresses: vec![addr("10.0.0.6:8080")]
            }
        );
    }

    #[test]
    fn missing_services_ports_and_endpoints_are_503s_with_reasons() {
        let services = [service("up"), service("empty")];
        let slices = [
            slice(
                "up",
                json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}}]),
            ),
            slice("empty", json!([])),
        ];
        let ingresses = [ingress(
            "i",
            "2024-01-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [
            path("/up", "Prefix", "up"),
            path("/gone", "Prefix", "gone"),
            path("/empty", "Prefix", "empty"),
            {"path": "/port", "pathType": "Prefix",
                "backend": {"service": {"name": "up", "port": {"number": 81}}}}]}}]}),
        )];
        let table = RouteTable::build(&ingresses, &[class()], &services, &slices);
        let Lookup::Target(t) = table.lookup("any", "/up") else {
            panic!()
        };
        assert_eq!(
            *t,
            Target::Endpoints {
                service: "default/up:80".into(),
                addresses: vec![addr("10.0.0.1:8080")]
            }
        );
        for p in ["/gone", "/empty", "/port"] {
            assert_eq!(goes(&table, "any", p), "503", "{p}");
        }
        let reasons: Vec<&str> = table.problems.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "service \"default/empty\" has no ready endpoints for port 80",
                "service \"default/gone\" not found",
                "service \"default/up\" does not have port 81",
            ]
        );
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_else_does() {
        let s = slice(
            "s",
            json!([
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.0.0.4"], "conditions": {"ready": false, "serving": false, "terminating": true}}]),
        );
        assert_eq!(endpoint_addresses(&[&s], "http"), [addr("10.0.0.3:8080")]);
    }

    #[test]
    fn only_skiffs_classes_are_routed_and_tls_hosts_are_found() {
        let other = ingress(
            "x",
            "2024-01-01T00:00:00Z",
            json!({"ingressClassName": "nginx",
            "defaultBackend": {"service": {"name": "a", "port": {"number": 80}}}}),
        );
        let table = RouteTable::build(&[other], &[class()], &[service("a")], &[]);
        assert_eq!(table.lookup("h", "/"), Lookup::NotFound);
        let tls = ingress(
            "t",
            "2024-01-01T00:00:00Z",
            json!({
            "tls": [{"hosts": ["a.io", "*.w.io"], "secretName": "s"}],
            "defaultBackend": {"service": {"name": "a", "port": {"number": 80}}}}),
        );
        let table = RouteTable::build(&[tls], &[class()], &[service("a")], &[]);
        let s = Some(&("default".to_owned(), "s".to_owned()));
        assert_eq!(table.tls_secret("a.io"), s);
        assert_eq!(table.tls_secret("x.w.io"), s);
        assert_eq!(table.tls_secret("w.io"), None);
        assert_eq!(table.tls_secret("y.x.w.io"), None);
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize_host("A.Example.COM:8080"), "a.example.com");
        assert_eq!(normalize_host("a.example.com."), "a.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }
}
