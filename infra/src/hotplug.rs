//! KubeVirt's hotplug subresource API (`subresources.kubevirt.io/v1`):
//! the request bodies of `addvolume` and `removevolume`, their paths, and
//! calls through a kube client.

use serde::{Deserialize, Serialize};

use crate::kubevirt::{DataVolumeSource, Disk, PersistentVolumeClaimSource};

/// API group of KubeVirt's subresources.
pub const GROUP: &str = "subresources.kubevirt.io";
/// Version of KubeVirt's subresources used here.
pub const VERSION: &str = "v1";

/// Body of `PUT .../addvolume`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AddVolumeOptions {
    pub name: String,
    pub disk: Disk,
    pub volume_source: HotplugVolumeSource,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<String>,
}

/// `volumeSource` of an addvolume request: exactly one of the two is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HotplugVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimSource>,
}

/// Body of `PUT .../removevolume`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoveVolumeOptions {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<String>,
}

impl AddVolumeOptions {
    /// The request the CSI driver sends: a hotpluggable DataVolume attached as
    /// a disk named after it on `bus`, with `serial` as the disk serial.
    pub fn data_volume(name: &str, bus: &str, serial: &str) -> Self {
        Self {
            name: name.to_string(),
            disk: Disk {
                name: name.to_string(),
                disk: Some(crate::kubevirt::DiskTarget {
                    bus: Some(bus.to_string()),
                    read_only: false,
                    extra: Default::default(),
                }),
                serial: Some(serial.to_string()),
                extra: Default::default(),
            },
            volume_source: HotplugVolumeSource {
                data_volume: Some(DataVolumeSource {
                    name: name.to_string(),
                    hotpluggable: true,
                }),
                persistent_volume_claim: None,
            },
            dry_run: Vec::new(),
        }
    }
}

impl AddVolumeOptions {
    /// The same request for a disk the guest sees read-only (or not).
    pub fn read_only(mut self, read_only: bool) -> Self {
        if let Some(target) = self.disk.disk.as_mut() {
            target.read_only = read_only;
        }
        self
    }
}

/// The object a hotplug call targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    VirtualMachine,
    VirtualMachineInstance,
}

impl Target {
    fn plural(self) -> &'static str {
        match self {
            Target::VirtualMachine => "virtualmachines",
            Target::VirtualMachineInstance => "virtualmachineinstances",
        }
    }
}

/// Path of a hotplug subresource, e.g.
/// `/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm/addvolume`.
pub fn path(target: Target, namespace: &str, name: &str, verb: &str) -> String {
    format!(
        "/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{}/{name}/{verb}",
        target.plural()
    )
}

/// `PUT .../addvolume` through `client`.
pub async fn add_volume(
    client: &kube::Client,
    target: Target,
    namespace: &str,
    name: &str,
    opts: &AddVolumeOptions,
) -> Result<(), kube::Error> {
    put(client, &path(target, namespace, name, "addvolume"), opts).await
}

/// `PUT .../removevolume` through `client`.
pub async fn remove_volume(
    client: &kube::Client,
    target: Target,
    namespace: &str,
    name: &str,
    opts: &RemoveVolumeOptions,
) -> Result<(), kube::Error> {
    put(client, &path(target, namespace, name, "removevolume"), opts).await
}

async fn put<T: Serialize>(client: &kube::Client, path: &str, body: &T) -> Result<(), kube::Error> {
    let body = serde_json::to_vec(body).map_err(kube::Error::SerdeError)?;
    let req = http::Request::put(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
    client.request_text(req).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn add_volume_body_matches_kubevirt() {
        let body = serde_json::to_value(AddVolumeOptions::data_volume("pvc-1", "scsi", "abc"))
            .expect("serializes");
        assert_eq!(
            body,
            json!({
                "name": "pvc-1",
                "disk": {"name": "pvc-1", "disk": {"bus": "scsi"}, "serial": "abc"},
                "volumeSource": {"dataVolume": {"name": "pvc-1", "hotpluggable": true}}
            })
        );
        let read_only = serde_json::to_value(
            AddVolumeOptions::data_volume("pvc-1", "scsi", "abc").read_only(true),
        )
        .expect("serializes");
        assert_eq!(
            read_only["disk"]["disk"],
            json!({"bus": "scsi", "readonly": true})
        );
        assert_eq!(
            path(Target::VirtualMachineInstance, "ns", "vm", "removevolume"),
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/vm/removevolume"
        );
    }
}
