//! A one-container busybox pod for tests that need a real container (exec, logs,
//! port-forward into its network namespace): a rootfs of the host's static busybox
//! (`busybox-static`, installed by `cargo xtask setup`) with the usual applets, a sandbox and a
//! container `app` running a shell script. Everything is removed on drop, also when the test
//! fails. Needs root. A test helper: it panics with the reason when something fails, as
//! tests do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Container, ContainerSpec, ImageConfig, Runtime};

/// The applets the rootfs links to busybox.
const APPLETS: [&str; 13] = [
    "sh", "sleep", "hostname", "cat", "echo", "touch", "tty", "stty", "httpd", "mkdir", "nc",
    "wget", "head",
];

/// A running busybox pod, removed on drop.
pub struct BusyboxPod {
    /// The runtime that runs it (its state under the pod's temporary directory).
    pub runtime: Arc<Runtime>,
    /// The pod's uid.
    pub uid: String,
    /// Its container `app`.
    pub container: Container,
    dir: tempfile::TempDir,
}

impl BusyboxPod {
    /// Starts pod `uid` (host name `hostname`) whose container runs `/bin/sh -c script`; the
    /// runtime re-executes `agent_binary` for its shims.
    pub fn start(
        agent_binary: impl Into<PathBuf>,
        uid: &str,
        hostname: &str,
        script: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let layer = busybox_layer(dir.path());
        let runtime = Arc::new(
            Runtime::with_binary(dir.path().join("agent"), agent_binary).expect("the runtime"),
        );
        // From here on the pod's remains are removed on drop, even if starting fails.
        let mut pod = Self {
            runtime: runtime.clone(),
            uid: uid.to_owned(),
            container: Container {
                pod_uid: uid.to_owned(),
                name: String::new(),
                id: String::new(),
                pid: 0,
                start_time: 0,
                log_path: PathBuf::new(),
                cgroups_path: String::new(),
            },
            dir,
        };
        let sandbox = runtime
            .create_sandbox(uid, hostname)
            .expect("the pod's sandbox");
        let k8s = k8s_openapi::api::core::v1::Container {
            name: "app".into(),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        };
        let spec = ContainerSpec::from_kubernetes(&k8s, &ImageConfig::default(), vec![layer])
            .expect("the container's spec");
        let container = runtime
            .create_container(&sandbox, &spec)
            .expect("the container");
        runtime.start(&container).expect("starting the container");
        pod.container = container;
        pod
    }

    /// The runtime's state directory (the root of a node endpoint serving this pod).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("agent")
    }
}

impl Drop for BusyboxPod {
    fn drop(&mut self) {
        if let Err(e) = self.runtime.remove_pod_by_uid(&self.uid) {
            eprintln!("cleanup of pod {}: {e}", self.uid);
        }
    }
}

/// A busybox rootfs under `dir`.
fn busybox_layer(dir: &Path) -> PathBuf {
    let base = dir.join("layers/busybox");
    for d in ["bin", "tmp", "proc", "sys", "dev", "etc", "root"] {
        std::fs::create_dir_all(base.join(d)).expect("the rootfs's directories");
    }
    std::fs::copy("/bin/busybox", base.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static, cargo xtask setup)");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(applet))
            .expect("the applets' links");
    }
    base
}
