//! skiff-agent: the node agent (pod runtime, pod networking, eBPF service proxy).
//!
//! Not implemented yet: the node agent and the datapath are the next milestones. Until then the
//! binary says so instead of pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!(
        "skiff-agent {}: the node agent is not implemented yet; only the control plane \
         (skiff-control) is available in this version. See ARCHITECTURE.md for the plan.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
