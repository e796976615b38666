//! What a container gets from its pod besides its image: the environment (Service variables,
//! `envFrom`, `env` with `valueFrom` resolved against the pod, ConfigMaps and Secrets) and its
//! volume mounts (emptyDir, hostPath, and configMap, secret, downwardAPI and projected volumes,
//! whose files [`super::volume_payload`] assembles and [`super::atomic_writer`] writes).
//!
//! Volumes live in `<root>/pods/<uid>/volumes/<name>`; the pod's directory and `volumes/` are
//! 0700 (they hold Secrets and tokens), a volume directory itself 0755 so that the container
//! (any user) can read it through its bind mount.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Service};
use kube::api::{Api, ListParams};

use super::atomic_writer::{self, safe_relative};
use super::volume_payload::{self, VolumeSources};
use crate::runtime::{host_path, subpath, BindMount, ContainerRuntime};

/// A map as the kubelet writes `metadata.labels` or `metadata.annotations` whole: `key="value"`
/// lines sorted by key, the value quoted as Go's `%q` does, no newline after the last.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", skiff_k8s::go::quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `fieldRef` of the pod, as env variables and downwardAPI volumes resolve it.
pub(crate) fn pod_field(
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
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
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

/// Why a container's environment could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// The API server could not be asked (down, unreachable, timed out): what the container
    /// got last time is still the best answer, as the kubelet's informer caches serve it.
    #[error("{0}")]
    Unreachable(String),
    /// The pod's references are wrong (a missing ConfigMap or key, a bad fieldRef).
    #[error("{0}")]
    Config(String),
}

impl From<String> for EnvError {
    fn from(message: String) -> Self {
        EnvError::Config(message)
    }
}

/// An API read's error: transport failures are [`EnvError::Unreachable`].
fn read_error(what: String, e: kube::Error) -> EnvError {
    match e {
        kube::Error::Api(_) => EnvError::Config(format!("{what}: {e}")),
        other => EnvError::Unreachable(format!("{what}: {other}")),
    }
}

/// The `{NAME}_SERVICE_HOST` / `{NAME}_PORT...` variables of the Services in the pod's
/// namespace (and `KUBERNETES_SERVICE_*` from `default`), as the kubelet sets them. Without
/// service `links` (`enableServiceLinks: false`) only the API server's `kubernetes` Service
/// is there: in-cluster clients find the API by it, so the kubelet always sets it.
async fn service_variables(
    client: &kube::Client,
    namespace: &str,
    links: bool,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut services: Vec<Service> = Vec::new();
    for ns in [namespace, "default"] {
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        match api.list(&ListParams::default()).await {
            Ok(list) => services.extend(list.items.into_iter().filter(|s| {
                let api = ns == "default" && s.metadata.name.as_deref() == Some("kubernetes");
                api || (links && ns == namespace)
            })),
            Err(e @ kube::Error::Api(_)) => {
                tracing::debug!(namespace = ns, error = %e, "listing services for environment variables")
            }
            Err(e) => return Err(read_error(format!("listing services in {ns}"), e)),
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
    Ok(vars)
}

async fn config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.get_opt(name)
        .await
        .map(|c| c.map(|c| c.data.unwrap_or_default()))
        .map_err(|e| read_error(format!("reading configmap {name:?}"), e))
}

async fn secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api
        .get_opt(name)
        .await
        .map_err(|e| read_error(format!("reading secret {name:?}"), e))?;
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
) -> Result<Vec<EnvVar>, EnvError> {
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
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
    for (k, v) in service_variables(client, &ns, links).await? {
        set(&mut env, k, v);
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
            None => return Err(EnvError::Config(format!("{what} not found"))),
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
                    return Err(EnvError::Config(format!(
                        "env {}: resourceFieldRef is not supported",
                        var.name
                    )));
                } else {
                    return Err(EnvError::Config(format!(
                        "env {}: empty valueFrom",
                        var.name
                    )));
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

/// Creates `dir` (and its parents) if missing and gives it `mode`.
fn dir_with_mode(dir: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("setting the mode of {}: {e}", dir.display()))
}

/// The directory of the pod's volumes, `<root>/pods/<uid>/volumes`: it and the pod's directory
/// are made 0700 (only the agent reads them; containers reach their volumes by bind mounts).
pub fn volumes_dir(root: &Path, pod_uid: &str) -> Result<PathBuf, String> {
    if pod_uid.is_empty() {
        return Err("the pod has no uid".into());
    }
    let pod_dir = root.join("pods").join(safe_relative(pod_uid)?);
    dir_with_mode(&pod_dir, 0o700)?;
    let dir = pod_dir.join("volumes");
    dir_with_mode(&dir, 0o700)?;
    Ok(dir)
}

/// Writes the files of a configMap, secret, downwardAPI or projected volume into its
/// directory (0755) with the atomic writer. `None` when the volume is of another kind.
async fn project(
    sources: &dyn VolumeSources,
    pod: &Pod,
    volume: &k8s_openapi::api::core::v1::Volume,
    dir: &Path,
) -> Result<Option<bool>, String> {
    let Some(payload) = volume_payload::payload(sources, pod, volume).await? else {
        return Ok(None);
    };
    dir_with_mode(dir, 0o755)?;
    atomic_writer::write(dir, &payload)
        .map(Some)
        .map_err(|e| format!("volume {:?}: {e}", volume.name))
}

/// The pod's `securityContext.fsGroup`, the group its volumes are given.
fn fs_group(pod: &Pod) -> Result<Option<u32>, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.fs_group)
        .map(|g| u32::try_from(g).map_err(|_| format!("invalid fsGroup {g}")))
        .transpose()
}

/// An emptyDir's directory: made world-writable (0777) as the kubelet makes it, so that a
/// container of any user can use it; with an fsGroup, owned by that group with the setgid bit
/// (2777), so that what the containers create there has the group too. Only a new directory is
/// set up: one that exists already holds what the pod's containers wrote, which the agent does
/// not walk while they may be changing it.
fn empty_dir(dir: &Path, fs_group: Option<u32>) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(_) => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    empty_dir_mode(dir, fs_group)
}

/// Gives an emptyDir's root its mode (0777, or 2777 owned by the fsGroup).
fn empty_dir_mode(dir: &Path, fs_group: Option<u32>) -> Result<(), String> {
    if let Some(gid) = fs_group {
        std::os::unix::fs::chown(dir, None, Some(gid))
            .map_err(|e| format!("giving {} to group {gid}: {e}", dir.display()))?;
    }
    let mode = if fs_group.is_some() { 0o2777 } else { 0o777 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("setting the mode of {}: {e}", dir.display()))
}

/// The kubelet's `SetVolumeOwnership` for a volume the agent wrote (configMap, secret,
/// projected...): everything below `dir` gets group `gid` and group read (and write unless
/// `read_only`), directories group search and the setgid bit. Symlinks (the atomic writer's
/// `..data` and user-visible names) are re-grouped, not followed.
fn set_volume_ownership(dir: &Path, gid: u32, read_only: bool) -> Result<(), String> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        std::os::unix::fs::lchown(&path, None, Some(gid))
            .map_err(|e| format!("giving {} to group {gid}: {e}", path.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mut mask = if read_only { 0o440 } else { 0o660 };
        if meta.is_dir() {
            mask |= 0o2110;
            for entry in
                std::fs::read_dir(&path).map_err(|e| format!("listing {}: {e}", path.display()))?
            {
                pending.push(
                    entry
                        .map_err(|e| format!("listing {}: {e}", path.display()))?
                        .path(),
                );
            }
        }
        let mode = meta.permissions().mode() & 0o7777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | mask))
            .map_err(|e| format!("setting the mode of {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Checks (or makes) a hostPath volume as its type says and bind mounts the checked object
/// onto `<pod dir>/volume-subpaths/<volume>/.host-path` through its descriptor (see
/// [`crate::runtime::host_path`]); that stable path is the containers' mount source. Done
/// again for every container start, so a path replaced meanwhile is checked again.
fn host_path_mount(
    root: &Path,
    uid: &str,
    volume: &k8s_openapi::api::core::v1::Volume,
    path: &str,
    type_: &str,
) -> Result<PathBuf, String> {
    let resolved = host_path::prepare(path, type_).map_err(|e| e.to_string())?;
    // Container names are DNS labels: `.host-path` cannot be a container's directory.
    let target = root
        .join("pods")
        .join(safe_relative(uid)?)
        .join(subpath::SUBPATH_DIR)
        .join(safe_relative(&volume.name)?)
        .join(".host-path");
    subpath::bind(&resolved, &target).map_err(|e| e.to_string())?;
    Ok(target)
}

/// Resolves `sub` below the volume directory `source` without following symlinks and bind
/// mounts it onto `<pod dir>/volume-subpaths/<volume>/<container>/<index>`, which it returns
/// as the container's mount source (see [`crate::runtime::subpath`]). A missing subPath is
/// created as a directory with the volume's mode, as the kubelet does.
fn sub_path_mount(
    root: &Path,
    pod_uid: &str,
    container: &Container,
    index: usize,
    volume: &k8s_openapi::api::core::v1::Volume,
    source: &Path,
    sub: &str,
) -> Result<PathBuf, String> {
    // The agent's own payload volumes (keys are links into `..data`) may be followed inside;
    // in what containers write (emptyDir) or the host holds (hostPath), no symlink is.
    let resolved = if volume_payload::is_projection(volume) {
        subpath::open_beneath_following(source, sub)
    } else {
        let mode = std::fs::metadata(source)
            .map(|m| m.permissions().mode() & 0o7777)
            .map_err(|e| format!("reading {}: {e}", source.display()))?;
        subpath::open_beneath(source, sub, mode)
    }
    .map_err(|e| e.to_string())?;
    let volume = &volume.name;
    let target = root
        .join("pods")
        .join(safe_relative(pod_uid)?)
        .join(subpath::SUBPATH_DIR)
        .join(safe_relative(volume)?)
        .join(safe_relative(&container.name)?)
        .join(index.to_string());
    subpath::bind(&resolved, &target).map_err(|e| e.to_string())?;
    Ok(target)
}

/// Prepares the container's volumes on the host and returns their bind mounts.
pub async fn mounts(
    runtime: &dyn ContainerRuntime,
    sources: &dyn VolumeSources,
    root: &Path,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<BindMount>, String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let fs_group = fs_group(pod)?;
    let mut mounts = Vec::new();
    for (index, vm) in container.volume_mounts.iter().flatten().enumerate() {
        let volume = volumes
            .iter()
            .find(|v| v.name == vm.name)
            .ok_or_else(|| format!("volume mount {:?} names no volume of the pod", vm.name))?;
        let own_dir = volumes_dir(root, &uid)?.join(safe_relative(&volume.name)?);
        let source: PathBuf = if let Some(ed) = &volume.empty_dir {
            if ed.medium.as_deref() == Some("Memory") {
                let size = ed
                    .size_limit
                    .as_ref()
                    .map(|q| {
                        skiff_k8s::quantity::parse(&q.0, 1)
                            .map_err(|e| format!("emptyDir {:?} sizeLimit: {e}", volume.name))
                    })
                    .transpose()?;
                runtime
                    .memory_volume(&own_dir, size)
                    .map_err(|e| e.to_string())?;
                empty_dir_mode(&own_dir, fs_group)?;
            } else {
                empty_dir(&own_dir, fs_group)?;
            }
            own_dir
        } else if let Some(h) = &volume.host_path {
            host_path_mount(
                root,
                &uid,
                volume,
                &h.path,
                h.type_.as_deref().unwrap_or(""),
            )?
        } else if volume_payload::is_projection(volume)
            && std::fs::symlink_metadata(own_dir.join(atomic_writer::DATA_DIR)).is_ok()
        {
            // Set up when an earlier container (or an earlier run of this one) started: a
            // restart mounts what is there, as the kubelet's volume manager mounts a pod's
            // volumes once. The periodic refresh keeps it current, so a container restarts
            // even while the API server is unreachable.
            own_dir
        } else if volume_payload::is_projection(volume) {
            // Secrets and tokens live in memory only, as the kubelet keeps them.
            if volume.secret.is_some() || volume.projected.is_some() {
                runtime
                    .memory_volume(&own_dir, None)
                    .map_err(|e| e.to_string())?;
            }
            project(sources, pod, volume, &own_dir).await?;
            if let Some(gid) = fs_group {
                set_volume_ownership(&own_dir, gid, true)?;
            }
            own_dir
        } else {
            return Err(format!(
                "volume {:?}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported",
                volume.name
            ));
        };
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => sub_path_mount(root, &uid, container, index, volume, &source, sub)
                .map_err(|e| {
                    format!(
                        "failed to prepare subPath for volumeMount {:?} of container {:?}: {e}",
                        vm.name, container.name
                    )
                })?,
            None => source,
        };
        mounts.push(BindMount {
            source,
            destination: PathBuf::from(&vm.mount_path),
            read_only: vm.read_only.unwrap_or(false) || volume_payload::is_projection(volume),
        });
    }
    Ok(mounts)
}

/// Writes the pod's configMap, secret, downwardAPI and projected volumes again, as the
/// kubelet's periodic pod sync does: new tokens and changed ConfigMaps and Secrets reach the
/// running containers; an unchanged volume is left alone. Only volumes that were set up (a
/// container mounted them) are written. Returns the volumes rewritten, and the errors.
pub async fn refresh_volumes(
    sources: &dyn VolumeSources,
    root: &Path,
    pod: &Pod,
) -> (Vec<String>, Vec<String>) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let (mut written, mut errors) = (Vec::new(), Vec::new());
    for volume in pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| volume_payload::is_projection(v))
    {
        let Ok(name) = safe_relative(&volume.name) else {
            continue;
        };
        let dir = root.join("pods").join(&uid).join("volumes").join(name);
        if std::fs::symlink_metadata(dir.join(atomic_writer::DATA_DIR)).is_err() {
            continue;
        }
        let written_now =
            project(sources, pod, volume, &dir)
                .await
                .and_then(|w| match (w, fs_group(pod)?) {
                    (Some(_), Some(gid)) => set_volume_ownership(&dir, gid, true).map(|()| w),
                    _ => Ok(w),
                });
        match written_now {
            Ok(Some(true)) => written.push(volume.name.clone()),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    (written, errors)
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
    fn whole_label_and_annotation_maps_are_formatted_as_the_kubelet_writes_them() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "labels": {"tier": "front", "app": "kubia"},
                "annotations": {"q": "say \"hi\"\\", "ctl": "a\u{1}b\tc", "u": "é\u{a0}"},
            },
        }))
        .unwrap();
        assert_eq!(
            pod_field(&pod, "metadata.labels", None, None).unwrap(),
            "app=\"kubia\"\ntier=\"front\""
        );
        assert_eq!(
            pod_field(&pod, "metadata.annotations", None, None).unwrap(),
            "ctl=\"a\\x01b\\tc\"\nq=\"say \\\"hi\\\"\\\\\"\nu=\"é\\u00a0\""
        );
        let bare: Pod = serde_json::from_value(serde_json::json!({"metadata": {}})).unwrap();
        assert_eq!(pod_field(&bare, "metadata.labels", None, None).unwrap(), "");
    }
}
