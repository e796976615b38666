//! Sets of field paths, and their `FieldsV1` JSON form (structured-merge-diff's `fieldpath`
//! package, which Kubernetes writes into `metadata.managedFields`).
//!
//! A set is a tree: each child is one path element (`f:name` a map field, `k:{"name":"a"}` the
//! item of a map list with these keys, `v:"x"` the item of a set list, `i:3` a list item by
//! index) and says whether the path ending there is in the set (`.` in FieldsV1) and which
//! longer paths are. A leaf child (`"f:image": {}`) is a member with nothing under it.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// One step of a field path. The variant order is structured-merge-diff's: fields sort before
/// keys, keys before values, values before indices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of a map (`f:`).
    Field(String),
    /// A map-list item by its keys (`k:`), held as the compact JSON of the key object
    /// (`{"name":"a"}`, keys sorted), which is also its FieldsV1 spelling.
    Key(String),
    /// A set-list item (`v:`), held as its compact JSON.
    Value(String),
    /// A list item by position (`i:`), for lists Kubernetes cannot key.
    Index(u64),
}

impl PathElement {
    /// The item of a map list whose key fields have these values.
    pub fn key(fields: &Map<String, Value>) -> Self {
        // serde_json's map is sorted by key (no `preserve_order`), as FieldsV1 needs.
        Self::Key(Value::Object(fields.clone()).to_string())
    }

    /// The item of a set list with this value.
    pub fn value(v: &Value) -> Self {
        Self::Value(v.to_string())
    }

    /// The FieldsV1 key of this element.
    pub fn encode(&self) -> String {
        match self {
            Self::Field(name) => format!("f:{name}"),
            Self::Key(json) => format!("k:{json}"),
            Self::Value(json) => format!("v:{json}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a FieldsV1 key (`f:spec`, `k:{"name":"a"}`, `v:"x"`, `i:0`).
    pub fn decode(s: &str) -> Result<Self, String> {
        let (prefix, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("unexpected field path element {s:?}"))?;
        match prefix {
            "f" => Ok(Self::Field(rest.to_owned())),
            "k" => match serde_json::from_str::<Value>(rest) {
                Ok(Value::Object(fields)) if !fields.is_empty() => Ok(Self::key(&fields)),
                _ => Err(format!("the key of {s:?} is not a JSON object")),
            },
            "v" => serde_json::from_str::<Value>(rest)
                .map(|v| Self::value(&v))
                .map_err(|e| format!("the value of {s:?} is not JSON: {e}")),
            "i" => rest
                .parse()
                .map(Self::Index)
                .map_err(|_| format!("the index of {s:?} is not a number")),
            _ => Err(format!("unknown field path element prefix in {s:?}")),
        }
    }
}

/// A field path as structured-merge-diff prints it in conflict messages:
/// `.spec.containers[name="nginx"].image`, `.metadata.finalizers[="a"]`, `.items[0]`.
pub struct PathDisplay<'a>(pub &'a [PathElement]);

impl fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for element in self.0 {
            match element {
                PathElement::Field(name) => write!(f, ".{name}")?,
                PathElement::Key(json) => {
                    let fields: Map<String, Value> = serde_json::from_str(json).unwrap_or_default();
                    let parts: Vec<String> =
                        fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, "[{}]", parts.join(","))?;
                }
                PathElement::Value(json) => write!(f, "[={json}]")?,
                PathElement::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A set of field paths (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// Whether the path leading here is itself in the set (`.`).
    member: bool,
    children: BTreeMap<PathElement, FieldSet>,
}

/// How deep a FieldsV1 document may nest: far more than any object (whose own nesting the
/// JSON decoder bounds), and a bound on the recursion of decoding it.
const MAX_DEPTH: usize = 256;

impl FieldSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the set has no path.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Adds `path` (the empty path is the root itself).
    pub fn insert(&mut self, path: &[PathElement]) {
        let mut node = self;
        for element in path {
            node = node.children.entry(element.clone()).or_default();
        }
        node.member = true;
    }

    /// Whether `path` is in the set.
    pub fn contains(&self, path: &[PathElement]) -> bool {
        let mut node = self;
        for element in path {
            match node.children.get(element) {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.member
    }

    /// The subtree under `element` (the paths that continue through it), if any.
    pub fn child(&self, element: &PathElement) -> Option<&FieldSet> {
        self.children.get(element)
    }

    /// The subtree under `element`, made if missing.
    pub fn child_mut(&mut self, element: PathElement) -> &mut FieldSet {
        self.children.entry(element).or_default()
    }

    /// Whether the path leading to this node is in the set.
    pub fn is_member(&self) -> bool {
        self.member
    }

    /// The elements this node has subtrees for.
    pub fn elements(&self) -> impl Iterator<Item = (&PathElement, &FieldSet)> {
        self.children.iter()
    }

    /// Paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.union_with(other);
        out
    }

    /// Adds every path of `other`.
    pub fn union_with(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (element, theirs) in &other.children {
            match self.children.get_mut(element) {
                Some(mine) => mine.union_with(theirs),
                None => {
                    self.children.insert(element.clone(), theirs.clone());
                }
            }
        }
    }

    /// Paths of this set that are not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut children = BTreeMap::new();
        for (element, mine) in &self.children {
            let rest = match other.children.get(element) {
                Some(theirs) => mine.difference(theirs),
                None => mine.clone(),
            };
            if !rest.is_empty() {
                children.insert(element.clone(), rest);
            }
        }
        FieldSet {
            member: self.member && !other.member,
            children,
        }
    }

    /// Paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut children = BTreeMap::new();
        for (element, mine) in &self.children {
            if let Some(theirs) = other.children.get(element) {
                let both = mine.intersection(theirs);
                if !both.is_empty() {
                    children.insert(element.clone(), both);
                }
            }
        }
        FieldSet {
            member: self.member && other.member,
            children,
        }
    }

    /// Every path in the set, in order.
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        fn walk(node: &FieldSet, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
            if node.member {
                out.push(prefix.clone());
            }
            for (element, child) in &node.children {
                prefix.push(element.clone());
                walk(child, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// The set as FieldsV1 JSON.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        // A subtree with no member (left by `child_mut`) holds no path.
        for (element, child) in self.children.iter().filter(|(_, c)| !c.is_empty()) {
            map.insert(element.encode(), child.to_json());
        }
        Value::Object(map)
    }

    /// Parses FieldsV1 JSON. The root stands for the object itself and is never a member.
    pub fn from_json(value: &Value) -> Result<FieldSet, String> {
        let mut set = Self::parse(value, 0)?;
        set.member = false;
        Ok(set)
    }

    fn parse(value: &Value, depth: usize) -> Result<FieldSet, String> {
        if depth > MAX_DEPTH {
            return Err("the field set nests too deeply".into());
        }
        let Value::Object(map) = value else {
            return Err(format!(
                "expected a JSON object in a field set, got {value}"
            ));
        };
        let mut set = FieldSet {
            // A child written `{}` is a leaf: the path itself is in the set.
            member: map.is_empty(),
            children: BTreeMap::new(),
        };
        for (key, child) in map {
            if key == "." {
                if child.as_object().is_none_or(|m| !m.is_empty()) {
                    return Err("the value of \".\" in a field set must be {}".into());
                }
                set.member = true;
                continue;
            }
            let element = PathElement::decode(key)?;
            set.children.insert(element, Self::parse(child, depth + 1)?);
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The managedFields of `kubectl create deployment nginx --image=nginx` on a Kubernetes
    /// cluster (the Update entry of manager kubectl-create), as the API returns it.
    fn created_deployment() -> Value {
        json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:progressDeadlineSeconds": {},
                "f:replicas": {},
                "f:selector": {},
                "f:strategy": {
                    "f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}},
                    "f:type": {}
                },
                "f:template": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {
                        "f:containers": {
                            "k:{\"name\":\"nginx\"}": {
                                ".": {},
                                "f:image": {},
                                "f:imagePullPolicy": {},
                                "f:name": {},
                                "f:ports": {
                                    ".": {},
                                    "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                        ".": {}, "f:containerPort": {}, "f:protocol": {}
                                    }
                                }
                            }
                        },
                        "f:dnsPolicy": {},
                        "f:restartPolicy": {}
                    }
                }
            }
        })
    }

    #[test]
    fn fields_v1_round_trips_exactly() {
        let doc = created_deployment();
        let set = FieldSet::from_json(&doc).unwrap();
        assert_eq!(set.to_json(), doc);
        let finalizers =
            json!({"f:metadata": {"f:finalizers": {".": {}, "v:\"example.com/x\"": {}}}});
        assert_eq!(
            FieldSet::from_json(&finalizers).unwrap().to_json(),
            finalizers
        );
    }

    #[test]
    fn membership_follows_dots_and_leaves() {
        let set = FieldSet::from_json(&created_deployment()).unwrap();
        let f = |s: &str| PathElement::Field(s.into());
        assert!(set.contains(&[f("metadata"), f("labels")]));
        assert!(set.contains(&[f("metadata"), f("labels"), f("app")]));
        assert!(!set.contains(&[f("metadata")]));
        assert!(!set.contains(&[f("spec"), f("strategy")]));
        let nginx = PathElement::Key(r#"{"name":"nginx"}"#.into());
        let image = [
            f("spec"),
            f("template"),
            f("spec"),
            f("containers"),
            nginx.clone(),
            f("image"),
        ];
        assert!(set.contains(&image));
        assert!(set.contains(&image[..5]));
        assert_eq!(
            PathDisplay(&image).to_string(),
            r#".spec.template.spec.containers[name="nginx"].image"#
        );
    }

    #[test]
    fn set_algebra() {
        let a = FieldSet::from_json(&json!({"f:a": {}, "f:b": {"f:c": {}, "f:d": {}}})).unwrap();
        let b = FieldSet::from_json(&json!({"f:b": {"f:c": {}}, "f:e": {}})).unwrap();
        assert_eq!(
            a.union(&b).to_json(),
            json!({"f:a": {}, "f:b": {"f:c": {}, "f:d": {}}, "f:e": {}})
        );
        assert_eq!(
            a.difference(&b).to_json(),
            json!({"f:a": {}, "f:b": {"f:d": {}}})
        );
        assert_eq!(a.intersection(&b).to_json(), json!({"f:b": {"f:c": {}}}));
        assert!(a.difference(&a).is_empty());
        // A member node minus its children keeps being a member.
        let labels = FieldSet::from_json(&json!({"f:l": {".": {}, "f:x": {}}})).unwrap();
        let x = FieldSet::from_json(&json!({"f:l": {"f:x": {}}})).unwrap();
        assert_eq!(labels.difference(&x).to_json(), json!({"f:l": {}}));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            json!([]),
            json!({"x:y": {}}),
            json!({"f:a": 1}),
            json!({"k:[1]": {}}),
            json!({"v:{": {}}),
            json!({"i:-1": {}}),
            json!({"f:a": {".": {"f:b": {}}}}),
            json!({"nocolon": {}}),
        ] {
            assert!(FieldSet::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_print_as_structured_merge_diff_does() {
        let set = FieldSet::from_json(&json!({
            "f:metadata": {"f:finalizers": {"v:\"a\"": {}}},
            "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {"f:name": {}}}, "f:args": {"i:0": {}}}
        }))
        .unwrap();
        let printed: Vec<String> = set
            .paths()
            .iter()
            .map(|p| PathDisplay(p).to_string())
            .collect();
        assert_eq!(
            printed,
            [
                r#".metadata.finalizers[="a"]"#,
                ".spec.args[0]",
                r#".spec.ports[port=80,protocol="TCP"].name"#,
            ]
        );
    }
}
