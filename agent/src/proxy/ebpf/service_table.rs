//! The eBPF mode's service bookkeeping over the lb4 maps, independent of the kernel.
//!
//! Ids: a backend (address, port, protocol) has one id shared by every service that uses it,
//! refcounted; a service port has a reverse-NAT id, which also keys its Maglev table and its
//! affinity entries.
//!
//! Update order follows Cilium's so a datapath reading concurrently never sees a slot that does
//! not exist: backends and slots first, the service entry (with the new count) next, surplus
//! slots and unused backends last.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use skiff_ebpf_common::{
    addr_from_net, addr_to_net, port_from_net, port_to_net, AffinityKey, AffinityValue, Backend,
    MaglevTable, RevNat, ServiceKey, ServiceValue, MAGLEV_TABLE_SIZE, SVC_FLAG_AFFINITY,
    SVC_FLAG_EXTERNAL_LOCAL, SVC_FLAG_MAGLEV,
};

use super::maglev;
use crate::proxy::{
    BackendAddr, Datapath, Frontend, LbAlgorithm, Protocol, ProxyError, Service, SessionAffinity,
};

/// The lb4 maps, as the table reads and writes them. Deleting a missing entry is not an error.
///
/// An implementation may buffer writes until [`LbMaps::flush`], as long as the kernel sees
/// them in the order made (a delete or a read of the same map flushes first).
pub trait LbMaps {
    /// Writes buffered changes.
    fn flush(&mut self) -> Result<(), ProxyError> {
        Ok(())
    }
    /// Writes a service map entry.
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), ProxyError>;
    /// Deletes a service map entry.
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), ProxyError>;
    /// Every service map entry.
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, ProxyError>;
    /// Writes a backend.
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), ProxyError>;
    /// Deletes a backend.
    fn delete_backend(&mut self, id: u32) -> Result<(), ProxyError>;
    /// Every backend.
    fn backends(&self) -> Result<Vec<(u32, Backend)>, ProxyError>;
    /// Writes a reverse-NAT entry.
    fn put_rev_nat(&mut self, id: u16, value: &RevNat) -> Result<(), ProxyError>;
    /// Deletes a reverse-NAT entry.
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), ProxyError>;
    /// Every reverse-NAT id in the map.
    fn rev_nat_ids(&self) -> Result<Vec<u16>, ProxyError>;
    /// Writes a service's Maglev table.
    fn put_maglev(&mut self, id: u16, table: &MaglevTable) -> Result<(), ProxyError>;
    /// Deletes a service's Maglev table.
    fn delete_maglev(&mut self, id: u16) -> Result<(), ProxyError>;
    /// The reverse-NAT ids that have a Maglev table.
    fn maglev_ids(&self) -> Result<Vec<u16>, ProxyError>;
    /// Every ClientIP affinity entry.
    fn affinity(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, ProxyError>;
    /// Deletes an affinity entry.
    fn delete_affinity(&mut self, key: &AffinityKey) -> Result<(), ProxyError>;
}

/// Slots are `u16` and slot 0 is the service itself.
pub const MAX_BACKENDS_PER_SERVICE: usize = u16::MAX as usize - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BackendKey {
    addr: BackendAddr,
    protocol: Protocol,
}

#[derive(Clone, Debug)]
struct Programmed {
    service: Service,
    rev_nat: u16,
    backend_ids: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct BackendRef {
    id: u32,
    refs: usize,
}

/// Services programmed into [`LbMaps`].
#[derive(Debug)]
pub struct ServiceTable<M> {
    maps: M,
    services: BTreeMap<Frontend, Programmed>,
    backends: HashMap<BackendKey, BackendRef>,
    backend_ids: BTreeSet<u32>,
    next_backend_id: u32,
    rev_nats: BTreeSet<u16>,
    /// Where the search for a free reverse-NAT id starts (searching from 1 every time made
    /// programming 10 000 Services quadratic: 1.5 s of the 2.6 s it took).
    next_rev_nat: u16,
}

fn service_key(f: &Frontend, slot: u16) -> ServiceKey {
    ServiceKey::new(f.ip.octets(), f.port, f.protocol.number(), slot)
}

fn validate(service: &Service) -> Result<Vec<BackendAddr>, ProxyError> {
    let invalid = |reason: String| ProxyError::InvalidService {
        frontend: service.frontend,
        reason,
    };
    if service.frontend.port == 0 {
        return Err(invalid("port 0".into()));
    }
    // 0.0.0.0 is a NodePort (every node address), which the programs look up by that key.
    if let SessionAffinity::ClientIp { timeout_seconds } = service.affinity {
        if !(1..=SessionAffinity::MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
            return Err(invalid(format!(
                "ClientIP timeoutSeconds {timeout_seconds} is outside 1..={}",
                SessionAffinity::MAX_TIMEOUT_SECONDS
            )));
        }
    }
    let mut seen = BTreeSet::new();
    let mut backends = Vec::with_capacity(service.backends.len());
    for b in &service.backends {
        if b.port == 0 || b.ip.is_unspecified() {
            return Err(invalid(format!("backend {b} has no address or port")));
        }
        // Duplicate endpoints would skew the split; keep the first.
        if seen.insert(*b) {
            backends.push(*b);
        }
    }
    if backends.len() > MAX_BACKENDS_PER_SERVICE {
        return Err(invalid(format!(
            "{} backends, at most {MAX_BACKENDS_PER_SERVICE}",
            backends.len()
        )));
    }
    Ok(backends)
}

impl<M: LbMaps> ServiceTable<M> {
    /// A table over maps that hold nothing of ours yet.
    pub fn new(maps: M) -> Self {
        Self {
            maps,
            services: BTreeMap::new(),
            backends: HashMap::new(),
            backend_ids: BTreeSet::new(),
            next_backend_id: 1,
            next_rev_nat: 1,
            rev_nats: BTreeSet::new(),
        }
    }

    /// Rebuilds the table from maps an earlier agent filled (pinned maps after a restart), and
    /// removes what no service refers to (left by an update that was interrupted).
    pub fn restore(maps: M) -> Result<Self, ProxyError> {
        let mut table = Self::new(maps);
        let entries = table.maps.services()?;
        let slots: HashMap<ServiceKey, ServiceValue> = entries.iter().copied().collect();
        let backends: HashMap<u32, Backend> = table.maps.backends()?.into_iter().collect();
        let mut used_slots = std::collections::HashSet::new();

        for (key, value) in entries.iter().filter(|(k, _)| k.backend_slot == 0) {
            let Some(protocol) = Protocol::from_number(key.proto) else {
                continue;
            };
            let frontend = Frontend {
                ip: Ipv4Addr::from(addr_from_net(key.address)),
                port: port_from_net(key.dport),
                protocol,
            };
            used_slots.insert(*key);
            let mut addrs = Vec::new();
            let mut ids = Vec::new();
            for slot in 1..=value.count {
                let skey = ServiceKey {
                    backend_slot: slot,
                    ..*key
                };
                used_slots.insert(skey);
                let Some(b) = slots
                    .get(&skey)
                    .and_then(|s| backends.get(&s.backend_id).map(|b| (s.backend_id, b)))
                else {
                    tracing::warn!("restore: {frontend} slot {slot} has no backend; skipped");
                    continue;
                };
                let addr = BackendAddr {
                    ip: Ipv4Addr::from(addr_from_net(b.1.address)),
                    port: port_from_net(b.1.port),
                };
                addrs.push(addr);
                ids.push(b.0);
                let bkey = BackendKey { addr, protocol };
                table
                    .backends
                    .entry(bkey)
                    .and_modify(|r| r.refs += 1)
                    .or_insert(BackendRef { id: b.0, refs: 1 });
                table.backend_ids.insert(b.0);
            }
            let service = Service {
                frontend,
                backends: addrs,
                algorithm: if value.flags & SVC_FLAG_MAGLEV != 0 {
                    LbAlgorithm::Maglev
                } else {
                    LbAlgorithm::Random
                },
                affinity: if value.flags & SVC_FLAG_AFFINITY != 0 {
                    SessionAffinity::ClientIp {
                        timeout_seconds: value.affinity_timeout_secs,
                    }
                } else {
                    SessionAffinity::None
                },
                external_local: value.flags & SVC_FLAG_EXTERNAL_LOCAL != 0,
            };
            table.rev_nats.insert(value.rev_nat_index);
            table.services.insert(
                frontend,
                Programmed {
                    service,
                    rev_nat: value.rev_nat_index,
                    backend_ids: ids,
                },
            );
        }
        table.next_backend_id = table
            .backend_ids
            .last()
            .map_or(1, |id| id.wrapping_add(1).max(1));
        table.next_rev_nat = table
            .rev_nats
            .last()
            .map_or(1, |id| id.wrapping_add(1).max(1));

        // Garbage left by an interrupted update.
        for (key, _) in &entries {
            if !used_slots.contains(key) {
                table.maps.delete_service(key)?;
            }
        }
        for id in backends.keys() {
            if !table.backend_ids.contains(id) {
                table.maps.delete_backend(*id)?;
            }
        }
        for id in table.maps.rev_nat_ids()? {
            if !table.rev_nats.contains(&id) {
                table.maps.delete_rev_nat(id)?;
            }
        }
        let maglev_users: BTreeSet<u16> = table
            .services
            .values()
            .filter(|p| p.service.algorithm == LbAlgorithm::Maglev)
            .map(|p| p.rev_nat)
            .collect();
        for id in table.maps.maglev_ids()? {
            if !maglev_users.contains(&id) {
                table.maps.delete_maglev(id)?;
            }
        }
        Ok(table)
    }

    /// The maps, for tests and diagnostics.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The reverse-NAT id of a programmed service.
    pub fn rev_nat_of(&self, frontend: &Frontend) -> Option<u16> {
        self.services.get(frontend).map(|p| p.rev_nat)
    }

    /// The backend id of a programmed backend.
    pub fn backend_id_of(&self, addr: BackendAddr, protocol: Protocol) -> Option<u32> {
        self.backends
            .get(&BackendKey { addr, protocol })
            .map(|r| r.id)
    }

    fn alloc_rev_nat(&mut self) -> Result<u16, ProxyError> {
        // Id 0 is not used: 1..=u16::MAX.
        if self.rev_nats.len() >= usize::from(u16::MAX) {
            return Err(ProxyError::IdsExhausted("reverse-NAT"));
        }
        let mut id = self.next_rev_nat.max(1);
        while self.rev_nats.contains(&id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        self.next_rev_nat = id.checked_add(1).unwrap_or(1);
        self.rev_nats.insert(id);
        Ok(id)
    }

    fn alloc_backend_id(&mut self) -> Result<u32, ProxyError> {
        if self.backend_ids.len() >= skiff_ebpf_common::MAX_ENTRIES as usize {
            return Err(ProxyError::IdsExhausted("backend"));
        }
        let mut id = self.next_backend_id.max(1);
        while self.backend_ids.contains(&id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        self.next_backend_id = id.checked_add(1).unwrap_or(1);
        self.backend_ids.insert(id);
        Ok(id)
    }

    /// Takes a reference to a backend's id, writing the backend when it is new.
    fn acquire(&mut self, key: BackendKey) -> Result<u32, ProxyError> {
        if let Some(r) = self.backends.get_mut(&key) {
            r.refs += 1;
            return Ok(r.id);
        }
        let id = self.alloc_backend_id()?;
        let value = Backend::new(key.addr.ip.octets(), key.addr.port, key.protocol.number());
        if let Err(e) = self.maps.put_backend(id, &value) {
            self.backend_ids.remove(&id);
            return Err(e);
        }
        self.backends.insert(key, BackendRef { id, refs: 1 });
        Ok(id)
    }

    /// Drops a reference; the last one deletes the backend.
    fn release(&mut self, key: BackendKey) -> Result<(), ProxyError> {
        let Some(r) = self.backends.get_mut(&key) else {
            return Ok(());
        };
        r.refs -= 1;
        if r.refs == 0 {
            let id = r.id;
            self.backends.remove(&key);
            self.backend_ids.remove(&id);
            self.maps.delete_backend(id)?;
        }
        Ok(())
    }

    /// Deletes the affinity entries of a service that `stale` says must go.
    fn purge_affinity(
        &mut self,
        rev_nat: u16,
        stale: impl Fn(u32) -> bool,
    ) -> Result<(), ProxyError> {
        for (key, value) in self.maps.affinity()? {
            if key.rev_nat_index == rev_nat && stale(value.backend_id) {
                self.maps.delete_affinity(&key)?;
            }
        }
        Ok(())
    }
}

impl<M: LbMaps> Datapath for ServiceTable<M> {
    fn upsert_service(&mut self, service: &Service) -> Result<(), ProxyError> {
        let result = self.upsert_unflushed(service);
        self.maps.flush()?;
        result
    }

    fn upsert_services(&mut self, services: &[Service]) -> Result<(), ProxyError> {
        // One flush for all: the maps write the whole batch in a few bpf() calls.
        let result = services.iter().try_for_each(|s| self.upsert_unflushed(s));
        self.maps.flush()?;
        result
    }

    fn delete_service(&mut self, frontend: &Frontend) -> Result<(), ProxyError> {
        let result = self.delete_unflushed(frontend);
        self.maps.flush()?;
        result
    }

    fn services(&self) -> Vec<Service> {
        self.services.values().map(|p| p.service.clone()).collect()
    }
}

impl<M: LbMaps> ServiceTable<M> {
    fn upsert_unflushed(&mut self, service: &Service) -> Result<(), ProxyError> {
        let backends = validate(service)?;
        let frontend = service.frontend;
        let old = self.services.get(&frontend).cloned();
        let rev_nat = match &old {
            Some(p) => p.rev_nat,
            None => self.alloc_rev_nat()?,
        };

        let mut ids = Vec::with_capacity(backends.len());
        for addr in &backends {
            let key = BackendKey {
                addr: *addr,
                protocol: frontend.protocol,
            };
            match self.acquire(key) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    // Undo this call's references; the service stays as it was.
                    for addr in &backends[..ids.len()] {
                        let _ = self.release(BackendKey {
                            addr: *addr,
                            protocol: frontend.protocol,
                        });
                    }
                    if old.is_none() {
                        self.rev_nats.remove(&rev_nat);
                    }
                    return Err(e);
                }
            }
        }

        self.maps.put_rev_nat(
            rev_nat,
            &RevNat {
                address: addr_to_net(frontend.ip.octets()),
                port: port_to_net(frontend.port),
                _pad: 0,
            },
        )?;

        let maglev = service.algorithm == LbAlgorithm::Maglev && !ids.is_empty();
        if maglev {
            let mut table = Box::new(MaglevTable {
                backend_ids: [0; MAGLEV_TABLE_SIZE],
            });
            let pairs: Vec<(BackendAddr, u32)> =
                backends.iter().copied().zip(ids.iter().copied()).collect();
            maglev::populate(&pairs, &mut table.backend_ids);
            self.maps.put_maglev(rev_nat, &table)?;
        }

        for (i, id) in ids.iter().enumerate() {
            let value = ServiceValue {
                backend_id: *id,
                rev_nat_index: rev_nat,
                ..ServiceValue::default()
            };
            self.maps
                .put_service(&service_key(&frontend, i as u16 + 1), &value)?;
        }

        let (flags, timeout) = match service.affinity {
            SessionAffinity::None => (0, 0),
            SessionAffinity::ClientIp { timeout_seconds } => (SVC_FLAG_AFFINITY, timeout_seconds),
        };
        let master = ServiceValue {
            backend_id: 0,
            count: ids.len() as u16,
            rev_nat_index: rev_nat,
            flags: flags
                | if maglev { SVC_FLAG_MAGLEV } else { 0 }
                | if service.external_local {
                    SVC_FLAG_EXTERNAL_LOCAL
                } else {
                    0
                },
            _pad0: 0,
            _pad1: 0,
            affinity_timeout_secs: timeout,
        };
        self.maps.put_service(&service_key(&frontend, 0), &master)?;

        if let Some(old) = &old {
            for slot in ids.len() + 1..=old.backend_ids.len() {
                self.maps
                    .delete_service(&service_key(&frontend, slot as u16))?;
            }
            if !maglev && old.service.algorithm == LbAlgorithm::Maglev {
                self.maps.delete_maglev(rev_nat)?;
            }
            let had_affinity = old.service.affinity != SessionAffinity::None;
            if had_affinity {
                let keep: BTreeSet<u32> = ids.iter().copied().collect();
                let affinity_off = service.affinity == SessionAffinity::None;
                // Clients stuck to a backend that left must pick again; with affinity turned
                // off every entry is stale.
                self.purge_affinity(rev_nat, |id| affinity_off || !keep.contains(&id))?;
            }
            for addr in &old.service.backends {
                self.release(BackendKey {
                    addr: *addr,
                    protocol: frontend.protocol,
                })?;
            }
        } else if !maglev {
            // A table left behind under this id (by an interrupted run) must not be used.
            self.maps.delete_maglev(rev_nat)?;
        }

        self.services.insert(
            frontend,
            Programmed {
                service: Service {
                    backends,
                    ..service.clone()
                },
                rev_nat,
                backend_ids: ids,
            },
        );
        Ok(())
    }

    fn delete_unflushed(&mut self, frontend: &Frontend) -> Result<(), ProxyError> {
        let Some(old) = self.services.get(frontend).cloned() else {
            return Ok(());
        };
        // The service entry first: lookups stop before its slots go.
        self.maps.delete_service(&service_key(frontend, 0))?;
        for slot in 1..=old.backend_ids.len() {
            self.maps
                .delete_service(&service_key(frontend, slot as u16))?;
        }
        self.maps.delete_maglev(old.rev_nat)?;
        self.purge_affinity(old.rev_nat, |_| true)?;
        self.maps.delete_rev_nat(old.rev_nat)?;
        for addr in &old.service.backends {
            self.release(BackendKey {
                addr: *addr,
                protocol: frontend.protocol,
            })?;
        }
        self.rev_nats.remove(&old.rev_nat);
        self.services.remove(frontend);
        Ok(())
    }
}

/// In-memory [`LbMaps`] for unit tests (and anything else that wants to see what would be
/// written).
#[derive(Debug, Default, Clone)]
pub struct MemoryMaps {
    /// The service map.
    pub services: BTreeMap<(u32, u16, u8, u16), (ServiceKey, ServiceValue)>,
    /// The backend map.
    pub backends: BTreeMap<u32, Backend>,
    /// The reverse-NAT map.
    pub rev_nat: BTreeMap<u16, RevNat>,
    /// The Maglev map.
    pub maglev: BTreeMap<u16, Box<MaglevTable>>,
    /// The affinity map.
    pub affinity: Vec<(AffinityKey, AffinityValue)>,
}

fn skey(k: &ServiceKey) -> (u32, u16, u8, u16) {
    (k.address, k.dport, k.proto, k.backend_slot)
}

impl LbMaps for MemoryMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), ProxyError> {
        self.services.insert(skey(key), (*key, *value));
        Ok(())
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), ProxyError> {
        self.services.remove(&skey(key));
        Ok(())
    }
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, ProxyError> {
        Ok(self.services.values().copied().collect())
    }
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), ProxyError> {
        self.backends.insert(id, *backend);
        Ok(())
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), ProxyError> {
        self.backends.remove(&id);
        Ok(())
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, ProxyError> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_rev_nat(&mut self, id: u16, value: &RevNat) -> Result<(), ProxyError> {
        self.rev_nat.insert(id, *value);
        Ok(())
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), ProxyError> {
        self.rev_nat.remove(&id);
        Ok(())
    }
    fn rev_nat_ids(&self) -> Result<Vec<u16>, ProxyError> {
        Ok(self.rev_nat.keys().copied().collect())
    }
    fn put_maglev(&mut self, id: u16, table: &MaglevTable) -> Result<(), ProxyError> {
        self.maglev.insert(id, Box::new(*table));
        Ok(())
    }
    fn delete_maglev(&mut self, id: u16) -> Result<(), ProxyError> {
        self.maglev.remove(&id);
        Ok(())
    }
    fn maglev_ids(&self) -> Result<Vec<u16>, ProxyError> {
        Ok(self.maglev.keys().copied().collect())
    }
    fn affinity(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, ProxyError> {
        Ok(self.affinity.clone())
    }
    fn delete_affinity(&mut self, key: &AffinityKey) -> Result<(), ProxyError> {
        self.affinity.retain(|(k, _)| k != key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(last: u8, port: u16, protocol: Protocol) -> Frontend {
        Frontend {
            ip: Ipv4Addr::new(10, 96, 0, last),
            port,
            protocol,
        }
    }

    fn be(last: u8) -> BackendAddr {
        BackendAddr {
            ip: Ipv4Addr::new(10, 244, 0, last),
            port: 8080,
        }
    }

    fn svc(f: Frontend, backends: &[u8]) -> Service {
        Service {
            frontend: f,
            backends: backends.iter().map(|b| be(*b)).collect(),
            algorithm: LbAlgorithm::Random,
            affinity: SessionAffinity::None,
            external_local: false,
        }
    }

    fn slot_ids(m: &MemoryMaps, f: &Frontend) -> (ServiceValue, Vec<u32>) {
        let master = m.services[&skey(&service_key(f, 0))].1;
        let ids = (1..=master.count)
            .map(|s| m.services[&skey(&service_key(f, s))].1.backend_id)
            .collect();
        (master, ids)
    }

    #[test]
    fn upsert_writes_cilium_style_slots() {
        let mut t = ServiceTable::new(MemoryMaps::default());
        let f = fe(1, 80, Protocol::Tcp);
        t.upsert_service(&svc(f, &[1, 2, 3])).unwrap();
        let m = t.maps();
        let (master, ids) = slot_ids(m, &f);
        assert_eq!(master.count, 3);
        assert_eq!(master.flags, 0);
        assert_eq!(ids.len(), 3);
        assert_eq!(m.services.len(), 4);
        for (i, id) in ids.iter().enumerate() {
            let b = m.backends[id];
            assert_eq!(addr_from_net(b.address), [10, 244, 0, i as u8 + 1]);
            assert_eq!(port_from_net(b.port), 8080);
        }
        let rn = m.rev_nat[&master.rev_nat_index];
        assert_eq!(addr_from_net(rn.address), [10, 96, 0, 1]);
        assert_eq!(port_from_net(rn.port), 80);
        assert!(m.maglev.is_empty());
    }

    #[test]
    fn backends_are_shared_and_released_with_the_last_user() {
        let mut t = ServiceTable::new(MemoryMaps::default());
        let a = fe(1, 80, Protocol::Tcp);
        let b = fe(2, 80, Protocol::Tcp);
        let u = fe(2, 80, Protocol::Udp);
        t.upsert_service(&svc(a, &[1, 2])).unwrap();
        t.upsert_service(&svc(b, &[2, 3])).unwrap();
        t.upsert_service(&svc(u, &[2])).unwrap();
        // 10.244.0.2 is one TCP backend shared by two services, plus a UDP one.
        assert_eq!(t.maps().backends.len(), 4);
        assert_ne!(t.rev_nat_of(&a), t.rev_nat_of(&b));
        t.delete_service(&a).unwrap();
        assert_eq!(t.maps().backends.len(), 3);
        t.delete_service(&b).unwrap();
        t.delete_service(&u).unwrap();
        t.delete_service(&u).unwrap();
        let m = t.maps();
        assert!(m.backends.is_empty() && m.services.is_empty() && m.rev_nat.is_empty());
    }

    #[test]
    fn shrinking_deletes_surplus_slots_and_keeps_ids() {
        let mut t = ServiceTable::new(MemoryMaps::default());
        let f = fe(1, 53, Protocol::Udp);
        t.upsert_service(&svc(f, &[1, 2, 3, 4])).unwrap();
        let id3 = t.backend_id_of(be(3), Protocol::Udp).unwrap();
        let rn = t.rev_nat_of(&f);
        t.upsert_service(&svc(f, &[3, 4])).unwrap();
        let (master, ids) = slot_ids(t.maps(), &f);
        assert_eq!(master.count, 2);
        assert_eq!(t.maps().services.len(), 3);
        assert_eq!(ids[0], id3, "a kept backend keeps its id");
        assert_eq!(t.rev_nat_of(&f), rn, "a service keeps its reverse-NAT id");
        assert_eq!(t.maps().backends.len(), 2);
    }

    #[test]
    fn no_backends_leaves_a_service_entry_with_count_zero() {
        let mut t = ServiceTable::new(MemoryMaps::default());
        let f = fe(1, 80, Protocol::Tcp);
        t.upsert_service(&svc(f, &[])).unwrap();
        let (master, ids) = slot_ids(t.maps(), &f);
        assert_eq!(master.count, 0);
        assert!(ids.is_empty());
    }

    #[test]
    fn duplicates_are_dropped_and_bad_input_rejected() {
        let mut t = ServiceTable::new(MemoryMaps::default());
        let f = fe(1, 80, Protocol::Tcp);
        t.upsert_service(&svc(f, &[1, 1, 2])).unwrap();
        assert_eq!(t.services()[0].backends, vec![be(1), be(2)]);
        let mut bad = svc(f, &[1]);
        bad.affinity = SessionAffinity::ClientIp { timeout_seconds: 0 };
        assert!(matches!(
            t.upsert_service(&bad),
            Err(ProxyError::InvalidService { .. })
        ));
        let mut bad = svc(fe(1, 0, Protocol::Tcp), &[1]);
        bad.frontend.port = 0;
        assert!(t.upsert_service(&bad).is_err());
    }

    #[test]
    fn maglev_tables_follow_the_algorithm() {
        let mut t = ServiceTable::new(MemoryMaps::default());
        let f = fe(1, 80, Protocol::Tcp);
        let mut s = svc(f, &[1, 2, 3]);
        s.algorithm = LbAlgorithm::Maglev;
        t.upsert_service(&s).unwrap();
        let (master, ids) = slot_ids(t.maps(), &f);
        assert_eq!(master.flags & SVC_FLAG_MAGLEV, SVC_FLAG_MAGLEV);
        let table = &t.maps().maglev[&master.rev_nat_index];
        assert!(table.backend_ids.iter().all(|id| ids.contains(id)));
        s.algorithm = LbAlgorithm::Random;
        t.upsert_service(&s).unwrap();
        assert!(t.maps().maglev.is_empty());
        t.delete_service(&f).unwrap();
        assert!(t.maps().maglev.is_empty());
    }

    #[test]
    fn removed_backends_lose_their_sticky_clients() {
        let mut t = ServiceTable::new(MemoryMaps::default());
        let f = fe(1, 80, Protocol::Tcp);
        let mut s = svc(f, &[1, 2]);
        s.affinity = SessionAffinity::ClientIp {
            timeout_seconds: 60,
        };
        t.upsert_service(&s).unwrap();
        let (master, _) = slot_ids(t.maps(), &f);
        assert_eq!(master.flags, SVC_FLAG_AFFINITY);
        assert_eq!(master.affinity_timeout_secs, 60);
        let id1 = t.backend_id_of(be(1), Protocol::Tcp).unwrap();
        let id2 = t.backend_id_of(be(2), Protocol::Tcp).unwrap();
        let entry = |client, id| {
            (
                AffinityKey {
                    client_cookie: client,
                    rev_nat_index: master.rev_nat_index,
                    _pad: [0; 6],
                },
                AffinityValue {
                    last_used_ns: 1,
                    backend_id: id,
                    _pad: 0,
                },
            )
        };
        t.maps.affinity = vec![entry(7, id1), entry(8, id2)];
        s.backends = vec![be(2)];
        t.upsert_service(&s).unwrap();
        assert_eq!(t.maps().affinity, vec![entry(8, id2)]);
        t.delete_service(&f).unwrap();
        assert!(t.maps().affinity.is_empty());
    }

    #[test]
    fn restore_rebuilds_the_table_and_collects_garbage() {
        let mut t = ServiceTable::new(MemoryMaps::default());
        let a = fe(1, 80, Protocol::Tcp);
        let mut sa = svc(a, &[1, 2, 3]);
        sa.algorithm = LbAlgorithm::Maglev;
        sa.affinity = SessionAffinity::ClientIp {
            timeout_seconds: 30,
        };
        let b = fe(2, 53, Protocol::Udp);
        let sb = svc(b, &[3]);
        t.upsert_service(&sa).unwrap();
        t.upsert_service(&sb).unwrap();
        let mut maps = t.maps().clone();
        // Leftovers of an interrupted update: a surplus slot, an orphan backend and table.
        maps.put_service(&service_key(&b, 5), &ServiceValue::default())
            .unwrap();
        maps.put_backend(999, &Backend::new([10, 244, 9, 9], 1, 6))
            .unwrap();
        maps.put_maglev(
            77,
            &MaglevTable {
                backend_ids: [0; MAGLEV_TABLE_SIZE],
            },
        )
        .unwrap();

        let mut r = ServiceTable::restore(maps).unwrap();
        assert_eq!(r.services(), t.services());
        assert_eq!(r.maps().services.len(), t.maps().services.len());
        assert_eq!(r.maps().backends, t.maps().backends);
        assert_eq!(
            r.maps().maglev.keys().collect::<Vec<_>>(),
            t.maps().maglev.keys().collect::<Vec<_>>()
        );
        // Updates after a restore reuse ids and keep refcounts right.
        let id1 = r.backend_id_of(be(1), Protocol::Tcp);
        let mut sa2 = sa.clone();
        sa2.backends.push(be(4));
        r.upsert_service(&sa2).unwrap();
        assert_eq!(r.backend_id_of(be(1), Protocol::Tcp), id1);
        assert_eq!(r.rev_nat_of(&a), t.rev_nat_of(&a));
        let new_id = r.backend_id_of(be(4), Protocol::Tcp).unwrap();
        assert!(!t.maps().backends.contains_key(&new_id));
        r.delete_service(&a).unwrap();
        r.delete_service(&b).unwrap();
        let m = r.maps();
        assert!(m.services.is_empty() && m.backends.is_empty() && m.maglev.is_empty());
        assert!(m.rev_nat.is_empty());
    }
}
