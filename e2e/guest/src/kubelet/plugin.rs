//! The node plugin as kubelet sees it: [`Plugin`] wraps the CSI Node client
//! on the plugin's unix socket, each call bounded by kubelet's CSI timeout
//! and its failure turned into an [`Error`] naming the call and volume;
//! [`register`] is plugin registration (node-driver-registrar's and
//! kubelet's halves): connect to the plugin as the registrar does
//! (reconnecting with backoff until it serves), ask for its node id
//! (NodeGetInfo) and record it in the node's CSINode.

use std::path::Path;
use std::time::Duration;

use kubevirt_csi_proto::v1::node_client::NodeClient;
use kubevirt_csi_proto::v1::{
    NodeExpandVolumeRequest, NodeGetInfoRequest, NodeGetInfoResponse, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest,
};
use tonic::transport::Channel;

use super::error::Error;

/// Deadline of each CSI call (kubelet's `csiTimeout`).
pub const CSI_TIMEOUT: Duration = Duration::from_secs(120);
/// First and longest pause between connection attempts while the plugin
/// does not serve yet (no socket, or not listening).
const REGISTER_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// The CSI Node service of one node plugin.
#[derive(Clone, Debug)]
pub struct Plugin {
    node: NodeClient<Channel>,
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CSI_TIMEOUT);
    r
}

impl Plugin {
    /// A client of the plugin listening on `socket`; it connects (and
    /// reconnects) on use.
    pub fn new(socket: &Path) -> Self {
        Self {
            node: NodeClient::new(crate::csi::connect_lazy(socket)),
        }
    }

    pub async fn get_info(&self) -> Result<NodeGetInfoResponse, Error> {
        Ok(self
            .node
            .clone()
            .node_get_info(request(NodeGetInfoRequest {}))
            .await
            .map_err(Error::csi("NodeGetInfo", ""))?
            .into_inner())
    }

    pub async fn stage(&self, req: NodeStageVolumeRequest) -> Result<(), Error> {
        let volume = req.volume_id.clone();
        self.node
            .clone()
            .node_stage_volume(request(req))
            .await
            .map_err(Error::csi("NodeStageVolume", &volume))?;
        Ok(())
    }

    pub async fn publish(&self, req: NodePublishVolumeRequest) -> Result<(), Error> {
        let volume = req.volume_id.clone();
        self.node
            .clone()
            .node_publish_volume(request(req))
            .await
            .map_err(Error::csi("NodePublishVolume", &volume))?;
        Ok(())
    }

    pub async fn unpublish(&self, req: NodeUnpublishVolumeRequest) -> Result<(), Error> {
        let volume = req.volume_id.clone();
        self.node
            .clone()
            .node_unpublish_volume(request(req))
            .await
            .map_err(Error::csi("NodeUnpublishVolume", &volume))?;
        Ok(())
    }

    pub async fn unstage(&self, req: NodeUnstageVolumeRequest) -> Result<(), Error> {
        let volume = req.volume_id.clone();
        self.node
            .clone()
            .node_unstage_volume(request(req))
            .await
            .map_err(Error::csi("NodeUnstageVolume", &volume))?;
        Ok(())
    }

    /// NodeExpandVolume; returns the capacity the plugin reports.
    pub async fn expand(&self, req: NodeExpandVolumeRequest) -> Result<i64, Error> {
        let volume = req.volume_id.clone();
        Ok(self
            .node
            .clone()
            .node_expand_volume(request(req))
            .await
            .map_err(Error::csi("NodeExpandVolume", &volume))?
            .into_inner()
            .capacity_bytes)
    }
}

/// Registers the plugin on `socket` for `node`: asks for its node id and
/// records it (CSINode and the Node's node-id annotation). Reconnects with
/// backoff while the plugin does not serve yet; returns the node id.
pub async fn register(
    client: &kube::Client,
    driver: &str,
    node: &str,
    socket: &Path,
) -> Result<String, Error> {
    let plugin = Plugin::new(socket);
    let mut pause = REGISTER_BACKOFF.0;
    let info = loop {
        match plugin.get_info().await {
            Ok(info) => break info,
            // No socket yet, or bound but not serving yet.
            Err(Error::Csi {
                code: tonic::Code::Unavailable,
                message,
                ..
            }) => {
                tracing::debug!(node, %message, "plugin not answering yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REGISTER_BACKOFF.1);
            }
            Err(e) => return Err(e),
        }
    };
    crate::registrar::register(
        client,
        driver,
        node,
        &info.node_id,
        info.max_volumes_per_node,
    )
    .await
    .map_err(Error::Register)?;
    tracing::info!(node, node_id = %info.node_id, "CSI plugin registered");
    Ok(info.node_id)
}
