//! IPv4 networks in CIDR notation: the service range (`--service-cidr`), the cluster's pod
//! range (`--cluster-cidr`) and each node's `spec.podCIDR`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Why a string is not an IPv4 CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/` between address and prefix.
    #[error("{0:?} is not a CIDR: expected ADDRESS/PREFIX such as 10.96.0.0/12")]
    NotCidr(String),
    /// The part before the `/` is not an IPv4 address.
    #[error("{address:?} in {cidr:?} is not an IPv4 address")]
    Address {
        /// The address part.
        address: String,
        /// The whole CIDR as given.
        cidr: String,
    },
    /// The part after the `/` is not a number from 0 to 32.
    #[error("{prefix:?} in {cidr:?} is not a prefix length (0-32)")]
    Prefix {
        /// The prefix part.
        prefix: String,
        /// The whole CIDR as given.
        cidr: String,
    },
    /// The address has bits set beyond the prefix (`10.96.0.1/12`).
    #[error("{cidr:?} has host bits set; did you mean {network}?")]
    HostBits {
        /// The CIDR as given.
        cidr: String,
        /// The network the address belongs to.
        network: Ipv4Cidr,
    },
}

/// An IPv4 network, `address/prefix` with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The address at `offset` from the network address.
    pub fn nth(&self, offset: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(offset as u32))
    }

    /// Offset of `ip` from the network address.
    pub fn offset(&self, ip: Ipv4Addr) -> u64 {
        u64::from(u32::from(ip).wrapping_sub(u32::from(self.addr)))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrError::NotCidr(s.to_owned()))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| CidrError::Address {
            address: addr.to_owned(),
            cidr: s.to_owned(),
        })?;
        let prefix: u8 =
            prefix
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| CidrError::Prefix {
                    prefix: prefix.to_owned(),
                    cidr: s.to_owned(),
                })?;
        let network = Ipv4Addr::from(u32::from(addr) & Self::mask(prefix));
        if network != addr {
            return Err(CidrError::HostBits {
                cidr: s.to_owned(),
                network: Self {
                    addr: network,
                    prefix,
                },
            });
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_cidrs() {
        let c: Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!((c.addr, c.prefix), (Ipv4Addr::new(10, 96, 0, 0), 12));
        assert_eq!(c.to_string(), "10.96.0.0/12");
        assert_eq!(c.size(), 1 << 20);
        assert!(c.contains(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 112, 0, 0)));
        assert!("0.0.0.0/0"
            .parse::<Ipv4Cidr>()
            .unwrap()
            .contains(Ipv4Addr::BROADCAST));
        let err = "10.96.0.1/12".parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(err.contains("did you mean 10.96.0.0/12"), "{err}");
        assert!("10.96.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.96.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("ten/8".parse::<Ipv4Cidr>().is_err());
    }
}
