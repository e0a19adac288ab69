//! What each simulator and stand-in of the lab may do: the rights of the
//! component it plays, as that project's own manifests grant them, bound
//! to the actor's user. Nobody in the lab is an administrator, so a
//! simulator that did what its real counterpart cannot would be refused
//! (the test suite runs with these grants).
//!
//! Where the server ships the role (`system:node`, `system:node-proxier`,
//! the controllers' `system:controller:*` roles), the actor is bound to it.
//! Otherwise the lab writes a ClusterRole `kubevirt-lab:<component>` with
//! the rules of the real project's RBAC manifest (KubeVirt's virt-operator,
//! CDI's operator, the kubernetes-csi sidecars' `deploy/kubernetes`,
//! CoreDNS's deployment), cut down to the kinds the lab has. Where a
//! stand-in plays a role no single real component holds, the extra rules
//! say which component's work they stand for (`LAB_*` below).

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams};
use lab_cluster::Cluster;

use crate::LabError;

const FIELD_MANAGER: &str = "kubevirt-lab";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// R: get, list, watch.
const R: &[&str] = &["get", "list", "watch"];
/// Every verb on a kind.
const CRUD: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// A ClusterRole the lab writes: the real component's rules.
pub struct Role {
    /// The component (`kubevirt-lab:<component>`).
    pub component: &'static str,
    pub rules: Vec<PolicyRule>,
}

impl Role {
    fn name(&self) -> String {
        format!("kubevirt-lab:{}", self.component)
    }
}

/// KubeVirt's virt-controller and virt-handler (ClusterRoles
/// `kubevirt-controller` and `kubevirt-handler`), which the KubeVirt and
/// hotplug simulators play together, on the kinds the lab has.
fn kubevirt() -> Role {
    Role {
        component: "kubevirt-controller",
        rules: vec![
            rule(&[""], &["namespaces"], &["get", "list", "watch", "patch"]),
            rule(
                &[""],
                &[
                    "pods",
                    "configmaps",
                    "endpoints",
                    "services",
                    "persistentvolumeclaims",
                ],
                CRUD,
            ),
            rule(&[""], &["events"], &["update", "create", "patch"]),
            rule(&[""], &["secrets"], &["create"]),
            rule(&[""], &["pods/finalizers"], &["update"]),
            rule(&[""], &["pods/eviction"], &["create"]),
            rule(&[""], &["pods/status"], &["patch"]),
            rule(
                &[""],
                &["nodes"],
                &["get", "list", "watch", "update", "patch"],
            ),
            rule(
                &["policy"],
                &["poddisruptionbudgets"],
                &["get", "list", "watch", "delete", "create", "patch"],
            ),
            rule(&["kubevirt.io"], &["*"], &["*"]),
            rule(&["cdi.kubevirt.io"], &["*"], &["*"]),
            rule(
                &["subresources.kubevirt.io"],
                &[
                    "virtualmachines/stop",
                    "virtualmachineinstances/addvolume",
                    "virtualmachineinstances/removevolume",
                ],
                &["update"],
            ),
            rule(&["storage.k8s.io"], &["storageclasses"], R),
            rule(&["apiextensions.k8s.io"], &["customresourcedefinitions"], R),
            rule(
                &["authorization.k8s.io"],
                &["subjectaccessreviews"],
                &["create"],
            ),
            rule(&["coordination.k8s.io"], &["leases"], CRUD),
        ],
    }
}

/// The lab keeps a hotplugged volume's device (a loop device) in its PV;
/// on a real node virt-handler finds it on the host.
fn lab_hotplug_devices() -> Role {
    Role {
        component: "hotplug-devices",
        rules: vec![rule(&[""], &["persistentvolumes"], &["get"])],
    }
}

/// KubeVirt's virt-api (ClusterRole `kubevirt-apiserver`).
fn virt_api() -> Role {
    Role {
        component: "kubevirt-apiserver",
        rules: vec![
            rule(&[""], &["pods"], &["get", "list", "delete", "patch"]),
            rule(&[""], &["persistentvolumeclaims"], &["get", "list"]),
            rule(&[""], &["configmaps", "namespaces"], R),
            rule(&[""], &["nodes"], &["get"]),
            rule(
                &["kubevirt.io"],
                &["virtualmachines", "virtualmachineinstances"],
                &["get", "list", "watch", "patch", "update"],
            ),
            rule(&["kubevirt.io"], &["virtualmachines/status"], &["patch"]),
            rule(&["kubevirt.io"], &["kubevirts"], R),
            rule(&["cdi.kubevirt.io"], &["datasources", "datavolumes"], R),
            rule(&["apiextensions.k8s.io"], &["customresourcedefinitions"], R),
        ],
    }
}

/// CDI's controller (ClusterRole `cdi`).
fn cdi() -> Role {
    Role {
        component: "cdi",
        rules: vec![
            rule(
                &[""],
                &["events"],
                &["create", "patch", "get", "list", "watch"],
            ),
            rule(
                &[""],
                &["persistentvolumeclaims"],
                &[
                    "get",
                    "list",
                    "watch",
                    "create",
                    "update",
                    "delete",
                    "deletecollection",
                    "patch",
                ],
            ),
            rule(
                &[""],
                &["persistentvolumes"],
                &["get", "list", "watch", "update"],
            ),
            rule(
                &[""],
                &["persistentvolumeclaims/finalizers", "pods/finalizers"],
                &["update"],
            ),
            rule(
                &[""],
                &["pods", "services"],
                &["get", "list", "watch", "create", "delete"],
            ),
            rule(&[""], &["namespaces"], R),
            rule(&["cdi.kubevirt.io"], &["*"], &["*"]),
            rule(
                &["snapshot.storage.k8s.io"],
                &[
                    "volumesnapshots",
                    "volumesnapshotclasses",
                    "volumesnapshotcontents",
                ],
                &["get", "list", "watch", "create", "delete"],
            ),
            rule(
                &["snapshot.storage.k8s.io"],
                &["volumesnapshots"],
                &["update", "deletecollection"],
            ),
            rule(&["storage.k8s.io"], &["storageclasses", "csidrivers"], R),
            rule(&["apiextensions.k8s.io"], &["customresourcedefinitions"], R),
            rule(
                &["kubevirt.io"],
                &["virtualmachines/finalizers"],
                &["update"],
            ),
            rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            rule(
                &["authorization.k8s.io"],
                &["subjectaccessreviews"],
                &["create"],
            ),
        ],
    }
}

/// The infra cluster's storage, which the CDI simulator plays besides CDI:
/// a provisioner's PVs (external-provisioner's `persistentvolumes`
/// rights), claims taking a VolumeAttributesClass (external-resizer's
/// ModifyVolume), and binding and growing claims (the persistent-volume
/// binder and expander of kube-controller-manager, which the lab turns off
/// there).
fn lab_infra_storage() -> Role {
    Role {
        component: "infra-storage",
        rules: vec![
            rule(
                &[""],
                &["persistentvolumes"],
                &["get", "list", "watch", "create", "patch", "delete"],
            ),
            rule(&[""], &["persistentvolumes/status"], &["update", "patch"]),
            rule(
                &[""],
                &["persistentvolumeclaims/status"],
                &["update", "patch"],
            ),
            rule(&["storage.k8s.io"], &["volumeattributesclasses"], R),
        ],
    }
}

/// The snapshot controller (`snapshot-controller-runner`) with a CSI
/// driver's snapshotter sidecar (`external-snapshotter-runner`).
fn snapshots() -> Role {
    Role {
        component: "snapshot-controller",
        rules: vec![
            rule(&[""], &["persistentvolumes"], R),
            rule(
                &[""],
                &["persistentvolumeclaims"],
                &["get", "list", "watch", "update"],
            ),
            rule(
                &[""],
                &["events"],
                &["list", "watch", "create", "update", "patch"],
            ),
            rule(&["snapshot.storage.k8s.io"], &["volumesnapshotclasses"], R),
            rule(
                &["snapshot.storage.k8s.io"],
                &["volumesnapshots", "volumesnapshotcontents"],
                CRUD,
            ),
            rule(
                &["snapshot.storage.k8s.io"],
                &["volumesnapshots/status", "volumesnapshotcontents/status"],
                &["update", "patch"],
            ),
            rule(&["coordination.k8s.io"], &["leases"], CRUD),
        ],
    }
}

/// CoreDNS (ClusterRole `system:coredns` of its deployment manifests).
fn coredns() -> Role {
    Role {
        component: "coredns",
        rules: vec![
            rule(
                &[""],
                &["endpoints", "services", "pods", "namespaces"],
                &["list", "watch"],
            ),
            rule(
                &["discovery.k8s.io"],
                &["endpointslices"],
                &["list", "watch"],
            ),
        ],
    }
}

/// A CSI driver's controller sidecars in a guest: external-provisioner,
/// -attacher, -resizer and -snapshotter (their `*-runner` ClusterRoles),
/// with the snapshot controller.
fn csi_sidecars() -> Role {
    let mut rules = vec![
        rule(
            &[""],
            &["persistentvolumes"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            &[""],
            &["persistentvolumeclaims"],
            &["get", "list", "watch", "update"],
        ),
        rule(&[""], &["persistentvolumeclaims/status"], &["patch"]),
        rule(&[""], &["pods"], R),
        rule(
            &[""],
            &["events"],
            &["list", "watch", "create", "update", "patch"],
        ),
        rule(&[""], &["nodes"], R),
        rule(
            &["storage.k8s.io"],
            &["storageclasses", "csinodes", "volumeattributesclasses"],
            R,
        ),
        rule(
            &["storage.k8s.io"],
            &["volumeattachments"],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            &["storage.k8s.io"],
            &["volumeattachments/status"],
            &["patch"],
        ),
    ];
    rules.extend(snapshots().rules);
    Role {
        component: "csi-controller-sidecars",
        rules,
    }
}

/// PV binding and expansion in a guest (kube-controller-manager's binder
/// and expander, which the lab turns off there: the provisioner and
/// resizer stand-ins bind and grow).
fn lab_guest_storage() -> Role {
    Role {
        component: "guest-volume-binding",
        rules: vec![
            rule(&[""], &["persistentvolumeclaims"], &["patch"]),
            rule(&[""], &["persistentvolumes/status"], &["update", "patch"]),
            rule(
                &[""],
                &["persistentvolumeclaims/status"],
                &["update", "patch"],
            ),
        ],
    }
}

/// One actor's grant: its user, the server's roles and the lab's.
pub struct Grant {
    pub user: &'static str,
    pub builtin: &'static [&'static str],
    pub roles: Vec<Role>,
}

/// The infra cluster's actors.
pub fn infra(users: &InfraUsers) -> Vec<Grant> {
    vec![
        Grant {
            user: users.kubevirt,
            // It also plays the infra nodes' kubelet for virt-launcher
            // pods: their status, and the Secrets their VMs mount (the
            // cloud-init user data).
            builtin: &["system:node"],
            roles: vec![kubevirt()],
        },
        Grant {
            user: users.hotplug,
            builtin: &[],
            roles: vec![kubevirt(), lab_hotplug_devices()],
        },
        Grant {
            user: users.virt_api,
            builtin: &["system:auth-delegator"],
            roles: vec![virt_api()],
        },
        Grant {
            user: users.cdi,
            builtin: &[],
            roles: vec![cdi(), lab_infra_storage()],
        },
        Grant {
            user: users.snapshot_controller,
            builtin: &[],
            roles: vec![snapshots()],
        },
        Grant {
            user: users.load_balancer,
            builtin: &["system:controller:service-controller"],
            roles: vec![],
        },
        Grant {
            user: users.service_proxy,
            builtin: &["system:node-proxier"],
            roles: vec![],
        },
        Grant {
            user: users.cluster_dns,
            builtin: &[],
            roles: vec![coredns()],
        },
        Grant {
            user: users.kubelet,
            builtin: &["system:node"],
            roles: vec![],
        },
    ]
}

/// The infra actors' user names.
pub struct InfraUsers {
    pub kubevirt: &'static str,
    pub hotplug: &'static str,
    pub virt_api: &'static str,
    pub cdi: &'static str,
    pub snapshot_controller: &'static str,
    pub load_balancer: &'static str,
    pub service_proxy: &'static str,
    pub cluster_dns: &'static str,
    /// The management kubelet.
    pub kubelet: &'static str,
}

/// The guest actors' user names.
pub struct GuestUsers {
    pub sidecars: &'static str,
    pub kubelet: &'static str,
    pub service_proxy: &'static str,
    pub cluster_dns: &'static str,
}

/// A guest cluster's actors.
pub fn guest(users: &GuestUsers) -> Vec<Grant> {
    vec![
        Grant {
            user: users.sidecars,
            builtin: &[],
            roles: vec![csi_sidecars(), lab_guest_storage()],
        },
        Grant {
            user: users.kubelet,
            // The kubelet stand-in also attaches (the attach/detach
            // controller is off in guests).
            builtin: &["system:node", "system:controller:attachdetach-controller"],
            roles: vec![],
        },
        Grant {
            user: users.service_proxy,
            builtin: &["system:node-proxier"],
            roles: vec![],
        },
        Grant {
            user: users.cluster_dns,
            builtin: &[],
            roles: vec![coredns()],
        },
    ]
}

/// Writes the lab's roles and binds every grant's roles to its user.
pub async fn apply(cluster: &Cluster, grants: &[Grant]) -> Result<(), LabError> {
    let client = cluster.client();
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for grant in grants {
        let mut names: Vec<String> = grant.builtin.iter().map(|s| s.to_string()).collect();
        for role in &grant.roles {
            let object = ClusterRole {
                metadata: ObjectMeta {
                    name: Some(role.name()),
                    ..ObjectMeta::default()
                },
                rules: Some(role.rules.clone()),
                aggregation_rule: None::<AggregationRule>,
            };
            roles
                .patch(&role.name(), &params, &Patch::Apply(&object))
                .await?;
            names.push(role.name());
        }
        for role in names {
            let name = format!(
                "{}:{}",
                grant.user.replace(':', "-"),
                role.replace(':', "-")
            );
            let binding = ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                role_ref: RoleRef {
                    api_group: RBAC_GROUP.to_string(),
                    kind: "ClusterRole".to_string(),
                    name: role,
                },
                subjects: Some(vec![Subject {
                    kind: "User".to_string(),
                    name: grant.user.to_string(),
                    api_group: Some(RBAC_GROUP.to_string()),
                    ..Subject::default()
                }]),
            };
            bindings
                .patch(&name, &params, &Patch::Apply(&binding))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_is_granted_everything() {
        let infra_users = InfraUsers {
            kubevirt: "a",
            hotplug: "b",
            virt_api: "c",
            cdi: "d",
            snapshot_controller: "e",
            load_balancer: "f",
            service_proxy: "g",
            cluster_dns: "h",
            kubelet: "i",
        };
        let guest_users = GuestUsers {
            sidecars: "j",
            kubelet: "k",
            service_proxy: "l",
            cluster_dns: "m",
        };
        let grants = infra(&infra_users).into_iter().chain(guest(&guest_users));
        for g in grants {
            assert!(!g.builtin.contains(&"cluster-admin"), "{}", g.user);
            for role in &g.roles {
                for r in &role.rules {
                    let every_group = r.api_groups.iter().flatten().any(|g| g == "*");
                    assert!(!every_group, "{} grants every API group", role.name());
                }
            }
        }
    }
}
