//! From a Kubernetes container (plus its image's config and unpacked layers) to an OCI runtime
//! spec for libcontainer: argv after Kubernetes' command/args rules, env with `$(VAR)`
//! expansion, cpu and memory limits, the default capability set, a default seccomp profile and
//! a device cgroup that denies everything not listed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use libcontainer::oci_spec::runtime::{
    Arch, Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

/// Why a container spec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A resource quantity (cpu, memory) is not a Kubernetes quantity this runtime understands.
    #[error("invalid quantity {value:?} for {what}: {source}")]
    Quantity {
        /// Which field.
        what: String,
        /// The quantity as given.
        value: String,
        /// What is wrong with it.
        source: skiff_k8s::quantity::QuantityError,
    },
    /// The container asks for something this runtime does not do.
    #[error("container {container}: {what} is not supported")]
    Unsupported {
        /// The container's name.
        container: String,
        /// The unsupported feature.
        what: String,
    },
    /// The container has nothing to run.
    #[error("container {0}: no command (neither the container nor its image sets one)")]
    NoCommand(String),
    /// A name that must be a DNS label (container name) is not one.
    #[error("invalid container name {0:?}: must be a DNS label (a-z, 0-9, '-', at most 63)")]
    InvalidName(String),
    /// An environment variable has no value (valueFrom must be resolved by the caller).
    #[error("container {container}: env {name} uses valueFrom, which the caller must resolve to a value first")]
    UnresolvedEnv {
        /// The container's name.
        container: String,
        /// The variable.
        name: String,
    },
    /// runAsNonRoot cannot be honoured: the kubelet's messages (`verifyRunAsNonRoot`).
    #[error("{0}")]
    RunAsNonRoot(String),
    /// The seccomp profile asked for cannot be used.
    #[error("seccomp profile: {0}")]
    Seccomp(String),
    /// A capability name is unknown.
    #[error("unknown capability {0:?}")]
    Capability(String),
    /// The OCI spec builders refused a value.
    #[error("building the OCI spec: {0}")]
    Oci(#[from] libcontainer::oci_spec::OciSpecError),
}

/// The parts of an image's config that decide what a container runs (OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// ENV, as `NAME=value`.
    pub env: Vec<String>,
    /// WORKDIR.
    pub working_dir: Option<String>,
    /// USER, numeric `uid[:gid]` only.
    pub user: Option<String>,
}

/// A bind mount into the container (volumes, /etc/hosts, ...), prepared by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Path in the container.
    pub destination: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// cgroup limits of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// limits.cpu in millicores (CFS quota over a 100 ms period).
    pub cpu_limit_millis: Option<u64>,
    /// requests.cpu in millicores (cpu shares, 1024 per core).
    pub cpu_request_millis: Option<u64>,
    /// limits.memory in bytes.
    pub memory_limit_bytes: Option<i64>,
}

/// Everything the runtime needs to create one container; see [`ContainerSpec::from_kubernetes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container's name in its pod (a DNS label).
    pub name: String,
    /// Unpacked image layer directories, bottom layer first (OCI manifest order).
    pub layers: Vec<PathBuf>,
    /// The process's argv (resolved, non-empty).
    pub args: Vec<String>,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Working directory (absolute); `/` when unset.
    pub working_dir: String,
    /// uid and gid of the process.
    pub uid: u32,
    /// gid of the process.
    pub gid: u32,
    /// cgroup limits.
    pub resources: Resources,
    /// Capabilities added to the default set.
    pub cap_add: Vec<String>,
    /// Capabilities dropped from the default set (`ALL` drops all).
    pub cap_drop: Vec<String>,
    /// Root filesystem mounted read-only.
    pub read_only_rootfs: bool,
    /// no_new_privs (securityContext.allowPrivilegeEscalation: false).
    pub no_new_privileges: bool,
    /// Extra bind mounts.
    pub mounts: Vec<BindMount>,
    /// Supplementary groups of the process (the pod's supplementalGroups and fsGroup).
    pub supplemental_groups: Vec<u32>,
    /// The seccomp profile (securityContext.seccompProfile; RuntimeDefault when unset).
    pub seccomp: Seccomp,
    /// securityContext.privileged: all capabilities and devices, no seccomp, writable /sys.
    pub privileged: bool,
    /// The pod's hostPID: the node's PID namespace instead of a new one.
    pub host_pid: bool,
    /// Join this PID namespace instead of making one: an ephemeral container's
    /// `targetContainerName` (`/proc/<target's pid>/ns/pid`), so that it sees its processes.
    pub pid_namespace: Option<PathBuf>,
    /// The pod's `securityContext.sysctls`, set in the pod's namespaces as the container
    /// starts (the agent's admission has checked them against the allowlist).
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// Where stdout and stderr go (appended); default `<pod dir>/logs/<name>.log`.
    pub log_path: Option<PathBuf>,
    /// The container's stdio as `kubectl attach` meets it (`stdin`, `stdinOnce`, `tty`).
    pub stdio: StdioSpec,
}

/// How a container's stdio is set up: by default stdin is `/dev/null` and stdout and stderr
/// the log file. With `stdin` the agent holds the write end of a pipe that is the
/// container's stdin; with `tty` the container's stdio is a pseudo-terminal whose master the
/// agent holds, copying its output to the log ([`super::stdio`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioSpec {
    /// `stdin: true`: input from attached clients.
    pub stdin: bool,
    /// `stdinOnce: true`: stdin is closed when the first attached client detaches.
    pub stdin_once: bool,
    /// `tty: true`: a terminal.
    pub tty: bool,
}

/// Which seccomp profile a container runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// [`default_seccomp`].
    #[default]
    RuntimeDefault,
    /// No filter.
    Unconfined,
    /// An OCI/Docker JSON profile at this path relative to `<agent root>/seccomp`
    /// (`localhostProfile`), checked to stay inside that directory when the container is made.
    Localhost(String),
}

/// Largest Localhost seccomp profile read (Docker's default profile is about 20 KiB).
const MAX_SECCOMP_PROFILE: u64 = 1 << 20;

impl Seccomp {
    /// The profile for a `seccompProfile` of a securityContext (RuntimeDefault when unset).
    fn from_k8s(
        profile: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
    ) -> Result<Self, SpecError> {
        let Some(p) = profile else {
            return Ok(Self::RuntimeDefault);
        };
        match p.type_.as_str() {
            "RuntimeDefault" => Ok(Self::RuntimeDefault),
            "Unconfined" => Ok(Self::Unconfined),
            "Localhost" => match p.localhost_profile.as_deref() {
                Some(name) if !name.is_empty() => {
                    if name.len() > 4096
                        || !Path::new(name)
                            .components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err(SpecError::Seccomp(format!(
                            "localhostProfile {name:?} must be a relative path below the profile directory, without '..'"
                        )));
                    }
                    Ok(Self::Localhost(name.to_owned()))
                }
                _ => Err(SpecError::Seccomp(
                    "localhostProfile must be set if seccompProfile type is Localhost".into(),
                )),
            },
            other => Err(SpecError::Seccomp(format!(
                "unknown seccompProfile type {other:?} (RuntimeDefault, Unconfined or Localhost)"
            ))),
        }
    }

    /// The filter, `None` for Unconfined; a Localhost profile is read from below `dir`.
    fn to_oci(&self, dir: &Path) -> Result<Option<LinuxSeccomp>, SpecError> {
        match self {
            Self::RuntimeDefault => default_seccomp().map(Some),
            Self::Unconfined => Ok(None),
            Self::Localhost(name) => load_localhost_profile(dir, name).map(Some),
        }
    }
}

/// Reads a Localhost profile: `name` below `dir`, which it must not leave through symlinks
/// either (both are resolved and compared), at most [`MAX_SECCOMP_PROFILE`] bytes of OCI
/// seccomp JSON.
fn load_localhost_profile(dir: &Path, name: &str) -> Result<LinuxSeccomp, SpecError> {
    use std::io::Read as _;
    let err = |what: String| SpecError::Seccomp(format!("localhost profile {name:?}: {what}"));
    let base = std::fs::canonicalize(dir)
        .map_err(|e| err(format!("profile directory {}: {e}", dir.display())))?;
    let path = std::fs::canonicalize(base.join(name)).map_err(|e| err(e.to_string()))?;
    if !path.starts_with(&base) {
        return Err(err(format!("resolves outside {}", base.display())));
    }
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_SECCOMP_PROFILE + 1).read_to_string(&mut text))
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_SECCOMP_PROFILE {
        return Err(err("larger than 1 MiB".into()));
    }
    serde_json::from_str(&text).map_err(|e| err(format!("not an OCI seccomp profile: {e}")))
}

/// Where the spec is placed: decided by the runtime when it creates the container.
#[derive(Debug, Clone)]
pub(crate) struct SpecContext {
    pub rootfs: PathBuf,
    pub cgroups_path: String,
    pub net_ns: PathBuf,
    pub ipc_ns: PathBuf,
    pub uts_ns: PathBuf,
    /// Where Localhost seccomp profiles live (`<agent root>/seccomp`).
    pub seccomp_dir: PathBuf,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period (runc's and the kubelet's).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Every capability, in the order of their numbers (CAP_CHOWN is 0).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// This process's capability bounding set (`CapBnd` of /proc/self/status); all bits when it
/// cannot be read.
fn own_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// The capabilities every container gets (containerd's and Docker's default set, which is what
/// Kubernetes pods run with when their securityContext adds nothing).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Syscalls the default seccomp profile answers with EPERM. Docker's profile is an allow-list;
/// this deny-list covers what it keeps from containers without CAP_SYS_ADMIN and friends
/// (kernel modules, mounts and namespaces, keyrings, clocks, tracing other processes' memory,
/// BPF, perf, reboot, swap, io_uring) while allowing everything else. Names unknown to the
/// host's libseccomp are skipped by libcontainer.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The namespace flags of `clone` (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET, and NEWTIME, which shares its bit with CSIGNAL's range only for clone3): creating
/// namespaces is what `unshare` does, so `clone` with any of them is denied as well.
pub const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// ENOSYS: what `clone3` answers, so that libc falls back to `clone`, whose flags the filter
/// can see (clone3 passes them in memory, out of seccomp's reach), as Docker's profile does.
const ENOSYS: u32 = 38;

/// `clone` with one namespace flag set, answered with EPERM. One rule per flag: the rules of a
/// syscall are alternatives, and `(flags & FLAG) == FLAG` is the same test whichever of the
/// two values libseccomp takes as the mask.
fn clone_rule(flag: u64) -> Result<LinuxSyscall, SpecError> {
    Ok(LinuxSyscallBuilder::default()
        .names(vec!["clone".to_owned()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(1u32)
        .args(vec![LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(flag)
            .value_two(flag)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()?])
        .build()?)
}

/// The default seccomp profile: allow, except [`DENIED_SYSCALLS`] (EPERM), `clone` with a
/// namespace flag (EPERM) and `clone3` (ENOSYS), on the native architecture and its 32-bit
/// ABIs (a deny-list that left i386 syscalls open would be void).
pub fn default_seccomp() -> Result<LinuxSeccomp, SpecError> {
    let mut rules = vec![LinuxSyscallBuilder::default()
        .names(
            DENIED_SYSCALLS
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(1u32) // EPERM
        .build()?];
    for flag in CLONE_NAMESPACE_FLAGS {
        rules.push(clone_rule(*flag)?);
    }
    rules.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOSYS)
            .build()?,
    );
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(rules)
        .build()?)
}

/// Expands Kubernetes `$(VAR)` references: defined variables are replaced, undefined ones are
/// left as written, `$$` is an escaped `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn quantity(
    map: Option<&std::collections::BTreeMap<String, Quantity>>,
    key: &str,
    what: &str,
    scale: u128,
) -> Result<Option<u64>, SpecError> {
    map.and_then(|m| m.get(key))
        .map(|q| {
            skiff_k8s::quantity::parse(&q.0, scale).map_err(|source| SpecError::Quantity {
                what: what.to_owned(),
                value: q.0.clone(),
                source,
            })
        })
        .transpose()
}

/// The container's securityContext with the pod's fields filled in where the container leaves
/// them unset (the kubelet's `DetermineEffectiveSecurityContext`).
pub fn effective_security_context(pod: Option<&Pod>, container: &Container) -> SecurityContext {
    let mut sc = container.security_context.clone().unwrap_or_default();
    let Some(p) = pod
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.security_context.as_ref())
    else {
        return sc;
    };
    sc.run_as_user = sc.run_as_user.or(p.run_as_user);
    sc.run_as_group = sc.run_as_group.or(p.run_as_group);
    sc.run_as_non_root = sc.run_as_non_root.or(p.run_as_non_root);
    if sc.seccomp_profile.is_none() {
        sc.seccomp_profile = p.seccomp_profile.clone();
    }
    if sc.se_linux_options.is_none() {
        sc.se_linux_options = p.se_linux_options.clone();
    }
    if sc.app_armor_profile.is_none() {
        sc.app_armor_profile = p.app_armor_profile.clone();
    }
    sc
}

/// The kubelet's `verifyRunAsNonRoot`, with its messages: with runAsNonRoot, the user must be
/// known not to be root (runAsUser, else the image's numeric USER; no USER means root).
fn verify_run_as_non_root(
    pod: Option<&Pod>,
    container: &str,
    run_as_user: Option<i64>,
    image_user: Option<&str>,
) -> Result<(), SpecError> {
    let pod_name = pod.map_or_else(String::new, |p| {
        let m = &p.metadata;
        format!(
            "{}_{}({})",
            m.name.as_deref().unwrap_or(""),
            m.namespace.as_deref().unwrap_or(""),
            m.uid.as_deref().unwrap_or("")
        )
    });
    let refuse = |what: String| {
        Err(SpecError::RunAsNonRoot(format!(
            "{what} (pod: {}, container: {container})",
            skiff_k8s::go::quote(&pod_name)
        )))
    };
    match run_as_user {
        Some(0) => refuse("container's runAsUser breaks non-root policy".into()),
        Some(_) => Ok(()),
        None => {
            let user = image_user.unwrap_or("0");
            let uid = user.split_once(':').map_or(user, |(u, _)| u);
            match uid.parse::<u32>() {
                Ok(0) => refuse("container has runAsNonRoot and image will run as root".into()),
                Ok(_) => Ok(()),
                Err(_) => refuse(format!(
                    "container has runAsNonRoot and image has non-numeric user ({uid}), cannot verify user is non-root"
                )),
            }
        }
    }
}

fn parse_user(container: &str, user: &str) -> Result<(u32, u32), SpecError> {
    let unsupported = || SpecError::Unsupported {
        container: container.to_owned(),
        what: format!("image user {user:?} (only numeric uid[:gid])"),
    };
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid: u32 = u.parse().map_err(|_| unsupported())?;
    let gid: u32 = if g.is_empty() {
        uid
    } else {
        g.parse().map_err(|_| unsupported())?
    };
    Ok((uid, gid))
}

impl ContainerSpec {
    /// [`ContainerSpec::from_pod`] for a container without a pod (no pod-level security
    /// context).
    pub fn from_kubernetes(
        container: &Container,
        image: &ImageConfig,
        layers: Vec<PathBuf>,
    ) -> Result<Self, SpecError> {
        Self::from_pod(None, container, image, layers)
    }

    /// Resolves a Kubernetes container against its image: `command` replaces the image's
    /// ENTRYPOINT (and drops its CMD), `args` replaces CMD; `$(VAR)` references in command, args
    /// and env values are expanded; env follows the image's ENV; resources and the effective
    /// securityContext (the pod's under the container's: runAsUser/runAsGroup, runAsNonRoot,
    /// supplementalGroups and fsGroup, capabilities, privileged, readOnlyRootFilesystem,
    /// allowPrivilegeEscalation, seccompProfile) are applied. `valueFrom` env entries must have
    /// been resolved by the caller.
    pub fn from_pod(
        pod: Option<&Pod>,
        container: &Container,
        image: &ImageConfig,
        layers: Vec<PathBuf>,
    ) -> Result<Self, SpecError> {
        let name = container.name.clone();
        if !skiff_k8s::names::is_dns_label(&name) {
            return Err(SpecError::InvalidName(name));
        }
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| match env
            .iter_mut()
            .find(|(n, _)| *n == k)
        {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        };
        for kv in &image.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            set(&mut env, k.to_owned(), v.to_owned());
        }
        for var in container.env.iter().flatten() {
            if var.value_from.is_some() && var.value.is_none() {
                return Err(SpecError::UnresolvedEnv {
                    container: name,
                    name: var.name.clone(),
                });
            }
            let value = expand(var.value.as_deref().unwrap_or(""), |n| {
                env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
            });
            set(&mut env, var.name.clone(), value);
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
        }
        let lookup = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (command, args) = match (&container.command, &container.args) {
            (Some(c), a) => (c.clone(), a.clone().unwrap_or_default()),
            (None, Some(a)) => (image.entrypoint.clone(), a.clone()),
            (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
        };
        let argv: Vec<String> = command
            .iter()
            .chain(args.iter())
            .map(|s| expand(s, lookup))
            .collect();
        if argv.is_empty() || argv[0].is_empty() {
            return Err(SpecError::NoCommand(name));
        }

        let working_dir = container
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".to_owned());
        if !working_dir.starts_with('/') {
            return Err(SpecError::Unsupported {
                container: name,
                what: format!("relative workingDir {working_dir:?}"),
            });
        }

        let sc = effective_security_context(pod, container);
        let image_user = image.user.as_deref().filter(|u| !u.is_empty());
        if sc.run_as_non_root == Some(true) {
            verify_run_as_non_root(pod, &name, sc.run_as_user, image_user)?;
        }
        // The image's USER matters only when runAsUser does not replace it.
        let image_ids = match image_user {
            Some(u) if sc.run_as_user.is_none() => Some(parse_user(&name, u)?),
            Some(u) => parse_user(&name, u).ok(),
            None => None,
        };
        let (mut uid, mut gid) = image_ids.unwrap_or((0, 0));
        let id = |what: &str, v: i64| {
            u32::try_from(v).map_err(|_| SpecError::Unsupported {
                container: name.clone(),
                what: format!("{what} {v}"),
            })
        };
        if let Some(u) = sc.run_as_user {
            uid = id("runAsUser", u)?;
            if sc.run_as_group.is_none() && image_ids.is_none() {
                gid = 0;
            }
        }
        if let Some(g) = sc.run_as_group {
            gid = id("runAsGroup", g)?;
        }
        // The kubelet's supplementary groups: the pod's supplementalGroups, then fsGroup.
        let pod_sc = pod
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.security_context.as_ref());
        let mut supplemental_groups = Vec::new();
        for g in pod_sc.into_iter().flat_map(|p| {
            p.supplemental_groups
                .iter()
                .flatten()
                .chain(p.fs_group.iter())
        }) {
            let g = id("supplemental group", *g)?;
            if !supplemental_groups.contains(&g) {
                supplemental_groups.push(g);
            }
        }
        let privileged = sc.privileged == Some(true);
        let (cap_add, cap_drop) = match &sc.capabilities {
            Some(caps) => (
                caps.add.clone().unwrap_or_default(),
                caps.drop.clone().unwrap_or_default(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let read_only_rootfs = sc.read_only_root_filesystem == Some(true);
        let no_new_privileges = sc.allow_privilege_escalation == Some(false);
        let seccomp = if privileged {
            Seccomp::Unconfined
        } else {
            Seccomp::from_k8s(sc.seccomp_profile.as_ref())?
        };

        let resources = match &container.resources {
            Some(r) => {
                let limits = r.limits.as_ref();
                // A limit without a request means request = limit (API defaulting).
                let requests = r.requests.as_ref();
                let cpu_limit_millis = quantity(limits, "cpu", "limits.cpu", 1000)?;
                let cpu_request_millis =
                    quantity(requests, "cpu", "requests.cpu", 1000)?.or(cpu_limit_millis);
                let memory_limit_bytes = quantity(limits, "memory", "limits.memory", 1)?
                    .map(|b| {
                        i64::try_from(b).map_err(|_| SpecError::Quantity {
                            what: "limits.memory".to_owned(),
                            value: b.to_string(),
                            source: skiff_k8s::quantity::QuantityError::TooLarge,
                        })
                    })
                    .transpose()?;
                Resources {
                    cpu_limit_millis,
                    cpu_request_millis,
                    memory_limit_bytes,
                }
            }
            None => Resources::default(),
        };

        Ok(Self {
            name,
            layers,
            args: argv,
            env,
            working_dir,
            uid,
            gid,
            resources,
            cap_add,
            cap_drop,
            read_only_rootfs,
            no_new_privileges,
            mounts: Vec::new(),
            log_path: None,
            stdio: StdioSpec {
                stdin: container.stdin.unwrap_or(false),
                stdin_once: container.stdin_once.unwrap_or(false),
                tty: container.tty.unwrap_or(false),
            },
            supplemental_groups,
            seccomp,
            privileged,
            pid_namespace: None,
            host_pid: pod
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.host_pid)
                .unwrap_or(false),
            sysctls: pod_sc
                .into_iter()
                .flat_map(|sc| sc.sysctls.iter().flatten())
                .map(|s| (sysctl_name(&s.name), s.value.clone()))
                .collect(),
        })
    }

    /// The capability set the container's process gets.
    pub fn capabilities(&self) -> Result<HashSet<Capability>, SpecError> {
        let parse = |n: &str| {
            let n = n.trim().to_ascii_uppercase();
            let n = n.strip_prefix("CAP_").unwrap_or(&n).to_owned();
            Capability::from_str(&n).map_err(|_| SpecError::Capability(n))
        };
        let mut caps: HashSet<Capability> = HashSet::new();
        if self.privileged {
            // Every capability the agent itself may hold, as containerd gives a privileged
            // container (`cap.Current()`): one outside its bounding set could not be granted.
            let bounding = own_bounding_set();
            for (bit, c) in ALL_CAPABILITIES.iter().enumerate() {
                if bounding & (1 << bit) != 0 {
                    caps.insert(parse(c)?);
                }
            }
            return Ok(caps);
        }
        if !self.cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
            for c in DEFAULT_CAPABILITIES {
                caps.insert(parse(c)?);
            }
            for c in &self.cap_drop {
                caps.remove(&parse(c)?);
            }
        }
        for c in &self.cap_add {
            if c.eq_ignore_ascii_case("ALL") {
                return Err(SpecError::Unsupported {
                    container: self.name.clone(),
                    what: "capabilities.add ALL".to_owned(),
                });
            }
            caps.insert(parse(c)?);
        }
        Ok(caps)
    }

    /// The OCI runtime spec for this container, joining the sandbox's namespaces.
    pub(crate) fn to_oci(&self, ctx: &SpecContext) -> Result<Spec, SpecError> {
        let caps = self.capabilities()?;
        let process = ProcessBuilder::default()
            .terminal(self.stdio.tty)
            .args(self.args.clone())
            .env(
                self.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            )
            .cwd(&self.working_dir)
            .user(
                UserBuilder::default()
                    .uid(self.uid)
                    .gid(self.gid)
                    .additional_gids(self.supplemental_groups.clone())
                    .build()?,
            )
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(caps.clone())
                    .effective(caps.clone())
                    .permitted(caps)
                    .inheritable(HashSet::new())
                    .ambient(HashSet::new())
                    .build()?,
            )
            .build()?;
        // The builder starts from Process::default(), which sets noNewPrivileges and an
        // RLIMIT_NOFILE of 1024; Kubernetes sets neither by default. noNewPrivileges must be
        // *absent* (not false) when privilege escalation is allowed: libcontainer 0.7 loads the
        // seccomp filter while still privileged only when the field is None; with Some(false)
        // it loads it after dropping CAP_SYS_ADMIN and the kernel refuses.
        let mut process = process;
        process
            .set_no_new_privileges(self.no_new_privileges.then_some(true))
            .set_rlimits(None);

        let mut mounts = libcontainer::oci_spec::runtime::get_default_mounts();
        if self.privileged {
            // Kubernetes' privileged containers get a writable /sys.
            for m in &mut mounts {
                if m.destination() == Path::new("/sys") {
                    let options = m.options().clone().unwrap_or_default();
                    m.set_options(Some(options.into_iter().filter(|o| o != "ro").collect()));
                }
            }
        }
        for m in &self.mounts {
            let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
            if m.read_only {
                options.push("ro".to_owned());
            }
            mounts.push(
                MountBuilder::default()
                    .destination(&m.destination)
                    .typ("bind")
                    .source(&m.source)
                    .options(options)
                    .build()?,
            );
        }

        let pid = match &self.pid_namespace {
            Some(path) => LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .path(path)
                .build()?,
            None => LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()?,
        };
        let mut namespaces = vec![
            pid,
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Mount)
                .build()?,
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Cgroup)
                .build()?,
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(&ctx.net_ns)
                .build()?,
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Ipc)
                .path(&ctx.ipc_ns)
                .build()?,
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Uts)
                .path(&ctx.uts_ns)
                .build()?,
        ];

        let devices = if self.privileged {
            vec![LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .access("rwm".to_owned())
                .build()?]
        } else {
            device_rules()?
        };
        if self.host_pid {
            // No new one: the shim's, which is the node's.
            namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
        }
        let mut resources = LinuxResourcesBuilder::default().devices(devices);
        let r = &self.resources;
        if r.cpu_limit_millis.is_some() || r.cpu_request_millis.is_some() {
            let mut cpu = LinuxCpuBuilder::default();
            if let Some(limit) = r.cpu_limit_millis {
                // The kubelet's conversion: quota = millicores * period / 1000, at least 1 ms.
                let quota = (limit * CPU_PERIOD_US / 1000).max(1000);
                cpu = cpu.quota(quota as i64).period(CPU_PERIOD_US);
            }
            if let Some(request) = r.cpu_request_millis {
                cpu = cpu.shares((request * 1024 / 1000).max(2));
            }
            resources = resources.cpu(cpu.build()?);
        }
        if let Some(limit) = r.memory_limit_bytes {
            resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
        }
        // Fork bombs stay inside the container.
        resources = resources.pids(LinuxPidsBuilder::default().limit(32768i64).build()?);

        let mut spec = Spec::default();
        spec.set_hostname(None);
        spec.set_process(Some(process));
        spec.set_root(Some(
            RootBuilder::default()
                .path(&ctx.rootfs)
                .readonly(self.read_only_rootfs)
                .build()?,
        ));
        spec.set_mounts(Some(mounts));
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux
            .set_namespaces(Some(namespaces))
            .set_cgroups_path(Some(PathBuf::from(&ctx.cgroups_path)))
            .set_resources(Some(resources.build()?))
            .set_seccomp(self.seccomp.to_oci(&ctx.seccomp_dir)?);
        if !self.sysctls.is_empty() {
            linux.set_sysctl(Some(self.sysctls.clone().into_iter().collect()));
        }
        if self.privileged {
            // No masked or read-only /proc paths, the host's devices: what a privileged
            // container of Kubernetes (containerd) sees.
            linux
                .set_masked_paths(None)
                .set_readonly_paths(None)
                .set_devices(Some(host_devices()));
        }
        spec.set_linux(Some(linux));
        Ok(spec)
    }
}

/// A sysctl's dotted name. A name may also be written with slashes (`net/ipv4/ip_forward`),
/// in which case a dot is part of a component (`net/ipv4/conf/eth0.100/rp_filter`): the
/// separators are swapped, as the kubelet's `NormalizeName` does.
pub fn sysctl_name(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_owned(),
    }
}

/// The character and block devices directly in the host's /dev, for a privileged container
/// (as containerd's `WithDevices` of a privileged container); those of every container
/// (null, zero, tty...) are made by libcontainer anyway and left out.
fn host_devices() -> Vec<libcontainer::oci_spec::runtime::LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    const DEFAULT: &[&str] = &[
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx",
    ];
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut devices = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let ft = meta.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if DEFAULT.contains(&name.as_str()) {
            continue;
        }
        let rdev = meta.rdev();
        let built = libcontainer::oci_spec::runtime::LinuxDeviceBuilder::default()
            .path(entry.path())
            .typ(typ)
            .major(nix::sys::stat::major(rdev) as i64)
            .minor(nix::sys::stat::minor(rdev) as i64)
            .file_mode(meta.mode() & 0o777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build();
        if let Ok(d) = built {
            devices.push(d);
        }
    }
    devices.sort_by(|a, b| a.path().cmp(b.path()));
    devices
}

/// Device cgroup rules: deny everything first, then the devices every container may use (runc's
/// list: null, zero, full, random, urandom, tty, console, ptmx, pts, mknod of any device).
fn device_rules() -> Result<Vec<libcontainer::oci_spec::runtime::LinuxDeviceCgroup>, SpecError> {
    let rule = |allow: bool,
                typ: Option<LinuxDeviceType>,
                major: Option<i64>,
                minor: Option<i64>,
                access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .access(access.to_owned());
        if let Some(t) = typ {
            b = b.typ(t);
        }
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build()
    };
    let c = Some(LinuxDeviceType::C);
    Ok(vec![
        rule(false, None, None, None, "rwm")?,
        rule(true, c, None, None, "m")?,
        rule(true, Some(LinuxDeviceType::B), None, None, "m")?,
        rule(true, c, Some(1), Some(3), "rwm")?, // /dev/null
        rule(true, c, Some(1), Some(5), "rwm")?, // /dev/zero
        rule(true, c, Some(1), Some(7), "rwm")?, // /dev/full
        rule(true, c, Some(1), Some(8), "rwm")?, // /dev/random
        rule(true, c, Some(1), Some(9), "rwm")?, // /dev/urandom
        rule(true, c, Some(5), Some(0), "rwm")?, // /dev/tty
        rule(true, c, Some(5), Some(1), "rwm")?, // /dev/console
        rule(true, c, Some(5), Some(2), "rwm")?, // /dev/ptmx
        rule(true, c, Some(136), None, "rwm")?,  // /dev/pts/*
    ])
}

/// The overlayfs mount data for `layers` (bottom first) with the given upper and work dirs.
/// `volatile`: no syncs of the upper layer (unmounting otherwise flushes it to disk, 20-40 ms a
/// container here). A container's writable layer is thrown away with it and never outlives a
/// reboot, which is all `volatile` gives up.
pub(crate) fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={},volatile",
        lower.join(":"),
        upper.display(),
        work.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, EnvVar, EnvVarSource, ResourceRequirements, SecurityContext,
    };

    fn container(name: &str) -> Container {
        Container {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["--default".into()],
            env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    #[test]
    fn expansion() {
        let vars = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(expand("$(A)-$(B)", vars), "x-$(B)");
        assert_eq!(expand("$$(A) $ $(A", vars), "$(A) $ $(A");
        assert_eq!(expand("plain", vars), "plain");
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image();
        let s = ContainerSpec::from_kubernetes(&container("a"), &img, vec![]).unwrap();
        assert_eq!(s.args, ["/entry", "--default"]);
        assert_eq!(s.working_dir, "/srv");

        let mut c = container("a");
        c.args = Some(vec!["x".into()]);
        let s = ContainerSpec::from_kubernetes(&c, &img, vec![]).unwrap();
        assert_eq!(s.args, ["/entry", "x"]);

        c.command = Some(vec!["/bin/sh".into(), "-c".into()]);
        c.args = None;
        let s = ContainerSpec::from_kubernetes(&c, &img, vec![]).unwrap();
        assert_eq!(s.args, ["/bin/sh", "-c"], "command drops the image's CMD");

        c.args = Some(vec!["echo $(GREETING) $(WHO)".into()]);
        c.env = Some(vec![
            EnvVar {
                name: "WHO".into(),
                value: Some("$(GREETING)-world".into()),
                ..Default::default()
            },
            EnvVar {
                name: "GREETING".into(),
                value: Some("hello".into()),
                ..Default::default()
            },
        ]);
        c.working_dir = Some("/tmp".into());
        let s = ContainerSpec::from_kubernetes(&c, &img, vec![]).unwrap();
        assert_eq!(s.args[2], "echo hello hi-world");
        assert_eq!(
            s.env,
            [
                ("PATH".to_owned(), "/bin".to_owned()),
                ("GREETING".to_owned(), "hello".to_owned()),
                ("WHO".to_owned(), "hi-world".to_owned()),
            ]
        );
        assert_eq!(s.working_dir, "/tmp");

        let s = ContainerSpec::from_kubernetes(&container("a"), &ImageConfig::default(), vec![]);
        assert!(matches!(s, Err(SpecError::NoCommand(_))));
        let s = ContainerSpec::from_kubernetes(&container("Bad_Name"), &img, vec![]);
        assert!(matches!(s, Err(SpecError::InvalidName(_))));
        let mut c = container("a");
        c.env = Some(vec![EnvVar {
            name: "X".into(),
            value_from: Some(EnvVarSource::default()),
            ..Default::default()
        }]);
        assert!(matches!(
            ContainerSpec::from_kubernetes(&c, &img, vec![]),
            Err(SpecError::UnresolvedEnv { .. })
        ));
    }

    #[test]
    fn resources_capabilities_and_security_defaults() {
        let mut c = container("a");
        c.resources = Some(ResourceRequirements {
            limits: Some(
                [
                    ("cpu".to_owned(), Quantity("250m".into())),
                    ("memory".to_owned(), Quantity("64Mi".into())),
                ]
                .into(),
            ),
            ..Default::default()
        });
        c.security_context = Some(SecurityContext {
            run_as_user: Some(1000),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["CAP_MKNOD".into()]),
            }),
            ..Default::default()
        });
        let s =
            ContainerSpec::from_kubernetes(&c, &image(), vec!["/l0".into(), "/l1".into()]).unwrap();
        assert_eq!(
            s.resources,
            Resources {
                cpu_limit_millis: Some(250),
                cpu_request_millis: Some(250),
                memory_limit_bytes: Some(64 << 20),
            }
        );
        assert_eq!((s.uid, s.gid), (1000, 0));
        let caps = s.capabilities().unwrap();
        assert!(caps.contains(&Capability::NetAdmin));
        assert!(!caps.contains(&Capability::Mknod));
        assert!(!caps.contains(&Capability::SysAdmin));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());

        let ctx = SpecContext {
            rootfs: "/r".into(),
            cgroups_path: "/skiff/u/a".into(),
            net_ns: "/proc/1/ns/net".into(),
            ipc_ns: "/proc/1/ns/ipc".into(),
            uts_ns: "/proc/1/ns/uts".into(),
            seccomp_dir: "/nonexistent".into(),
        };
        let oci = s.to_oci(&ctx).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.quota(), cpu.period(), cpu.shares()),
            (Some(25_000), Some(100_000), Some(256))
        );
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        let devices = res.devices().as_ref().unwrap();
        assert!(
            !devices[0].allow() && devices[0].typ().is_none(),
            "deny-all comes first"
        );
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        let denied = &seccomp.syscalls().as_ref().unwrap()[0];
        assert!(denied.names().iter().any(|n| n == "mount"));
        assert_eq!(denied.errno_ret(), Some(1));
        let joined: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|n| n.path().is_some())
            .map(|n| n.typ())
            .collect();
        assert_eq!(
            joined,
            [
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts
            ]
        );
        assert_eq!(
            overlay_options(&s.layers, Path::new("/u"), Path::new("/w")),
            "lowerdir=/l1:/l0,upperdir=/u,workdir=/w,volatile",
            "top layer first"
        );
    }

    fn ctx() -> SpecContext {
        SpecContext {
            rootfs: "/r".into(),
            cgroups_path: "/skiff/u/a".into(),
            net_ns: "/proc/1/ns/net".into(),
            ipc_ns: "/proc/1/ns/ipc".into(),
            uts_ns: "/proc/1/ns/uts".into(),
            seccomp_dir: "/nonexistent".into(),
        }
    }

    fn pod(sc: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u1"},
            "spec": {"containers": [], "securityContext": sc},
        }))
        .unwrap()
    }

    fn with_sc(sc: serde_json::Value) -> Container {
        let mut c = container("app");
        c.security_context = Some(serde_json::from_value(sc).unwrap());
        c
    }

    #[test]
    fn the_pod_security_context_fills_what_the_container_leaves_unset() {
        let p = pod(serde_json::json!({
            "runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
            "supplementalGroups": [4000, 4001], "fsGroup": 2000,
            "seccompProfile": {"type": "Unconfined"},
        }));
        let s = ContainerSpec::from_pod(Some(&p), &container("app"), &image(), vec![]).unwrap();
        assert_eq!((s.uid, s.gid), (1000, 3000));
        assert_eq!(s.supplemental_groups, [4000, 4001, 2000]);
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        let oci = s.to_oci(&ctx()).unwrap();
        let user = oci.process().as_ref().unwrap().user();
        assert_eq!(
            user.additional_gids().as_deref(),
            Some(&[4000, 4001, 2000][..])
        );
        assert!(oci.linux().as_ref().unwrap().seccomp().is_none());

        let c = with_sc(serde_json::json!({
            "runAsUser": 1001, "seccompProfile": {"type": "RuntimeDefault"},
            "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
        }));
        let s = ContainerSpec::from_pod(Some(&p), &c, &image(), vec![]).unwrap();
        assert_eq!(
            (s.uid, s.gid),
            (1001, 3000),
            "the container's runAsUser wins"
        );
        assert_eq!(s.seccomp, Seccomp::RuntimeDefault);
        let oci = s.to_oci(&ctx()).unwrap();
        assert!(oci.root().as_ref().unwrap().readonly().unwrap_or(false));
        assert_eq!(
            oci.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );

        let sc = effective_security_context(Some(&p), &container("app"));
        assert_eq!(sc.run_as_non_root, Some(true));
        let sc = effective_security_context(None, &container("app"));
        assert_eq!(sc, SecurityContext::default());
    }

    #[test]
    fn run_as_non_root_is_refused_with_the_kubelets_messages() {
        let p = pod(serde_json::json!({"runAsNonRoot": true}));
        let refused = |img: &ImageConfig, c: &Container| match ContainerSpec::from_pod(
            Some(&p),
            c,
            img,
            vec![],
        ) {
            Err(e @ SpecError::RunAsNonRoot(_)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(&image(), &container("app")),
            "container has runAsNonRoot and image will run as root (pod: \"web_prod(u1)\", container: app)"
        );
        let named = ImageConfig {
            user: Some("nobody".into()),
            ..image()
        };
        assert_eq!(
            refused(&named, &container("app")),
            "container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root (pod: \"web_prod(u1)\", container: app)"
        );
        let root = ImageConfig {
            user: Some("0:0".into()),
            ..image()
        };
        assert!(refused(&root, &container("app")).contains("image will run as root"));
        assert!(
            refused(&image(), &with_sc(serde_json::json!({"runAsUser": 0})))
                .starts_with("container's runAsUser breaks non-root policy")
        );
        // A numeric non-root user, from the image or runAsUser, passes; so does a
        // non-numeric image user that runAsUser replaces.
        let numeric = ImageConfig {
            user: Some("1000".into()),
            ..image()
        };
        assert!(ContainerSpec::from_pod(Some(&p), &container("app"), &numeric, vec![]).is_ok());
        let s = ContainerSpec::from_pod(
            Some(&p),
            &with_sc(serde_json::json!({"runAsUser": 5})),
            &named,
            vec![],
        )
        .unwrap();
        assert_eq!((s.uid, s.gid), (5, 0));
    }

    #[test]
    fn the_default_seccomp_profile_blocks_namespace_creation_by_clone_and_clone3() {
        let seccomp = default_seccomp().unwrap();
        let rules = seccomp.syscalls().as_ref().unwrap();
        let clone: Vec<u64> = rules
            .iter()
            .filter(|r| *r.names() == ["clone"])
            .map(|r| {
                assert_eq!(r.errno_ret(), Some(1));
                let args = r.args().as_ref().unwrap();
                assert_eq!(args.len(), 1);
                assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
                assert_eq!(
                    (args[0].index(), Some(args[0].value())),
                    (0, args[0].value_two())
                );
                args[0].value()
            })
            .collect();
        // CLONE_NEWUSER and the other namespace flags: Docker's mask 0x7E020000.
        assert_eq!(clone.iter().fold(0, |a, f| a | f), 0x7E02_0000);
        assert!(clone.contains(&0x1000_0000));
        let clone3 = rules.iter().find(|r| *r.names() == ["clone3"]).unwrap();
        assert_eq!(clone3.errno_ret(), Some(38));
        assert!(rules[0].names().iter().any(|n| n == "unshare"));
    }

    #[test]
    fn seccomp_profile_types_and_localhost_paths() {
        let dir = tempfile::tempdir().unwrap();
        let profiles = dir.path().join("seccomp");
        std::fs::create_dir_all(profiles.join("team")).unwrap();
        std::fs::write(
            profiles.join("team/audit.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("outside.json"),
            r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink("../outside.json", profiles.join("escape.json")).unwrap();
        let spec = |p: serde_json::Value| {
            ContainerSpec::from_kubernetes(
                &with_sc(serde_json::json!({"seccompProfile": p})),
                &image(),
                vec![],
            )
        };
        let local =
            spec(serde_json::json!({"type": "Localhost", "localhostProfile": "team/audit.json"}))
                .unwrap();
        let loaded = local.seccomp.to_oci(&profiles).unwrap().unwrap();
        assert_eq!(*loaded.syscalls().as_ref().unwrap()[0].names(), ["chmod"]);
        let escape =
            spec(serde_json::json!({"type": "Localhost", "localhostProfile": "escape.json"}))
                .unwrap();
        assert!(escape
            .seccomp
            .to_oci(&profiles)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        let missing =
            spec(serde_json::json!({"type": "Localhost", "localhostProfile": "nope.json"}))
                .unwrap();
        assert!(missing.seccomp.to_oci(&profiles).is_err());
        for bad in [
            serde_json::json!({"type": "Localhost", "localhostProfile": "../x.json"}),
            serde_json::json!({"type": "Localhost", "localhostProfile": "/etc/x.json"}),
            serde_json::json!({"type": "Localhost"}),
            serde_json::json!({"type": "Bogus"}),
        ] {
            assert!(
                matches!(spec(bad.clone()), Err(SpecError::Seccomp(_))),
                "{bad}"
            );
        }
    }

    fn sys_read_only(oci: &Spec) -> bool {
        let mounts = oci.mounts().as_ref().unwrap();
        let sys = mounts.iter().find(|m| m.destination() == Path::new("/sys"));
        sys.unwrap()
            .options()
            .as_ref()
            .unwrap()
            .iter()
            .any(|o| o == "ro")
    }

    #[test]
    fn privileged_gets_all_capabilities_devices_and_a_writable_sys_without_seccomp() {
        let c = with_sc(serde_json::json!({"privileged": true, "capabilities": {"drop": ["ALL"]}}));
        let s = ContainerSpec::from_kubernetes(&c, &image(), vec![]).unwrap();
        assert!(s.privileged);
        let caps = s.capabilities().unwrap();
        let bounding = own_bounding_set();
        let known = (0..ALL_CAPABILITIES.len()).filter(|b| bounding & (1 << b) != 0);
        assert_eq!(caps.len(), known.count(), "the agent's own bounding set");
        assert!(caps.contains(&Capability::SysAdmin) && caps.contains(&Capability::SysModule));
        let oci = s.to_oci(&ctx()).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().is_none() && linux.readonly_paths().is_none());
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert!(devices.len() == 1 && devices[0].allow() && devices[0].typ().is_none());
        assert!(!sys_read_only(&oci));
        // Not privileged: /sys read-only, the deny-list device rules, the default profile.
        let plain = ContainerSpec::from_kubernetes(&container("a"), &image(), vec![]).unwrap();
        let oci = plain.to_oci(&ctx()).unwrap();
        assert!(oci.linux().as_ref().unwrap().seccomp().is_some());
        assert!(sys_read_only(&oci));
    }
}
