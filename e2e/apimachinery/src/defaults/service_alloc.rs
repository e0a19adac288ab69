//! Cluster-IP and node-port allocation for Services, with the registry's rules:
//! IP families from `ipFamilyPolicy` (defaulted here, as it depends on the old object
//! and on the cluster's families), requested IPs and ports honoured or refused with
//! the real messages, immutable cluster IPs, dual-stack upgrade and downgrade, node
//! ports for NodePort/LoadBalancer Services, health-check node ports for
//! `externalTrafficPolicy: Local` load balancers, and the fields a type change drops.
//!
//! Keeps which IPs and ports are taken. Dynamic allocations come from the upper part of
//! each range first, the lower "static" band being left for requested values, like the
//! real allocators (deterministically here: a rolling cursor instead of random picks).
//! Exposes [`ServiceAllocator`] and [`AllocError`].

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use serde_json::{Map, Value, json};

use super::service_spec::{
    Family, drop_type_dependent_fields, has_selector, int, is_headless,
    is_matching_prefer_dual_stack, needs_cluster_ip, needs_hc, needs_node_port, node_ports,
    normalize_cluster_ips, patch_allocated_values, policy, policy_value, ports, set_node_port,
    set_strings, should_allocate_node_ports, strings, svc_type, validate_cluster_ip_update,
    validate_cluster_ips_related_fields, validate_port_fields,
};
use super::{ensure, str_of};
use crate::validation::{FieldError, FieldErrorKind, aggregate, go_quote, go_string_slice};

/// Why a Service could not get its IPs or ports. [`AllocError::status_code`] is the
/// real server's; [`AllocError::field_errors`] are the `Status.details.causes`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// A requested IP or port is already allocated (422).
    #[error("{0}")]
    Taken(FieldError),
    /// A requested IP or port is outside the configured range (422).
    #[error("{0}")]
    OutOfRange(FieldError),
    /// Other invalid allocation-related fields (422), e.g. a changed cluster IP.
    #[error("{}", aggregate(.0))]
    Invalid(Vec<FieldError>),
    /// What the real server reports as an internal error (500), e.g. a full range.
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// The allocator's own configuration is wrong.
    #[error("{0}")]
    Config(String),
}

impl AllocError {
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Taken(_) | Self::OutOfRange(_) | Self::Invalid(_) => 422,
            Self::Internal(_) | Self::Config(_) => 500,
        }
    }

    /// The field errors of a 422 (empty for the others).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            Self::Taken(e) | Self::OutOfRange(e) => vec![e.clone()],
            Self::Invalid(es) => es.clone(),
            Self::Internal(_) | Self::Config(_) => Vec::new(),
        }
    }
}

fn invalid(e: FieldError) -> AllocError {
    AllocError::Invalid(vec![e])
}

// === Pools ===

/// Largest number of addresses a pool tracks (bounds scans).
const MAX_POOL_SIZE: u128 = 1 << 24;

enum Claim {
    Ok,
    Taken,
    OutOfRange,
}

#[derive(Debug)]
struct IpPool {
    family: Family,
    cidr: String,
    /// First usable address (network + 1).
    start: u128,
    count: u128,
    static_band: u128,
    used: HashSet<u128>,
    cursor: u128,
}

impl IpPool {
    fn new(cidr: &str) -> Result<Self, AllocError> {
        let bad = || AllocError::Config(format!("invalid service CIDR {cidr:?}"));
        let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u32 = prefix.parse().map_err(|_| bad())?;
        let (family, bits, value) = match addr {
            IpAddr::V4(a) => (Family::V4, 32, u128::from(u32::from(a))),
            IpAddr::V6(a) => (Family::V6, 128, u128::from(a)),
        };
        if prefix > bits {
            return Err(bad());
        }
        let host_bits = bits - prefix;
        let mask = if host_bits >= 128 {
            0
        } else {
            !((1u128 << host_bits) - 1)
        };
        let network = value & mask;
        let total = if host_bits >= 127 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        let count = match family {
            Family::V4 => total.saturating_sub(2),
            Family::V6 => total.saturating_sub(1),
        }
        .min(MAX_POOL_SIZE);
        if count == 0 {
            return Err(AllocError::Config(format!(
                "service CIDR {cidr} has no usable addresses"
            )));
        }
        let static_band = if total <= 16 {
            0
        } else {
            (total / 16).clamp(16, 256)
        };
        let network_str = match family {
            Family::V4 => Ipv4Addr::from(u32::try_from(network).unwrap_or_default()).to_string(),
            Family::V6 => Ipv6Addr::from(network).to_string(),
        };
        Ok(Self {
            family,
            cidr: format!("{network_str}/{prefix}"),
            start: network + 1,
            count,
            static_band: static_band.min(count),
            used: HashSet::new(),
            cursor: static_band.min(count),
        })
    }

    fn to_ip(&self, v: u128) -> String {
        match self.family {
            Family::V4 => Ipv4Addr::from(u32::try_from(v).unwrap_or_default()).to_string(),
            Family::V6 => Ipv6Addr::from(v).to_string(),
        }
    }

    fn offset(&self, ip: &IpAddr) -> Option<u128> {
        let v = match (ip, self.family) {
            (IpAddr::V4(a), Family::V4) => u128::from(u32::from(*a)),
            (IpAddr::V6(a), Family::V6) => u128::from(*a),
            _ => return None,
        };
        (v >= self.start && v - self.start < self.count).then(|| v - self.start)
    }

    fn claim(&mut self, ip: &IpAddr) -> Claim {
        match self.offset(ip) {
            None => Claim::OutOfRange,
            Some(o) if !self.used.insert(o) => Claim::Taken,
            Some(_) => Claim::Ok,
        }
    }

    fn next(&mut self) -> Option<u128> {
        let dynamic = self.count - self.static_band;
        for i in 0..dynamic {
            let o = self.static_band + (self.cursor - self.static_band + i) % dynamic;
            if self.used.insert(o) {
                self.cursor = self.static_band + (o - self.static_band + 1) % dynamic;
                return Some(self.start + o);
            }
        }
        (0..self.static_band)
            .find(|o| self.used.insert(*o))
            .map(|o| self.start + o)
    }

    fn release(&mut self, ip: &IpAddr) {
        if let Some(o) = self.offset(ip) {
            self.used.remove(&o);
        }
    }
}

#[derive(Debug)]
struct PortPool {
    first: u16,
    last: u16,
    static_band: u32,
    used: HashSet<u16>,
    cursor: u32,
}

impl PortPool {
    fn new(range: RangeInclusive<u16>) -> Result<Self, AllocError> {
        let (first, last) = (*range.start(), *range.end());
        if first > last {
            return Err(AllocError::Config(format!(
                "invalid node port range {first}-{last}"
            )));
        }
        let size = u32::from(last - first) + 1;
        let static_band = if size <= 16 {
            0
        } else {
            (size / 32).clamp(16, 128)
        };
        Ok(Self {
            first,
            last,
            static_band,
            used: HashSet::new(),
            cursor: static_band,
        })
    }

    fn size(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    fn range(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }

    fn claim(&mut self, port: i64) -> Claim {
        match u16::try_from(port) {
            Ok(p) if (self.first..=self.last).contains(&p) => {
                if self.used.insert(p) {
                    Claim::Ok
                } else {
                    Claim::Taken
                }
            }
            _ => Claim::OutOfRange,
        }
    }

    fn next(&mut self) -> Option<u16> {
        let size = self.size();
        let dynamic = size - self.static_band;
        let port_at = |o: u32| u16::try_from(u32::from(self.first) + o).ok();
        for i in 0..dynamic {
            let o = self.static_band + (self.cursor - self.static_band + i) % dynamic;
            let p = port_at(o)?;
            if self.used.insert(p) {
                self.cursor = self.static_band + (o - self.static_band + 1) % dynamic;
                return Some(p);
            }
        }
        for o in 0..self.static_band {
            let p = port_at(o)?;
            if self.used.insert(p) {
                return Some(p);
            }
        }
        None
    }

    fn release(&mut self, port: i64) {
        if let Ok(p) = u16::try_from(port) {
            self.used.remove(&p);
        }
    }
}

/// Resources held by a Service, for release.
enum Held {
    Ip(Family, IpAddr),
    Port(i64),
}

// === Allocator ===

/// Tracks the cluster IPs and node ports of Services. Pure and synchronous: the caller
/// serialises calls (the server holds its store lock).
#[derive(Debug)]
pub struct ServiceAllocator {
    v4: Option<IpPool>,
    v6: Option<IpPool>,
    primary: Family,
    ports: PortPool,
}

impl ServiceAllocator {
    /// An allocator for the given service CIDRs (either may be empty, not both; the
    /// IPv4 one, when given, is the primary family) and node-port range.
    pub fn new(
        service_cidr_v4: &str,
        service_cidr_v6: &str,
        node_port_range: RangeInclusive<u16>,
    ) -> Result<Self, AllocError> {
        let pool = |cidr: &str, want: Family| -> Result<Option<IpPool>, AllocError> {
            if cidr.trim().is_empty() {
                return Ok(None);
            }
            let p = IpPool::new(cidr.trim())?;
            if p.family != want {
                return Err(AllocError::Config(format!(
                    "service CIDR {cidr} is not {}",
                    want.name()
                )));
            }
            Ok(Some(p))
        };
        let v4 = pool(service_cidr_v4, Family::V4)?;
        let v6 = pool(service_cidr_v6, Family::V6)?;
        let primary = match (&v4, &v6) {
            (Some(_), _) => Family::V4,
            (None, Some(_)) => Family::V6,
            (None, None) => {
                return Err(AllocError::Config(
                    "at least one service CIDR is required".into(),
                ));
            }
        };
        Ok(Self {
            v4,
            v6,
            primary,
            ports: PortPool::new(node_port_range)?,
        })
    }

    fn pool(&mut self, f: Family) -> Option<&mut IpPool> {
        match f {
            Family::V4 => self.v4.as_mut(),
            Family::V6 => self.v6.as_mut(),
        }
    }

    fn has(&self, f: Family) -> bool {
        match f {
            Family::V4 => self.v4.is_some(),
            Family::V6 => self.v6.is_some(),
        }
    }

    fn dual_stack(&self) -> bool {
        self.v4.is_some() && self.v6.is_some()
    }

    /// Fills in `spec.clusterIP(s)`, `ipFamilies`, `ipFamilyPolicy`, node ports and the
    /// health-check node port of a Service being created (`old` = `None`) or updated,
    /// reserving what it hands out. On error nothing stays reserved. On an update,
    /// what only `old` held is released.
    pub fn allocate(&mut self, svc: &mut Value, old: Option<&Value>) -> Result<(), AllocError> {
        let old_spec = old
            .and_then(|o| o.get("spec"))
            .and_then(Value::as_object)
            .cloned();
        let Some(root) = svc.as_object_mut() else {
            return Ok(());
        };
        let Some(spec) = ensure(root, "spec") else {
            return Ok(());
        };
        if let Some(old) = &old_spec {
            patch_allocated_values(old, spec);
        }
        normalize_cluster_ips(old_spec.as_ref(), spec);
        if let Some(old) = &old_spec {
            drop_type_dependent_fields(old, spec);
        }
        validate_port_fields(spec)?;
        self.init_ip_family_fields(spec, old_spec.as_ref())?;
        if let Some(old) = &old_spec {
            validate_cluster_ip_update(old, spec)?;
        }
        let mut taken = Vec::new();
        let mut release = Vec::new();
        match self.allocate_all(spec, old_spec.as_ref(), &mut taken, &mut release) {
            Ok(()) => {
                for h in release {
                    self.release_held(&h);
                }
            }
            Err(e) => {
                for h in taken {
                    self.release_held(&h);
                }
                return Err(e);
            }
        }
        let load_balancer = svc_type(spec) == "LoadBalancer";
        if !load_balancer
            && let Some(status) = root.get_mut("status").and_then(Value::as_object_mut)
        {
            status.insert("loadBalancer".into(), json!({}));
        }
        Ok(())
    }

    fn allocate_all(
        &mut self,
        spec: &mut Map<String, Value>,
        old: Option<&Map<String, Value>>,
        taken: &mut Vec<Held>,
        release: &mut Vec<Held>,
    ) -> Result<(), AllocError> {
        match old {
            None => self.alloc_cluster_ips(spec, taken)?,
            Some(old) => self.update_cluster_ips(spec, old, taken, release)?,
        }
        match old {
            None => {
                if needs_node_port(spec) {
                    self.init_node_ports(spec, taken)?;
                }
                if needs_hc(spec) {
                    self.alloc_hc(spec, taken)?;
                }
            }
            Some(old) => {
                if needs_node_port(old) && !needs_node_port(spec) {
                    release.extend(node_ports(old).into_iter().map(Held::Port));
                }
                if needs_node_port(spec) {
                    self.update_node_ports(spec, old, taken, release)?;
                }
                self.update_hc(spec, old, taken, release)?;
            }
        }
        Ok(())
    }

    // --- IP families ---

    fn init_ip_family_fields(
        &self,
        spec: &mut Map<String, Value>,
        old: Option<&Map<String, Value>>,
    ) -> Result<(), AllocError> {
        if svc_type(spec) == "ExternalName" {
            return Ok(());
        }
        if is_matching_prefer_dual_stack(spec, old) {
            return Ok(());
        }
        if policy(spec).is_none() {
            let p = match old.and_then(policy) {
                Some(p) => p.to_string(),
                None if is_headless(spec) && !has_selector(spec) => "RequireDualStack".into(),
                None => "SingleStack".into(),
            };
            spec.insert("ipFamilyPolicy".into(), json!(p));
        }
        let mut errs = validate_cluster_ips_related_fields(spec);
        if !errs.is_empty() {
            return Err(AllocError::Invalid(errs));
        }
        let single = policy(spec) == Some("SingleStack");
        let mut ips = strings(spec, "clusterIPs");
        let mut families = strings(spec, "ipFamilies");
        if let Some(old) = old {
            let (old_ips, old_families) = (strings(old, "clusterIPs"), strings(old, "ipFamilies"));
            if single {
                if ips == old_ips && ips.len() > 1 {
                    ips.truncate(1);
                    set_strings(spec, "clusterIPs", &ips);
                }
                if families == old_families && families.len() > 1 {
                    families.truncate(1);
                    set_strings(spec, "ipFamilies", &families);
                }
            } else {
                if ips.len() < old_ips.len() {
                    errs.push(FieldError::new(
                        "spec.ipFamilyPolicy",
                        FieldErrorKind::Invalid,
                        Some(policy_value(spec)),
                        "must be 'SingleStack' to release the secondary cluster IP",
                    ));
                }
                if families.len() < old_families.len() {
                    errs.push(FieldError::new(
                        "spec.ipFamilyPolicy",
                        FieldErrorKind::Invalid,
                        Some(policy_value(spec)),
                        "must be 'SingleStack' to release the secondary IP family",
                    ));
                }
            }
        }
        if single {
            if ips.len() == 2 {
                errs.push(FieldError::new(
                    "spec.ipFamilyPolicy",
                    FieldErrorKind::Invalid,
                    Some(policy_value(spec)),
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
                ));
            }
            if families.len() == 2 {
                errs.push(FieldError::new(
                    "spec.ipFamilyPolicy",
                    FieldErrorKind::Invalid,
                    Some(policy_value(spec)),
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
                ));
            }
        }
        for (i, ip) in ips.iter().enumerate() {
            if ip == "None" {
                break;
            }
            let Ok(addr) = ip.parse::<IpAddr>() else {
                continue;
            };
            let fam = Family::of(&addr);
            if i >= families.len() {
                if self.has(fam) {
                    families.push(fam.name().to_string());
                } else {
                    errs.push(FieldError::new(
                        format!("spec.clusterIPs[{i}]"),
                        FieldErrorKind::Invalid,
                        Some(go_string_slice(&ips)),
                        format!("{} is not configured on this cluster", fam.name()),
                    ));
                }
            }
        }
        if !errs.is_empty() {
            return Err(AllocError::Invalid(errs));
        }
        let requires_dual = policy(spec) == Some("RequireDualStack");
        let single = policy(spec) == Some("SingleStack");
        if is_headless(spec) && !has_selector(spec) {
            if families.is_empty() {
                families.push(self.primary.name().to_string());
            }
            if families.len() < 2 && !single {
                let first = Family::parse(&families[0]).unwrap_or(self.primary);
                families.push(first.other().name().to_string());
            }
            set_strings(spec, "ipFamilies", &families);
            return Ok(());
        }
        if requires_dual && !self.dual_stack() {
            errs.push(FieldError::new(
                "spec.ipFamilyPolicy",
                FieldErrorKind::Invalid,
                Some(policy_value(spec)),
                "this cluster is not configured for dual-stack services",
            ));
        }
        for (i, f) in families.iter().enumerate() {
            if !Family::parse(f).is_some_and(|f| self.has(f)) {
                errs.push(FieldError::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    f,
                    "not configured on this cluster",
                ));
            }
        }
        if !errs.is_empty() {
            return Err(AllocError::Invalid(errs));
        }
        if families.is_empty() {
            families.push(self.primary.name().to_string());
        }
        if !single && families.len() == 1 && self.dual_stack() {
            let first = Family::parse(&families[0]).unwrap_or(self.primary);
            families.push(first.other().name().to_string());
        }
        set_strings(spec, "ipFamilies", &families);
        Ok(())
    }

    // --- Cluster IPs ---

    fn alloc_cluster_ips(
        &mut self,
        spec: &mut Map<String, Value>,
        taken: &mut Vec<Held>,
    ) -> Result<(), AllocError> {
        if !needs_cluster_ip(spec) {
            return Ok(());
        }
        let mut ips = strings(spec, "clusterIPs");
        if ips.first().map(String::as_str) == Some("None") {
            spec.insert("clusterIP".into(), json!("None"));
            return Ok(());
        }
        let families = strings(spec, "ipFamilies");
        for (i, f) in families.iter().enumerate() {
            if i >= ips.len() {
                ips.push(String::new());
            }
            let Some(fam) = Family::parse(f) else {
                continue;
            };
            let requested = ips[i].clone();
            ips[i] = self.alloc_ip(fam, &requested, &ips, taken)?;
        }
        if let Some(first) = ips.first().cloned() {
            spec.insert("clusterIP".into(), json!(first));
        }
        set_strings(spec, "clusterIPs", &ips);
        Ok(())
    }

    /// Reserves `requested` (or the next free IP when empty) of `fam`.
    fn alloc_ip(
        &mut self,
        fam: Family,
        requested: &str,
        all: &[String],
        taken: &mut Vec<Held>,
    ) -> Result<String, AllocError> {
        let Some(pool) = self.pool(fam) else {
            return Err(AllocError::Internal(format!(
                "failed to allocate a serviceIP: {} is not configured",
                fam.name()
            )));
        };
        if requested.is_empty() {
            let Some(v) = pool.next() else {
                return Err(AllocError::Internal(
                    "failed to allocate a serviceIP: range is full".into(),
                ));
            };
            let ip = pool.to_ip(v);
            if let Ok(addr) = ip.parse() {
                taken.push(Held::Ip(fam, addr));
            }
            return Ok(ip);
        }
        let Ok(addr) = requested.parse::<IpAddr>() else {
            return Err(AllocError::Internal(format!(
                "failed to parse service IP {}",
                go_quote(requested)
            )));
        };
        let field = |msg: String| {
            FieldError::new(
                "spec.clusterIPs",
                FieldErrorKind::Invalid,
                Some(go_string_slice(all)),
                format!("failed to allocate IP {requested}: {msg}"),
            )
        };
        match pool.claim(&addr) {
            Claim::Ok => {
                taken.push(Held::Ip(fam, addr));
                Ok(requested.to_string())
            }
            Claim::Taken => Err(AllocError::Taken(field(
                "provided IP is already allocated".into(),
            ))),
            Claim::OutOfRange => Err(AllocError::OutOfRange(field(format!(
                "the provided IP ({addr}) is not in the valid range. The range of valid IPs is {}",
                pool.cidr
            )))),
        }
    }

    fn update_cluster_ips(
        &mut self,
        spec: &mut Map<String, Value>,
        old: &Map<String, Value>,
        taken: &mut Vec<Held>,
        release: &mut Vec<Held>,
    ) -> Result<(), AllocError> {
        if is_matching_prefer_dual_stack(spec, Some(old)) {
            return Ok(());
        }
        if !needs_cluster_ip(old) && needs_cluster_ip(spec) {
            return self.alloc_cluster_ips(spec, taken);
        }
        if is_headless(old) {
            return Ok(());
        }
        let (old_ips, old_families) = (strings(old, "clusterIPs"), strings(old, "ipFamilies"));
        if needs_cluster_ip(old) && !needs_cluster_ip(spec) {
            release.extend(held_ips(&old_ips));
            return Ok(());
        }
        let families = strings(spec, "ipFamilies");
        let mut ips = strings(spec, "clusterIPs");
        if old_families.len() == 1 && families.len() == 2 {
            if ips.len() < 2 {
                ips.push(String::new());
            }
            if let Some(fam) = Family::parse(&families[1]) {
                let requested = ips[1].clone();
                ips[1] = self.alloc_ip(fam, &requested, &ips, taken)?;
            }
            set_strings(spec, "clusterIPs", &ips);
        } else if old_families.len() == 2 && families.len() == 1 {
            release.extend(held_ips(&old_ips[1..]));
        }
        Ok(())
    }

    // --- Node ports ---

    fn claim_port(&mut self, i: usize, port: i64, taken: &mut Vec<Held>) -> Result<(), AllocError> {
        let field = format!("spec.ports[{i}].nodePort");
        match self.ports.claim(port) {
            Claim::Ok => {
                taken.push(Held::Port(port));
                Ok(())
            }
            Claim::Taken => Err(AllocError::Taken(FieldError::invalid_int(
                field,
                port,
                "provided port is already allocated",
            ))),
            Claim::OutOfRange => Err(AllocError::OutOfRange(FieldError::invalid_int(
                field,
                port,
                format!(
                    "provided port is not in the valid range. The range of valid ports is {}",
                    self.ports.range()
                ),
            ))),
        }
    }

    fn next_port(&mut self, taken: &mut Vec<Held>) -> Result<i64, AllocError> {
        let Some(p) = self.ports.next() else {
            return Err(AllocError::Internal(
                "failed to allocate a nodePort: range is full".into(),
            ));
        };
        taken.push(Held::Port(i64::from(p)));
        Ok(i64::from(p))
    }

    fn init_node_ports(
        &mut self,
        spec: &mut Map<String, Value>,
        taken: &mut Vec<Held>,
    ) -> Result<(), AllocError> {
        let allocate = should_allocate_node_ports(spec);
        let list = ports(spec);
        let mut by_port: Vec<(i64, i64)> = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let (port, node_port) = (int(p, "port"), int(p, "nodePort"));
            if node_port == 0 && !allocate {
                continue;
            }
            let allocated = by_port
                .iter()
                .find(|(sp, _)| *sp == port)
                .map(|(_, np)| *np);
            match allocated {
                None => {
                    let requested = list
                        .iter()
                        .find(|q| int(q, "port") == port && int(q, "nodePort") != 0)
                        .map_or(0, |q| int(q, "nodePort"));
                    let np = if requested != 0 {
                        self.claim_port(i, requested, taken)?;
                        requested
                    } else {
                        self.next_port(taken)?
                    };
                    set_node_port(spec, i, np);
                    by_port.push((port, np));
                }
                Some(np) if node_port != np => {
                    if node_port == 0 {
                        set_node_port(spec, i, np);
                    } else {
                        self.claim_port(i, node_port, taken)?;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn update_node_ports(
        &mut self,
        spec: &mut Map<String, Value>,
        old: &Map<String, Value>,
        taken: &mut Vec<Held>,
        release: &mut Vec<Held>,
    ) -> Result<(), AllocError> {
        let old_nps = node_ports(old);
        let allocate = should_allocate_node_ports(spec);
        let mut claimed: Vec<i64> = Vec::new();
        let mut seen: Vec<(String, i64)> = Vec::new();
        for (i, p) in ports(spec).iter().enumerate() {
            let mut np = int(p, "nodePort");
            if np == 0 && !allocate {
                continue;
            }
            if np != 0 {
                if !old_nps.contains(&np) && !claimed.contains(&np) {
                    self.claim_port(i, np, taken)?;
                    claimed.push(np);
                }
            } else {
                np = self.next_port(taken)?;
                set_node_port(spec, i, np);
            }
            let protocol = match str_of(p, "protocol") {
                "" => "TCP".to_string(),
                other => other.to_string(),
            };
            if seen.contains(&(protocol.clone(), np)) {
                return Err(invalid(FieldError::new(
                    format!("spec.ports[{i}].nodePort"),
                    FieldErrorKind::Duplicate,
                    Some(np.to_string()),
                    "",
                )));
            }
            seen.push((protocol, np));
        }
        let new_nps = node_ports(spec);
        release.extend(
            old_nps
                .into_iter()
                .filter(|n| !new_nps.contains(n))
                .map(Held::Port),
        );
        Ok(())
    }

    // --- Health-check node port ---

    fn alloc_hc(
        &mut self,
        spec: &mut Map<String, Value>,
        taken: &mut Vec<Held>,
    ) -> Result<(), AllocError> {
        let requested = int(spec, "healthCheckNodePort");
        if requested != 0 {
            return match self.ports.claim(requested) {
                Claim::Ok => {
                    taken.push(Held::Port(requested));
                    Ok(())
                }
                Claim::Taken => Err(AllocError::Internal(format!(
                    "failed to allocate requested HealthCheck NodePort {requested}: provided port is already allocated"
                ))),
                Claim::OutOfRange => Err(AllocError::Internal(format!(
                    "failed to allocate requested HealthCheck NodePort {requested}: provided port is not in the valid range. The range of valid ports is {}",
                    self.ports.range()
                ))),
            };
        }
        let Some(p) = self.ports.next() else {
            return Err(AllocError::Internal(
                "failed to allocate a HealthCheck NodePort 0: range is full".into(),
            ));
        };
        taken.push(Held::Port(i64::from(p)));
        spec.insert("healthCheckNodePort".into(), json!(p));
        Ok(())
    }

    fn update_hc(
        &mut self,
        spec: &mut Map<String, Value>,
        old: &Map<String, Value>,
        taken: &mut Vec<Held>,
        release: &mut Vec<Held>,
    ) -> Result<(), AllocError> {
        let (needed, needs) = (needs_hc(old), needs_hc(spec));
        let old_hc = int(old, "healthCheckNodePort");
        match (needed, needs) {
            (false, true) => self.alloc_hc(spec, taken)?,
            (true, false) => {
                if old_hc != 0 {
                    release.push(Held::Port(old_hc));
                }
                spec.remove("healthCheckNodePort");
            }
            (true, true) => {
                let hc = int(spec, "healthCheckNodePort");
                if hc != old_hc {
                    return Err(invalid(FieldError::invalid_int(
                        "spec.healthCheckNodePort",
                        hc,
                        "cannot change healthCheckNodePort on loadBalancer service with externalTraffic=Local during update",
                    )));
                }
            }
            (false, false) => {}
        }
        Ok(())
    }

    // --- Release / restore ---

    fn release_held(&mut self, h: &Held) {
        match h {
            Held::Ip(f, ip) => {
                if let Some(p) = self.pool(*f) {
                    p.release(ip);
                }
            }
            Held::Port(p) => self.ports.release(*p),
        }
    }

    fn held_by(spec: &Map<String, Value>) -> Vec<Held> {
        let mut out: Vec<Held> = Vec::new();
        if needs_cluster_ip(spec) {
            let mut ips = strings(spec, "clusterIPs");
            if ips.is_empty() {
                ips.push(str_of(spec, "clusterIP").to_string());
            }
            out.extend(held_ips(&ips));
        }
        out.extend(node_ports(spec).into_iter().map(Held::Port));
        let hc = int(spec, "healthCheckNodePort");
        if hc != 0 {
            out.push(Held::Port(hc));
        }
        out
    }

    /// Frees everything a (deleted) Service holds.
    pub fn release(&mut self, svc: &Value) {
        let Some(spec) = svc.get("spec").and_then(Value::as_object) else {
            return;
        };
        for h in Self::held_by(spec) {
            self.release_held(&h);
        }
    }

    /// Marks what a stored Service holds as taken (when loading existing objects).
    pub fn restore(&mut self, svc: &Value) {
        let Some(spec) = svc.get("spec").and_then(Value::as_object) else {
            return;
        };
        for h in Self::held_by(spec) {
            match h {
                Held::Ip(f, ip) => {
                    if let Some(p) = self.pool(f) {
                        p.claim(&ip);
                    }
                }
                Held::Port(p) => {
                    self.ports.claim(p);
                }
            }
        }
    }

    /// Undoes an [`allocate`](Self::allocate) whose write was then abandoned (dry
    /// run, failed commit): frees what `new` holds that `old` did not and re-marks
    /// what `old` holds.
    pub fn revert(&mut self, new: &Value, old: Option<&Value>) {
        self.release(new);
        if let Some(old) = old {
            self.restore(old);
        }
    }

    /// Whether an IP (`10.96.0.10`) is currently allocated.
    pub fn is_ip_allocated(&self, ip: &str) -> bool {
        let Ok(addr) = ip.parse::<IpAddr>() else {
            return false;
        };
        let pool = match Family::of(&addr) {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        };
        pool.is_some_and(|p| p.offset(&addr).is_some_and(|o| p.used.contains(&o)))
    }

    /// Whether a node port is currently allocated.
    pub fn is_port_allocated(&self, port: u16) -> bool {
        self.ports.used.contains(&port)
    }
}

fn held_ips(ips: &[String]) -> Vec<Held> {
    ips.iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|a| Held::Ip(Family::of(&a), a))
        .collect()
}
