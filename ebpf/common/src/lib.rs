//! Map key/value types shared by skiff's eBPF programs and the agent.
//!
//! The layout follows Cilium's lb4 maps: a service map keyed by (VIP, port, protocol, slot) whose
//! slot 0 is the service itself (backend count, reverse-NAT id, flags) and whose slots 1..=count
//! name one backend each; a backend map keyed by backend id; a reverse-NAT map keyed by the
//! service's reverse-NAT id. Socket-level load balancing adds a per-socket reverse-NAT map (so
//! replies to unconnected UDP and `getpeername()` show the VIP), a ClientIP affinity map and one
//! Maglev lookup table per Maglev service. The NodePort programs (tc, on the node's external
//! interfaces) add connection tracking and the node's addresses and interfaces.
//!
//! Every type is `#[repr(C)]` with explicit padding fields, so that both sides agree on the byte
//! layout and no uninitialised padding reaches the kernel (hash map keys compare all bytes).
//! Addresses and ports are stored in network byte order, as the kernel hands them to
//! `cgroup/connect4` and friends; the constructors below take host values.
//!
//! The `user` feature implements `aya::Pod` for the agent.
#![no_std]

/// Map names, shared so the agent finds what the programs declare. At most 15 bytes (the
/// kernel's object name limit); the maps are pinned under these names in the agent's bpffs
/// directory.
pub mod maps {
    /// [`ServiceKey`](super::ServiceKey) -> [`ServiceValue`](super::ServiceValue).
    pub const SERVICES: &str = "lb4_services";
    /// backend id (`u32`) -> [`Backend`](super::Backend).
    pub const BACKENDS: &str = "lb4_backends";
    /// reverse-NAT id (`u16`) -> [`RevNat`](super::RevNat).
    pub const REVERSE_NAT: &str = "lb4_reverse_nat";
    /// [`SockRevNatKey`](super::SockRevNatKey) -> [`SockRevNatValue`](super::SockRevNatValue)
    /// (LRU).
    pub const REVERSE_SK: &str = "lb4_reverse_sk";
    /// [`AffinityKey`](super::AffinityKey) -> [`AffinityValue`](super::AffinityValue) (LRU).
    pub const AFFINITY: &str = "lb4_affinity";
    /// reverse-NAT id (`u16`) -> [`MaglevTable`](super::MaglevTable).
    pub const MAGLEV: &str = "lb4_maglev";
    /// [`CtKey`](super::CtKey) -> [`CtValue`](super::CtValue) (LRU): the NodePort programs'
    /// connection tracking.
    pub const CT: &str = "lb4_ct";
    /// IPv4 address of the node (`u32`, network order) -> `u32` (unused, 1): the addresses a
    /// NodePort answers on.
    pub const NODE_ADDRS: &str = "lb4_node_addrs";
    /// ifindex (`u32`) -> the interface's IPv4 address (`u32`, network order): the interfaces
    /// the NodePort programs are attached to, where the node meets clients and other nodes.
    /// A backend reached through one of them is on another node and needs SNAT.
    pub const EXT_IFACES: &str = "lb4_ext_ifaces";
    /// Every map, for pinning and cleanup.
    pub const ALL: [&str; 9] = [
        SERVICES,
        BACKENDS,
        REVERSE_NAT,
        REVERSE_SK,
        AFFINITY,
        MAGLEV,
        CT,
        NODE_ADDRS,
        EXT_IFACES,
    ];
}

/// Capacity of the backend and reverse-NAT maps (reverse-NAT ids are 16-bit).
pub const MAX_ENTRIES: u32 = 65536;
/// Capacity of the services map: one master slot per frontend plus one slot per backend, so
/// 10 000 Services of 10 backends need 110 000 (the proxy benchmark's largest point).
pub const MAX_SERVICE_SLOTS: u32 = 262144;
/// Capacity of the per-socket reverse-NAT LRU map.
pub const MAX_SOCK_REV_NAT: u32 = 65536;
/// Capacity of the ClientIP affinity LRU map.
pub const MAX_AFFINITY: u32 = 65536;
/// How many services may use Maglev at once (the tables are allocated on demand).
pub const MAX_MAGLEV_SERVICES: u32 = 1024;
/// Entries of a Maglev lookup table: a prime well above 100 x the backends of a service, which
/// keeps the share of flows that move when a backend is added or removed close to the minimum
/// (Cilium's default as well).
pub const MAGLEV_TABLE_SIZE: usize = 16381;

/// Capacity of the NodePort connection-tracking LRU map (two entries per connection).
pub const MAX_CT: u32 = 131072;
/// Capacity of the node address map.
pub const MAX_NODE_ADDRS: u32 = 256;
/// Capacity of the external interface map.
pub const MAX_EXT_IFACES: u32 = 64;

/// Source ports the NodePort SNAT uses: above Linux's default ephemeral range (32768-60999),
/// so translated connections do not collide with the node's own sockets.
pub const SNAT_PORT_MIN: u16 = 61000;
/// Last SNAT port (inclusive).
pub const SNAT_PORT_MAX: u16 = 65535;

/// [`CtKey::dir`]: a packet from the client towards a service frontend.
pub const CT_DIR_FORWARD: u8 = 0;
/// [`CtKey::dir`]: a reply from a backend, as it arrives after translation.
pub const CT_DIR_REPLY: u8 = 1;
/// [`CtValue::flags`]: the connection is source-NATed to the node (its backend is on another
/// node); packets are redirected to [`CtValue::ifindex`] instead of going up the stack.
pub const CT_FLAG_SNAT: u16 = 1 << 0;

/// IP protocol numbers used in keys.
pub const PROTO_TCP: u8 = 6;
/// IP protocol numbers used in keys.
pub const PROTO_UDP: u8 = 17;

/// [`ServiceValue::flags`]: pick backends through the service's Maglev table instead of at
/// random.
pub const SVC_FLAG_MAGLEV: u8 = 1 << 0;
/// [`ServiceValue::flags`]: ClientIP session affinity, with
/// [`ServiceValue::affinity_timeout_secs`].
pub const SVC_FLAG_AFFINITY: u8 = 1 << 1;
/// [`ServiceValue::flags`]: `externalTrafficPolicy: Local` on an outside frontend: its
/// backends are this node's only, so the client's address reaches them (no SNAT is ever
/// needed). The programs need not read it; the agent reads it back with the service.
pub const SVC_FLAG_EXTERNAL_LOCAL: u8 = 1 << 2;

/// [`Backend::flags`]: the backend takes new connections.
pub const BACKEND_ACTIVE: u8 = 0;

/// An IPv4 address as the kernel stores it (network byte order in memory).
#[inline]
pub const fn addr_to_net(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of an address stored by [`addr_to_net`].
#[inline]
pub const fn addr_from_net(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

/// A port in network byte order.
#[inline]
pub const fn port_to_net(port: u16) -> u16 {
    port.to_be()
}

/// A port stored by [`port_to_net`], back in host order.
#[inline]
pub const fn port_from_net(port: u16) -> u16 {
    u16::from_be(port)
}

/// Key of the service map (Cilium's `lb4_key`). Slot 0 is the service; slots `1..=count` hold one
/// backend id each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The service's virtual IP, network byte order.
    pub address: u32,
    /// The service port, network byte order.
    pub dport: u16,
    /// 0 for the service entry, `1..=count` for its backends.
    pub backend_slot: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Reserved for internal/external traffic policy scopes; 0 today.
    pub scope: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}

impl ServiceKey {
    /// A key from host-order values.
    pub const fn new(addr: [u8; 4], port: u16, proto: u8, backend_slot: u16) -> Self {
        Self {
            address: addr_to_net(addr),
            dport: port_to_net(port),
            backend_slot,
            proto,
            scope: 0,
            _pad: [0; 2],
        }
    }
}

/// Value of the service map (Cilium's `lb4_service`). In slot 0 it describes the service; in
/// slot `n > 0` only [`backend_id`](Self::backend_id) is meaningful.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// The backend of this slot (slots > 0); 0 in slot 0.
    pub backend_id: u32,
    /// Number of backend slots (slot 0); a service with no backends refuses connections.
    pub count: u16,
    /// The service's reverse-NAT id (its index in the reverse-NAT, affinity and Maglev maps).
    pub rev_nat_index: u16,
    /// `SVC_FLAG_*`.
    pub flags: u8,
    /// Explicit padding, always zero.
    pub _pad0: u8,
    /// Explicit padding, always zero.
    pub _pad1: u16,
    /// ClientIP affinity timeout in seconds (with [`SVC_FLAG_AFFINITY`]).
    pub affinity_timeout_secs: u32,
}

/// Value of the backend map (Cilium's `lb4_backend`), keyed by a `u32` backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Network byte order.
    pub address: u32,
    /// Network byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// `BACKEND_*` state.
    pub flags: u8,
}

impl Backend {
    /// A backend from host-order values.
    pub const fn new(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            address: addr_to_net(addr),
            port: port_to_net(port),
            proto,
            flags: BACKEND_ACTIVE,
        }
    }
}

/// Value of the reverse-NAT map (Cilium's `lb4_reverse_nat`): the service's frontend, keyed by
/// its `u16` reverse-NAT id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat {
    /// The VIP, network byte order.
    pub address: u32,
    /// The service port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: u16,
}

/// Key of the per-socket reverse-NAT map (Cilium's `ipv4_revnat_tuple`): which backend a socket
/// was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// Backend address, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: u16,
}

/// Value of the per-socket reverse-NAT map: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatValue {
    /// The VIP, network byte order.
    pub address: u32,
    /// The service port, network byte order.
    pub port: u16,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
}

/// Key of the ClientIP affinity map. At socket level the client is identified by its network
/// namespace cookie (a pod has one namespace and one IP; the source address of an unbound socket
/// is not known yet at `connect()`), as Cilium's socket LB does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `bpf_get_netns_cookie` of the client socket.
    pub client_cookie: u64,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 6],
}

/// Value of the ClientIP affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` when the client last connected.
    pub last_used_ns: u64,
    /// The backend the client sticks to.
    pub backend_id: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

/// Key of the NodePort connection-tracking map: a packet's tuple as it is seen (before
/// translation for [`CT_DIR_FORWARD`], as it arrives for [`CT_DIR_REPLY`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address, network byte order.
    pub src: u32,
    /// Destination address, network byte order.
    pub dst: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`CT_DIR_FORWARD`] or [`CT_DIR_REPLY`].
    pub dir: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}

/// Value of the NodePort connection-tracking map: how to rewrite a packet of the key's tuple.
/// A forward entry rewrites the destination to the backend (and, with [`CT_FLAG_SNAT`], the
/// source to the node); a reply entry rewrites the source back to the frontend (and, with
/// [`CT_FLAG_SNAT`], the destination back to the client).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// New source address (network byte order), or 0 to keep it.
    pub to_src: u32,
    /// New destination address (network byte order), or 0 to keep it.
    pub to_dst: u32,
    /// New source port (network byte order), meaningful with `to_src`.
    pub to_sport: u16,
    /// New destination port (network byte order), meaningful with `to_dst`.
    pub to_dport: u16,
    /// Where to redirect the packet with [`CT_FLAG_SNAT`].
    pub ifindex: u32,
    /// The backend of the connection (forward entries).
    pub backend_id: u32,
    /// The service's reverse-NAT id.
    pub rev_nat_index: u16,
    /// `CT_FLAG_*`.
    pub flags: u16,
}

/// A service's Maglev lookup table: entry `hash(flow) % MAGLEV_TABLE_SIZE` names the backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    /// Backend ids.
    pub backend_ids: [u32; MAGLEV_TABLE_SIZE],
}

#[cfg(feature = "user")]
#[allow(
    unsafe_code,
    reason = "aya::Pod is an unsafe trait: maps copy these types as raw bytes"
)]
mod pod {
    use super::*;

    // SAFETY (all impls below): each type is `#[repr(C)]`, `Copy`, made only of integers and
    // integer arrays, with every padding byte spelled out as a field (see the layout tests), so
    // any bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for SockRevNatKey {}
    unsafe impl aya::Pod for SockRevNatValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    /// A struct has no implicit padding when its size is the sum of its fields' sizes.
    macro_rules! assert_layout {
        ($ty:ty, size $size:expr, align $align:expr, fields [$($field:ident: $fty:ty = $off:expr),* $(,)?]) => {{
            assert_eq!(size_of::<$ty>(), $size, "size of {}", stringify!($ty));
            assert_eq!(align_of::<$ty>(), $align, "align of {}", stringify!($ty));
            $(assert_eq!(offset_of!($ty, $field), $off, "{}.{}", stringify!($ty), stringify!($field));)*
            assert_eq!(0 $(+ size_of::<$fty>())*, $size, "{} has implicit padding", stringify!($ty));
        }};
    }

    #[test]
    fn service_key_layout() {
        assert_layout!(ServiceKey, size 12, align 4, fields [
            address: u32 = 0, dport: u16 = 4, backend_slot: u16 = 6, proto: u8 = 8, scope: u8 = 9,
            _pad: [u8; 2] = 10,
        ]);
    }

    #[test]
    fn service_value_layout() {
        assert_layout!(ServiceValue, size 16, align 4, fields [
            backend_id: u32 = 0, count: u16 = 4, rev_nat_index: u16 = 6, flags: u8 = 8,
            _pad0: u8 = 9, _pad1: u16 = 10, affinity_timeout_secs: u32 = 12,
        ]);
    }

    #[test]
    fn backend_and_rev_nat_layout() {
        assert_layout!(Backend, size 8, align 4, fields [
            address: u32 = 0, port: u16 = 4, proto: u8 = 6, flags: u8 = 7,
        ]);
        assert_layout!(RevNat, size 8, align 4, fields [
            address: u32 = 0, port: u16 = 4, _pad: u16 = 6,
        ]);
    }

    #[test]
    fn sock_rev_nat_layout() {
        assert_layout!(SockRevNatKey, size 16, align 8, fields [
            cookie: u64 = 0, address: u32 = 8, port: u16 = 12, _pad: u16 = 14,
        ]);
        assert_layout!(SockRevNatValue, size 8, align 4, fields [
            address: u32 = 0, port: u16 = 4, rev_nat_index: u16 = 6,
        ]);
    }

    #[test]
    fn affinity_layout() {
        assert_layout!(AffinityKey, size 16, align 8, fields [
            client_cookie: u64 = 0, rev_nat_index: u16 = 8, _pad: [u8; 6] = 10,
        ]);
        assert_layout!(AffinityValue, size 16, align 8, fields [
            last_used_ns: u64 = 0, backend_id: u32 = 8, _pad: u32 = 12,
        ]);
    }

    #[test]
    fn conntrack_layout() {
        assert_layout!(CtKey, size 16, align 4, fields [
            src: u32 = 0, dst: u32 = 4, sport: u16 = 8, dport: u16 = 10, proto: u8 = 12,
            dir: u8 = 13, _pad: [u8; 2] = 14,
        ]);
        assert_layout!(CtValue, size 24, align 4, fields [
            to_src: u32 = 0, to_dst: u32 = 4, to_sport: u16 = 8, to_dport: u16 = 10,
            ifindex: u32 = 12, backend_id: u32 = 16, rev_nat_index: u16 = 20, flags: u16 = 22,
        ]);
    }

    #[test]
    fn maglev_table_layout() {
        assert_eq!(size_of::<MaglevTable>(), 4 * MAGLEV_TABLE_SIZE);
        assert_eq!(align_of::<MaglevTable>(), 4);
        // The table size must be prime for every permutation to visit every entry.
        let m = MAGLEV_TABLE_SIZE;
        assert!((2..)
            .take_while(|d| d * d <= m)
            .all(|d| !m.is_multiple_of(d)));
    }

    #[test]
    fn byte_order_matches_the_kernel() {
        let key = ServiceKey::new([10, 96, 0, 1], 80, PROTO_TCP, 0);
        // The kernel's `user_ip4`/`user_port` hold the wire bytes.
        assert_eq!(key.address.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(key.dport.to_ne_bytes(), [0, 80]);
        assert_eq!(addr_from_net(key.address), [10, 96, 0, 1]);
        assert_eq!(port_from_net(key.dport), 80);
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in maps::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }
}
