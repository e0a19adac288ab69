//! The CSI Controller service: guest volumes as CDI DataVolumes in the
//! tenant's infra namespace, attached to guest nodes by hotplugging them into
//! the nodes' KubeVirt VMs.
//!
//! [`ControllerService`] holds the infra I/O layer ([`infra::Infra`]), the
//! watch-fed [`index::Index`] all lookups read, the storage class policy and
//! the in-flight set that turns concurrent calls on one id into `Aborted`.
//! Each RPC lives in its own file and validates its request before any side
//! effect; the gRPC trait impl here only extracts the deadline, calls it and
//! maps the error once.

pub mod capability;
pub mod capacity;
pub mod deadline;
pub mod entries;
pub mod in_flight;
pub mod index;
pub mod infra;
pub mod names;
pub mod pagination;
pub mod quantity;
pub mod volume;
pub mod watch;

mod create;
mod delete;
mod expand;
mod list;
mod modify;
mod publish;
mod snapshot;
mod validate;

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kubevirt_csi_proto::v1::controller_server::Controller;
use kubevirt_csi_proto::v1::*;
use kubevirt_infra::TenantScope;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use self::entries::{SnapshotEntry, VmEntry, VolumeEntry};
use self::in_flight::InFlight;
use self::index::{CORE_KINDS, Index, Kind};
use self::infra::Infra;
use crate::enforcement::Enforcement;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The controller service.
pub struct ControllerService {
    infra: Infra,
    index: Arc<Index>,
    enforcement: Enforcement,
    in_flight: InFlight,
    /// Offer the spec's alpha RPCs (GetSnapshot).
    alpha_rpcs: bool,
}

impl ControllerService {
    /// Build the service over an existing index (tests, or a custom feed).
    pub fn new(
        client: kube::Client,
        scope: TenantScope,
        enforcement: Enforcement,
        index: Arc<Index>,
    ) -> Self {
        Self {
            infra: Infra::new(client, scope),
            index,
            enforcement,
            in_flight: InFlight::default(),
            alpha_rpcs: false,
        }
    }

    /// Offer (or not) the spec's alpha RPCs: advertised in the
    /// capabilities and served, else neither.
    pub fn with_alpha_rpcs(mut self, on: bool) -> Self {
        self.alpha_rpcs = on;
        self
    }

    /// Build the service and start the watches feeding its index; they stop
    /// when `cancel` fires. The index doubles as the readiness check.
    pub fn start(
        client: kube::Client,
        scope: TenantScope,
        enforcement: Enforcement,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> (Self, Arc<Index>) {
        let index = Arc::new(Index::new());
        watch::spawn(
            client.clone(),
            scope.clone(),
            index.clone(),
            metrics,
            cancel,
        );
        (Self::new(client, scope, enforcement, index.clone()), index)
    }

    fn scope(&self) -> &TenantScope {
        self.infra.scope()
    }

    /// Wait (bounded) for the core caches before answering from them.
    async fn synced(&self, deadline: tokio::time::Instant) -> Result<()> {
        self.index.wait_synced(&CORE_KINDS, deadline).await
    }

    /// Wait (bounded) for the snapshot cache as well; `NotServed` at once
    /// when the infra cluster has no VolumeSnapshot API (after re-checking).
    async fn snapshots_synced(&self, deadline: tokio::time::Instant) -> Result<()> {
        self.index
            .wait_synced(&[Kind::VolumeSnapshot], deadline)
            .await
    }

    /// The tenant's volume `name`: from the cache, else (just created, not
    /// yet seen by the watch) from the API. Objects outside the tenant scope
    /// are "not found".
    async fn lookup_volume(&self, name: &str) -> Result<Option<VolumeEntry>> {
        if self.scope().check_volume_name(name).is_err() {
            return Ok(None);
        }
        if let Some(e) = self.index.read(|s| s.volume(name).cloned()) {
            return Ok(Some(e));
        }
        let Some(dv) = self.infra.get_data_volume(name).await? else {
            return Ok(None);
        };
        match self.scope().check_volume("DataVolume", &dv.metadata) {
            Ok(()) => Ok(Some(entries::volume_entry(&dv))),
            Err(why) => {
                tracing::warn!(volume = name, reason = %why, "refusing an infra DataVolume outside the tenant scope");
                Ok(None)
            }
        }
    }

    /// The tenant's volume `id`, or NotFound.
    async fn volume(&self, id: &str) -> Result<VolumeEntry> {
        self.lookup_volume(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {id} not found")))
    }

    /// The infra claim behind the tenant's volume `name` (DataVolume
    /// `uid`), waiting on a watch for CDI to make it when the volume is new.
    /// The claim is the tenant's when the DataVolume owns it (CDI's
    /// ownership) or it carries the tenant labels, so no cluster-scoped
    /// access to PersistentVolumes is needed.
    async fn tenant_claim(
        &self,
        name: &str,
        uid: &str,
        deadline: tokio::time::Instant,
    ) -> Result<PersistentVolumeClaim> {
        let pvc = match self.infra.get_claim(name).await? {
            Some(pvc) => pvc,
            // Just created: CDI makes the claim right after the DataVolume.
            None => self
                .infra
                .wait_claim_exists(name, deadline)
                .await?
                .ok_or_else(|| {
                    Error::DeadlineExceeded(format!(
                        "the infra claim of volume {name} did not appear before the deadline"
                    ))
                })?,
        };
        let owned = pvc
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "DataVolume" && o.uid == uid);
        let labelled = self
            .scope()
            .check_volume("PersistentVolumeClaim", &pvc.metadata)
            .is_ok();
        if !owned && !labelled {
            return Err(Error::NotFound(format!(
                "the infra claim of volume {name} was not found"
            )));
        }
        Ok(pvc)
    }

    /// The tenant's claim of volume `name` once it is Bound: kube-apiserver
    /// lets only a bound claim's size and VolumeAttributesClass change, and
    /// a volume just created may still wait for its storage.
    async fn bound_claim(
        &self,
        name: &str,
        uid: &str,
        deadline: tokio::time::Instant,
    ) -> Result<PersistentVolumeClaim> {
        let pvc = self.tenant_claim(name, uid, deadline).await?;
        if claim_is_bound(Some(&pvc)) {
            return Ok(pvc);
        }
        match self
            .infra
            .wait_claim(name, deadline, claim_is_bound)
            .await?
        {
            Some(Some(pvc)) => Ok(pvc),
            Some(None) => Err(Error::NotFound(format!(
                "the infra claim of volume {name} is gone"
            ))),
            None => Err(Error::DeadlineExceeded(format!(
                "the infra claim of volume {name} was not bound before the deadline"
            ))),
        }
    }

    /// The tenant's VM `name` (cache, then API), or `None`.
    async fn lookup_vm(&self, name: &str) -> Result<Option<VmEntry>> {
        if let Some(e) = self.index.read(|s| s.vm(name).cloned()) {
            return Ok(Some(e));
        }
        let Some(vm) = self.infra.get_vm(name).await? else {
            return Ok(None);
        };
        match self.scope().check("VirtualMachine", &vm.metadata) {
            Ok(()) => Ok(Some(entries::vm_entry(&vm, self.scope()))),
            Err(why) => {
                tracing::warn!(vm = name, reason = %why, "refusing an infra VM outside the tenant scope");
                Ok(None)
            }
        }
    }

    /// The snapshot `name` (cache, then API): the tenant's, someone else's
    /// (with the reason), or absent; `NotServed` when the infra cluster has
    /// no VolumeSnapshot API (a re-check is asked for, not waited for: a
    /// snapshot to restore from is made by a CreateSnapshot, which waits).
    async fn lookup_snapshot(&self, name: &str) -> Result<Lookup<SnapshotEntry>> {
        self.index.check_served(Kind::VolumeSnapshot)?;
        if let Some(e) = self.index.read(|s| s.snapshot(name).cloned()) {
            return Ok(Lookup::Ours(e));
        }
        let Some(vs) = self.infra.get_snapshot(name).await? else {
            return Ok(Lookup::Absent);
        };
        match self.scope().check("VolumeSnapshot", &vs.metadata) {
            Ok(()) => Ok(Lookup::Ours(entries::snapshot_entry(&vs))),
            Err(why) => Ok(Lookup::Foreign(why.to_string())),
        }
    }
}

/// The result of looking an object up by name.
enum Lookup<T> {
    Ours(T),
    /// Exists, but outside the tenant scope (why).
    Foreign(String),
    Absent,
}

/// Log a failed call (never its request: it may carry secrets) and map it.
fn reply<T>(method: &'static str, r: Result<T>) -> std::result::Result<Response<T>, Status> {
    match r {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            let code = e.code();
            match code {
                tonic::Code::Internal | tonic::Code::Unavailable => {
                    tracing::error!(method, ?code, error = %e, "call failed")
                }
                _ => tracing::info!(method, ?code, error = %e, "call refused"),
            }
            Err(e.into())
        }
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> std::result::Result<Response<CreateVolumeResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "CreateVolume",
            create::create_volume(self, request.into_inner(), deadline).await,
        )
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> std::result::Result<Response<DeleteVolumeResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "DeleteVolume",
            delete::delete_volume(self, request.into_inner(), deadline).await,
        )
    }

    async fn controller_publish_volume(
        &self,
        request: Request<ControllerPublishVolumeRequest>,
    ) -> std::result::Result<Response<ControllerPublishVolumeResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "ControllerPublishVolume",
            publish::publish(self, request.into_inner(), deadline).await,
        )
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<ControllerUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "ControllerUnpublishVolume",
            publish::unpublish(self, request.into_inner(), deadline).await,
        )
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> std::result::Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "ValidateVolumeCapabilities",
            validate::validate_volume_capabilities(self, request.into_inner(), deadline).await,
        )
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> std::result::Result<Response<ListVolumesResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "ListVolumes",
            list::list_volumes(self, request.into_inner(), deadline).await,
        )
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> std::result::Result<Response<GetCapacityResponse>, Status> {
        reply(
            "GetCapacity",
            capacity::get_capacity(self, request.into_inner()).await,
        )
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        reply(
            "ControllerGetCapabilities",
            Ok(validate::capabilities(self.alpha_rpcs)),
        )
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> std::result::Result<Response<CreateSnapshotResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "CreateSnapshot",
            snapshot::create_snapshot(self, request.into_inner(), deadline).await,
        )
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> std::result::Result<Response<DeleteSnapshotResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "DeleteSnapshot",
            snapshot::delete_snapshot(self, request.into_inner(), deadline).await,
        )
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> std::result::Result<Response<ListSnapshotsResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "ListSnapshots",
            snapshot::list_snapshots(self, request.into_inner(), deadline).await,
        )
    }

    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> std::result::Result<Response<GetSnapshotResponse>, Status> {
        if !self.alpha_rpcs {
            return reply(
                "GetSnapshot",
                Err(Error::Unimplemented(
                    "GetSnapshot (alpha in the CSI spec) is offered only with --enable-alpha-rpcs"
                        .into(),
                )),
            );
        }
        let deadline = deadline::deadline(request.metadata());
        reply(
            "GetSnapshot",
            snapshot::get_snapshot(self, request.into_inner(), deadline).await,
        )
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> std::result::Result<Response<ControllerExpandVolumeResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "ControllerExpandVolume",
            expand::expand_volume(self, request.into_inner(), deadline).await,
        )
    }

    async fn controller_get_volume(
        &self,
        request: Request<ControllerGetVolumeRequest>,
    ) -> std::result::Result<Response<ControllerGetVolumeResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "ControllerGetVolume",
            list::get_volume(self, request.into_inner(), deadline).await,
        )
    }

    async fn controller_modify_volume(
        &self,
        request: Request<ControllerModifyVolumeRequest>,
    ) -> std::result::Result<Response<ControllerModifyVolumeResponse>, Status> {
        let deadline = deadline::deadline(request.metadata());
        reply(
            "ControllerModifyVolume",
            modify::modify_volume(self, request.into_inner(), deadline).await,
        )
    }
}

/// Whether the claim exists and is Bound (a wait condition).
fn claim_is_bound(pvc: Option<&PersistentVolumeClaim>) -> bool {
    pvc.and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        == Some("Bound")
}
