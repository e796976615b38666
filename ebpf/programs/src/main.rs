//! skiff's socket-level load balancer for ClusterIP services (cgroup sock_addr programs).
//!
//! Translation happens once per socket instead of once per packet:
//! - `connect4` (TCP, connected UDP) rewrites the destination VIP:port to a backend;
//! - `sendmsg4` does the same for each datagram of an unconnected UDP socket;
//! - `recvmsg4` makes datagrams from that backend appear to come from the VIP;
//! - `getpeername4` reports the VIP for a connected socket.
//!
//! The maps follow Cilium's lb4 layout; their types live in `skiff-ebpf-common`. A service
//! without backends refuses connections with ECONNREFUSED, as kube-proxy's REJECT rule does.
//! Anything unexpected lets the call through untranslated: the node routes the service range
//! to a dead end (a blackhole route; this kernel has no dummy driver), so an untranslated VIP
//! fails there instead of being sent somewhere wrong.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: no copies on the 512-byte BPF stack"
)]

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_F_NO_PREALLOC},
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
    EbpfContext,
};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, Backend, MaglevTable, RevNat, ServiceKey, ServiceValue,
    SockRevNatKey, SockRevNatValue, MAGLEV_TABLE_SIZE, MAX_AFFINITY, MAX_ENTRIES,
    MAX_MAGLEV_SERVICES, MAX_SOCK_REV_NAT, PROTO_TCP, PROTO_UDP, SVC_FLAG_AFFINITY,
    SVC_FLAG_MAGLEV,
};

/// sock_addr programs: 1 lets the call proceed, 0 fails it (with EPERM unless `bpf_set_retval`
/// chose another error).
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

// Names must match `skiff_ebpf_common::maps` (the agent checks that it finds every one).
#[map(name = "lb4_services")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_ENTRIES, 0);

#[map(name = "lb4_backends")]
static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_ENTRIES, 0);

#[map(name = "lb4_reverse_nat")]
static REVERSE_NAT: HashMap<u16, RevNat> = HashMap::pinned(MAX_ENTRIES, 0);

#[map(name = "lb4_reverse_sk")]
static REVERSE_SK: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(MAX_SOCK_REV_NAT, 0);

#[map(name = "lb4_affinity")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY, 0);

// Tables are 64 KiB each: allocate them only for services that use Maglev.
#[map(name = "lb4_maglev")]
static MAGLEV: HashMap<u16, MaglevTable> = HashMap::pinned(MAX_MAGLEV_SERVICES, BPF_F_NO_PREALLOC);

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) => verdict,
        // Let the connect through untranslated (see the module docs).
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

/// Why a translation did not happen; every case lets the call through.
enum Error {
    /// The slot or backend a service entry names is missing (an update in progress).
    Inconsistent,
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
        None => return Ok(ALLOW),
    };
    if svc.count == 0 {
        return Ok(refuse());
    }
    let backend_id = select_backend(ctx, &mut key, &svc)?;
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

/// Picks a backend id: the client's sticky backend if ClientIP affinity holds one, else from the
/// Maglev table or a random slot.
#[inline(always)]
fn select_backend(
    ctx: &SockAddrContext,
    key: &mut ServiceKey,
    svc: &ServiceValue,
) -> Result<u32, Error> {
    if svc.flags & SVC_FLAG_AFFINITY == 0 {
        return pick(ctx, key, svc);
    }
    let akey = AffinityKey {
        // SAFETY: bpf_get_netns_cookie takes the program's context.
        client_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        rev_nat_index: svc.rev_nat_index,
        _pad: [0; 6],
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(svc.affinity_timeout_secs) * 1_000_000_000;
    // SAFETY: copied out at once.
    if let Some(old) = unsafe { AFFINITY.get(&akey) }.copied() {
        // The agent purges entries of backends it removes from the service; checking the
        // backend map as well covers a backend deleted altogether.
        if now.wrapping_sub(old.last_used_ns) <= timeout_ns
            && BACKENDS.get_ptr(old.backend_id).is_some()
        {
            remember(&akey, now, old.backend_id);
            return Ok(old.backend_id);
        }
    }
    let id = pick(ctx, key, svc)?;
    remember(&akey, now, id);
    Ok(id)
}

#[inline(always)]
fn remember(akey: &AffinityKey, now: u64, backend_id: u32) {
    let val = AffinityValue {
        last_used_ns: now,
        backend_id,
        _pad: 0,
    };
    let _ = AFFINITY.insert(akey, &val, 0);
}

#[inline(always)]
fn pick(ctx: &SockAddrContext, key: &mut ServiceKey, svc: &ServiceValue) -> Result<u32, Error> {
    if svc.flags & SVC_FLAG_MAGLEV != 0 {
        if let Some(id) = maglev(ctx, key, svc) {
            return Ok(id);
        }
        // No table (yet): fall back to a random slot.
    }
    // Checked again here (xlate refuses count 0) so that no division-by-zero panic path is
    // compiled in: the verifier rejects programs that can end in one.
    let Some(count) = core::num::NonZeroU32::new(u32::from(svc.count)) else {
        return Err(Error::Inconsistent);
    };
    // SAFETY: no arguments.
    let rnd = unsafe { bpf_get_prandom_u32() };
    key.backend_slot = (rnd % count) as u16 + 1;
    // SAFETY: copied out at once.
    match unsafe { SERVICES.get(&*key) } {
        Some(slot) => Ok(slot.backend_id),
        None => Err(Error::Inconsistent),
    }
}

/// Looks the flow up in the service's Maglev table. A flow is the socket's bound source address
/// and port with the frontend, so a client that binds the same source port again reaches the
/// same backend; an unbound socket (TCP before connect) hashes its cookie instead, so it still
/// keeps one backend for its lifetime.
#[inline(always)]
fn maglev(ctx: &SockAddrContext, key: &ServiceKey, svc: &ServiceValue) -> Option<u32> {
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
    h = mix(h, key.address);
    h = mix(h, u32::from(key.dport) << 8 | u32::from(key.proto));
    // Lemire's multiply-shift range reduction: a 32-bit hash times M, shifted right by 32, is
    // below M. The compiler knows that too and would drop the bounds check, then fold the
    // arithmetic into a form whose bound the verifier tracks too loosely; hiding the value
    // from it keeps an explicit `idx < M` check that the verifier follows.
    let idx =
        core::hint::black_box(((u64::from(fmix(h)) * MAGLEV_TABLE_SIZE as u64) >> 32) as usize);
    let table = MAGLEV.get_ptr(svc.rev_nat_index)?;
    // SAFETY: the pointer comes from a successful lookup; `get` bounds-checks the index.
    let id = unsafe { (*table).backend_ids.get(idx).copied() }?;
    (id != 0).then_some(id)
}

/// One MurmurHash3 block step.
#[inline(always)]
fn mix(h: u32, v: u32) -> u32 {
    let k = v
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser.
#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
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
        Some(svc) if svc.address == rev.address && svc.port == rev.port => {}
        _ => return Ok(()),
    }
    // SAFETY: as above.
    unsafe {
        (*sa(ctx)).user_ip4 = rev.address;
        (*sa(ctx)).user_port = u32::from(rev.port);
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

// The kernel only lets GPL-compatible programs call GPL-only helpers; these programs use none,
// so they carry the project's licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
