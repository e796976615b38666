//! What the node's HTTP endpoints (logs, exec, port-forward, the read-only pod list) need to
//! know about the pods this agent runs, as a trait: the pod manager implements it, tests can
//! fake it.
//!
//! Log files: `<root>/pods/<uid>/logs/<container>/<restart-count>.log`, one per container
//! instance, so `kubectl logs --previous` reads the instance before the current one.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

use crate::runtime::Container;

/// A container located by namespace, pod name and container name.
#[derive(Debug, Clone)]
pub struct Located {
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's name (resolved when the request named none and the pod has one).
    pub container: String,
    /// The running instance, if one runs now (exec needs it).
    pub running: Option<Container>,
    /// The current instance's log file (the latest one written).
    pub log: Option<PathBuf>,
    /// The previous instance's log file, if there was a restart.
    pub previous_log: Option<PathBuf>,
}

/// Why a container could not be located.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// No such pod on this node.
    #[error("pod {namespace}/{name} is not running on this node")]
    PodNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The pod has no such container.
    #[error("container {container} is not valid for pod {pod}")]
    ContainerNotFound {
        /// The pod's name.
        pod: String,
        /// The container asked for.
        container: String,
    },
    /// The pod has several containers and the request named none.
    #[error("a container name must be specified for pod {pod}, choose one of: [{choices}]")]
    ContainerNameRequired {
        /// The pod's name.
        pod: String,
        /// Its containers, space separated.
        choices: String,
    },
}

/// The pods of this node, for the node's HTTP endpoints.
pub trait PodDirectory: Send + Sync + 'static {
    /// The pods this agent runs, as last seen (with the status it reported).
    fn pods(&self) -> Vec<Pod>;
    /// Locates a container of a pod on this node.
    fn locate(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<Located, LocateError>;

    /// The uid of a pod on this node (the runtime's key for its sandbox), for what concerns
    /// the pod rather than one container (port-forward). By default the uid of the pod of
    /// that name in [`PodDirectory::pods`].
    fn pod_uid(&self, namespace: &str, pod: &str) -> Result<String, LocateError> {
        self.pods()
            .into_iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(pod)
            })
            .and_then(|p| p.metadata.uid)
            .ok_or_else(|| LocateError::PodNotFound {
                namespace: namespace.to_owned(),
                name: pod.to_owned(),
            })
    }
}

/// The log file of instance `restart_count` of a container.
pub fn log_path(
    root: &std::path::Path,
    pod_uid: &str,
    container: &str,
    restart_count: i32,
) -> PathBuf {
    root.join("pods")
        .join(pod_uid)
        .join("logs")
        .join(container)
        .join(format!("{restart_count}.log"))
}

/// What the directory knows about one container of a pod.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The running instance, if one runs.
    pub running: Option<Container>,
    /// The current instance's restart count (its log is `<restart_count>.log`).
    pub restart_count: i32,
    /// Whether an instance was ever created (else there is no log yet).
    pub started: bool,
}

/// A pod as its worker last published it, with its containers by name.
type Published = (Pod, std::collections::BTreeMap<String, Entry>);

/// The pod manager's [`PodDirectory`]: pod workers publish into it after every pass.
pub struct Directory {
    root: PathBuf,
    pods: std::sync::RwLock<std::collections::BTreeMap<String, Published>>,
}

impl Directory {
    /// An empty directory for an agent whose state is under `root`.
    pub fn new(root: &std::path::Path) -> Self {
        Self {
            root: root.to_owned(),
            pods: std::sync::RwLock::default(),
        }
    }

    /// Records a pod's latest state.
    pub fn update(
        &self,
        uid: &str,
        pod: Pod,
        containers: std::collections::BTreeMap<String, Entry>,
    ) {
        self.pods
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(uid.to_owned(), (pod, containers));
    }

    /// Forgets a pod (deleted).
    pub fn remove(&self, uid: &str) {
        self.pods
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid);
    }
}

impl PodDirectory for Directory {
    fn pods(&self) -> Vec<Pod> {
        self.pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn pod_uid(&self, namespace: &str, pod: &str) -> Result<String, LocateError> {
        self.pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(_, (p, _))| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(pod)
            })
            .map(|(uid, _)| uid.clone())
            .ok_or_else(|| LocateError::PodNotFound {
                namespace: namespace.to_owned(),
                name: pod.to_owned(),
            })
    }

    fn locate(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<Located, LocateError> {
        let pods = self
            .pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (uid, (p, containers)) = pods
            .iter()
            .find(|(_, (p, _))| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(pod)
            })
            .ok_or_else(|| LocateError::PodNotFound {
                namespace: namespace.to_owned(),
                name: pod.to_owned(),
            })?;
        let app: Vec<String> = p
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
            .collect();
        let name = match container {
            Some(c) => c.to_owned(),
            None if app.len() == 1 => app[0].clone(),
            None => {
                return Err(LocateError::ContainerNameRequired {
                    pod: pod.to_owned(),
                    choices: app.join(" "),
                })
            }
        };
        let entry = containers
            .get(&name)
            .ok_or_else(|| LocateError::ContainerNotFound {
                pod: pod.to_owned(),
                container: name.clone(),
            })?;
        let log = entry
            .started
            .then(|| log_path(&self.root, uid, &name, entry.restart_count));
        let previous_log = (entry.restart_count > 0)
            .then(|| log_path(&self.root, uid, &name, entry.restart_count - 1))
            .filter(|p| p.exists());
        Ok(Located {
            pod_uid: uid.clone(),
            container: name,
            running: entry.running.clone(),
            log,
            previous_log,
        })
    }
}
