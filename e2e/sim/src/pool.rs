//! Address pools carved from a CIDR: the host addresses of `10.128.0.0/14` or
//! `fd10::/64`, handed out lowest first and never twice. Callers keep the set
//! of addresses in use (usually rebuilt from the objects they watch), so a
//! pool itself holds no state and survives restarts for free.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::Error;

/// An IP family, spelled as Kubernetes spells `ipFamilies` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// `IPv4` / `IPv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The family named `IPv4` / `IPv6`.
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// The usable host addresses of one CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPool {
    cidr: String,
    family: Family,
    network: u128,
    /// Number of usable addresses, starting at `network + 1`.
    size: u128,
}

impl AddressPool {
    /// Parses `a.b.c.d/n` or `x::/n`. The network address (and the IPv4
    /// broadcast address) are never handed out.
    pub fn new(cidr: &str) -> Result<Self, Error> {
        let bad = |message: &str| Error::Pool {
            cidr: cidr.to_string(),
            message: message.to_string(),
        };
        let (addr, len) = cidr
            .split_once('/')
            .ok_or_else(|| bad("expected address/prefix"))?;
        let ip = IpAddr::from_str(addr).map_err(|_| bad("bad address"))?;
        let len: u32 = len.parse().map_err(|_| bad("bad prefix length"))?;
        let (family, bits, value) = match ip {
            IpAddr::V4(v4) => (Family::V4, 32, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (Family::V6, 128, u128::from(v6)),
        };
        if len >= bits - 1 {
            return Err(bad("prefix leaves no host addresses"));
        }
        let host_bits = bits - len;
        let mask = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let network = value & !mask;
        let total = mask; // addresses after the network address
        let size = if family == Family::V4 {
            total - 1
        } else {
            total
        };
        Ok(Self {
            cidr: cidr.to_string(),
            family,
            network,
            size,
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn cidr(&self) -> &str {
        &self.cidr
    }

    /// Whether `ip` is one of this pool's host addresses.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let v = to_u128(ip);
        Family::of(ip) == self.family && v > self.network && v - self.network <= self.size
    }

    /// The lowest address not in `used`. Only the first `used.len() + 1`
    /// addresses need looking at: one of them must be free.
    pub fn first_free(&self, used: &HashSet<IpAddr>) -> Option<IpAddr> {
        (1..=self.size)
            .take(used.len().saturating_add(1))
            .map(|i| self.at(i))
            .find(|ip| !used.contains(ip))
    }

    /// The `i`-th address after the network address.
    fn at(&self, i: u128) -> IpAddr {
        let v = self.network + i;
        match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }
}

fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

/// A locally administered MAC derived from an IPv4 address (`02:00:` + the
/// four octets), unique wherever the address is.
pub fn mac_for(ip: &IpAddr) -> String {
    let b = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn hands_out_host_addresses_lowest_first() -> Result<(), Error> {
        let pool = AddressPool::new("192.168.10.0/30")?;
        let mut used = HashSet::new();
        assert_eq!(pool.first_free(&used), Some(ip("192.168.10.1")));
        used.insert(ip("192.168.10.1"));
        assert_eq!(pool.first_free(&used), Some(ip("192.168.10.2")));
        used.insert(ip("192.168.10.2"));
        assert_eq!(pool.first_free(&used), None, "broadcast is not handed out");
        assert!(pool.contains(&ip("192.168.10.2")));
        assert!(!pool.contains(&ip("192.168.10.0")));
        assert!(!pool.contains(&ip("192.168.10.3")));
        assert!(!pool.contains(&ip("fd00::1")));

        let v6 = AddressPool::new("fd00:10::/64")?;
        assert_eq!(v6.family(), Family::V6);
        assert_eq!(v6.first_free(&HashSet::new()), Some(ip("fd00:10::1")));
        assert!(AddressPool::new("10.0.0.0/32").is_err());
        assert!(AddressPool::new("nonsense").is_err());
        assert_eq!(mac_for(&ip("10.128.0.5")), "02:00:0a:80:00:05");
        Ok(())
    }
}
