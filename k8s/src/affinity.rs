//! Node affinity as the scheduler and the DaemonSet controller read it: a pod's nodeSelector
//! and its required node affinity terms (In, NotIn, Exists, DoesNotExist, Gt, Lt on labels,
//! In/NotIn on the `metadata.name` field) against a node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

/// Whether a pod with `spec` may run on `node` by its nodeSelector and required node affinity.
pub fn matches_node(spec: &PodSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        // Terms are ORed.
        Some(r) => r
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, labels, node.metadata.name.as_deref().unwrap_or_default())),
        None => true,
    }
}

/// A node selector term: its expressions and fields are ANDed; an empty term matches nothing.
pub fn term_matches(
    term: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            // metadata.name is the only node field Kubernetes allows here.
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(name))
        })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|b| number(b)),
            ) else {
                return false;
            };
            if values.len() != 1 {
                return false;
            }
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSelector};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn with_affinity(mut p: PodSpec, terms: Vec<NodeSelectorTerm>) -> PodSpec {
        p.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn term(exprs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: None,
        }
    }

    #[test]
    fn node_affinity_operators_and_fields() {
        let n = node("n1", &[("zone", "a"), ("gen", "5")]);
        let ok = |terms: Vec<NodeSelectorTerm>| {
            matches_node(&with_affinity(PodSpec::default(), terms), &n)
        };
        assert!(ok(vec![term(vec![expr("zone", "In", &["a", "b"])])]));
        assert!(!ok(vec![term(vec![expr("zone", "NotIn", &["a"])])]));
        assert!(ok(vec![term(vec![expr("zone", "Exists", &[])])]));
        assert!(ok(vec![term(vec![expr("disk", "DoesNotExist", &[])])]));
        assert!(ok(vec![term(vec![expr("gen", "Gt", &["4"])])]));
        assert!(!ok(vec![term(vec![expr("gen", "Lt", &["4"])])]));
        assert!(!ok(vec![term(vec![expr("zone", "Gt", &["4"])])]));
        // ANDed within a term, ORed across terms; an empty term matches nothing.
        assert!(!ok(vec![term(vec![
            expr("zone", "In", &["a"]),
            expr("gen", "In", &["6"])
        ])]));
        assert!(ok(vec![
            term(vec![expr("gen", "In", &["6"])]),
            term(vec![expr("zone", "In", &["a"])])
        ]));
        assert!(!ok(vec![term(vec![])]));
        let fields = |op: &str, name: &str| {
            vec![NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![expr("metadata.name", op, &[name])]),
            }]
        };
        assert!(ok(fields("In", "n1")));
        assert!(!ok(fields("In", "n2")));
        assert!(ok(fields("NotIn", "n2")));
        let p = PodSpec {
            node_selector: Some(BTreeMap::from([("zone".into(), "b".into())])),
            ..PodSpec::default()
        };
        assert!(!matches_node(&p, &n));
    }
}
