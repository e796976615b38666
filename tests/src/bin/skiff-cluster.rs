//! `skiff-cluster up|down`: a local multi-node cluster (see `skiff_e2e::cluster`); what
//! `cargo xtask cluster` runs after building the binaries and images.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use skiff_e2e::cluster;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-cluster",
    about = "local multi-node skiff cluster in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per run; boxing the flags would only obscure them"
)]
enum Cmd {
    /// Start skiff-control and N agents, each node in its own network namespace.
    Up {
        /// Number of nodes (node-1 ... node-N).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// State, logs and the kubeconfig.
        #[arg(long)]
        dir: PathBuf,
        /// Also copy the admin kubeconfig here.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Name prefix of namespaces and devices (at most 6 characters).
        #[arg(long, default_value = "skiff")]
        name: String,
        /// The node network is 172.31.<INDEX>.0/24.
        #[arg(long, default_value_t = 250)]
        index: u8,
        /// Images to preload on every node.
        #[arg(long)]
        images: Option<PathBuf>,
        /// The agents' --proxy-mode.
        #[arg(long, default_value = "ebpf")]
        proxy_mode: String,
        /// Registry mirrors for every agent: a k3s-style registries.yaml (the agents'
        /// --registry-config).
        #[arg(long, value_name = "FILE")]
        registry_config: Option<PathBuf>,
        /// skiff-control binary.
        #[arg(long)]
        control_bin: PathBuf,
        /// skiff-agent binary.
        #[arg(long)]
        agent_bin: PathBuf,
        /// Extra agent argument (repeat).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Extra skiff-control argument (repeat).
        #[arg(long = "control-arg", allow_hyphen_values = true)]
        control_args: Vec<String>,
    },
    /// Remove everything `up` made.
    Down {
        /// The directory given to `up`.
        #[arg(long)]
        dir: PathBuf,
        /// skiff-agent binary (runs `skiff-agent cleanup` in each node).
        #[arg(long)]
        agent_bin: PathBuf,
        /// Keep the store and the nodes' state, so that the next `up` with this --dir comes
        /// back with the same objects (by default they are deleted).
        #[arg(long)]
        keep_data: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Up {
            nodes,
            dir,
            kubeconfig,
            name,
            index,
            images,
            proxy_mode,
            registry_config,
            control_bin,
            agent_bin,
            agent_args,
            control_args,
        } => {
            let state = cluster::up(&cluster::Options {
                name,
                index,
                nodes,
                dir: dir.clone(),
                control_bin: control_bin.clone(),
                agent_bin,
                images,
                proxy_mode,
                registry_config,
                agent_args,
                control_args,
            })?;
            let config = match kubeconfig {
                Some(path) => {
                    std::fs::copy(&state.kubeconfig, &path)?;
                    path
                }
                None => state.kubeconfig.clone(),
            };
            println!("cluster up: {} node(s) Ready", state.nodes.len());
            for n in &state.nodes {
                println!(
                    "  {}  {}  podCIDR {}  netns {}  log {}",
                    n.name,
                    n.ip,
                    n.pod_cidr,
                    n.netns,
                    n.log.display()
                );
            }
            println!(
                "use it with:\n  export KUBECONFIG={}\n  kubectl get nodes",
                config.display()
            );
            let server = std::fs::read_to_string(&state.kubeconfig)?
                .lines()
                .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
                .unwrap_or_default();
            println!(
                "give a colleague read-only access to one namespace:\n  {} user alice \\\n    \
                 --data-dir {} --server {server} --kubeconfig alice.kubeconfig\n  \
                 kubectl create rolebinding alice-view --clusterrole=view --user=alice -n default",
                control_bin.display(),
                cluster::store_dir(&dir).display(),
            );
            Ok(())
        }
        Cmd::Down {
            dir,
            agent_bin,
            keep_data,
        } => {
            let data = if keep_data {
                cluster::Data::Keep
            } else {
                cluster::Data::Remove
            };
            cluster::down(&dir, &agent_bin, data)?;
            match data {
                cluster::Data::Remove => println!(
                    "cluster in {} removed, with its store: the next `up` starts empty \
                     (`down --keep-data` keeps it)",
                    dir.display()
                ),
                cluster::Data::Keep => println!(
                    "cluster in {} stopped; its store is kept in {}: the next `up` with this \
                     --dir comes back with the same objects",
                    dir.display(),
                    cluster::store_dir(&dir).display()
                ),
            }
            Ok(())
        }
    }
}
