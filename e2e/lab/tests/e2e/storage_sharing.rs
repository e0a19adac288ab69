//! A volume's life across pods: data written by one pod is read by the next
//! on the same node; a pod on another node gets the volume re-attached there
//! (filesystem and block) with the data intact; one pod mounts three claims;
//! several pods on one node share a claim, and the volume stays staged and
//! attached until the last of them is gone.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use std::time::Duration;

use crate::storage_support::*;
use lab_guest::kubelet::attachment_name;

/// The VolumeAttachment of claim `claim`'s volume on `node`.
async fn attachment_of(s: &Storage, claim: &str, node: &str) -> anyhow::Result<String> {
    let pv = s.bound(claim).await?;
    let handle = pv
        .spec
        .and_then(|s| s.csi)
        .map(|c| c.volume_handle)
        .unwrap_or_default();
    Ok(attachment_name(&handle, DRIVER, node))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_persists_across_pods_on_one_node() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = async {
            let node = s.lab.nodes[0].clone();
            s.provision(&Claim::fs("data", "1Gi")).await?;
            let first = s.run_pod("first", &node, &["data"]).await?;
            write_file(
                &first.volume("data")?.join("state"),
                b"written by the first pod",
            )?;
            s.delete_pod("first").await?;
            assert!(s.mounts_on(&node)?.is_empty());

            let second = s.run_pod("second", &node, &["data"]).await?;
            assert_ne!(first.uid, second.uid);
            assert_eq!(
                read_file(&second.volume("data")?.join("state"))?,
                b"written by the first pod"
            );
            s.delete_pod("second").await?;
            s.delete_claim("data").await
        }
        .await;
        s.finish(outcome).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_move_to_a_pod_on_another_node() -> anyhow::Result<()> {
    bounded(async {
        // Slow hotplugs: the pods wait for attachments in flight.
        let s = Storage::start_with_latency(2, Duration::from_millis(100)).await?;
        let outcome = async {
            let (a, b) = (s.lab.nodes[0].clone(), s.lab.nodes[1].clone());
            s.provision(&Claim::fs("data", "1Gi")).await?;
            s.provision(&Claim::block("raw", "1Gi")).await?;
            let on_a = s.run_pod("on-a", &a, &["data", "raw"]).await?;
            write_file(&on_a.volume("data")?.join("state"), b"written on node a")?;
            let raw: &[u8] = b"raw, written on node a";
            write_device(&on_a.volume("raw")?, 0, raw)?;
            s.delete_pod("on-a").await?;
            s.detached(&attachment_of(&s, "data", &a).await?).await?;
            s.detached(&attachment_of(&s, "raw", &a).await?).await?;
            assert!(s.mounts_on(&a)?.is_empty());

            let on_b = s.run_pod("on-b", &b, &["data", "raw"]).await?;
            assert_eq!(
                read_file(&on_b.volume("data")?.join("state"))?,
                b"written on node a"
            );
            assert_eq!(read_device(&on_b.volume("raw")?, 0, raw.len())?, raw);
            let va = s
                .attachments()
                .get(&attachment_of(&s, "data", &b).await?)
                .await?;
            assert!(va.status.is_some_and(|st| st.attached));
            s.delete_pod("on-b").await?;
            s.delete_claim("data").await?;
            s.delete_claim("raw").await
        }
        .await;
        s.finish(outcome).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_mounts_three_claims() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = async {
            let node = s.lab.nodes[0].clone();
            let claims = ["one", "two", "three"];
            for c in claims {
                s.provision(&Claim::fs(c, "1Gi")).await?;
            }
            let pod = s.run_pod("triple", &node, &claims).await?;
            for c in claims {
                write_file(&pod.volume(c)?.join("name"), c.as_bytes())?;
            }
            for c in claims {
                assert_eq!(
                    read_file(&pod.volume(c)?.join("name"))?,
                    c.as_bytes(),
                    "each claim is its own disk"
                );
                let others: Vec<_> = std::fs::read_dir(pod.volume(c)?)?
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "name" && n != "lost+found")
                    .collect();
                assert!(
                    others.is_empty(),
                    "claim {c} holds only its own file: {others:?}"
                );
            }
            assert_eq!(
                s.mounts_on(&node)?.len(),
                6,
                "three volumes staged and published"
            );
            let vmi = s.lab.infra_client();
            let vmis: kube::Api<kubevirt_infra::kubevirt::VirtualMachineInstance> =
                kube::Api::namespaced(vmi, &s.lab.infra_namespace);
            let hotplugged = vmis
                .get(&node)
                .await?
                .status
                .map(|st| {
                    st.volume_status
                        .iter()
                        .filter(|v| v.hotplug_volume.is_some())
                        .count()
                })
                .unwrap_or(0);
            assert_eq!(hotplugged, 3, "three disks hotplugged into the node's VM");
            s.delete_pod("triple").await?;
            assert!(s.mounts_on(&node)?.is_empty());
            for c in claims {
                s.delete_claim(c).await?;
            }
            Ok(())
        }
        .await;
        s.finish(outcome).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_pods_on_one_node() -> anyhow::Result<()> {
    bounded(async {
        let s = Storage::start(1).await?;
        let outcome = async {
            let node = s.lab.nodes[0].clone();
            s.provision(&Claim::fs("shared", "1Gi")).await?;
            s.provision(&Claim::fs("own", "1Gi")).await?;
            let p1 = s.run_pod("p1", &node, &["shared"]).await?;
            let p2 = s.run_pod("p2", &node, &["shared", "own"]).await?;
            let p3 = s.run_pod("p3", &node, &["shared"]).await?;
            write_file(&p1.volume("shared")?.join("from-p1"), b"p1")?;
            write_file(&p2.volume("own")?.join("mine"), b"p2")?;
            assert_eq!(
                read_file(&p3.volume("shared")?.join("from-p1"))?,
                b"p1",
                "one volume, three pods"
            );
            // shared: staged once, published three times; own: staged and published.
            assert_eq!(s.mounts_on(&node)?.len(), 6);
            let shared_va = attachment_of(&s, "shared", &node).await?;

            // The volume stays staged and attached while another pod uses it.
            s.delete_pod("p1").await?;
            assert!(!p1.volume("shared")?.exists());
            assert_eq!(read_file(&p3.volume("shared")?.join("from-p1"))?, b"p1");
            assert!(
                s.attachments().get_opt(&shared_va).await?.is_some(),
                "still attached for p2 and p3"
            );
            s.delete_pod("p2").await?;
            assert_eq!(
                s.mounts_on(&node)?.len(),
                2,
                "only p3's volume is left, staged and published"
            );
            write_file(&p3.volume("shared")?.join("from-p3"), b"p3")?;

            s.delete_pod("p3").await?;
            s.detached(&shared_va).await?;
            assert!(s.mounts_on(&node)?.is_empty());
            // p2's own volume detaches on its own schedule.
            crate::common::until_list_within(
                &s.attachments(),
                "",
                "no attachment left",
                WAIT,
                |all| all.is_empty().then_some(()),
            )
            .await?;
            s.delete_claim("shared").await?;
            s.delete_claim("own").await
        }
        .await;
        s.finish(outcome).await
    })
    .await
}
