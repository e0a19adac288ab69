//! Hosted control planes. On a management lab (kube-scheduler and the
//! management kubelet run the control plane's pods with the real etcd and
//! kube-apiserver, kube-controller-manager and kube-scheduler), a
//! HostedCluster published on an infra node's port becomes Available: etcd
//! has its quorum, the API server answers `/readyz` through the endpoint,
//! and kubectl, given the admin kubeconfig of the status, works through it
//! (from the host, through a loopback forward to the endpoint); the CSI
//! controller and the CCM run (their Deployments' pods, the CSI sidecars
//! played by the lab's stand-ins), and a claim in the hosted cluster
//! becomes a DataVolume, a snapshot of it becomes ready (the manager
//! installs the VolumeSnapshot API and the snapshot controller there), and
//! both go when deleted. Deleting the cluster stops the
//! control plane and removes its claims.
//!
//! A control-plane upgrade of a HighlyAvailable cluster (on four nodes,
//! room for the surge API server) rolls etcd one member at a time, never
//! below quorum, and the API servers by surge, never below three
//! available, while a client writing throughout loses no write (one retry
//! allowed); `status.version.history` then holds both releases, newest
//! first, the new one Completed. The lab runs the same binaries for every image tag: the
//! rollout is what is tested.
//!
//! Two clusters on a shared etcd (deployed in the management cluster as an
//! administrator would, auth enabled): each is Available without an etcd
//! of its own, what one writes the other never sees, every key lies under
//! a cluster's prefix, a cluster's etcd user is refused the other's prefix,
//! and deleting a cluster removes its keys and its etcd user.
//!
//! Without a kubelet in the management cluster: a HostedCluster
//! without a kubeconfig becomes its control plane's objects in the
//! control-plane namespace, accepted by the real kube-apiserver: the PKI
//! (checked with openssl: the serving certificate chains to the cluster CA
//! and names the published endpoint), etcd's StatefulSet and Services,
//! kube-apiserver published on a NodePort, kube-controller-manager and
//! kube-scheduler. The status names the endpoint and the admin kubeconfig.
//! Nothing runs the control plane's pods in the lab yet, and the conditions
//! say so: etcd has no quorum, the API server does not answer, Available
//! waits (and is not Degraded). The spec's rules (CEL) refuse a hosted
//! cluster without a Kubernetes version. Deleting the cluster removes the
//! namespace and the admin kubeconfig.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::manager_support::hosted::*;
use crate::manager_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, Secret, Service,
};
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::DynamicObject;
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::snapshot::VolumeSnapshot;
use kubevirt_lab::hcp;
use serde_json::json;

const CP: &str = "clusters-hosted1";

/// In the hosted cluster (reached through `admin`'s endpoint) the CSI
/// controller, the snapshot controller and the CCM are their own
/// ServiceAccounts, not its administrator: the tokens their Secrets hold
/// authenticate as those accounts, which may do their work and not more.
async fn daemons_act_as_their_own_accounts(
    lab: &kubevirt_lab::Lab,
    admin: &Path,
) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(lab.infra_client(), CP);
    let base: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(admin)?)?;
    for (secret, user, may, may_not) in [
        (
            "kubevirt-csi-controller-tenant-kubeconfig",
            "system:serviceaccount:kubevirt-csi-driver:kubevirt-csi-controller-sa",
            ["create", "persistentvolumes"],
            ["create", "namespaces"],
        ),
        (
            "csi-snapshot-controller-kubeconfig",
            "system:serviceaccount:kubevirt-csi-driver:csi-snapshot-controller",
            ["create", "volumesnapshotcontents.snapshot.storage.k8s.io"],
            ["delete", "persistentvolumes"],
        ),
        (
            "service-network-admin-kubeconfig",
            "system:serviceaccount:kube-system:cloud-controller-manager",
            ["patch", "nodes"],
            ["get", "secrets"],
        ),
    ] {
        let data = secrets.get(secret).await?.data.unwrap_or_default();
        let token = String::from_utf8(data.get("token").context("no token")?.0.clone())?;
        ensure!(
            String::from_utf8_lossy(&data.get("kubeconfig").context("no kubeconfig")?.0)
                .contains("tokenFile"),
            "{secret}: not a token kubeconfig"
        );
        let mut doc = base.clone();
        for u in doc["users"].as_sequence_mut().context("users")? {
            u["user"] = serde_yaml::to_value(json!({"token": token}))?;
        }
        let path = lab.dir.join(format!("{secret}.as-daemon.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&doc)?)?;
        let me = kubectl(
            &path,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        )?;
        ensure!(me == user, "{secret}: authenticates as {me}");
        ensure!(
            kubectl(&path, &["auth", "can-i", may[0], may[1]])?.trim() == "yes",
            "{user} may not {may:?}"
        );
        // `can-i` answers "no" with exit status 1.
        ensure!(
            kubectl(&path, &["auth", "can-i", may_not[0], may_not[1]]).is_err(),
            "{user} may {may_not:?}"
        );
    }
    Ok(())
}

/// A claim of the hosted cluster of `hosted` is provisioned as a DataVolume
/// in the control-plane namespace and bound; a VolumeSnapshot of it becomes
/// ready (the snapshot controller and csi-snapshotter at work); deleting
/// both deletes the DataVolume.
async fn a_claim_becomes_a_data_volume_and_goes_with_it(
    hosted: &kube::Client,
    management: &kube::Client,
) -> anyhow::Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(hosted.clone(), "default");
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "storageClassName": "kubevirt-csi-infra-default",
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    claims.create(&PostParams::default(), &claim).await?;
    let volume = until(&claims, "data", "claim data Bound", |c| {
        let c = c?;
        (c.status.as_ref()?.phase.as_deref() == Some("Bound"))
            .then(|| c.spec.as_ref()?.volume_name.clone())
            .flatten()
    })
    .await?;
    let pv = Api::<PersistentVolume>::all(hosted.clone())
        .get(&volume)
        .await?;
    let handle = pv
        .spec
        .and_then(|s| s.csi)
        .map(|c| c.volume_handle)
        .context("the volume has no CSI handle")?;
    let dvs: Api<DataVolume> = Api::namespaced(management.clone(), CP);
    ensure!(
        dvs.get_opt(&handle).await?.is_some(),
        "no DataVolume {handle} in {CP}"
    );
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(hosted.clone(), "default");
    let snapshot: VolumeSnapshot = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "data-snap"},
        "spec": {"volumeSnapshotClassName": "kubevirt-csi-snapshot",
                 "source": {"persistentVolumeClaimName": "data"}}
    }))?;
    snapshots.create(&PostParams::default(), &snapshot).await?;
    until(&snapshots, "data-snap", "snapshot data-snap ready", |s| {
        s?.status.as_ref()?.ready_to_use.filter(|r| *r)
    })
    .await?;
    snapshots
        .delete("data-snap", &DeleteParams::default())
        .await?;
    until(&snapshots, "data-snap", "snapshot data-snap gone", |s| {
        s.is_none().then_some(())
    })
    .await?;
    claims.delete("data", &DeleteParams::default()).await?;
    until(&dvs, &handle, "the claim's DataVolume deleted", |dv| {
        dv.is_none().then_some(())
    })
    .await?;
    Ok(())
}

/// Writes key `key` of a Secret to `dir/<secret>-<key>`.
fn write_key(dir: &Path, secret: &Secret, key: &str) -> anyhow::Result<std::path::PathBuf> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("{name} has no {key}"))?;
    let path = dir.join(format!("{name}-{key}"));
    std::fs::write(&path, &data.0)?;
    Ok(path)
}

fn openssl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("run openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_cluster_gets_its_control_plane_objects_and_honest_conditions()
-> anyhow::Result<()> {
    let lab = lab().await?;
    let mut manager = start_manager(&lab, &[]).await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);

    let result = async {
        // The spec's rules, enforced by the real API server.
        let refused = hcs.create(&PostParams::default(), &hosted("noversion", None)?).await;
        let message = match refused {
            Err(kube::Error::Api(s)) => s.message,
            other => anyhow::bail!("a hosted cluster without kubernetesVersion was not refused: {other:?}"),
        };
        ensure!(
            message.contains("release.kubernetesVersion is required when the manager hosts the control plane"),
            "{message}"
        );
        let mut shared = hosted("noshared", Some("1.32.13"))?;
        shared.data["spec"]["etcd"] = json!({"managementType": "Shared"});
        let message = match hcs.create(&PostParams::default(), &shared).await {
            Err(kube::Error::Api(s)) => s.message,
            other => anyhow::bail!("a Shared etcd without etcd.shared was not refused: {other:?}"),
        };
        ensure!(
            message.contains("etcd.shared is required when etcd.managementType is Shared"),
            "{message}"
        );

        // The examples apply as they are (the server validates them).
        let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        for (file, api) in [
            ("hostedcluster.yaml", hcs.clone()),
            ("hostedcluster-shared-etcd.yaml", hcs.clone()),
            ("nodepool.yaml", node_pools(&infra)),
        ] {
            let text = std::fs::read_to_string(examples.join(file))?;
            let obj: DynamicObject = serde_yaml::from_str(&text)?;
            api.create(&dry_run, &obj).await.with_context(|| format!("examples/{file}"))?;
        }

        hcs.create(&PostParams::default(), &hosted("hosted1", Some("1.32.13"))?).await?;
        let hc = until_dynamic(&hcs, "hosted1", "the endpoint and the admin kubeconfig in the status", |hc| {
            hc.filter(|hc| hc.data["status"]["kubeconfig"]["name"].is_string() && condition(hc, "EtcdAvailable").is_some())
                .cloned()
        })
        .await?;
        let status = &hc.data["status"];
        ensure!(status["kubeconfig"]["name"] == "hosted1-admin-kubeconfig", "{status}");
        ensure!(status["controlPlaneEndpoint"]["host"] == NODE_ADDRESS, "{status}");
        let port = status["controlPlaneEndpoint"]["port"].as_i64().context("port")?;

        // The published Service is the endpoint.
        let services: Api<Service> = Api::namespaced(infra.clone(), CP);
        let kas = services.get("kube-apiserver").await?;
        let spec = kas.spec.context("spec")?;
        ensure!(spec.type_.as_deref() == Some("NodePort"));
        ensure!(spec.ports.context("ports")?[0].node_port == Some(port as i32));
        for name in ["etcd-client", "etcd-discovery"] {
            ensure!(services.get_opt(name).await?.is_some(), "Service {name}");
        }

        // etcd and the components.
        let sts: Api<StatefulSet> = Api::namespaced(infra.clone(), CP);
        let etcd = sts.get("etcd").await?;
        ensure!(etcd.spec.as_ref().and_then(|s| s.replicas) == Some(1));
        let deployments: Api<Deployment> = Api::namespaced(infra.clone(), CP);
        for name in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
            let d = deployments.get(name).await?;
            let image = d.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].image.clone());
            ensure!(image == Some(Some(format!("registry.k8s.io/{name}:v1.32.13"))), "{name}: {image:?}");
        }

        // The PKI, checked by openssl.
        let secrets: Api<Secret> = Api::namespaced(infra.clone(), CP);
        let dir = lab.dir.join("hosted1-pki");
        std::fs::create_dir_all(&dir)?;
        let ca = write_key(&dir, &secrets.get("root-ca").await?, "ca.crt")?;
        let serving = write_key(&dir, &secrets.get("kas-server-crt").await?, "tls.crt")?;
        let (ca, serving) = (ca.to_string_lossy().into_owned(), serving.to_string_lossy().into_owned());
        openssl(&["verify", "-CAfile", &ca, &serving])?;
        let sans = openssl(&["x509", "-noout", "-ext", "subjectAltName", "-in", &serving])?;
        for want in [&format!("IP Address:{NODE_ADDRESS}"), "DNS:kube-apiserver.clusters-hosted1.svc", "IP Address:172.31.0.1"] {
            ensure!(sans.contains(want), "{want} missing from {sans}");
        }
        let admin = Api::<Secret>::namespaced(infra.clone(), NS).get("hosted1-admin-kubeconfig").await?;
        let text = String::from_utf8(admin.data.context("data")?["kubeconfig"].0.clone())?;
        ensure!(text.contains(&format!("https://{NODE_ADDRESS}:{port}")), "{text}");

        // Honest conditions: nothing runs the pods here yet.
        let hc = until_dynamic(&hcs, "hosted1", "control-plane conditions", |hc| {
            hc.filter(|hc| condition(hc, "KubeAPIServerAvailable").is_some() && condition(hc, "Available").is_some())
                .cloned()
        })
        .await?;
        ensure!(condition(&hc, "EtcdAvailable") == Some(("False".into(), "WaitingForQuorum".into())));
        ensure!(condition_message(&hc, "EtcdAvailable") == "0 of 1 etcd members ready");
        ensure!(condition(&hc, "KubeAPIServerAvailable") == Some(("False".into(), "WaitingForAPIServer".into())));
        ensure!(condition_message(&hc, "KubeAPIServerAvailable") == "0 of 1 API servers available");
        ensure!(condition(&hc, "Available").is_some_and(|(s, _)| s == "False"));
        ensure!(
            condition_message(&hc, "Available")
                == "waiting for the control plane: 0 of 1 etcd members ready; 0 of 1 API servers available",
            "{}",
            condition_message(&hc, "Available")
        );
        ensure!(condition(&hc, "Degraded").is_some_and(|(s, _)| s == "False"));

        // Deletion takes the namespace and the admin kubeconfig.
        hcs.delete("hosted1", &DeleteParams::default()).await?;
        until_dynamic(&hcs, "hosted1", "HostedCluster gone", |hc| hc.is_none().then_some(())).await?;
        let namespaces: Api<Namespace> = Api::all(infra.clone());
        ensure!(namespaces.get_opt(CP).await?.is_none(), "namespace {CP} left behind");
        ensure!(
            Api::<Secret>::namespaced(infra.clone(), NS).get_opt("hosted1-admin-kubeconfig").await?.is_none(),
            "admin kubeconfig left behind"
        );
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_control_plane_runs_and_serves_through_its_endpoint() -> anyhow::Result<()> {
    let lab = management_lab().await?;
    let mut manager = start_manager_in_netns(&lab, &[]).await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);

    let result = async {
        // A management node dedicated to control planes, as HyperShift
        // dedicates them (its label and NoSchedule taint), which the
        // cluster also selects: every pod of its control plane runs there.
        let dedicated = "infra-node-2";
        Api::<k8s_openapi::api::core::v1::Node>::all(infra.clone())
            .patch(
                dedicated,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({
                    "metadata": {"labels": {"pool": "control-planes",
                        "hypershift.openshift.io/control-plane": "true"}},
                    "spec": {"taints": [{"key": "hypershift.openshift.io/control-plane",
                        "value": "true", "effect": "NoSchedule"}]},
                })),
            )
            .await?;
        let mut hc = hosted("hosted1", Some("1.32.13"))?;
        hc.data["spec"]["nodeSelector"] = json!({"pool": "control-planes"});
        hcs.create(&PostParams::default(), &hc).await?;
        let hc = until_available(&lab, "hosted1").await?;
        for c in ["EtcdAvailable", "KubeAPIServerAvailable"] {
            ensure!(
                condition(&hc, c).is_some_and(|(s, _)| s == "True"),
                "{c}: {:?}",
                hc.data["status"]
            );
        }
        ensure!(condition_message(&hc, "EtcdAvailable") == "1 of 1 etcd members ready");
        // The manager provides a hosted guest's VolumeSnapshot API: its
        // CRDs, the snapshot controller and the driver's class.
        let snapshots = until_dynamic(&hcs, "hosted1", "VolumeSnapshotsAvailable", |hc| {
            let hc = hc?;
            let c = condition(hc, "VolumeSnapshotsAvailable")?;
            (c.0 == "True").then(|| condition_message(hc, "VolumeSnapshotsAvailable"))
        })
        .await?;
        ensure!(
            snapshots.contains("serves the VolumeSnapshot API"),
            "{snapshots}"
        );
        let status = &hc.data["status"];
        let port = status["controlPlaneEndpoint"]["port"]
            .as_u64()
            .context("port")? as u16;
        let endpoint = format!("{NODE_ADDRESS}:{port}");

        // etcd runs as a pod with an address of its own.
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(infra.clone(), CP);
        let etcd = pods.get("etcd-0").await?;
        let ip = etcd.status.and_then(|s| s.pod_ip).unwrap_or_default();
        ensure!(ip.starts_with("10.131."), "etcd-0 at {ip:?}");

        // kubectl with the admin kubeconfig, through a loopback forward.
        let (_forward, kubeconfig) = admin_kubeconfig(&lab, "hosted1", &endpoint).await?;
        ensure!(kubectl(&kubeconfig, &["get", "--raw", "/readyz"])?.trim() == "ok");
        kubectl(&kubeconfig, &["create", "namespace", "made-by-kubectl"])?;
        let namespaces = kubectl(&kubeconfig, &["get", "namespaces", "-o", "name"])?;
        ensure!(
            namespaces.contains("namespace/made-by-kubectl"),
            "{namespaces}"
        );
        // The manager's guest objects are there (through the same endpoint).
        let drivers = kubectl(&kubeconfig, &["get", "csidrivers", "-o", "name"])?;
        ensure!(drivers.contains("csi.kubevirt.io"), "{drivers}");

        // The CSI controller and the CCM run as pods of the management
        // cluster (their Deployments, as the manager wrote them), and a
        // claim in the hosted cluster becomes a DataVolume through them:
        // the provisioner sidecar creates the volume, the hosted
        // kube-controller-manager binds it, and deleting the claim deletes
        // the DataVolume.
        for c in ["CSIControllerAvailable", "CloudControllerManagerAvailable"] {
            ensure!(
                condition(&hc, c).is_some_and(|(s, _)| s == "True"),
                "{c}: {:?}",
                hc.data["status"]
            );
        }
        let elsewhere: Vec<String> = pods
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(dedicated))
            .map(|p| {
                format!(
                    "{:?} on {:?}",
                    p.metadata.name,
                    p.spec.as_ref().map(|s| &s.node_name)
                )
            })
            .collect();
        ensure!(
            elsewhere.is_empty(),
            "control-plane pods off {dedicated}: {elsewhere:?}"
        );
        daemons_act_as_their_own_accounts(&lab, &kubeconfig).await?;
        let (_bridge, hosted_client) = hcp::admin_client(&lab, &hc).await?;
        a_claim_becomes_a_data_volume_and_goes_with_it(&hosted_client, &infra).await?;

        // Deletion stops the control plane and removes its claims.
        hcs.delete("hosted1", &DeleteParams::default()).await?;
        until_dynamic(&hcs, "hosted1", "HostedCluster gone", |hc| {
            hc.is_none().then_some(())
        })
        .await?;
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(infra.clone(), CP);
        ensure!(
            claims.list(&Default::default()).await?.items.is_empty(),
            "claims left behind"
        );
        ensure!(
            kubectl(
                &kubeconfig,
                &["get", "--raw", "/readyz", "--request-timeout=2s"]
            )
            .is_err(),
            "still serving"
        );
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_highly_available_control_plane_spreads_and_survives_a_lost_member() -> anyhow::Result<()>
{
    let lab = management_lab().await?;
    let mut manager = start_manager_in_netns(&lab, &[]).await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);

    let result = async {
        let hc = highly_available(&hcs, "ha1").await?;

        // One member per node, etcd and API servers alike.
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(infra.clone(), "clusters-ha1");
        for app in ["etcd", "kube-apiserver"] {
            let list = pods
                .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
                .await?;
            let nodes: std::collections::BTreeSet<_> = list
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
                .collect();
            ensure!(
                list.items.len() == 3 && nodes.len() == 3,
                "{app} on {nodes:?}"
            );
        }
        let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
            Api::namespaced(infra.clone(), "clusters-ha1");
        for name in ["etcd", "kube-apiserver"] {
            ensure!(
                budgets.get_opt(name).await?.is_some(),
                "PodDisruptionBudget {name}"
            );
        }

        // A lost etcd member: the cluster keeps serving writes.
        let (_forward, kubeconfig) = admin_kubeconfig(&lab, "ha1", &endpoint_of(&hc)?).await?;
        let lost = pods.get("etcd-1").await?.metadata.uid;
        pods.delete("etcd-1", &DeleteParams::default()).await?;
        for i in 0..5 {
            kubectl(
                &kubeconfig,
                &[
                    "create",
                    "namespace",
                    &format!("written-while-degraded-{i}"),
                ],
            )?;
        }
        // The StatefulSet replaces the member; it rejoins with its claim.
        until(&pods, "etcd-1", "etcd-1 replaced and Ready", |p| {
            p.filter(|p| p.metadata.uid != lost)
                .and_then(|p| kubevirt_lab::wait::pod_ready(Some(p)))
        })
        .await?;
        let hc = until_dynamic(&hcs, "ha1", "etcd whole again", |hc| {
            hc.filter(|hc| condition_message(hc, "EtcdAvailable") == "3 of 3 etcd members ready")
                .cloned()
        })
        .await?;
        ensure!(condition(&hc, "Available").is_some_and(|(s, _)| s == "True"));
        let namespaces = kubectl(&kubeconfig, &["get", "namespaces", "-o", "name"])?;
        ensure!(
            namespaces.contains("written-while-degraded-4"),
            "{namespaces}"
        );
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_on_a_shared_etcd_keep_to_their_own_prefix() -> anyhow::Result<()> {
    let lab = management_lab().await?;
    let mut manager = start_manager_in_netns(&lab, &[]).await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);

    let result = async {
        let etcd = kubevirt_lab::shared_etcd::SharedEtcd::deploy(&lab, "shared-etcd").await?;
        etcd.create_credentials(&infra, NS, "shared-etcd-root")
            .await?;
        for name in ["tenant-a", "tenant-b"] {
            let mut hc = hosted(name, Some("1.32.13"))?;
            hc.data["spec"]["etcd"] = json!({
                "managementType": "Shared",
                "shared": {
                    "endpoints": [etcd.endpoint],
                    "credentialsSecret": {"name": "shared-etcd-root"},
                },
            });
            hcs.create(&PostParams::default(), &hc).await?;
        }
        tokio::time::timeout(Duration::from_secs(240), hcp::all_available(&hcs, 2))
            .await
            .context("two clusters on a shared etcd not Available within 240 s")??;

        // No etcd of their own; the condition names their place.
        let a = hcs.get("tenant-a").await?;
        ensure!(
            condition_message(&a, "EtcdAvailable").contains("prefix /clusters-tenant-a/"),
            "{}",
            condition_message(&a, "EtcdAvailable")
        );
        let sets: Api<StatefulSet> = Api::namespaced(infra.clone(), "clusters-tenant-a");
        ensure!(sets.get_opt("etcd").await?.is_none(), "an etcd of its own");

        // What one cluster writes, the other never sees.
        let (_fa, ka) = admin_kubeconfig(&lab, "tenant-a", &endpoint_of(&a)?).await?;
        let b = hcs.get("tenant-b").await?;
        let (_fb, kb) = admin_kubeconfig(&lab, "tenant-b", &endpoint_of(&b)?).await?;
        kubectl(&ka, &["create", "namespace", "only-in-a"])?;
        let in_b = kubectl(&kb, &["get", "namespaces", "-o", "name"])?;
        ensure!(!in_b.contains("only-in-a"), "{in_b}");

        // In etcd: each cluster's keys under its prefix, and a cluster's
        // user cannot read the other's.
        let keys = etcd.keys("/").await?;
        ensure!(
            keys.iter()
                .all(|k| k.starts_with("/clusters-tenant-a/")
                    || k.starts_with("/clusters-tenant-b/")),
            "keys outside the prefixes: {keys:?}"
        );
        ensure!(
            keys.iter()
                .any(|k| k == "/clusters-tenant-a/namespaces/only-in-a"),
            "{keys:?}"
        );
        let a_client = Api::<Secret>::namespaced(infra.clone(), "clusters-tenant-a")
            .get("etcd-client-tls")
            .await?;
        let pem = |k: &str| -> anyhow::Result<String> {
            Ok(String::from_utf8(
                a_client.data.as_ref().context("data")?[k].0.clone(),
            )?)
        };
        let (cert, key) = (pem("tls.crt")?, pem("tls.key")?);
        let own = etcd.keys_as(&cert, &key, "/clusters-tenant-a/").await?;
        ensure!(
            own.is_ok_and(|k| !k.is_empty()),
            "tenant-a cannot read its own keys"
        );
        match etcd.keys_as(&cert, &key, "/clusters-tenant-b/").await? {
            Err(s) => ensure!(s.message().contains("permission denied"), "{s:?}"),
            Ok(keys) => anyhow::bail!("tenant-a read tenant-b's keys: {keys:?}"),
        }

        // Deleting a cluster removes its keys, user and role; the other
        // keeps serving.
        hcs.delete("tenant-a", &DeleteParams::default()).await?;
        until_dynamic(&hcs, "tenant-a", "HostedCluster gone", |hc| {
            hc.is_none().then_some(())
        })
        .await?;
        let left = etcd.keys("/clusters-tenant-a/").await?;
        ensure!(left.is_empty(), "keys left behind: {left:?}");
        ensure!(
            etcd.keys_as(&cert, &key, "/clusters-tenant-a/")
                .await?
                .is_err(),
            "the deleted cluster's etcd user still reads"
        );
        ensure!(kubectl(&kb, &["get", "--raw", "/readyz"])?.trim() == "ok");
        ensure!(!etcd.keys("/clusters-tenant-b/").await?.is_empty());
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_upgrade_rolls_member_by_member_while_a_client_writes() -> anyhow::Result<()>
{
    // A fourth node: the surge API server needs a node of its own (required
    // anti-affinity), as on any management cluster with room to upgrade.
    let lab = management_lab_of(4).await?;
    let mut manager = start_manager_in_netns(&lab, &[]).await?;
    let infra = lab.infra_client();
    let hcs = hosted_clusters(&infra);
    let cp = "clusters-up1";

    let result = async {
        let hc = highly_available(&hcs, "up1").await?;
        let (_forward, kubeconfig) = admin_kubeconfig(&lab, "up1", &endpoint_of(&hc)?).await?;
        let config = guest_config(&kubeconfig).await?;
        let client = kube::Client::try_from(config.clone())?;

        // A client writes throughout, retrying a failed write once.
        let mut writer = Writer::start(config, Retries::Once);
        writer.more(3).await?;
        let stop = tokio_util::sync::CancellationToken::new();

        // The new version: every component's image changes (etcd's too:
        // kubeadm pairs 1.33 with another etcd). The lab runs the same
        // binaries for every tag, so what is tested is the rollout.
        let images_before = images_of(&infra, cp).await?;
        let sets: Api<StatefulSet> = Api::namespaced(infra.clone(), cp);
        let deployments: Api<Deployment> = Api::namespaced(infra.clone(), cp);
        let etcd_floor = tokio::spawn(lowest(
            sets.clone(),
            "etcd",
            stop.clone(),
            |s: &StatefulSet| {
                s.status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0)
            },
        ));
        let kas_floor = tokio::spawn(lowest(
            deployments.clone(),
            "kube-apiserver",
            stop.clone(),
            |d: &Deployment| {
                d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
            },
        ));
        hcs.patch(
            "up1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                &json!({"spec": {"release": {"kubernetesVersion": "1.33.2"}}}),
            ),
        )
        .await?;
        until(&sets, "etcd", "etcd rolled to the new version", |s| {
            let s = s?;
            let status = s.status.as_ref()?;
            let image = s.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                .image
                .clone()?;
            (image.ends_with(":3.5.21-0")
                && status.observed_generation == s.metadata.generation
                && status.updated_replicas == Some(3)
                && status.ready_replicas == Some(3)
                && status.current_revision == status.update_revision)
                .then_some(())
        })
        .await?;
        let deployments: Api<Deployment> = Api::namespaced(infra.clone(), cp);
        until(
            &deployments,
            "kube-apiserver",
            "API servers rolled to the new version",
            |d| {
                let d = d?;
                let status = d.status.as_ref()?;
                (status.observed_generation == d.metadata.generation
                    && status.updated_replicas == Some(3)
                    && status.available_replicas == Some(3)
                    && status.replicas == Some(3))
                .then_some(())
            },
        )
        .await?;
        until_dynamic(&hcs, "up1", "Available on the new version", |hc| {
            hc.filter(|hc| {
                condition(hc, "Available").is_some_and(|(s, _)| s == "True")
                    && condition_message(hc, "EtcdAvailable") == "3 of 3 etcd members ready"
            })
            .map(|_| ())
        })
        .await?;
        // The status tells the rollout's story, newest first.
        let history = until_dynamic(&hcs, "up1", "the upgrade Completed in the history", |hc| {
            let history = hc?.data["status"]["version"]["history"].as_array()?.clone();
            (history.first()?["state"] == "Completed"
                && history.first()?["kubernetesVersion"] == "1.33.2")
                .then_some(history)
        })
        .await?;
        // The first release's entry is closed: Completed, or Partial if
        // the upgrade came before every component of it was available.
        ensure!(
            history.len() == 2
                && history[1]["kubernetesVersion"] == "1.32.13"
                && history[1]["completionTime"].is_string(),
            "{history:?}"
        );
        stop.cancel();
        let written = writer.stop().await?;
        ensure!(
            written.failed.is_empty(),
            "writes failed after one retry: {:?}",
            written.failed
        );
        ensure!(
            written.count >= 10,
            "only {} writes during the upgrade",
            written.count
        );
        let written = written.count;
        // Quorum all along; never fewer API servers than the policy's.
        let (etcd_min, kas_min) = (etcd_floor.await??, kas_floor.await??);
        ensure!(etcd_min >= 2, "etcd fell to {etcd_min} ready members");
        ensure!(kas_min >= 3, "API servers fell to {kas_min} available");

        // Every pod runs the new images; every write is there.
        let images_after = images_of(&infra, cp).await?;
        for image in &images_after {
            ensure!(
                image.ends_with(":v1.33.2") || image.ends_with(":3.5.21-0"),
                "an old image is left: {images_after:?} (before: {images_before:?})"
            );
        }
        let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, "default");
        let count = maps
            .list(&kube::api::ListParams::default())
            .await?
            .items
            .iter()
            .filter(|m| {
                m.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("w-"))
            })
            .count();
        ensure!(count == written, "{count} of {written} writes are there");
        Ok(())
    }
    .await;
    let log = log_of(&manager);
    manager.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    result.with_context(|| format!("manager log:\n{log}"))
}

/// The lowest value `of` gives object `name` until `stop`, watched.
async fn lowest<K>(
    api: Api<K>,
    name: &str,
    stop: tokio_util::sync::CancellationToken,
    of: impl Fn(&K) -> i32,
) -> anyhow::Result<i32>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    use futures::StreamExt as _;
    let config = kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events =
        std::pin::pin!(kube::runtime::watcher(api, config).take_until(stop.cancelled_owned()));
    let mut low = i32::MAX;
    while let Some(event) = events.next().await {
        if let kube::runtime::watcher::Event::Apply(k)
        | kube::runtime::watcher::Event::InitApply(k) = event?
        {
            low = low.min(of(&k));
        }
    }
    Ok(low)
}

/// The control-plane images (etcd, kube-*) of the pods of control-plane
/// namespace `ns` that are not being deleted.
async fn images_of(
    client: &kube::Client,
    ns: &str,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .flat_map(|p| p.spec.map(|s| s.containers).unwrap_or_default())
        .filter_map(|c| c.image)
        .filter(|i| hcp::is_control_plane_image(i))
        .collect())
}
