//! Shared pieces of the CSI driver end-to-end tests: a lab without loop
//! devices, the `kubevirt-csi-driver` binary started as a real process (its
//! controller service, as the ServiceAccount and with the Role of
//! `manifests/csi-driver/infra`, so its requests can be counted and a
//! missing rule fails), a gRPC channel to its unix socket, and request
//! builders. Waits watch (objects, the socket file); none polls.
//!
//! The binary must be built first: `cargo build -p kubevirt-csi-driver`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kubevirt_csi_proto::v1::controller_client::ControllerClient;
use kubevirt_csi_proto::v1::identity_client::IdentityClient;
use kubevirt_csi_proto::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};
use kubevirt_csi_proto::v1::{
    CapacityRange, CreateVolumeRequest, ListVolumesRequest, VolumeCapability,
};
use kubevirt_lab::daemon::{self, Daemon};
use kubevirt_lab::identity::{self, Overlay};
use kubevirt_lab::{Lab, LabConfig, wait};
use tonic::transport::Channel;

pub const BINARY: &str = "kubevirt-csi-driver";
/// Upper bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);
pub const GIB: i64 = 1 << 30;
/// Label key of the tenant labels in these tests.
pub const INFRA_ID: &str = "hypershift.openshift.io/infra-id";

pub use crate::common::init_logging;

/// A lab for the CSI controller: `vms` workers, no emulated disks.
pub async fn lab(vms: usize, cluster: &str, step_latency: Duration) -> anyhow::Result<Lab> {
    crate::common::start_lab_for(
        BINARY,
        "kubevirt-csi-driver",
        LabConfig {
            vms,
            devices: false,
            hotplug_step_latency: step_latency,
            cluster_name: cluster.to_string(),
            infra_namespace: format!("clusters-{cluster}"),
            infra_labels: BTreeMap::from([(INFRA_ID.to_string(), cluster.to_string())]),
            ..LabConfig::default()
        },
    )
    .await
}

/// How to run the driver.
#[derive(Clone, Debug, Default)]
pub struct DriverOptions {
    /// `INFRA_STORAGE_CLASS_ENFORCEMENT`.
    pub enforcement: Option<String>,
    pub extra_args: Vec<String>,
}

/// A running driver (controller service) and clients on its socket.
pub struct Driver {
    pub daemon: Daemon,
    pub socket: PathBuf,
    pub channel: Channel,
    pub controller: ControllerClient<Channel>,
    pub identity: IdentityClient<Channel>,
    /// The user it authenticates as on the infra API server.
    pub user: String,
}

impl Driver {
    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.daemon.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// Start the controller service of the lab's tenant, with its own token.
pub async fn start_driver(lab: &Lab, opts: DriverOptions) -> anyhow::Result<Driver> {
    start_driver_for(
        lab,
        &lab.cluster_name,
        &lab.infra_namespace,
        &lab.infra_labels,
        opts,
    )
    .await
}

/// Start the controller service for the tenant `name` (namespace, labels).
pub async fn start_driver_for(
    lab: &Lab,
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    opts: DriverOptions,
) -> anyhow::Result<Driver> {
    // The infra ServiceAccount and Role of manifests/csi-driver/infra, one
    // per tenant (a name suffix) since tenants may share a namespace.
    let me = identity::service_account(
        &lab.infra,
        &identity::CSI_INFRA,
        &Overlay::namespace(namespace).suffixed(&format!("-{name}")),
        identity::CSI_INFRA_ACCOUNT,
    )
    .await?;
    let user = me.user.clone();
    let dir = lab.dir.join(format!("csi-{name}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let kubeconfig = dir.join("infra.kubeconfig");
    lab.infra
        .write_kubeconfig(&kubeconfig, &me.token, Some(namespace))
        .context("write infra kubeconfig")?;
    let socket = dir.join("csi/csi.sock");
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec![
        format!("--endpoint=unix://{}", socket.display()),
        format!("--infra-cluster-kubeconfig={}", kubeconfig.display()),
        format!("--infra-cluster-namespace={namespace}"),
        format!("--infra-cluster-labels={}", labels.join(",")),
        "--run-node-service=false".to_string(),
        "--v=5".to_string(),
    ];
    args.extend(opts.extra_args.iter().cloned());
    let mut envs = vec![("RUST_BACKTRACE".to_string(), "1".to_string())];
    if let Some(e) = &opts.enforcement {
        envs.push(("INFRA_STORAGE_CLASS_ENFORCEMENT".to_string(), e.clone()));
    }
    wait::remove_stale(&socket)?;
    let daemon = daemon::spawn(BINARY, args, envs, &dir.join("driver.log"))?;
    std::fs::create_dir_all(dir.join("csi")).context("create the socket directory")?;
    if let Err(e) = wait::file_exists(&socket, true, WAIT).await {
        bail!("driver socket did not appear: {e}\n{}", daemon.log());
    }
    let channel = lab_guest::connect(&socket).await?;
    Ok(Driver {
        controller: ControllerClient::new(channel.clone()),
        identity: IdentityClient::new(channel.clone()),
        channel,
        daemon,
        socket,
        user,
    })
}

/// Wait until the driver serves from synced caches (its calls wait for that).
pub async fn synced(d: &Driver) -> anyhow::Result<()> {
    d.controller
        .clone()
        .list_volumes(ListVolumesRequest::default())
        .await
        .with_context(|| format!("driver not ready\n{}", d.log_tail()))?;
    Ok(())
}

pub fn cap(block: bool, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                ..Default::default()
            })
        }),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn rwo() -> VolumeCapability {
    cap(false, Mode::SingleNodeWriter)
}

/// A CreateVolume for `name` of `bytes`, RWO filesystem.
pub fn create_request(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwo()],
        parameters: [("bus".to_string(), "scsi".to_string())].into(),
        ..Default::default()
    }
}

/// The gRPC code of a call's result (Ok for success).
pub fn code<T>(r: &Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    match r {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

/// Assert a call failed with `want`, showing the message otherwise.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    want: tonic::Code,
    what: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected {want:?}, got OK: {:?}", v.into_inner()),
        Err(s) => assert_eq!(s.code(), want, "{what}: {}", s.message()),
    }
}

/// A volume name like the external-provisioner makes.
pub fn volume_name() -> String {
    format!("pvc-{}", uuid::Uuid::new_v4())
}

/// Non-watch infra API requests `user` made so far.
pub fn requests_by(lab: &Lab, user: &str) -> u64 {
    lab.infra
        .counters()
        .counts
        .iter()
        .filter(|((verb, _, u), _)| u == user && verb != "watch")
        .map(|(_, n)| n)
        .sum()
}

/// The requests `user` made, for failure messages.
pub fn requests_of(lab: &Lab, user: &str) -> Vec<String> {
    lab.infra
        .counters()
        .counts
        .iter()
        .filter(|((_, _, u), _)| u == user)
        .map(|((verb, resource, _), n)| format!("{verb} {resource}: {n}"))
        .collect()
}
