//! Privileged tests of the pod runtime (root: namespaces, overlayfs, cgroups, libcontainer).
//! Skipped with a message when not root. Each test makes its own state directory and pod uid,
//! and a guard removes the pod (containers, pause process, cgroups, mounts) even when it fails.
//!
//! The test rootfs is Debian's busybox-static (`cargo xtask setup` installs it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container as K8sContainer, EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_agent::runtime::{
    self, Container, ContainerSpec, ContainerState, ExitStatus, ImageConfig, Runtime, Sandbox,
};
use skiff_test_support::root::root_or_skip;

const BUSYBOX: &str = "/bin/busybox";
const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");

/// A pod under test: its runtime, state directory and image layers; removes the pod on drop.
struct TestPod {
    runtime: Runtime,
    uid: String,
    layers: Vec<PathBuf>,
    // Dropped after `drop()` ran: the state directory goes last.
    _dir: tempfile::TempDir,
}

impl Drop for TestPod {
    fn drop(&mut self) {
        if let Err(e) = self.runtime.remove_pod_by_uid(&self.uid) {
            eprintln!("cleanup of pod {}: {e}", self.uid);
        }
    }
}

/// A busybox layer (every applet linked in /bin) and a second layer on top with /etc/greeting.
fn make_layers(dir: &Path) -> Vec<PathBuf> {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install busybox-static (cargo xtask setup)"
    );
    let base = dir.join("layers/busybox");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    for d in ["tmp", "proc", "sys", "dev", "etc", "root"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
        }
    }
    let top = dir.join("layers/top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/greeting"), "from the top layer\n").unwrap();
    vec![base, top]
}

fn pod(test: &str) -> Option<TestPod> {
    if !root_or_skip(
        &format!("runtime test {test}"),
        "namespaces, mounts, cgroups",
    ) {
        return None;
    }
    runtime::become_subreaper().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layers = make_layers(dir.path());
    let runtime = Runtime::with_binary(dir.path().join("state"), AGENT).unwrap();
    Some(TestPod {
        runtime,
        uid: format!("test-{}-{test}", std::process::id()),
        layers,
        _dir: dir,
    })
}

impl TestPod {
    fn sandbox(&self, hostname: &str) -> Sandbox {
        self.runtime.create_sandbox(&self.uid, hostname).unwrap()
    }

    fn spec(&self, name: &str, script: &str) -> ContainerSpec {
        let c = K8sContainer {
            name: name.to_owned(),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        };
        ContainerSpec::from_kubernetes(&c, &ImageConfig::default(), self.layers.clone()).unwrap()
    }

    fn run(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Container {
        let c = self.runtime.create_container(sandbox, spec).unwrap();
        assert_eq!(self.runtime.status(&c).unwrap(), ContainerState::Created);
        self.runtime.start(&c).unwrap();
        c
    }

    fn wait_exit(&self, c: &Container) -> ExitStatus {
        match self.runtime.wait(c, Some(Duration::from_secs(20))).unwrap() {
            ContainerState::Exited(Some(status)) => status,
            other => panic!(
                "container {} did not exit: {other:?}; log: {}",
                c.name,
                log(c)
            ),
        }
    }
}

fn log(c: &Container) -> String {
    std::fs::read_to_string(&c.log_path).unwrap_or_default()
}

/// Waits (bounded) until a container's log contains `needle`.
fn wait_for_log(c: &Container, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log(c).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{} never logged {needle:?}: {}",
            c.name,
            log(c)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ns_id(path: &Path) -> PathBuf {
    std::fs::read_link(path).unwrap()
}

#[test]
fn two_containers_share_localhost_and_hostname() {
    let Some(pod) = pod("localhost") else { return };
    let sandbox = pod.sandbox("shared-host");
    let server = pod.run(
        &sandbox,
        &pod.spec(
            "server",
            "mkdir -p /www && echo hello-from-server > /www/index.html && \
             exec httpd -f -p 127.0.0.1:8080 -h /www",
        ),
    );
    // The client retries until the server listens (bounded: 10 s).
    let client = pod.run(
        &sandbox,
        &pod.spec(
            "client",
            "for i in $(seq 1 200); do \
               if wget -q -O - http://127.0.0.1:8080/index.html; then hostname; exit 0; fi; \
               sleep 0.05; \
             done; exit 1",
        ),
    );
    let exit = pod.wait_exit(&client);
    let out = log(&client);
    assert_eq!(exit.code, 0, "client failed: {out}");
    assert_eq!(out, "hello-from-server\nshared-host\n");
    for c in [&server, &client] {
        let pid = c.pid;
        if pod.runtime.status(c).unwrap() == ContainerState::Running {
            for ns in ["net", "ipc", "uts"] {
                assert_eq!(
                    ns_id(Path::new(&format!("/proc/{pid}/ns/{ns}"))),
                    ns_id(Path::new(&format!("/proc/{}/ns/{ns}", sandbox.pause_pid))),
                    "{} is not in the sandbox's {ns} namespace",
                    c.name
                );
            }
            assert_ne!(
                ns_id(Path::new(&format!("/proc/{pid}/ns/mnt"))),
                ns_id(Path::new("/proc/self/ns/mnt"))
            );
        }
    }
    assert_eq!(
        pod.runtime.status(&server).unwrap(),
        ContainerState::Running
    );
    // The host's network namespace is not the pod's.
    assert_ne!(
        ns_id(&sandbox.netns_path()),
        ns_id(Path::new("/proc/self/ns/net"))
    );
    pod.runtime.remove_sandbox(&sandbox).unwrap();
}

/// A pod's sysctls are set in the pod's own namespaces: the container reads the value, the
/// node keeps its own.
#[test]
fn pod_sysctls_land_in_the_pods_network_namespace() {
    let Some(pod) = pod("sysctl") else { return };
    let sandbox = pod.sandbox("sysctl");
    let knob = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    let host_before = std::fs::read_to_string(knob).unwrap();
    let wanted = if host_before.trim() == "80" {
        "81"
    } else {
        "80"
    };
    let mut spec = pod.spec("reader", &format!("cat {knob}"));
    spec.sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), wanted.into());
    let c = pod.run(&sandbox, &spec);
    let exit = pod.wait_exit(&c);
    assert_eq!(exit.code, 0, "{}", log(&c));
    assert_eq!(log(&c).trim(), wanted);
    assert_eq!(
        std::fs::read_to_string(knob).unwrap(),
        host_before,
        "the node's value is untouched"
    );
    pod.runtime.remove_sandbox(&sandbox).unwrap();
}

#[test]
fn exit_code_command_env_and_workdir() {
    let Some(pod) = pod("exit") else { return };
    let sandbox = pod.sandbox("exit");
    let c = K8sContainer {
        name: "main".into(),
        command: Some(vec!["/bin/sh".into(), "-c".into()]),
        args: Some(vec![
            "echo \"$GREETING $(WHO)\"; pwd; cat /etc/greeting; echo to-stderr >&2; exit 42".into(),
        ]),
        env: Some(vec![
            EnvVar {
                name: "WHO".into(),
                value: Some("world".into()),
                ..Default::default()
            },
            EnvVar {
                name: "GREETING".into(),
                value: Some("hello".into()),
                ..Default::default()
            },
        ]),
        working_dir: Some("/tmp".into()),
        ..Default::default()
    };
    let spec =
        ContainerSpec::from_kubernetes(&c, &ImageConfig::default(), pod.layers.clone()).unwrap();
    let container = pod.run(&sandbox, &spec);
    let exit = pod.wait_exit(&container);
    assert_eq!(
        exit,
        ExitStatus {
            code: 42,
            signal: None
        }
    );
    assert_eq!(
        log(&container),
        "hello world\n/tmp\nfrom the top layer\nto-stderr\n"
    );
    // Recorded: asking again (after the zombie is gone) gives the same answer.
    assert_eq!(
        pod.runtime.status(&container).unwrap(),
        ContainerState::Exited(Some(exit))
    );
    pod.runtime.delete_container(&container).unwrap();
    // The same name can be created again (a restart).
    let again = pod.run(&sandbox, &pod.spec("main", "exit 0"));
    assert_eq!(pod.wait_exit(&again).code, 0);
}

fn cgroup_file(controller: &str, cgroups_path: &str, file: &str) -> String {
    let path = format!("/sys/fs/cgroup/{controller}{cgroups_path}/{file}");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_owned()
}

#[test]
fn limits_and_security_defaults_land() {
    let Some(pod) = pod("limits") else { return };
    let sandbox = pod.sandbox("limits");
    let c = K8sContainer {
        name: "limited".into(),
        command: Some(vec!["/bin/sleep".into(), "1000".into()]),
        resources: Some(ResourceRequirements {
            limits: Some(
                [
                    ("cpu".to_owned(), Quantity("250m".into())),
                    ("memory".to_owned(), Quantity("64Mi".into())),
                ]
                .into(),
            ),
            requests: Some([("cpu".to_owned(), Quantity("100m".into()))].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec =
        ContainerSpec::from_kubernetes(&c, &ImageConfig::default(), pod.layers.clone()).unwrap();
    let container = pod.run(&sandbox, &spec);
    let path = &container.cgroups_path;
    assert_eq!(path, &format!("/skiff/{}/limited", pod.uid));
    assert_eq!(
        cgroup_file("memory", path, "memory.limit_in_bytes"),
        "67108864"
    );
    assert_eq!(cgroup_file("cpu", path, "cpu.cfs_quota_us"), "25000");
    assert_eq!(cgroup_file("cpu", path, "cpu.cfs_period_us"), "100000");
    assert_eq!(cgroup_file("cpu", path, "cpu.shares"), "102");
    let procs = cgroup_file("memory", path, "cgroup.procs");
    assert!(
        procs.lines().any(|p| p == container.pid.to_string()),
        "{} not in its memory cgroup: {procs}",
        container.pid
    );
    // Device rules: not the allow-all default, /dev/null allowed.
    let devices = cgroup_file("devices", path, "devices.list");
    assert!(
        !devices.contains("a *:* rwm"),
        "devices allow all: {devices}"
    );
    assert!(devices.contains("c 1:3 rwm"), "{devices}");
    // The pause process sits in the pod's cgroup parent.
    let pause_procs = cgroup_file(
        "memory",
        &format!("/skiff/{}/pause", pod.uid),
        "cgroup.procs",
    );
    assert_eq!(pause_procs, sandbox.pause_pid.to_string());
    // Seccomp filter on, and exactly the default capability set (Docker's 0xa80425fb).
    let status = std::fs::read_to_string(format!("/proc/{}/status", container.pid)).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in status"))
            .to_owned()
    };
    assert_eq!(field("Seccomp:"), "2");
    assert_eq!(field("CapEff:"), "00000000a80425fb");
    assert_eq!(field("CapBnd:"), "00000000a80425fb");
    assert_eq!(field("CapInh:"), "0000000000000000");
    // The filter denies what capabilities would not: creating a user namespace needs no
    // capability (the host allows it, see above), unshare(2) is on the deny-list.
    let probe = pod.run(
        &sandbox,
        &pod.spec("probe", "unshare -U true 2>&1; echo rc=$?"),
    );
    pod.wait_exit(&probe);
    let out = log(&probe);
    assert!(
        out.contains("Operation not permitted") && out.contains("rc=1"),
        "unshare was not denied: {out}"
    );
    pod.runtime.remove_sandbox(&sandbox).unwrap();
}

#[test]
fn sigterm_then_sigkill_after_grace_period() {
    let Some(pod) = pod("stop") else { return };
    let sandbox = pod.sandbox("stop");
    // PID 1 without a SIGTERM handler: the kernel ignores the signal.
    let stubborn = pod.run(&sandbox, &pod.spec("stubborn", "exec sleep 1000"));
    // PID 1 with a handler: exits on SIGTERM with its own code.
    let polite = pod.run(
        &sandbox,
        &pod.spec(
            "polite",
            "trap 'exit 7' TERM; echo trap-set; while true; do sleep 0.05; done",
        ),
    );
    // A SIGTERM before the shell installed its trap would be ignored (PID 1): wait for it.
    wait_for_log(&polite, "trap-set");
    let t = Instant::now();
    let state = pod.runtime.stop(&polite, Duration::from_secs(10)).unwrap();
    assert_eq!(
        state,
        ContainerState::Exited(Some(ExitStatus {
            code: 7,
            signal: None
        }))
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "polite container took {:?}",
        t.elapsed()
    );

    let grace = Duration::from_millis(500);

    let t = Instant::now();
    let state = pod.runtime.stop(&stubborn, grace).unwrap();
    assert_eq!(
        state,
        ContainerState::Exited(Some(ExitStatus {
            code: 137,
            signal: Some(9)
        }))
    );
    assert!(
        t.elapsed() >= grace,
        "killed before the grace period: {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < grace + Duration::from_secs(5));
    // Signalling an exited container is not an error.
    pod.runtime
        .signal(&stubborn, nix::sys::signal::Signal::SIGTERM)
        .unwrap();
}

fn mounts_mentioning(s: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(s))
        .map(str::to_owned)
        .collect()
}

#[test]
fn deletion_leaves_nothing_behind() {
    let Some(pod) = pod("delete") else { return };
    let state_dir = pod.runtime.root().to_owned();
    let sandbox = pod.sandbox("delete");
    let running = pod.run(&sandbox, &pod.spec("running", "exec sleep 1000"));
    let created = pod
        .runtime
        .create_container(&sandbox, &pod.spec("created", "exit 0"))
        .unwrap();
    let netns = ns_id(&sandbox.netns_path());
    let pids = [sandbox.pause_pid, running.pid, created.pid];
    assert!(!mounts_mentioning(&state_dir.to_string_lossy()).is_empty());

    pod.runtime.remove_sandbox(&sandbox).unwrap();

    assert_eq!(
        mounts_mentioning(&state_dir.to_string_lossy()),
        Vec::<String>::new(),
        "mounts left behind"
    );
    for (mount, _) in runtime::cgroups::v1_mounts().unwrap() {
        let dir = mount.join("skiff").join(&pod.uid);
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind (or a zombie)"
        );
    }
    // No process on the host is in the pod's network namespace any more (nothing else pins
    // it: the runtime does not bind-mount it).
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(link) = std::fs::read_link(entry.path().join("ns/net")) {
            assert_ne!(
                link,
                netns,
                "process {:?} still in the pod's netns",
                entry.file_name()
            );
        }
    }
    assert!(!state_dir.join("pods").join(&pod.uid).exists());
    assert_eq!(
        std::fs::read_dir(state_dir.join("libcontainer"))
            .unwrap()
            .count(),
        0,
        "libcontainer state left behind"
    );
    assert!(pod.runtime.list().unwrap().is_empty());
}

#[test]
fn a_restarted_runtime_lists_and_adopts_what_runs() {
    let Some(pod) = pod("adopt") else { return };
    let sandbox = pod.sandbox("adopt");
    let running = pod.run(&sandbox, &pod.spec("running", "exec sleep 1000"));
    let done = pod.run(&sandbox, &pod.spec("done", "exit 3"));
    pod.wait_exit(&done);

    // A second runtime on the same state directory, as after an agent restart.
    let restarted = Runtime::with_binary(pod.runtime.root(), AGENT).unwrap();
    let pods = restarted.list().unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].sandbox, sandbox);
    assert!(pods[0].running);
    let states: Vec<(&str, ContainerState)> = pods[0]
        .containers
        .iter()
        .map(|(c, s)| (c.name.as_str(), *s))
        .collect();
    assert_eq!(
        states,
        [
            (
                "done",
                ContainerState::Exited(Some(ExitStatus {
                    code: 3,
                    signal: None
                }))
            ),
            ("running", ContainerState::Running),
        ]
    );
    let adopted = &pods[0].containers[1].0;
    assert_eq!(adopted, &running);
    let state = restarted.stop(adopted, Duration::from_millis(200)).unwrap();
    assert!(
        matches!(state, ContainerState::Exited(Some(_))),
        "{state:?}"
    );
    restarted.remove_sandbox(&pods[0].sandbox).unwrap();
    assert!(restarted.list().unwrap().is_empty());
}

/// Micro-benchmark (ignored by default): container create + start + delete in a running
/// sandbox, 30 rounds. Run with
/// `cargo test -p skiff-agent --release --test runtime -- --ignored --nocapture create_start_delete`.
#[test]
#[ignore = "benchmark; run explicitly"]
fn create_start_delete_benchmark() {
    let Some(pod) = pod("bench") else { return };
    let sandbox = pod.sandbox("bench");
    let spec = pod.spec("bench", "exec sleep 1000");
    let mut rounds: Vec<(Duration, Duration, Duration)> = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        let c = pod.runtime.create_container(&sandbox, &spec).unwrap();
        let t1 = Instant::now();
        pod.runtime.start(&c).unwrap();
        let t2 = Instant::now();
        pod.runtime.delete_container(&c).unwrap();
        rounds.push((t1 - t0, t2 - t1, t2.elapsed()));
    }
    let median = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
        let mut v: Vec<Duration> = rounds.iter().map(f).collect();
        v.sort();
        (v[v.len() / 2], v[v.len() * 9 / 10])
    };
    let total = median(|r| r.0 + r.1 + r.2);
    eprintln!(
        "create+start+delete over {} rounds: median {:?} (p90 {:?}); create {:?}, start {:?}, delete {:?} (medians)",
        rounds.len(),
        total.0,
        total.1,
        median(|r| r.0).0,
        median(|r| r.1).0,
        median(|r| r.2).0,
    );
}

#[test]
fn bad_input_gives_readable_errors_and_leaves_nothing() {
    let Some(pod) = pod("bad") else { return };
    let err = pod.runtime.create_sandbox("../escape", "h").unwrap_err();
    assert_eq!(err.to_string(), "invalid pod uid \"../escape\"");
    let err = pod
        .runtime
        .create_sandbox(&pod.uid, "bad host")
        .unwrap_err();
    assert!(err.to_string().contains("hostname"), "{err}");

    let sandbox = pod.sandbox("bad");
    let err = pod.runtime.create_sandbox(&pod.uid, "bad").unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");

    let c = K8sContainer {
        name: "missing".into(),
        command: Some(vec!["/no/such/binary".into()]),
        ..Default::default()
    };
    let spec =
        ContainerSpec::from_kubernetes(&c, &ImageConfig::default(), pod.layers.clone()).unwrap();
    let err = pod.runtime.create_container(&sandbox, &spec).unwrap_err();
    eprintln!("missing executable: {err}");
    assert!(
        err.to_string().contains("/no/such/binary"),
        "the error does not name the executable: {err}"
    );
    // The failed create left nothing: the same name works, no mount remains.
    let dir = pod
        .runtime
        .root()
        .join("pods")
        .join(&pod.uid)
        .join("containers/missing");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(mounts_mentioning(&pod.runtime.root().to_string_lossy()).is_empty());

    let mut no_layers = pod.spec("nolayers", "true");
    no_layers.layers.clear();
    assert!(pod.runtime.create_container(&sandbox, &no_layers).is_err());

    let ok = pod.run(&sandbox, &pod.spec("missing", "exit 0"));
    let err = pod
        .runtime
        .create_container(&sandbox, &pod.spec("missing", "exit 0"))
        .unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");
    assert_eq!(pod.wait_exit(&ok).code, 0);
}

/// Reads `master` until `needle` appears or the deadline passes.
fn read_pty_until(master: &std::fs::File, needle: &str) -> String {
    use std::io::Read as _;
    use std::os::fd::AsFd as _;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let mut reader = master;
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "terminal never showed {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        let master_fd = master.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &master_fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn exec_joins_the_container_and_passes_the_exit_code_through() {
    use std::io::{Read as _, Write as _};
    let Some(pod) = pod("exec") else { return };
    let sandbox = pod.sandbox("exec-host");
    let c = pod.run(&sandbox, &pod.spec("main", "echo started; exec sleep 1000"));
    wait_for_log(&c, "started");

    // Pipes: stdout, stderr and the exit code come back; stdin reaches the process.
    let argv: Vec<String> = [
        "sh",
        "-c",
        "hostname; read line; echo got $line; echo oops >&2; \
         readlink /proc/self/ns/net; cat /proc/self/cgroup; exit 3",
    ]
    .map(String::from)
    .to_vec();
    let mut p = pod.runtime.exec(&c, &argv, false).unwrap();
    p.child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a line\n")
        .unwrap();
    let out = p.child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout {stdout}, stderr {:?}",
        out.stderr
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("exec-host"));
    assert_eq!(lines.next(), Some("got a line"));
    assert_eq!(
        lines.next().map(PathBuf::from),
        Some(ns_id(&sandbox.netns_path())),
        "exec is not in the pod's network namespace: {stdout}"
    );
    // The container has its own cgroup namespace: in its cgroup the path reads "/"; a process
    // outside it would see "/.." paths or the host's.
    let memory = stdout
        .lines()
        .find(|l| l.ends_with(":memory:/") || l.contains(":memory:"))
        .unwrap_or_default();
    assert!(
        memory.ends_with(":memory:/"),
        "exec is not in the container's cgroup {}: {stdout}",
        c.cgroups_path
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // A command that does not exist: the shim's failure code and a message.
    let mut p = pod
        .runtime
        .exec(&c, &["/no/such/binary".to_owned()], false)
        .unwrap();
    drop(p.child.stdin.take());
    let out = p.child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(i32::from(runtime::shim::EXEC_FAILED)),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stderr.is_empty());

    // A terminal: the process sees a tty as its stdin and controlling terminal.
    let mut p = pod
        .runtime
        .exec(
            &c,
            &["sh", "-c", "tty; read x; echo reply-$x; exit 5"].map(String::from),
            true,
        )
        .unwrap();
    let master = std::fs::File::from(p.pty.take().expect("a terminal master"));
    let shown = read_pty_until(&master, "/dev/pts/");
    assert!(shown.contains("/dev/pts/"), "{shown:?}");
    (&master).write_all(b"yes\n").unwrap();
    let shown = read_pty_until(&master, "reply-yes");
    assert!(shown.contains("reply-yes"), "{shown:?}");
    let status = p.child.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = p.child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(5), "shim stderr: {err}");
    pod.runtime.remove_sandbox(&sandbox).unwrap();
}

/// A volume as the kubelet part writes it (atomic writer, below the pod's 0700 directories),
/// bind mounted read-only: a container running as another user reads it, cannot write it, and
/// sees a new payload (the `..data` switch) without a restart.
#[test]
fn a_non_root_container_reads_an_atomically_written_volume_and_sees_updates() {
    use skiff_agent::kubelet::atomic_writer::{self, FileProjection, Payload};
    use skiff_agent::kubelet::container_config::volumes_dir;
    use std::os::unix::fs::PermissionsExt as _;

    let Some(pod) = pod("volume") else { return };
    let sandbox = pod.sandbox("volume");
    let pod_dir = pod.runtime.root().join("pods").join(&pod.uid);
    let vol = volumes_dir(pod.runtime.root(), &pod.uid)
        .unwrap()
        .join("sa");
    std::fs::create_dir(&vol).unwrap();
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in [&pod_dir, &pod_dir.join("volumes")] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    let payload = |token: &str| -> Payload {
        [
            ("token".to_owned(), FileProjection::new(token, 0o644)),
            ("ns/name".to_owned(), FileProjection::new("default", 0o644)),
        ]
        .into_iter()
        .collect()
    };
    atomic_writer::write(&vol, &payload("t1")).unwrap();
    let mut spec = pod.spec(
        "reader",
        "D=/var/run/secrets/kubernetes.io/serviceaccount; \
         echo \"uid $(id -u) token $(cat $D/token) ns $(cat $D/ns/name)\"; \
         if touch $D/x 2>/dev/null; then echo writable; else echo read-only; fi; \
         i=0; while [ \"$(cat $D/token)\" != t2 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; \
         echo \"now $(cat $D/token)\"",
    );
    spec.uid = 1000;
    spec.gid = 1000;
    spec.mounts.push(runtime::BindMount {
        source: vol.clone(),
        destination: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        read_only: true,
    });
    let c = pod.run(&sandbox, &spec);
    wait_for_log(&c, "read-only");
    assert!(
        log(&c).starts_with("uid 1000 token t1 ns default\n"),
        "{}",
        log(&c)
    );
    atomic_writer::write(&vol, &payload("t2")).unwrap();
    assert_eq!(pod.wait_exit(&c).code, 0);
    assert!(log(&c).ends_with("now t2\n"), "{}", log(&c));
}

/// A static helper in its own layer: `cc -static` of `source` (C), at /bin/<name>.
fn helper_layer(dir: &Path, name: &str, source: &str) -> PathBuf {
    let layer = dir.join("layers").join(name);
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(layer.join("bin").join(name))
        .arg(&src)
        .output()
        .expect("running cc (the C toolchain that links the agent)");
    assert!(
        out.status.success(),
        "cc -static {name}.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    layer
}

/// Creates namespaces with raw `clone` and `clone3`, and forks: prints one line each.
const CLONE_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct clone_args_v0 { uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls; };

static void report(const char *what, long r) {
    if (r == 0) _exit(0); /* the child */
    if (r < 0) { printf("%s errno %d\n", what, errno); return; }
    int status = 0;
    waitpid((pid_t)r, &status, 0);
    printf("%s ok\n", what);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    report("clone-newuser", syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    report("clone-newnet", syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0));
    struct clone_args_v0 args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    report("clone3-newuser", syscall(435, &args, sizeof args));
    report("clone-plain", syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
    report("fork", fork());
    return 0;
}
"#;

/// RuntimeDefault seccomp: `clone` with a namespace flag gets EPERM and `clone3` ENOSYS (libc
/// falls back to clone), while a plain clone and fork work; Unconfined lets the same helper
/// create a user namespace (so the first result is the profile's, not the kernel's).
#[test]
fn runtime_default_seccomp_blocks_namespace_creation_by_clone_and_clone3() {
    let Some(mut pod) = pod("clone") else { return };
    let dir = pod._dir.path().to_owned();
    pod.layers
        .push(helper_layer(&dir, "cloneprobe", CLONE_PROBE));
    let sandbox = pod.sandbox("clone");
    let c = pod.run(&sandbox, &pod.spec("confined", "/bin/cloneprobe"));
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    assert_eq!(
        log(&c),
        "clone-newuser errno 1\nclone-newnet errno 1\nclone3-newuser errno 38\nclone-plain ok\nfork ok\n"
    );
    let mut unconfined = pod.spec("unconfined", "/bin/cloneprobe");
    unconfined.seccomp = runtime::spec::Seccomp::Unconfined;
    let c = pod.run(&sandbox, &unconfined);
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    assert!(log(&c).starts_with("clone-newuser ok\n"), "{}", log(&c));
}

/// Volume sources for pods with only emptyDir volumes.
struct NoSources;

impl skiff_agent::kubelet::volume_payload::VolumeSources for NoSources {
    fn config_map<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<k8s_openapi::api::core::v1::ConfigMap>, String>>
    {
        Box::pin(async { Ok(None) })
    }
    fn secret<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<k8s_openapi::api::core::v1::Secret>, String>>
    {
        Box::pin(async { Ok(None) })
    }
    fn token<'a>(
        &'a self,
        _: &'a skiff_agent::kubelet::token_manager::TokenSpec,
    ) -> futures::future::BoxFuture<'a, Result<String, String>> {
        Box::pin(async { Err("no tokens here".to_owned()) })
    }
}

impl TestPod {
    /// A Kubernetes pod of this test's uid with an emptyDir `data` and `spec`'s fields.
    fn k8s_pod(&self, spec: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        let mut spec = spec;
        spec["volumes"] = serde_json::json!([{"name": "data", "emptyDir": {}}]);
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": self.uid},
            "spec": spec,
        }))
        .unwrap()
    }

    /// The container's spec as the kubelet builds it: effective security context, volumes.
    fn kubelet_spec(
        &self,
        k8s_pod: &k8s_openapi::api::core::v1::Pod,
        container: serde_json::Value,
    ) -> Result<ContainerSpec, String> {
        let c: K8sContainer = serde_json::from_value(container).unwrap();
        let mounts = futures::executor::block_on(skiff_agent::kubelet::container_config::mounts(
            &self.runtime,
            &NoSources,
            self.runtime.root(),
            k8s_pod,
            &c,
        ))?;
        let mut spec = ContainerSpec::from_pod(
            Some(k8s_pod),
            &c,
            &ImageConfig::default(),
            self.layers.clone(),
        )
        .map_err(|e| e.to_string())?;
        spec.mounts.extend(mounts);
        Ok(spec)
    }
}

/// The effective security context, checked from inside: the pod's runAsUser is the process's
/// uid, fsGroup is among its groups and the group of a file it creates in the emptyDir, and
/// with readOnlyRootFilesystem a write to / fails.
#[test]
fn run_as_user_fs_group_and_read_only_root_filesystem_hold_inside_the_container() {
    let Some(pod) = pod("secctx") else { return };
    let sandbox = pod.sandbox("secctx");
    let k8s = pod.k8s_pod(serde_json::json!({
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000, "runAsNonRoot": true},
        "containers": [],
    }));
    let spec = pod
        .kubelet_spec(
            &k8s,
            serde_json::json!({
                "name": "app",
                "command": ["/bin/sh", "-c",
                    "echo uid $(id -u) groups $(id -G); touch /data/f && echo file group $(stat -c %g /data/f); \
                     if touch /rootfs-write 2>/dev/null; then echo rootfs writable; else echo rootfs read-only; fi"],
                "securityContext": {"readOnlyRootFilesystem": true},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }),
        )
        .unwrap();
    let c = pod.run(&sandbox, &spec);
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    assert_eq!(
        log(&c),
        "uid 1000 groups 0 2000\nfile group 2000\nrootfs read-only\n"
    );

    // runAsNonRoot with an image that runs as root: refused with the kubelet's message.
    let k8s = pod.k8s_pod(serde_json::json!({
        "securityContext": {"runAsNonRoot": true},
        "containers": [],
    }));
    let err = pod
        .kubelet_spec(
            &k8s,
            serde_json::json!({"name": "root", "command": ["true"]}),
        )
        .unwrap_err();
    assert!(
        err.starts_with("container has runAsNonRoot and image will run as root"),
        "{err}"
    );
}

/// `emptyDir.medium: Memory` is a tmpfs bounded by its sizeLimit (as secret and projected
/// volumes are, unbounded), and removing the pod leaves no mount behind.
#[test]
fn a_memory_medium_empty_dir_is_a_bounded_tmpfs_gone_with_the_pod() {
    let Some(pod) = pod("memvol") else { return };
    let sandbox = pod.sandbox("memvol");
    let mut k8s = pod.k8s_pod(serde_json::json!({"containers": []}));
    k8s.spec.as_mut().unwrap().volumes = Some(vec![serde_json::from_value(
        serde_json::json!({"name": "data", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    )
    .unwrap()]);
    let spec = pod
        .kubelet_spec(
            &k8s,
            serde_json::json!({
                "name": "app",
                "command": ["/bin/sh", "-c",
                    "grep ' /data ' /proc/mounts | cut -d' ' -f3; \
                     if dd if=/dev/zero of=/data/big bs=1024 count=2048 2>/dev/null; then echo fit; else echo full; fi"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }),
        )
        .unwrap();
    let c = pod.run(&sandbox, &spec);
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    assert_eq!(log(&c), "tmpfs\nfull\n");
    let pod_dir = pod.runtime.root().join("pods").join(&pod.uid);
    pod.runtime.remove_sandbox(&sandbox).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&pod_dir.display().to_string()),
        "a mount below the removed pod's directory remains"
    );
    assert!(!pod_dir.exists());
}

/// privileged: every capability, a writable /sys, no seccomp filter.
#[test]
fn a_privileged_container_gets_all_capabilities_and_a_writable_sys() {
    let Some(pod) = pod("priv") else { return };
    let sandbox = pod.sandbox("priv");
    let k8s = pod.k8s_pod(serde_json::json!({"containers": []}));
    let spec = pod
        .kubelet_spec(
            &k8s,
            serde_json::json!({
                "name": "priv",
                "command": ["/bin/sh", "-c",
                    "grep -E '^(CapEff|Seccomp):' /proc/self/status; grep ' /sys sysfs ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1"],
                "securityContext": {"privileged": true},
            }),
        )
        .unwrap();
    let c = pod.run(&sandbox, &spec);
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    let out = log(&c);
    let cap_eff = out
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    let caps = u64::from_str_radix(cap_eff, 16).unwrap();
    // CAP_NET_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE, CAP_SYS_ADMIN: none of the default set.
    for bit in [12, 16, 19, 21] {
        assert!(caps & (1 << bit) != 0, "capability {bit} missing: {out}");
    }
    assert!(out.contains("Seccomp:\t0"), "{out}");
    assert!(out.ends_with("rw\n"), "{out}");
}

fn mounts_below(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|t| t.starts_with(&prefix))
        .collect()
}

/// CVE-2017-1002101: a container plants `x -> /` in its emptyDir; the next container mounting
/// subPath `x` is refused (CreateContainerConfigError's message) and the host's root is not
/// mounted anywhere. A real subPath is created, mounted through the resolved descriptor, and
/// unmounted (not deleted through) when the pod goes.
#[test]
fn a_symlink_planted_in_an_empty_dir_does_not_escape_through_a_sub_path() {
    let Some(pod) = pod("subpath") else { return };
    let sandbox = pod.sandbox("subpath");
    let k8s = pod.k8s_pod(serde_json::json!({"containers": []}));
    let planter = pod
        .kubelet_spec(
            &k8s,
            serde_json::json!({
                "name": "planter",
                "command": ["/bin/sh", "-c", "ln -s / /data/x && ln -s /etc /data/etc && mkdir /data/real && echo planted"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }),
        )
        .unwrap();
    let c = pod.run(&sandbox, &planter);
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    pod.runtime.delete_container(&c).unwrap();

    let pod_dir = pod.runtime.root().join("pods").join(&pod.uid);
    for sub in ["x", "x/etc", "etc/passwd", "real/../x"] {
        let err = pod
            .kubelet_spec(
                &k8s,
                serde_json::json!({
                    "name": "victim",
                    "command": ["true"],
                    "volumeMounts": [{"name": "data", "mountPath": "/host", "subPath": sub}],
                }),
            )
            .unwrap_err();
        assert!(
            err.starts_with(
                "failed to prepare subPath for volumeMount \"data\" of container \"victim\""
            ),
            "{sub}: {err}"
        );
        assert!(
            mounts_below(&pod_dir).is_empty(),
            "{sub}: something got mounted"
        );
    }

    let user = pod
        .kubelet_spec(
            &k8s,
            serde_json::json!({
                "name": "user",
                "command": ["/bin/sh", "-c", "echo hello > /sub/hello"],
                "volumeMounts": [{"name": "data", "mountPath": "/sub", "subPath": "real/nested"}],
            }),
        )
        .unwrap();
    let c = pod.run(&sandbox, &user);
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    let volume = pod_dir.join("volumes/data");
    assert_eq!(
        std::fs::read_to_string(volume.join("real/nested/hello")).unwrap(),
        "hello\n"
    );
    assert_eq!(mounts_below(&pod_dir.join("volume-subpaths")).len(), 1);
    // The pod goes: the subPath mount is detached, and removing the pod's directory does not
    // reach through it into anything else.
    pod.runtime.remove_pod_by_uid(&pod.uid).unwrap();
    assert!(mounts_below(&pod_dir).is_empty());
    assert!(!pod_dir.exists());
}

/// The interfaces of this process's network namespace (/proc/self/net/dev, as `ip link`).
fn interfaces_here() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .collect();
    names.sort();
    names
}

/// hostNetwork and hostPID: the container sees the node's interfaces (the test's network
/// namespace) and the node's processes (this test's pid); a pod without them sees only `lo`
/// and its own processes.
#[test]
fn a_host_network_pod_sees_the_nodes_interfaces_and_host_pid_its_processes() {
    let Some(pod) = pod("hostns") else { return };
    let sandbox = pod
        .runtime
        .create_sandbox_with(
            &pod.uid,
            "hostns",
            runtime::HostNamespaces {
                network: true,
                ipc: true,
            },
        )
        .unwrap();
    let script = format!(
        "sed 1,2d /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '; echo; if [ -d /proc/{} ]; then echo host-pids; else echo own-pids; fi",
        std::process::id()
    );
    let k8s =
        pod.k8s_pod(serde_json::json!({"hostNetwork": true, "hostPID": true, "containers": []}));
    let spec = pod
        .kubelet_spec(
            &k8s,
            serde_json::json!({"name": "host", "command": ["/bin/sh", "-c", script]}),
        )
        .unwrap();
    assert!(spec.host_pid);
    let c = pod.run(&sandbox, &spec);
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    assert_eq!(
        log(&c),
        format!("{} \nhost-pids\n", interfaces_here().join(" "))
    );
    assert_eq!(
        ns_id(&sandbox.netns_path()),
        ns_id(Path::new("/proc/self/ns/net"))
    );
    assert_eq!(
        ns_id(&sandbox.ipcns_path()),
        ns_id(Path::new("/proc/self/ns/ipc"))
    );
    pod.runtime.remove_sandbox(&sandbox).unwrap();

    let sandbox = pod.sandbox("own");
    let c = pod.run(&sandbox, &pod.spec("own", &script));
    assert_eq!(pod.wait_exit(&c).code, 0, "{}", log(&c));
    assert_eq!(log(&c), "lo \nown-pids\n");
}

/// An ephemeral container's `targetContainerName`: a container joining another's PID
/// namespace sees its processes (the target is PID 1 there).
#[test]
fn a_container_joins_another_containers_pid_namespace() {
    let Some(pod) = pod("pidns") else { return };
    let sandbox = pod.sandbox("pidns");
    let target = pod.run(&sandbox, &pod.spec("target", "exec sleep 1234"));
    let mut debug = pod.spec("debug", "ps -o pid,args");
    debug.pid_namespace = Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid)));
    // As kubectl debug -i makes it.
    debug.stdio.stdin = true;
    let debugger = pod.run(&sandbox, &debug);
    let exit = pod.wait_exit(&debugger);
    let out = log(&debugger);
    assert_eq!(exit.code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep 1234")),
        "{out}"
    );
    pod.runtime.remove_sandbox(&sandbox).unwrap();
}

/// A container with `stdin` reads what is written to the stdin the runtime holds, and sees
/// EOF once it is closed; one with `tty` has a terminal whose output lands in the log.
#[test]
fn stdin_pipes_and_terminals_are_held_by_the_runtime() {
    use std::io::Write as _;
    let Some(pod) = pod("stdio") else { return };
    let sandbox = pod.sandbox("stdio");
    let mut spec = pod.spec("reader", "while read l; do echo \"got $l\"; done; echo eof");
    spec.stdio = runtime::StdioSpec {
        stdin: true,
        stdin_once: true,
        tty: false,
    };
    let reader = pod.run(&sandbox, &spec);
    let held = pod
        .runtime
        .stdio(&reader)
        .expect("the runtime holds its stdin");
    assert!(!held.tty());
    held.stdin().unwrap().write_all(b"one\n").unwrap();
    wait_for_log(&reader, "got one\n");
    held.close_stdin();
    assert_eq!(pod.wait_exit(&reader).code, 0);
    assert_eq!(log(&reader), "got one\neof\n");

    let mut spec = pod.spec("term", "[ -t 0 ] && echo terminal; read l; echo \"got $l\"");
    spec.stdio = runtime::StdioSpec {
        stdin: true,
        stdin_once: false,
        tty: true,
    };
    let term = pod.run(&sandbox, &spec);
    let held = pod
        .runtime
        .stdio(&term)
        .expect("the runtime holds its terminal");
    assert!(held.tty());
    wait_for_log(&term, "terminal\r\n");
    held.stdin().unwrap().write_all(b"hi\n").unwrap();
    assert_eq!(pod.wait_exit(&term).code, 0);
    wait_for_log(&term, "got hi\r\n");
    pod.runtime.remove_sandbox(&sandbox).unwrap();
    assert!(pod.runtime.stdio(&term).is_none());
}
