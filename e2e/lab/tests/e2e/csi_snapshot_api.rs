//! An infra cluster without the VolumeSnapshot CRD: the CSI controller says
//! so once, answers the snapshot calls FailedPrecondition naming the missing
//! API (DeleteSnapshot OK: no snapshot can exist), serves volumes and is
//! ready as usual, re-checks only when a snapshot call asks, serves
//! snapshots on the first call after the CRD is installed, and notices by
//! itself when it is removed again.
//!
//! Build the driver first: `cargo build -p kubevirt-csi-driver`.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::csi_support::*;
use anyhow::{Context as _, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams};
use kubevirt_csi_proto::v1::*;
use kubevirt_infra::cdi::DataVolume;
use kubevirt_infra::snapshot::VolumeSnapshot;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tonic::Code;

const CRD: &str = "volumesnapshots.snapshot.storage.k8s.io";
const API: &str = "snapshot.storage.k8s.io/v1 volumesnapshots";
/// The driver's one warning about the missing API.
const NOT_SERVED: &str = "the infra cluster does not serve snapshot.storage.k8s.io/v1 volumesnapshots; snapshot calls fail until it does";
const SERVED: &str = "the infra cluster now serves snapshot.storage.k8s.io/v1 volumesnapshots";
/// The driver's debug line for a re-check that found the API still missing.
const RECHECKED: &str = "infra watch attempt failed again";

fn lines_with<'a>(log: &'a str, needle: &'a str) -> impl Iterator<Item = &'a str> {
    log.lines().filter(move |l| l.contains(needle))
}

fn snapshot_request(name: &str, source: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.to_string(),
        source_volume_id: source.to_string(),
        ..Default::default()
    }
}

/// Waits until `check` accepts the driver's log, watching the file with
/// inotify, at most [`WAIT`].
async fn until_log(d: &Driver, what: &str, check: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    struct Fd(Inotify);
    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(d.daemon.log_path(), AddWatchFlags::IN_MODIFY)?;
    // SAFETY: `Fd` owns the inotify descriptor (nix keeps it in an OwnedFd)
    // and only ever hands out that one; it is neither closed nor replaced
    // while the AsyncFd, which owns the `Fd`, exists.
    #[allow(unsafe_code)]
    let fd = unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("register inotify: {e}"))?;
    let wait = async {
        loop {
            // Checked after the watch is set up, so no write slips between.
            if check(&d.daemon.log()) {
                return anyhow::Ok(());
            }
            let mut ready = fd.readable().await?;
            match ready.get_inner().0.read_events() {
                Ok(_) => {}
                Err(Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    };
    match tokio::time::timeout(WAIT, wait).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "timed out after {WAIT:?} waiting for {what} in the driver log\n{}",
            d.log_tail()
        ),
    }
}

#[track_caller]
fn assert_names_the_api<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    what: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected FailedPrecondition, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                Code::FailedPrecondition,
                "{what}: {}",
                s.message()
            );
            assert!(s.message().contains(API), "{what}: {}", s.message());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_wait_for_their_crd() -> anyhow::Result<()> {
    let lab = lab(1, "nosnap", Duration::ZERO).await?;
    let infra = lab.infra_client();
    let crds: Api<CustomResourceDefinition> = Api::all(infra.clone());
    crds.delete(CRD, &DeleteParams::default()).await?;
    crate::common::until_within(&crds, CRD, "the CRD to go", WAIT, |c| {
        c.is_none().then_some(())
    })
    .await?;
    // The API server answers 404 for the resource, as a real one does.
    let snaps: Api<VolumeSnapshot> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    match snaps.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        other => anyhow::bail!("listing VolumeSnapshots without their CRD: {other:?}"),
    }

    // GetSnapshot (alpha) is answered too.
    let alpha = DriverOptions {
        extra_args: vec!["--enable-alpha-rpcs".to_string()],
        ..Default::default()
    };
    let d = start_driver(&lab, alpha).await?;
    let outcome = scenario(&lab, &d, &infra, &crds).await;
    let log = d.daemon.log();
    let tail = d.log_tail();
    let mut d = d;
    d.daemon.terminate(Duration::from_secs(5)).await?;
    lab.shutdown().await?;
    outcome.with_context(|| format!("driver log (tail):\n{tail}"))?;
    ensure!(!log.contains("panicked"), "the driver panicked:\n{tail}");
    Ok(())
}

async fn scenario(
    lab: &kubevirt_lab::Lab,
    d: &Driver,
    infra: &kube::Client,
    crds: &Api<CustomResourceDefinition>,
) -> anyhow::Result<()> {
    synced(d).await?;
    let mut c = d.controller.clone();

    // Volumes and readiness do not depend on snapshots.
    let source = volume_name();
    c.create_volume(create_request(&source, GIB)).await?;
    let dvs: Api<DataVolume> = Api::namespaced(infra.clone(), &lab.infra_namespace);
    crate::common::until_within(&dvs, &source, "the source volume", WAIT, |dv| {
        dv.filter(|d| d.phase() == "Succeeded").map(|_| ())
    })
    .await?;
    let probe = d
        .identity
        .clone()
        .probe(ProbeRequest {})
        .await?
        .into_inner();
    ensure!(
        probe.ready == Some(true),
        "not ready without snapshots: {probe:?}"
    );

    // Every snapshot call answers at once, naming the API.
    let started = Instant::now();
    assert_names_the_api(
        c.create_snapshot(snapshot_request("snapshot-a", &source))
            .await,
        "CreateSnapshot",
    );
    assert_names_the_api(
        c.list_snapshots(ListSnapshotsRequest::default()).await,
        "ListSnapshots",
    );
    assert_names_the_api(
        c.get_snapshot(GetSnapshotRequest {
            snapshot_id: "snapshot-a".into(),
            ..Default::default()
        })
        .await,
        "GetSnapshot",
    );
    let restore = CreateVolumeRequest {
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: "snapshot-a".into(),
                },
            )),
        }),
        ..create_request(&volume_name(), GIB)
    };
    assert_names_the_api(
        c.create_volume(restore).await,
        "CreateVolume from a snapshot",
    );
    c.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: "snapshot-a".into(),
        ..Default::default()
    })
    .await
    .context("DeleteSnapshot without the API: nothing to delete")?;
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(10),
        "the snapshot calls took {took:?}: they waited instead of answering"
    );

    // One warning, however often the calls made it look again; no recovery.
    let log = d.daemon.log();
    let warned = lines_with(&log, NOT_SERVED).count();
    ensure!(warned == 1, "{warned} not-served warnings, want 1");
    let rechecks = lines_with(&log, RECHECKED)
        .filter(|l| l.contains("VolumeSnapshot"))
        .count();
    // CreateSnapshot, ListSnapshots, GetSnapshot and DeleteSnapshot wait for
    // a re-check; CreateVolume asks for one: at most 5, and none unasked.
    ensure!(
        (1..=5).contains(&rechecks),
        "{rechecks} re-checks for 5 snapshot calls"
    );
    ensure!(
        !log.contains("infra watch recovered"),
        "a recovery was logged"
    );
    ensure!(
        lines_with(&log, "infra watch failed").count() == 0,
        "a missing API logged as a failing watch"
    );

    // The CRD installed: the next call is served.
    lab_cluster::crds::apply(infra, &lab_sim::crds::definitions()?).await?;
    ensure!(crds.get_opt(CRD).await?.is_some(), "the CRD is back");
    let snap = tokio::time::timeout(
        WAIT,
        c.create_snapshot(snapshot_request("snapshot-a", &source)),
    )
    .await
    .context("CreateSnapshot after the CRD came back")??
    .into_inner()
    .snapshot
    .context("no snapshot in the response")?;
    ensure!(snap.source_volume_id == source, "{snap:?}");
    let listed = c
        .list_snapshots(ListSnapshotsRequest::default())
        .await?
        .into_inner();
    ensure!(listed.entries.len() == 1, "{listed:?}");
    c.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: "snapshot-a".into(),
        ..Default::default()
    })
    .await?;

    let log = d.daemon.log();
    ensure!(
        lines_with(&log, NOT_SERVED).count() == 1,
        "warned again after the CRD came back"
    );
    ensure!(
        lines_with(&log, SERVED).count() == 1,
        "the API's arrival is not logged once"
    );
    ensure!(
        !log.contains("infra watch recovered"),
        "a recovery was logged"
    );

    // The CRD removed while watched: the driver notices by itself, says so
    // once more, and refuses again.
    crds.delete(CRD, &DeleteParams::default()).await?;
    until_log(d, "the CRD's removal", |log| {
        lines_with(log, NOT_SERVED).count() == 2
    })
    .await?;
    assert_names_the_api(
        c.create_snapshot(snapshot_request("snapshot-b", &source))
            .await,
        "CreateSnapshot after the CRD went",
    );
    let log = d.daemon.log();
    ensure!(
        lines_with(&log, NOT_SERVED).count() == 2,
        "the CRD's removal is logged more than once"
    );
    ensure!(
        !log.contains("infra watch recovered"),
        "a recovery was logged"
    );

    c.delete_volume(DeleteVolumeRequest {
        volume_id: source,
        ..Default::default()
    })
    .await?;
    Ok(())
}
