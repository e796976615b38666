//! skiff's eBPF service load balancer.
//!
//! - [`sock`]: socket-level load balancing for ClusterIPs (cgroup sock_addr programs), once
//!   per socket instead of once per packet;
//! - [`nodeport`]: NodePorts and external IPs for traffic from outside the node (tc programs on
//!   the external interfaces), with connection tracking, reverse NAT and SNAT for backends on
//!   other nodes;
//! - [`lb`]: backend selection shared by both; [`maps`]: the maps, after Cilium's lb4 layout,
//!   with their types in `skiff-ebpf-common`.
//!
//! Anything unexpected lets the call or packet through untranslated: the node routes the
//! service range to a dead end, so an untranslated VIP fails there instead of being sent
//! somewhere wrong.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: no copies on the 512-byte BPF stack"
)]

mod lb;
mod maps;
mod nodeport;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

// The kernel only lets GPL-compatible programs call GPL-only helpers. bpf_redirect_neigh and
// bpf_fib_lookup are GPL-only, so the programs are dual-licensed for the kernel's check.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
