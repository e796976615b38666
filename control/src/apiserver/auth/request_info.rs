//! What a request asks to do, in authorization terms: Kubernetes' `RequestInfo`.
//!
//! Kubernetes derives it from the URL and method alone (`RequestInfoFactory`), before routing,
//! so that authorization sees the same verb, resource and namespace for every handler and a
//! forbidden request is refused before anything learns whether the object exists. [`resolve`]
//! follows that function rule for rule; it needs no registry.

use http::Method;

/// The attributes of one request that authorization decides on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// An API resource (`/api/v1/...`, `/apis/<group>/<version>/...` with a resource), as
    /// opposed to a non-resource path (`/healthz`, `/version`, discovery, `/openapi/...`).
    pub is_resource_request: bool,
    /// The URL path, percent-decoded.
    pub path: String,
    /// For resources the Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`, `deletecollection`, `proxy`); for non-resource paths the lowercase method.
    pub verb: String,
    /// `api` or `apis`.
    pub api_prefix: String,
    /// The API group, empty for core.
    pub api_group: String,
    /// The API version.
    pub api_version: String,
    /// The namespace, empty for cluster-scoped requests. For a namespace itself
    /// (`/api/v1/namespaces/x`) it is that namespace.
    pub namespace: String,
    /// The resource (plural), e.g. `pods`.
    pub resource: String,
    /// The subresource, e.g. `log`, `status`, `scale`.
    pub subresource: String,
    /// The object's name, when the request names one.
    pub name: String,
}

/// Path prefixes that are verbs (`/api/v1/watch/pods`, the deprecated watch-by-path form).
const SPECIAL_VERBS: [&str; 2] = ["proxy", "watch"];
/// Special verbs after which a third part is not a subresource.
const SPECIAL_VERBS_NO_SUBRESOURCES: [&str; 1] = ["proxy"];
/// Subresources of a namespace, which would otherwise read as resources inside it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// The request attributes of `method` on `path` (as sent, percent-encoded) with the raw
/// `query`, exactly as Kubernetes' `RequestInfoFactory.NewRequestInfo` derives them:
///
/// - a path that is not `/api/<version>/<more>` or `/apis/<group>/<version>/<more>` is a
///   non-resource request whose verb is the lowercase method;
/// - POST is `create`, GET and HEAD `get`, PUT `update`, PATCH `patch`, DELETE `delete`, any
///   other method no verb; a `/watch/` or `/proxy/` part after the version is the verb instead;
/// - `namespaces/<ns>/<resource>/...` sets the namespace; `namespaces/<ns>` and its `status`
///   and `finalize` are the namespace object itself;
/// - then the parts are resource, name, subresource;
/// - `get` without a name is `list`, or `watch` when `watch` is set, and then a field selector
///   `metadata.name=<x>` names the object; `delete` without a name is `deletecollection`.
///
/// Where Kubernetes fails (a bare `/api/v1/watch`), the attributes known so far are returned:
/// a resource request with no resource, which no rule but `*` matches.
pub fn resolve(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
    let path = percent_decode(path);
    let mut info = RequestInfo {
        verb: method.as_str().to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    let parts = split_path(&path);
    if let Some(resource) = resource_parts(&parts) {
        info.is_resource_request = true;
        resource.fill(method, query, &mut info);
    }
    info.path = path;
    info
}

/// The parts of a resource path after `api`/`apis`, or `None` for a non-resource path.
struct ResourcePath<'a> {
    prefix: &'a str,
    group: &'a str,
    version: &'a str,
    rest: &'a [&'a str],
}

fn resource_parts<'a>(parts: &'a [&'a str]) -> Option<ResourcePath<'a>> {
    match parts {
        ["api", version, rest @ ..] if !rest.is_empty() => Some(ResourcePath {
            prefix: "api",
            group: "",
            version,
            rest,
        }),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => Some(ResourcePath {
            prefix: "apis",
            group,
            version,
            rest,
        }),
        _ => None,
    }
}

impl ResourcePath<'_> {
    fn fill(&self, method: &Method, query: Option<&str>, info: &mut RequestInfo) {
        info.api_prefix = self.prefix.into();
        info.api_group = self.group.into();
        info.api_version = self.version.into();
        let mut parts = self.rest;
        if let [verb, rest @ ..] = parts {
            if SPECIAL_VERBS.contains(verb) {
                if rest.is_empty() {
                    // Kubernetes: "unable to determine kind and namespace from url".
                    return;
                }
                info.verb = (*verb).into();
                parts = rest;
            } else {
                info.verb = method_verb(method).into();
            }
        }
        if let ["namespaces", namespace, rest @ ..] = parts {
            info.namespace = (*namespace).into();
            if let Some(next) = rest.first() {
                if !NAMESPACE_SUBRESOURCES.contains(next) {
                    parts = rest;
                }
            }
        }
        let subresources_allowed = !SPECIAL_VERBS_NO_SUBRESOURCES.contains(&info.verb.as_str());
        if let Some(resource) = parts.first() {
            info.resource = (*resource).into();
        }
        if let Some(name) = parts.get(1) {
            info.name = (*name).into();
        }
        if subresources_allowed {
            if let Some(subresource) = parts.get(2) {
                info.subresource = (*subresource).into();
            }
        }
        if info.name.is_empty() && info.verb == "get" {
            let params = ListParams::parse(query);
            info.verb = if params.watch { "watch" } else { "list" }.into();
            if let Some(name) = params.pinned_name {
                info.name = name;
            }
        }
        if info.name.is_empty() && info.verb == "delete" {
            info.verb = "deletecollection".into();
        }
    }
}

fn method_verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
}

/// The list options that change a collection GET's attributes.
#[derive(Default)]
struct ListParams {
    watch: bool,
    /// The name a `metadata.name` field selector requires, if it is a usable name.
    pinned_name: Option<String>,
}

impl ListParams {
    fn parse(query: Option<&str>) -> Self {
        let mut params = Self::default();
        let (mut watch, mut selector) = (None, None);
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*key {
                "watch" if watch.is_none() => watch = Some(value),
                "fieldSelector" if selector.is_none() => selector = Some(value),
                _ => {}
            }
        }
        // Kubernetes counts any value but `0` and `false` as a watch. skiff's list handler
        // watches only for `true` and `1` (handlers.rs): authorization must see the verb the
        // handler will serve, or `?watch=yes` would be authorized as a watch and served as a
        // list. Both are to move to Kubernetes' rule together.
        params.watch = watch.is_some_and(|w| w == "true" || w == "1");
        params.pinned_name = selector
            .as_deref()
            .and_then(selector_name)
            .filter(|name| is_valid_path_segment_name(name))
            // skiff's field selector parser trims values, Kubernetes' does not: a name it would
            // read differently is not used, so the list never returns more than was authorized.
            .filter(|name| name.trim() == name);
        params
    }
}

/// The value a field selector requires `metadata.name` to equal (`metadata.name=x` or `==`),
/// as Kubernetes' `fields.ParseSelector(s).RequiresExactMatch("metadata.name")`; `None` when
/// the selector does not parse or pins no name.
fn selector_name(selector: &str) -> Option<String> {
    let mut terms = split_terms(selector);
    terms.sort_unstable();
    let mut pinned = None;
    for term in terms.into_iter().filter(|t| !t.is_empty()) {
        let (field, op, value) = split_term(term)?;
        let value = unescape_value(value)?;
        if pinned.is_none() && op != "!=" && field == "metadata.name" {
            pinned = Some(value);
        }
    }
    pinned
}

/// Splits a field selector at commas not escaped with a backslash.
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in selector.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits one term at its first operator (`!=`, `==`, `=`, tried in that order at each place).
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        for op in ["!=", "==", "="] {
            if term[i..].starts_with(op) {
                return Some((&term[..i], op, &term[i + op.len()..]));
            }
        }
    }
    None
}

/// Removes the backslash escapes of `\`, `,` and `=`; any other escape, or an unescaped `,`
/// or `=`, makes the selector invalid.
fn unescape_value(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            if !matches!(c, '\\' | ',' | '=') {
                return None;
            }
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' | '=' => return None,
            c => out.push(c),
        }
    }
    (!escaped).then_some(out)
}

/// Kubernetes' `path.IsValidPathSegmentName`: a name that can stand in a URL path.
fn is_valid_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains(['/', '%'])
}

/// The path's segments without leading and trailing slashes (none for `/`).
fn split_path(path: &str) -> Vec<&str> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    }
}

/// Decodes `%XX` escapes as Go's `URL.Path` holds the path (so `%2F` becomes a separator,
/// as it does for Kubernetes). A malformed escape is kept as written; bytes that are not
/// UTF-8 become U+FFFD.
fn percent_decode(path: &str) -> String {
    if !path.contains('%') {
        return path.to_owned();
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One expectation: the fields that differ from a non-resource default.
    struct Case {
        method: Method,
        url: &'static str,
        resource_request: bool,
        verb: &'static str,
        group: &'static str,
        version: &'static str,
        namespace: &'static str,
        resource: &'static str,
        subresource: &'static str,
        name: &'static str,
    }

    #[allow(clippy::too_many_arguments, reason = "one table row per call")]
    fn res(
        method: Method,
        url: &'static str,
        verb: &'static str,
        group: &'static str,
        version: &'static str,
        namespace: &'static str,
        resource: &'static str,
        subresource: &'static str,
        name: &'static str,
    ) -> Case {
        Case {
            method,
            url,
            resource_request: true,
            verb,
            group,
            version,
            namespace,
            resource,
            subresource,
            name,
        }
    }

    fn non(method: Method, url: &'static str, verb: &'static str) -> Case {
        Case {
            method,
            url,
            resource_request: false,
            verb,
            group: "",
            version: "",
            namespace: "",
            resource: "",
            subresource: "",
            name: "",
        }
    }

    fn check(cases: Vec<Case>) {
        for c in cases {
            let (path, query) = match c.url.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (c.url, None),
            };
            let info = resolve(&c.method, path, query);
            let prefix = match (c.resource_request, c.group) {
                (false, _) => "",
                (true, "") => "api",
                (true, _) => "apis",
            };
            let expected = RequestInfo {
                is_resource_request: c.resource_request,
                path: percent_decode(path),
                verb: c.verb.into(),
                api_prefix: prefix.into(),
                api_group: c.group.into(),
                api_version: c.version.into(),
                namespace: c.namespace.into(),
                resource: c.resource.into(),
                subresource: c.subresource.into(),
                name: c.name.into(),
            };
            assert_eq!(info, expected, "{} {}", c.method, c.url);
        }
    }

    #[test]
    #[rustfmt::skip]
    fn resource_requests_follow_kubernetes() {
        use Method as M;
        check(vec![
            // Collections and objects, as in Kubernetes' requestinfo_test.go.
            res(M::GET, "/api/v1/namespaces", "list", "", "v1", "", "namespaces", "", ""),
            res(M::GET, "/api/v1/namespaces/other", "get", "", "v1", "other", "namespaces", "", "other"),
            res(M::GET, "/api/v1/namespaces/other/pods", "list", "", "v1", "other", "pods", "", ""),
            res(M::GET, "/api/v1/namespaces/other/pods/foo", "get", "", "v1", "other", "pods", "", "foo"),
            res(M::HEAD, "/api/v1/namespaces/other/pods/foo", "get", "", "v1", "other", "pods", "", "foo"),
            res(M::GET, "/api/v1/pods", "list", "", "v1", "", "pods", "", ""),
            res(M::HEAD, "/api/v1/pods", "list", "", "v1", "", "pods", "", ""),
            res(M::GET, "/api/v1/namespaces/other/pods/foo/", "get", "", "v1", "other", "pods", "", "foo"),
            res(M::GET, "/api/v1/nodes/n1", "get", "", "v1", "", "nodes", "", "n1"),
            res(M::POST, "/api/v1/namespaces/other/pods", "create", "", "v1", "other", "pods", "", ""),
            res(M::PUT, "/api/v1/namespaces/other/pods/foo", "update", "", "v1", "other", "pods", "", "foo"),
            res(M::PATCH, "/api/v1/namespaces/other/pods/foo", "patch", "", "v1", "other", "pods", "", "foo"),
            res(M::DELETE, "/api/v1/namespaces/other/pods/foo", "delete", "", "v1", "other", "pods", "", "foo"),
            res(M::DELETE, "/api/v1/namespaces/other/pods", "deletecollection", "", "v1", "other", "pods", "", ""),
            res(M::OPTIONS, "/api/v1/namespaces/other/pods/foo", "", "", "v1", "other", "pods", "", "foo"),
            // Groups.
            res(M::GET, "/apis/apps/v1/namespaces/prod/deployments/web", "get", "apps", "v1", "prod", "deployments", "", "web"),
            res(M::GET, "/apis/apps/v1/deployments", "list", "apps", "v1", "", "deployments", "", ""),
            res(M::GET, "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:basic-user", "get", "rbac.authorization.k8s.io", "v1", "", "clusterroles", "", "system:basic-user"),
            // Subresources.
            res(M::GET, "/api/v1/namespaces/other/pods/foo/log", "get", "", "v1", "other", "pods", "log", "foo"),
            res(M::POST, "/api/v1/namespaces/other/pods/foo/exec", "create", "", "v1", "other", "pods", "exec", "foo"),
            res(M::GET, "/api/v1/namespaces/other/pods/foo/exec", "get", "", "v1", "other", "pods", "exec", "foo"),
            res(M::POST, "/api/v1/namespaces/other/pods/foo/binding", "create", "", "v1", "other", "pods", "binding", "foo"),
            res(M::PUT, "/api/v1/namespaces/other/pods/foo/status", "update", "", "v1", "other", "pods", "status", "foo"),
            res(M::PATCH, "/apis/apps/v1/namespaces/prod/deployments/web/scale", "patch", "apps", "v1", "prod", "deployments", "scale", "web"),
            res(M::POST, "/api/v1/namespaces/other/pods/foo/eviction", "create", "", "v1", "other", "pods", "eviction", "foo"),
            res(M::PUT, "/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-1/approval", "update", "certificates.k8s.io", "v1", "", "certificatesigningrequests", "approval", "csr-1"),
            res(M::GET, "/api/v1/namespaces/other/pods/foo/proxy/a/b", "get", "", "v1", "other", "pods", "proxy", "foo"),
            // A namespace's own subresources, and a namespace named like one.
            res(M::PUT, "/api/v1/namespaces/other/finalize", "update", "", "v1", "other", "namespaces", "finalize", "other"),
            res(M::PUT, "/api/v1/namespaces/other/status", "update", "", "v1", "other", "namespaces", "status", "other"),
            res(M::GET, "/api/v1/namespaces/status", "get", "", "v1", "status", "namespaces", "", "status"),
            res(M::DELETE, "/api/v1/namespaces/other", "delete", "", "v1", "other", "namespaces", "", "other"),
            // Watches: by path, and by query on a collection.
            res(M::GET, "/api/v1/watch/pods", "watch", "", "v1", "", "pods", "", ""),
            res(M::GET, "/api/v1/watch/namespaces/other/pods", "watch", "", "v1", "other", "pods", "", ""),
            res(M::GET, "/api/v1/watch/namespaces/other/pods/foo", "watch", "", "v1", "other", "pods", "", "foo"),
            res(M::GET, "/api/v1/namespaces/other/pods?watch=true", "watch", "", "v1", "other", "pods", "", ""),
            res(M::GET, "/api/v1/namespaces/other/pods?watch=1", "watch", "", "v1", "other", "pods", "", ""),
            res(M::GET, "/api/v1/namespaces/other/pods?watch=false", "list", "", "v1", "other", "pods", "", ""),
            res(M::GET, "/api/v1/namespaces/other/pods?watch=0", "list", "", "v1", "other", "pods", "", ""),
            res(M::GET, "/api/v1/namespaces/other/pods?watch=1&watch=false", "watch", "", "v1", "other", "pods", "", ""),
            // The watch query only turns a collection GET into a watch.
            res(M::GET, "/api/v1/namespaces/other/pods/foo?watch=true", "get", "", "v1", "other", "pods", "", "foo"),
            res(M::DELETE, "/api/v1/namespaces/other/pods?watch=true", "deletecollection", "", "v1", "other", "pods", "", ""),
            // Proxy by path: the third part is not a subresource.
            res(M::GET, "/api/v1/proxy/namespaces/other/pods/foo/bar", "proxy", "", "v1", "other", "pods", "", "foo"),
            res(M::GET, "/api/v1/proxy/nodes/n1", "proxy", "", "v1", "", "nodes", "", "n1"),
            // Percent-encoded names are decoded.
            res(M::GET, "/api/v1/namespaces/other/pods/a%3Ab", "get", "", "v1", "other", "pods", "", "a:b"),
            res(M::GET, "/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Anode", "get", "rbac.authorization.k8s.io", "v1", "", "clusterroles", "", "system:node"),
            // Kubernetes fails on a bare special verb; what is known is kept.
            res(M::GET, "/api/v1/watch", "get", "", "v1", "", "", "", ""),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn field_selectors_name_a_listed_object() {
        use Method as M;
        check(vec![
            res(M::GET, "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%3Dfoo", "list", "", "v1", "other", "pods", "", "foo"),
            res(M::GET, "/api/v1/namespaces/other/pods?watch=true&fieldSelector=metadata.name=foo", "watch", "", "v1", "other", "pods", "", "foo"),
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name==foo", "list", "", "v1", "", "pods", "", "foo"),
            res(M::GET, "/api/v1/pods?fieldSelector=spec.nodeName=n1,metadata.name=foo", "list", "", "v1", "", "pods", "", "foo"),
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name=foo,", "list", "", "v1", "", "pods", "", "foo"),
            // Sorted terms: the first name term after sorting wins.
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name=b,metadata.name=a", "list", "", "v1", "", "pods", "", "a"),
            // Not an exact match, not the name, or not parseable: no name.
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name!=foo", "list", "", "v1", "", "pods", "", ""),
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.namespace=foo", "list", "", "v1", "", "pods", "", ""),
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name=foo,bogus", "list", "", "v1", "", "pods", "", ""),
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name=a%5Cb", "list", "", "v1", "", "pods", "", ""),
            // Names that cannot stand in a path, or that skiff's list filter would trim.
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name=a/b", "list", "", "v1", "", "pods", "", ""),
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name=..", "list", "", "v1", "", "pods", "", ""),
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name=%20foo", "list", "", "v1", "", "pods", "", ""),
            // Escapes are undone.
            res(M::GET, "/api/v1/pods?fieldSelector=metadata.name=a%5C%2Cb", "list", "", "v1", "", "pods", "", "a,b"),
            // Only collection GETs look at the selector.
            res(M::DELETE, "/api/v1/pods?fieldSelector=metadata.name=foo", "deletecollection", "", "v1", "", "pods", "", ""),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn other_paths_are_non_resource_requests() {
        use Method as M;
        check(vec![
            non(M::GET, "/", "get"),
            non(M::GET, "/healthz", "get"),
            non(M::GET, "/version/", "get"),
            non(M::GET, "/metrics", "get"),
            non(M::GET, "/api", "get"),
            non(M::GET, "/api/", "get"),
            non(M::GET, "/api/v1", "get"),
            non(M::GET, "/api/v1/", "get"),
            non(M::GET, "/apis", "get"),
            non(M::GET, "/apis/apps", "get"),
            non(M::GET, "/apis/apps/v1", "get"),
            non(M::GET, "/apis/apps/v1/", "get"),
            non(M::GET, "/openapi/v3/apis/apps/v1", "get"),
            non(M::POST, "/logs", "post"),
            non(M::DELETE, "/healthz", "delete"),
            non(M::PUT, "/other/v1/pods", "put"),
        ]);
    }

    #[test]
    fn paths_are_decoded_leniently() {
        assert_eq!(percent_decode("/a%2Fb"), "/a/b");
        assert_eq!(percent_decode("/a%zzb%"), "/a%zzb%");
        assert_eq!(percent_decode("/%e6%97%a5"), "/日");
        assert_eq!(percent_decode("/%ff"), "/\u{fffd}");
        let info = resolve(&Method::GET, "/api/v1/namespaces/a%2Fb/pods", None);
        assert_eq!(
            (info.namespace.as_str(), info.resource.as_str()),
            ("a", "b")
        );
        assert_eq!(info.name, "pods");
    }
}
