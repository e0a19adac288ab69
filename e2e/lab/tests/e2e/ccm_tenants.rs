//! Two guest clusters share one infra namespace, each with its own CCM:
//! each infra Service and slice carries its own tenant's labels, selects
//! its own VMs, lists only its own VMIs, and neither CCM touches the other's
//! objects or a third party's look-alikes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ccm_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use kubevirt_infra::kubevirt::VirtualMachineInstance;
use serde_json::json;

fn endpoint_ips(slices: &[EndpointSlice]) -> Vec<String> {
    let mut ips: Vec<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .flat_map(|e| e.addresses.clone())
        .collect();
    ips.sort();
    ips
}

/// Creates `web` (Local) with an endpoint on `node` in a guest cluster.
async fn web_on(guest: &Client, node: &str) -> anyhow::Result<Service> {
    let svcs: Api<Service> = Api::namespaced(guest.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))?;
    let svc = svcs.create(&PostParams::default(), &svc).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(guest.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.9"], "nodeName": node, "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))?;
    slices.create(&PostParams::default(), &slice).await?;
    Ok(svc)
}

fn v4_of(vmi: &VirtualMachineInstance) -> String {
    vmi.status
        .iter()
        .flat_map(|s| s.interfaces.iter())
        .flat_map(|i| i.ip_addresses.iter())
        .find(|ip| !ip.contains(':'))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_a_namespace_never_cross() -> anyhow::Result<()> {
    let mut lab = lab(1, "alpha").await?;
    let beta = lab
        .add_guest_cluster(
            "beta",
            BTreeMap::from([(
                "hypershift.openshift.io/infra-id".to_string(),
                "beta".to_string(),
            )]),
            1,
        )
        .await?
        .clone();
    let alpha_tenant = Tenant::main(&lab);
    let beta_tenant = Tenant {
        cluster: beta.name.clone(),
        guest: &beta.api,
        infra_namespace: beta.infra_namespace.clone(),
        infra_labels: beta.infra_labels.clone(),
    };
    let mut ccm_a = start_ccm(
        &lab,
        &alpha_tenant,
        &CcmOptions {
            log: "ccm-alpha.log".into(),
            ..Default::default()
        },
    )
    .await?;
    let mut ccm_b = start_ccm(
        &lab,
        &beta_tenant,
        &CcmOptions {
            log: "ccm-beta.log".into(),
            ..Default::default()
        },
    )
    .await?;
    let result = scenario(&lab, &beta).await;
    let logs = format!("alpha:\n{}\nbeta:\n{}", log_of(&ccm_a), log_of(&ccm_b));
    ccm_a.terminate(Duration::from_secs(10)).await?;
    ccm_b.terminate(Duration::from_secs(10)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("CCM logs (tail):\n{logs}"))
}

async fn scenario(
    lab: &kubevirt_lab::Lab,
    beta: &kubevirt_lab::GuestCluster,
) -> anyhow::Result<()> {
    let infra = lab.infra_client();
    let ns = &lab.infra_namespace;
    let infra_svcs: Api<Service> = Api::namespaced(infra.clone(), ns);
    let infra_slices: Api<EndpointSlice> = Api::namespaced(infra.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(infra.clone(), ns);
    let (alpha_guest, beta_guest) = (lab.guest_client(), beta.api.client());

    // A third party's look-alikes in the same namespace.
    let foreign_svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "foreign", "namespace": ns, "labels": {
            TENANT_SERVICE_NAME: "web", TENANT_SERVICE_NAMESPACE: "default", CLUSTER_NAME: "gamma"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 30080}]}
    }))?;
    let foreign_svc = infra_svcs
        .create(&PostParams::default(), &foreign_svc)
        .await?;
    let foreign_slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "foreign-1", "namespace": ns, "labels": {
            SERVICE_NAME: "foreign", MANAGED_BY: MANAGED_BY_EPS, CLUSTER_NAME: "gamma",
            TENANT_SERVICE_NAME: "web", TENANT_SERVICE_NAMESPACE: "default"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.128.9.9"]}]
    }))?;
    let foreign_slice = infra_slices
        .create(&PostParams::default(), &foreign_slice)
        .await?;

    let a = web_on(&alpha_guest, &lab.nodes[0]).await?;
    let b = web_on(&beta_guest, &beta.nodes[0]).await?;
    let (a_name, b_name) = (
        infra_name(&a.uid().context("uid")?),
        infra_name(&b.uid().context("uid")?),
    );

    for (name, cluster, labels, node) in [
        (&a_name, &lab.cluster_name, &lab.infra_labels, &lab.nodes[0]),
        (&b_name, &beta.name, &beta.infra_labels, &beta.nodes[0]),
    ] {
        let svc = until(&infra_svcs, name, "infra Service", |s| s.cloned()).await?;
        ensure!(
            svc.labels().get(CLUSTER_NAME) == Some(cluster),
            "{name}: wrong cluster label"
        );
        for (k, v) in labels {
            ensure!(
                svc.labels().get(k) == Some(v),
                "{name}: infra label {k} missing"
            );
        }
        let want = vec![v4_of(&vmis.get(node).await?)];
        let selector = format!("{SERVICE_NAME}={name},{MANAGED_BY}={MANAGED_BY_EPS}");
        until_list(&infra_slices, &selector, "the tenant's own VMI", |s| {
            (endpoint_ips(s) == want
                && s.iter()
                    .all(|s| s.labels().get(CLUSTER_NAME) == Some(cluster)))
            .then_some(())
        })
        .await?;
    }

    // A Cluster-policy Service selects only its own tenant's VMs.
    let plain: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "plain", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 81, "protocol": "TCP", "targetPort": 81}]}
    }))?;
    let plain = Api::<Service>::namespaced(beta_guest.clone(), "default")
        .create(&PostParams::default(), &plain)
        .await?;
    let plain_infra = until(
        &infra_svcs,
        &infra_name(&plain.uid().unwrap_or_default()),
        "plain",
        |s| s.cloned(),
    )
    .await?;
    let selector = plain_infra
        .spec
        .and_then(|s| s.selector)
        .unwrap_or_default();
    ensure!(
        selector.get(CLUSTER_NAME) == Some(&beta.name),
        "selector {selector:?}"
    );

    // Alpha's Service goes; beta's objects and the foreign ones stay as they are.
    let b_slices_before = infra_slices
        .list(&kube::api::ListParams::default().labels(&format!("{SERVICE_NAME}={b_name}")))
        .await?
        .items;
    Api::<Service>::namespaced(alpha_guest.clone(), "default")
        .delete("web", &DeleteParams::default())
        .await?;
    until(&infra_svcs, &a_name, "alpha's infra Service deleted", |s| {
        s.is_none().then_some(())
    })
    .await?;
    until_list(
        &infra_slices,
        &format!("{SERVICE_NAME}={a_name}"),
        "alpha's slices deleted",
        |s| s.is_empty().then_some(()),
    )
    .await?;
    let b_slices_after = infra_slices
        .list(&kube::api::ListParams::default().labels(&format!("{SERVICE_NAME}={b_name}")))
        .await?
        .items;
    let versions = |s: &[EndpointSlice]| s.iter().map(|s| s.resource_version()).collect::<Vec<_>>();
    ensure!(
        versions(&b_slices_before) == versions(&b_slices_after),
        "beta's slices were touched"
    );
    ensure!(
        infra_svcs.get_opt(&b_name).await?.is_some(),
        "beta's infra Service is gone"
    );
    // The infra allocator writes its status; nobody else may change it.
    let foreign_now = infra_svcs.get("foreign").await?;
    ensure!(
        foreign_now.spec == foreign_svc.spec
            && foreign_now.metadata.labels == foreign_svc.metadata.labels
            && foreign_now.metadata.annotations == foreign_svc.metadata.annotations
            && foreign_now.metadata.finalizers == foreign_svc.metadata.finalizers
            && foreign_now.metadata.deletion_timestamp.is_none(),
        "foreign Service touched"
    );
    let foreign_slice_now = infra_slices.get("foreign-1").await?;
    ensure!(
        foreign_slice_now.resource_version() == foreign_slice.resource_version(),
        "foreign slice touched"
    );
    Ok(())
}
