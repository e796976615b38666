//! What the node's HTTP endpoints (logs, exec, the read-only pod list) need to know about the
//! pods this agent runs, as a trait: the pod manager implements it, tests can fake it.
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
