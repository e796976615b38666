//! `cargo xtask cluster up|down`: a local multi-node cluster on this machine (nodes in network
//! namespaces joined by a private bridge; see tests/src/cluster.rs), for trying skiff out and
//! for the end-to-end tests.

use std::path::PathBuf;
use std::process::Command;

use clap::{Args, Subcommand};

use crate::{ebpf, images, setup, util};

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Build, then start skiff-control and N agents (node-1 ... node-N).
    Up(UpArgs),
    /// Stop and remove everything `up` made.
    Down(DirArgs),
}

/// Where the cluster keeps its state.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// State, logs and kubeconfig of the cluster.
    #[arg(long, default_value_os_t = util::root().join("target/cluster"))]
    dir: PathBuf,
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

/// Runs `cluster up` or `cluster down`.
pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    anyhow::ensure!(
        util::is_root(),
        "the local cluster needs root (network namespaces, containers, BPF)"
    );
    match command {
        ClusterCommand::Up(args) => {
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
            ])?;
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
        ClusterCommand::Down(args) => {
            let status = Command::new(bin("skiff-cluster"))
                .arg("down")
                .arg("--dir")
                .arg(&args.dir)
                .arg("--agent-bin")
                .arg(bin("skiff-agent"))
                .status()?;
            anyhow::ensure!(status.success(), "cluster down failed");
            Ok(())
        }
    }
}
