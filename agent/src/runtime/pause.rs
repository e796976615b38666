//! `skiff-agent pause`: the sandbox process of a pod. It creates the pod's network, IPC and UTS
//! namespaces by unsharing them, sets the hostname, brings `lo` up (so containers share
//! localhost), says `ready` on stdout, then sleeps in `sigwait`: it reaps zombies on SIGCHLD and
//! exits on SIGTERM or SIGINT. Containers join its namespaces through `/proc/<pid>/ns/*`.

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The line the pause process prints once its namespaces are ready.
pub const READY: &str = "ready";

#[derive(Debug, Parser)]
#[command(name = "skiff-agent pause")]
struct PauseArgs {
    /// The pod's hostname (set in its new UTS namespace).
    #[arg(long)]
    hostname: String,
    /// hostNetwork: stay in the node's network and UTS namespaces (no hostname, no `lo`).
    #[arg(long)]
    host_network: bool,
    /// hostIPC: stay in the node's IPC namespace.
    #[arg(long)]
    host_ipc: bool,
}

/// Runs the pause process; `args` are the arguments after `pause`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match PauseArgs::try_parse_from(
        std::iter::once(OsString::from("skiff-agent pause")).chain(args),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-agent pause: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &PauseArgs) -> Result<(), String> {
    // Its own session: the agent's terminal signals (Ctrl-C to its process group) must not end
    // the pods' sandboxes. Fails only if already a group leader, which is fine.
    let _ = nix::unistd::setsid();
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let mut flags = CloneFlags::empty();
    if !args.host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    if !args.host_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
    }
    if !args.host_network {
        nix::unistd::sethostname(&args.hostname)
            .map_err(|e| format!("sethostname {:?}: {e}", args.hostname))?;
        loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing to stdout: {e}"))?;
    drop(out);
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap_all(),
            Ok(Signal::SIGTERM | Signal::SIGINT) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("sigwait: {e}")),
        }
    }
}

fn reap_all() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// `ip link set lo up` in the (new) network namespace of this process. A current-thread tokio
/// runtime only for this one request: this process never forks.
fn loopback_up() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        // The loopback device is always index 1 in a new network namespace.
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(1).up().build())
            .execute()
            .await
            .map_err(std::io::Error::other)
    })
}
