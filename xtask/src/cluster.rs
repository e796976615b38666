//! `cargo xtask cluster up|down`: a local multi-node cluster on this machine (nodes in network
//! namespaces joined by a private bridge; see tests/src/cluster.rs), for trying skiff out and
//! for the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, Subcommand};

use crate::{ebpf, images, setup, util};

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
pub struct Conformance {
    dir: PathBuf,
    keep: bool,
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
            eprintln!("conformance: taking down the cluster left in {}", dir.display());
            down(dir, false)?;
        }
        let mut cmd = Command::new(bin("skiff-cluster"));
        cmd.arg("up")
            .args(["--name", "skconf", "--index"])
            .arg(Self::INDEX.to_string())
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--dir")
            .arg(dir)
            .arg("--images")
            .arg(images::images_dir())
            .arg("--control-bin")
            .arg(bin("skiff-control"))
            .arg("--agent-bin")
            .arg(bin("skiff-agent"));
        let cluster = Self {
            dir: dir.to_owned(),
            keep,
        };
        anyhow::ensure!(cmd.status()?.success(), "conformance cluster up failed");
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
            eprintln!(
                "conformance: the cluster keeps running (KUBECONFIG={}); stop it with `cargo \
                 xtask cluster down --dir {}`",
                self.kubeconfig().display(),
                self.dir.display()
            );
        } else if let Err(e) = down(&self.dir, false) {
            eprintln!("conformance: taking the cluster down: {e:#}");
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
