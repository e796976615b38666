//! Writing a controller's status only when it changed, so a converged controller stops writing.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Whether every field of `wanted` already has that value in `current` (absent counts as
/// zero or null, as the API omits zero counts).
pub fn same(current: &Value, wanted: &Value) -> bool {
    wanted.as_object().is_some_and(|w| {
        w.iter().all(|(k, v)| {
            let have = current.get(k).cloned().unwrap_or(Value::Null);
            have == *v || (have.is_null() && (v == &json!(0) || v.is_null()))
        })
    })
}

/// Merge-patches `wanted` into the status of `name` unless [`same`]; a vanished object is fine.
pub async fn write_if_changed<K>(
    api: &Api<K>,
    name: &str,
    current: &Value,
    wanted: &Value,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    if same(current, wanted) {
        return Ok(());
    }
    // Nulls would delete fields in a merge patch; leave absent what the controller lacks.
    let mut wanted = wanted.clone();
    if let Some(m) = wanted.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    match api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": wanted })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_equals_zero_and_null() {
        let current = json!({"replicas": 2});
        assert!(same(
            &current,
            &json!({"replicas": 2, "readyReplicas": 0, "x": null})
        ));
        assert!(!same(&current, &json!({"replicas": 3})));
        assert!(!same(&current, &json!({"readyReplicas": 1})));
    }
}
