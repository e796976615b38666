//! Generated requests: paths, query strings, bodies and patches for every served kind, drawn
//! from what the run has learnt of the server (objects it created, continue tokens it got).

use std::fmt;

use base64::Engine as _;
use http::Method;
use serde_json::{json, Value};

use super::values::Gen;
use super::{protobuf, templates};

/// What an input exercises; the run counts inputs per category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Path,
    Query,
    Watch,
    BodyJson,
    BodyYaml,
    BodyProtobuf,
    BodyRandom,
    JsonPatch,
    MergePatch,
    StrategicPatch,
    Delete,
}

impl Category {
    pub const ALL: [Category; 11] = [
        Category::Path,
        Category::Query,
        Category::Watch,
        Category::BodyJson,
        Category::BodyYaml,
        Category::BodyProtobuf,
        Category::BodyRandom,
        Category::JsonPatch,
        Category::MergePatch,
        Category::StrategicPatch,
        Category::Delete,
    ];
}

/// A served kind, as the registry lists it.
#[derive(Debug, Clone)]
pub struct Kind {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn base(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The collection's path in `namespace` (ignored for cluster-scoped kinds).
    pub fn collection(&self, namespace: &str) -> String {
        if self.namespaced {
            format!("{}/namespaces/{namespace}/{}", self.base(), self.plural)
        } else {
            format!("{}/{}", self.base(), self.plural)
        }
    }
}

/// An object the server created, with its last known JSON.
#[derive(Debug, Clone)]
pub struct Known {
    pub kind: usize,
    pub namespace: String,
    pub name: String,
    pub object: Value,
}

/// What the run has learnt of the server.
#[derive(Default)]
pub struct World {
    pub kinds: Vec<Kind>,
    pub objects: Vec<Known>,
    pub namespaces: Vec<String>,
    pub continue_tokens: Vec<String>,
    pub revision: u64,
}

/// Bounds on what the world remembers, so a long run does not grow.
const MAX_KNOWN: usize = 400;
const MAX_TOKENS: usize = 32;

impl World {
    pub fn remember(&mut self, g: &mut Gen, known: Known) {
        if let Some(slot) = self.objects.iter_mut().find(|k| {
            k.kind == known.kind && k.namespace == known.namespace && k.name == known.name
        }) {
            *slot = known;
        } else if self.objects.len() < MAX_KNOWN {
            self.objects.push(known);
        } else {
            let i = g.below(self.objects.len());
            self.objects[i] = known;
        }
    }

    pub fn forget(&mut self, kind: usize, namespace: &str, name: &str) {
        self.objects
            .retain(|k| !(k.kind == kind && k.namespace == namespace && k.name == name));
    }

    pub fn token(&mut self, g: &mut Gen, token: String) {
        if self.continue_tokens.len() < MAX_TOKENS {
            self.continue_tokens.push(token);
        } else {
            let i = g.below(MAX_TOKENS);
            self.continue_tokens[i] = token;
        }
    }
}

/// One generated request.
pub struct Input {
    pub category: Category,
    pub method: Method,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The kind and object the request addresses, when it addresses one (to learn from the
    /// answer).
    pub target: Option<(usize, String, Option<String>)>,
    /// A watch: read its stream for a moment, or to its end when `timeoutSeconds` is short.
    pub watch_ends_within: Option<u64>,
    pub dry_run: bool,
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  {:?}: {} {}", self.category, self.method, self.uri)?;
        for (k, v) in &self.headers {
            writeln!(f, "  {k}: {v}")?;
        }
        const SHOWN: usize = 4000;
        let shown = &self.body[..self.body.len().min(SHOWN)];
        write!(
            f,
            "  body ({} bytes{}): {}",
            self.body.len(),
            if self.body.len() > SHOWN {
                ", first 4000 shown"
            } else {
                ""
            },
            shown.escape_ascii()
        )
    }
}

/// Percent-encodes every byte but ASCII alphanumerics and `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes what a URI cannot carry raw; leaves `%` as it is so broken escapes reach
/// the server.
pub fn uri_safe(s: &str) -> String {
    percent_encode(s, b"-._~%/:@!$&'()*+,;=")
}

/// A query parameter's name or value, encoded as a form encodes it.
fn query_value(s: &str) -> String {
    percent_encode(s, b"-._*")
}

fn label_selector(g: &mut Gen) -> String {
    match g.below(16) {
        0 => "app=fz".into(),
        1 => "app in (a,b),tier!=db".into(),
        2 => "!app".into(),
        3 => "a.b/c=d,e".into(),
        4 => "=".into(),
        5 => "a in ((".into(),
        6 => "x notin ()".into(),
        7 => "a=b=c".into(),
        8 => ",,,".into(),
        9 => "app=fz,".repeat(2000),
        10 => "(".repeat(5000),
        11 => format!("{}=v", "k".repeat(300)),
        12 => "ké=ü".into(),
        13 => "a in (".to_owned() + &"x,".repeat(10_000) + "y)",
        14 => "a>1,b<2".into(),
        _ => "app".into(),
    }
}

fn field_selector(g: &mut Gen) -> String {
    match g.below(12) {
        0 => "metadata.name=fz-1".into(),
        1 => "metadata.namespace!=default".into(),
        2 => "spec.nodeName=n".into(),
        3 => "status.phase=Running".into(),
        4 => "bogus=1".into(),
        5 => "metadata.name".into(),
        6 => "metadata.name==x".into(),
        7 => "metadata.name=x,".repeat(3000),
        8 => "spec.nodeName=".into(),
        9 => "involvedObject.name=p,reason=Fuzz".into(),
        10 => "metadata.name in (a)".into(),
        _ => "type=Opaque".into(),
    }
}

fn continue_token(g: &mut Gen, world: &World) -> String {
    let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    if !world.continue_tokens.is_empty() && g.chance(0.5) {
        let mut t = g.pick(&world.continue_tokens).clone();
        if g.chance(0.5) && !t.is_empty() {
            match g.below(3) {
                0 => t.truncate(g.below(t.len())),
                1 => t.push('A'),
                _ => t = t.chars().rev().collect(),
            }
        }
        return t;
    }
    match g.below(8) {
        0 => b64(json!({"rv": world.revision + 1000, "start": "/registry/"}).to_string()),
        1 => b64(json!({"rv": u64::MAX, "start": "x"}).to_string()),
        2 => b64(json!({"rv": -1, "start": "../../../secrets/kube-system/"}).to_string()),
        3 => b64(json!({"rv": 1, "start": ""}).to_string()),
        4 => b64(json!({"start": 5}).to_string()),
        5 => {
            let n = g.below(200);
            base64::engine::general_purpose::STANDARD.encode(g.bytes(n))
        }
        6 => "!!!".into(),
        _ => b64("x".repeat(10_000)),
    }
}

fn resource_version(g: &mut Gen, world: &World) -> String {
    match g.below(9) {
        0 => String::new(),
        1 => "0".into(),
        2 => world.revision.to_string(),
        3 => (world.revision + 1000).to_string(),
        4 => u64::MAX.to_string(),
        5 => "-1".into(),
        6 => "abc".into(),
        7 => "99999999999999999999999".into(),
        _ => world.revision.saturating_sub(1).to_string(),
    }
}

fn seconds(g: &mut Gen) -> String {
    (*g.pick(&[
        "0",
        "-1",
        "1",
        "30",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "1.5",
        "abc",
        "",
        "315576000001",
    ]))
    .to_owned()
}

/// Query parameters; `watch` adds `watch=true` with a bounded timeout.
fn query(g: &mut Gen, world: &World, n: usize) -> Vec<(String, String)> {
    let mut q = Vec::new();
    for _ in 0..n {
        let (k, v): (&str, String) = match g.below(21) {
            0 => ("labelSelector", label_selector(g)),
            1 => ("fieldSelector", field_selector(g)),
            2 => (
                "limit",
                (*g.pick(&[
                    "-1",
                    "0",
                    "1",
                    "2",
                    "500",
                    "9223372036854775807",
                    "9223372036854775808",
                    "-9223372036854775808",
                    "1e3",
                    "abc",
                    "",
                    "18446744073709551616",
                ]))
                .to_owned(),
            ),
            3 => ("continue", continue_token(g, world)),
            4 => ("resourceVersion", resource_version(g, world)),
            5 => (
                "resourceVersionMatch",
                (*g.pick(&["", "NotOlderThan", "Exact", "bogus"])).to_owned(),
            ),
            6 => (
                "dryRun",
                (*g.pick(&["All", "all", "None", "", "All,All"])).to_owned(),
            ),
            7 => (
                "fieldManager",
                match g.below(4) {
                    0 => "fz".into(),
                    1 => "m".repeat(200),
                    2 => "ü\u{0}".into(),
                    _ => String::new(),
                },
            ),
            8 => (
                "fieldValidation",
                (*g.pick(&["Strict", "Warn", "Ignore", "strict", "x"])).to_owned(),
            ),
            9 => (
                "propagationPolicy",
                (*g.pick(&["Background", "Foreground", "Orphan", "bogus", ""])).to_owned(),
            ),
            10 => ("gracePeriodSeconds", seconds(g)),
            11 => (
                "timeout",
                (*g.pick(&[
                    "1s",
                    "0s",
                    "-1s",
                    "1h",
                    "soon",
                    "99999999999h",
                    "1e400s",
                    "",
                ]))
                .to_owned(),
            ),
            12 => ("pretty", "true".into()),
            13 => (
                "includeObject",
                (*g.pick(&["Object", "None", "Metadata", "x"])).to_owned(),
            ),
            14 => (
                "orphanDependents",
                (*g.pick(&["true", "false", "x"])).to_owned(),
            ),
            15 => (
                "allowWatchBookmarks",
                (*g.pick(&["true", "false", "x"])).to_owned(),
            ),
            16 => (
                "sendInitialEvents",
                (*g.pick(&["true", "false"])).to_owned(),
            ),
            17 => ("timeoutSeconds", seconds(g)),
            18 => ("watch", (*g.pick(&["false", "0", "yes", ""])).to_owned()),
            19 => ("%ZZ", "%FF%FE".into()),
            _ => (*g.pick(&["a[]", "", "limit"]), g.bad_name()),
        };
        q.push((k.to_owned(), v));
    }
    q
}

fn render_query(g: &mut Gen, q: &[(String, String)]) -> String {
    if q.is_empty() {
        return String::new();
    }
    let raw = g.chance(0.1);
    let parts: Vec<String> = q
        .iter()
        .map(|(k, v)| {
            if raw {
                format!("{}={}", uri_safe(k), uri_safe(v))
            } else {
                format!("{}={}", query_value(k), query_value(v))
            }
        })
        .collect();
    format!("?{}", parts.join("&"))
}

const SUBRESOURCES: &[&str] = &[
    "status",
    "scale",
    "binding",
    "eviction",
    "token",
    "log",
    "exec",
    "attach",
    "portforward",
    "proxy",
    "ephemeralcontainers",
    "resize",
    "finalize",
    "approval",
    "bogus",
];

/// A namespace: mostly one that exists.
fn namespace(g: &mut Gen, world: &World) -> String {
    if g.chance(0.1) {
        g.bad_name()
    } else {
        g.pick(&world.namespaces).clone()
    }
}

/// A path of `kind`: its collection or an object, sometimes with a subresource, a bad name, a
/// group or version that does not exist, or extra segments.
fn path(g: &mut Gen, world: &World, k: usize) -> (String, Option<String>) {
    let kind = &world.kinds[k];
    let ns = namespace(g, world);
    let mut p = match g.below(20) {
        0 => format!("/apis/nope.example/v1/{}", kind.plural),
        1 => format!("/api/v2/{}", kind.plural),
        2 => format!("/apis/{}/v9/{}", kind.group, kind.plural),
        3 => format!("/api/v1/watch/namespaces/{ns}/{}", kind.plural),
        4 if kind.namespaced => format!("/apis/{}/{}/{}", kind.group, kind.version, kind.plural)
            .replace("/apis//", "/api/"),
        5 => kind
            .collection(&ns)
            .replace(&kind.plural, &kind.plural.to_uppercase()),
        _ => kind.collection(&ns),
    };
    let mut name = None;
    if g.chance(0.7) {
        let n = own_name(g, world, k);
        p.push('/');
        p.push_str(&n);
        name = Some(n);
        if g.chance(0.3) {
            p.push('/');
            let sub = g.pick::<&str>(SUBRESOURCES);
            p.push_str(sub);
        }
        if g.chance(0.05) {
            p.push_str("/extra/segments");
        }
    }
    match g.below(20) {
        0 => p.push('/'),
        1 => p = p.replacen('/', "//", 2),
        2 => p.push_str("/.."),
        _ => {}
    }
    (uri_safe(&p), name)
}

/// A name for an object of kind `k`: one that exists, a fresh one, or a bad one.
fn own_name(g: &mut Gen, world: &World, k: usize) -> String {
    let existing: Vec<&Known> = world.objects.iter().filter(|o| o.kind == k).collect();
    if !existing.is_empty() && g.chance(0.6) {
        return g.pick(&existing).name.clone();
    }
    g.name()
}

fn accept(g: &mut Gen) -> Option<String> {
    match g.below(10) {
        0 => Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json".into()),
        1 => Some("application/vnd.kubernetes.protobuf".into()),
        2 => Some("application/yaml".into()),
        3 => Some("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io".into()),
        4 => Some("garbage/+;;".into()),
        _ => None,
    }
}

/// A valid object of kind `k` named `name`: from the world when one is known, else its
/// template; then mutated a few times.
fn object(g: &mut Gen, world: &World, k: usize, ns: &str, name: &str) -> Value {
    let kind = &world.kinds[k];
    let known: Vec<&Known> = world.objects.iter().filter(|o| o.kind == k).collect();
    let mut obj = if !known.is_empty() && g.chance(0.4) {
        g.pick(&known).object.clone()
    } else {
        templates::body(&kind.kind)
    };
    if !obj.is_object() {
        obj = json!({});
    }
    obj["apiVersion"] = json!(kind.api_version());
    obj["kind"] = json!(kind.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["name"] = json!(name);
    if kind.namespaced {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let mutations = *g.pick(&[0, 0, 1, 1, 2, 3]);
    for _ in 0..mutations {
        g.mutate(&mut obj);
    }
    obj
}

fn patch_target(g: &mut Gen, world: &World) -> Option<Known> {
    if world.objects.is_empty() {
        return None;
    }
    Some(g.pick(&world.objects).clone())
}

fn object_path(world: &World, known: &Known) -> String {
    let kind = &world.kinds[known.kind];
    uri_safe(&format!(
        "{}/{}",
        kind.collection(&known.namespace),
        known.name
    ))
}

fn json_patch(g: &mut Gen, target: &Value) -> Value {
    if g.chance(0.4) {
        // Well formed: replace or remove existing leaves, add labels; the server applies it.
        let mut ops = Vec::new();
        for _ in 0..=g.below(3) {
            let path = g.pointer(target);
            if path.is_empty() || path.starts_with("/metadata/name") {
                continue;
            }
            let op = match g.below(3) {
                0 => json!({"op": "remove", "path": path}),
                1 => json!({"op": "replace", "path": path, "value": g.scalar()}),
                _ => json!({"op": "add", "path": "/metadata/labels", "value": {"fz": "x"}}),
            };
            ops.push(op);
        }
        return Value::Array(ops);
    }
    if g.chance(0.02) {
        // Over the operation limit.
        return Value::Array(vec![
            json!({"op": "test", "path": "", "value": null});
            10_001
        ]);
    }
    if g.chance(0.02) {
        // The copy bomb: each op doubles the document.
        let mut ops = vec![
            json!({"op": "add", "path": "/metadata/annotations", "value": {"a": "x".repeat(100)}}),
        ];
        for _ in 0..40 {
            ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": "/metadata/annotations/a"}));
        }
        return Value::Array(ops);
    }
    let mut ops = Vec::new();
    for _ in 0..=g.below(6) {
        let op = *g.pick(&["add", "remove", "replace", "move", "copy", "test", "bogus"]);
        let mut path = g.pointer(target);
        match g.below(12) {
            0 => path.push_str("/-"),
            1 => path.push_str("/999999"),
            2 => path.push_str("/-1"),
            3 => path.push_str("/~2"),
            4 => path = "metadata".into(),
            5 => path.push_str("/18446744073709551616"),
            6 => path.push_str("/x/y/z"),
            _ => {}
        }
        let mut o = json!({"op": op, "path": path});
        if matches!(op, "move" | "copy") {
            // Often the path's own parent or child: a move into itself.
            o["from"] = json!(if g.chance(0.3) {
                path.rsplit_once('/')
                    .map_or(String::new(), |(p, _)| p.to_owned())
            } else {
                g.pointer(target)
            });
        }
        if matches!(op, "add" | "replace" | "test") || g.chance(0.1) {
            o["value"] = if g.chance(0.5) {
                let mut v = target.clone();
                let node = g.random_node(&mut v).clone();
                node
            } else {
                g.scalar()
            };
        }
        if g.chance(0.05) {
            o.as_object_mut().map(|m| m.remove("path"));
        }
        ops.push(o);
    }
    if g.chance(0.05) {
        return json!({"op": "add"});
    }
    Value::Array(ops)
}

fn merge_patch(g: &mut Gen, target: &Value) -> Value {
    match g.below(12) {
        0 => return g.scalar(),
        1 => return json!({"metadata": {"labels": g.labels()}}),
        2 => return json!({"metadata": {"name": g.bad_name()}}),
        3 => return json!({"metadata": {"resourceVersion": "1"}, "spec": null}),
        _ => {}
    }
    let mut patch = target.clone();
    for _ in 0..=g.below(3) {
        g.mutate(&mut patch);
    }
    // Mostly a part of the object, with nulls deleting fields.
    if let Value::Object(m) = &mut patch {
        m.retain(|_, _| g.chance(0.5));
        if g.chance(0.3) {
            let key = g.field_name();
            m.insert(key, Value::Null);
        }
    }
    patch
}

fn strategic_patch(g: &mut Gen, target: &Value) -> Value {
    let mut patch = merge_patch(g, target);
    if !patch.is_object() && g.chance(0.5) {
        return patch;
    }
    for _ in 0..=g.below(3) {
        let directive = match g.below(8) {
            0 => (
                "$patch".to_owned(),
                json!(*g.pick(&["replace", "delete", "merge", "bogus"])),
            ),
            1 => (
                "$retainKeys".to_owned(),
                if g.chance(0.7) {
                    json!(["name", "spec", "x"])
                } else {
                    g.scalar()
                },
            ),
            2 => (
                format!("$setElementOrder/{}", g.field_name()),
                if g.chance(0.7) {
                    json!([{"name": "c"}, {"name": "missing"}, 5])
                } else {
                    g.scalar()
                },
            ),
            3 => (
                format!("$deleteFromPrimitiveList/{}", g.field_name()),
                if g.chance(0.7) {
                    json!(["a", 1, null])
                } else {
                    g.scalar()
                },
            ),
            4 => (
                "containers".to_owned(),
                json!([{"name": "c", "$patch": "delete"}, {"$patch": "replace"}, {"name": "d", "image": "i"}]),
            ),
            5 => ("finalizers".to_owned(), json!([{"$patch": "replace"}, "x"])),
            6 => ("$patch".to_owned(), json!("delete")),
            _ => ("$unknownDirective".to_owned(), g.scalar()),
        };
        let node = g.random_node(&mut patch);
        if let Value::Object(m) = node {
            m.insert(directive.0, directive.1);
        } else if let Value::Array(a) = node {
            a.push(json!({ directive.0: directive.1 }));
        }
    }
    patch
}

/// A write to a subresource of `known`: its path segment, method and a valid body.
fn subresource_body(g: &mut Gen, known: &Known) -> (&'static str, Method, Value) {
    let meta = json!({"name": known.name, "namespace": known.namespace});
    match g.below(6) {
        5 => {
            let mut approval = known.object.clone();
            let kind = *g.pick(&["Approved", "Denied", "Failed", "Bogus"]);
            approval["status"] = json!({"conditions": [{"type": kind, "status": "True",
                "reason": "Fuzz", "message": "m", "lastUpdateTime": "2020-01-01T00:00:00Z"}]});
            ("approval", Method::PUT, approval)
        }
        0 => {
            let rv = known.object.pointer("/metadata/resourceVersion").cloned();
            (
                "scale",
                Method::PUT,
                json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                       "metadata": {"name": known.name, "namespace": known.namespace, "resourceVersion": rv},
                       "spec": {"replicas": 2}}),
            )
        }
        1 => (
            "binding",
            Method::POST,
            json!({"apiVersion": "v1", "kind": "Binding", "metadata": meta,
                   "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}),
        ),
        2 => (
            "eviction",
            Method::POST,
            json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": meta,
                   "deleteOptions": {"gracePeriodSeconds": 30}}),
        ),
        3 => (
            "token",
            Method::POST,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": ["a"], "expirationSeconds": 3600,
                            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}}),
        ),
        _ => {
            let mut status = known.object.clone();
            status["status"] = json!({"phase": "Running", "replicas": 1, "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]});
            ("status", Method::PUT, status)
        }
    }
}

fn delete_options(g: &mut Gen) -> Value {
    let mut o = json!({"kind": "DeleteOptions", "apiVersion": "v1"});
    for _ in 0..g.below(4) {
        match g.below(5) {
            0 => o["gracePeriodSeconds"] = g.scalar(),
            1 => {
                o["propagationPolicy"] =
                    json!(*g.pick(&["Background", "Foreground", "Orphan", "bogus"]))
            }
            2 => o["preconditions"] = json!({"resourceVersion": g.bad_name(), "uid": g.scalar()}),
            3 => o["dryRun"] = json!(*g.pick(&[json!(["All"]), json!("All"), json!(["bogus"])])),
            _ => o["orphanDependents"] = g.scalar(),
        }
    }
    o
}

/// One input of `category`.
pub fn generate(g: &mut Gen, world: &World, category: Category) -> Input {
    let k = g.below(world.kinds.len());
    let mut headers = vec![(
        "authorization".to_owned(),
        format!("Bearer {}", super::TOKEN),
    )];
    if g.chance(0.02) {
        headers[0].1 = if g.chance(0.5) {
            "Bearer wrong".into()
        } else {
            "Basic eA==".into()
        };
    }
    if g.chance(0.02) {
        headers.push(("impersonate-user".into(), g.bad_name()));
    }
    if let Some(a) = accept(g) {
        headers.push(("accept".into(), a));
    }
    let mut input = Input {
        category,
        method: Method::GET,
        uri: String::new(),
        headers,
        body: Vec::new(),
        target: None,
        watch_ends_within: None,
        dry_run: false,
    };
    let nq = *g.pick(&[0, 0, 1, 1, 2, 3, 4]);
    let mut q = query(g, world, nq);
    match category {
        Category::Path => {
            let (p, name) = path(g, world, k);
            input.method = g
                .pick(&[
                    Method::GET,
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                    Method::HEAD,
                    Method::OPTIONS,
                    Method::from_bytes(b"BREW").expect("a token"),
                ])
                .clone();
            input.uri = if g.chance(0.1) {
                (*g.pick(&[
                    "/",
                    "/api",
                    "/apis/",
                    "/apis/apps",
                    "/apis/apps/v1/",
                    "/api/v1/",
                    "/version",
                    "/healthz",
                    "/readyz?verbose",
                    "/livez/ping",
                    "/metrics",
                    "/openapi/v3",
                    "/openapi/v3/api/v1",
                    "/openapi/v3/apis/nope/v1",
                    "/openapi/v2",
                    "/.well-known/openid-configuration",
                    "/openid/v1/jwks",
                    "/api/v1/namespaces/default/pods/x/log",
                    "/logs",
                    "/apis/%ZZ/v1/x",
                    "/snapshot",
                ]))
                .to_owned()
            } else {
                p
            };
            input.target = Some((k, String::new(), name));
        }
        Category::Query | Category::Watch => {
            let ns = namespace(g, world);
            input.uri = uri_safe(&world.kinds[k].collection(&ns));
            if g.chance(0.1) && world.kinds[k].namespaced {
                // Across namespaces.
                input.uri = input
                    .uri
                    .replace(&format!("/namespaces/{}", uri_safe(&ns)), "");
            }
            if category == Category::Watch {
                q.retain(|(k, _)| k != "timeoutSeconds" && k != "watch");
                q.push(("watch".into(), (*g.pick(&["true", "1"])).to_owned()));
                // Waiting out a timeout costs a second: rarely.
                if g.chance(0.03) {
                    q.push(("timeoutSeconds".into(), "1".into()));
                    input.watch_ends_within = Some(1);
                } else {
                    q.push(("timeoutSeconds".into(), "5".into()));
                    input.watch_ends_within = Some(0);
                }
                if g.chance(0.2) {
                    q.push(("resourceVersion".into(), resource_version(g, world)));
                }
            } else {
                q.extend(query(g, world, 1));
            }
            input.target = Some((k, ns, None));
        }
        Category::BodyJson | Category::BodyYaml | Category::BodyProtobuf | Category::BodyRandom => {
            let ns = namespace(g, world);
            let update = !world.objects.is_empty() && g.chance(0.3);
            if !world.objects.is_empty() && g.chance(0.15) {
                // A subresource write: scale, binding, eviction, token, status.
                let known = g.pick(&world.objects).clone();
                let (sub, method, mut body) = subresource_body(g, &known);
                for _ in 0..g.below(3) {
                    g.mutate(&mut body);
                }
                input.method = method;
                input.uri = format!("{}/{sub}", object_path(world, &known));
                input
                    .headers
                    .push(("content-type".into(), "application/json".into()));
                input.body = g.json_text(&body);
                input.target = Some((known.kind, known.namespace, Some(known.name)));
                input.dry_run = false;
                input.uri.push_str(&render_query(g, &q));
                input.dry_run = q
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "dryRun")
                    .is_some_and(|(_, v)| v == "All");
                return input;
            }
            let (path, name, ns) = if update {
                let known = g.pick(&world.objects).clone();
                input.method = Method::PUT;
                let sub = if g.chance(0.2) { "/status" } else { "" };
                (
                    format!("{}{sub}", object_path(world, &known)),
                    known.name,
                    known.namespace,
                )
            } else {
                input.method = Method::POST;
                let name = g.name();
                (
                    uri_safe(&world.kinds[if g.chance(0.95) { k } else { 0 }].collection(&ns)),
                    name,
                    ns,
                )
            };
            let kind = world
                .objects
                .iter()
                .find(|o| o.name == name && o.namespace == ns)
                .map_or(k, |o| o.kind);
            let obj = object(g, world, kind, &ns, &name);
            let (ct, body) = match category {
                Category::BodyJson => ("application/json", g.json_text(&obj)),
                Category::BodyYaml => ("application/yaml", g.yaml_text(&obj)),
                Category::BodyProtobuf => (
                    "application/vnd.kubernetes.protobuf",
                    protobuf::body(
                        g,
                        &name,
                        world.kinds[kind].namespaced.then_some(ns.as_str()),
                    ),
                ),
                _ => {
                    let yaml = g.chance(0.3);
                    (
                        *g.pick(&[
                            if yaml {
                                "application/yaml"
                            } else {
                                "application/json"
                            },
                            "text/plain",
                            "",
                            "application/json; charset=utf-16",
                        ]),
                        g.hostile_text(yaml),
                    )
                }
            };
            if !ct.is_empty() {
                input.headers.push(("content-type".into(), ct.into()));
            }
            input.body = body;
            input.uri = path;
            input.target = Some((kind, ns, Some(name)));
        }
        Category::JsonPatch | Category::MergePatch | Category::StrategicPatch => {
            input.method = Method::PATCH;
            let known = patch_target(g, world).unwrap_or_else(|| Known {
                kind: k,
                namespace: "default".into(),
                name: g.name(),
                object: templates::body(&world.kinds[k].kind),
            });
            let sub = *g.pick(&["", "", "", "", "", "", "", "", "/status", "/scale"]);
            input.uri = format!("{}{sub}", object_path(world, &known));
            let (ct, patch) = match category {
                Category::JsonPatch => {
                    ("application/json-patch+json", json_patch(g, &known.object))
                }
                Category::MergePatch => (
                    "application/merge-patch+json",
                    merge_patch(g, &known.object),
                ),
                _ => (
                    "application/strategic-merge-patch+json",
                    strategic_patch(g, &known.object),
                ),
            };
            let ct = if g.chance(0.03) {
                *g.pick(&["application/apply-patch+yaml", "application/json", "text/x"])
            } else {
                ct
            };
            input.headers.push(("content-type".into(), ct.into()));
            input.body = if g.chance(0.1) {
                g.json_text(&patch)
            } else {
                patch.to_string().into_bytes()
            };
            input.target = Some((known.kind, known.namespace, Some(known.name)));
        }
        Category::Delete => {
            input.method = Method::DELETE;
            let ns = namespace(g, world);
            let (path, kind, ns, name) = if !world.objects.is_empty() && g.chance(0.6) {
                let known = g.pick(&world.objects).clone();
                (
                    object_path(world, &known),
                    known.kind,
                    known.namespace,
                    Some(known.name),
                )
            } else if g.chance(0.5) {
                // deletecollection, with selectors.
                q.push(("labelSelector".into(), label_selector(g)));
                (uri_safe(&world.kinds[k].collection(&ns)), k, ns, None)
            } else {
                let name = g.name();
                (
                    uri_safe(&format!("{}/{name}", world.kinds[k].collection(&ns))),
                    k,
                    ns,
                    Some(name),
                )
            };
            if g.chance(0.5) {
                input
                    .headers
                    .push(("content-type".into(), "application/json".into()));
                let options = delete_options(g);
                input.body = g.json_text(&options);
            }
            input.uri = path;
            input.target = Some((kind, ns, name));
        }
    }
    // The server reads the last of repeated parameters.
    input.dry_run = q
        .iter()
        .rev()
        .find(|(k, _)| k == "dryRun")
        .is_some_and(|(_, v)| v == "All")
        || (input.method == Method::DELETE
            && serde_json::from_slice::<Value>(&input.body)
                .ok()
                .and_then(|b| b.get("dryRun").cloned())
                .is_some_and(|d| d == json!(["All"])));
    input.uri.push_str(&render_query(g, &q));
    input
}
