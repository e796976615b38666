//! Pod IP allocation from the node's podCIDR, persisted under the agent's root dir.
//!
//! Like the CNI host-local plugin: the network, broadcast and gateway (first host) addresses are
//! never handed out; an allocation is keyed by the pod's UID (allocating again for the same UID
//! returns the same address, so a restarted agent adopts its pods' IPs); the search continues
//! after the last address handed out, so a released IP is not reused until the range wraps. The
//! state file is rewritten atomically (temp file + rename) after every change, so a crash never
//! loses or corrupts an allocation.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_k8s::cidr::Ipv4Cidr;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid IPAM state file: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} holds allocations from {found}, not from this node's podCIDR {want}")]
    OtherRange {
        path: PathBuf,
        found: Ipv4Cidr,
        want: Ipv4Cidr,
    },
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Cidr),
    #[error("the podCIDR {0} is too small for pods (needs at least a /30)")]
    TooSmall(Ipv4Cidr),
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    range: String,
    /// The last address handed out: the next search starts after it.
    last: Option<Ipv4Addr>,
    /// Allocated addresses by pod UID.
    pods: BTreeMap<String, Ipv4Addr>,
}

/// The allocator of one podCIDR.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    range: Ipv4Cidr,
    state: State,
}

impl Ipam {
    /// Opens (or starts) the allocations of `range`, kept in `dir/ipam.json`.
    pub fn open(dir: &Path, range: Ipv4Cidr) -> Result<Self, IpamError> {
        if range.prefix > 30 {
            return Err(IpamError::TooSmall(range));
        }
        std::fs::create_dir_all(dir).map_err(|source| IpamError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("ipam.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                let found: Ipv4Cidr = state.range.parse().map_err(|e| IpamError::Corrupt {
                    path: path.clone(),
                    source: serde::de::Error::custom(e),
                })?;
                if found != range {
                    return Err(IpamError::OtherRange {
                        path,
                        found,
                        want: range,
                    });
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                range: range.to_string(),
                last: None,
                pods: BTreeMap::new(),
            },
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        Ok(Self { path, range, state })
    }

    /// The gateway: the range's first host address, kept for the node's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.range.addr) + 1)
    }

    pub fn range(&self) -> Ipv4Cidr {
        self.range
    }

    /// The address of `pod_uid`, allocating one if it has none.
    pub fn allocate(&mut self, pod_uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.state.pods.get(pod_uid) {
            return Ok(*ip);
        }
        let base = u32::from(self.range.addr);
        let size = 1u32 << (32 - u32::from(self.range.prefix));
        // Hosts: base+2 (after the gateway) ..= base+size-2 (before broadcast).
        let (first, last) = (base + 2, base + size - 2);
        let count = last - first + 1;
        let used: std::collections::BTreeSet<u32> =
            self.state.pods.values().map(|ip| u32::from(*ip)).collect();
        let start = self
            .state
            .last
            .map(u32::from)
            .filter(|l| (first..=last).contains(l))
            .map_or(first, |l| if l == last { first } else { l + 1 });
        let ip = (0..count)
            .map(|i| first + (start - first + i) % count)
            .find(|c| !used.contains(c))
            .map(Ipv4Addr::from)
            .ok_or(IpamError::Exhausted(self.range))?;
        self.state.pods.insert(pod_uid.to_owned(), ip);
        self.state.last = Some(ip);
        self.save()?;
        Ok(ip)
    }

    /// Releases the address of `pod_uid`; returns it if there was one.
    pub fn release(&mut self, pod_uid: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let ip = self.state.pods.remove(pod_uid);
        if ip.is_some() {
            self.save()?;
        }
        Ok(ip)
    }

    /// The current allocations, by pod UID.
    pub fn allocations(&self) -> &BTreeMap<String, Ipv4Addr> {
        &self.state.pods
    }

    fn save(&self) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.state)
            .map_err(std::io::Error::other)
            .map_err(io)?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_skipping_reserved_and_in_use_addresses_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path(), cidr("10.244.1.0/29")).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate("a").unwrap(), a, "same pod, same address");
        let b = ipam.allocate("b").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        // A released address is not reused before the range wraps.
        assert_eq!(ipam.release("a").unwrap(), Some(a));
        assert_eq!(ipam.release("a").unwrap(), None);
        assert_eq!(ipam.allocate("c").unwrap(), Ipv4Addr::new(10, 244, 1, 4));

        // A restarted agent sees the same allocations and goes on after the last one.
        drop(ipam);
        let mut ipam = Ipam::open(dir.path(), cidr("10.244.1.0/29")).unwrap();
        assert_eq!(ipam.allocations().len(), 2);
        assert_eq!(ipam.allocate("b").unwrap(), b);
        assert_eq!(ipam.allocate("d").unwrap(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(ipam.allocate("e").unwrap(), Ipv4Addr::new(10, 244, 1, 6));
        // Wraps around to the free .2; then the /29 (5 pod addresses) is full.
        assert_eq!(ipam.allocate("f").unwrap(), Ipv4Addr::new(10, 244, 1, 2));
        assert!(matches!(ipam.allocate("g"), Err(IpamError::Exhausted(_))));
    }

    #[test]
    fn refuses_bad_state_and_other_ranges() {
        let dir = tempfile::tempdir().unwrap();
        Ipam::open(dir.path(), cidr("10.244.1.0/24"))
            .unwrap()
            .allocate("a")
            .unwrap();
        let err = Ipam::open(dir.path(), cidr("10.244.2.0/24")).unwrap_err();
        assert!(
            err.to_string().contains("not from this node's podCIDR"),
            "{err}"
        );
        std::fs::write(dir.path().join("ipam.json"), "{").unwrap();
        assert!(matches!(
            Ipam::open(dir.path(), cidr("10.244.1.0/24")),
            Err(IpamError::Corrupt { .. })
        ));
        assert!(matches!(
            Ipam::open(dir.path(), cidr("10.244.1.0/31")),
            Err(IpamError::TooSmall(_))
        ));
    }
}
