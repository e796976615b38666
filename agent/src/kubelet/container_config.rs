//! What a container gets from its pod besides its image: the environment (Service variables,
//! `envFrom`, `env` with `valueFrom` resolved against the pod, ConfigMaps and Secrets) and its
//! volume mounts (emptyDir, hostPath, configMap, secret).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Service};
use kube::api::{Api, ListParams};

use crate::runtime::BindMount;

fn pod_field(
    pod: &Pod,
    path: &str,
    pod_ip: Option<Ipv4Addr>,
    host_ip: Option<Ipv4Addr>,
) -> Result<String, String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", m.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", m.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" => pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        "status.hostIP" => host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        other => return Err(format!("unsupported fieldRef path {other:?}")),
    })
}

/// The `{NAME}_SERVICE_HOST` / `{NAME}_PORT...` variables of the Services in the pod's
/// namespace (and `KUBERNETES_SERVICE_*` from `default`), as the kubelet sets them.
async fn service_variables(client: &kube::Client, namespace: &str) -> Vec<(String, String)> {
    let mut services: Vec<Service> = Vec::new();
    for ns in [namespace, "default"] {
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                services.extend(list.items.into_iter().filter(|s| {
                    ns == namespace || s.metadata.name.as_deref() == Some("kubernetes")
                }))
            }
            Err(e) => {
                tracing::debug!(namespace = ns, error = %e, "listing services for environment variables")
            }
        }
        if namespace == "default" {
            break;
        }
    }
    let mut vars = Vec::new();
    for svc in services {
        let Some(spec) = svc.spec else { continue };
        let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") else {
            continue;
        };
        let name = svc
            .metadata
            .name
            .unwrap_or_default()
            .to_ascii_uppercase()
            .replace('-', "_");
        let ports = spec.ports.unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        vars.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        vars.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_ref().filter(|n| !n.is_empty()) {
                vars.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_ascii_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        vars.push((
            format!("{name}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        ));
        for p in &ports {
            let prefix = format!("{name}_PORT_{}_{}", p.port, proto(p));
            vars.push((
                prefix.clone(),
                format!("{}://{ip}:{}", proto(p).to_ascii_lowercase(), p.port),
            ));
            vars.push((format!("{prefix}_PROTO"), proto(p).to_ascii_lowercase()));
            vars.push((format!("{prefix}_PORT"), p.port.to_string()));
            vars.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    vars
}

async fn config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.get_opt(name)
        .await
        .map(|c| c.map(|c| c.data.unwrap_or_default()))
        .map_err(|e| format!("reading configmap {name:?}: {e}"))
}

async fn secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading secret {name:?}: {e}"))?;
    Ok(s.map(|s| {
        let mut data: BTreeMap<String, String> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        data.extend(s.string_data.unwrap_or_default());
        data
    }))
}

/// The value of `key` in a ConfigMap's or Secret's data; `None` when it is missing but
/// optional (the variable is then left out), an error when it is missing and required.
fn key_of(
    data: Option<BTreeMap<String, String>>,
    key: &str,
    optional: Option<bool>,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Option<String>, String> {
    match data.and_then(|mut d| d.remove(key)) {
        Some(v) => Ok(Some(v)),
        None if optional == Some(true) => Ok(None),
        None => Err(format!("couldn't find key {key} in {kind} {ns}/{name}")),
    }
}

/// The container's environment with every reference resolved, in Kubernetes' order: Service
/// variables, then `envFrom`, then `env` (later entries win).
pub async fn environment(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    pod_ip: Option<Ipv4Addr>,
    host_ip: Option<Ipv4Addr>,
) -> Result<Vec<EnvVar>, String> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| match env
        .iter_mut()
        .find(|(n, _)| *n == k)
    {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    };
    if pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false) {
        for (k, v) in service_variables(client, &ns).await {
            set(&mut env, k, v);
        }
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &from.config_map_ref {
            (
                config_map(client, &ns, &r.name).await?,
                r.optional.unwrap_or(false),
                format!("configmap {:?}", r.name),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                secret(client, &ns, &r.name).await?,
                r.optional.unwrap_or(false),
                format!("secret {:?}", r.name),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(&mut env, format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => return Err(format!("{what} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => var.value.clone().unwrap_or_default(),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    pod_field(pod, &f.field_path, pod_ip, host_ip)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let data = config_map(client, &ns, &r.name).await?;
                    match key_of(data, &r.key, r.optional, "ConfigMap", &ns, &r.name)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let data = secret(client, &ns, &r.name).await?;
                    match key_of(data, &r.key, r.optional, "Secret", &ns, &r.name)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if from.resource_field_ref.is_some() {
                    return Err(format!(
                        "env {}: resourceFieldRef is not supported",
                        var.name
                    ));
                } else {
                    return Err(format!("env {}: empty valueFrom", var.name));
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect())
}

/// A relative path that stays below its base (no `..`, not absolute).
fn safe_relative(p: &str) -> Result<&Path, String> {
    let path = Path::new(p);
    if path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(path)
    } else {
        Err(format!(
            "path {p:?} must be relative and may not contain '..'"
        ))
    }
}

fn write_files(
    dir: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
) -> Result<(), String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("clearing", dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let files: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .map(|i| {
                data.get(&i.key)
                    .map(|v| (i.path.clone(), v.clone()))
                    .ok_or_else(|| format!("key {:?} not found", i.key))
            })
            .collect::<Result<_, _>>()?,
        None => data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    for (rel, content) in files {
        let path = dir.join(safe_relative(&rel)?);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
        }
        std::fs::write(&path, content).map_err(|e| io("writing", &path, e))?;
    }
    Ok(())
}

/// Prepares the container's volumes on the host and returns their bind mounts.
pub async fn mounts(
    client: &kube::Client,
    root: &Path,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<BindMount>, String> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == vm.name)
            .ok_or_else(|| format!("volume mount {:?} names no volume of the pod", vm.name))?;
        let own_dir = root
            .join("pods")
            .join(&uid)
            .join("volumes")
            .join(safe_relative(&volume.name)?);
        let source: PathBuf = if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&own_dir)
                .map_err(|e| format!("creating {}: {e}", own_dir.display()))?;
            own_dir
        } else if let Some(h) = &volume.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&p)
                    .map_err(|e| format!("creating {}: {e}", p.display()))?,
                "Directory" if !p.is_dir() => {
                    return Err(format!("hostPath {} is not a directory", p.display()))
                }
                "File" if !p.is_file() => {
                    return Err(format!("hostPath {} is not a file", p.display()))
                }
                _ if !p.exists() => return Err(format!("hostPath {} does not exist", p.display())),
                _ => {}
            }
            p
        } else if let Some(c) = &volume.config_map {
            match config_map(client, &ns, &c.name).await? {
                Some(d) => write_files(&own_dir, &d, c.items.as_ref())?,
                None if c.optional == Some(true) => write_files(&own_dir, &BTreeMap::new(), None)?,
                None => return Err(format!("configmap {:?} not found", c.name)),
            }
            own_dir
        } else if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match secret(client, &ns, &name).await? {
                Some(d) => write_files(&own_dir, &d, s.items.as_ref())?,
                None if s.optional == Some(true) => write_files(&own_dir, &BTreeMap::new(), None)?,
                None => return Err(format!("secret {name:?} not found")),
            }
            own_dir
        } else {
            return Err(format!(
                "volume {:?}: only emptyDir, hostPath, configMap and secret volumes are supported",
                volume.name
            ));
        };
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = source.join(safe_relative(sub)?);
                if !p.exists() {
                    std::fs::create_dir_all(&p)
                        .map_err(|e| format!("creating {}: {e}", p.display()))?;
                }
                p
            }
            None => source,
        };
        mounts.push(BindMount {
            source,
            destination: PathBuf::from(&vm.mount_path),
            read_only: vm.read_only.unwrap_or(false)
                || volume.config_map.is_some()
                || volume.secret.is_some(),
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_refs_resolve_against_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u1", "labels": {"app": "kubia"}},
            "spec": {"nodeName": "node-1", "containers": []},
        }))
        .unwrap();
        let ip = Some(Ipv4Addr::new(10, 244, 1, 7));
        assert_eq!(pod_field(&pod, "metadata.name", ip, None).unwrap(), "web");
        assert_eq!(
            pod_field(&pod, "metadata.namespace", ip, None).unwrap(),
            "prod"
        );
        assert_eq!(
            pod_field(&pod, "spec.nodeName", ip, None).unwrap(),
            "node-1"
        );
        assert_eq!(
            pod_field(&pod, "status.podIP", ip, None).unwrap(),
            "10.244.1.7"
        );
        assert_eq!(
            pod_field(&pod, "metadata.labels['app']", ip, None).unwrap(),
            "kubia"
        );
        assert!(pod_field(&pod, "spec.bogus", ip, None).is_err());
    }

    #[test]
    fn projected_files_stay_inside_the_volume() {
        assert!(safe_relative("a/b.conf").is_ok());
        assert!(safe_relative("../etc/passwd").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        let dir = tempfile::tempdir().unwrap();
        let data = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        write_files(&dir.path().join("vol"), &data, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("vol/k")).unwrap(),
            "v"
        );
    }
}
