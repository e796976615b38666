//! The Debian-based and pause images `cargo xtask images` builds, run for real: imported and
//! unpacked by the agent's image store, mounted as overlayfs (as a pod's rootfs is), and run
//! with chroot in private mount and PID namespaces (and for nginx a network namespace of our
//! own, reached only over its loopback). Needs root and the built images; skips otherwise.
//!
//! - nginx:latest serves "Welcome to nginx!" on port 80, logs the request to stdout, and stops
//!   with exit 0 on its StopSignal (SIGQUIT);
//! - debian:bookworm has coreutils: `date` works, `date foo` fails with a message on stderr;
//! - python:3 runs `python -c 'print(1)'` (the official image's /usr/local/bin/python);
//! - the pause image's binary exits 0 on SIGTERM as PID 1;
//! - ubuntu:latest says in its labels that it is Debian.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use skiff_agent::images::{Image, ImageStore};
use skiff_test_support::netns::Netns;
use skiff_test_support::{is_root, wait_until};

fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images")
}

/// Whether the test can run: root, and the layout `layout` built.
fn ready(test: &str, layout: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPING {test}: needs root (overlayfs, namespaces, chroot)");
        return false;
    }
    if !images_dir().join(layout).join("index.json").is_file() {
        eprintln!(
            "SKIPPING {test}: {} is not built (cargo xtask images, as root)",
            images_dir().join(layout).display()
        );
        return false;
    }
    true
}

/// An image unpacked by the agent's store, with what is needed to mount it.
struct Rootfs {
    image: Image,
    dir: tempfile::TempDir,
}

impl Rootfs {
    fn new(layout: &str, reference: &str) -> Rootfs {
        // Under target/: overlayfs needs a file system with d_type and xattrs for its upper
        // directory, which /tmp may not be.
        let dir = tempfile::Builder::new()
            .prefix("real-images-")
            .tempdir_in(images_dir().join(".."))
            .unwrap();
        let store = ImageStore::open(dir.path().join("store")).unwrap();
        let imported = store.import_path(&images_dir().join(layout), None).unwrap();
        assert!(
            imported.iter().any(|r| r == reference),
            "{reference} not in {imported:?}"
        );
        let image = store.resolve(reference).unwrap();
        for d in ["upper", "work", "root"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Rootfs { image, dir }
    }

    /// `argv` run in the image: a new mount and PID namespace (PID 1 is `argv[0]`), the layers
    /// as overlayfs, /proc and a minimal /dev as a runtime gives them, the image's environment;
    /// in `netns` if given. Everything mounted goes away with the namespace.
    fn command(&self, netns: Option<&Netns>, argv: &[&str]) -> Command {
        let p = |d: &str| self.dir.path().join(d).display().to_string();
        // overlayfs lists the topmost layer first.
        let lower: Vec<String> = self
            .image
            .layers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect();
        let env: Vec<String> = self
            .image
            .config
            .env
            .iter()
            .map(|e| format!("'{e}'"))
            .collect();
        let root = p("root");
        let script = format!(
            "set -e
mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {root}
mkdir -p {root}/proc {root}/dev
mount -t proc proc {root}/proc
mount -t tmpfs -o mode=755,nosuid tmpfs {root}/dev
for d in null zero full random urandom; do
    touch {root}/dev/$d
    mount --bind /dev/$d {root}/dev/$d
done
ln -s /proc/self/fd {root}/dev/fd
ln -s /proc/self/fd/0 {root}/dev/stdin
ln -s /proc/self/fd/1 {root}/dev/stdout
ln -s /proc/self/fd/2 {root}/dev/stderr
exec /usr/bin/env -i {env} /usr/sbin/chroot {root} \"$@\"
",
            lower = lower.join(":"),
            upper = p("upper"),
            work = p("work"),
            env = env.join(" "),
        );
        let mut cmd = match netns {
            Some(ns) => ns.exec("unshare"),
            None => Command::new("unshare"),
        };
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args(argv)
        .stdin(Stdio::null());
        cmd
    }

    fn run(&self, argv: &[&str]) -> Output {
        self.command(None, argv).output().unwrap()
    }
}

/// A process killed (with its PID namespace: unshare --kill-child) and waited for on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// The host pid of PID 1 in its namespace: unshare's child.
    fn pid1(&self) -> u32 {
        let id = self.0.id();
        wait_until(
            "unshare to start its child",
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            },
        )
    }

    fn exit_code_within(&mut self, limit: Duration) -> Option<i32> {
        wait_until("the container to exit", limit, || {
            self.0.try_wait().unwrap()
        })
        .code()
    }
}

fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn nginx_serves_its_welcome_page() {
    if !ready("nginx_serves_its_welcome_page", "debian-family") {
        return;
    }
    let rootfs = Rootfs::new("debian-family", "docker.io/library/nginx:latest");
    let config = &rootfs.image.config;
    assert_eq!(config.cmd, ["nginx", "-g", "daemon off;"]);
    assert!(config.entrypoint.is_empty());
    assert_eq!(config.exposed_ports, ["80/tcp"]);
    assert_eq!(config.stop_signal.as_deref(), Some("SIGQUIT"));
    let ns = Netns::new(format!("skiff-img-{}", std::process::id()));
    ns.loopback_up();
    let out_path = rootfs.dir.path().join("stdout");
    let argv: Vec<&str> = config.cmd.iter().map(String::as_str).collect();
    let mut nginx = Running(
        rootfs
            .command(Some(&ns), &argv)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Only the namespace's own loopback: nothing leaves it.
    let body = wait_until("nginx to answer", Duration::from_secs(30), || {
        let out = ns
            .exec("curl")
            .args(["-s", "--max-time", "2", "http://127.0.0.1:80/"])
            .output()
            .unwrap();
        let body = text(&out.stdout);
        body.contains("<title>").then_some(body)
    });
    assert!(body.contains("Welcome to nginx!"), "{body}");
    let missing = ns
        .exec("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("http://127.0.0.1/nope")
        .output()
        .unwrap();
    assert_eq!(text(&missing.stdout), "404");
    // The access log is the container's stdout, as in the official image.
    wait_until("the access log on stdout", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&out_path).unwrap_or_default();
        (log.contains("\"GET / HTTP/1.1\" 200") && log.contains("\"GET /nope HTTP/1.1\" 404"))
            .then_some(())
    });
    // The image's StopSignal makes nginx finish gracefully with 0.
    kill("QUIT", nginx.pid1());
    assert_eq!(nginx.exit_code_within(Duration::from_secs(15)), Some(0));
}

#[test]
fn debian_has_coreutils() {
    if !ready("debian_has_coreutils", "debian-family") {
        return;
    }
    let rootfs = Rootfs::new("debian-family", "docker.io/library/debian:bookworm");
    assert_eq!(rootfs.image.config.cmd, ["bash"]);
    let date = rootfs.run(&["date", "-u", "+%Y"]);
    assert!(date.status.success(), "{}", text(&date.stderr));
    assert!(text(&date.stdout).trim().parse::<u32>().unwrap() >= 2025);
    let bad = rootfs.run(&["date", "foo"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("invalid date"),
        "stderr: {}",
        text(&bad.stderr)
    );
    let out = rootfs.run(&["sh", "-c", "cat /etc/os-release; ls /; sleep 0.1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Debian GNU/Linux 12"));
    assert!(text(&out.stdout).contains("usr"));
    // Host files mmdebstrap copies are not in the image.
    let host = rootfs.run(&["ls", "/etc/hostname", "/etc/resolv.conf"]);
    assert!(!host.status.success());
}

#[test]
fn python_prints() {
    if !ready("python_prints", "debian-family") {
        return;
    }
    let rootfs = Rootfs::new("debian-family", "docker.io/library/python:3");
    let out = rootfs.run(&["python", "-c", "print(1)"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n");
    // The standard library beyond python3-minimal.
    let out = rootfs.run(&[
        "python3",
        "-c",
        "import json, http.server, sqlite3, sys; print(json.dumps(sys.version_info[:2]))",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "[3, 11]\n");
}

#[test]
fn pause_exits_zero_on_sigterm() {
    if !ready("pause_exits_zero_on_sigterm", "pause") {
        return;
    }
    let rootfs = Rootfs::new("pause", "registry.k8s.io/pause:3.10");
    assert_eq!(rootfs.image.config.entrypoint, ["/pause"]);
    let mut pause = Running(
        rootfs
            .command(None, &["/pause"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = pause.pid1();
    // Wait for chroot to exec pause and pause to catch SIGTERM (bit 15 of SigCgt).
    wait_until("pause to handle SIGTERM", Duration::from_secs(10), || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
        let caught = u64::from_str_radix(caught.trim(), 16).ok()?;
        (caught & (1 << 14) != 0).then_some(())
    });
    kill("TERM", pid);
    assert_eq!(pause.exit_code_within(Duration::from_secs(10)), Some(0));
}

#[test]
fn ubuntu_says_it_is_debian() {
    let layout = images_dir().join("debian-family");
    if !layout.join("index.json").is_file() {
        eprintln!(
            "SKIPPING ubuntu_says_it_is_debian: {} not built",
            layout.display()
        );
        return;
    }
    let read = |digest: &str| -> serde_json::Value {
        let path = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_of = |name: &str| {
        let entry = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
            .unwrap_or_else(|| panic!("{name} not in the layout"));
        read(entry["digest"].as_str().unwrap())
    };
    let ubuntu = manifest_of("docker.io/library/ubuntu:latest");
    let debian = manifest_of("docker.io/library/debian:latest");
    // The same root filesystem...
    assert_eq!(ubuntu["layers"], debian["layers"]);
    // ...and a label that says so.
    let config = read(ubuntu["config"]["digest"].as_str().unwrap());
    let note = config["config"]["Labels"]["dev.skiff.image.note"]
        .as_str()
        .unwrap();
    assert!(note.contains("NOT Ubuntu"), "{note}");
}

/// What the agent's `--preload-images target/images` does: every layout imports (the cache
/// directory is skipped) and every name the suites ask for resolves.
#[test]
fn preload_imports_every_image() {
    if !images_dir().join("debian-family/index.json").is_file() {
        eprintln!("SKIPPING preload_imports_every_image: cargo xtask images has not run (as root)");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("real-images-")
        .tempdir_in(images_dir().join(".."))
        .unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    let imported = store.import_dir(&images_dir()).unwrap();
    for name in [
        "nginx",
        "nginx:stable",
        "nginx:1.14.2",
        "busybox",
        "debian:bookworm",
        "debian",
        "ubuntu",
        "python:3",
        "python:3.11",
        "python",
        "registry.k8s.io/pause:3.10",
        "registry.k8s.io/pause",
        "gcr.io/google_containers/pause",
        "gcr.io/google_containers/pause:3.2",
        "kubia:v1",
    ] {
        assert!(store.contains(name), "{name} not among {imported:?}");
    }
}
