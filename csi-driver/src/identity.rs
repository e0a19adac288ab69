//! The CSI Identity service: the plugin's name and version, its capabilities
//! (controller service when it runs; online and offline expansion), and
//! `Probe`, which reports the driver's [`Health`]: not ready while the infra
//! caches are syncing, `FailedPrecondition` while the infra API is failing.

use kubevirt_csi_proto::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
    identity_server::Identity, plugin_capability,
};
use kubevirt_infra::labels::CSI_DRIVER_NAME;
use tonic::{Request, Response, Status};

use crate::health::{Health, Readiness};

/// The Identity service.
pub struct IdentityService {
    controller: bool,
    health: Health,
}

impl IdentityService {
    /// `controller`: whether this process serves the controller service.
    pub fn new(controller: bool, health: Health) -> Self {
        Self { controller, health }
    }
}

/// The capabilities advertised by a process that does (or does not) run the controller.
pub fn plugin_capabilities(controller: bool) -> Vec<PluginCapability> {
    use plugin_capability::{Service, Type, VolumeExpansion, service, volume_expansion};
    let mut caps = Vec::new();
    if controller {
        caps.push(PluginCapability {
            r#type: Some(Type::Service(Service {
                r#type: service::Type::ControllerService as i32,
            })),
        });
    }
    for t in [
        volume_expansion::Type::Online,
        volume_expansion::Type::Offline,
    ] {
        caps.push(PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion { r#type: t as i32 })),
        });
    }
    caps
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: CSI_DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: plugin_capabilities(self.controller),
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        match self.health.readiness() {
            Readiness::Ready => Ok(Response::new(ProbeResponse { ready: Some(true) })),
            Readiness::Starting(why) => {
                tracing::debug!(reason = %why, "probe: not ready yet");
                Ok(Response::new(ProbeResponse { ready: Some(false) }))
            }
            Readiness::Failing(why) => Err(Status::failed_precondition(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_only_does_not_claim_the_controller() {
        assert_eq!(plugin_capabilities(true).len(), 3);
        assert_eq!(plugin_capabilities(false).len(), 2);
    }
}
