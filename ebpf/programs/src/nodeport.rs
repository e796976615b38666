//! NodePort (and external/load-balancer IP) load balancing for traffic from outside the node:
//! tc programs on the node's external interfaces.
//!
//! `nodeport_ingress` sees a client's packet to a frontend (a node address on a NodePort, or a
//! service IP routed to the node), picks a backend as the socket programs do, records the
//! connection in `lb4_ct` and rewrites the destination (DNAT). If the route to the backend
//! leaves through one of the external interfaces, the backend is on another node: the source is
//! rewritten to the node's address on that interface and a free port (SNAT), so the reply comes
//! back here, and the packet is redirected straight to that interface. Replies are translated
//! back: from a local backend in `nodeport_egress` (source becomes the frontend again), from a
//! remote one in `nodeport_ingress` (source and destination restored, redirected to the
//! client's interface).
//!
//! A frontend without backends is left to the stack: on a node address no socket listens on a
//! NodePort, so the kernel answers with a reset or port-unreachable, i.e. connection refused,
//! as kube-proxy's reject rules do.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK,
        TC_ACT_SHOT,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
    EbpfContext,
};
use skiff_ebpf_common::{
    Backend, CtKey, CtValue, ServiceKey, CT_DIR_FORWARD, CT_DIR_REPLY, CT_FLAG_SNAT, PROTO_TCP,
    PROTO_UDP, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

use crate::lb::{mix, select_backend, Error};
use crate::maps::{BACKENDS, CT, EXT_IFACES, NODE_ADDRS, SERVICES};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const AF_INET: u8 = 2;
/// Offsets in the IPv4 header.
const IP_TOT_LEN: usize = ETH_HLEN + 2;
const IP_FRAG: usize = ETH_HLEN + 6;
const IP_PROTO: usize = ETH_HLEN + 9;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
/// TCP flags byte and its SYN and ACK bits.
const TCP_FLAGS: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// How many random SNAT ports to try before giving up on a connection.
const SNAT_TRIES: u32 = 8;
/// Marks the tc-level ClientIP affinity key (the client's address) apart from the socket
/// level's network namespace cookies, which count up from 1.
const CLIENT_ADDR_TAG: u64 = 1 << 63;

#[classifier]
pub fn nodeport_ingress(ctx: TcContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(action) => action,
        // Anything unexpected goes up the stack untranslated.
        Err(_) => TC_ACT_OK as i32,
    }
}

#[classifier]
pub fn nodeport_egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(action) => action,
        Err(_) => TC_ACT_OK as i32,
    }
}

/// The parts of an IPv4 TCP/UDP packet the programs read, as found in the packet (addresses and
/// ports in network byte order).
struct Packet {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    /// Offset of the TCP/UDP header.
    l4: usize,
    /// Offset of the TCP/UDP checksum.
    csum: usize,
    /// A TCP SYN without ACK: the first packet of a connection.
    syn: bool,
}

impl Packet {
    fn key(&self, dir: u8) -> CtKey {
        CtKey {
            src: self.saddr,
            dst: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            dir,
            _pad: [0; 2],
        }
    }
}

/// Parses an Ethernet/IPv4/TCP-or-UDP packet; `None` for anything else, and for fragments
/// (only a first fragment carries the ports, and the node reassembles what is for itself).
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let eth_type: u16 = ctx.load(12).ok()?;
    if eth_type != ETH_P_IP.to_be() {
        return None;
    }
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let frag: u16 = ctx.load(IP_FRAG).ok()?;
    // More-fragments flag or a fragment offset.
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(IP_PROTO).ok()?;
    let l4 = ETH_HLEN + ihl;
    let (csum, syn) = match proto {
        PROTO_TCP => {
            let flags: u8 = ctx.load(l4 + TCP_FLAGS).ok()?;
            (l4 + 16, flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
        }
        PROTO_UDP => (l4 + 6, false),
        _ => return None,
    };
    Some(Packet {
        saddr: ctx.load(IP_SRC).ok()?,
        daddr: ctx.load(IP_DST).ok()?,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + 2).ok()?,
        proto,
        l4,
        csum,
        syn,
    })
}

/// Rewrites an address and a port (at `addr_off` and `port_off`) with incremental checksum
/// updates: the IPv4 header's, and the TCP/UDP one over the pseudo-header.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), Error> {
    // A UDP checksum of 0 means "none" and must stay 0 (and a computed 0 is sent as 0xffff).
    let l4_flags = if p.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    ctx.l4_csum_replace(
        p.csum,
        u64::from(old_addr),
        u64::from(new_addr),
        l4_flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
    )
    .map_err(|_| Error::Inconsistent)?;
    ctx.l3_csum_replace(IP_CSUM, u64::from(old_addr), u64::from(new_addr), 4)
        .map_err(|_| Error::Inconsistent)?;
    ctx.store(addr_off, &new_addr, 0)
        .map_err(|_| Error::Inconsistent)?;
    if old_port != new_port {
        ctx.l4_csum_replace(
            p.csum,
            u64::from(old_port),
            u64::from(new_port),
            l4_flags | 2,
        )
        .map_err(|_| Error::Inconsistent)?;
        ctx.store(port_off, &new_port, 0)
            .map_err(|_| Error::Inconsistent)?;
    }
    Ok(())
}

/// Applies a connection-tracking entry to a packet.
#[inline(always)]
fn apply(ctx: &TcContext, p: &Packet, ct: &CtValue) -> Result<(), Error> {
    if ct.to_dst != 0 {
        rewrite(
            ctx,
            p,
            IP_DST,
            p.daddr,
            ct.to_dst,
            p.l4 + 2,
            p.dport,
            ct.to_dport,
        )?;
    }
    if ct.to_src != 0 {
        rewrite(
            ctx,
            p,
            IP_SRC,
            p.saddr,
            ct.to_src,
            p.l4,
            p.sport,
            ct.to_sport,
        )?;
    }
    Ok(())
}

/// The verdict for a translated packet: redirected to `ifindex` (resolving the next hop's
/// link-layer address) when source-NATed, else up the stack, which routes it.
#[inline(always)]
fn verdict(ct: &CtValue) -> i32 {
    if ct.flags & CT_FLAG_SNAT == 0 {
        return TC_ACT_OK as i32;
    }
    // SAFETY: no pointers (a NULL `params` asks the kernel to look up the next hop).
    unsafe { bpf_redirect_neigh(ct.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// The interface the packet is on (the one it arrived on at ingress).
#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: tc programs get a valid __sk_buff; ifindex is readable.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, Error> {
    let Some(p) = parse(ctx) else {
        return Ok(TC_ACT_OK as i32);
    };
    // A reply from a backend on another node, to our SNAT address and port.
    // SAFETY (all map gets here): values are copied out at once.
    if let Some(ct) = unsafe { CT.get(&p.key(CT_DIR_REPLY)) }.copied() {
        if ct.flags & CT_FLAG_SNAT != 0 {
            apply(ctx, &p, &ct)?;
            return Ok(verdict(&ct));
        }
    }
    // A packet of a connection already translated.
    let fwd_key = p.key(CT_DIR_FORWARD);
    if let Some(ct) = unsafe { CT.get(&fwd_key) }.copied() {
        // A new connection reusing the tuple of an old one whose backend is gone picks anew.
        if !p.syn || BACKENDS.get_ptr(ct.backend_id).is_some() {
            apply(ctx, &p, &ct)?;
            return Ok(verdict(&ct));
        }
    }
    new_connection(ctx, &p, &fwd_key)
}

/// Where the route to a backend leaves the node.
enum Route {
    /// To a local address or through an interface that is not external (a pod's veth): the
    /// reply passes through this node by itself.
    Local,
    /// Through this external interface, with our address on it: another node; needs SNAT.
    Remote { ifindex: u32, addr: u32 },
}

#[inline(always)]
fn route(ctx: &TcContext, p: &Packet, backend: &Backend) -> Option<Route> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.proto;
    params.sport = p.sport;
    params.dport = backend.port;
    params.__bindgen_anon_1.tot_len = u16::from_be(ctx.load::<u16>(IP_TOT_LEN).ok()?);
    params.ifindex = ifindex(ctx);
    params.__bindgen_anon_3.ipv4_src = p.saddr;
    params.__bindgen_anon_4.ipv4_dst = backend.address;
    // SAFETY: params is a valid, initialised bpf_fib_lookup of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => {
            // SAFETY: copied out at once.
            match unsafe { EXT_IFACES.get(params.ifindex) }.copied() {
                Some(addr) => Some(Route::Remote {
                    ifindex: params.ifindex,
                    addr,
                }),
                None => Some(Route::Local),
            }
        }
        // The backend is one of the node's own addresses.
        BPF_FIB_LKUP_RET_NOT_FWDED => Some(Route::Local),
        // No route, or forwarding is off: leave the packet alone.
        _ => None,
    }
}

#[inline(always)]
fn new_connection(ctx: &TcContext, p: &Packet, fwd_key: &CtKey) -> Result<i32, Error> {
    let mut key = ServiceKey {
        address: p.daddr,
        dport: p.dport,
        backend_slot: 0,
        proto: p.proto,
        scope: 0,
        _pad: [0; 2],
    };
    // SAFETY (map gets): copied out at once.
    let svc = match unsafe { SERVICES.get(&key) } {
        Some(svc) => *svc,
        None => {
            // A NodePort on one of the node's addresses?
            if NODE_ADDRS.get_ptr(p.daddr).is_none() {
                return Ok(TC_ACT_OK as i32);
            }
            key.address = 0;
            match unsafe { SERVICES.get(&key) } {
                Some(svc) => *svc,
                None => return Ok(TC_ACT_OK as i32),
            }
        }
    };
    if svc.count == 0 {
        // Refused by the stack (see the module docs).
        return Ok(TC_ACT_OK as i32);
    }
    let client = CLIENT_ADDR_TAG | u64::from(p.saddr);
    let flow = || {
        let h = mix(mix(0x5eed, p.saddr), u32::from(p.sport));
        mix(
            mix(h, p.daddr),
            u32::from(p.dport) << 8 | u32::from(p.proto),
        )
    };
    let backend_id = select_backend(client, flow, &mut key, &svc)?;
    let backend = match unsafe { BACKENDS.get(backend_id) } {
        Some(b) => *b,
        None => return Err(Error::Inconsistent),
    };
    let Some(route) = route(ctx, p, &backend) else {
        return Ok(TC_ACT_OK as i32);
    };

    let mut fwd = CtValue {
        to_dst: backend.address,
        to_dport: backend.port,
        backend_id,
        rev_nat_index: svc.rev_nat_index,
        ..CtValue::default()
    };
    // Replies come from the backend to the client (or to our SNAT address) and must look as if
    // they came from the frontend the client used.
    let mut reply_key = CtKey {
        src: backend.address,
        dst: p.saddr,
        sport: backend.port,
        dport: p.sport,
        proto: p.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let mut reply = CtValue {
        to_src: p.daddr,
        to_sport: p.dport,
        backend_id,
        rev_nat_index: svc.rev_nat_index,
        ..CtValue::default()
    };
    match route {
        Route::Local => {
            CT.insert(&reply_key, &reply, 0)
                .map_err(|_| Error::Inconsistent)?;
        }
        Route::Remote { ifindex: out, addr } => {
            reply.to_dst = p.saddr;
            reply.to_dport = p.sport;
            reply.ifindex = ifindex(ctx);
            reply.flags = CT_FLAG_SNAT;
            reply_key.dst = addr;
            let span = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
            let mut port = 0;
            for _ in 0..SNAT_TRIES {
                // SAFETY: no arguments.
                let candidate = SNAT_PORT_MIN + (unsafe { bpf_get_prandom_u32() } % span) as u16;
                reply_key.dport = candidate.to_be();
                // NOEXIST: a port another connection to this backend holds is not taken over.
                if CT
                    .insert(&reply_key, &reply, u64::from(BPF_NOEXIST))
                    .is_ok()
                {
                    port = reply_key.dport;
                    break;
                }
            }
            if port == 0 {
                // No free port: drop rather than send a packet whose reply cannot come back.
                return Ok(TC_ACT_SHOT as i32);
            }
            fwd.to_src = addr;
            fwd.to_sport = port;
            fwd.ifindex = out;
            fwd.flags = CT_FLAG_SNAT;
        }
    }
    CT.insert(fwd_key, &fwd, 0)
        .map_err(|_| Error::Inconsistent)?;
    apply(ctx, p, &fwd)?;
    Ok(verdict(&fwd))
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, Error> {
    let Some(p) = parse(ctx) else {
        return Ok(TC_ACT_OK as i32);
    };
    // A reply from a local backend leaving towards the client: show the frontend as source.
    // SAFETY: copied out at once.
    if let Some(ct) = unsafe { CT.get(&p.key(CT_DIR_REPLY)) }.copied() {
        if ct.flags & CT_FLAG_SNAT == 0 {
            apply(ctx, &p, &ct)?;
        }
    }
    Ok(TC_ACT_OK as i32)
}
