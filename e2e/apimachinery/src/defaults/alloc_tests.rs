//! Service IP and port allocation through `ServiceAllocator`, create and update.

use serde_json::{Value, json};

use super::{AllocError, ServiceAllocator, apply_defaults};

fn dual() -> ServiceAllocator {
    ServiceAllocator::new("10.96.0.0/12", "fd00:10:96::/108", 30000..=32767)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn single() -> ServiceAllocator {
    ServiceAllocator::new("10.96.0.0/12", "", 30000..=32767).unwrap_or_else(|e| panic!("{e}"))
}

fn svc(spec: Value) -> Value {
    let mut s =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": spec});
    apply_defaults("", "Service", &mut s);
    s
}

fn create(a: &mut ServiceAllocator, spec: Value) -> Value {
    let mut s = svc(spec);
    a.allocate(&mut s, None).unwrap_or_else(|e| panic!("{e}"));
    s
}

fn messages(e: &AllocError) -> Vec<String> {
    e.field_errors().iter().map(ToString::to_string).collect()
}

#[test]
fn cluster_ip_single_stack_by_default() {
    let mut a = dual();
    let s = create(
        &mut a,
        json!({"selector": {"app": "x"}, "ports": [{"port": 80}]}),
    );
    let spec = &s["spec"];
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    let ip = spec["clusterIP"].as_str().unwrap_or_default().to_string();
    assert_eq!(spec["clusterIPs"], json!([ip.clone()]));
    assert!(ip.starts_with("10.9"), "{ip}");
    assert!(a.is_ip_allocated(&ip));
    assert!(spec["ports"][0].get("nodePort").is_none());
    // Dynamic IPs come from above the static band (10.96.0.1 - 10.96.1.0).
    assert_ne!(ip, "10.96.0.1");
    let other = create(&mut a, json!({"ports": [{"port": 80}]}));
    assert_ne!(other["spec"]["clusterIP"], spec["clusterIP"]);
}

#[test]
fn dual_stack_policies() {
    let mut a = dual();
    let s = create(
        &mut a,
        json!({"ipFamilyPolicy": "PreferDualStack", "selector": {"a": "b"}}),
    );
    assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    let ips = s["spec"]["clusterIPs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ips.len(), 2);
    assert!(
        ips[1]
            .as_str()
            .unwrap_or_default()
            .starts_with("fd00:10:96::"),
        "{ips:?}"
    );

    let v6_first = create(
        &mut a,
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"], "selector": {"a": "b"}}),
    );
    assert_eq!(v6_first["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
    assert!(
        v6_first["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_default()
            .contains(':')
    );

    let mut s1 = single();
    let prefer = create(
        &mut s1,
        json!({"ipFamilyPolicy": "PreferDualStack", "selector": {"a": "b"}}),
    );
    assert_eq!(prefer["spec"]["ipFamilies"], json!(["IPv4"]));
    let mut require = svc(json!({"ipFamilyPolicy": "RequireDualStack", "selector": {"a": "b"}}));
    let err = s1.allocate(&mut require, None).expect_err("must fail");
    assert_eq!(
        messages(&err),
        [
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
        ]
    );
    let mut v6 = svc(json!({"ipFamilies": ["IPv6"], "selector": {"a": "b"}}));
    let err = s1.allocate(&mut v6, None).expect_err("must fail");
    assert_eq!(
        messages(&err),
        ["spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"]
    );
}

#[test]
fn headless_services() {
    let mut a = dual();
    let with_selector = create(&mut a, json!({"clusterIP": "None", "selector": {"a": "b"}}));
    assert_eq!(with_selector["spec"]["clusterIPs"], json!(["None"]));
    assert_eq!(with_selector["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(with_selector["spec"]["ipFamilies"], json!(["IPv4"]));
    let selectorless = create(&mut single(), json!({"clusterIP": "None"}));
    assert_eq!(selectorless["spec"]["ipFamilyPolicy"], "RequireDualStack");
    assert_eq!(selectorless["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
}

#[test]
fn requested_cluster_ips() {
    let mut a = dual();
    let s = create(
        &mut a,
        json!({"clusterIP": "10.96.0.10", "selector": {"a": "b"}}),
    );
    assert_eq!(s["spec"]["clusterIPs"], json!(["10.96.0.10"]));
    let mut again = svc(json!({"clusterIP": "10.96.0.10"}));
    let err = a.allocate(&mut again, None).expect_err("must fail");
    assert!(matches!(err, AllocError::Taken(_)));
    assert_eq!(
        err.to_string(),
        "spec.clusterIPs: Invalid value: []string{\"10.96.0.10\"}: failed to allocate IP 10.96.0.10: provided IP is already allocated"
    );
    let mut outside = svc(json!({"clusterIP": "1.1.1.1"}));
    let err = a.allocate(&mut outside, None).expect_err("must fail");
    assert!(matches!(err, AllocError::OutOfRange(_)));
    assert_eq!(
        err.to_string(),
        "spec.clusterIPs: Invalid value: []string{\"1.1.1.1\"}: failed to allocate IP 1.1.1.1: the provided IP (1.1.1.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
    );
    // The network and broadcast addresses are never handed out.
    let mut network = svc(json!({"clusterIP": "10.96.0.0"}));
    assert!(matches!(
        a.allocate(&mut network, None),
        Err(AllocError::OutOfRange(_))
    ));
    let mut broadcast = svc(json!({"clusterIP": "10.111.255.255"}));
    assert!(matches!(
        a.allocate(&mut broadcast, None),
        Err(AllocError::OutOfRange(_))
    ));
    let mut bad = svc(json!({"clusterIP": "banana"}));
    let err = a.allocate(&mut bad, None).expect_err("must fail");
    assert_eq!(
        messages(&err),
        [
            "spec.clusterIPs[0]: Invalid value: \"banana\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        ]
    );
}

#[test]
fn node_ports_for_nodeport_and_load_balancer() {
    let mut a = dual();
    let s = create(
        &mut a,
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}]}),
    );
    let ports = s["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let np: Vec<i64> = ports
        .iter()
        .filter_map(|p| p["nodePort"].as_i64())
        .collect();
    assert_eq!(np.len(), 3);
    assert!(np.iter().all(|p| (30000..=32767).contains(p)));
    assert_ne!(np[0], np[1]);
    assert_eq!(
        np[1], np[2],
        "the same service port number shares its node port across protocols"
    );

    let lb = create(
        &mut a,
        json!({"type": "LoadBalancer", "ports": [{"port": 443}]}),
    );
    assert!(lb["spec"]["ports"][0]["nodePort"].as_i64().is_some());
    assert!(lb["spec"].get("healthCheckNodePort").is_none());
    let no_np = create(
        &mut a,
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 443}, {"port": 80, "nodePort": 30080}]}),
    );
    assert!(no_np["spec"]["ports"][0].get("nodePort").is_none());
    assert_eq!(no_np["spec"]["ports"][1]["nodePort"], 30080);
    assert!(a.is_port_allocated(30080));

    let local = create(
        &mut a,
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
    );
    let hc = local["spec"]["healthCheckNodePort"]
        .as_i64()
        .unwrap_or_default();
    assert!((30000..=32767).contains(&hc));
    assert!(a.is_port_allocated(u16::try_from(hc).unwrap_or_default()));
}

#[test]
fn requested_node_ports() {
    let mut a = dual();
    create(
        &mut a,
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    let mut taken = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}));
    let err = a.allocate(&mut taken, None).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
    );
    assert_eq!(err.status_code(), 422);
    let mut outside =
        svc(json!({"type": "NodePort", "ports": [{"port": 81}, {"port": 80, "nodePort": 8080}]}));
    let err = a.allocate(&mut outside, None).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "spec.ports[1].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767"
    );
    assert!(a.is_port_allocated(30080));
    let mut cip = svc(json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30001}]}));
    let err = a.allocate(&mut cip, None).expect_err("must fail");
    assert_eq!(
        messages(&err),
        ["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"]
    );
}

#[test]
fn failed_allocation_releases_everything() {
    let mut a = dual();
    create(
        &mut a,
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    let mut s = svc(
        json!({"type": "NodePort", "clusterIP": "10.96.0.50", "ports": [{"port": 81, "nodePort": 30081}, {"port": 80, "nodePort": 30080}]}),
    );
    assert!(a.allocate(&mut s, None).is_err());
    assert!(!a.is_ip_allocated("10.96.0.50"));
    assert!(!a.is_port_allocated(30081));
    assert!(a.is_port_allocated(30080));
}

#[test]
fn updates_keep_allocations_and_refuse_changes() {
    let mut a = dual();
    let old = create(
        &mut a,
        json!({"type": "NodePort", "selector": {"a": "b"}, "ports": [{"name": "http", "port": 80}]}),
    );
    let ip = old["spec"]["clusterIP"].clone();
    let np = old["spec"]["ports"][0]["nodePort"].clone();
    // A PUT that omits the allocated values keeps them.
    let mut put = svc(
        json!({"type": "NodePort", "selector": {"a": "c"}, "ports": [{"name": "http", "port": 80}]}),
    );
    a.allocate(&mut put, Some(&old))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(put["spec"]["clusterIP"], ip);
    assert_eq!(put["spec"]["clusterIPs"], json!([ip.clone()]));
    assert_eq!(put["spec"]["ports"][0]["nodePort"], np);
    assert_eq!(put["spec"]["ipFamilyPolicy"], "SingleStack");

    let mut changed = put.clone();
    changed["spec"]["clusterIP"] = json!("10.96.0.99");
    changed["spec"]["clusterIPs"] = json!(["10.96.0.99"]);
    let err = a.allocate(&mut changed, Some(&put)).expect_err("must fail");
    assert_eq!(
        messages(&err),
        ["spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.99\"}: may not change once set"]
    );
    assert!(!a.is_ip_allocated("10.96.0.99"));
}

#[test]
fn type_changes_drop_and_release() {
    let mut a = dual();
    let old = create(
        &mut a,
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"a": "b"}, "ports": [{"port": 80}]}),
    );
    let np = old["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .unwrap_or_default();
    let hc = old["spec"]["healthCheckNodePort"]
        .as_i64()
        .unwrap_or_default();
    let ip = old["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let mut to_cluster_ip = old.clone();
    to_cluster_ip["spec"]["type"] = json!("ClusterIP");
    apply_defaults("", "Service", &mut to_cluster_ip);
    a.allocate(&mut to_cluster_ip, Some(&old))
        .unwrap_or_else(|e| panic!("{e}"));
    let spec = &to_cluster_ip["spec"];
    assert!(spec["ports"][0].get("nodePort").is_none());
    assert!(spec.get("healthCheckNodePort").is_none());
    assert!(spec.get("externalTrafficPolicy").is_none());
    assert!(spec.get("allocateLoadBalancerNodePorts").is_none());
    assert_eq!(spec["clusterIP"], ip.as_str());
    assert!(!a.is_port_allocated(u16::try_from(np).unwrap_or_default()));
    assert!(!a.is_port_allocated(u16::try_from(hc).unwrap_or_default()));

    let mut to_external = to_cluster_ip.clone();
    to_external["spec"]["type"] = json!("ExternalName");
    to_external["spec"]["externalName"] = json!("db.example.com");
    a.allocate(&mut to_external, Some(&to_cluster_ip))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(to_external["spec"].get("clusterIP").is_none());
    assert!(to_external["spec"].get("ipFamilies").is_none());
    assert!(!a.is_ip_allocated(&ip));

    let mut back = to_external.clone();
    back["spec"]["type"] = json!("ClusterIP");
    a.allocate(&mut back, Some(&to_external))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        back["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|s| s.starts_with("10."))
    );
}

#[test]
fn dual_stack_upgrade_and_downgrade() {
    let mut a = dual();
    let old = create(&mut a, json!({"selector": {"a": "b"}}));
    let mut up = old.clone();
    up["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    a.allocate(&mut up, Some(&old))
        .unwrap_or_else(|e| panic!("{e}"));
    let ips = up["spec"]["clusterIPs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0], old["spec"]["clusterIP"]);
    let v6 = ips[1].as_str().unwrap_or_default().to_string();
    assert!(a.is_ip_allocated(&v6));

    let mut down = up.clone();
    down["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    a.allocate(&mut down, Some(&up))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(down["spec"]["clusterIPs"], json!([ips[0].clone()]));
    assert_eq!(down["spec"]["ipFamilies"], json!(["IPv4"]));
    assert!(!a.is_ip_allocated(&v6));

    let mut bad = up.clone();
    bad["spec"]["clusterIPs"] = json!([ips[0].clone()]);
    let err = a.allocate(&mut bad, Some(&up)).expect_err("must fail");
    assert!(
        messages(&err)
            .iter()
            .any(|m| m.contains("must be 'SingleStack' to release the secondary cluster IP")),
        "{err}"
    );
}

#[test]
fn release_restore_and_revert() {
    let mut a = dual();
    let s = create(&mut a, json!({"type": "NodePort", "ports": [{"port": 80}]}));
    let ip = s["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let np = u16::try_from(
        s["spec"]["ports"][0]["nodePort"]
            .as_i64()
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    a.release(&s);
    assert!(!a.is_ip_allocated(&ip));
    assert!(!a.is_port_allocated(np));

    let mut fresh = dual();
    fresh.restore(&s);
    assert!(fresh.is_ip_allocated(&ip));
    assert!(fresh.is_port_allocated(np));
    let mut dup = svc(json!({"clusterIP": ip.clone()}));
    assert!(matches!(
        fresh.allocate(&mut dup, None),
        Err(AllocError::Taken(_))
    ));

    let mut dry = svc(json!({"type": "NodePort", "ports": [{"port": 81}]}));
    fresh
        .allocate(&mut dry, None)
        .unwrap_or_else(|e| panic!("{e}"));
    fresh.revert(&dry, None);
    assert!(!fresh.is_ip_allocated(dry["spec"]["clusterIP"].as_str().unwrap_or_default()));
}

#[test]
fn exhausted_ranges() {
    let mut a =
        ServiceAllocator::new("10.0.0.0/30", "", 30000..=30001).unwrap_or_else(|e| panic!("{e}"));
    create(&mut a, json!({"type": "NodePort", "ports": [{"port": 1}]}));
    create(&mut a, json!({"type": "NodePort", "ports": [{"port": 1}]}));
    let mut third = svc(json!({}));
    let err = a.allocate(&mut third, None).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "Internal error occurred: failed to allocate a serviceIP: range is full"
    );
    assert_eq!(err.status_code(), 500);
}

#[test]
fn configuration_errors() {
    assert!(ServiceAllocator::new("", "", 30000..=32767).is_err());
    assert!(ServiceAllocator::new("fd00::/64", "", 30000..=32767).is_err());
    assert!(ServiceAllocator::new("10.0.0.0/33", "", 30000..=32767).is_err());
    assert!(ServiceAllocator::new("", "fd00:10:96::/108", 30000..=32767).is_ok());
}
