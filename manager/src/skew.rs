//! Kubernetes' version skew policy, as it binds a hosted cluster:
//!
//! - its control plane moves one minor version at a time, and never back
//!   a minor version (the API servers of one cluster stay within a minor
//!   version of each other, and an older kube-apiserver cannot be trusted
//!   with what a newer one stored; kubeadm refuses both);
//! - a kubelet is never newer than the API servers, and at most three
//!   minor versions older (Kubernetes 1.28 and later).
//!
//! The control plane's side is checked when its `kubernetesVersion`
//! changes, against the version it last finished rolling out and the
//! kubelets of its NodePools; a NodePool's side, against its cluster. Pure.

use crate::version::{ParseError, Version};

/// How many minor versions a kubelet may trail its API servers.
pub const KUBELET_MINORS_BEHIND: u64 = 3;

/// A version pair the policy forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skew {
    #[error(transparent)]
    Invalid(#[from] ParseError),
    #[error(
        "Kubernetes {desired} skips a minor version: the control plane runs {running} and moves one minor version at a time (next: {next})"
    )]
    SkipsMinor {
        running: String,
        desired: String,
        next: String,
    },
    #[error(
        "Kubernetes {desired} is a minor version older than {running}, which the control plane runs; a control plane does not go back a minor version"
    )]
    Downgrade { running: String, desired: String },
    #[error(
        "NodePool {pool} runs kubelet {kubelet}, newer than the control plane's {control_plane}; a kubelet may not be newer than its API servers"
    )]
    KubeletNewer {
        pool: String,
        kubelet: String,
        control_plane: String,
    },
    #[error(
        "NodePool {pool} runs kubelet {kubelet}, more than three minor versions older than the control plane's {control_plane}; upgrade the NodePool first"
    )]
    KubeletTooOld {
        pool: String,
        kubelet: String,
        control_plane: String,
    },
}

/// A version's place in minor-version order: (major, minor).
fn minor(v: &Version) -> (u64, u64) {
    (v.major, v.minor)
}

/// A control plane running `running` may move to `desired`.
pub fn control_plane_upgrade(running: &str, desired: &str) -> Result<(), Skew> {
    let (r, d) = (Version::parse(running)?, Version::parse(desired)?);
    let next = (r.major, r.minor + 1);
    if minor(&d) > next {
        return Err(Skew::SkipsMinor {
            running: r.to_string(),
            desired: d.to_string(),
            next: format!("{}.{}", next.0, next.1),
        });
    }
    if minor(&d) < minor(&r) {
        return Err(Skew::Downgrade {
            running: r.to_string(),
            desired: d.to_string(),
        });
    }
    Ok(())
}

/// NodePool `pool`'s kubelets at `kubelet` may serve a control plane at
/// `control_plane`.
pub fn kubelet(pool: &str, kubelet: &str, control_plane: &str) -> Result<(), Skew> {
    let (k, c) = (Version::parse(kubelet)?, Version::parse(control_plane)?);
    let describe = || (pool.to_string(), k.to_string(), c.to_string());
    if minor(&k) > minor(&c) {
        let (pool, kubelet, control_plane) = describe();
        return Err(Skew::KubeletNewer {
            pool,
            kubelet,
            control_plane,
        });
    }
    let behind = if k.major == c.major {
        c.minor - k.minor
    } else {
        u64::MAX
    };
    if behind > KUBELET_MINORS_BEHIND {
        let (pool, kubelet, control_plane) = describe();
        return Err(Skew::KubeletTooOld {
            pool,
            kubelet,
            control_plane,
        });
    }
    Ok(())
}

/// A control plane's move from `running` (the version it last finished
/// rolling out; none before its first rollout) to `desired`, with its
/// NodePools' kubelets (`(pool, version)`): the first rule it breaks.
pub fn cluster_upgrade(
    running: Option<&str>,
    desired: &str,
    pools: &[(String, String)],
) -> Result<(), Skew> {
    if let Some(running) = running {
        control_plane_upgrade(running, desired)?;
    }
    pools
        .iter()
        .try_for_each(|(pool, version)| kubelet(pool, version, desired))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_moves_one_minor_version_at_a_time() {
        assert!(control_plane_upgrade("1.31.4", "1.32.13").is_ok());
        assert!(control_plane_upgrade("1.32.13", "1.32.13").is_ok());
        assert!(
            control_plane_upgrade("v1.32.13", "1.32.2").is_ok(),
            "patch downgrade"
        );
        let skip = control_plane_upgrade("1.31.4", "1.33.0").expect_err("skips 1.32");
        assert_eq!(
            skip.to_string(),
            "Kubernetes 1.33.0 skips a minor version: the control plane runs 1.31.4 and moves one minor version at a time (next: 1.32)"
        );
        assert!(matches!(
            control_plane_upgrade("1.32.13", "1.31.9"),
            Err(Skew::Downgrade { .. })
        ));
        assert!(matches!(
            control_plane_upgrade("1.32.13", "2.0.0"),
            Err(Skew::SkipsMinor { .. })
        ));
        assert!(matches!(
            control_plane_upgrade("1.32", "1.33.0"),
            Err(Skew::Invalid(_))
        ));
    }

    #[test]
    fn kubelets_trail_by_at_most_three_minor_versions_and_never_lead() {
        for ok in ["1.32.13", "1.32.0", "1.31.9", "1.29.0"] {
            assert!(kubelet("np", ok, "1.32.13").is_ok(), "{ok}");
        }
        let old = kubelet("workers", "1.28.15", "1.32.13").expect_err("four behind");
        assert_eq!(
            old.to_string(),
            "NodePool workers runs kubelet 1.28.15, more than three minor versions older than the control plane's 1.32.13; upgrade the NodePool first"
        );
        assert!(matches!(
            kubelet("np", "1.33.0", "1.32.13"),
            Err(Skew::KubeletNewer { .. })
        ));
        assert!(matches!(
            kubelet("np", "0.99.0", "1.0.0"),
            Err(Skew::KubeletTooOld { .. })
        ));
    }

    #[test]
    fn a_cluster_upgrade_checks_its_control_plane_then_its_pools() {
        let pools = vec![
            ("a".to_string(), "1.32.1".to_string()),
            ("b".to_string(), "1.30.2".to_string()),
        ];
        assert!(cluster_upgrade(Some("1.32.13"), "1.33.0", &pools).is_ok());
        assert!(matches!(
            cluster_upgrade(Some("1.32.13"), "1.34.0", &pools),
            Err(Skew::SkipsMinor { .. })
        ));
        // Before its first rollout, only the pools bind a control plane.
        assert!(matches!(
            cluster_upgrade(None, "1.34.0", &pools),
            Err(Skew::KubeletTooOld { pool, .. }) if pool == "b"
        ));
        assert!(matches!(
            cluster_upgrade(Some("1.32.13"), "1.31.0", &pools),
            Err(Skew::Downgrade { .. })
        ));
    }
}
