//! From a Kubernetes container (plus its image's config and unpacked layers) to an OCI runtime
//! spec for libcontainer: argv after Kubernetes' command/args rules, env with `$(VAR)`
//! expansion, cpu and memory limits, the default capability set, a default seccomp profile and
//! a device cgroup that denies everything not listed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use libcontainer::oci_spec::runtime::{
    Arch, Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder,
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
    /// Where stdout and stderr go (appended); default `<pod dir>/logs/<name>.log`.
    pub log_path: Option<PathBuf>,
}

/// Where the spec is placed: decided by the runtime when it creates the container.
#[derive(Debug, Clone)]
pub(crate) struct SpecContext {
    pub rootfs: PathBuf,
    pub cgroups_path: String,
    pub net_ns: PathBuf,
    pub ipc_ns: PathBuf,
    pub uts_ns: PathBuf,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period (runc's and the kubelet's).
pub const CPU_PERIOD_US: u64 = 100_000;

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

/// The default seccomp profile: allow, except [`DENIED_SYSCALLS`] (EPERM), on the native
/// architecture and its 32-bit ABIs (a deny-list that left i386 syscalls open would be void).
pub fn default_seccomp() -> Result<LinuxSeccomp, SpecError> {
    let denied = LinuxSyscallBuilder::default()
        .names(
            DENIED_SYSCALLS
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(1u32) // EPERM
        .build()?;
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(vec![denied])
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
    /// Resolves a Kubernetes container against its image: `command` replaces the image's
    /// ENTRYPOINT (and drops its CMD), `args` replaces CMD; `$(VAR)` references in command, args
    /// and env values are expanded; env follows the image's ENV; resources, securityContext
    /// (runAsUser/runAsGroup, capabilities, readOnlyRootFilesystem) are applied. `valueFrom`
    /// env entries must have been resolved by the caller; privileged containers are refused.
    pub fn from_kubernetes(
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

        let (mut uid, mut gid) = match &image.user {
            Some(u) if !u.is_empty() => parse_user(&name, u)?,
            _ => (0, 0),
        };
        let mut cap_add = Vec::new();
        let mut cap_drop = Vec::new();
        let mut read_only_rootfs = false;
        let mut no_new_privileges = false;
        if let Some(sc) = &container.security_context {
            if sc.privileged == Some(true) {
                return Err(SpecError::Unsupported {
                    container: name,
                    what: "privileged".to_owned(),
                });
            }
            if let Some(u) = sc.run_as_user {
                uid = u32::try_from(u).map_err(|_| SpecError::Unsupported {
                    container: name.clone(),
                    what: format!("runAsUser {u}"),
                })?;
                if sc.run_as_group.is_none() && image.user.is_none() {
                    gid = 0;
                }
            }
            if let Some(g) = sc.run_as_group {
                gid = u32::try_from(g).map_err(|_| SpecError::Unsupported {
                    container: name.clone(),
                    what: format!("runAsGroup {g}"),
                })?;
            }
            if let Some(caps) = &sc.capabilities {
                cap_add = caps.add.clone().unwrap_or_default();
                cap_drop = caps.drop.clone().unwrap_or_default();
            }
            read_only_rootfs = sc.read_only_root_filesystem == Some(true);
            no_new_privileges = sc.allow_privilege_escalation == Some(false);
        }

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
            .terminal(false)
            .args(self.args.clone())
            .env(
                self.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            )
            .cwd(&self.working_dir)
            .user(UserBuilder::default().uid(self.uid).gid(self.gid).build()?)
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

        let namespaces = vec![
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()?,
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

        let mut resources = LinuxResourcesBuilder::default().devices(device_rules()?);
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
            .set_seccomp(Some(default_seccomp()?));
        spec.set_linux(Some(linux));
        Ok(spec)
    }
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

        let mut c = container("a");
        c.security_context = Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        });
        assert!(ContainerSpec::from_kubernetes(&c, &image(), vec![]).is_err());
    }
}
