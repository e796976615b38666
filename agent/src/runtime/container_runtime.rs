//! The seam between the kubelet and the pod runtime: what the pod manager, the pod workers and
//! the probes call. [`Runtime`] (libcontainer through the shim) is the real implementation; the
//! kubelet's unit tests use a fake that records calls (`kubelet::fakes`), after youki's
//! `Syscall` trait, which lets libcontainer's own tests run without root.
//!
//! Every method blocks (the real one waits for a shim process): async callers use
//! `spawn_blocking`.

use std::path::Path;
use std::time::Duration;

use super::{
    Container, ContainerSpec, ContainerState, ExecOutput, HostNamespaces, PodState, Result,
    Runtime, Sandbox,
};

/// The container runtime as the kubelet uses it.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Starts a pod's sandbox (the pause process holding its namespaces).
    fn create_sandbox(&self, pod_uid: &str, hostname: &str) -> Result<Sandbox>;
    /// A sandbox sharing the node's namespaces that `host` names (hostNetwork, hostIPC);
    /// fakes without namespaces keep the default, which ignores them.
    fn create_sandbox_with(
        &self,
        pod_uid: &str,
        hostname: &str,
        host: HostNamespaces,
    ) -> Result<Sandbox> {
        let _ = host;
        self.create_sandbox(pod_uid, hostname)
    }
    /// Whether the sandbox's pause process still runs.
    fn sandbox_running(&self, sandbox: &Sandbox) -> bool;
    /// Removes a sandbox and everything in it.
    fn remove_sandbox(&self, sandbox: &Sandbox) -> Result<()>;
    /// Removes whatever the runtime holds of a pod (sandbox, containers, state), if anything.
    fn remove_pod_by_uid(&self, pod_uid: &str) -> Result<()>;
    /// Creates a container in a sandbox (not started).
    fn create_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<Container>;
    /// Starts a created container.
    fn start(&self, container: &Container) -> Result<()>;
    /// The container's state, collecting its exit status if it ended.
    fn status(&self, container: &Container) -> Result<ContainerState>;
    /// SIGTERM (the image's stop signal), then SIGKILL after `grace`; returns the final state.
    fn stop(&self, container: &Container, grace: Duration) -> Result<ContainerState>;
    /// Deletes a container (killing it if it runs) and its state.
    fn delete_container(&self, container: &Container) -> Result<()>;
    /// The sandboxes and containers on disk (adoption after an agent restart).
    fn list(&self) -> Result<Vec<PodState>>;
    /// Uids of pods whose sandbox was half-created (to remove at start).
    fn leftover_pods(&self) -> Result<Vec<String>>;
    /// Runs a command in a container and collects its output (exec probes).
    fn exec_output(
        &self,
        container: &Container,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput>;
    /// Makes `dir` (a volume below the pod's directory) memory-backed, at most `size` bytes:
    /// secret and projected volumes and `emptyDir.medium: Memory`. Removing the pod removes
    /// the mount. Fakes keep a plain directory.
    fn memory_volume(&self, dir: &Path, size: Option<u64>) -> Result<()> {
        let _ = size;
        std::fs::create_dir_all(dir).map_err(super::io_err(format!("creating {}", dir.display())))
    }
}

impl ContainerRuntime for Runtime {
    fn create_sandbox(&self, pod_uid: &str, hostname: &str) -> Result<Sandbox> {
        Runtime::create_sandbox(self, pod_uid, hostname)
    }

    fn create_sandbox_with(
        &self,
        pod_uid: &str,
        hostname: &str,
        host: HostNamespaces,
    ) -> Result<Sandbox> {
        Runtime::create_sandbox_with(self, pod_uid, hostname, host)
    }

    fn sandbox_running(&self, sandbox: &Sandbox) -> bool {
        sandbox.is_running()
    }

    fn remove_sandbox(&self, sandbox: &Sandbox) -> Result<()> {
        Runtime::remove_sandbox(self, sandbox)
    }

    fn remove_pod_by_uid(&self, pod_uid: &str) -> Result<()> {
        Runtime::remove_pod_by_uid(self, pod_uid)
    }

    fn create_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<Container> {
        Runtime::create_container(self, sandbox, spec)
    }

    fn start(&self, container: &Container) -> Result<()> {
        Runtime::start(self, container)
    }

    fn status(&self, container: &Container) -> Result<ContainerState> {
        Runtime::status(self, container)
    }

    fn stop(&self, container: &Container, grace: Duration) -> Result<ContainerState> {
        Runtime::stop(self, container, grace)
    }

    fn delete_container(&self, container: &Container) -> Result<()> {
        Runtime::delete_container(self, container)
    }

    fn list(&self) -> Result<Vec<PodState>> {
        Runtime::list(self)
    }

    fn leftover_pods(&self) -> Result<Vec<String>> {
        Runtime::leftover_pods(self)
    }

    fn exec_output(
        &self,
        container: &Container,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        Runtime::exec_output(self, container, argv, timeout)
    }

    fn memory_volume(&self, dir: &Path, size: Option<u64>) -> Result<()> {
        super::memory_volume::ensure(dir, size).map_err(super::io_err(format!(
            "mounting a tmpfs on {}",
            dir.display()
        )))
    }
}
