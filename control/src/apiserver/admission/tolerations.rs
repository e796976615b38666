//! DefaultTolerationSeconds: every pod gets `NoExecute` tolerations for the `not-ready` and
//! `unreachable` node taints with a time limit (300 s by default), unless it already tolerates
//! them, so pods of a lost node are evicted after that time and not at once.

use std::sync::atomic::{AtomicI64, Ordering};

use k8s_openapi::api::core::v1::{Taint, Toleration};
use serde_json::{json, Value};
use skiff_k8s::taints::tolerates;

/// The tolerationSeconds the API server adds.
#[derive(Debug)]
pub struct DefaultTolerations {
    not_ready: AtomicI64,
    unreachable: AtomicI64,
}

impl Default for DefaultTolerations {
    fn default() -> Self {
        Self {
            not_ready: AtomicI64::new(300),
            unreachable: AtomicI64::new(300),
        }
    }
}

impl DefaultTolerations {
    /// Sets the limits (`--default-not-ready-toleration-seconds`,
    /// `--default-unreachable-toleration-seconds`).
    pub fn configure(&self, not_ready: i64, unreachable: i64) {
        self.not_ready.store(not_ready, Ordering::Relaxed);
        self.unreachable.store(unreachable, Ordering::Relaxed);
    }

    /// Adds the default tolerations to a pod object.
    pub fn apply(&self, pod: &mut Value) {
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let existing: Vec<Toleration> = spec
            .get("tolerations")
            .cloned()
            .and_then(|t| serde_json::from_value(t).ok())
            .unwrap_or_default();
        let mut added = Vec::new();
        for (key, seconds) in [
            (
                "node.kubernetes.io/not-ready",
                self.not_ready.load(Ordering::Relaxed),
            ),
            (
                "node.kubernetes.io/unreachable",
                self.unreachable.load(Ordering::Relaxed),
            ),
        ] {
            let taint = Taint {
                key: key.into(),
                effect: "NoExecute".into(),
                ..Taint::default()
            };
            if !existing.iter().any(|t| tolerates(t, &taint)) {
                added.push(
                    json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": seconds}),
                );
            }
        }
        if added.is_empty() {
            return;
        }
        let list = spec.entry("tolerations").or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut() {
            list.extend(added);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_both_tolerations_unless_they_have_them() {
        let d = DefaultTolerations::default();
        let mut pod = json!({"spec": {"containers": []}});
        d.apply(&mut pod);
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1]["key"], "node.kubernetes.io/unreachable");
        assert_eq!(t[1]["tolerationSeconds"], 300);
        d.configure(5, 7);
        let mut own = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}
        ]}});
        d.apply(&mut own);
        let t = own["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 1);
        assert_eq!(t[1]["tolerationSeconds"], 5);
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        d.apply(&mut all);
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
    }
}
