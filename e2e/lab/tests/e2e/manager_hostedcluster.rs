//! The HostedCluster controller end to end: a HostedCluster on the
//! management (= infra) cluster becomes the control-plane namespace with the
//! CSI controller and the CCM, their configuration exactly as the contract
//! says, their infra RBAC, and the CSI objects in the guest; it is not
//! Available while nothing runs those two (this lab has no kubelet for
//! them), and says so by name; a reconcile that
//! changes nothing writes nothing; an unsupported version is refused; a
//! Manual storage mapping makes its classes; deleting the HostedCluster
//! leaves nothing behind in the infra cluster.

use std::time::Duration;

use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::kubevirt::VirtualMachine;
use serde_json::json;

const CP: &str = "clusters-guest1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_cluster_deploys_every_component_and_cleans_up() -> anyhow::Result<()> {
    let lab = lab().await?;
    let mut manager = start_manager(&lab, &[]).await?;
    let infra = lab.infra_client();
    let guest = lab.guest_client();

    let result = async {
        create_hosted_cluster(&lab, &lab.guest, "guest1", "0.1.0", json!({})).await?;
        let hc = until_reconciled(&lab, "guest1").await?;
        ensure!(condition(&hc, "Degraded").is_some_and(|(s, _)| s == "False"), "degraded: {:?}", hc.data["status"]);
        ensure!(hc.data["status"]["controlPlaneNamespace"] == CP);
        ensure!(hc.data["status"]["observedGeneration"] == hc.metadata.generation.unwrap_or_default());
        // Deployed is not running: nothing runs pods in this lab, so the
        // cluster is not Available and says which daemons it waits for.
        let (status, reason) = condition(&hc, "Available").context("Available")?;
        ensure!(status == "False" && reason == "ComponentsNotAvailable", "Available {status} {reason}");
        let message = condition_message(&hc, "Available");
        ensure!(
            message
                == "waiting for the CSI controller (Deployment kubevirt-csi-controller: 0 of 1 replicas available); \
                    the cloud controller manager (Deployment kubevirt-cloud-controller-manager: 0 of 1 replicas available)",
            "Available: {message}"
        );
        for type_ in ["CSIControllerAvailable", "CloudControllerManagerAvailable"] {
            ensure!(
                condition(&hc, type_) == Some(("False".into(), "WaitingForReplicas".into())),
                "{type_}: {:?}",
                condition(&hc, type_)
            );
        }

        // The published versions.
        let cm: Api<ConfigMap> = Api::namespaced(infra.clone(), MANAGER_NAMESPACE);
        let versions = cm.get("supported-versions").await?;
        let parsed: serde_json::Value = serde_json::from_str(&versions.data.unwrap_or_default()["supported-versions"])?;
        ensure!(parsed == json!({"versions": ["0.1", "0.2"]}), "{parsed}");

        // driver-config.
        let cms: Api<ConfigMap> = Api::namespaced(infra.clone(), CP);
        let dc = cms.get("driver-config").await?.data.unwrap_or_default();
        ensure!(dc["infraClusterNamespace"] == CP);
        ensure!(dc["infraClusterLabels"] == "hypershift.openshift.io/infra-id=guest1-id");
        ensure!(dc["infraStorageClassEnforcement"] == "allowDefault: true\nallowAll: false\n");

        // The cloud config, byte for byte.
        let cc = cms.get("kubevirt-cloud-config").await?.data.unwrap_or_default();
        ensure!(
            cc["cloud-config"]
                == "kubeconfig: \"\"\nloadBalancer:\n  enabled: true\n  creationPollInterval: 0\n  selectorless: true\n  enableEPSController: true\n\
                    instancesV2:\n  enabled: true\n  zoneAndRegionEnabled: false\nnamespace: clusters-guest1\n\
                    infraLabels:\n  hypershift.openshift.io/infra-id: guest1-id\n",
            "{}",
            cc["cloud-config"]
        );

        // The CSI controller and CCM Deployments.
        let deployments: Api<Deployment> = Api::namespaced(infra.clone(), CP);
        let csi = deployments.get("kubevirt-csi-controller").await?;
        let pod = csi.spec.and_then(|s| s.template.spec).context("csi pod")?;
        ensure!(pod.service_account_name.as_deref() == Some("kubevirt-csi"));
        let driver = pod.containers.iter().find(|c| c.name == "csi-driver").context("csi-driver")?;
        ensure!(driver.image.as_deref() == Some("quay.io/kubevirt-rs/kubevirt-csi-driver:v0.1.0"));
        ensure!(
            driver.args.clone().unwrap_or_default()
                == [
                    "--endpoint=$(CSI_ENDPOINT)",
                    "--infra-cluster-namespace=$(INFRACLUSTER_NAMESPACE)",
                    "--tenant-cluster-kubeconfig=/var/run/secrets/tenantcluster/kubeconfig",
                    "--infra-cluster-labels=$(INFRACLUSTER_LABELS)",
                    "--run-node-service=false",
                    "--run-controller-service=true",
                    "--v=5",
                ]
        );
        let sidecars: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
        // This guest serves no VolumeSnapshot API: no csi-snapshotter,
        // which would exit at start and keep the pod from being ready.
        ensure!(
            sidecars == ["csi-driver", "csi-provisioner", "csi-attacher", "csi-liveness-probe", "csi-resizer"],
            "{sidecars:?}"
        );
        let ccm = deployments.get("kubevirt-cloud-controller-manager").await?;
        let ccm_pod = ccm.spec.and_then(|s| s.template.spec).context("ccm pod")?;
        ensure!(ccm_pod.containers[0].args.clone().unwrap_or_default().contains(&"--cluster-name=guest1-id".to_string()));

        // The guest kubeconfig the daemons mount is the HostedCluster's.
        let secrets: Api<Secret> = Api::namespaced(infra.clone(), CP);
        let tenant = secrets.get("kubevirt-csi-controller-tenant-kubeconfig").await?;
        let source: Api<Secret> = Api::namespaced(infra.clone(), NS);
        let given = source.get("guest1-admin-kubeconfig").await?;
        ensure!(tenant.data.unwrap_or_default()["kubeconfig"] == given.data.unwrap_or_default()["kubeconfig"]);
        ensure!(secrets.get_opt("service-network-admin-kubeconfig").await?.is_some());

        // Infra RBAC of both daemons.
        let roles: Api<Role> = Api::namespaced(infra.clone(), CP);
        let csi_role = roles.get("kubevirt-csi").await?;
        ensure!(csi_role.rules.unwrap_or_default().iter().any(|r| r
            .resources
            .as_ref()
            .is_some_and(|x| x.contains(&"virtualmachines/addvolume".to_string()))));
        ensure!(roles.get_opt("kubevirt-cloud-controller-manager").await?.is_some());
        let bindings: Api<RoleBinding> = Api::namespaced(infra.clone(), CP);
        ensure!(bindings.get_opt("kubevirt-csi").await?.is_some());
        let accounts: Api<ServiceAccount> = Api::namespaced(infra.clone(), CP);
        ensure!(accounts.get_opt("kubevirt-csi").await?.is_some());

        // The guest side.
        let driver_obj: Api<CSIDriver> = Api::all(guest.clone());
        let d = driver_obj.get("csi.kubevirt.io").await?;
        ensure!(d.spec.attach_required == Some(true) && d.spec.pod_info_on_mount == Some(true));
        ensure!(d.spec.fs_group_policy.as_deref() == Some("ReadWriteOnceWithFSType"));
        let classes: Api<StorageClass> = Api::all(guest.clone());
        let sc = classes.get("kubevirt-csi-infra-default").await?;
        ensure!(sc.provisioner == "csi.kubevirt.io");
        ensure!(sc.allow_volume_expansion == Some(true));
        ensure!(sc.parameters.unwrap_or_default().get("bus").map(String::as_str) == Some("scsi"));
        ensure!(sc.metadata.annotations.unwrap_or_default()["storageclass.kubernetes.io/is-default-class"] == "true");
        let ds: Api<DaemonSet> = Api::namespaced(guest.clone(), "kubevirt-csi-driver");
        ensure!(ds.get_opt("kubevirt-csi-node").await?.is_some());
        let crbs: Api<ClusterRoleBinding> = Api::all(guest.clone());
        ensure!(crbs.get_opt("kubevirt-csi-node-binding").await?.is_some());

        // Nothing changes: no writes, even after forced reconciles (an
        // annotation change on the HostedCluster triggers one).
        let before = (writes(&lab.infra), writes(&lab.guest));
        let hcs = hosted_clusters(&infra);
        for i in 0..3 {
            hcs.patch("guest1", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": {"e2e/poke": i.to_string()}}})))
                .await?;
        }
        // Let the reconciles happen; a deliberate, bounded quiet period.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = (writes(&lab.infra), writes(&lab.guest));
        ensure!(before == after, "writes without a change: infra {before:?} -> {after:?}");

        // Drift is repaired.
        deployments.delete("kubevirt-cloud-controller-manager", &DeleteParams::default()).await?;
        until(&deployments, "kubevirt-cloud-controller-manager", "CCM Deployment back", |d| d.map(|_| ())).await?;

        // Infra objects of the cluster that the daemons would make.
        let services: Api<Service> = Api::namespaced(infra.clone(), CP);
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "a1234", "labels": {INFRA_ID_LABEL: "guest1-id"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": 30080}]}
        }))?;
        services.create(&PostParams::default(), &svc).await?;
        let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), CP);
        let dv: DataVolume = serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "pvc-1", "labels": {INFRA_ID_LABEL: "guest1-id"}},
            "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}
        }))?;
        dvs.create(&PostParams::default(), &dv).await?;

        // Delete: everything goes.
        hcs.delete("guest1", &DeleteParams::default()).await?;
        until_dynamic(&hcs, "guest1", "HostedCluster gone", |hc| hc.is_none().then_some(())).await?;
        let namespaces: Api<Namespace> = Api::all(infra.clone());
        until(&namespaces, CP, "control-plane namespace gone", |ns| ns.is_none().then_some(())).await?;
        let vms: Api<VirtualMachine> = Api::all(infra.clone());
        let left_vms = vms.list(&ListParams::default().labels(&format!("{INFRA_ID_LABEL}=guest1-id"))).await?;
        ensure!(left_vms.items.is_empty());
        let all_dvs: Api<DataVolume> = Api::all(infra.clone());
        ensure!(all_dvs.list(&ListParams::default().labels(&format!("{INFRA_ID_LABEL}=guest1-id"))).await?.items.is_empty());
        let all_svcs: Api<Service> = Api::all(infra.clone());
        ensure!(all_svcs.list(&ListParams::default().labels(&format!("{INFRA_ID_LABEL}=guest1-id"))).await?.items.is_empty());
        ensure!(classes.get_opt("kubevirt-csi-infra-default").await?.is_none(), "guest StorageClass left behind");
        ensure!(driver_obj.get_opt("csi.kubevirt.io").await?.is_none(), "guest CSIDriver left behind");
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_versions_and_manual_storage() -> anyhow::Result<()> {
    let lab = lab().await?;
    let mut manager = start_manager(&lab, &[]).await?;
    let infra = lab.infra_client();
    let guest = lab.guest_client();

    let result = async {
        // A version outside supported-versions is refused.
        create_hosted_cluster(&lab, &lab.guest, "old", "0.9.0", json!({})).await?;
        let hcs = hosted_clusters(&infra);
        let refused = until_dynamic(&hcs, "old", "refusal", |hc| {
            hc.and_then(|hc| condition(hc, "ValidVersion")).filter(|(s, _)| s == "False")
        })
        .await?;
        ensure!(refused.1 == "UnsupportedVersion", "{refused:?}");
        let deployments: Api<Deployment> = Api::namespaced(infra.clone(), "clusters-old");
        ensure!(deployments.list(&ListParams::default()).await?.items.is_empty());
        // Fixing the version makes it Available.
        hcs.patch("old", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"release": {"version": "0.2.0"}}}))).await?;
        until_reconciled(&lab, "old").await?;
        let csi = deployments.get("kubevirt-csi-controller").await?;
        let image = csi.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].image.clone());
        ensure!(image == Some(Some("quay.io/kubevirt-rs/kubevirt-csi-driver:v0.2.0".to_string())), "{image:?}");

        // Manual storage: one guest class per mapping, the enforcement lists them.
        let manual = json!({"type": "Manual", "manual": {
            "storageClassMapping": [
                {"group": "g", "infraStorageClassName": "local", "guestStorageClassName": "fast"},
                {"infraStorageClassName": "slow-infra", "guestStorageClassName": "slow"}
            ]
        }});
        hcs.patch("old", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"platform": {"kubevirt": {"storageDriver": manual}}}})))
            .await?;
        let classes: Api<StorageClass> = Api::all(guest.clone());
        until(&classes, "fast", "guest class fast", |sc| {
            sc.and_then(|sc| sc.parameters.clone()).filter(|p| p.get("infraStorageClassName").map(String::as_str) == Some("local"))
        })
        .await?;
        until(&classes, "kubevirt-csi-infra-default", "default class pruned", |sc| sc.is_none().then_some(())).await?;
        let cms: Api<ConfigMap> = Api::namespaced(infra.clone(), "clusters-old");
        let enforcement = until(&cms, "driver-config", "manual enforcement", |cm| {
            cm.and_then(|cm| cm.data.clone())
                .map(|d| d["infraStorageClassEnforcement"].clone())
                .filter(|e| e.contains("allowList"))
        })
        .await?;
        let parsed: serde_yaml::Value = serde_yaml::from_str(&enforcement)?;
        ensure!(parsed["allowList"] == serde_yaml::to_value(["local", "slow-infra"])?, "{enforcement}");

        // Storage driver None: no CSI anywhere, the CCM stays.
        hcs.patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"platform": {"kubevirt": {"storageDriver": {"type": "None", "manual": null}}}}})),
        )
        .await?;
        until(&deployments, "kubevirt-csi-controller", "CSI controller pruned", |d| d.is_none().then_some(())).await?;
        until(&classes, "fast", "guest classes pruned", |sc| sc.is_none().then_some(())).await?;
        ensure!(deployments.get_opt("kubevirt-cloud-controller-manager").await?.is_some());
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}
