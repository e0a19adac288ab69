//! NodePool -> KubeVirt VirtualMachines: the VM of one node, its template
//! hash (what a Replace rollout compares), its name, and the boot image
//! cache DataVolume of a pool with `cacheStrategy: PVC`.
//!
//! VM layout follows HyperShift's KubeVirt node pools: `runStrategy: Always`,
//! a root disk DataVolume template (imported, or cloned from the pool's cache),
//! the pod network as `default` plus Multus networks, host devices, node
//! selector, `evictionStrategy: External`, and the labels the CCM selects on.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::TypedObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubevirt_infra::cdi::{self, DataVolume, DataVolumeSpec, StorageResources, StorageSpec};
use kubevirt_infra::kubevirt::{
    DataVolumeSource, DataVolumeTemplate, Devices, Disk, DiskTarget, DomainSpec, VirtualMachine,
    VirtualMachineInstanceSpec, VirtualMachineInstanceTemplate, VirtualMachineSpec, Volume,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{CacheStrategy, KubevirtNodePoolPlatform};
use crate::hash;
use crate::names;

/// The name of the root disk in the VM and the suffix of its DataVolume.
pub const ROOT_DISK: &str = "rootdisk";
/// The cloud-init disk of a VM that joins a hosted control plane.
pub const CLOUD_INIT_DISK: &str = "cloudinitdisk";
/// CDI: bind the cache PVC now instead of waiting for a first consumer.
const CDI_BIND_IMMEDIATE: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";

/// What the VM functions need about a node pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolInputs {
    pub pool_namespace: String,
    pub pool_name: String,
    pub hc_name: String,
    pub infra_id: String,
    /// Namespace of the VMs (control-plane or external infra namespace).
    pub infra_namespace: String,
    /// The version new VMs run.
    pub version: String,
    pub platform: KubevirtNodePoolPlatform,
    /// The VMs join a hosted control plane with cloud-init user data (see
    /// [`super::join`]).
    pub join: bool,
}

impl PoolInputs {
    /// Labels on every VM of the pool (and its VMI template): the CCM's
    /// selector labels, HyperShift's infra id and node pool labels.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                names::ROLE_LABEL.to_string(),
                names::ROLE_WORKER.to_string(),
            ),
            (names::CLUSTER_NAME_LABEL.to_string(), self.infra_id.clone()),
            (names::INFRA_ID_LABEL.to_string(), self.infra_id.clone()),
            (names::NODE_POOL_LABEL.to_string(), self.pool_name.clone()),
        ])
    }

    /// Label selector of the pool's VMs.
    pub fn selector(&self) -> String {
        format!(
            "{}={},{}={}",
            names::INFRA_ID_LABEL,
            self.infra_id,
            names::NODE_POOL_LABEL,
            self.pool_name
        )
    }

    /// The HostedCluster's owner labels.
    pub fn owner_labels(&self) -> BTreeMap<String, String> {
        super::owner_labels_of(&self.pool_namespace, &self.hc_name)
    }

    /// Whether the pool imports its boot image once and clones it.
    pub fn cached(&self) -> bool {
        self.platform.root_volume.cache_strategy == CacheStrategy::Pvc
    }
}

/// Hash of the boot image source.
pub fn boot_image_hash(platform: &KubevirtNodePoolPlatform) -> u64 {
    let image = platform
        .boot_image
        .container_disk_image
        .as_deref()
        .unwrap_or_default();
    let url = platform.boot_image.url.as_deref().unwrap_or_default();
    hash::fnv1a_parts([image.as_bytes(), url.as_bytes()])
}

/// The import source of the boot image: CDI's registry source (node pull)
/// for a container disk, its http source for a URL.
fn import_source(platform: &KubevirtNodePoolPlatform) -> cdi::DataVolumeSource {
    let mut extra = BTreeMap::new();
    if let Some(image) = &platform.boot_image.container_disk_image {
        extra.insert(
            "registry".to_string(),
            json!({"url": format!("docker://{image}"), "pullMethod": "node"}),
        );
    } else if let Some(url) = &platform.boot_image.url {
        extra.insert("http".to_string(), json!({"url": url}));
    }
    cdi::DataVolumeSource {
        extra,
        ..cdi::DataVolumeSource::default()
    }
}

/// The name of the pool's boot image cache DataVolume for its current image.
pub fn boot_image_cache_name(inp: &PoolInputs) -> String {
    format!(
        "{}-boot-image-{}",
        inp.pool_name,
        hash::safe_suffix(boot_image_hash(&inp.platform), 5)
    )
}

/// Where root disks come from: the cache (cloned) or the image (imported).
fn root_source(inp: &PoolInputs) -> cdi::DataVolumeSource {
    if inp.cached() {
        cdi::DataVolumeSource {
            pvc: Some(cdi::NamespacedName {
                name: boot_image_cache_name(inp),
                namespace: Some(inp.infra_namespace.clone()),
            }),
            ..cdi::DataVolumeSource::default()
        }
    } else {
        import_source(&inp.platform)
    }
}

fn storage(platform: &KubevirtNodePoolPlatform) -> StorageSpec {
    let rv = &platform.root_volume;
    StorageSpec {
        access_modes: rv.access_modes.iter().map(enum_str).collect(),
        resources: Some(StorageResources {
            requests: BTreeMap::from([("storage".to_string(), rv.size.clone())]),
        }),
        storage_class_name: rv.storage_class.clone(),
        volume_mode: rv.volume_mode.as_ref().map(enum_str),
        data_source_ref: None::<TypedObjectReference>,
        extra: BTreeMap::new(),
    }
}

/// The serde name of a unit enum variant.
fn enum_str<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The pool's boot image cache DataVolume, when `cacheStrategy` is `PVC`.
pub fn boot_image_cache(inp: &PoolInputs) -> Option<DataVolume> {
    if !inp.cached() {
        return None;
    }
    let mut labels = inp.owner_labels();
    labels.insert(names::INFRA_ID_LABEL.to_string(), inp.infra_id.clone());
    labels.insert(names::NODE_POOL_LABEL.to_string(), inp.pool_name.clone());
    labels.insert(
        names::BOOT_IMAGE_CACHE_LABEL.to_string(),
        "true".to_string(),
    );
    let mut dv = DataVolume::new(
        &boot_image_cache_name(inp),
        DataVolumeSpec {
            source: Some(import_source(&inp.platform)),
            storage: Some(storage(&inp.platform)),
            ..DataVolumeSpec::default()
        },
    );
    dv.metadata.namespace = Some(inp.infra_namespace.clone());
    dv.metadata.labels = Some(labels);
    dv.metadata.annotations = Some(BTreeMap::from([
        (
            names::BOOT_IMAGE_HASH_ANNOTATION.to_string(),
            hash::hex(boot_image_hash(&inp.platform)),
        ),
        (CDI_BIND_IMMEDIATE.to_string(), "true".to_string()),
        (
            kubevirt_infra::labels::CDI_DELETE_AFTER_COMPLETION.to_string(),
            "false".to_string(),
        ),
    ]));
    Some(dv)
}

/// The template hash of the pool's VMs: the platform settings, the boot
/// source and the version. A VM whose label differs is outdated for a
/// Replace rollout.
pub fn template_hash(inp: &PoolInputs) -> String {
    #[derive(Serialize)]
    struct Hashed<'a> {
        platform: &'a KubevirtNodePoolPlatform,
        source: &'a cdi::DataVolumeSource,
        version: &'a str,
    }
    let source = root_source(inp);
    let bytes = serde_json::to_vec(&Hashed {
        platform: &inp.platform,
        source: &source,
        version: &inp.version,
    })
    .unwrap_or_default();
    hash::hex(hash::fnv1a(&bytes))[..10].to_string()
}

/// The name of the `n`th VM candidate of template `template_hash`:
/// `<pool>-<5 characters>`. Deterministic, so a retried create finds the VM
/// it already made instead of making another.
pub fn vm_name(pool_name: &str, template_hash: &str, n: u32) -> String {
    let h = hash::fnv1a_parts([
        pool_name.as_bytes(),
        template_hash.as_bytes(),
        &n.to_le_bytes(),
    ]);
    format!("{pool_name}-{}", hash::safe_suffix(h, 5))
}

/// The interface and network name of the `idx`th additional network (HyperShift's).
fn additional_network_name(idx: usize, network: &str) -> String {
    format!("iface{}_{}", idx + 1, network.replace('/', "-"))
}

fn virtio_disk(name: &str) -> Disk {
    Disk {
        name: name.to_string(),
        disk: Some(DiskTarget {
            bus: Some("virtio".to_string()),
            read_only: false,
            extra: BTreeMap::new(),
        }),
        serial: None,
        extra: BTreeMap::new(),
    }
}

/// The VM `name` of the pool, on template `template_hash`.
pub fn virtual_machine(inp: &PoolInputs, name: &str, template_hash: &str) -> VirtualMachine {
    let p = &inp.platform;
    let root_dv = format!("{name}-{ROOT_DISK}");

    let mut vm_labels = inp.owner_labels();
    vm_labels.extend(inp.selector_labels());
    vm_labels.insert(
        names::TEMPLATE_HASH_LABEL.to_string(),
        template_hash.to_string(),
    );

    let mut interfaces = Vec::new();
    let mut networks = Vec::new();
    if p.attach_default_network {
        interfaces.push(json!({"name": "default", "bridge": {}}));
        networks.push(json!({"name": "default", "pod": {}}));
    }
    for (idx, net) in p.additional_networks.iter().enumerate() {
        let iface = additional_network_name(idx, &net.name);
        interfaces.push(json!({"name": iface, "bridge": {}}));
        networks.push(json!({"name": iface, "multus": {"networkName": net.name}}));
    }

    let mut devices_extra = BTreeMap::from([("interfaces".to_string(), Value::Array(interfaces))]);
    let host_devices: Vec<Value> = p
        .host_devices
        .iter()
        .flat_map(|d| std::iter::repeat_n(d.device_name.clone(), d.count as usize))
        .enumerate()
        .map(|(i, device)| json!({"name": format!("hostdevice-{}", i + 1), "deviceName": device}))
        .collect();
    if !host_devices.is_empty() {
        devices_extra.insert("hostDevices".to_string(), Value::Array(host_devices));
    }

    let mut template_annotations = BTreeMap::new();
    if p.attach_default_network {
        template_annotations.insert(
            "kubevirt.io/allow-pod-bridge-network-live-migration".to_string(),
            String::new(),
        );
    }

    let mut disks = vec![ROOT_DISK];
    let mut volumes = vec![Volume {
        name: ROOT_DISK.to_string(),
        data_volume: Some(DataVolumeSource {
            name: root_dv.clone(),
            hotpluggable: false,
        }),
        ..Volume::default()
    }];
    if inp.join {
        disks.push(CLOUD_INIT_DISK);
        volumes.push(Volume {
            name: CLOUD_INIT_DISK.to_string(),
            extra: BTreeMap::from([(
                "cloudInitNoCloud".to_string(),
                json!({"secretRef": {"name": super::join::user_data_secret_name(name)}}),
            )]),
            ..Volume::default()
        });
    }

    let template_spec = VirtualMachineInstanceSpec {
        domain: DomainSpec {
            devices: Devices {
                disks: disks.iter().map(|d| virtio_disk(d)).collect(),
                extra: devices_extra,
            },
            extra: BTreeMap::from([
                ("cpu".to_string(), json!({"cores": p.compute.cores})),
                ("memory".to_string(), json!({"guest": p.compute.memory.0})),
            ]),
        },
        volumes,
        networks,
        node_selector: (!p.node_selector.is_empty()).then(|| p.node_selector.clone()),
        extra: BTreeMap::from([
            ("evictionStrategy".to_string(), json!("External")),
            (
                "affinity".to_string(),
                json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchExpressions": [{
                            "key": names::NODE_POOL_LABEL, "operator": "In", "values": [inp.pool_name]
                        }]},
                        "topologyKey": "kubernetes.io/hostname"
                    }
                }]}}),
            ),
        ]),
    };

    let mut dv_labels = inp.owner_labels();
    dv_labels.insert(names::INFRA_ID_LABEL.to_string(), inp.infra_id.clone());
    dv_labels.insert(names::NODE_POOL_LABEL.to_string(), inp.pool_name.clone());

    VirtualMachine {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(inp.infra_namespace.clone()),
            labels: Some(vm_labels),
            annotations: Some(BTreeMap::from([(
                names::VERSION_ANNOTATION.to_string(),
                inp.version.clone(),
            )])),
            ..ObjectMeta::default()
        },
        spec: VirtualMachineSpec {
            run_strategy: Some("Always".to_string()),
            running: None,
            template: Some(VirtualMachineInstanceTemplate {
                metadata: Some(ObjectMeta {
                    labels: Some(inp.selector_labels()),
                    annotations: (!template_annotations.is_empty()).then_some(template_annotations),
                    ..ObjectMeta::default()
                }),
                spec: template_spec,
            }),
            data_volume_templates: vec![DataVolumeTemplate {
                metadata: ObjectMeta {
                    name: Some(root_dv),
                    labels: Some(dv_labels),
                    ..ObjectMeta::default()
                },
                spec: DataVolumeSpec {
                    source: Some(root_source(inp)),
                    storage: Some(storage(p)),
                    ..DataVolumeSpec::default()
                },
            }],
            extra: BTreeMap::new(),
        },
        status: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{BootImage, Compute, HostDevice, KubevirtNetwork, RootVolume, VolumeMode};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    pub fn platform() -> KubevirtNodePoolPlatform {
        KubevirtNodePoolPlatform {
            compute: Compute {
                cores: 4,
                memory: Quantity("6Gi".into()),
            },
            root_volume: RootVolume {
                size: Quantity("40Gi".into()),
                storage_class: Some("fast".into()),
                access_modes: vec![crate::api::AccessMode::ReadWriteMany],
                volume_mode: Some(VolumeMode::Block),
                cache_strategy: CacheStrategy::None,
            },
            boot_image: BootImage {
                container_disk_image: Some("quay.io/containerdisks/fedora:41".into()),
                url: None,
            },
            additional_networks: vec![KubevirtNetwork {
                name: "ns1/nad1".into(),
            }],
            attach_default_network: true,
            host_devices: vec![HostDevice {
                device_name: "nvidia.com/A10".into(),
                count: 2,
            }],
            node_selector: BTreeMap::from([("gpu".into(), "true".into())]),
        }
    }

    pub fn pool() -> PoolInputs {
        PoolInputs {
            pool_namespace: "clusters".into(),
            pool_name: "workers".into(),
            hc_name: "guest1".into(),
            infra_id: "guest1-x7k2p".into(),
            infra_namespace: "clusters-guest1".into(),
            version: "0.1.0".into(),
            platform: platform(),
            join: false,
        }
    }

    #[test]
    fn joining_vm_boots_with_its_user_data() {
        let mut inp = pool();
        inp.join = true;
        let v = serde_json::to_value(virtual_machine(&inp, "workers-abcde", "h")).expect("json");
        let spec = &v["spec"]["template"]["spec"];
        assert_eq!(
            spec["domain"]["devices"]["disks"][1],
            json!({"name": "cloudinitdisk", "disk": {"bus": "virtio"}})
        );
        assert_eq!(
            spec["volumes"][1],
            json!({"name": "cloudinitdisk", "cloudInitNoCloud": {"secretRef": {"name": "workers-abcde-user-data"}}})
        );
    }

    #[test]
    fn vm_carries_the_ccm_and_hypershift_labels() {
        let inp = pool();
        let hash = template_hash(&inp);
        let vm = virtual_machine(&inp, "workers-abcde", &hash);
        let labels = vm.metadata.labels.clone().expect("labels");
        assert_eq!(labels["cluster.x-k8s.io/role"], "worker");
        assert_eq!(labels["cluster.x-k8s.io/cluster-name"], "guest1-x7k2p");
        assert_eq!(labels["hypershift.openshift.io/infra-id"], "guest1-x7k2p");
        assert_eq!(labels["hypershift.openshift.io/nodePool"], "workers");
        assert_eq!(labels["hcp.kubevirt-rs.io/template-hash"], hash);
        assert_eq!(vm.metadata.namespace.as_deref(), Some("clusters-guest1"));
        assert_eq!(
            vm.metadata.annotations.as_ref().expect("annotations")["hcp.kubevirt-rs.io/version"],
            "0.1.0"
        );
        let template = vm.spec.template.as_ref().expect("template");
        let tl = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("template labels");
        assert_eq!(tl, inp.selector_labels());
        assert_eq!(vm.spec.run_strategy.as_deref(), Some("Always"));
    }

    #[test]
    fn vm_spec_has_compute_disk_networks_and_devices() {
        let vm = virtual_machine(&pool(), "workers-abcde", "h");
        let v = serde_json::to_value(&vm).expect("json");
        let spec = &v["spec"]["template"]["spec"];
        assert_eq!(spec["domain"]["cpu"]["cores"], 4);
        assert_eq!(spec["domain"]["memory"]["guest"], "6Gi");
        assert_eq!(
            spec["domain"]["devices"]["disks"][0],
            json!({"name": "rootdisk", "disk": {"bus": "virtio"}})
        );
        assert_eq!(
            spec["volumes"][0],
            json!({"name": "rootdisk", "dataVolume": {"name": "workers-abcde-rootdisk"}})
        );
        assert_eq!(
            spec["networks"],
            json!([{"name": "default", "pod": {}}, {"name": "iface1_ns1-nad1", "multus": {"networkName": "ns1/nad1"}}])
        );
        assert_eq!(
            spec["domain"]["devices"]["interfaces"],
            json!([{"name": "default", "bridge": {}}, {"name": "iface1_ns1-nad1", "bridge": {}}])
        );
        assert_eq!(
            spec["domain"]["devices"]["hostDevices"],
            json!([
                {"name": "hostdevice-1", "deviceName": "nvidia.com/A10"},
                {"name": "hostdevice-2", "deviceName": "nvidia.com/A10"}
            ])
        );
        assert_eq!(spec["nodeSelector"], json!({"gpu": "true"}));
        assert_eq!(spec["evictionStrategy"], "External");
        let dvt = &v["spec"]["dataVolumeTemplates"][0];
        assert_eq!(dvt["metadata"]["name"], "workers-abcde-rootdisk");
        assert_eq!(
            dvt["spec"]["source"],
            json!({"registry": {"url": "docker://quay.io/containerdisks/fedora:41", "pullMethod": "node"}})
        );
        assert_eq!(
            dvt["spec"]["storage"],
            json!({"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "40Gi"}},
                   "storageClassName": "fast", "volumeMode": "Block"})
        );
    }

    #[test]
    fn detached_default_network_leaves_only_multus() {
        let mut inp = pool();
        inp.platform.attach_default_network = false;
        let v = serde_json::to_value(virtual_machine(&inp, "w-1", "h")).expect("json");
        assert_eq!(
            v["spec"]["template"]["spec"]["networks"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert!(
            v["spec"]["template"]["metadata"]
                .get("annotations")
                .is_none()
        );
    }

    #[test]
    fn url_boot_images_use_the_http_source() {
        let mut inp = pool();
        inp.platform.boot_image = BootImage {
            container_disk_image: None,
            url: Some("https://img.example/disk.qcow2".into()),
        };
        let v = serde_json::to_value(virtual_machine(&inp, "w-1", "h")).expect("json");
        assert_eq!(
            v["spec"]["dataVolumeTemplates"][0]["spec"]["source"],
            json!({"http": {"url": "https://img.example/disk.qcow2"}})
        );
        assert!(boot_image_cache(&inp).is_none());
    }

    #[test]
    fn cached_pools_clone_from_one_cache_per_image() {
        let mut inp = pool();
        inp.platform.root_volume.cache_strategy = CacheStrategy::Pvc;
        let cache = boot_image_cache(&inp).expect("cache");
        let name = cache.metadata.name.clone().expect("name");
        assert!(name.starts_with("workers-boot-image-"));
        assert_eq!(name, boot_image_cache_name(&inp));
        let v = serde_json::to_value(&cache).expect("json");
        assert_eq!(
            v["spec"]["source"]["registry"]["url"],
            "docker://quay.io/containerdisks/fedora:41"
        );
        assert_eq!(
            v["metadata"]["annotations"]["cdi.kubevirt.io/storage.deleteAfterCompletion"],
            "false"
        );
        assert_eq!(
            v["metadata"]["labels"]["hypershift.openshift.io/infra-id"],
            "guest1-x7k2p"
        );
        let vm = serde_json::to_value(virtual_machine(&inp, "w-1", "h")).expect("json");
        assert_eq!(
            vm["spec"]["dataVolumeTemplates"][0]["spec"]["source"],
            json!({"pvc": {"name": name, "namespace": "clusters-guest1"}})
        );

        let mut other = inp.clone();
        other.platform.boot_image.container_disk_image =
            Some("quay.io/containerdisks/fedora:42".into());
        assert_ne!(boot_image_cache_name(&other), name);
    }

    #[test]
    fn template_hash_tracks_spec_and_version_only() {
        let a = pool();
        let h = template_hash(&a);
        assert_eq!(h.len(), 10);
        assert_eq!(template_hash(&a.clone()), h);
        let mut b = a.clone();
        b.version = "0.2.0".into();
        assert_ne!(template_hash(&b), h);
        let mut c = a.clone();
        c.platform.compute.cores = 8;
        assert_ne!(template_hash(&c), h);
        let mut d = a.clone();
        d.hc_name = "renamed".into();
        assert_eq!(template_hash(&d), h);
    }

    #[test]
    fn vm_names_are_deterministic_and_distinct() {
        let names: std::collections::BTreeSet<_> =
            (0..50).map(|n| vm_name("workers", "abc", n)).collect();
        assert_eq!(names.len(), 50);
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("workers-") && n.len() == "workers-".len() + 5)
        );
        assert_eq!(vm_name("workers", "abc", 3), vm_name("workers", "abc", 3));
        assert_ne!(vm_name("workers", "abc", 3), vm_name("workers", "abd", 3));
    }
}
