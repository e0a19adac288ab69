//! NodePool checks the schema cannot express (or that an apiserver without
//! CEL would not enforce), and the rollout strategy they resolve to. Pure.

use kube::ResourceExt;

use crate::api::{HostedCluster, KubevirtNodePoolPlatform, NodePool, ReplaceStrategy, UpgradeType};
use crate::error::{Error, Result};
use crate::rollout::{Strategy, resolve, rolling_bounds};
use crate::skew::Skew;

/// Check the platform settings.
pub fn platform(p: &KubevirtNodePoolPlatform) -> Result<()> {
    let image = p
        .boot_image
        .container_disk_image
        .as_deref()
        .filter(|s| !s.is_empty());
    let url = p.boot_image.url.as_deref().filter(|s| !s.is_empty());
    if image.is_some() == url.is_some() {
        return Err(Error::InvalidSpec(
            "bootImage: exactly one of containerDiskImage and url must be set".into(),
        ));
    }
    if !p.attach_default_network && p.additional_networks.is_empty() {
        return Err(Error::InvalidSpec(
            "the default network can only be detached when additional networks are given".into(),
        ));
    }
    if let Some(bad) = p
        .additional_networks
        .iter()
        .find(|n| n.name.split('/').filter(|s| !s.is_empty()).count() != 2)
    {
        return Err(Error::InvalidSpec(format!(
            "additionalNetworks: {:?} is not <namespace>/<name>",
            bad.name
        )));
    }
    if p.compute.cores == 0 {
        return Err(Error::InvalidSpec(
            "compute.cores must be at least 1".into(),
        ));
    }
    if p.host_devices.iter().any(|d| d.count == 0) {
        return Err(Error::InvalidSpec(
            "hostDevices: count must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A hosted cluster's NodePool with a Kubernetes version of its own: its
/// kubelets against the control plane's version (the one it runs or rolls
/// out, which a refused version of the spec does not replace).
pub fn kubelet_skew(np: &NodePool, hc: &HostedCluster) -> std::result::Result<(), Skew> {
    let control_plane = hc
        .status
        .as_ref()
        .and_then(|s| s.version.as_ref())
        .and_then(|v| v.desired.kubernetes_version.as_deref())
        .or(hc.spec.release.kubernetes_version.as_deref());
    match (
        hc.is_hosted(),
        &np.spec.release.kubernetes_version,
        control_plane,
    ) {
        (true, Some(kubelet), Some(control_plane)) => {
            crate::skew::kubelet(&np.name_any(), kubelet, control_plane)
        }
        _ => Ok(()),
    }
}

/// The desired replica count.
pub fn replicas(pool: &NodePool) -> Result<u32> {
    u32::try_from(pool.spec.replicas)
        .map_err(|_| Error::InvalidSpec("replicas must not be negative".into()))
}

/// The rollout strategy of the pool.
pub fn strategy(pool: &NodePool) -> Result<Strategy> {
    let replicas = replicas(pool)?;
    let m = &pool.spec.management;
    Ok(match m.upgrade_type {
        UpgradeType::Replace => {
            let replace = m.replace.clone().unwrap_or_default();
            match replace.strategy {
                ReplaceStrategy::OnDelete => Strategy::OnDelete,
                ReplaceStrategy::RollingUpdate => {
                    let ru = replace.rolling_update.unwrap_or_default();
                    rolling_bounds(
                        resolve("maxSurge", &ru.max_surge, replicas, true)?,
                        resolve("maxUnavailable", &ru.max_unavailable, replicas, false)?,
                    )
                }
            }
        }
        UpgradeType::InPlace => {
            let ip = m.in_place.clone().unwrap_or_default();
            Strategy::InPlace {
                max_unavailable: resolve("maxUnavailable", &ip.max_unavailable, replicas, false)?
                    .max(1),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        BootImage, HostDevice, InPlaceUpgrade, KubevirtNetwork, NodePoolManagement,
        NodePoolPlatform, NodePoolSpec, Release, ReplaceUpgrade, RollingUpdate,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn platform_ok() -> KubevirtNodePoolPlatform {
        KubevirtNodePoolPlatform {
            compute: Default::default(),
            root_volume: Default::default(),
            boot_image: BootImage {
                container_disk_image: Some("img".into()),
                url: None,
            },
            additional_networks: vec![],
            attach_default_network: true,
            host_devices: vec![],
            node_selector: Default::default(),
        }
    }

    fn pool(management: NodePoolManagement, replicas: i32) -> NodePool {
        NodePool::new(
            "p",
            NodePoolSpec {
                cluster_name: "c".into(),
                replicas,
                release: Release {
                    version: "0.1.0".into(),
                    kubernetes_version: None,
                },
                platform: NodePoolPlatform {
                    kubevirt: platform_ok(),
                },
                management,
                node_drain_timeout_seconds: None,
            },
        )
    }

    #[test]
    fn platform_rules() {
        assert!(platform(&platform_ok()).is_ok());
        let mut both = platform_ok();
        both.boot_image.url = Some("http://x".into());
        assert!(platform(&both).is_err());
        let mut neither = platform_ok();
        neither.boot_image.container_disk_image = None;
        assert!(platform(&neither).is_err());
        let mut detached = platform_ok();
        detached.attach_default_network = false;
        assert!(platform(&detached).is_err());
        detached.additional_networks = vec![KubevirtNetwork {
            name: "ns/nad".into(),
        }];
        assert!(platform(&detached).is_ok());
        detached.additional_networks = vec![KubevirtNetwork { name: "nad".into() }];
        assert!(platform(&detached).is_err());
        let mut devices = platform_ok();
        devices.host_devices = vec![HostDevice {
            device_name: "gpu".into(),
            count: 0,
        }];
        assert!(platform(&devices).is_err());
    }

    #[test]
    fn strategies() {
        assert_eq!(
            strategy(&pool(NodePoolManagement::default(), 3)).expect("ok"),
            Strategy::RollingUpdate {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        let pct = NodePoolManagement {
            upgrade_type: UpgradeType::Replace,
            replace: Some(ReplaceUpgrade {
                strategy: ReplaceStrategy::RollingUpdate,
                rolling_update: Some(RollingUpdate {
                    max_surge: IntOrString::String("50%".into()),
                    max_unavailable: IntOrString::String("50%".into()),
                }),
            }),
            in_place: None,
            auto_repair: false,
        };
        assert_eq!(
            strategy(&pool(pct, 3)).expect("ok"),
            Strategy::RollingUpdate {
                max_surge: 2,
                max_unavailable: 1
            }
        );
        let in_place = NodePoolManagement {
            upgrade_type: UpgradeType::InPlace,
            replace: None,
            in_place: Some(InPlaceUpgrade {
                max_unavailable: IntOrString::Int(0),
            }),
            auto_repair: false,
        };
        assert_eq!(
            strategy(&pool(in_place, 3)).expect("ok"),
            Strategy::InPlace { max_unavailable: 1 }
        );
        let on_delete = NodePoolManagement {
            upgrade_type: UpgradeType::Replace,
            replace: Some(ReplaceUpgrade {
                strategy: ReplaceStrategy::OnDelete,
                rolling_update: None,
            }),
            in_place: None,
            auto_repair: false,
        };
        assert_eq!(
            strategy(&pool(on_delete, 3)).expect("ok"),
            Strategy::OnDelete
        );
        assert!(replicas(&pool(NodePoolManagement::default(), -1)).is_err());
    }

    #[test]
    fn a_pools_kubelets_keep_to_the_skew_policy_of_a_hosted_control_plane() {
        let hc = crate::desired::hosted::fixtures::hosted();
        let mut np = pool(NodePoolManagement::default(), 1);
        assert!(kubelet_skew(&np, &hc).is_ok(), "no version: the cluster's");
        np.spec.release.kubernetes_version = Some("1.29.4".into());
        assert!(kubelet_skew(&np, &hc).is_ok());
        np.spec.release.kubernetes_version = Some("1.28.15".into());
        assert!(matches!(
            kubelet_skew(&np, &hc),
            Err(Skew::KubeletTooOld { .. })
        ));
        np.spec.release.kubernetes_version = Some("1.33.0".into());
        assert!(matches!(
            kubelet_skew(&np, &hc),
            Err(Skew::KubeletNewer { .. })
        ));
        // An external control plane's version is not the manager's to know.
        let external = crate::desired::fixtures::hosted_cluster();
        assert!(kubelet_skew(&np, &external).is_ok());
    }
}
