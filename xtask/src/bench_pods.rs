//! `cargo xtask bench pods`: pod startup latency (create to Running, one after the other and
//! all at once, on a one-node local cluster), container create+start+delete, and the
//! throughput of one stream through `kubectl port-forward` against a direct connection, with
//! release binaries. Writes docs/bench/pods.md and pods.json.

use std::path::PathBuf;
use std::process::Command;

use clap::Args as ClapArgs;
use serde_json::Value;

use crate::{ebpf, images, util};

/// Options of the pod benchmark.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Pods per startup measurement.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Rounds of container create+start+delete.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// MiB per port-forward throughput round.
    #[arg(long, default_value_t = 512)]
    forward_mib: usize,
    /// The local cluster's index (its node network 172.31.<index>.0/24), to stay clear of
    /// other clusters on the machine.
    #[arg(long, default_value_t = 240)]
    cluster_index: u8,
    /// Where the report goes.
    #[arg(long, default_value_os_t = util::root().join("docs/bench"))]
    out_dir: PathBuf,
}

/// Runs the benchmark and writes the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        util::is_root(),
        "the pod benchmark needs root (containers, network namespaces)"
    );
    ebpf::build()?;
    images::build()?;
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "skiff-control",
        "-p",
        "skiff-agent",
    ])?;
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "skiff-e2e",
        "--bin",
        "skiff-bench-pods",
    ])?;
    let release = util::root().join("target/release");
    let out = Command::new(release.join("skiff-bench-pods"))
        .arg("--pods")
        .arg(args.pods.to_string())
        .arg("--rounds")
        .arg(args.rounds.to_string())
        .arg("--control-bin")
        .arg(release.join("skiff-control"))
        .arg("--agent-bin")
        .arg(release.join("skiff-agent"))
        .arg("--images")
        .arg(util::root().join("target/images"))
        .arg("--kubectl")
        .arg(util::root().join("target/tools/venv/bin/kubectl"))
        .arg("--forward-mib")
        .arg(args.forward_mib.to_string())
        .arg("--cluster-index")
        .arg(args.cluster_index.to_string())
        .output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "skiff-bench-pods failed");
    let v: Value = serde_json::from_slice(&out.stdout)?;
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(
        args.out_dir.join("pods.json"),
        serde_json::to_vec_pretty(&v)?,
    )?;
    let f = |p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = format!(
        "# Pod startup and container churn\n\n\
Measured by `cargo xtask bench pods --pods {pods} --rounds {rounds}` (release binaries, one-node local cluster,\n\
image `kubia:v1` preloaded, `imagePullPolicy: Never`; load average at the end: {load}).\n\n\
## Pod startup: create request to the pod seen Running through a watch\n\n\
| {pods} pods | p50 | p90 | p99 | max | target |\n|---|---|---|---|---|---|\n\
| one after the other | {s50:.0} ms | {s90:.0} ms | {s99:.0} ms | {smax:.0} ms | p99 < 1 s |\n\
| all at once | {b50:.0} ms | {b90:.0} ms | {b99:.0} ms | {bmax:.0} ms | (Kubernetes SLO: p99 < 5 s) |\n\n\
## Container create+start+delete (runtime library, libcontainer in the shim)\n\n\
| runtime state on | median | p90 | target |\n|---|---|---|---|\n\
| tmpfs (/run) | {tm:.1} ms | {tp:.1} ms | median < 60 ms |\n\
| disk | {dm:.1} ms | {dp:.1} ms | |\n\n\
Anchors: youki publishes 111 ms, runc 224 ms, crun 47 ms for create+start+delete.\n\n\
## One TCP stream through `kubectl port-forward` against a direct connection\n\n\
A pod's server (`nc` running `dd`: {fmib} MiB of zeros per connection) read by kubectl port-forward\n\
(SPDY through the API server and the agent into the pod's network namespace) and, as the\n\
baseline, straight from the pod's IP inside its node's network namespace; the best of {fr}\n\
rounds of each, interleaved.\n\n\
| path | MB/s | target |\n|---|---|---|\n\
| kubectl port-forward | {pf:.0} | >= 200 MB/s |\n\
| direct | {direct:.0} | |\n\
| ratio | {ratio:.2} | |\n",
        pods = args.pods,
        rounds = args.rounds,
        load = load.trim(),
        s50 = f("/startup/sequential/p50_ms"),
        s90 = f("/startup/sequential/p90_ms"),
        s99 = f("/startup/sequential/p99_ms"),
        smax = f("/startup/sequential/max_ms"),
        b50 = f("/startup/burst/p50_ms"),
        b90 = f("/startup/burst/p90_ms"),
        b99 = f("/startup/burst/p99_ms"),
        bmax = f("/startup/burst/max_ms"),
        tm = f("/create_start_delete/tmpfs/median_ms"),
        tp = f("/create_start_delete/tmpfs/p90_ms"),
        dm = f("/create_start_delete/disk/median_ms"),
        dp = f("/create_start_delete/disk/p90_ms"),
        fmib = args.forward_mib,
        fr = f("/port_forward/rounds"),
        pf = f("/port_forward/port_forward_mbps"),
        direct = f("/port_forward/direct_mbps"),
        ratio = f("/port_forward/ratio"),
    );
    std::fs::write(args.out_dir.join("pods.md"), &report)?;
    println!("{report}");
    Ok(())
}
