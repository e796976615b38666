//! The maps every program shares. Names must match `skiff_ebpf_common::maps` (the agent checks
//! that it finds every one); all are pinned by name in the agent's bpffs directory.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, MaglevTable, RevNat, ServiceKey,
    ServiceValue, SockRevNatKey, SockRevNatValue, MAX_AFFINITY, MAX_CT, MAX_ENTRIES,
    MAX_EXT_IFACES, MAX_MAGLEV_SERVICES, MAX_NODE_ADDRS, MAX_SERVICE_SLOTS, MAX_SOCK_REV_NAT,
};

#[map(name = "lb4_services")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICE_SLOTS, 0);

#[map(name = "lb4_backends")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_ENTRIES, 0);

#[map(name = "lb4_reverse_nat")]
pub static REVERSE_NAT: HashMap<u16, RevNat> = HashMap::pinned(MAX_ENTRIES, 0);

#[map(name = "lb4_reverse_sk")]
pub static REVERSE_SK: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(MAX_SOCK_REV_NAT, 0);

#[map(name = "lb4_affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY, 0);

// Tables are 64 KiB each: allocate them only for services that use Maglev.
#[map(name = "lb4_maglev")]
pub static MAGLEV: HashMap<u16, MaglevTable> =
    HashMap::pinned(MAX_MAGLEV_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "lb4_ct")]
pub static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CT, 0);

#[map(name = "lb4_node_addrs")]
pub static NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_NODE_ADDRS, 0);

#[map(name = "lb4_ext_ifaces")]
pub static EXT_IFACES: HashMap<u32, u32> = HashMap::pinned(MAX_EXT_IFACES, 0);
