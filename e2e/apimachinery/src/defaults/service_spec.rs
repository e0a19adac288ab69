//! The Service spec rules around allocation, as the registry applies them before it
//! allocates: field access, `patchAllocatedValues`, `normalizeClusterIPs`,
//! `dropTypeDependentFields`, and the validations of node-port, cluster-IP and
//! IP-family fields whose messages a client sees.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::service_alloc::AllocError;
use super::str_of;
use crate::validation::{FieldError, FieldErrorKind, go_quote, go_string_slice};

/// An IP family a cluster can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }

    pub(super) fn other(self) -> Self {
        match self {
            Self::V4 => Self::V6,
            Self::V6 => Self::V4,
        }
    }

    pub(super) fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

pub(super) fn svc_type(spec: &Map<String, Value>) -> &str {
    match str_of(spec, "type") {
        "" => "ClusterIP",
        t => t,
    }
}

pub(super) fn needs_cluster_ip(spec: &Map<String, Value>) -> bool {
    svc_type(spec) != "ExternalName"
}

pub(super) fn needs_node_port(spec: &Map<String, Value>) -> bool {
    matches!(svc_type(spec), "NodePort" | "LoadBalancer")
}

pub(super) fn should_allocate_node_ports(spec: &Map<String, Value>) -> bool {
    match svc_type(spec) {
        "NodePort" => true,
        "LoadBalancer" => {
            spec.get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false)
        }
        _ => false,
    }
}

pub(super) fn needs_hc(spec: &Map<String, Value>) -> bool {
    svc_type(spec) == "LoadBalancer" && str_of(spec, "externalTrafficPolicy") == "Local"
}

pub(super) fn strings(spec: &Map<String, Value>, key: &str) -> Vec<String> {
    spec.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn set_strings(spec: &mut Map<String, Value>, key: &str, values: &[String]) {
    spec.insert(key.into(), json!(values));
}

pub(super) fn policy(spec: &Map<String, Value>) -> Option<&str> {
    spec.get("ipFamilyPolicy").and_then(Value::as_str)
}

pub(super) fn int(m: &Map<String, Value>, key: &str) -> i64 {
    m.get(key).and_then(Value::as_i64).unwrap_or(0)
}

pub(super) fn ports(spec: &Map<String, Value>) -> Vec<Map<String, Value>> {
    spec.get("ports")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| p.as_object().cloned()).collect())
        .unwrap_or_default()
}

pub(super) fn node_ports(spec: &Map<String, Value>) -> Vec<i64> {
    let mut out: Vec<i64> = ports(spec)
        .iter()
        .map(|p| int(p, "nodePort"))
        .filter(|n| *n != 0)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub(super) fn set_node_port(spec: &mut Map<String, Value>, i: usize, value: i64) {
    if let Some(p) = spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .and_then(|a| a.get_mut(i))
        .and_then(Value::as_object_mut)
    {
        if value == 0 {
            p.remove("nodePort");
        } else {
            p.insert("nodePort".into(), json!(value));
        }
    }
}

pub(super) fn is_headless(spec: &Map<String, Value>) -> bool {
    str_of(spec, "clusterIP") == "None"
        || strings(spec, "clusterIPs").first().map(String::as_str) == Some("None")
}

pub(super) fn families_value(f: &[String]) -> String {
    let quoted: Vec<String> = f.iter().map(|s| go_quote(s)).collect();
    format!("[]core.IPFamily{{{}}}", quoted.join(", "))
}

pub(super) fn policy_value(spec: &Map<String, Value>) -> String {
    policy(spec).map_or_else(|| "null".to_string(), go_quote)
}

pub(super) fn has_selector(spec: &Map<String, Value>) -> bool {
    spec.get("selector")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty())
}

pub(super) fn is_matching_prefer_dual_stack(
    spec: &Map<String, Value>,
    old: Option<&Map<String, Value>>,
) -> bool {
    let Some(old) = old else {
        return false;
    };
    policy(spec) == Some("PreferDualStack")
        && policy(old).is_none_or(|p| p == "PreferDualStack")
        && svc_type(old) == svc_type(spec)
        && matches!(svc_type(spec), "ClusterIP" | "NodePort" | "LoadBalancer")
        && strings(old, "clusterIPs") == strings(spec, "clusterIPs")
        && strings(old, "ipFamilies") == strings(spec, "ipFamilies")
}

/// `patchAllocatedValues`: an update that omits allocated values keeps the old ones.
pub(super) fn patch_allocated_values(old: &Map<String, Value>, spec: &mut Map<String, Value>) {
    if needs_cluster_ip(old) && needs_cluster_ip(spec) {
        if str_of(spec, "clusterIP").is_empty()
            && let Some(ip) = old.get("clusterIP").cloned()
        {
            spec.insert("clusterIP".into(), ip);
        }
        if strings(spec, "clusterIPs").is_empty()
            && let Some(ips) = old.get("clusterIPs").cloned()
        {
            spec.insert("clusterIPs".into(), ips);
        }
    }
    if needs_node_port(old) && needs_node_port(spec) {
        let old_ports = ports(old);
        let used: Vec<i64> = node_ports(old)
            .into_iter()
            .filter(|n| node_ports(spec).contains(n))
            .collect();
        let new_ports = ports(spec);
        for (i, p) in new_ports.iter().enumerate() {
            if int(p, "nodePort") != 0 {
                continue;
            }
            let name = str_of(p, "name");
            let old_np = old_ports
                .iter()
                .find(|o| str_of(o, "name") == name)
                .map_or(0, |o| int(o, "nodePort"));
            if old_np != 0 && !used.contains(&old_np) {
                set_node_port(spec, i, old_np);
            }
        }
    }
    if needs_hc(old) && needs_hc(spec) && int(spec, "healthCheckNodePort") == 0 {
        let hc = int(old, "healthCheckNodePort");
        if hc != 0 {
            spec.insert("healthCheckNodePort".into(), json!(hc));
        }
    }
}

/// `normalizeClusterIPs`: keeps `clusterIP` and `clusterIPs` consistent for clients
/// that only know one of them.
pub(super) fn normalize_cluster_ips(
    old: Option<&Map<String, Value>>,
    spec: &mut Map<String, Value>,
) {
    let ip = str_of(spec, "clusterIP").to_string();
    let ips = strings(spec, "clusterIPs");
    let Some(old) = old else {
        if !ip.is_empty() && ips.is_empty() {
            set_strings(spec, "clusterIPs", &[ip]);
        }
        return;
    };
    let (old_ip, old_ips) = (
        str_of(old, "clusterIP").to_string(),
        strings(old, "clusterIPs"),
    );
    if !old_ips.is_empty() && ips.is_empty() && old_ip == ip {
        set_strings(spec, "clusterIPs", &old_ips);
    }
    let ips = strings(spec, "clusterIPs");
    if old_ip != ip {
        if !old_ip.is_empty() && ip.is_empty() {
            if ips == old_ips {
                spec.remove("clusterIPs");
            }
        } else if ips == old_ips {
            set_strings(spec, "clusterIPs", &[ip]);
        }
    }
}

/// `dropTypeDependentFields`: a type change drops allocated values the user did not
/// change and the new type does not use.
pub(super) fn drop_type_dependent_fields(old: &Map<String, Value>, spec: &mut Map<String, Value>) {
    if needs_cluster_ip(old) && !needs_cluster_ip(spec) {
        if strings(old, "clusterIPs") == strings(spec, "clusterIPs")
            && str_of(old, "clusterIP") == str_of(spec, "clusterIP")
        {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        if strings(old, "ipFamilies") == strings(spec, "ipFamilies") {
            spec.remove("ipFamilies");
        }
        if policy(old) == policy(spec) {
            spec.remove("ipFamilyPolicy");
        }
    }
    if needs_node_port(old) && !needs_node_port(spec) && node_ports(old) == node_ports(spec) {
        for i in 0..ports(spec).len() {
            set_node_port(spec, i, 0);
        }
    }
    if needs_hc(old)
        && !needs_hc(spec)
        && int(old, "healthCheckNodePort") == int(spec, "healthCheckNodePort")
    {
        spec.remove("healthCheckNodePort");
    }
    if svc_type(old) == "LoadBalancer" && svc_type(spec) != "LoadBalancer" {
        if old.get("allocateLoadBalancerNodePorts") == spec.get("allocateLoadBalancerNodePorts") {
            spec.remove("allocateLoadBalancerNodePorts");
        }
        if old.get("loadBalancerClass") == spec.get("loadBalancerClass") {
            spec.remove("loadBalancerClass");
        }
    }
    if super::externally_accessible(old)
        && !super::externally_accessible(spec)
        && old.get("externalTrafficPolicy") == spec.get("externalTrafficPolicy")
    {
        spec.remove("externalTrafficPolicy");
    }
}

/// Node ports only where the type uses them.
pub(super) fn validate_port_fields(spec: &Map<String, Value>) -> Result<(), AllocError> {
    let t = svc_type(spec);
    if matches!(t, "ClusterIP" | "ExternalName") {
        let errs: Vec<FieldError> = ports(spec)
            .iter()
            .enumerate()
            .filter(|(_, p)| int(p, "nodePort") != 0)
            .map(|(i, _)| {
                FieldError::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    format!("may not be used when `type` is '{t}'"),
                )
            })
            .collect();
        if !errs.is_empty() {
            return Err(AllocError::Invalid(errs));
        }
    }
    if int(spec, "healthCheckNodePort") != 0 && !needs_hc(spec) {
        return Err(AllocError::Invalid(vec![FieldError::invalid_int(
            "spec.healthCheckNodePort",
            int(spec, "healthCheckNodePort"),
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        )]));
    }
    Ok(())
}

/// The shape checks of `ValidateServiceClusterIPsRelatedFields` the allocator relies on.
pub(super) fn validate_cluster_ips_related_fields(spec: &Map<String, Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ips = strings(spec, "clusterIPs");
    let families = strings(spec, "ipFamilies");
    let ip = str_of(spec, "clusterIP");
    if !ip.is_empty() && ips.first().is_some_and(|first| first != ip) {
        errs.push(FieldError::new(
            "spec.clusterIPs",
            FieldErrorKind::Invalid,
            Some(go_string_slice(&ips)),
            "first value must match `clusterIP`",
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if Family::parse(f).is_none() {
            errs.push(FieldError::not_supported(
                format!("spec.ipFamilies[{i}]"),
                f,
                &["IPv4", "IPv6"],
            ));
        } else if families[..i].contains(f) {
            errs.push(FieldError::duplicate(format!("spec.ipFamilies[{i}]"), f));
        }
    }
    if families.len() > 2 {
        errs.push(FieldError::new(
            "spec.ipFamilies",
            FieldErrorKind::Invalid,
            Some(families_value(&families)),
            "may specify no more than two IP families",
        ));
    }
    if ips.len() > 2 {
        errs.push(FieldError::new(
            "spec.clusterIPs",
            FieldErrorKind::Invalid,
            Some(go_string_slice(&ips)),
            "may specify no more than one IP for each IP family",
        ));
    }
    for (i, ipv) in ips.iter().enumerate() {
        if ipv.is_empty() || (i == 0 && ipv == "None") {
            continue;
        }
        let field = format!("spec.clusterIPs[{i}]");
        if ipv == "None" {
            errs.push(FieldError::invalid(
                field,
                ipv,
                "must be empty when the first value is 'None'",
            ));
            continue;
        }
        let Ok(addr) = ipv.parse::<IpAddr>() else {
            errs.push(FieldError::invalid(
                field,
                ipv,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
            continue;
        };
        if let Some(f) = families.get(i).and_then(|f| Family::parse(f))
            && f != Family::of(&addr)
        {
            errs.push(FieldError::invalid(
                field.clone(),
                ipv,
                format!(
                    "expected an {} value as indicated by `ipFamilies[{i}]`",
                    f.name()
                ),
            ));
        }
        if i == 1
            && let Ok(first) = ips[0].parse::<IpAddr>()
            && Family::of(&first) == Family::of(&addr)
        {
            errs.push(FieldError::invalid(
                field,
                ipv,
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    errs
}

/// `validateUpgradeDowngradeClusterIPs` and its `ipFamilies` counterpart.
pub(super) fn validate_cluster_ip_update(
    old: &Map<String, Value>,
    spec: &Map<String, Value>,
) -> Result<(), AllocError> {
    if !needs_cluster_ip(old) || !needs_cluster_ip(spec) {
        return Ok(());
    }
    if is_headless(old) && is_headless(spec) {
        return Ok(());
    }
    let mut errs = Vec::new();
    let (old_ips, ips) = (strings(old, "clusterIPs"), strings(spec, "clusterIPs"));
    let changed = |i: usize| {
        FieldError::new(
            format!("spec.clusterIPs[{i}]"),
            FieldErrorKind::Invalid,
            Some(go_string_slice(&ips)),
            "may not change once set",
        )
    };
    match old_ips.len().cmp(&ips.len()) {
        std::cmp::Ordering::Equal => {
            for (i, ip) in old_ips.iter().enumerate() {
                if *ip != ips[i] {
                    errs.push(changed(i));
                }
            }
        }
        std::cmp::Ordering::Greater => {
            if ips.is_empty() {
                errs.push(FieldError::new(
                    "spec.clusterIPs[0]",
                    FieldErrorKind::Invalid,
                    Some(go_string_slice(&ips)),
                    "primary clusterIP can not be unset",
                ));
            } else if ips[0] != old_ips[0] {
                errs.push(changed(0));
            }
            if ips.len() == 1 && policy(spec) != Some("SingleStack") {
                errs.push(FieldError::new(
                    "spec.ipFamilyPolicy",
                    FieldErrorKind::Invalid,
                    Some(policy_value(spec)),
                    "must be set to 'SingleStack' when releasing the secondary clusterIP",
                ));
            }
        }
        std::cmp::Ordering::Less => {
            if !old_ips.is_empty() && ips[0] != old_ips[0] {
                errs.push(changed(0));
            }
        }
    }
    let (old_f, f) = (strings(old, "ipFamilies"), strings(spec, "ipFamilies"));
    for i in 0..old_f.len().min(f.len()) {
        if old_f[i] != f[i] {
            errs.push(FieldError::new(
                format!("spec.ipFamilies[{i}]"),
                FieldErrorKind::Invalid,
                Some(families_value(&f)),
                "may not change once set",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(AllocError::Invalid(errs))
    }
}
