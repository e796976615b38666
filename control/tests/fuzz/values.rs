//! Values the generators draw from: extremes, bad names, hostile strings, and mutations of
//! JSON documents.

use rand::rngs::StdRng;
use rand::Rng as _;
use serde_json::{json, Map, Value};

/// The fuzzer's random source: one seeded RNG, so a run is replayed from its seed.
pub struct Gen {
    rng: StdRng,
    /// Makes every generated object name fresh.
    counter: u64,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng as _;
        Self {
            rng: StdRng::seed_from_u64(seed),
            counter: 0,
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// A number in `range`.
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn u64(&mut self) -> u64 {
        self.rng.random()
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.random()).collect()
    }

    /// A valid, unused DNS-1123 name.
    pub fn fresh_name(&mut self) -> String {
        self.counter += 1;
        format!("fz-{}", self.counter)
    }

    /// A name Kubernetes refuses, or that tests the path's parsing.
    pub fn bad_name(&mut self) -> String {
        let n = self.below(22);
        match n {
            0 => String::new(),
            1 => ".".into(),
            2 => "..".into(),
            3 => "a".repeat(64),
            4 => "a".repeat(254),
            5 => "a".repeat(300),
            6 => "a".repeat(5000),
            7 => "Ünïcödé".into(),
            8 => "名前".into(),
            9 => "%2e%2e".into(),
            10 => "a%2Fb".into(),
            11 => "%00".into(),
            12 => "%ZZ".into(),
            13 => "%FF%FE".into(),
            14 => "UPPER".into(),
            15 => "-a".into(),
            16 => "a_b".into(),
            17 => "a..b".into(),
            18 => "a:b".into(),
            19 => "😀\u{202e}".into(),
            20 => "a%20b".into(),
            _ => "~".into(),
        }
    }

    /// A name: mostly fresh and valid, sometimes bad.
    pub fn name(&mut self) -> String {
        if self.chance(0.15) {
            self.bad_name()
        } else {
            self.fresh_name()
        }
    }

    /// A hostile scalar or small container.
    pub fn scalar(&mut self) -> Value {
        match self.below(40) {
            0 => Value::Null,
            1 => json!(true),
            2 => json!(false),
            3 => json!(0),
            4 => json!(-1),
            5 => json!(1),
            6 => json!(i64::MAX),
            7 => json!(i64::MIN),
            8 => json!(u64::MAX),
            9 => json!(1.5),
            10 => json!(-1e308),
            11 => json!(1e308),
            12 => json!(9_007_199_254_740_993_u64),
            13 => json!(i64::from(i32::MAX) + 1),
            14 => json!(i32::MIN),
            15 => json!(""),
            16 => json!("x"),
            17 => json!("x".repeat(1000)),
            18 => json!("y".repeat(70_000)),
            19 => json!("é😀\u{202e}\u{0}"),
            20 => json!("10"),
            21 => json!("1Gi"),
            22 => json!("-1"),
            23 => json!("999999999999999999999Gi"),
            24 => json!("1e400"),
            25 => json!("2020-01-01T00:00:00Z"),
            26 => json!("0001-01-01T00:00:00Z"),
            27 => json!("9999-12-31T23:59:59Z"),
            28 => json!("not-a-time"),
            29 => json!([]),
            30 => json!({}),
            31 => json!([null]),
            32 => json!({"": ""}),
            33 => json!(-9_223_372_036_i64),
            34 => json!(315_576_000_000_i64),
            35 => json!("*/1 * * * *"),
            36 => json!("TZ=Mars/Olympus * * * * *"),
            37 => json!({"name": "c", "image": "i"}),
            38 => json!(["a", "a"]),
            _ => json!(-0.0),
        }
    }

    /// Nested arrays or objects `depth` deep around `leaf`.
    pub fn nested(&mut self, depth: usize) -> Value {
        let mut v = json!(1);
        let object = self.chance(0.5);
        for _ in 0..depth {
            v = if object {
                json!({ "a": v })
            } else {
                json!([v])
            };
        }
        v
    }

    /// A nesting depth around the decoders' limits.
    pub fn depth(&mut self) -> usize {
        *self.pick(&[2, 10, 60, 100, 126, 127, 128, 129, 150])
    }

    /// A field name that means something somewhere in the API.
    pub fn field_name(&mut self) -> String {
        const NAMES: &[&str] = &[
            "tolerationSeconds",
            "activeDeadlineSeconds",
            "startingDeadlineSeconds",
            "terminationGracePeriodSeconds",
            "progressDeadlineSeconds",
            "minReadySeconds",
            "ttlSecondsAfterFinished",
            "backoffLimit",
            "parallelism",
            "completions",
            "replicas",
            "revisionHistoryLimit",
            "leaseDurationSeconds",
            "expirationSeconds",
            "timeoutSeconds",
            "periodSeconds",
            "initialDelaySeconds",
            "failureThreshold",
            "port",
            "targetPort",
            "nodePort",
            "containerPort",
            "priority",
            "value",
            "weight",
            "generation",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
            "finalizers",
            "managedFields",
            "labels",
            "annotations",
            "generateName",
            "namespace",
            "name",
            "$patch",
            "status",
            "spec",
            "data",
            "binaryData",
            "stringData",
            "selector",
            "matchLabels",
            "matchExpressions",
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "type",
            "externalName",
            "schedule",
            "timeZone",
            "suspend",
            "nodeName",
            "tolerations",
            "affinity",
            "securityContext",
            "runAsUser",
            "fsGroup",
            "sysctls",
            "hostNetwork",
            "volumes",
            "subPath",
            "image",
            "command",
            "env",
            "resources",
            "limits",
            "requests",
            "cpu",
            "memory",
            "rules",
            "subjects",
            "roleRef",
            "aggregationRule",
            "endpoints",
            "addresses",
            "ports",
            "request",
            "signerName",
            "usages",
            "conditions",
            "phase",
            "podCIDR",
            "taints",
            "unschedulable",
            "eventTime",
            "count",
            "involvedObject",
        ];
        if self.chance(0.05) {
            return self.bad_name();
        }
        (*self.pick(NAMES)).to_owned()
    }

    /// Labels or annotations with keys and values Kubernetes refuses among valid ones.
    pub fn labels(&mut self) -> Value {
        let mut m = Map::new();
        for _ in 0..self.below(4) {
            let key = match self.below(10) {
                0 => "a".repeat(64),
                1 => format!("{}/x", "d".repeat(254)),
                2 => "example.com/".into(),
                3 => "/x".into(),
                4 => "a/b/c".into(),
                5 => "ké".into(),
                6 => String::new(),
                _ => "app".into(),
            };
            let value = match self.below(6) {
                0 => json!("v".repeat(64)),
                1 => json!("-bad-"),
                2 => json!("x".repeat(300_000)),
                3 => self.scalar(),
                _ => json!("ok"),
            };
            m.insert(key, value);
        }
        Value::Object(m)
    }

    /// Changes `value` once at a random place.
    pub fn mutate(&mut self, value: &mut Value) {
        if self.chance(0.3) {
            // A leaf chosen evenly, so deep fields (a toleration's seconds) are hit as often as
            // shallow ones; numbers mostly become extremes.
            let mut leaves = Vec::new();
            leaf_pointers(value, String::new(), &mut leaves);
            if !leaves.is_empty() {
                let at = leaves.swap_remove(self.below(leaves.len()));
                let number = value.pointer(&at).is_some_and(Value::is_number);
                let new = if number && self.chance(0.7) {
                    self.pick(&[
                        json!(i64::MAX),
                        json!(i64::MIN),
                        json!(-1),
                        json!(0),
                        json!(i32::MAX),
                        json!(i64::from(i32::MAX) + 1),
                        json!(u64::MAX),
                        json!(1e300),
                        json!(315_576_000_001_i64),
                    ])
                    .clone()
                } else {
                    self.scalar()
                };
                if let Some(slot) = value.pointer_mut(&at) {
                    *slot = new;
                }
                return;
            }
        }
        let node = self.random_node(value);
        match self.below(9) {
            0 | 1 => *node = self.scalar(),
            2 => {
                let depth = self.depth();
                *node = self.nested(depth);
            }
            3 => match node {
                Value::Object(m) if !m.is_empty() => {
                    let key = m.keys().nth(self.below(m.len())).cloned();
                    key.map(|k| m.remove(&k));
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(self.below(a.len()));
                }
                _ => *node = Value::Null,
            },
            4 | 5 => {
                let key = self.field_name();
                let v = self.scalar();
                match node {
                    Value::Object(m) => {
                        m.insert(key, v);
                    }
                    other => *other = json!({ key: v }),
                }
            }
            6 => {
                // Swap a number for an extreme, a string for a number, and so on.
                *node = match node {
                    Value::Number(_) => self
                        .pick(&[
                            json!(i64::MAX),
                            json!(i64::MIN),
                            json!(-1),
                            json!(u64::MAX),
                            json!(2.5),
                            json!(i64::MAX / 1000),
                        ])
                        .clone(),
                    Value::String(s) => {
                        if self.chance(0.5) {
                            json!(s.len())
                        } else {
                            json!(s.repeat(1 + self.below(300)))
                        }
                    }
                    Value::Bool(b) => json!(if *b { "true" } else { "false" }),
                    Value::Array(a) => json!({ "0": a.first().cloned() }),
                    Value::Object(_) => json!([node.clone()]),
                    Value::Null => json!({}),
                };
            }
            7 => {
                if let Value::Array(a) = node {
                    if let Some(first) = a.first().cloned() {
                        let n = *self.pick(&[2, 10, 1000]);
                        a.extend(std::iter::repeat_n(first, n));
                    }
                } else {
                    *node = self.labels();
                }
            }
            _ => {
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    let which = if self.chance(0.5) {
                        "labels"
                    } else {
                        "annotations"
                    };
                    let labels = self.labels();
                    meta.insert(which.into(), labels);
                }
            }
        }
    }

    /// A random node of `value`, reached by a random walk from the root.
    pub fn random_node<'a>(&mut self, value: &'a mut Value) -> &'a mut Value {
        let mut node = value;
        loop {
            if self.chance(0.25) {
                return node;
            }
            let len = match &*node {
                Value::Object(m) => m.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            };
            if len == 0 {
                return node;
            }
            let i = self.below(len);
            node = match node {
                Value::Object(m) => m.values_mut().nth(i).expect("in range"),
                Value::Array(a) => &mut a[i],
                _ => unreachable!("only containers have children"),
            };
        }
    }

    /// A JSON pointer to a node of `value` (escaped as RFC 6901 says).
    pub fn pointer(&mut self, value: &Value) -> String {
        let mut path = String::new();
        let mut node = value;
        loop {
            if self.chance(0.3) {
                return path;
            }
            match node {
                Value::Object(m) if !m.is_empty() => {
                    let (k, v) = m.iter().nth(self.below(m.len())).expect("in range");
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    node = v;
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = self.below(a.len());
                    path.push_str(&format!("/{i}"));
                    node = &a[i];
                }
                _ => return path,
            }
        }
    }

    /// JSON text of `value`, sometimes with what strict parsers refuse: duplicate keys,
    /// invalid UTF-8, a byte-order mark, a truncation.
    pub fn json_text(&mut self, value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let quirky = self.chance(0.2);
        self.write_json(value, quirky, &mut out);
        if quirky {
            match self.below(5) {
                0 => out.truncate(self.below(out.len() + 1)),
                1 => {
                    let mut bom = vec![0xEF, 0xBB, 0xBF];
                    bom.append(&mut out);
                    out = bom;
                }
                2 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] = self.u64() as u8;
                }
                _ => {}
            }
        }
        out
    }

    fn write_json(&mut self, value: &Value, quirky: bool, out: &mut Vec<u8>) {
        match value {
            Value::Object(m) => {
                out.push(b'{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(json!(k).to_string().as_bytes());
                    out.push(b':');
                    if quirky && self.chance(0.05) {
                        // The same key twice: the last one wins in encoding/json, as in serde.
                        let other = self.scalar();
                        out.extend_from_slice(other.to_string().as_bytes());
                        out.push(b',');
                        out.extend_from_slice(json!(k).to_string().as_bytes());
                        out.push(b':');
                    }
                    self.write_json(v, quirky, out);
                }
                out.push(b'}');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.write_json(v, quirky, out);
                }
                out.push(b']');
            }
            Value::String(s) if quirky && self.chance(0.03) => {
                // Invalid UTF-8 inside a string.
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(&[0xC3, 0x28, 0xFF]);
                out.push(b'"');
            }
            Value::Number(_) if quirky && self.chance(0.03) => {
                out.extend_from_slice(
                    self.pick(&["1e999", "-0", "01", "NaN", "1.", "0x10"])
                        .as_bytes(),
                );
            }
            other => out.extend_from_slice(other.to_string().as_bytes()),
        }
    }

    /// A body that is deep or odd as text, beyond what a `Value` holds.
    pub fn hostile_text(&mut self, yaml: bool) -> Vec<u8> {
        let depth = *self.pick(&[129, 1000, 100_000]);
        let head = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"deep"},"data":"#;
        match self.below(if yaml { 6 } else { 4 }) {
            0 => format!("{head}{}1{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
            1 => format!("{head}{}", "{\"a\":".repeat(depth)).into_bytes(),
            2 => {
                let n = self.below(3_000_000);
                self.bytes(n)
            }
            3 => format!("{head}\"{}\"}}", "\\u0000".repeat(100_000)).into_bytes(),
            4 => {
                // Aliases nested ten levels, ten wide: 10^10 nodes when expanded.
                let mut bomb =
                    String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\nx0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
                for l in 1..10 {
                    let prev = format!("*a{}", l - 1);
                    bomb.push_str(&format!(
                        "x{l}: &a{l} [{}]\n",
                        [prev.as_str(); 10].join(",")
                    ));
                }
                bomb.into_bytes()
            }
            _ => {
                let mut y = String::from(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: deep\ndata:\n",
                );
                for i in 0..depth.min(2000) {
                    y.push_str(&" ".repeat(2 * (i + 1)));
                    y.push_str("a:\n");
                }
                y.into_bytes()
            }
        }
    }

    /// YAML text of `value`, sometimes with anchors, tags, merge keys or several documents.
    pub fn yaml_text(&mut self, value: &Value) -> Vec<u8> {
        let mut text = serde_yaml::to_string(value).unwrap_or_default();
        match self.below(8) {
            0 => text.push_str("extra: &a {k: v}\nmore: *a\nmerged:\n  <<: *a\n"),
            1 => text = format!("---\n{text}---\n{text}"),
            2 => text.push_str("tagged: !!binary aGVsbG8=\nodd: !custom/tag x\n"),
            3 => text.push_str("\t: tab\n"),
            4 => text.push_str("dangling: *nothing\n"),
            5 => text.insert_str(0, "%YAML 1.1\n---\n"),
            _ => {}
        }
        text.into_bytes()
    }
}

/// The JSON pointers of every scalar in `value`.
fn leaf_pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                leaf_pointers(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                leaf_pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}
