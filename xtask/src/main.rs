//! `cargo xtask`: setup, build, deploy, test and benchmarks for skiff.

mod bench_api;
mod bench_api_crd;
mod bench_dns;
mod bench_pods;
mod bench_proxy;
mod bench_scheduler;
mod cluster;
mod conformance;
mod deploy;
mod ebpf;
mod fuzz;
mod gen_list_types;
mod images;
mod registry;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "skiff's build, deploy, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the project needs (kubectl in a virtualenv under target/tools).
    Setup,
    /// Build release binaries.
    Build,
    /// Build the eBPF programs (ebpf/programs) into target/ebpf/skiff-ebpf for the agent.
    BuildEbpf,
    /// Build the sample images as OCI layouts in target/images: kubia:v1/v2, busybox, pause,
    /// and Debian 12 based debian, ubuntu (really Debian), nginx and python (needs root and
    /// mmdebstrap the first time; cached by package versions after that).
    Images {
        /// Instead: build the Debian root filesystems again ignoring the cache, in a scratch
        /// directory, and fail unless the layer digests match the cached build's (or, when
        /// package versions changed since, a second fresh build's).
        #[arg(long)]
        verify_reproducible: bool,
    },
    /// A local registry (Debian's docker-registry) serving target/images under their origin
    /// names: `registry up [--addr A] [--dir D]`, `registry push`, `registry down [--purge]`.
    Registry {
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
    /// Set up, build and start skiff on this host (systemd units, or supervised processes
    /// where systemd is not PID 1), or with --hosts on several hosts over ssh; prints how to
    /// use kubectl.
    // Boxed: its many flags make it much larger than the other variants.
    Deploy(Box<deploy::DeployArgs>),
    /// Stop what `deploy` started (here, or with --hosts on those hosts).
    Stop(deploy::StopArgs),
    /// A local multi-node cluster: `cluster up --nodes N`, `cluster down`.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Check formatting (rustfmt) and lints (clippy, warnings denied), as CI does first.
    Lint,
    /// Run the lint gates, then the whole test suite tier by tier (unit, component,
    /// privileged, end-to-end with the real kubectl, conformance with kr8s's tests and the
    /// pass-count ratchet); or, with --tier, one tier only.
    Test {
        /// Run only this tier (without the lint gates).
        #[arg(long, value_enum)]
        tier: Option<test::Tier>,
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run an external test suite (kr8s's, as published) against a fresh local cluster (or
    /// --kubeconfig), classify its failures into docs/conformance.md and print
    /// `kr8s: N passed, M failed` last.
    Conformance(conformance::Args),
    /// Fuzz the API in process (control/tests/fuzz_api.rs) for N minutes: generated paths,
    /// queries, bodies and patches for every kind; prints the inputs tried per category and
    /// every failure with the seed that replays it.
    Fuzz(fuzz::Args),
    /// Generate the built-in kinds' list types and map types for server-side apply
    /// (control/src/apiserver/apply/builtin_types.json) from Kubernetes' published OpenAPI:
    /// `gen-list-types --source "kubernetes release-1.36 swagger.json" SPEC...` (the v2
    /// swagger.json or the v3 api/openapi-spec/v3 directory).
    GenListTypes {
        /// What the spec is (its Kubernetes version), written into the table.
        #[arg(long)]
        source: String,
        /// Spec files or directories.
        #[arg(required = true)]
        inputs: Vec<std::path::PathBuf>,
    },
    /// Run a benchmark and write its report under docs/.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// API server: create rate, create/get/list latency with 10 000 pods, watch fan-out, idle RSS.
    Api(bench_api::Args),
    /// Service datapath: direct vs eBPF vs iptables vs nftables, 1 to 10 000 Services;
    /// writes docs/bench/proxy.md and proxy.svg (needs root).
    Proxy(bench_proxy::Args),
    /// Pod startup latency (create to Running, 50 pods) and container create+start+delete;
    /// writes docs/bench/pods.md (needs root).
    Pods(bench_pods::Args),
    /// Cluster DNS responder on one core: dnsperf QPS for cached and NXDOMAIN names, p50/p99
    /// at half that rate, zone build time and memory, 1 000 and 10 000 Services; writes
    /// docs/bench/dns.md (needs dnsperf).
    Dns(bench_dns::Args),
    /// Scheduler: pods bound per second end to end with 100 fake Nodes; writes
    /// docs/bench/scheduler.md and a section of docs/benchmarks.md.
    Scheduler(bench_scheduler::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build => {
            ebpf::build()?;
            util::cargo(&[
                "build",
                "--release",
                "-p",
                "skiff-control",
                "-p",
                "skiff-agent",
            ])
        }
        Command::BuildEbpf => ebpf::build(),
        Command::Images {
            verify_reproducible: false,
        } => images::build(),
        Command::Images {
            verify_reproducible: true,
        } => images::verify_reproducible(),
        Command::Registry { command } => registry::run(command),
        Command::Deploy(args) => deploy::deploy(*args),
        Command::Stop(args) => deploy::stop(args),
        Command::Cluster { command } => cluster::run(command),
        Command::Lint => test::lint(),
        Command::GenListTypes { source, inputs } => {
            gen_list_types::run(&inputs, &source, &util::root().join(gen_list_types::OUTPUT))
        }
        Command::Test { tier, args } => test::run(tier, &args),
        Command::Conformance(args) => conformance::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Bench {
            which: Bench::Api(args),
        } => bench_api::run(args),
        Command::Bench {
            which: Bench::Proxy(args),
        } => bench_proxy::run(args),
        Command::Bench {
            which: Bench::Pods(args),
        } => bench_pods::run(args),
        Command::Bench {
            which: Bench::Scheduler(args),
        } => bench_scheduler::run(args),
        Command::Bench {
            which: Bench::Dns(args),
        } => bench_dns::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn deploy_hosts_arguments() {
        let Command::Deploy(d) = parse(&[
            "deploy",
            "--hosts",
            "root@a,b, root@c",
            "--ssh-opt",
            "-p 2222",
            "--ssh-opt=-i /k",
            "--control-host",
            "b",
            "--remote-dir",
            "/tmp/s",
        ])
        .unwrap() else {
            panic!("not deploy")
        };
        assert_eq!(d.hosts.hosts, ["root@a", "b", "root@c"]);
        assert_eq!(d.hosts.ssh_opts, ["-p 2222", "-i /k"]);
        assert_eq!(d.hosts.remote_dir, std::path::Path::new("/tmp/s"));
        assert_eq!(d.cluster.control_host.as_deref(), Some("b"));
        assert_eq!(d.cluster.control_address, None);

        let Command::Deploy(d) = parse(&["deploy"]).unwrap() else {
            panic!("not deploy")
        };
        assert!(d.hosts.hosts.is_empty());
        assert_eq!(d.hosts.remote_dir, std::path::Path::new("/var/lib/skiff"));
    }

    #[test]
    fn deploy_rejects_bad_combinations() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["deploy", "--hosts", "a,,b"]).contains("empty host name"));
        assert!(err(&["deploy", "--hosts=-oProxyCommand=x"]).contains("starts with '-'"));
        assert!(err(&["deploy", "--control-host", "a"]).contains("--hosts"));
        assert!(err(&["deploy", "--hosts", "a", "--no-agent"]).contains("cannot be used"));
    }

    #[test]
    fn test_tier_and_extra_arguments() {
        let Command::Test { tier, args } =
            parse(&["test", "--tier", "component", "--", "--test", "api"]).unwrap()
        else {
            panic!("not test")
        };
        assert_eq!(tier, Some(test::Tier::Component));
        assert_eq!(args, ["--test", "api"]);
        let Command::Test { tier, args } = parse(&["test", "--", "--", "--nocapture"]).unwrap()
        else {
            panic!("not test")
        };
        assert_eq!(tier, None);
        assert_eq!(args, ["--", "--nocapture"]);
        assert!(parse(&["test", "--tier", "slow"]).is_err());
    }

    #[test]
    fn stop_hosts_arguments() {
        let Command::Stop(s) =
            parse(&["stop", "--hosts", "a,b", "--ssh-opt", "-p 2", "--cleanup"]).unwrap()
        else {
            panic!("not stop")
        };
        assert_eq!(s.hosts.hosts, ["a", "b"]);
        assert_eq!(s.hosts.ssh_opts, ["-p 2"]);
        assert!(s.cleanup);
        assert!(parse(&["stop", "--control-host", "a"]).is_err());
    }
}
