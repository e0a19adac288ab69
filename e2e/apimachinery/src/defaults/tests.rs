//! Static defaulting, kind by kind, through `apply_defaults`.

use serde_json::{Value, json};

use super::apply_defaults;

fn defaulted(group: &str, kind: &str, obj: Value) -> Value {
    let mut obj = obj;
    apply_defaults(group, kind, &mut obj);
    let mut again = obj.clone();
    apply_defaults(group, kind, &mut again);
    assert_eq!(again, obj, "defaulting is idempotent");
    obj
}

#[test]
fn pod_spec_and_admission_defaults() {
    let pod = defaulted(
        "",
        "Pod",
        json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "image": "nginx"},
                {"name": "b", "image": "nginx:1.25", "ports": [{"containerPort": 80}]},
                {"name": "c", "image": "registry:5000/app"},
                {"name": "d", "image": "registry:5000/app:v1"},
                {"name": "e", "image": "app@sha256:abcd"},
                {"name": "f", "image": "nginx:latest", "imagePullPolicy": "Never"},
            ]}
        }),
    );
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["schedulerName"], "default-scheduler");
    assert_eq!(spec["securityContext"], json!({}));
    assert_eq!(spec["enableServiceLinks"], true);
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["serviceAccount"], "default");
    assert_eq!(spec["priority"], 0);
    let policies: Vec<&str> = spec["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["imagePullPolicy"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        policies,
        [
            "Always",
            "IfNotPresent",
            "Always",
            "IfNotPresent",
            "IfNotPresent",
            "Never"
        ]
    );
    let c = &spec["containers"][1];
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["terminationMessagePolicy"], "File");
    assert_eq!(c["resources"], json!({}));
    assert_eq!(c["ports"][0]["protocol"], "TCP");
    assert_eq!(
        spec["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ])
    );
    assert_eq!(
        pod["status"],
        json!({"phase": "Pending", "qosClass": "BestEffort"})
    );
}

#[test]
fn pod_keeps_what_is_set() {
    let pod = defaulted(
        "",
        "Pod",
        json!({
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": "csi",
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "a", "image": "x:1"}]
            },
            "status": {"phase": "Running"}
        }),
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["serviceAccount"], "csi");
    assert_eq!(pod["spec"]["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(pod["status"]["phase"], "Running");
}

#[test]
fn pod_resources_and_qos() {
    let guaranteed = defaulted(
        "",
        "Pod",
        json!({"spec": {"containers": [{"name": "a", "image": "x:1",
            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}}]}}),
    );
    let c = &guaranteed["spec"]["containers"][0];
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "500m", "memory": "128Mi"})
    );
    assert_eq!(guaranteed["status"]["qosClass"], "Guaranteed");

    let burstable = defaulted(
        "",
        "Pod",
        json!({"spec": {"containers": [{"name": "a", "image": "x:1",
            "resources": {"requests": {"cpu": "0.5"}, "limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
    );
    assert_eq!(burstable["status"]["qosClass"], "Burstable");
    let equal_units = defaulted(
        "",
        "Pod",
        json!({"spec": {"containers": [{"name": "a", "image": "x:1",
            "resources": {"requests": {"cpu": "1000m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1024Mi"}}}]}}),
    );
    assert_eq!(equal_units["status"]["qosClass"], "Guaranteed");
}

#[test]
fn pod_volumes_probes_env_and_host_network() {
    let pod = defaulted(
        "",
        "Pod",
        json!({"spec": {
            "hostNetwork": true,
            "volumes": [{"name": "scratch"}, {"name": "s", "secret": {"secretName": "x"}}, {"name": "c", "configMap": {"name": "y"}}],
            "containers": [{
                "name": "a", "image": "x:1",
                "ports": [{"containerPort": 9808}],
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "livenessProbe": {"httpGet": {"port": 9808}}
            }]
        }}),
    );
    let spec = &pod["spec"];
    assert_eq!(
        spec["volumes"][0],
        json!({"name": "scratch", "emptyDir": {}})
    );
    assert_eq!(spec["volumes"][1]["secret"]["defaultMode"], 420);
    assert_eq!(spec["volumes"][2]["configMap"]["defaultMode"], 420);
    let c = &spec["containers"][0];
    assert_eq!(c["ports"][0]["hostPort"], 9808);
    assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"port": 9808, "path": "/", "scheme": "HTTP"},
               "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
}

#[test]
fn deployment_and_its_template() {
    let d = defaulted(
        "apps",
        "Deployment",
        json!({"spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
    );
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
    );
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
    // Admission-time pod fields are not template defaults.
    assert!(pod.get("tolerations").is_none());
    assert!(pod.get("serviceAccountName").is_none());
    assert!(d.get("status").is_none());

    let recreate = defaulted(
        "apps",
        "Deployment",
        json!({"spec": {"strategy": {"type": "Recreate"}}}),
    );
    assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn daemonset_statefulset_replicaset() {
    let ds = defaulted("apps", "DaemonSet", json!({"spec": {}}));
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
    let sts = defaulted(
        "apps",
        "StatefulSet",
        json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}}),
    );
    assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        sts["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["volumeMode"],
        "Filesystem"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["status"]["phase"],
        "Pending"
    );
    let rs = defaulted("apps", "ReplicaSet", json!({"spec": {}}));
    assert_eq!(rs["spec"]["replicas"], 1);
}

#[test]
fn jobs() {
    let job = defaulted(
        "batch",
        "Job",
        json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}}),
    );
    let spec = &job["spec"];
    assert_eq!(spec["completions"], 1);
    assert_eq!(spec["parallelism"], 1);
    assert_eq!(spec["backoffLimit"], 6);
    assert_eq!(spec["completionMode"], "NonIndexed");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
    let parallel = defaulted("batch", "Job", json!({"spec": {"parallelism": 3}}));
    assert!(parallel["spec"].get("completions").is_none());
    let cron = defaulted(
        "batch",
        "CronJob",
        json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {}}}}),
    );
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cron["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(cron["spec"]["failedJobsHistoryLimit"], 1);
    assert_eq!(cron["spec"]["jobTemplate"]["spec"]["backoffLimit"], 6);
}

#[test]
fn services() {
    let svc = defaulted(
        "",
        "Service",
        json!({"spec": {"selector": {"a": "b"}, "ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]}}),
    );
    let spec = &svc["spec"];
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert!(spec.get("externalTrafficPolicy").is_none());
    assert_eq!(
        spec["ports"][0],
        json!({"port": 80, "protocol": "TCP", "targetPort": 80})
    );
    assert_eq!(spec["ports"][1]["targetPort"], "https");
    assert_eq!(svc["status"], json!({"loadBalancer": {}}));
    assert!(
        spec.get("ipFamilyPolicy").is_none(),
        "the allocator defaults the IP family policy"
    );

    let lb = defaulted(
        "",
        "Service",
        json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": 0}]},
               "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"hostname": "lb.example"}]}}}),
    );
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
    assert_eq!(lb["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(lb["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
    assert!(
        lb["status"]["loadBalancer"]["ingress"][1]
            .get("ipMode")
            .is_none()
    );

    let np = defaulted(
        "",
        "Service",
        json!({"spec": {"type": "NodePort", "sessionAffinity": "ClientIP"}}),
    );
    assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    assert!(np["spec"].get("allocateLoadBalancerNodePorts").is_none());
    assert_eq!(
        np["spec"]["sessionAffinityConfig"],
        json!({"clientIP": {"timeoutSeconds": 10800}})
    );

    let ext = defaulted(
        "",
        "Service",
        json!({"spec": {"type": "ExternalName", "externalName": "db.example"}}),
    );
    assert!(ext["spec"].get("internalTrafficPolicy").is_none());
    let ext_ips = defaulted(
        "",
        "Service",
        json!({"spec": {"externalIPs": ["192.0.2.9"]}}),
    );
    assert_eq!(ext_ips["spec"]["externalTrafficPolicy"], "Cluster");
}

#[test]
fn namespaces_and_secrets() {
    let ns = defaulted("", "Namespace", json!({"metadata": {"name": "tenant-a"}}));
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "tenant-a"
    );
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    // The label is forced to the name.
    let ns = defaulted(
        "",
        "Namespace",
        json!({"metadata": {"name": "b", "labels": {"kubernetes.io/metadata.name": "other"}}}),
    );
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "b");
    assert_eq!(defaulted("", "Secret", json!({}))["type"], "Opaque");
    assert_eq!(
        defaulted("", "Secret", json!({"type": "kubernetes.io/tls"}))["type"],
        "kubernetes.io/tls"
    );
}

#[test]
fn storage_kinds() {
    let pvc = defaulted(
        "",
        "PersistentVolumeClaim",
        json!({"spec": {"accessModes": ["ReadWriteOnce"]}}),
    );
    assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pvc["status"]["phase"], "Pending");
    let block = defaulted(
        "",
        "PersistentVolumeClaim",
        json!({"spec": {"volumeMode": "Block"}}),
    );
    assert_eq!(block["spec"]["volumeMode"], "Block");
    let pv = defaulted(
        "",
        "PersistentVolume",
        json!({"spec": {"csi": {"driver": "csi.kubevirt.io"}}}),
    );
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pv["status"]["phase"], "Pending");
    let sc = defaulted(
        "storage.k8s.io",
        "StorageClass",
        json!({"provisioner": "csi.kubevirt.io"}),
    );
    assert_eq!(sc["reclaimPolicy"], "Delete");
    assert_eq!(sc["volumeBindingMode"], "Immediate");
    let driver = defaulted(
        "storage.k8s.io",
        "CSIDriver",
        json!({"metadata": {"name": "csi.kubevirt.io"}, "spec": {"podInfoOnMount": true}}),
    );
    assert_eq!(
        driver["spec"],
        json!({
            "attachRequired": true, "podInfoOnMount": true, "storageCapacity": false,
            "fsGroupPolicy": "ReadWriteOnceWithFSType", "volumeLifecycleModes": ["Persistent"],
            "requiresRepublish": false, "seLinuxMount": false
        })
    );
}

#[test]
fn discovery_rbac_networking_crds_and_untouched_kinds() {
    let eps = defaulted(
        "discovery.k8s.io",
        "EndpointSlice",
        json!({"ports": [{"port": 80}], "endpoints": []}),
    );
    assert_eq!(
        eps["ports"][0],
        json!({"port": 80, "protocol": "TCP", "name": ""})
    );
    let rb = defaulted(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        json!({"subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s", "namespace": "n"}]}),
    );
    assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
    assert_eq!(rb["subjects"][1]["apiGroup"], "");
    let np = defaulted(
        "networking.k8s.io",
        "NetworkPolicy",
        json!({"spec": {"ingress": [{"ports": [{"port": 80}]}], "egress": [{}]}}),
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
    let crd = defaulted(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        json!({"spec": {"names": {"kind": "VirtualMachine", "plural": "virtualmachines"}}}),
    );
    assert_eq!(crd["spec"]["names"]["singular"], "virtualmachine");
    assert_eq!(crd["spec"]["names"]["listKind"], "VirtualMachineList");
    assert_eq!(crd["spec"]["conversion"], json!({"strategy": "None"}));
    let lease = json!({"spec": {"holderIdentity": "a"}});
    assert_eq!(
        defaulted("coordination.k8s.io", "Lease", lease.clone()),
        lease
    );
    let vm = json!({"spec": {"running": true}});
    assert_eq!(defaulted("kubevirt.io", "VirtualMachine", vm.clone()), vm);
}

#[test]
fn malformed_fields_are_left_for_validation() {
    let odd = json!({"spec": "not an object"});
    assert_eq!(defaulted("apps", "Deployment", odd.clone()), odd);
    let odd_pod = json!({"spec": {"containers": "x"}});
    let out = defaulted("", "Pod", odd_pod);
    assert_eq!(out["spec"]["containers"], "x");
}
