//! What a hosted control plane's PKI holds ([`requests`]), the Secrets that
//! store it ([`secrets`]), and the kubeconfigs made from it ([`kubeconfigs`]).
//!
//! Three CAs, as kubeadm has them: the cluster CA (serving and client
//! certificates of the API server, the components' and the admin's client
//! certificates, and CSR signing by kube-controller-manager), the etcd CA
//! (etcd's serving, peer and client certificates) and the front-proxy CA
//! (the client certificate kube-apiserver presents to aggregated APIs).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use super::{HostedInputs, endpoint_url};
use crate::api::controlplane::ApiEndpoint;
use crate::desired::controlplane::meta;
use crate::names;
use crate::pki::{self, Material, Request, Stored, Usage};

pub const ROOT_CA: &str = "root-ca";
pub const ETCD_CA: &str = "etcd-ca";
pub const FRONT_PROXY_CA: &str = "front-proxy-ca";
pub const SA_SIGNING_KEY: &str = "sa-signing-key";
pub const ETCD_SERVER: &str = "etcd-server-tls";
pub const ETCD_PEER: &str = "etcd-peer-tls";
pub const ETCD_CLIENT: &str = "etcd-client-tls";
pub const KAS_SERVER: &str = "kas-server-crt";
pub const KAS_KUBELET_CLIENT: &str = "kas-kubelet-client-crt";
pub const KAS_AGGREGATOR: &str = "kas-aggregator-crt";
pub const KCM_CLIENT: &str = "kube-controller-manager-client-crt";
pub const SCHEDULER_CLIENT: &str = "kube-scheduler-client-crt";
pub const ADMIN_CLIENT: &str = "system-admin-client-crt";
pub const KCM_KUBECONFIG: &str = "kube-controller-manager-kubeconfig";
pub const SCHEDULER_KUBECONFIG: &str = "kube-scheduler-kubeconfig";
/// The admin kubeconfig in the control-plane namespace.
pub const ADMIN_KUBECONFIG: &str = "admin-kubeconfig";
/// The shared etcd's CA (given, never stored in the control plane).
pub const SHARED_ETCD_CA: &str = "shared-etcd-ca";
/// The only name kube-apiserver takes identity headers from.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

fn leaf(
    secret: &str,
    cn: &str,
    orgs: &[&str],
    sans: Vec<String>,
    usage: Usage,
    issuer: &str,
) -> Request {
    Request::Certificate {
        secret: secret.to_string(),
        cn: cn.to_string(),
        orgs: orgs.iter().map(|o| o.to_string()).collect(),
        sans,
        usage,
        issuer: issuer.to_string(),
    }
}

/// The names a Service answers to in the cluster.
fn service_names(inp: &HostedInputs, service: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{}", inp.namespace),
        format!("{service}.{}.svc", inp.namespace),
        format!("{service}.{}.svc.cluster.local", inp.namespace),
    ]
}

/// The PKI of the control plane, CAs first. `endpoint` is where the API
/// server is published (its serving certificate names it), once known.
/// With a shared etcd, `shared_etcd_ca` is its CA: it issues the API
/// server's client certificate for the cluster's etcd user, and the
/// cluster has no etcd CA or etcd server certificates of its own.
pub fn requests(
    inp: &HostedInputs,
    endpoint: Option<&ApiEndpoint>,
    shared_etcd_ca: Option<&Stored>,
) -> Vec<Request> {
    let authority = |secret: &str, cn: &str| Request::Authority {
        secret: secret.to_string(),
        cn: cn.to_string(),
    };
    let mut etcd_server = service_names(inp, names::ETCD_CLIENT);
    let members = vec![
        format!("*.{}.{}.svc", names::ETCD_DISCOVERY, inp.namespace),
        format!(
            "*.{}.{}.svc.cluster.local",
            names::ETCD_DISCOVERY,
            inp.namespace
        ),
    ];
    etcd_server.extend(members.clone());
    etcd_server.push("localhost".to_string());
    etcd_server.push("127.0.0.1".to_string());

    let mut kas = service_names(inp, names::KUBE_APISERVER);
    kas.extend([
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        inp.kubernetes_service_ip.to_string(),
    ]);
    if let Some(ep) = endpoint
        && !kas.contains(&ep.host)
    {
        kas.push(ep.host.clone());
    }

    let mut out = vec![
        authority(ROOT_CA, "kubernetes"),
        authority(FRONT_PROXY_CA, "front-proxy-ca"),
        Request::SigningKey {
            secret: SA_SIGNING_KEY.to_string(),
        },
    ];
    match (&inp.shared_etcd, shared_etcd_ca) {
        (Some(shared), ca) => {
            if let Some(ca) = ca {
                out.push(Request::Given {
                    secret: SHARED_ETCD_CA.to_string(),
                    ca: ca.clone(),
                });
            }
            out.push(leaf(
                ETCD_CLIENT,
                &shared.user,
                &[],
                vec![],
                Usage::Client,
                SHARED_ETCD_CA,
            ));
        }
        (None, _) => out.extend([
            authority(ETCD_CA, "etcd-ca"),
            leaf(
                ETCD_SERVER,
                "etcd-server",
                &[],
                etcd_server,
                Usage::ServerAndClient,
                ETCD_CA,
            ),
            leaf(
                ETCD_PEER,
                "etcd-peer",
                &[],
                members,
                Usage::ServerAndClient,
                ETCD_CA,
            ),
            leaf(
                ETCD_CLIENT,
                "kube-apiserver-etcd-client",
                &[],
                vec![],
                Usage::Client,
                ETCD_CA,
            ),
        ]),
    }
    out.extend([
        leaf(
            KAS_SERVER,
            "kube-apiserver",
            &[],
            kas,
            Usage::Server,
            ROOT_CA,
        ),
        leaf(
            KAS_KUBELET_CLIENT,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            vec![],
            Usage::Client,
            ROOT_CA,
        ),
        leaf(
            KAS_AGGREGATOR,
            FRONT_PROXY_CLIENT,
            &[],
            vec![],
            Usage::Client,
            FRONT_PROXY_CA,
        ),
        leaf(
            KCM_CLIENT,
            "system:kube-controller-manager",
            &[],
            vec![],
            Usage::Client,
            ROOT_CA,
        ),
        leaf(
            SCHEDULER_CLIENT,
            "system:kube-scheduler",
            &[],
            vec![],
            Usage::Client,
            ROOT_CA,
        ),
        leaf(
            ADMIN_CLIENT,
            "system:admin",
            &["system:masters"],
            vec![],
            Usage::Client,
            ROOT_CA,
        ),
    ]);
    out
}

/// A Secret of the control-plane namespace from stored PKI material.
fn secret(inp: &HostedInputs, name: &str, stored: &Stored, type_: &str) -> Secret {
    let mut metadata = meta(name, Some(&inp.namespace), inp.labels());
    if !stored.annotations.is_empty() {
        metadata.annotations = Some(stored.annotations.clone());
    }
    Secret {
        metadata,
        type_: Some(type_.to_string()),
        data: Some(
            stored
                .data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The Secrets holding `material`.
pub fn secrets(inp: &HostedInputs, material: &Material) -> Vec<Secret> {
    material
        .secrets
        .iter()
        .map(|(name, stored)| {
            let tls = stored.data.contains_key(pki::TLS_CERT);
            secret(
                inp,
                name,
                stored,
                if tls { "kubernetes.io/tls" } else { "Opaque" },
            )
        })
        .collect()
}

/// A kubeconfig (YAML) for `server` with the client certificate in `client`.
pub fn kubeconfig(material: &Material, name: &str, server: &str, client: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": server,
            "certificate-authority-data": b64(material.pem(ROOT_CA, pki::CA_CERT)),
        }}],
        "users": [{"name": name, "user": {
            "client-certificate-data": b64(material.pem(client, pki::TLS_CERT)),
            "client-key-data": b64(material.pem(client, pki::TLS_KEY)),
        }}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    serde_yaml::to_string(&config).unwrap_or_default()
}

/// A Secret holding a kubeconfig under key `kubeconfig`.
fn kubeconfig_secret(inp: &HostedInputs, namespace: &str, name: &str, text: String) -> Secret {
    Secret {
        metadata: meta(name, Some(namespace), inp.labels()),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            names::KUBECONFIG_KEY.to_string(),
            ByteString(text.into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// The components' kubeconfigs (the API server's Service) and, once the
/// endpoint is known, the admin kubeconfig for it: in the control-plane
/// namespace and, as `<name>-admin-kubeconfig`, in the HostedCluster's.
pub fn kubeconfigs(
    inp: &HostedInputs,
    material: &Material,
    endpoint: Option<&ApiEndpoint>,
) -> Vec<Secret> {
    let internal = inp.internal_server();
    let mut out = vec![
        kubeconfig_secret(
            inp,
            &inp.namespace,
            KCM_KUBECONFIG,
            kubeconfig(
                material,
                names::KUBE_CONTROLLER_MANAGER,
                &internal,
                KCM_CLIENT,
            ),
        ),
        kubeconfig_secret(
            inp,
            &inp.namespace,
            SCHEDULER_KUBECONFIG,
            kubeconfig(material, names::KUBE_SCHEDULER, &internal, SCHEDULER_CLIENT),
        ),
    ];
    if let Some(ep) = endpoint {
        let admin = kubeconfig(material, &inp.hc_name, &endpoint_url(ep), ADMIN_CLIENT);
        out.push(kubeconfig_secret(
            inp,
            &inp.namespace,
            ADMIN_KUBECONFIG,
            admin.clone(),
        ));
        out.push(kubeconfig_secret(
            inp,
            &inp.hc_namespace,
            &names::admin_kubeconfig_secret(&inp.hc_name),
            admin,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn sans(requests: &[Request], secret: &str) -> Vec<String> {
        requests
            .iter()
            .find_map(|r| match r {
                Request::Certificate {
                    secret: s, sans, ..
                } if s == secret => Some(sans.clone()),
                _ => None,
            })
            .expect("request")
    }

    #[test]
    fn the_serving_certificate_names_services_and_the_endpoint() {
        let inp = inputs(&hosted());
        let ep = ApiEndpoint {
            host: "192.168.100.10".into(),
            port: 30443,
        };
        let without = sans(&requests(&inp, None, None), KAS_SERVER);
        let with = sans(&requests(&inp, Some(&ep), None), KAS_SERVER);
        for name in [
            "kube-apiserver.clusters-guest1.svc",
            "kubernetes.default.svc",
            "172.31.0.1",
        ] {
            assert!(without.contains(&name.to_string()), "{name}");
        }
        assert!(!without.contains(&ep.host));
        assert!(with.contains(&ep.host));
        assert!(
            sans(&requests(&inp, None, None), ETCD_PEER)
                .contains(&"*.etcd-discovery.clusters-guest1.svc".to_string())
        );
    }

    #[test]
    fn with_a_shared_etcd_its_ca_issues_the_clusters_etcd_user() {
        let inp = inputs(&shared(hosted()));
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("ts");
        let theirs = pki::ensure(
            &[Request::Authority {
                secret: "ca".into(),
                cn: "shared-etcd-ca".into(),
            }],
            &BTreeMap::new(),
            now,
        )
        .expect("ca");
        let ca = theirs.get("ca").expect("ca");
        let material =
            pki::ensure(&requests(&inp, None, Some(ca)), &BTreeMap::new(), now).expect("issue");
        let names: Vec<_> = secrets(&inp, &material)
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        for own in [ETCD_CA, ETCD_SERVER, ETCD_PEER, SHARED_ETCD_CA] {
            assert!(!names.iter().any(|n| n == own), "{own} in {names:?}");
        }
        assert_eq!(
            material.pem(ETCD_CLIENT, pki::CA_CERT),
            theirs.pem("ca", pki::CA_CERT)
        );
        let cn = requests(&inp, None, Some(ca))
            .into_iter()
            .find_map(|r| match r {
                Request::Certificate { secret, cn, .. } if secret == ETCD_CLIENT => Some(cn),
                _ => None,
            });
        assert_eq!(cn.as_deref(), Some("clusters-guest1"));
    }

    #[test]
    fn issued_material_makes_secrets_and_working_kubeconfigs() {
        let inp = inputs(&hosted());
        let ep = ApiEndpoint {
            host: "192.168.100.10".into(),
            port: 30443,
        };
        let material = pki::ensure(
            &requests(&inp, Some(&ep), None),
            &BTreeMap::new(),
            jiff::Timestamp::from_second(1_800_000_000).expect("ts"),
        )
        .expect("issue");
        let secrets = secrets(&inp, &material);
        assert_eq!(secrets.len(), 13);
        let kas = secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(KAS_SERVER))
            .expect("kas");
        assert_eq!(kas.type_.as_deref(), Some("kubernetes.io/tls"));
        assert!(
            kas.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(pki::RENEW_AFTER_ANNOTATION))
        );

        let configs = kubeconfigs(&inp, &material, Some(&ep));
        let names: Vec<_> = configs
            .iter()
            .map(|s| {
                format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "clusters-guest1/kube-controller-manager-kubeconfig",
                "clusters-guest1/kube-scheduler-kubeconfig",
                "clusters-guest1/admin-kubeconfig",
                "clusters/guest1-admin-kubeconfig",
            ]
        );
        let admin = &configs[3].data.as_ref().expect("data")["kubeconfig"].0;
        let kc = kube::config::Kubeconfig::from_yaml(std::str::from_utf8(admin).expect("utf8"))
            .expect("parses");
        let cluster = kc.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://192.168.100.10:30443")
        );
        assert_eq!(kubeconfigs(&inp, &material, None).len(), 2);
    }
}
