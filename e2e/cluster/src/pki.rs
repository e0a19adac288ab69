//! A cluster's PKI, minted when the lab starts it and written under its
//! directory as kubeadm lays it out (`pki/ca.crt`, `pki/apiserver.crt`, ...):
//! the cluster CA (serving certificates, client certificates, CSR signing),
//! the front-proxy CA and the client certificate kube-apiserver presents to
//! aggregated APIs, and the ServiceAccount signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// The front-proxy client's common name, the one name kube-apiserver accepts
/// identity headers from (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// A certificate authority that can issue more certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> Result<Authority, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Authority {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA key (PKCS#8 PEM).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A serving certificate for `sans` (DNS names and IP addresses).
    pub fn serving(&self, cn: &str, sans: &[String]) -> Result<Issued, Error> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate for user `cn` in `groups` (organizations).
    pub fn client(&self, cn: &str, groups: &[&str]) -> Result<Issued, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Result<Issued, Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// An issued certificate and its key (PEM).
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The files of a cluster's PKI.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    pub dir: PathBuf,
    /// The cluster CA (`ca.crt`, `ca.key`).
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// kube-apiserver's serving certificate (`apiserver.crt`, `.key`).
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    /// The front-proxy CA and kube-apiserver's client certificate for
    /// aggregated APIs.
    pub front_proxy_ca_cert: PathBuf,
    pub front_proxy_client_cert: PathBuf,
    pub front_proxy_client_key: PathBuf,
    /// The ServiceAccount token signing key (`sa.key`) and its public half
    /// (`sa.pub`).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

/// What [`generate`] hands back besides the files: the CAs, to issue more.
pub struct Pki {
    pub files: PkiFiles,
    pub ca: Authority,
    pub front_proxy_ca: Authority,
}

/// Mints a PKI for a cluster whose API server answers to `sans`, written
/// under `dir`.
pub fn generate(dir: &Path, sans: &[String]) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let ca = Authority::new("kubernetes")?;
    let front_proxy_ca = Authority::new("front-proxy-ca")?;
    let apiserver = ca.serving("kube-apiserver", sans)?;
    let proxy_client = front_proxy_ca.client(FRONT_PROXY_CLIENT, &[])?;
    let sa = KeyPair::generate()?;
    let files = PkiFiles {
        dir: dir.to_path_buf(),
        ca_cert: write(dir, "ca.crt", &ca.cert_pem())?,
        ca_key: write(dir, "ca.key", &ca.key_pem())?,
        apiserver_cert: write(dir, "apiserver.crt", &apiserver.cert_pem)?,
        apiserver_key: write(dir, "apiserver.key", &apiserver.key_pem)?,
        front_proxy_ca_cert: write(dir, "front-proxy-ca.crt", &front_proxy_ca.cert_pem())?,
        front_proxy_client_cert: write(dir, "front-proxy-client.crt", &proxy_client.cert_pem)?,
        front_proxy_client_key: write(dir, "front-proxy-client.key", &proxy_client.key_pem)?,
        sa_key: write(dir, "sa.key", &sa.serialize_pem())?,
        sa_pub: write(dir, "sa.pub", &sa.public_key_pem())?,
    };
    Ok(Pki {
        files,
        ca,
        front_proxy_ca,
    })
}

/// Writes `name` under `dir` (keys readable by the owner only).
pub fn write(dir: &Path, name: &str, pem: &str) -> Result<PathBuf, Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(Error::io("create", &path))?;
    file.write_all(pem.as_bytes())
        .map_err(Error::io("write", &path))?;
    Ok(path)
}
