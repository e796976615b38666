//! Socket-level load balancing for ClusterIPs (cgroup sock_addr programs): translation happens
//! once per socket instead of once per packet.
//! - `connect4` (TCP, connected UDP) rewrites the destination VIP:port to a backend;
//! - `sendmsg4` does the same for each datagram of an unconnected UDP socket;
//! - `recvmsg4` makes datagrams from that backend appear to come from the VIP;
//! - `getpeername4` reports the VIP for a connected socket.
//!
//! A connection to one of the node's own addresses on a NodePort is translated here too, so
//! processes on the node reach NodePorts without the tc programs.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use skiff_ebpf_common::{ServiceKey, SockRevNatKey, SockRevNatValue, PROTO_TCP, PROTO_UDP};

use crate::lb::{mix, select_backend, Error};
use crate::maps::{BACKENDS, NODE_ADDRS, REVERSE_NAT, REVERSE_SK, SERVICES};

/// sock_addr programs: 1 lets the call proceed, 0 fails it (with EPERM unless `bpf_set_retval`
/// chose another error).
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) => verdict,
        // Let the connect through untranslated (see the crate docs).
        Err(_) => ALLOW,
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    match try_sendmsg4(&ctx) {
        Ok(verdict) => verdict,
        Err(_) => ALLOW,
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    // recvmsg4 must return 1; it can only rewrite the address.
    let _ = try_rev_xlate(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    // getpeername4 must return 1 as well.
    let _ = try_rev_xlate(&ctx);
    ALLOW
}

#[inline(always)]
fn sa(ctx: &SockAddrContext) -> *mut bpf_sock_addr {
    ctx.sock_addr
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Result<i32, Error> {
    // SAFETY: the kernel hands sock_addr programs a valid context; these are 4-byte loads of
    // fields readable by connect4.
    let proto = unsafe { (*sa(ctx)).protocol };
    if proto != u32::from(PROTO_TCP) && proto != u32::from(PROTO_UDP) {
        return Ok(ALLOW);
    }
    xlate(ctx, proto as u8)
}

#[inline(always)]
fn try_sendmsg4(ctx: &SockAddrContext) -> Result<i32, Error> {
    // sendmsg4 runs only for UDP (and only when the caller names a destination).
    xlate(ctx, PROTO_UDP)
}

/// Rewrites the destination if it is a service: the common part of connect4 and sendmsg4.
#[inline(always)]
fn xlate(ctx: &SockAddrContext, proto: u8) -> Result<i32, Error> {
    // SAFETY: valid context (see try_connect4); user_ip4/user_port are readable and writable in
    // connect4 and sendmsg4.
    let (vip, vport) = unsafe { ((*sa(ctx)).user_ip4, (*sa(ctx)).user_port as u16) };
    let mut key = ServiceKey {
        address: vip,
        dport: vport,
        backend_slot: 0,
        proto,
        scope: 0,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    let svc = match unsafe { SERVICES.get(&key) } {
        Some(svc) => *svc,
        None => {
            // A NodePort on one of the node's addresses?
            if NODE_ADDRS.get_ptr(vip).is_none() {
                return Ok(ALLOW);
            }
            key.address = 0;
            // SAFETY: as above.
            match unsafe { SERVICES.get(&key) } {
                Some(svc) => *svc,
                None => return Ok(ALLOW),
            }
        }
    };
    if svc.count == 0 {
        return Ok(refuse());
    }
    // SAFETY: bpf_get_netns_cookie takes the program's context.
    let client = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let backend_id = select_backend(client, || flow_hash(ctx, vip, vport, proto), &mut key, &svc)?;
    // SAFETY: copied out at once, as above.
    let backend = match unsafe { BACKENDS.get(backend_id) } {
        Some(b) => *b,
        None => return Err(Error::Inconsistent),
    };

    // SAFETY: bpf_get_socket_cookie takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = SockRevNatKey {
        cookie,
        address: backend.address,
        port: backend.port,
        _pad: 0,
    };
    let rev = SockRevNatValue {
        address: vip,
        port: vport,
        rev_nat_index: svc.rev_nat_index,
    };
    // An LRU map makes room by itself; a failed insert only costs the VIP in replies.
    let _ = REVERSE_SK.insert(&rev_key, &rev, 0);

    // SAFETY: valid context; both fields are writable in connect4 and sendmsg4.
    unsafe {
        (*sa(ctx)).user_ip4 = backend.address;
        (*sa(ctx)).user_port = u32::from(backend.port);
    }
    Ok(ALLOW)
}

/// Fails the syscall with ECONNREFUSED, as a connection to a service without endpoints does with
/// kube-proxy.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: bpf_set_retval only sets the error the syscall returns when we return 0.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// The Maglev hash of a socket's flow: its bound source address and port with the frontend, so
/// a client that binds the same source port again reaches the same backend; an unbound socket
/// (TCP before connect) hashes its cookie instead, so it still keeps one backend for its
/// lifetime.
#[inline(always)]
fn flow_hash(ctx: &SockAddrContext, vip: u32, vport: u16, proto: u8) -> u32 {
    // SAFETY: `sk` is always set for sock_addr programs; src_ip4 and src_port are readable.
    let (src_ip, src_port) = unsafe {
        let sk = (*sa(ctx)).__bindgen_anon_1.sk;
        ((*sk).src_ip4, (*sk).src_port)
    };
    let mut h = 0x5eed_u32;
    if src_port != 0 {
        h = mix(h, src_ip);
        h = mix(h, src_port);
    } else {
        // SAFETY: bpf_get_socket_cookie takes the program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        h = mix(h, cookie as u32);
        h = mix(h, (cookie >> 32) as u32);
    }
    h = mix(h, vip);
    mix(h, u32::from(vport) << 8 | u32::from(proto))
}

/// recvmsg4/getpeername4: shows the VIP instead of the backend the socket was sent to.
#[inline(always)]
fn try_rev_xlate(ctx: &SockAddrContext) -> Result<(), Error> {
    // SAFETY: valid context; user_ip4/user_port are readable and writable in recvmsg4 and
    // getpeername4; bpf_get_socket_cookie takes the context.
    let key = unsafe {
        SockRevNatKey {
            cookie: bpf_get_socket_cookie(ctx.as_ptr()),
            address: (*sa(ctx)).user_ip4,
            port: (*sa(ctx)).user_port as u16,
            _pad: 0,
        }
    };
    // SAFETY: copied out at once.
    let Some(rev) = (unsafe { REVERSE_SK.get(&key) }).copied() else {
        return Ok(());
    };
    // Only while the service still exists with that frontend (Cilium checks the same): a
    // deleted service's sockets show their real peer again.
    // SAFETY: copied out at once.
    match unsafe { REVERSE_NAT.get(rev.rev_nat_index) }.copied() {
        // A NodePort's frontend address is 0.0.0.0 (any node address).
        Some(svc) if (svc.address == rev.address || svc.address == 0) && svc.port == rev.port => {}
        _ => return Ok(()),
    }
    // SAFETY: as above.
    unsafe {
        (*sa(ctx)).user_ip4 = rev.address;
        (*sa(ctx)).user_port = u32::from(rev.port);
    }
    Ok(())
}
