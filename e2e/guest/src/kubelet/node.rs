//! [`GuestNode`]: the guest side of one node laid out under a node root
//! (the lab's `DIR/nodes/<node>`): `kubelet/` is kubelet's directory, the
//! CSI plugin listens on `kubelet/plugins/csi.kubevirt.io/csi.sock` (where
//! the real DaemonSet puts it), and `dev/` is the node's device tree. It
//! gives the kubelet stand-in's settings and the node plugin's command line
//! (`kubevirt-csi-driver` in node mode), so tests and `lab demo` start a
//! node the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lab_net::Netns;

use super::KubeletConfig;

/// One guest node's kubelet and CSI node plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestNode {
    pub node_name: String,
    pub kubelet_dir: PathBuf,
    pub csi_socket: PathBuf,
    pub device_dir: PathBuf,
}

impl GuestNode {
    /// Node `node_name` under `node_root` (`DIR/nodes/<node>` in the lab).
    pub fn new(node_name: &str, node_root: &Path) -> Self {
        let kubelet_dir = node_root.join("kubelet");
        Self {
            node_name: node_name.to_string(),
            csi_socket: kubelet_dir
                .join("plugins")
                .join(kubevirt_infra::labels::CSI_DRIVER_NAME)
                .join("csi.sock"),
            kubelet_dir,
            device_dir: node_root.join("dev"),
        }
    }

    /// The kubelet stand-in's settings for this node, its pods' workloads
    /// listening in `network`.
    pub fn kubelet_config(&self, network: Option<Arc<Netns>>) -> KubeletConfig {
        KubeletConfig {
            node_name: self.node_name.clone(),
            kubelet_dir: self.kubelet_dir.clone(),
            csi_socket: self.csi_socket.clone(),
            network,
            cluster_dns: None,
            echo_only: false,
        }
    }

    /// The arguments of `kubevirt-csi-driver` as this node's plugin: node
    /// service only, on this node's socket and device tree, reading its
    /// Node from the guest cluster of `tenant_kubeconfig`.
    pub fn plugin_args(&self, tenant_kubeconfig: &Path) -> Vec<String> {
        vec![
            format!("--endpoint=unix://{}", self.csi_socket.display()),
            format!("--node-name={}", self.node_name),
            format!(
                "--tenant-cluster-kubeconfig={}",
                tenant_kubeconfig.display()
            ),
            "--run-node-service=true".to_string(),
            "--run-controller-service=false".to_string(),
            format!("--device-dir={}", self.device_dir.display()),
        ]
    }

    /// Creates the socket's directory (the plugin binds there) and the
    /// kubelet directory.
    pub fn prepare(&self) -> std::io::Result<()> {
        if let Some(dir) = self.csi_socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::create_dir_all(&self.kubelet_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lays_out_a_node() {
        let node = GuestNode::new("demo-worker-0", Path::new("/lab/nodes/demo-worker-0"));
        assert_eq!(
            node.csi_socket,
            Path::new("/lab/nodes/demo-worker-0/kubelet/plugins/csi.kubevirt.io/csi.sock")
        );
        assert_eq!(
            node.kubelet_config(None).kubelet_dir,
            Path::new("/lab/nodes/demo-worker-0/kubelet")
        );
        let args = node.plugin_args(Path::new("/lab/guest.kubeconfig"));
        assert!(args.contains(&"--endpoint=unix:///lab/nodes/demo-worker-0/kubelet/plugins/csi.kubevirt.io/csi.sock".to_string()));
        assert!(args.contains(&"--device-dir=/lab/nodes/demo-worker-0/dev".to_string()));
        assert!(args.contains(&"--run-controller-service=false".to_string()));
    }
}
