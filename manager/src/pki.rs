//! The PKI of a hosted control plane, kept in Secrets of its control-plane
//! namespace: certificate authorities, the certificates they issue, and the
//! ServiceAccount signing key.
//!
//! [`ensure`] takes what the cluster needs ([`Request`]s, CAs first) and what
//! is stored, and hands back the material to store: what is stored and still
//! right is kept byte for byte (so a reconcile that changes nothing writes
//! nothing); a missing item is made; a certificate is issued again when its
//! request changed (names, groups, usage, or its CA) or two thirds of its
//! lifetime have passed. Each certificate Secret records the request it
//! answers and when to renew it in annotations.
//!
//! Layout: a CA Secret holds `ca.crt` and `ca.key`; a certificate Secret
//! `tls.crt`, `tls.key` and its CA's `ca.crt`; the signing key Secret
//! `service-account.key` and `service-account.pub`.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::hash;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const SA_KEY: &str = "service-account.key";
pub const SA_PUB: &str = "service-account.pub";
/// The request a certificate answers (a hash of it and of its CA).
pub const REQUEST_ANNOTATION: &str = "hcp.kubevirt-rs.io/certificate-request";
/// When the certificate is issued again.
pub const RENEW_AFTER_ANNOTATION: &str = "hcp.kubevirt-rs.io/renew-after";

/// Lifetime of a CA.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of an issued certificate.
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating of `notBefore`, for clocks slightly behind ours.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// Both, as etcd's peer certificates are.
    ServerAndClient,
}

/// One item of a cluster's PKI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A self-signed certificate authority.
    Authority { secret: String, cn: String },
    /// A certificate issued by the CA in Secret `issuer`.
    Certificate {
        secret: String,
        cn: String,
        /// Organizations (a client certificate's groups).
        orgs: Vec<String>,
        /// DNS names and IP addresses.
        sans: Vec<String>,
        usage: Usage,
        issuer: String,
    },
    /// A bare key pair (the ServiceAccount token signing key).
    SigningKey { secret: String },
    /// A CA someone else owns (a shared etcd's), named `secret` for the
    /// certificates it issues: used to issue, never stored with the rest.
    Given { secret: String, ca: Stored },
}

impl Request {
    /// The Secret the item is stored in.
    pub fn secret(&self) -> &str {
        match self {
            Request::Authority { secret, .. }
            | Request::Certificate { secret, .. }
            | Request::SigningKey { secret }
            | Request::Given { secret, .. } => secret,
        }
    }
}

/// What a Secret holds: its data and annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub data: BTreeMap<String, Vec<u8>>,
    pub annotations: BTreeMap<String, String>,
}

/// The PKI to store, in the order of the requests, and the earliest renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub secrets: Vec<(String, Stored)>,
    /// The given CAs (not to be stored).
    pub given: Vec<(String, Stored)>,
    /// When the next certificate is due to be issued again.
    pub renew_at: Option<Timestamp>,
    /// How many items were made in this call.
    pub made: usize,
}

impl Material {
    /// The stored item of Secret `name`.
    pub fn get(&self, name: &str) -> Option<&Stored> {
        self.secrets
            .iter()
            .chain(&self.given)
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// Key `key` of Secret `name` as text (PEM), empty when absent.
    pub fn pem(&self, name: &str, key: &str) -> String {
        self.get(name)
            .and_then(|s| s.data.get(key))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate {secret} names CA {issuer}, which is not requested before it")]
    UnknownIssuer { secret: String, issuer: String },
    #[error("cannot issue {secret}: {source}")]
    Issue {
        secret: String,
        #[source]
        source: rcgen::Error,
    },
}

/// The material for `requests`, keeping what `stored` (by Secret name)
/// already holds where it is still right at `now`.
pub fn ensure(
    requests: &[Request],
    stored: &BTreeMap<String, Stored>,
    now: Timestamp,
) -> Result<Material, PkiError> {
    let mut out = Material {
        secrets: Vec::with_capacity(requests.len()),
        given: Vec::new(),
        renew_at: None,
        made: 0,
    };
    for request in requests {
        let name = request.secret();
        let fail = |source| PkiError::Issue {
            secret: name.to_string(),
            source,
        };
        let current = stored.get(name);
        let item = match request {
            Request::Given { ca, .. } => {
                out.given
                    .push((name.to_string(), keep(ca, &[CA_CERT, CA_KEY])));
                continue;
            }
            Request::Authority { cn, .. } => match current.filter(|s| has(s, &[CA_CERT, CA_KEY])) {
                Some(s) => keep(s, &[CA_CERT, CA_KEY]),
                None => authority(cn, now).map_err(fail)?,
            },
            Request::SigningKey { .. } => match current.filter(|s| has(s, &[SA_KEY, SA_PUB])) {
                Some(s) => keep(s, &[SA_KEY, SA_PUB]),
                None => signing_key().map_err(fail)?,
            },
            Request::Certificate {
                cn,
                orgs,
                sans,
                usage,
                issuer,
                ..
            } => {
                let ca = out.get(issuer).ok_or_else(|| PkiError::UnknownIssuer {
                    secret: name.to_string(),
                    issuer: issuer.clone(),
                })?;
                let leaf = Leaf {
                    cn,
                    orgs,
                    sans,
                    usage: *usage,
                };
                let fingerprint = fingerprint(&leaf, ca);
                match current.filter(|s| is_current(s, &fingerprint, now)) {
                    Some(s) => keep(s, &[TLS_CERT, TLS_KEY, CA_CERT]),
                    None => certificate(&leaf, ca, &fingerprint, now).map_err(fail)?,
                }
            }
        };
        let made = Some(&item) != current;
        if made {
            out.made += 1;
        }
        if let Some(at) = renew_after(&item) {
            out.renew_at = Some(out.renew_at.map_or(at, |t| t.min(at)));
        }
        out.secrets.push((name.to_string(), item));
    }
    Ok(out)
}

fn has(s: &Stored, keys: &[&str]) -> bool {
    keys.iter()
        .all(|k| s.data.get(*k).is_some_and(|v| !v.is_empty()))
}

/// The stored item, reduced to the keys and annotations this module owns.
fn keep(s: &Stored, keys: &[&str]) -> Stored {
    Stored {
        data: keys
            .iter()
            .filter_map(|k| s.data.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect(),
        annotations: s
            .annotations
            .iter()
            .filter(|(k, _)| *k == REQUEST_ANNOTATION || *k == RENEW_AFTER_ANNOTATION)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn renew_after(s: &Stored) -> Option<Timestamp> {
    s.annotations.get(RENEW_AFTER_ANNOTATION)?.parse().ok()
}

/// A stored certificate answers `fingerprint` and is not due for renewal.
fn is_current(s: &Stored, fingerprint: &str, now: Timestamp) -> bool {
    has(s, &[TLS_CERT, TLS_KEY, CA_CERT])
        && s.annotations.get(REQUEST_ANNOTATION).map(String::as_str) == Some(fingerprint)
        && renew_after(s).is_some_and(|at| now < at)
}

/// What a certificate says about its subject: the fields of a
/// [`Request::Certificate`] that go into it.
struct Leaf<'a> {
    cn: &'a str,
    orgs: &'a [String],
    sans: &'a [String],
    usage: Usage,
}

/// The certificate's subject and its CA certificate, hashed: any change
/// issues again.
fn fingerprint(leaf: &Leaf<'_>, ca: &Stored) -> String {
    let Leaf {
        cn,
        orgs,
        sans,
        usage,
    } = leaf;
    let usage = format!("{usage:?}");
    let mut parts: Vec<&[u8]> = vec![cn.as_bytes(), usage.as_bytes()];
    parts.push(b"orgs");
    parts.extend(orgs.iter().map(|o| o.as_bytes()));
    parts.push(b"sans");
    parts.extend(sans.iter().map(|s| s.as_bytes()));
    parts.push(ca.data.get(CA_CERT).map(Vec::as_slice).unwrap_or_default());
    hash::hex(hash::fnv1a_parts(parts))
}

fn offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// `notBefore` and `notAfter` of a certificate issued at `now`.
fn validity(params: &mut CertificateParams, now: Timestamp, lifetime: Duration) {
    let start = now - BACKDATE;
    params.not_before = offset(start);
    params.not_after = offset(start + lifetime);
}

fn authority(cn: &str, now: Timestamp) -> Result<Stored, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, CA_LIFETIME);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    Ok(Stored {
        data: BTreeMap::from([
            (CA_CERT.to_string(), ca.pem().into_bytes()),
            (CA_KEY.to_string(), ca.key().serialize_pem().into_bytes()),
        ]),
        annotations: BTreeMap::new(),
    })
}

fn signing_key() -> Result<Stored, rcgen::Error> {
    let key = KeyPair::generate()?;
    Ok(Stored {
        data: BTreeMap::from([
            (SA_KEY.to_string(), key.serialize_pem().into_bytes()),
            (SA_PUB.to_string(), key.public_key_pem().into_bytes()),
        ]),
        annotations: BTreeMap::new(),
    })
}

fn certificate(
    leaf: &Leaf<'_>,
    ca: &Stored,
    fingerprint: &str,
    now: Timestamp,
) -> Result<Stored, rcgen::Error> {
    let Leaf {
        cn,
        orgs,
        sans,
        usage,
    } = leaf;
    let text = |key: &str| {
        String::from_utf8_lossy(ca.data.get(key).map(Vec::as_slice).unwrap_or_default())
            .into_owned()
    };
    let ca_cert = text(CA_CERT);
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&text(CA_KEY))?)?;

    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, *cn);
    for org in orgs.iter() {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org.as_str());
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    validity(&mut params, now, LEAF_LIFETIME);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let renew = now - BACKDATE + LEAF_LIFETIME * 2 / 3;
    Ok(Stored {
        data: BTreeMap::from([
            (TLS_CERT.to_string(), cert.pem().into_bytes()),
            (TLS_KEY.to_string(), key.serialize_pem().into_bytes()),
            (CA_CERT.to_string(), ca_cert.into_bytes()),
        ]),
        annotations: BTreeMap::from([
            (REQUEST_ANNOTATION.to_string(), fingerprint.to_string()),
            (RENEW_AFTER_ANNOTATION.to_string(), renew.to_string()),
        ]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(sans: &[&str]) -> Vec<Request> {
        vec![
            Request::Authority {
                secret: "root-ca".into(),
                cn: "kubernetes".into(),
            },
            Request::Certificate {
                secret: "kas-server".into(),
                cn: "kube-apiserver".into(),
                orgs: vec![],
                sans: sans.iter().map(|s| s.to_string()).collect(),
                usage: Usage::Server,
                issuer: "root-ca".into(),
            },
            Request::SigningKey {
                secret: "sa-signing-key".into(),
            },
        ]
    }

    fn stored(m: &Material) -> BTreeMap<String, Stored> {
        m.secrets.iter().cloned().collect()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("ts")
    }

    #[test]
    fn makes_everything_then_keeps_it() {
        let first = ensure(
            &requests(&["a.example", "10.0.0.1"]),
            &BTreeMap::new(),
            now(),
        )
        .expect("issue");
        assert_eq!(first.made, 3);
        assert!(
            first
                .pem("root-ca", CA_CERT)
                .starts_with("-----BEGIN CERTIFICATE")
        );
        assert_eq!(
            first.pem("kas-server", CA_CERT),
            first.pem("root-ca", CA_CERT)
        );
        assert!(first.pem("sa-signing-key", SA_PUB).contains("PUBLIC KEY"));
        let second = ensure(
            &requests(&["a.example", "10.0.0.1"]),
            &stored(&first),
            now(),
        )
        .expect("keep");
        assert_eq!(second.made, 0);
        assert_eq!(second.secrets, first.secrets);
        assert_eq!(
            second.renew_at,
            Some(now() - BACKDATE + LEAF_LIFETIME * 2 / 3)
        );
    }

    #[test]
    fn a_changed_name_or_a_due_renewal_issues_again_under_the_same_ca() {
        let first = ensure(&requests(&["a.example"]), &BTreeMap::new(), now()).expect("issue");
        let changed = ensure(&requests(&["b.example"]), &stored(&first), now()).expect("reissue");
        assert_eq!(changed.made, 1);
        assert_eq!(changed.get("root-ca"), first.get("root-ca"));
        assert_ne!(
            changed.pem("kas-server", TLS_CERT),
            first.pem("kas-server", TLS_CERT)
        );
        let later = first.renew_at.expect("renewal");
        let renewed = ensure(&requests(&["a.example"]), &stored(&first), later).expect("renew");
        assert_eq!(renewed.made, 1);
        assert!(renewed.renew_at.expect("next") > later);
    }

    #[test]
    fn a_new_ca_reissues_its_certificates() {
        let first = ensure(&requests(&["a.example"]), &BTreeMap::new(), now()).expect("issue");
        let mut lost = stored(&first);
        lost.remove("root-ca");
        let again = ensure(&requests(&["a.example"]), &lost, now()).expect("issue");
        assert_eq!(again.made, 2);
        assert_eq!(
            again.pem("kas-server", CA_CERT),
            again.pem("root-ca", CA_CERT)
        );
    }

    #[test]
    fn an_issuer_must_come_first() {
        let mut r = requests(&["a"]);
        r.swap(0, 1);
        let e = ensure(&r, &BTreeMap::new(), now()).expect_err("order");
        assert_eq!(
            e.to_string(),
            "certificate kas-server names CA root-ca, which is not requested before it"
        );
    }

    #[test]
    fn a_given_ca_issues_but_is_not_stored() {
        let theirs = ensure(&requests(&["a"])[..1], &BTreeMap::new(), now()).expect("ca");
        let ca = theirs.get("root-ca").expect("ca").clone();
        let r = vec![
            Request::Given {
                secret: "shared-etcd-ca".into(),
                ca: ca.clone(),
            },
            Request::Certificate {
                secret: "etcd-client".into(),
                cn: "clusters-a".into(),
                orgs: vec![],
                sans: vec![],
                usage: Usage::Client,
                issuer: "shared-etcd-ca".into(),
            },
        ];
        let m = ensure(&r, &BTreeMap::new(), now()).expect("issue");
        assert_eq!(m.made, 1);
        assert_eq!(
            m.secrets
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["etcd-client"]
        );
        assert_eq!(
            m.pem("etcd-client", CA_CERT),
            m.pem("shared-etcd-ca", CA_CERT)
        );
        let again = ensure(&r, &stored(&m), now()).expect("keep");
        assert_eq!(again.made, 0);
    }
}
