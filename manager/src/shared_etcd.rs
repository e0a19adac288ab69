//! A hosted cluster's place in a shared etcd: an etcd user and a role of
//! the same name (the control-plane namespace) that may read and write the
//! prefix `/<user>/` and nothing else. The manager administers the etcd as
//! its `root` user, with the client certificate of the credentials Secret;
//! the cluster's API server authenticates as its own user with a client
//! certificate the etcd's CA issues (common name = user) and keeps its keys
//! under the prefix, so clusters sharing the etcd never see each other's.
//!
//! [`ensure`] reads before it writes: when the user, its role and the
//! role's permission are in place, it writes nothing. [`remove`] deletes
//! the cluster's keys, its user and its role, and is idempotent. Both use
//! one connection per shared etcd and root identity ([`Connections`]), made
//! once and kept (the channel reconnects by itself when the etcd restarts).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use kubevirt_csi_proto::etcd::auth_client::AuthClient;
use kubevirt_csi_proto::etcd::kv_client::KvClient;
use kubevirt_csi_proto::etcd::permission::Type as PermissionType;
use kubevirt_csi_proto::etcd::{
    AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest,
    AuthUserAddRequest, AuthUserDeleteRequest, AuthUserGetRequest, AuthUserGrantRoleRequest,
    DeleteRangeRequest, Permission, UserAddOptions, prefix_end,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::desired::hosted::SharedEtcd;
use crate::pki::{CA_CERT, CA_KEY, Stored, TLS_CERT, TLS_KEY};

/// How long connecting and each call may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The credentials Secret's data: the etcd's CA (certificate and key) and
/// the root user's client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    ca_cert: Vec<u8>,
    ca_key: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EtcdError {
    #[error("shared etcd credentials Secret {0} not found")]
    SecretMissing(String),
    #[error("shared etcd credentials Secret {secret} has no {key:?}")]
    MissingKey { secret: String, key: &'static str },
    #[error("cannot reach the shared etcd at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("the shared etcd at {endpoints} refused to {action}: {reason}")]
    Refused {
        endpoints: String,
        action: String,
        reason: String,
    },
}

impl Credentials {
    /// The credentials in Secret `secret`'s data.
    pub fn from_data(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Self, EtcdError> {
        let get = |key: &'static str| {
            data.get(key)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| EtcdError::MissingKey {
                    secret: secret.to_string(),
                    key,
                })
        };
        Ok(Credentials {
            ca_cert: get(CA_CERT)?,
            ca_key: get(CA_KEY)?,
            cert: get(TLS_CERT)?,
            key: get(TLS_KEY)?,
        })
    }

    /// The etcd's CA, to issue the cluster's client certificate with.
    pub fn authority(&self) -> Stored {
        Stored {
            data: BTreeMap::from([
                (CA_CERT.to_string(), self.ca_cert.clone()),
                (CA_KEY.to_string(), self.ca_key.clone()),
            ]),
            annotations: BTreeMap::new(),
        }
    }
}

/// The administrative connections to shared etcds, by endpoints and root
/// identity.
#[derive(Default)]
pub struct Connections {
    admins: Mutex<HashMap<u64, Admin>>,
}

impl Connections {
    /// The connection to `shared` as the root user of `creds`, made on first use.
    async fn admin(&self, shared: &SharedEtcd, creds: &Credentials) -> Result<Admin, EtcdError> {
        let endpoints = shared.endpoints.join(",");
        let key = crate::hash::fnv1a_parts([
            endpoints.as_bytes(),
            &creds.ca_cert,
            &creds.cert,
            &creds.key,
        ]);
        if let Some(admin) = self.lock().get(&key) {
            return Ok(admin.clone());
        }
        let admin = Admin::connect(shared, creds).await?;
        self.lock().insert(key, admin.clone());
        Ok(admin)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Admin>> {
        self.admins.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An administrative connection to the shared etcd.
#[derive(Clone)]
struct Admin {
    auth: AuthClient<Channel>,
    kv: KvClient<Channel>,
    endpoints: String,
}

impl Admin {
    /// Connects to the first endpoint that answers, as the root user.
    async fn connect(shared: &SharedEtcd, creds: &Credentials) -> Result<Admin, EtcdError> {
        let endpoints = shared.endpoints.join(",");
        let unreachable = |reason: String| EtcdError::Unreachable {
            endpoints: endpoints.clone(),
            reason,
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&creds.ca_cert))
            .identity(Identity::from_pem(&creds.cert, &creds.key));
        let mut last = String::from("no endpoints");
        for url in &shared.endpoints {
            let endpoint = Endpoint::from_shared(url.clone())
                .and_then(|e| e.tls_config(tls.clone()))
                .map_err(|e| unreachable(format!("{url}: {}", chain(&e))))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT);
            match endpoint.connect().await {
                Ok(channel) => {
                    return Ok(Admin {
                        auth: AuthClient::new(channel.clone()),
                        kv: KvClient::new(channel),
                        endpoints,
                    });
                }
                Err(e) => last = format!("{url}: {}", chain(&e)),
            }
        }
        Err(unreachable(last))
    }

    /// Maps an etcd answer to `action`: a refusal, or the etcd unreachable.
    fn refused(&self, action: &str) -> impl FnOnce(tonic::Status) -> EtcdError + use<> {
        let (endpoints, action) = (self.endpoints.clone(), action.to_string());
        move |s| match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                EtcdError::Unreachable {
                    endpoints,
                    reason: s.message().to_string(),
                }
            }
            _ => EtcdError::Refused {
                endpoints,
                action,
                reason: s.message().to_string(),
            },
        }
    }
}

/// An error and its causes, in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// etcd answers a lookup of a user or role that does not exist with
/// FailedPrecondition, "etcdserver: user name not found" (or role).
fn is_not_found(s: &tonic::Status) -> bool {
    s.code() == Code::FailedPrecondition && s.message().ends_with("not found")
}

/// The permission the cluster's role holds: read and write of its prefix.
fn permission(shared: &SharedEtcd) -> Permission {
    let prefix = shared.prefix().into_bytes();
    Permission {
        perm_type: PermissionType::Readwrite as i32,
        range_end: prefix_end(&prefix),
        key: prefix,
    }
}

/// Makes the cluster's user and role, and grants the role its prefix, where
/// they are missing. Returns how many writes it made.
pub async fn ensure(
    connections: &Connections,
    shared: &SharedEtcd,
    creds: &Credentials,
) -> Result<usize, EtcdError> {
    let mut admin = connections.admin(shared, creds).await?;
    let user = shared.user.clone();
    let wanted = permission(shared);
    let mut writes = 0;

    let role = admin
        .auth
        .role_get(AuthRoleGetRequest { role: user.clone() })
        .await;
    let granted = match role {
        Ok(r) => r.into_inner().perm.contains(&wanted),
        Err(s) if is_not_found(&s) => {
            admin
                .auth
                .role_add(AuthRoleAddRequest { name: user.clone() })
                .await
                .map_err(admin.refused(&format!("add role {user}")))?;
            writes += 1;
            false
        }
        Err(s) => return Err(admin.refused(&format!("read role {user}"))(s)),
    };
    if !granted {
        admin
            .auth
            .role_grant_permission(AuthRoleGrantPermissionRequest {
                name: user.clone(),
                perm: Some(wanted),
            })
            .await
            .map_err(admin.refused(&format!("grant role {user} the prefix {}", shared.prefix())))?;
        writes += 1;
    }

    let found = admin
        .auth
        .user_get(AuthUserGetRequest { name: user.clone() })
        .await;
    let has_role = match found {
        Ok(u) => u.into_inner().roles.contains(&user),
        Err(s) if is_not_found(&s) => {
            // Client-certificate authentication only: no password.
            admin
                .auth
                .user_add(AuthUserAddRequest {
                    name: user.clone(),
                    password: String::new(),
                    options: Some(UserAddOptions { no_password: true }),
                })
                .await
                .map_err(admin.refused(&format!("add user {user}")))?;
            writes += 1;
            false
        }
        Err(s) => return Err(admin.refused(&format!("read user {user}"))(s)),
    };
    if !has_role {
        admin
            .auth
            .user_grant_role(AuthUserGrantRoleRequest {
                user: user.clone(),
                role: user.clone(),
            })
            .await
            .map_err(admin.refused(&format!("grant user {user} its role")))?;
        writes += 1;
    }
    Ok(writes)
}

/// Deletes the cluster's keys, then its user and its role. What is already
/// gone is not an error.
pub async fn remove(
    connections: &Connections,
    shared: &SharedEtcd,
    creds: &Credentials,
) -> Result<(), EtcdError> {
    let mut admin = connections.admin(shared, creds).await?;
    let user = shared.user.clone();
    let prefix = shared.prefix().into_bytes();
    let deleted = admin
        .kv
        .delete_range(DeleteRangeRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
        })
        .await
        .map_err(admin.refused(&format!("delete the keys under {}", shared.prefix())))?
        .into_inner()
        .deleted;
    match admin
        .auth
        .user_delete(AuthUserDeleteRequest { name: user.clone() })
        .await
    {
        Ok(_) => {}
        Err(s) if is_not_found(&s) => {}
        Err(s) => return Err(admin.refused(&format!("delete user {user}"))(s)),
    }
    match admin
        .auth
        .role_delete(AuthRoleDeleteRequest { role: user.clone() })
        .await
    {
        Ok(_) => {}
        Err(s) if is_not_found(&s) => {}
        Err(s) => return Err(admin.refused(&format!("delete role {user}"))(s)),
    }
    tracing::info!(
        user,
        keys = deleted,
        "removed the cluster from the shared etcd"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_what_is_missing() {
        let mut data: BTreeMap<String, Vec<u8>> = [CA_CERT, CA_KEY, TLS_CERT]
            .iter()
            .map(|k| (k.to_string(), b"x".to_vec()))
            .collect();
        assert_eq!(
            Credentials::from_data("root", &data)
                .expect_err("no key")
                .to_string(),
            "shared etcd credentials Secret root has no \"tls.key\""
        );
        data.insert(TLS_KEY.to_string(), b"k".to_vec());
        let creds = Credentials::from_data("root", &data).expect("complete");
        assert_eq!(creds.authority().data.len(), 2);
    }
}
