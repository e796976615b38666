//! `cargo xtask cluster up|down`: a local multi-node cluster on this machine (nodes in network
//! namespaces joined by a private bridge; see tests/src/cluster.rs), for trying skiff out and
//! for the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, Subcommand};

use crate::{ebpf, images, registry, setup, util};

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Build, then start skiff-control and N agents (node-1 ... node-N).
    Up(UpArgs),
    /// Stop and remove everything `up` made, the store included unless --keep-data.
    Down(DownArgs),
}

/// Where the cluster keeps its state.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// State, logs and kubeconfig of the cluster.
    #[arg(long, default_value_os_t = util::root().join("target/cluster"))]
    dir: PathBuf,
}

/// Options of `cluster down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Keep the API server's store and the nodes' state: the next `up` comes back with the
    /// same objects. Without it they are deleted.
    #[arg(long)]
    keep_data: bool,
    #[command(flatten)]
    dir: DirArgs,
}

/// Options of `cluster up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Write the admin kubeconfig here too.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The agents' service proxy: ebpf, iptables, nftables or none.
    #[arg(long, default_value = "ebpf")]
    proxy_mode: String,
    /// Registry mirrors for every agent: a k3s-style registries.yaml (see the README); the
    /// host's side of the node bridge is 172.31.250.1.
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    #[command(flatten)]
    dir: DirArgs,
}

fn bin(name: &str) -> PathBuf {
    util::root().join("target/debug").join(name)
}

/// Builds what a local cluster runs: the eBPF object, the images, the debug binaries.
fn build() -> anyhow::Result<()> {
    setup::run()?;
    ebpf::build()?;
    images::build()?;
    util::cargo(&[
        "build",
        "-p",
        "skiff-control",
        "-p",
        "skiff-agent",
        "-p",
        "skiff-e2e",
        "--bins",
    ])
}

/// Runs `skiff-cluster down` on the cluster in `dir`, deleting its data unless `keep_data`.
fn down(dir: &Path, keep_data: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new(bin("skiff-cluster"));
    cmd.arg("down")
        .arg("--dir")
        .arg(dir)
        .arg("--agent-bin")
        .arg(bin("skiff-agent"));
    if keep_data {
        cmd.arg("--keep-data");
    }
    anyhow::ensure!(cmd.status()?.success(), "cluster down failed");
    Ok(())
}

/// The conformance suites' cluster: a fresh local cluster of its own (name `skconf`, node
/// network 172.31.249.0/24, so it can run beside a `cluster up` cluster), taken down with its
/// data when dropped unless kept.
///
/// Nothing is preloaded: the nodes pull every image the suites name (`nginx`, `ubuntu`,
/// `gcr.io/google_containers/pause`, ...) from a registry on the host's side of the node
/// bridge, holding the images `cargo xtask images` builds, through registry mirrors
/// (`registries.yaml`) with the origins disabled, so no pull can leave the machine.
pub struct Conformance {
    dir: PathBuf,
    keep: bool,
    registry: Option<registry::Registry>,
}

/// The registries the suites' images name, each mirrored to `<mirror>/<registry>/<repo>`.
const MIRRORED: &[&str] = &[
    "docker.io",
    "gcr.io",
    "registry.k8s.io",
    "quay.io",
    "ghcr.io",
];

/// The agents' registries.yaml: every registry the suites use goes to `mirror` with its name as
/// the first path component (the layout `cargo xtask registry push` writes).
fn mirrors_config(mirror: std::net::SocketAddr) -> String {
    let mut yaml = String::from(
        "# Written by cargo xtask conformance: every pull goes to the registry on the node \
         bridge.\nmirrors:\n",
    );
    for origin in MIRRORED {
        yaml.push_str(&format!(
            "  {origin}:\n    endpoint: [\"http://{mirror}\"]\n    rewrite:\n      \"^(.*)$\": \"{origin}/$1\"\n"
        ));
    }
    // Any other registry: tried at the mirror as it is, never at its origin.
    yaml.push_str(&format!("  \"*\":\n    endpoint: [\"http://{mirror}\"]\n"));
    yaml
}

impl Conformance {
    /// The cluster's node network index: 172.31.INDEX.0/24, the host (API server) at .1.
    const INDEX: u8 = 249;

    /// Builds (unless `prebuilt`: `cargo xtask test` has built the binaries already), then
    /// brings up `nodes` nodes in `dir`, replacing a cluster left there.
    pub fn up(dir: &Path, nodes: usize, keep: bool, prebuilt: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(
            util::is_root(),
            "the conformance cluster needs root (network namespaces, containers, BPF); use \
             --kubeconfig to run against another cluster"
        );
        if prebuilt {
            setup::run()?;
            ebpf::build()?;
            images::build()?;
        } else {
            build()?;
        }
        if dir.join("cluster.json").exists() {
            eprintln!(
                "conformance: taking down the cluster left in {}",
                dir.display()
            );
            down(dir, false)?;
        }
        let registry_dir = dir.with_file_name("registry");
        if registry::running(&registry_dir)?.is_some() {
            registry::down(&registry_dir, false)?;
        }
        std::fs::create_dir_all(dir)?;
        let mirror = std::net::SocketAddr::from(([172, 31, Self::INDEX, 1], 5000));
        let registries = dir.join("registries.yaml");
        std::fs::write(&registries, mirrors_config(mirror))?;
        let mut cmd = Command::new(bin("skiff-cluster"));
        cmd.arg("up")
            .args(["--name", "skconf", "--index"])
            .arg(Self::INDEX.to_string())
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--dir")
            .arg(dir)
            .arg("--registry-config")
            .arg(&registries)
            .arg("--agent-arg=--disable-default-registry-endpoint")
            // The suite is written for kind, which has no metrics-server: its
            // `test_api_resources` expects exactly one resource named `pods`, and
            // metrics.k8s.io has one too (see docs/conformance.md).
            .arg("--control-arg=--resource-metrics-api=false")
            .arg("--control-bin")
            .arg(bin("skiff-control"))
            .arg("--agent-bin")
            .arg(bin("skiff-agent"));
        let mut cluster = Self {
            dir: dir.to_owned(),
            keep,
            registry: None,
        };
        anyhow::ensure!(cmd.status()?.success(), "conformance cluster up failed");
        // The bridge address exists now; the nodes pull only once the suite creates pods.
        let reg = registry::serve(mirror, &registry_dir)?;
        let pushed = reg.push(&images::images_dir())?;
        eprintln!("conformance: {} image tags at {mirror}", pushed.len());
        cluster.registry = Some(reg);
        Ok(cluster)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }
}

impl Drop for Conformance {
    fn drop(&mut self) {
        if self.keep {
            if let Some(reg) = self.registry.take() {
                reg.detach();
            }
            eprintln!(
                "conformance: the cluster keeps running (KUBECONFIG={}); stop it with `cargo \
                 xtask cluster down --dir {}` and `cargo xtask registry down --dir {}`",
                self.kubeconfig().display(),
                self.dir.display(),
                self.dir.with_file_name("registry").display()
            );
        } else {
            if let Err(e) = down(&self.dir, false) {
                eprintln!("conformance: taking the cluster down: {e:#}");
            }
            drop(self.registry.take());
        }
    }
}

/// Runs `cluster up` or `cluster down`.
pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    anyhow::ensure!(
        util::is_root(),
        "the local cluster needs root (network namespaces, containers, BPF)"
    );
    match command {
        ClusterCommand::Up(args) => {
            build()?;
            let mut cmd = Command::new(bin("skiff-cluster"));
            cmd.arg("up")
                .arg("--nodes")
                .arg(args.nodes.to_string())
                .arg("--dir")
                .arg(&args.dir.dir)
                .arg("--proxy-mode")
                .arg(&args.proxy_mode)
                .arg("--images")
                .arg(util::root().join("target/images"))
                .arg("--control-bin")
                .arg(bin("skiff-control"))
                .arg("--agent-bin")
                .arg(bin("skiff-agent"));
            if let Some(k) = &args.kubeconfig {
                cmd.arg("--kubeconfig").arg(k);
            }
            if let Some(r) = &args.registry_config {
                cmd.arg("--registry-config").arg(r);
            }
            anyhow::ensure!(cmd.status()?.success(), "cluster up failed");
            let kubectl = setup::kubectl_path();
            println!(
                "kubectl is at {} (installed by cargo xtask setup); stop with: cargo xtask cluster down",
                kubectl.display()
            );
            Ok(())
        }
        ClusterCommand::Down(args) => down(&args.dir.dir, args.keep_data),
    }
}
