//! The pod runtime: sandboxes (a pause process holding a pod's network, IPC and UTS namespaces)
//! and containers joining them, run by youki's libcontainer.
//!
//! libcontainer never runs in the calling process: every create/start/kill/delete re-executes
//! the agent binary as `skiff-agent shim ...` ([`shim`]), a single-threaded helper. The calls
//! here block (they wait for the shim), so async callers use `spawn_blocking`. The agent must be
//! a child subreaper ([`become_subreaper`]): container processes re-parent to it when the shim's
//! helpers exit, and [`Runtime::status`]/[`Runtime::wait`] collect their exit status with
//! `waitpid`, recording it on disk.
//!
//! State lives under the root directory, so a restarted agent finds what runs with
//! [`Runtime::list`]:
//!
//! ```text
//! <root>/libcontainer/<pod-uid>-<name>/      libcontainer's state.json and config
//! <root>/pods/<pod-uid>/sandbox.json         the Sandbox (pause pid and start time)
//! <root>/pods/<pod-uid>/pause.log            pause's stderr
//! <root>/pods/<pod-uid>/logs/<name>.log      a container's stdout and stderr (default)
//! <root>/pods/<pod-uid>/containers/<name>/   container.json, started, exit.json,
//!                                            bundle/config.json, rootfs (overlay), upper, work
//! ```
//!
//! cgroups: `/skiff/<pod-uid>/<name>` per container (v1 cgroupfs, absolute path), the pause
//! process in `/skiff/<pod-uid>/pause`.

pub mod busybox_pod;
pub mod cgroup_stats;
pub mod cgroups;
mod container_runtime;
pub mod exec_output;
pub mod host_path;
pub mod memory_volume;
pub mod pause;
pub mod shim;
pub mod spec;
pub mod stdio;
pub mod subpath;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use container_runtime::ContainerRuntime;
pub use exec_output::ExecOutput;
pub use spec::{BindMount, ContainerSpec, ImageConfig, Resources, Seccomp, SpecError, StdioSpec};
pub use stdio::ContainerStdio;

/// Errors of the pod runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The cause.
        source: Errno,
    },
    /// The shim (libcontainer) reported a failure.
    #[error("shim {op} {id}: {message}")]
    Shim {
        /// The operation (create, start, kill, delete).
        op: &'static str,
        /// The container id.
        id: String,
        /// The shim's stderr.
        message: String,
    },
    /// The pause process did not come up.
    #[error("pause process of pod {pod}: {message}")]
    Pause {
        /// The pod's uid.
        pod: String,
        /// What went wrong (its stderr).
        message: String,
    },
    /// A pod uid or hostname is not acceptable.
    #[error("invalid {what} {value:?}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// The sandbox or container exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// The sandbox's pause process is gone; the pod must be recreated.
    #[error("the sandbox of pod {0} is not running")]
    SandboxNotRunning(String),
    /// A container's spec could not be built.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A state file could not be read or written.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

type Result<T, E = RuntimeError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(Errno) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Sys { what, source }
}

/// Runs the runtime's helper process if this process was started as one (`<binary> shim ...`
/// or `<binary> pause ...`); returns its exit code, or `None` for a normal agent start. Call it
/// first in `main`, before any thread exists.
pub fn helper_main() -> Option<std::process::ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let mode = args.next()?;
    let run: fn(Vec<std::ffi::OsString>) -> std::process::ExitCode = match mode.to_str()? {
        "shim" => shim::main,
        "pause" => pause::main,
        _ => return None,
    };
    // libcontainer reports failures through tracing: send them to stderr, which the runtime
    // turns into its error messages.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_ansi(false)
        .try_init();
    Some(run(args.collect()))
}

/// Makes this process a child subreaper (PR_SET_CHILD_SUBREAPER): orphaned descendants, such as
/// container processes once their shim exits, re-parent to it so their exit status can be
/// collected. Call once, early, in the agent (and in tests that run containers).
pub fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(sys_err("PR_SET_CHILD_SUBREAPER"))
}

/// A pod's sandbox: the pause process whose namespaces the pod's containers join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// The pod's uid.
    pub uid: String,
    /// The pod's hostname (set in its UTS namespace).
    pub hostname: String,
    /// The pause process.
    pub pause_pid: i32,
    /// Its start time (clock ticks since boot, /proc/<pid>/stat), against pid reuse.
    pub pause_start_time: u64,
    /// The node's namespaces it shares instead of having its own.
    #[serde(default)]
    pub host: HostNamespaces,
}

/// Which of the node's namespaces a pod shares (hostNetwork, hostIPC; hostPID is the
/// containers' own: [`ContainerSpec::host_pid`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNamespaces {
    /// hostNetwork: the node's network and UTS namespaces (its interfaces and hostname).
    #[serde(default)]
    pub network: bool,
    /// hostIPC: the node's IPC namespace.
    #[serde(default)]
    pub ipc: bool,
}

impl Sandbox {
    fn ns(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.pause_pid))
    }

    /// The pod's network namespace (for wiring its veth).
    pub fn netns_path(&self) -> PathBuf {
        self.ns("net")
    }

    /// The pod's IPC namespace.
    pub fn ipcns_path(&self) -> PathBuf {
        self.ns("ipc")
    }

    /// The pod's UTS namespace.
    pub fn utsns_path(&self) -> PathBuf {
        self.ns("uts")
    }

    /// Whether the pause process still runs.
    pub fn is_running(&self) -> bool {
        process_alive(self.pause_pid, self.pause_start_time)
    }
}

/// A container of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's name in the pod.
    pub name: String,
    /// libcontainer's id (`<pod-uid>-<name>`).
    pub id: String,
    /// The container's init process (host pid).
    pub pid: i32,
    /// Its start time, against pid reuse.
    pub start_time: u64,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
    /// Its cgroupsPath (`/skiff/<pod-uid>/<name>`).
    pub cgroups_path: String,
}

impl Container {
    /// Whether its process still runs (not a zombie, not a reused pid). Cheap: reads /proc.
    pub fn is_running(&self) -> bool {
        process_alive(self.pid, self.start_time)
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code; 128 + the signal number when a signal ended it (as Kubernetes reports).
    pub code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running,
    /// It ended; `None` when the exit status is unknown (the process ended while it was not
    /// this process's child, e.g. while the agent was restarting).
    Exited(Option<ExitStatus>),
}

/// A sandbox and its containers as found on disk by [`Runtime::list`].
#[derive(Debug, Clone)]
pub struct PodState {
    /// The sandbox.
    pub sandbox: Sandbox,
    /// Whether its pause process runs.
    pub running: bool,
    /// Its containers and their states.
    pub containers: Vec<(Container, ContainerState)>,
}

/// Numbers the console sockets of concurrent `exec --tty` calls.
static EXEC_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A process started by [`Runtime::exec`].
#[derive(Debug)]
pub struct ExecProcess {
    /// The shim: waiting for it gives the process's exit code. Its stdin, stdout and stderr
    /// are pipes (the process's stdio without a tty, the shim's errors with one).
    pub child: std::process::Child,
    /// The master side of the process's terminal (with `tty`).
    pub pty: Option<std::os::fd::OwnedFd>,
}

/// Ends an exec early (the client went away), given its shim's pid: SIGKILL to the exec'd
/// process (the shim's child, found in /proc: killing the shim alone would leave it running in
/// the container), then to the shim.
pub fn kill_exec(shim_pid: u32) {
    for pid in children_of(shim_pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if let Ok(pid) = i32::try_from(shim_pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// The pids whose parent is `parent` (from /proc/<pid>/stat).
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

#[allow(unsafe_code, reason = "adopting descriptors received with SCM_RIGHTS")]
/// Accepts the shim's connection on the console socket and receives the terminal's master
/// (SCM_RIGHTS), giving up when the shim exits first (its stderr says why) or after 10 s.
fn receive_console(
    listener: &std::os::unix::net::UnixListener,
    child: &mut std::process::Child,
) -> Result<std::os::fd::OwnedFd> {
    use std::io::Read as _;
    use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _};

    let deadline = Instant::now() + Duration::from_secs(10);
    listener
        .set_nonblocking(true)
        .map_err(io_err("console socket"))?;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_err("accepting on the console socket")(e)),
        }
        if let Ok(Some(status)) = child.try_wait() {
            // The connection may have come between the accept above and the exit.
            if let Ok((stream, _)) = listener.accept() {
                break stream;
            }
            let mut message = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut message);
            }
            return Err(RuntimeError::Shim {
                op: "exec",
                id: String::new(),
                message: format!("{} ({status})", message.trim()),
            });
        }
        if Instant::now() >= deadline {
            return Err(RuntimeError::Shim {
                op: "exec",
                id: String::new(),
                message: "no terminal received within 10 s".to_owned(),
            });
        }
        // Wake on a connection, or every 50 ms to notice a shim that died.
        let listener_fd = listener.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &listener_fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    };
    stream
        .set_nonblocking(false)
        .map_err(io_err("console socket"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err("console socket"))?;
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(sys_err("receiving the terminal"))?;
    for cmsg in msg.cmsgs().map_err(sys_err("receiving the terminal"))? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed `fd` in this process for us; nothing else
                // owns it.
                let master = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                for &extra in &fds[1..] {
                    // SAFETY: as above, received and owned by nobody else.
                    let extra = unsafe { std::os::fd::OwnedFd::from_raw_fd(extra) };
                    drop(extra);
                }
                return Ok(master);
            }
        }
    }
    Err(RuntimeError::Shim {
        op: "exec",
        id: String::new(),
        message: "the console socket carried no terminal".to_owned(),
    })
}

/// The pod runtime. Cheap to share (`Arc`); methods block.
#[derive(Debug)]
pub struct Runtime {
    root: PathBuf,
    binary: PathBuf,
    /// Serialises reaping and recording exit statuses.
    reap: Mutex<()>,
    /// The stdin and terminals of containers with `stdin` or `tty`, by container id.
    stdio: Mutex<std::collections::HashMap<String, std::sync::Arc<ContainerStdio>>>,
}

fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// How long [`Runtime::stop`] watches a container's first process for a SIGTERM handler to
/// appear (programs install theirs as they start), and how often it looks.
const HANDLER_WATCH: Duration = Duration::from_secs(5);
const HANDLER_POLL: Duration = Duration::from_millis(20);

/// Whether process `pid` has a handler for `signal` (its `SigCgt` mask in /proc); `None` when
/// it is gone or the mask cannot be read.
fn catches_signal(pid: i32, signal: Signal) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    sig_caught(&status, signal as i32)
}

/// Reads bit `signal - 1` of the `SigCgt:` line of a /proc status file.
fn sig_caught(status: &str, signal: i32) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))?
        .trim();
    let mask = u64::from_str_radix(mask, 16).ok()?;
    Some(mask & (1u64 << (signal - 1)) != 0)
}

/// Start time of a process (field 22 of /proc/<pid>/stat), if it exists.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn process_alive(pid: i32, start: u64) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut fields = after_comm.split_whitespace();
    let state = fields.next();
    let started = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
    started == Some(start) && !matches!(state, Some("Z" | "X"))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RuntimeError::State {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// Writes a state file atomically (temporary file, then rename).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| RuntimeError::State {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("renaming {}", tmp.display())))
}

/// Whether `path` is a mount point (listed in /proc/self/mountinfo).
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(target.as_str()))
}

fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

impl Runtime {
    /// A runtime keeping its state in `root_dir`, using this executable as shim and pause
    /// binary (the agent).
    pub fn new(root_dir: impl Into<PathBuf>) -> Result<Self> {
        let binary = std::env::current_exe().map_err(io_err("finding the agent binary"))?;
        Self::with_binary(root_dir, binary)
    }

    /// A runtime using `binary` (a `skiff-agent`) for the shim and pause processes. Makes the
    /// calling process a child subreaper ([`become_subreaper`]).
    pub fn with_binary(root_dir: impl Into<PathBuf>, binary: impl Into<PathBuf>) -> Result<Self> {
        // Without it, exit statuses are lost: containers would re-parent to PID 1.
        become_subreaper()?;
        let root = root_dir.into();
        std::fs::create_dir_all(root.join("pods"))
            .map_err(io_err(format!("creating {}", root.display())))?;
        // Absolute: the shim and libcontainer chdir.
        let root = std::fs::canonicalize(&root)
            .map_err(io_err(format!("resolving {}", root.display())))?;
        Ok(Self {
            root,
            binary: binary.into(),
            reap: Mutex::new(()),
            stdio: Mutex::default(),
        })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn libcontainer_root(&self) -> PathBuf {
        self.root.join("libcontainer")
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    fn container_dir(&self, uid: &str, name: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(name)
    }

    fn shim(&self, op: &'static str, id: &str, args: &[&std::ffi::OsStr]) -> Result<String> {
        let out = Command::new(&self.binary)
            .arg("shim")
            .arg("--root")
            .arg(self.libcontainer_root())
            .arg("--id")
            .arg(id)
            .arg(op)
            .args(args)
            .stdin(Stdio::null())
            .env(
                "RUST_LOG",
                std::env::var("SKIFF_SHIM_DEBUG").map_or("error", |_| "debug"),
            )
            .output()
            .map_err(io_err(format!("running {} shim", self.binary.display())))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(RuntimeError::Shim {
                op,
                id: id.to_owned(),
                message: format!("{} ({})", stderr.trim(), out.status),
            })
        }
    }

    /// Creates a pod's sandbox: starts the pause process (new network, IPC and UTS namespaces,
    /// `hostname`, `lo` up) in the pod's cgroup parent and records it.
    pub fn create_sandbox(&self, pod_uid: &str, hostname: &str) -> Result<Sandbox> {
        self.create_sandbox_with(pod_uid, hostname, HostNamespaces::default())
    }

    /// [`Runtime::create_sandbox`] sharing the node's namespaces that `host` names.
    pub fn create_sandbox_with(
        &self,
        pod_uid: &str,
        hostname: &str,
        host: HostNamespaces,
    ) -> Result<Sandbox> {
        if !valid_uid(pod_uid) {
            return Err(RuntimeError::Invalid {
                what: "pod uid",
                value: pod_uid.to_owned(),
            });
        }
        if !valid_hostname(hostname) {
            return Err(RuntimeError::Invalid {
                what: "hostname",
                value: hostname.to_owned(),
            });
        }
        let dir = self.pod_dir(pod_uid);
        if dir.join("sandbox.json").exists() {
            return Err(RuntimeError::Exists(format!("sandbox of pod {pod_uid}")));
        }
        // 0700: the pod's volumes below it hold Secrets and tokens (containers reach what they
        // need through bind mounts, made as root).
        std::fs::create_dir_all(dir.join("containers"))
            .and_then(|()| std::fs::create_dir_all(dir.join("logs")))
            .and_then(|()| {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .map_err(io_err(format!("creating {}", dir.display())))?;
        let log_path = dir.join("pause.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io_err(format!("creating {}", log_path.display())))?;
        let mut child = Command::new(&self.binary)
            .arg("pause")
            .arg("--hostname")
            .arg(hostname)
            .args(host.network.then_some("--host-network"))
            .args(host.ipc.then_some("--host-ipc"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(io_err(format!("starting {} pause", self.binary.display())))?;
        let pid = child.id() as i32;
        let mut line = String::new();
        let ready = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        if !matches!(ready, Some(Ok(_))) || line.trim() != pause::READY {
            let _ = child.kill();
            let status = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = remove_dir_if_exists(&dir);
            return Err(RuntimeError::Pause {
                pod: pod_uid.to_owned(),
                message: format!("{} ({status:?})", log.trim()),
            });
        }
        // The child handle is dropped without waiting: the pause process runs on, and
        // `remove_sandbox` reaps it.
        drop(child);
        let sandbox = Sandbox {
            uid: pod_uid.to_owned(),
            hostname: hostname.to_owned(),
            pause_pid: pid,
            pause_start_time: start_time(pid).unwrap_or(0),
            host,
        };
        // Recorded first, so that a crash from here on leaves a sandbox remove_sandbox finds.
        let recorded = write_json(&dir.join("sandbox.json"), &sandbox).and_then(|()| {
            cgroups::join_pause(pod_uid, pid)
                .map_err(io_err("moving the pause process into the pod's cgroup"))
        });
        if let Err(e) = recorded {
            let _ = self.stop_pause(&sandbox);
            let _ = cgroups::remove_pod(pod_uid);
            let _ = remove_dir_if_exists(&dir);
            return Err(e);
        }
        Ok(sandbox)
    }

    /// Creates a container in a sandbox (not started): an overlay rootfs over the image layers,
    /// the OCI bundle, and the process, created by libcontainer in the shim, waiting for
    /// [`Runtime::start`].
    pub fn create_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<Container> {
        if !sandbox.is_running() {
            return Err(RuntimeError::SandboxNotRunning(sandbox.uid.clone()));
        }
        if !skiff_k8s::names::is_dns_label(&spec.name) {
            return Err(SpecError::InvalidName(spec.name.clone()).into());
        }
        if spec.layers.is_empty() {
            return Err(RuntimeError::Invalid {
                what: "image layers",
                value: "none".to_owned(),
            });
        }
        let dir = self.container_dir(&sandbox.uid, &spec.name);
        if dir.exists() {
            return Err(RuntimeError::Exists(format!(
                "container {} of pod {}",
                spec.name, sandbox.uid
            )));
        }
        let id = format!("{}-{}", sandbox.uid, spec.name);
        let cgroups_path = format!("/{}/{}/{}", cgroups::PREFIX, sandbox.uid, spec.name);
        let result = self.create_container_in(sandbox, spec, &dir, &id, &cgroups_path);
        if result.is_err() {
            let _ = self.shim("delete", &id, &["--force".as_ref()]);
            let _ = self.remove_container_dir(&dir);
        }
        result
    }

    fn create_container_in(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
        dir: &Path,
        id: &str,
        cgroups_path: &str,
    ) -> Result<Container> {
        let (rootfs, upper, work, bundle) = (
            dir.join("rootfs"),
            dir.join("upper"),
            dir.join("work"),
            dir.join("bundle"),
        );
        for d in [&rootfs, &upper, &work, &bundle] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let options = spec::overlay_options(&spec.layers, &upper, &work);
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(sys_err(format!(
            "mounting overlay ({options}) on {}",
            rootfs.display()
        )))?;
        let oci = spec.to_oci(&spec::SpecContext {
            rootfs: rootfs.clone(),
            cgroups_path: cgroups_path.to_owned(),
            net_ns: sandbox.netns_path(),
            ipc_ns: sandbox.ipcns_path(),
            uts_ns: sandbox.utsns_path(),
            seccomp_dir: self.root.join("seccomp"),
        })?;
        let config = bundle.join("config.json");
        oci.save(&config).map_err(|e| {
            io_err(format!("writing {}", config.display()))(std::io::Error::other(e))
        })?;
        let log_path = spec.log_path.clone().unwrap_or_else(|| {
            self.pod_dir(&sandbox.uid)
                .join("logs")
                .join(format!("{}.log", spec.name))
        });
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let out = self.shim_create(id, &bundle, &log_path, spec.stdio)?;
        let pid: i32 = out.trim().parse().map_err(|_| RuntimeError::Shim {
            op: "create",
            id: id.to_owned(),
            message: format!("unexpected output {out:?}"),
        })?;
        let container = Container {
            pod_uid: sandbox.uid.clone(),
            name: spec.name.clone(),
            id: id.to_owned(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
            log_path,
            cgroups_path: cgroups_path.to_owned(),
        };
        write_json(&dir.join("container.json"), &container)?;
        Ok(container)
    }

    /// `shim create`, giving the container the stdio `stdio` asks for: a pipe for stdin whose
    /// write end the runtime keeps, or a terminal whose master it receives on a console
    /// socket ([`stdio`]). Returns the shim's output (the pid).
    fn shim_create(
        &self,
        id: &str,
        bundle: &Path,
        log_path: &Path,
        stdio: StdioSpec,
    ) -> Result<String> {
        if !stdio.stdin && !stdio.tty {
            return self.shim(
                "create",
                id,
                &[
                    "--bundle".as_ref(),
                    bundle.as_os_str(),
                    "--log".as_ref(),
                    log_path.as_os_str(),
                ],
            );
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg("shim")
            .arg("--root")
            .arg(self.libcontainer_root())
            .arg("--id")
            .arg(id)
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--log")
            .arg(log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(
                "RUST_LOG",
                std::env::var("SKIFF_SHIM_DEBUG").map_or("error", |_| "debug"),
            );
        let shim_failed = |message: String| RuntimeError::Shim {
            op: "create",
            id: id.to_owned(),
            message,
        };
        let spawn = |cmd: &mut Command| {
            cmd.spawn()
                .map_err(io_err(format!("running {} shim", self.binary.display())))
        };
        let (child, held) = if stdio.tty {
            let socket_path = self.root.join(format!(
                "create-{}-{}.sock",
                std::process::id(),
                EXEC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&socket_path);
            let listener = std::os::unix::net::UnixListener::bind(&socket_path)
                .map_err(io_err(format!("binding {}", socket_path.display())))?;
            cmd.arg("--console-socket").arg(&socket_path);
            let received = spawn(&mut cmd).and_then(|mut child| {
                match receive_console(&listener, &mut child) {
                    Ok(master) => Ok((child, master)),
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        Err(e)
                    }
                }
            });
            let _ = std::fs::remove_file(&socket_path);
            let (child, master) = received?;
            let held =
                ContainerStdio::terminal(master, stdio.stdin, stdio.stdin_once, log_path.into())
                    .map_err(io_err("keeping the container's terminal"))?;
            (child, held)
        } else {
            let (reader, writer) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
            cmd.arg("--stdin-from-shim").stdin(Stdio::from(reader));
            let child = spawn(&mut cmd)?;
            // The shim's copy of the read end is the container's now; ours goes with `cmd`.
            drop(cmd);
            (child, ContainerStdio::pipe(writer, stdio.stdin_once))
        };
        let out = child
            .wait_with_output()
            .map_err(io_err("waiting for the shim"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(shim_failed(format!("{} ({})", stderr.trim(), out.status)));
        }
        self.stdio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), std::sync::Arc::new(held));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The stdin and terminal the runtime holds for a container created with `stdin` or `tty`
    /// (none after an agent restart).
    pub fn stdio(&self, container: &Container) -> Option<std::sync::Arc<ContainerStdio>> {
        self.stdio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&container.id)
            .cloned()
    }

    /// Starts a created container's process.
    pub fn start(&self, container: &Container) -> Result<()> {
        self.shim("start", &container.id, &[])?;
        let marker = self
            .container_dir(&container.pod_uid, &container.name)
            .join("started");
        std::fs::write(&marker, b"").map_err(io_err(format!("writing {}", marker.display())))
    }

    /// Runs `argv` in the running `container` (`kubectl exec`): a `skiff-agent shim exec`
    /// child that joins the container's namespaces, cgroup, user, capabilities and seccomp
    /// profile, waits for the process and exits with its exit code (128 + signal for a signal;
    /// [`shim::EXEC_FAILED`] with a message on stderr when it could not start it).
    ///
    /// Without `tty` the process's stdin, stdout and stderr are the returned child's pipes.
    /// With `tty` it gets a pseudo-terminal allocated inside the container as its stdio and
    /// controlling terminal (libcontainer sends the master over a console socket, as runc does
    /// for containerd); the master is returned for the caller to read, write and resize, and the
    /// child's stderr pipe carries only the shim's own errors.
    ///
    /// Blocks until the process started (async callers use `spawn_blocking`); the caller waits
    /// for the child. Killing the child does not kill the process: see [`kill_exec`].
    pub fn exec(&self, container: &Container, argv: &[String], tty: bool) -> Result<ExecProcess> {
        if argv.is_empty() {
            return Err(RuntimeError::Invalid {
                what: "exec command",
                value: String::new(),
            });
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg("shim")
            .arg("--root")
            .arg(self.libcontainer_root())
            .arg("--id")
            .arg(&container.id)
            .arg("exec")
            .env("RUST_LOG", "error");
        if !tty {
            cmd.arg("--")
                .args(argv)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = cmd
                .spawn()
                .map_err(io_err(format!("running {} shim", self.binary.display())))?;
            return Ok(ExecProcess { child, pty: None });
        }
        let socket_path = self.root.join(format!(
            "exec-{}-{}.sock",
            std::process::id(),
            EXEC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket_path);
        let listener = std::os::unix::net::UnixListener::bind(&socket_path)
            .map_err(io_err(format!("binding {}", socket_path.display())))?;
        let result = (|| {
            cmd.arg("--console-socket")
                .arg(&socket_path)
                .arg("--")
                .args(argv)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .map_err(io_err(format!("running {} shim", self.binary.display())))?;
            match receive_console(&listener, &mut child) {
                Ok(master) => Ok(ExecProcess {
                    child,
                    pty: Some(master),
                }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(e)
                }
            }
        })();
        let _ = std::fs::remove_file(&socket_path);
        result
    }

    /// Sends `signal` to the container's init process. A container that has exited already is
    /// not an error.
    pub fn signal(&self, container: &Container, signal: Signal) -> Result<()> {
        if matches!(self.status(container)?, ContainerState::Exited(_)) {
            return Ok(());
        }
        match self.shim(
            "kill",
            &container.id,
            &["--signal".as_ref(), (signal as i32).to_string().as_ref()],
        ) {
            Err(e) if matches!(self.status(container)?, ContainerState::Exited(_)) => {
                tracing::debug!(id = container.id, "signal after exit: {e}");
                Ok(())
            }
            r => r.map(drop),
        }
    }

    fn exit_file(&self, container: &Container) -> PathBuf {
        self.container_dir(&container.pod_uid, &container.name)
            .join("exit.json")
    }

    /// The container's state; collects (and records) its exit status if it has ended.
    pub fn status(&self, container: &Container) -> Result<ContainerState> {
        let _guard = self.reap.lock().unwrap_or_else(|e| e.into_inner());
        let exit_file = self.exit_file(container);
        if let Some(exit) = read_json::<ExitStatus>(&exit_file)? {
            return Ok(ContainerState::Exited(Some(exit)));
        }
        let ours = start_time(container.pid) == Some(container.start_time);
        if ours {
            let exit = match waitpid(Pid::from_raw(container.pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus { code, signal: None }),
                Ok(WaitStatus::Signaled(_, sig, _)) => Some(ExitStatus {
                    code: 128 + sig as i32,
                    signal: Some(sig as i32),
                }),
                Ok(_) => None,
                // Not our child (adopted after a restart): alive as long as it is not a zombie.
                Err(Errno::ECHILD) => {
                    if process_alive(container.pid, container.start_time) {
                        None
                    } else {
                        return Ok(ContainerState::Exited(None));
                    }
                }
                Err(e) => return Err(sys_err(format!("waitpid {}", container.pid))(e)),
            };
            if let Some(exit) = exit {
                write_json(&exit_file, &exit)?;
                return Ok(ContainerState::Exited(Some(exit)));
            }
            let started = self
                .container_dir(&container.pod_uid, &container.name)
                .join("started")
                .exists();
            return Ok(if started {
                ContainerState::Running
            } else {
                ContainerState::Created
            });
        }
        Ok(ContainerState::Exited(None))
    }

    /// Waits until the container has exited, at most `timeout` (forever with `None`), and
    /// returns its state then (still `Running` or `Created` after a timeout).
    pub fn wait(&self, container: &Container, timeout: Option<Duration>) -> Result<ContainerState> {
        let state = self.status(container)?;
        if matches!(state, ContainerState::Exited(_)) {
            return Ok(state);
        }
        let Some(pid) = rustix::process::Pid::from_raw(container.pid) else {
            return Ok(state);
        };
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            // Gone entirely (reaped by someone else): status says so.
            Err(rustix::io::Errno::SRCH) => return self.status(container),
            Err(e) => {
                return Err(sys_err(format!("pidfd_open {}", container.pid))(
                    Errno::from_raw(e.raw_os_error()),
                ))
            }
        };
        // The pidfd pins the process: check it is still the container's, not a reused pid.
        if start_time(container.pid) != Some(container.start_time) {
            return self.status(container);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ts = left.map(|l| rustix::event::Timespec {
                tv_sec: l.as_secs() as i64,
                tv_nsec: i64::from(l.subsec_nanos()),
            });
            let mut fds = [rustix::event::PollFd::new(
                &pidfd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(0) => return self.status(container),
                Ok(_) => {
                    // Exited (a zombie now, or reaped by a concurrent status()).
                    return self.status(container);
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(sys_err("poll pidfd")(Errno::from_raw(e.raw_os_error()))),
            }
        }
    }

    /// Stops a container as the kubelet does: SIGTERM, then SIGKILL if it still runs after
    /// `grace`. Returns its final state.
    pub fn stop(&self, container: &Container, grace: Duration) -> Result<ContainerState> {
        let deadline = Instant::now() + grace;
        let caught = catches_signal(container.pid, Signal::SIGTERM);
        self.signal(container, Signal::SIGTERM)?;
        // A container's first process is PID 1 of its PID namespace, and the kernel drops
        // signals to it that it has no handler for. A SIGTERM sent in a container's first
        // milliseconds (`kubectl run` then `delete`), before the program installed its
        // handler or while the runtime's init still runs before exec, is lost, and the stop
        // would wait out the whole grace period for a program (nginx) that would have exited
        // at once. So while the handler is missing, watch for it (for as long as programs
        // take to start) and send SIGTERM again, once, when it appears.
        if caught == Some(false) {
            let watch_until = deadline.min(Instant::now() + HANDLER_WATCH);
            while let Some(left) = watch_until.checked_duration_since(Instant::now()) {
                let state = self.wait(container, Some(left.min(HANDLER_POLL)))?;
                if matches!(state, ContainerState::Exited(_)) {
                    return Ok(state);
                }
                if catches_signal(container.pid, Signal::SIGTERM) == Some(true) {
                    self.signal(container, Signal::SIGTERM)?;
                    break;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let state = self.wait(container, Some(left))?;
        if matches!(state, ContainerState::Exited(_)) {
            return Ok(state);
        }
        self.signal(container, Signal::SIGKILL)?;
        self.wait(container, Some(Duration::from_secs(10)))
    }

    fn remove_container_dir(&self, dir: &Path) -> Result<()> {
        let rootfs = dir.join("rootfs");
        if is_mount_point(&rootfs) {
            if let Err(e) = nix::mount::umount(&rootfs) {
                tracing::warn!("umount {}: {e}; detaching", rootfs.display());
                nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(sys_err(format!("unmounting {}", rootfs.display())))?;
            }
        }
        // Never recurse into a mounted rootfs: that would delete through to the image layers.
        if is_mount_point(&rootfs) {
            return Err(RuntimeError::Io {
                what: format!("removing {}", dir.display()),
                source: std::io::Error::other("its rootfs is still mounted"),
            });
        }
        remove_dir_if_exists(dir)
    }

    /// Deletes a container: kills it if it runs, removes its libcontainer state and cgroup,
    /// unmounts its rootfs and removes its directory (its log file stays until the sandbox
    /// goes).
    pub fn delete_container(&self, container: &Container) -> Result<()> {
        self.delete_by_name(&container.pod_uid, &container.name, Some(container))
    }

    fn delete_by_name(&self, uid: &str, name: &str, container: Option<&Container>) -> Result<()> {
        let id = format!("{uid}-{name}");
        self.stdio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(c) = container {
            // Kill and reap first: libcontainer's delete of a live container kills it too but
            // then sleeps between attempts to remove its cgroup while the process dies.
            if !matches!(self.status(c)?, ContainerState::Exited(_))
                && start_time(c.pid) == Some(c.start_time)
            {
                let _ = nix::sys::signal::kill(Pid::from_raw(c.pid), Signal::SIGKILL);
                self.wait(c, Some(Duration::from_secs(10)))?;
            }
        }
        self.shim("delete", &id, &["--force".as_ref()])?;
        if let Some(c) = container {
            // Collect the zombie if the forced delete had to kill it.
            self.wait(c, Some(Duration::from_secs(10)))?;
        }
        self.remove_container_dir(&self.container_dir(uid, name))
    }

    fn stop_pause(&self, sandbox: &Sandbox) -> Result<()> {
        let pid = Pid::from_raw(sandbox.pause_pid);
        if !process_alive(sandbox.pause_pid, sandbox.pause_start_time)
            && start_time(sandbox.pause_pid) != Some(sandbox.pause_start_time)
        {
            return Ok(());
        }
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let pause = Container {
            pod_uid: sandbox.uid.clone(),
            name: "pause".to_owned(),
            id: String::new(),
            pid: sandbox.pause_pid,
            start_time: sandbox.pause_start_time,
            log_path: PathBuf::new(),
            cgroups_path: String::new(),
        };
        // Reuses the container wait: pidfd, then waitpid if it is our child.
        let exited = self.wait_pid(&pause, Duration::from_secs(2))?;
        if !exited {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            self.wait_pid(&pause, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Waits for a process to exit and reaps it if it is our child; true if it is gone.
    fn wait_pid(&self, p: &Container, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let pid = Pid::from_raw(p.pid);
        if let Some(rpid) = rustix::process::Pid::from_raw(p.pid) {
            if let Ok(fd) = rustix::process::pidfd_open(rpid, rustix::process::PidfdFlags::empty())
            {
                if start_time(p.pid) == Some(p.start_time) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ts = rustix::event::Timespec {
                        tv_sec: left.as_secs() as i64,
                        tv_nsec: i64::from(left.subsec_nanos()),
                    };
                    let mut fds = [rustix::event::PollFd::new(
                        &fd,
                        rustix::event::PollFlags::IN,
                    )];
                    let _ = rustix::event::poll(&mut fds, Some(&ts));
                }
            }
        }
        if start_time(p.pid) == Some(p.start_time) {
            let _guard = self.reap.lock().unwrap_or_else(|e| e.into_inner());
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return Ok(false),
                Ok(_) | Err(Errno::ECHILD) => {}
                Err(e) => return Err(sys_err(format!("waitpid {}", p.pid))(e)),
            }
        }
        Ok(!process_alive(p.pid, p.start_time))
    }

    /// Removes a sandbox and everything in it: its containers (killed), the pause process, the
    /// pod's cgroups and its directory, logs included. Also cleans up after a partial create.
    pub fn remove_sandbox(&self, sandbox: &Sandbox) -> Result<()> {
        self.remove_pod(&sandbox.uid, Some(sandbox))
    }

    /// The sandbox of the pod `pod_uid` as recorded on disk (`None` when it has none), e.g. for
    /// entering its network namespace (port-forward).
    pub fn sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>> {
        if !valid_uid(pod_uid) {
            return Err(RuntimeError::Invalid {
                what: "pod uid",
                value: pod_uid.to_owned(),
            });
        }
        read_json::<Sandbox>(&self.pod_dir(pod_uid).join("sandbox.json"))
    }

    /// Like [`Runtime::remove_sandbox`] for a pod known only by uid (state found on disk).
    pub fn remove_pod_by_uid(&self, pod_uid: &str) -> Result<()> {
        if !valid_uid(pod_uid) {
            return Err(RuntimeError::Invalid {
                what: "pod uid",
                value: pod_uid.to_owned(),
            });
        }
        let sandbox = read_json::<Sandbox>(&self.pod_dir(pod_uid).join("sandbox.json"))
            .unwrap_or_else(|e| {
                tracing::warn!("{e}; removing what is left without it");
                None
            });
        self.remove_pod(pod_uid, sandbox.as_ref())
    }

    fn remove_pod(&self, uid: &str, sandbox: Option<&Sandbox>) -> Result<()> {
        let dir = self.pod_dir(uid);
        let mut errors: Vec<RuntimeError> = Vec::new();
        let note = |errors: &mut Vec<RuntimeError>, r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(pod = uid, "removing sandbox: {e}");
                errors.push(e);
            }
        };
        // Containers with a record, then libcontainer states without one (a create that
        // crashed half-way).
        if let Ok(entries) = std::fs::read_dir(dir.join("containers")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let record = read_json::<Container>(&entry.path().join("container.json"));
                note(
                    &mut errors,
                    match record {
                        Ok(c) => self.delete_by_name(uid, &name, c.as_ref()),
                        Err(e) => Err(e),
                    },
                );
            }
        }
        let prefix = format!("{uid}-");
        if let Ok(entries) = std::fs::read_dir(self.libcontainer_root()) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if id.starts_with(&prefix) {
                    note(
                        &mut errors,
                        self.shim("delete", &id, &["--force".as_ref()]).map(drop),
                    );
                }
            }
        }
        if let Some(s) = sandbox {
            note(&mut errors, self.stop_pause(s));
        }
        note(
            &mut errors,
            cgroups::remove_pod(uid).map_err(io_err(format!("removing the cgroups of pod {uid}"))),
        );
        // subPath bind mounts first: removing the directory through them would delete the
        // volumes' (or a hostPath's) files.
        note(
            &mut errors,
            subpath::unmount_all(&dir).map_err(|e| RuntimeError::Invalid {
                what: "subPath mounts",
                value: e.to_string(),
            }),
        );
        // Then the memory-backed volumes (secrets, tokens, emptyDir medium Memory).
        note(
            &mut errors,
            subpath::unmount_below(&dir.join("volumes")).map_err(|e| RuntimeError::Invalid {
                what: "volume mounts",
                value: e.to_string(),
            }),
        );
        if errors.is_empty() {
            // Nothing is left mounted below it (containers unmounted their rootfs).
            note(&mut errors, remove_dir_if_exists(&dir));
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    /// Reads back every sandbox and container recorded under the root directory, with their
    /// current states: what a restarted agent adopts. Unreadable records are skipped with a
    /// warning (one corrupt file must not hide the other pods); [`Runtime::leftover_pods`]
    /// lists pod directories without a usable sandbox record.
    pub fn list(&self) -> Result<Vec<PodState>> {
        let mut pods = Vec::new();
        let pods_dir = self.root.join("pods");
        let entries = std::fs::read_dir(&pods_dir)
            .map_err(io_err(format!("reading {}", pods_dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("reading {}", pods_dir.display())))?;
            let sandbox = match read_json::<Sandbox>(&entry.path().join("sandbox.json")) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("skipping a sandbox: {e}");
                    continue;
                }
            };
            let mut containers = Vec::new();
            if let Ok(cs) = std::fs::read_dir(entry.path().join("containers")) {
                for c in cs.flatten() {
                    let record = read_json::<Container>(&c.path().join("container.json"));
                    let state = match record {
                        Ok(Some(container)) => self.status(&container).map(|s| (container, s)),
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    };
                    match state {
                        Ok(cs) => containers.push(cs),
                        Err(e) => tracing::warn!(pod = sandbox.uid, "skipping a container: {e}"),
                    }
                }
            }
            containers.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            pods.push(PodState {
                running: sandbox.is_running(),
                sandbox,
                containers,
            });
        }
        pods.sort_by(|a, b| a.sandbox.uid.cmp(&b.sandbox.uid));
        Ok(pods)
    }

    /// Uids of pod directories without a readable sandbox record (a create interrupted by a
    /// crash, a corrupt file): for [`Runtime::remove_pod_by_uid`].
    pub fn leftover_pods(&self) -> Result<Vec<String>> {
        let pods_dir = self.root.join("pods");
        let entries = std::fs::read_dir(&pods_dir)
            .map_err(io_err(format!("reading {}", pods_dir.display())))?;
        let mut uids: Vec<String> = entries
            .flatten()
            .filter(|e| {
                !matches!(
                    read_json::<Sandbox>(&e.path().join("sandbox.json")),
                    Ok(Some(_))
                )
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        uids.sort();
        Ok(uids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sigterm_handler_is_read_from_the_caught_mask() {
        // A server with handlers for SIGTERM (bit 14) and others.
        let nginx = "Name:\tnginx\nSigIgn:\t0000000000001000\nSigCgt:\t0000000018016a07\n";
        assert_eq!(sig_caught(nginx, Signal::SIGTERM as i32), Some(true));
        // `sleep` as PID 1: nothing caught, so the kernel drops SIGTERM.
        let sleep = "Name:\tsleep\nSigCgt:\t0000000000000000\n";
        assert_eq!(sig_caught(sleep, Signal::SIGTERM as i32), Some(false));
        assert_eq!(sig_caught("Name:\tgone\n", Signal::SIGTERM as i32), None);
        // This test's own process: the test harness catches nothing it is not told to.
        assert!(catches_signal(std::process::id() as i32, Signal::SIGTERM).is_some());
    }
}
