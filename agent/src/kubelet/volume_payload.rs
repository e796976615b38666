//! The files of a pod's configMap, secret, downwardAPI and projected volumes, as the kubelet's
//! volume plugins assemble them (`pkg/volume/{configmap,secret,downwardapi,projected}`) before
//! the atomic writer ([`super::atomic_writer`]) puts them into the volume.
//!
//! - configMap / secret: every key (a ConfigMap's `data` and `binaryData`), or the listed
//!   `items` at their paths; a listed key that is missing is an error unless the source is
//!   optional. A missing object is an error unless optional (the volume is then empty).
//! - downwardAPI: `fieldRef` items (`metadata.labels` and `metadata.annotations` whole, as
//!   sorted `key="value"` lines); `resourceFieldRef` is not supported.
//! - projected: the union of its sources, later ones winning a path; `serviceAccountToken`
//!   asks the token manager ([`super::token_manager`]) for a token bound to the pod.
//!
//! Modes: an item's `mode`, else the volume's `defaultMode`, else 0644 (the API's default for
//! all four kinds, secrets included).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use kube::api::Api;

use super::atomic_writer::{FileProjection, Payload};
use super::container_config::pod_field;
use super::token_manager::{self, TokenManager, TokenSpec};

/// The mode of a file no `mode` or `defaultMode` speaks of.
pub const DEFAULT_MODE: u32 = 0o644;

/// Where a volume's objects and tokens come from: the API ([`ApiSources`]) or a test's fake.
pub trait VolumeSources: Send + Sync {
    /// A ConfigMap of the pod's namespace; `None` when it does not exist.
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, String>>;
    /// A Secret of the pod's namespace; `None` when it does not exist.
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, String>>;
    /// A ServiceAccount token.
    fn token<'a>(&'a self, spec: &'a TokenSpec) -> BoxFuture<'a, Result<String, String>>;
}

/// Objects from the API server, tokens from the node's token manager.
pub struct ApiSources {
    /// The API client.
    pub client: kube::Client,
    /// The node's tokens.
    pub tokens: Arc<TokenManager>,
}

impl VolumeSources for ApiSources {
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, String>> {
        Box::pin(async move {
            Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|e| format!("reading configmap {namespace}/{name}: {e}"))
        })
    }

    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, String>> {
        Box::pin(async move {
            Api::<Secret>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|e| format!("reading secret {namespace}/{name}: {e}"))
        })
    }

    fn token<'a>(&'a self, spec: &'a TokenSpec) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(self.tokens.token(spec))
    }
}

/// Whether the volume is one the atomic writer fills (and the periodic sync refreshes).
pub fn is_projection(volume: &Volume) -> bool {
    volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.downward_api.is_some()
        || volume.projected.is_some()
}

/// An API mode (`int32`, 0..=0777) or the default.
fn mode(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok())
        .map_or(default, |m| m & 0o777)
}

/// The pod's service account: `spec.serviceAccountName` (or the deprecated
/// `spec.serviceAccount`), else `default`.
pub fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The files of `data` (every key, or the listed items), as the configMap and secret plugins
/// build them.
fn key_files(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
    kind: &str,
) -> Result<Payload, String> {
    match items.filter(|i| !i.is_empty()) {
        None => Ok(data
            .into_iter()
            .map(|(k, v)| (k, FileProjection::new(v, default_mode)))
            .collect()),
        Some(items) => {
            let mut payload = Payload::new();
            for item in items {
                let Some(v) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("{kind} references non-existent key: {}", item.key));
                };
                payload.insert(
                    item.path.clone(),
                    FileProjection::new(v.clone(), mode(item.mode, default_mode)),
                );
            }
            Ok(payload)
        }
    }
}

/// A ConfigMap's keys: `data` and `binaryData`.
fn config_map_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .binary_data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    data.extend(
        cm.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    data
}

/// A Secret's keys (`stringData` too, should an object carry it).
fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    data.extend(
        s.string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    data
}

/// The files of downwardAPI items.
pub fn downward_api_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            pod_field(pod, &f.field_path, None, None)?
        } else if item.resource_field_ref.is_some() {
            return Err(format!(
                "downwardAPI item {:?}: resourceFieldRef is not supported",
                item.path
            ));
        } else {
            return Err(format!(
                "downwardAPI item {:?} has neither fieldRef nor resourceFieldRef",
                item.path
            ));
        };
        payload.insert(
            item.path.clone(),
            FileProjection::new(value, mode(item.mode, default_mode)),
        );
    }
    Ok(payload)
}

/// The files of the volume, or `None` when it is not a configMap, secret, downwardAPI or
/// projected volume.
pub async fn payload(
    sources: &dyn VolumeSources,
    pod: &Pod,
    volume: &Volume,
) -> Result<Option<Payload>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(c) = &volume.config_map {
        let optional = c.optional == Some(true);
        let default_mode = mode(c.default_mode, DEFAULT_MODE);
        return match sources.config_map(ns, &c.name).await? {
            Some(cm) => key_files(
                config_map_data(cm),
                c.items.as_deref(),
                default_mode,
                optional,
                "configmap",
            )
            .map(Some),
            None if optional => Ok(Some(Payload::new())),
            None => Err(format!("configmap {:?} not found", c.name)),
        };
    }
    if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional == Some(true);
        let default_mode = mode(s.default_mode, DEFAULT_MODE);
        return match sources.secret(ns, &name).await? {
            Some(secret) => key_files(
                secret_data(secret),
                s.items.as_deref(),
                default_mode,
                optional,
                "secret",
            )
            .map(Some),
            None if optional => Ok(Some(Payload::new())),
            None => Err(format!("secret {name:?} not found")),
        };
    }
    if let Some(d) = &volume.downward_api {
        return downward_api_files(
            pod,
            d.items.as_deref().unwrap_or_default(),
            mode(d.default_mode, DEFAULT_MODE),
        )
        .map(Some);
    }
    let Some(p) = &volume.projected else {
        return Ok(None);
    };
    let default_mode = mode(p.default_mode, DEFAULT_MODE);
    let mut payload = Payload::new();
    for source in p.sources.iter().flatten() {
        if let Some(t) = &source.service_account_token {
            let expiration_seconds = t
                .expiration_seconds
                .unwrap_or(token_manager::DEFAULT_EXPIRATION_SECONDS);
            if expiration_seconds < token_manager::MIN_EXPIRATION_SECONDS {
                return Err(format!(
                    "serviceAccountToken {:?}: expirationSeconds {expiration_seconds} is under the minimum of {} (10 minutes)",
                    t.path,
                    token_manager::MIN_EXPIRATION_SECONDS
                ));
            }
            let spec = TokenSpec {
                namespace: ns.to_owned(),
                service_account: service_account(pod),
                audience: t.audience.clone().filter(|a| !a.is_empty()),
                expiration_seconds,
                pod_name: pod.metadata.name.clone().unwrap_or_default(),
                pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            };
            let token = sources.token(&spec).await?;
            payload.insert(t.path.clone(), FileProjection::new(token, default_mode));
        } else if let Some(c) = &source.config_map {
            let optional = c.optional == Some(true);
            match sources.config_map(ns, &c.name).await? {
                Some(cm) => payload.extend(key_files(
                    config_map_data(cm),
                    c.items.as_deref(),
                    default_mode,
                    optional,
                    "configmap",
                )?),
                None if optional => {}
                None => return Err(format!("configmap {:?} not found", c.name)),
            }
        } else if let Some(s) = &source.secret {
            let optional = s.optional == Some(true);
            match sources.secret(ns, &s.name).await? {
                Some(secret) => payload.extend(key_files(
                    secret_data(secret),
                    s.items.as_deref(),
                    default_mode,
                    optional,
                    "secret",
                )?),
                None if optional => {}
                None => return Err(format!("secret {:?} not found", s.name)),
            }
        } else if let Some(d) = &source.downward_api {
            payload.extend(downward_api_files(
                pod,
                d.items.as_deref().unwrap_or_default(),
                default_mode,
            )?);
        } else if source.cluster_trust_bundle.is_some() {
            return Err(format!(
                "volume {:?}: projected clusterTrustBundle sources are not supported",
                volume.name
            ));
        } else if source.pod_certificate.is_some() {
            return Err(format!(
                "volume {:?}: projected podCertificate sources are not supported",
                volume.name
            ));
        } else {
            return Err(format!(
                "volume {:?}: a projected source names no kind",
                volume.name
            ));
        }
    }
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use serde_json::json;

    /// Objects in memory; tokens `token:<sa>:<audience>:<seconds>:<pod uid>`, recorded.
    #[derive(Default)]
    struct Fake {
        config_maps: BTreeMap<String, ConfigMap>,
        secrets: BTreeMap<String, Secret>,
        tokens: Mutex<Vec<TokenSpec>>,
    }

    impl VolumeSources for Fake {
        fn config_map<'a>(
            &'a self,
            _namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<ConfigMap>, String>> {
            Box::pin(async move { Ok(self.config_maps.get(name).cloned()) })
        }

        fn secret<'a>(
            &'a self,
            _namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Secret>, String>> {
            Box::pin(async move { Ok(self.secrets.get(name).cloned()) })
        }

        fn token<'a>(&'a self, spec: &'a TokenSpec) -> BoxFuture<'a, Result<String, String>> {
            Box::pin(async move {
                self.tokens.lock().unwrap().push(spec.clone());
                Ok(format!(
                    "token:{}:{}:{}:{}",
                    spec.service_account,
                    spec.audience.clone().unwrap_or_default(),
                    spec.expiration_seconds,
                    spec.pod_uid
                ))
            })
        }
    }

    fn fake() -> Fake {
        let mut f = Fake::default();
        f.config_maps.insert(
            "kube-root-ca.crt".into(),
            serde_json::from_value(json!({
                "metadata": {"name": "kube-root-ca.crt"},
                "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"},
            }))
            .unwrap(),
        );
        f.config_maps.insert(
            "app".into(),
            serde_json::from_value(json!({
                "metadata": {"name": "app"},
                "data": {"a.conf": "a"},
                "binaryData": {"b.bin": "AAEC"},
            }))
            .unwrap(),
        );
        f.secrets.insert(
            "creds".into(),
            serde_json::from_value(json!({
                "metadata": {"name": "creds"},
                "data": {"password": "aHVudGVyMg=="},
            }))
            .unwrap(),
        );
        f
    }

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "prod", "uid": "uid-1",
                "labels": {"app": "kubia", "tier": "front \"end\""},
                "annotations": {"note": "line1\nline2"},
            },
            "spec": {"containers": [], "volumes": volumes},
        }))
        .unwrap()
    }

    async fn files(f: &Fake, pod: &Pod) -> Result<Vec<(String, String, u32)>, String> {
        let volume = &pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        Ok(payload(f, pod, volume)
            .await?
            .expect("an atomic-writer volume")
            .into_iter()
            .map(|(p, fp)| (p, String::from_utf8(fp.data).unwrap(), fp.mode))
            .collect())
    }

    fn owned(files: &[(&str, &str, u32)]) -> Vec<(String, String, u32)> {
        files
            .iter()
            .map(|(p, d, m)| ((*p).to_owned(), (*d).to_owned(), *m))
            .collect()
    }

    /// The volume the ServiceAccount admission adds, exactly as Kubernetes shapes it.
    fn kube_api_access() -> serde_json::Value {
        json!([{
            "name": "kube-api-access-abcde",
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }])
    }

    #[tokio::test]
    async fn the_service_account_volume_holds_token_ca_and_namespace() {
        let f = fake();
        let mut p = pod(kube_api_access());
        p.spec.as_mut().unwrap().service_account_name = Some("builder".into());
        assert_eq!(
            files(&f, &p).await.unwrap(),
            owned(&[
                ("ca.crt", "-----BEGIN CERTIFICATE-----\n", 0o644),
                ("namespace", "prod", 0o644),
                ("token", "token:builder::3607:uid-1", 0o644),
            ])
        );
        let spec = f.tokens.lock().unwrap()[0].clone();
        assert_eq!(
            spec,
            TokenSpec {
                namespace: "prod".into(),
                service_account: "builder".into(),
                audience: None,
                expiration_seconds: 3607,
                pod_name: "web".into(),
                pod_uid: "uid-1".into(),
            }
        );
    }

    #[tokio::test]
    async fn a_token_defaults_to_an_hour_the_default_account_and_may_name_an_audience() {
        let f = fake();
        let p = pod(json!([{"name": "t", "projected": {"sources": [
            {"serviceAccountToken": {"path": "vault/token", "audience": "vault"}},
        ]}}]));
        assert_eq!(
            files(&f, &p).await.unwrap(),
            owned(&[("vault/token", "token:default:vault:3600:uid-1", 0o644)])
        );
        let short = pod(json!([{"name": "t", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 599}},
        ]}}]));
        assert!(files(&f, &short).await.unwrap_err().contains("minimum"));
    }

    #[tokio::test]
    async fn a_missing_required_config_map_is_an_error_an_optional_one_is_skipped() {
        let f = Fake::default();
        let err = files(&f, &pod(kube_api_access())).await.unwrap_err();
        assert!(err.contains("kube-root-ca.crt"), "{err}");
        let optional = pod(json!([{"name": "v", "projected": {"sources": [
            {"configMap": {"name": "nope", "optional": true}},
            {"secret": {"name": "nope", "optional": true}},
        ]}}]));
        assert_eq!(files(&f, &optional).await.unwrap(), []);
        let volume = pod(json!([{"name": "v", "configMap": {"name": "nope", "optional": true}}]));
        assert_eq!(files(&f, &volume).await.unwrap(), []);
        let volume = pod(json!([{"name": "v", "secret": {"secretName": "nope"}}]));
        assert!(files(&f, &volume).await.is_err());
    }

    #[tokio::test]
    async fn projected_config_maps_and_secrets_use_items_and_modes() {
        let f = fake();
        let p = pod(
            json!([{"name": "v", "projected": {"defaultMode": 0o440, "sources": [
                {"configMap": {"name": "app"}},
                {"secret": {"name": "creds", "items": [{"key": "password", "path": "db/pw", "mode": 0o400}]}},
            ]}}]),
        );
        assert_eq!(
            files(&f, &p).await.unwrap(),
            owned(&[
                ("a.conf", "a", 0o440),
                ("b.bin", "\u{0}\u{1}\u{2}", 0o440),
                ("db/pw", "hunter2", 0o400),
            ])
        );
        let missing_key = pod(json!([{"name": "v", "projected": {"sources": [
            {"secret": {"name": "creds", "items": [{"key": "user", "path": "u"}]}},
        ]}}]));
        assert!(files(&f, &missing_key)
            .await
            .unwrap_err()
            .contains("non-existent key: user"));
    }

    #[tokio::test]
    async fn secret_and_config_map_volumes_honour_default_mode_and_item_mode() {
        let f = fake();
        let secret = pod(json!([{"name": "v", "secret": {"secretName": "creds"}}]));
        assert_eq!(
            files(&f, &secret).await.unwrap(),
            owned(&[("password", "hunter2", 0o644)])
        );
        let secret =
            pod(json!([{"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o400}}]));
        assert_eq!(
            files(&f, &secret).await.unwrap(),
            owned(&[("password", "hunter2", 0o400)])
        );
        let cm = pod(
            json!([{"name": "v", "configMap": {"name": "app", "defaultMode": 0o600,
            "items": [{"key": "a.conf", "path": "conf/a"}, {"key": "b.bin", "path": "b", "mode": 0o755}]}}]),
        );
        assert_eq!(
            files(&f, &cm).await.unwrap(),
            owned(&[("b", "\u{0}\u{1}\u{2}", 0o755), ("conf/a", "a", 0o600)])
        );
    }

    #[tokio::test]
    async fn downward_api_files_format_labels_and_annotations_as_the_kubelet_does() {
        let f = fake();
        let p = pod(json!([{"name": "podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}, "mode": 0o600},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
        ]}}]));
        assert_eq!(
            files(&f, &p).await.unwrap(),
            owned(&[
                ("annotations", "note=\"line1\\nline2\"", 0o600),
                ("app", "kubia", 0o644),
                ("labels", "app=\"kubia\"\ntier=\"front \\\"end\\\"\"", 0o644),
                ("name", "web", 0o644),
            ])
        );
        let resources = pod(json!([{"name": "v", "downwardAPI": {"items": [
            {"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}},
        ]}}]));
        assert!(files(&f, &resources)
            .await
            .unwrap_err()
            .contains("not supported"));
    }

    #[tokio::test]
    async fn unsupported_projections_say_so() {
        let f = fake();
        let p = pod(json!([{"name": "v", "projected": {"sources": [
            {"clusterTrustBundle": {"name": "b", "path": "ca.pem"}},
        ]}}]));
        assert!(files(&f, &p)
            .await
            .unwrap_err()
            .contains("clusterTrustBundle sources are not supported"));
        let p = pod(json!([{"name": "v", "projected": {"sources": [
            {"podCertificate": {"signerName": "x/y", "keyType": "ED25519", "credentialBundlePath": "c"}},
        ]}}]));
        assert!(files(&f, &p)
            .await
            .unwrap_err()
            .contains("podCertificate sources are not supported"));
        let empty = pod(json!([{"name": "v", "emptyDir": {}}]));
        let volume = &empty.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        assert_eq!(payload(&f, &empty, volume).await.unwrap(), None);
    }
}
