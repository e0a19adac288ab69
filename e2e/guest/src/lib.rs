//! Guest-side stand-ins for the Kubernetes CSI sidecars, for the lab: each
//! is a kube-rs controller over the guest cluster that drives the driver's
//! CSI socket the way the real sidecar does.
//!
//! - [`provisioner`]: external-provisioner (and PV binding): PVC → CreateVolume → PV; released PV → DeleteVolume.
//! - [`attacher`]: external-attacher: VolumeAttachment → ControllerPublish/Unpublish.
//! - [`resizer`]: external-resizer: grown PVC → ControllerExpandVolume.
//! - [`snapshotter`]: snapshot-controller + external-snapshotter: VolumeSnapshot → CreateSnapshot.
//! - [`registrar`]: node-driver-registrar: a node's CSI node id into CSINode.
//! - [`csi`]: connecting to the driver's unix socket; [`crds`]: guest snapshot CRDs.
//!
//! [`run_all`] runs the four controllers until the future is dropped.

pub mod attacher;
pub mod crds;
pub mod csi;
pub mod error;
pub mod events;
pub mod kubelet;
pub mod objects;
pub mod provisioner;
pub mod registrar;
pub mod resizer;
pub mod snapshotter;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use tonic::transport::Channel;

pub use csi::{Csi, connect, connect_lazy};
pub use error::GuestError;

/// Retry interval after a failed reconcile (the sidecars back off similarly).
pub const RETRY: Duration = Duration::from_millis(500);

/// Settings shared by the stand-ins (the sidecars' flags).
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    /// The driver whose objects are handled (`csi.kubevirt.io`).
    pub driver_name: String,
    /// `--default-fstype`.
    pub default_fs_type: String,
    /// `--timeout`: the deadline of every CSI call.
    pub timeout: Duration,
    /// `--volume-name-prefix`.
    pub volume_name_prefix: String,
    /// Also play the PV controller's part (binding claims and volumes,
    /// releasing volumes whose claim is gone), as in the lab's guest
    /// clusters, whose kube-controller-manager does not run it. Off where
    /// a kube-controller-manager binds (hosted clusters): external-provisioner
    /// only creates pre-bound volumes and deletes released ones.
    pub pv_controller: bool,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            driver_name: kubevirt_infra::labels::CSI_DRIVER_NAME.to_string(),
            default_fs_type: "ext4".to_string(),
            timeout: Duration::from_secs(180),
            volume_name_prefix: "pvc".to_string(),
            pv_controller: true,
        }
    }
}

/// What every reconciler gets.
pub struct Ctx {
    pub client: kube::Client,
    pub csi: Csi,
    pub cfg: SidecarConfig,
}

impl Ctx {
    pub fn new(channel: Channel, client: kube::Client, cfg: SidecarConfig) -> Arc<Ctx> {
        let csi = Csi::new(channel, cfg.timeout);
        Arc::new(Ctx { client, csi, cfg })
    }
}

/// Error policy of every stand-in: log and retry shortly.
pub(crate) fn retry<K>(_: Arc<K>, err: &GuestError, _: Arc<Ctx>) -> Action {
    tracing::debug!(error = %err, "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// Run the provisioner, attacher, resizer and snapshotter against the
/// driver on `channel` and the guest cluster of `client`, until dropped.
/// The guest must serve the snapshot CRDs ([`crds::install`]).
pub async fn run_all(channel: Channel, client: kube::Client, cfg: SidecarConfig) {
    let ctx = Ctx::new(channel, client, cfg);
    tokio::join!(
        provisioner::run(ctx.clone()),
        attacher::run(ctx.clone()),
        resizer::run(ctx.clone()),
        snapshotter::run(ctx),
    );
}
