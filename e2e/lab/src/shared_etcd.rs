//! A shared etcd for hosted clusters (`etcd.managementType: Shared`),
//! deployed in the management cluster as an administrator would: a
//! namespace with the etcd's serving certificate, a one-member StatefulSet
//! (the management kubelet runs `registry.k8s.io/etcd` with the lab's etcd)
//! and a Service, `https://etcd.<namespace>.svc:2379`. Clients must present
//! a certificate of the etcd's CA; once the member is Ready, a `root` user
//! (certificate authentication, no password) is made and auth enabled, as
//! `etcdctl user add root --no-password; etcdctl auth enable` would.
//!
//! [`SharedEtcd::credentials`] is what `etcd.shared.credentialsSecret`
//! holds; [`SharedEtcd::keys`] reads the etcd as root, and
//! [`SharedEtcd::keys_as`] as another user, from the host through a
//! loopback forward to the member.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::Api;
use kube::api::PostParams;
use kubevirt_csi_proto::etcd::auth_client::AuthClient;
use kubevirt_csi_proto::etcd::kv_client::KvClient;
use kubevirt_csi_proto::etcd::{
    AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, RangeRequest, UserAddOptions,
    prefix_end,
};
use lab_cluster::pki::{Authority, Issued};
use lab_net::bridge::Bridge;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::lab::ensure_namespace;
use crate::{Lab, LabError, wait};

/// The etcd image (kubeadm's for Kubernetes 1.32).
const IMAGE: &str = "registry.k8s.io/etcd:3.5.16-0";
const CLIENT_PORT: u16 = 2379;
const READY: Duration = Duration::from_secs(60);

/// A running shared etcd with auth enabled.
pub struct SharedEtcd {
    /// `https://etcd.<namespace>.svc:2379`.
    pub endpoint: String,
    ca: Authority,
    root: Issued,
    forward: Bridge,
}

fn invalid(what: &str) -> impl FnOnce(tonic::Status) -> LabError + '_ {
    move |s| LabError::Invalid(format!("shared etcd: {what}: {}", s.message()))
}

impl SharedEtcd {
    /// Deploys it in `namespace` of the management cluster and enables auth.
    pub async fn deploy(lab: &Lab, namespace: &str) -> Result<SharedEtcd, LabError> {
        let client = lab.infra_client();
        ensure_namespace(&client, namespace).await?;
        let ca = Authority::new("shared-etcd-ca")?;
        let host = format!("etcd.{namespace}.svc");
        let server = ca.serving(
            "shared-etcd",
            &[
                host.clone(),
                format!("{host}.cluster.local"),
                "127.0.0.1".to_string(),
            ],
        )?;
        let root = ca.client("root", &[])?;
        let create = PostParams::default();

        let tls: Secret = serde_json::from_value(json!({
            "metadata": {"name": "etcd-tls", "namespace": namespace},
            "type": "kubernetes.io/tls",
            "stringData": {
                "ca.crt": ca.cert_pem(),
                "tls.crt": server.cert_pem,
                "tls.key": server.key_pem,
            },
        }))
        .map_err(|e| LabError::Invalid(e.to_string()))?;
        Api::<Secret>::namespaced(client.clone(), namespace)
            .create(&create, &tls)
            .await?;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "etcd", "namespace": namespace},
            "spec": {
                "selector": {"app": "shared-etcd"},
                "ports": [{"name": "client", "port": CLIENT_PORT}],
            },
        }))
        .map_err(|e| LabError::Invalid(e.to_string()))?;
        Api::<Service>::namespaced(client.clone(), namespace)
            .create(&create, &service)
            .await?;
        let statefulset: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "etcd", "namespace": namespace},
            "spec": {
                "serviceName": "etcd",
                "replicas": 1,
                "selector": {"matchLabels": {"app": "shared-etcd"}},
                "template": {
                    "metadata": {"labels": {"app": "shared-etcd"}},
                    "spec": {
                        "containers": [{
                            "name": "etcd",
                            "image": IMAGE,
                            "command": ["etcd"],
                            "args": [
                                "--name=$(POD_NAME)",
                                "--data-dir=/var/lib/etcd/data",
                                "--listen-client-urls=https://$(POD_IP):2379",
                                format!("--advertise-client-urls=https://{host}:2379"),
                                "--listen-peer-urls=http://$(POD_IP):2380",
                                "--initial-advertise-peer-urls=http://$(POD_IP):2380",
                                "--initial-cluster=$(POD_NAME)=http://$(POD_IP):2380",
                                "--listen-metrics-urls=http://$(POD_IP):2381",
                                "--client-cert-auth=true",
                                "--trusted-ca-file=/etc/etcd/tls/ca.crt",
                                "--cert-file=/etc/etcd/tls/tls.crt",
                                "--key-file=/etc/etcd/tls/tls.key",
                                // The clusters' API servers may not compact.
                                "--auto-compaction-mode=periodic",
                                "--auto-compaction-retention=5m",
                            ],
                            "env": [
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": 2381},
                                "periodSeconds": 1,
                            },
                            "volumeMounts": [
                                {"name": "tls", "mountPath": "/etc/etcd/tls", "readOnly": true},
                                {"name": "data", "mountPath": "/var/lib/etcd"},
                            ],
                        }],
                        "volumes": [
                            {"name": "tls", "secret": {"secretName": "etcd-tls"}},
                            {"name": "data", "emptyDir": {}},
                        ],
                    },
                },
            },
        }))
        .map_err(|e| LabError::Invalid(e.to_string()))?;
        Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .create(&create, &statefulset)
            .await?;

        let pods = Api::<Pod>::namespaced(client, namespace);
        let ip = wait::until(&pods, "etcd-0", READY, |p| {
            wait::pod_ready(p)?;
            p?.status.as_ref()?.pod_ip.clone()
        })
        .await?;
        let target: SocketAddr = format!("{ip}:{CLIENT_PORT}")
            .parse()
            .map_err(|e| LabError::Invalid(format!("shared etcd address {ip}: {e}")))?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let forward = Bridge::from_host(lab.net.clone(), loopback, target).await?;
        let etcd = SharedEtcd {
            endpoint: format!("https://{host}:{CLIENT_PORT}"),
            ca,
            root,
            forward,
        };

        // root, then auth on.
        let channel = etcd
            .channel(&etcd.root.cert_pem, &etcd.root.key_pem)
            .await?;
        let mut auth = AuthClient::new(channel);
        auth.user_add(AuthUserAddRequest {
            name: "root".into(),
            password: String::new(),
            options: Some(UserAddOptions { no_password: true }),
        })
        .await
        .map_err(invalid("add user root"))?;
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .map_err(invalid("grant root the root role"))?;
        auth.auth_enable(AuthEnableRequest {})
            .await
            .map_err(invalid("enable auth"))?;
        Ok(etcd)
    }

    /// Creates `namespace/name`, the Secret `etcd.shared.credentialsSecret`
    /// names: the CA and root's client certificate.
    pub async fn create_credentials(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<(), LabError> {
        let data: BTreeMap<String, ByteString> = [
            ("ca.crt", self.ca.cert_pem()),
            ("ca.key", self.ca.key_pem()),
            ("tls.crt", self.root.cert_pem.clone()),
            ("tls.key", self.root.key_pem.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            data: Some(data),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    /// A channel to the member (through the host forward) as the user of
    /// the client certificate `cert`.
    async fn channel(&self, cert: &str, key: &str) -> Result<Channel, LabError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .identity(Identity::from_pem(cert, key));
        let url = format!("https://{}", self.forward.local_addr());
        Endpoint::from_shared(url)
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| LabError::Invalid(format!("shared etcd endpoint: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| LabError::Invalid(format!("connect to the shared etcd: {e}")))
    }

    /// The keys under `prefix`, read as root.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, LabError> {
        self.keys_as(&self.root.cert_pem, &self.root.key_pem, prefix)
            .await?
            .map_err(invalid("read as root"))
    }

    /// The keys under `prefix`, read as the user of client certificate
    /// `cert`; the etcd's refusal is the inner error.
    pub async fn keys_as(
        &self,
        cert: &str,
        key: &str,
        prefix: &str,
    ) -> Result<Result<Vec<String>, tonic::Status>, LabError> {
        let mut kv = KvClient::new(self.channel(cert, key).await?);
        let range = kv
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                limit: 0,
                keys_only: true,
            })
            .await;
        Ok(range.map(|r| {
            r.into_inner()
                .kvs
                .into_iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect()
        }))
    }
}
