//! ServiceAccount admission (kube-apiserver's `ServiceAccount` plugin), on pod create:
//!
//! - a pod that names no account runs as `default`, and the account must exist;
//! - a pod without image pull secrets gets its account's;
//! - unless the pod (or else its account) sets `automountServiceAccountToken: false`, every
//!   container and init container gets the projected volume `kube-api-access-<random>` at
//!   `/var/run/secrets/kubernetes.io/serviceaccount`: a token the node agent requests for the
//!   pod and keeps fresh, the cluster CA (`kube-root-ca.crt`) and the namespace. A container
//!   that already mounts something there keeps its own.
//!
//! Mirror pods (static pods a node reports) get nothing: they cannot reference API objects.

use serde_json::{json, Value};

use crate::apiserver::error::ApiError;
use crate::apiserver::ApiState;
use crate::store::keys;

/// Where the token, CA and namespace appear in a container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token volume's name prefix.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap with the cluster CA that every namespace has (the root CA publisher).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The token lifetime the volume asks for: an hour and seven seconds, Kubernetes' marker that
/// lets a kubelet-requested token be told apart.
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Applies the plugin to a pod being created.
pub async fn admit(state: &ApiState, pod: &mut Value) -> Result<(), ApiError> {
    if pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Ok(());
    }
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let name = match spec.get("serviceAccountName").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => "default".to_owned(),
    };
    spec.insert("serviceAccountName".into(), json!(name));
    // The field's deprecated twin, which Kubernetes' conversion keeps equal.
    spec.insert("serviceAccount".into(), json!(name));
    let account = account(state, &ns, &name).await?.ok_or_else(|| {
        ApiError::Forbidden(format!(
            "pods {pod_name:?} is forbidden: error looking up service account {ns}/{name}: \
                 serviceaccount {name:?} not found"
        ))
    })?;
    if spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        if let Some(secrets) = account
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
        {
            spec.insert("imagePullSecrets".into(), Value::Array(secrets.clone()));
        }
    }
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            account
                .get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if automount {
        mount_token(spec);
    }
    Ok(())
}

/// How long a pod create waits for the `default` account of a new namespace, which the
/// ServiceAccount controller creates moments after the namespace (Kubernetes' plugin retries
/// for about as long).
const DEFAULT_ACCOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The account `ns/name`; for `default`, waits a moment for the controller to create it.
async fn account(state: &ApiState, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
    use futures::StreamExt as _;
    let key = keys::SERVICE_ACCOUNTS.key(Some(ns), name);
    let read = |e| ApiError::from_store(e, "serviceaccounts", name);
    // The revision before the read: a creation after it is in the watch below.
    let revision = state.store.revision();
    if let Some(found) = state.store.get(&key).await.map_err(read)? {
        return Ok(Some(found));
    }
    if name != "default" {
        return Ok(None);
    }
    let mut events = state.store.watch(&key, revision).await.map_err(read)?;
    let created = async {
        while let Some(Ok(event)) = events.next().await {
            if event.key == key && event.kind != crate::store::EventKind::Deleted {
                return serde_json::from_slice(&event.object).ok();
            }
        }
        None
    };
    Ok(tokio::time::timeout(DEFAULT_ACCOUNT_WAIT, created)
        .await
        .ok()
        .flatten())
}

/// Adds the token volume and its mount to every container that does not mount the path.
fn mount_token(spec: &mut serde_json::Map<String, Value>) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .find(|n| n.starts_with(VOLUME_PREFIX))
                .map(str::to_owned)
        });
    let volume = existing.clone().unwrap_or_else(|| {
        format!(
            "{VOLUME_PREFIX}{}",
            crate::apiserver::objects::random_suffix()
        )
    });
    let mut needed = false;
    for field in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(field).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers {
            let Some(c) = container.as_object_mut() else {
                continue;
            };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            if mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
            {
                continue;
            }
            mounts.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
            needed = true;
        }
    }
    if needed && existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(token_volume(&volume));
        }
    }
}

/// The projected volume, field for field as Kubernetes writes it.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_one_volume_unless_it_mounts_the_path() {
        let mut pod = json!({
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]},
            ],
            "volumes": [{"name": "own", "emptyDir": {}}],
        });
        let spec = pod.as_object_mut().unwrap();
        mount_token(spec);
        let volumes = pod["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().unwrap();
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        assert_eq!(
            volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        assert_eq!(pod["initContainers"][0]["volumeMounts"][0]["name"], name);
        assert_eq!(pod["containers"][0]["volumeMounts"][0]["readOnly"], true);
        assert_eq!(
            pod["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "its own mount at the path wins"
        );

        // Admitting again (an existing kube-api-access volume) adds nothing.
        let before = pod.clone();
        mount_token(pod.as_object_mut().unwrap());
        assert_eq!(pod, before);

        // Nobody needs it: no volume.
        let mut own = json!({"containers": [{"name": "b", "volumeMounts": [{"name": "x", "mountPath": MOUNT_PATH}]}]});
        mount_token(own.as_object_mut().unwrap());
        assert!(own.get("volumes").is_none());
    }
}
