//! KubeVirt's virt-api for the hotplug subresources of
//! `subresources.kubevirt.io/v1`: an HTTPS server answering
//! `PUT .../namespaces/{ns}/virtualmachines/{name}/addvolume|removevolume` and
//! the same under `virtualmachineinstances`. The lab registers it on the infra
//! API server as an aggregated API (the APIService
//! `v1.subresources.kubevirt.io`, as KubeVirt does), so clients reach it
//! through the API server, which authenticates and authorizes them and
//! passes the request on with its front-proxy client certificate, the only
//! client this server answers.
//!
//! Requests are validated like KubeVirt validates them (400 for a bad body,
//! 404 for an unknown VM/VMI or volume, 409 for a volume name already in use
//! or a VMI that is not running) and answered with a metav1 Status on error,
//! 202 with an empty body on success. addvolume on a VM adds the disk and
//! volume to the VM template, records a `status.volumeRequests` entry and, if
//! the VM's VMI runs, adds them to the VMI too; on a VMI it changes only the
//! VMI. removevolume undoes the same.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResource, APIResourceList};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use kubevirt_infra::hotplug::{AddVolumeOptions, GROUP, RemoveVolumeOptions, VERSION};
use kubevirt_infra::kubevirt::{
    DataVolumeSource, PersistentVolumeClaimSource, VirtualMachine, VirtualMachineInstance,
    VirtualMachineInstanceSpec, Volume, phase,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// How often a read-modify-write is retried on a resourceVersion conflict.
const CONFLICT_RETRIES: usize = 20;

/// The Service name and namespace KubeVirt gives virt-api; its serving
/// certificate names `virt-api.kubevirt.svc`, which kube-apiserver checks.
pub const SERVICE: &str = "virt-api";
pub const NAMESPACE: &str = "kubevirt";

/// A running virt-api server.
#[derive(Debug)]
pub struct VirtApi {
    addr: SocketAddr,
    ca_pem: String,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl VirtApi {
    /// Serves the hotplug API over TLS on `127.0.0.1:<free port>`, acting
    /// on the cluster behind `client`. Like virt-api behind the aggregator,
    /// it answers only clients with a certificate of `front_proxy_ca_pem`
    /// (kube-apiserver's front-proxy client), which authenticated and
    /// authorized the request before passing it on.
    pub async fn start(client: Client, front_proxy_ca_pem: &str) -> Result<VirtApi, Error> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(Error::io("bind", "127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("local address of", "127.0.0.1:0"))?;
        let (acceptor, ca_pem) = tls::acceptor(front_proxy_ca_pem)?;
        let stop = CancellationToken::new();
        let app = router(client);
        let s = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(e) => {
                            tracing::warn!("virt-api accept: {e}");
                            continue;
                        }
                    },
                };
                let (acceptor, app, s) = (acceptor.clone(), app.clone(), s.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            tracing::debug!("virt-api TLS handshake: {e}");
                            return;
                        }
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        tracing::info!(%addr, "virt-api serving");
        Ok(VirtApi {
            addr,
            ca_pem,
            stop,
            task: Some(task),
        })
    }

    /// The port to register in the APIService.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The CA of the serving certificate (the APIService's `caBundle`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Stops serving and waits for the server task to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for VirtApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

mod tls {
    //! virt-api's serving certificate (its own CA, minted at start) and the
    //! client-certificate check against the front-proxy CA.

    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};

    use super::{NAMESPACE, SERVICE};
    use crate::Error;

    fn tls_error(what: &str) -> impl FnOnce(String) -> Error + '_ {
        move |e| Error::Tls(format!("virt-api {what}: {e}"))
    }

    /// The acceptor and the PEM of the CA that signed the serving certificate.
    pub fn acceptor(front_proxy_ca_pem: &str) -> Result<(TlsAcceptor, String), Error> {
        let cert_error = |e: rcgen::Error| Error::Tls(format!("virt-api certificate: {e}"));
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "kubevirt.io");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(cert_error)?)
            .map_err(cert_error)?;
        let mut params = CertificateParams::new(vec![
            format!("{SERVICE}.{NAMESPACE}.svc"),
            "localhost".to_string(),
        ])
        .map_err(cert_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{SERVICE}.{NAMESPACE}.svc"));
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params.signed_by(&key, &ca).map_err(cert_error)?;

        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(front_proxy_ca_pem.as_bytes()) {
            let der = der.map_err(|e| tls_error("front-proxy CA")(e.to_string()))?;
            roots
                .add(der)
                .map_err(|e| tls_error("front-proxy CA")(e.to_string()))?;
        }
        let provider = Arc::new(crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| tls_error("client verifier")(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("protocols")(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| tls_error("serving certificate")(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((TlsAcceptor::from(Arc::new(config)), ca.pem()))
    }
}

/// The discovery entries of `subresources.kubevirt.io/v1` this server answers.
pub fn api_resources() -> Vec<APIResource> {
    ["virtualmachines", "virtualmachineinstances"]
        .into_iter()
        .flat_map(|plural| {
            ["addvolume", "removevolume"]
                .into_iter()
                .map(move |verb| APIResource {
                    name: format!("{plural}/{verb}"),
                    namespaced: true,
                    kind: String::new(),
                    singular_name: String::new(),
                    verbs: vec!["update".to_string()],
                    ..APIResource::default()
                })
        })
        .collect()
}

/// The virt-api routes, for serving elsewhere.
pub fn router(client: Client) -> Router {
    let base = format!("/apis/{GROUP}/{VERSION}");
    Router::new()
        .route(&base, get(discovery))
        .route(
            &format!("{base}/namespaces/{{ns}}/{{resource}}/{{name}}/{{verb}}"),
            put(handle),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(client)
}

async fn discovery() -> Response {
    let list = APIResourceList {
        group_version: format!("{GROUP}/{VERSION}"),
        resources: api_resources(),
    };
    (StatusCode::OK, axum::Json(list)).into_response()
}

async fn handle(
    State(client): State<Client>,
    Path((ns, resource, name, verb)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    // A request runs to completion even when its client goes away (a
    // killed CSI controller): KubeVirt never leaves a volume on the VM but
    // not on its running VMI, and neither may an abandoned handler here.
    let work = {
        let (ns, resource, name, verb) = (ns.clone(), resource.clone(), name.clone(), verb.clone());
        tokio::spawn(async move { apply(&client, &ns, &resource, &name, &verb, &body).await })
    };
    let result = work
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("hotplug request task: {e}"))));
    match result {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            tracing::debug!(%ns, %resource, %name, %verb, code = e.code, "hotplug request refused: {}", e.message);
            e.into_response()
        }
    }
}

async fn apply(
    client: &Client,
    ns: &str,
    resource: &str,
    name: &str,
    verb: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    match (resource, verb) {
        ("virtualmachines", "addvolume") => match parse_add(body) {
            Ok(opts) => add_to_vm(client, ns, name, &opts).await,
            Err(e) => Err(e),
        },
        ("virtualmachineinstances", "addvolume") => match parse_add(body) {
            Ok(opts) => add_to_vmi(client, ns, name, &opts).await,
            Err(e) => Err(e),
        },
        ("virtualmachines", "removevolume") => match parse_remove(body) {
            Ok(opts) => remove_from_vm(client, ns, name, &opts).await,
            Err(e) => Err(e),
        },
        ("virtualmachineinstances", "removevolume") => match parse_remove(body) {
            Ok(opts) => remove_from_vmi(client, ns, name, &opts).await,
            Err(e) => Err(e),
        },
        _ => Err(ApiError::not_found(format!(
            "the server could not find the requested resource {resource}/{verb}"
        ))),
    }
}

/// A refusal, answered as a metav1 Status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: message.into(),
        }
    }
    fn conflict(message: impl Into<String>) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: message.into(),
        }
    }
    fn internal(message: impl Into<String>) -> Self {
        Self {
            code: 500,
            reason: "InternalError",
            message: message.into(),
        }
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.is_conflict() => ApiError::conflict(s.message),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::internal(format!("encoding the change: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(body)).into_response()
    }
}

// === validation ===

/// Parses and validates an addvolume body as KubeVirt does; the disk takes the volume's name.
pub fn parse_add(body: &[u8]) -> Result<AddVolumeOptions, ApiError> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "Can not unmarshal Request body to struct, error: {e}"
        ))
    })?;
    if raw
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(
            "AddVolumeOptions requires name to be set",
        ));
    }
    if raw.get("disk").is_none_or(Value::is_null) {
        return Err(ApiError::bad_request(
            "AddVolumeOptions requires disk to not be nil",
        ));
    }
    let source = raw.get("volumeSource").filter(|v| !v.is_null());
    let Some(source) = source else {
        return Err(ApiError::bad_request(
            "AddVolumeOptions requires VolumeSource to not be nil",
        ));
    };
    let set = |k: &str| source.get(k).is_some_and(|v| !v.is_null());
    if set("dataVolume") == set("persistentVolumeClaim") {
        return Err(ApiError::bad_request(
            "AddVolumeOptions requires exactly one of dataVolume or persistentVolumeClaim as volume source",
        ));
    }
    let mut opts: AddVolumeOptions = serde_json::from_value(raw).map_err(|e| {
        ApiError::bad_request(format!(
            "Can not unmarshal Request body to struct, error: {e}"
        ))
    })?;
    if opts
        .volume_source
        .data_volume
        .as_ref()
        .is_some_and(|dv| dv.name.is_empty())
    {
        return Err(ApiError::bad_request(
            "AddVolumeOptions requires the dataVolume name to be set",
        ));
    }
    if opts
        .volume_source
        .persistent_volume_claim
        .as_ref()
        .is_some_and(|p| p.claim_name.is_empty())
    {
        return Err(ApiError::bad_request(
            "AddVolumeOptions requires the persistentVolumeClaim claimName to be set",
        ));
    }
    if let Some(bus) = opts.disk.disk.as_ref().and_then(|d| d.bus.as_deref())
        && !matches!(bus, "scsi" | "virtio" | "sata")
    {
        return Err(ApiError::bad_request(format!(
            "hotplugged Disk {} does not use a scsi, virtio or sata bus: {bus}",
            opts.name
        )));
    }
    opts.disk.name = opts.name.clone();
    Ok(opts)
}

/// Parses and validates a removevolume body.
pub fn parse_remove(body: &[u8]) -> Result<RemoveVolumeOptions, ApiError> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "Can not unmarshal Request body to struct, error: {e}"
        ))
    })?;
    if raw
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(
            "RemoveVolumeOptions requires name to be set",
        ));
    }
    serde_json::from_value(raw).map_err(|e| {
        ApiError::bad_request(format!(
            "Can not unmarshal Request body to struct, error: {e}"
        ))
    })
}

/// The hotpluggable volume an addvolume request adds.
pub fn hotplug_volume(opts: &AddVolumeOptions) -> Volume {
    Volume {
        name: opts.name.clone(),
        data_volume: opts
            .volume_source
            .data_volume
            .as_ref()
            .map(|dv| DataVolumeSource {
                name: dv.name.clone(),
                hotpluggable: true,
            }),
        persistent_volume_claim: opts
            .volume_source
            .persistent_volume_claim
            .as_ref()
            .map(|p| PersistentVolumeClaimSource {
                claim_name: p.claim_name.clone(),
                read_only: p.read_only,
                hotpluggable: true,
            }),
        extra: Default::default(),
    }
}

/// Adds the request's disk and volume to a VMI spec (`false` if it has that volume already).
pub fn add_to_spec(spec: &mut VirtualMachineInstanceSpec, opts: &AddVolumeOptions) -> bool {
    if spec.volumes.iter().any(|v| v.name == opts.name) {
        return false;
    }
    spec.volumes.push(hotplug_volume(opts));
    spec.domain.devices.disks.retain(|d| d.name != opts.name);
    spec.domain.devices.disks.push(opts.disk.clone());
    true
}

/// Removes a volume and its disk from a VMI spec (`false` if absent).
pub fn remove_from_spec(spec: &mut VirtualMachineInstanceSpec, name: &str) -> bool {
    let before = spec.volumes.len();
    spec.volumes.retain(|v| v.name != name);
    spec.domain.devices.disks.retain(|d| d.name != name);
    spec.volumes.len() != before
}

fn dry_run(list: &[String]) -> bool {
    list.iter().any(|d| d == "All")
}

// === handlers ===

fn vm_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("virtualmachines.kubevirt.io \"{name}\" not found"))
}

fn vmi_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "virtualmachineinstances.kubevirt.io \"{name}\" not found"
    ))
}

async fn add_to_vm(
    client: &Client,
    ns: &str,
    name: &str,
    opts: &AddVolumeOptions,
) -> Result<(), ApiError> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let in_use = || {
        ApiError::conflict(format!(
            "Unable to add volume [{}] because volume with that name already exists",
            opts.name
        ))
    };
    let written = modify(&vms, name, false, |vm| {
        if vm.has_volume(&opts.name) {
            return Err(in_use());
        }
        if dry_run(&opts.dry_run) {
            return Ok(false);
        }
        let template = vm.spec.template.get_or_insert_with(Default::default);
        Ok(add_to_spec(&mut template.spec, opts))
    })
    .await?;
    match written {
        Modified::Missing => return Err(vm_not_found(name)),
        Modified::Unchanged => return Ok(()),
        Modified::Written(_) => {}
    }
    let request = json!({"addVolumeOptions": opts});
    modify(&vms, name, true, |vm| {
        vm.status
            .get_or_insert_with(Default::default)
            .volume_requests
            .push(request.clone());
        Ok(true)
    })
    .await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    modify(&vmis, name, false, |vmi| {
        Ok(vmi.phase() == phase::RUNNING && add_to_spec(&mut vmi.spec, opts))
    })
    .await?;
    tracing::info!(vm = %format!("{ns}/{name}"), volume = %opts.name, "volume added to VM");
    Ok(())
}

async fn add_to_vmi(
    client: &Client,
    ns: &str,
    name: &str,
    opts: &AddVolumeOptions,
) -> Result<(), ApiError> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let written = modify(&vmis, name, false, |vmi| {
        if vmi.phase() != phase::RUNNING {
            return Err(ApiError::conflict(format!("VMI {name} is not running")));
        }
        if vmi.has_volume(&opts.name) {
            return Err(ApiError::conflict(format!(
                "Unable to add volume [{}] because volume with that name already exists",
                opts.name
            )));
        }
        Ok(!dry_run(&opts.dry_run) && add_to_spec(&mut vmi.spec, opts))
    })
    .await?;
    if matches!(written, Modified::Missing) {
        return Err(vmi_not_found(name));
    }
    tracing::info!(vmi = %format!("{ns}/{name}"), volume = %opts.name, "volume added to VMI");
    Ok(())
}

async fn remove_from_vm(
    client: &Client,
    ns: &str,
    name: &str,
    opts: &RemoveVolumeOptions,
) -> Result<(), ApiError> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let written = modify(&vms, name, false, |vm| {
        let Some(volume) = vm.template_volumes().iter().find(|v| v.name == opts.name) else {
            return Err(ApiError::not_found(format!(
                "Unable to remove volume [{}] because it does not exist",
                opts.name
            )));
        };
        if !volume.is_hotpluggable() {
            return Err(ApiError::bad_request(format!(
                "Unable to remove volume [{}] because it is not hotpluggable",
                opts.name
            )));
        }
        if dry_run(&opts.dry_run) {
            return Ok(false);
        }
        Ok(vm
            .spec
            .template
            .as_mut()
            .is_some_and(|t| remove_from_spec(&mut t.spec, &opts.name)))
    })
    .await?;
    match written {
        Modified::Missing => return Err(vm_not_found(name)),
        Modified::Unchanged => return Ok(()),
        Modified::Written(_) => {}
    }
    let request = json!({"removeVolumeOptions": opts});
    modify(&vms, name, true, |vm| {
        vm.status
            .get_or_insert_with(Default::default)
            .volume_requests
            .push(request.clone());
        Ok(true)
    })
    .await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    modify(&vmis, name, false, |vmi| {
        let hotplugged = vmi
            .spec
            .volumes
            .iter()
            .any(|v| v.name == opts.name && v.is_hotpluggable());
        Ok(hotplugged && remove_from_spec(&mut vmi.spec, &opts.name))
    })
    .await?;
    tracing::info!(vm = %format!("{ns}/{name}"), volume = %opts.name, "volume removed from VM");
    Ok(())
}

async fn remove_from_vmi(
    client: &Client,
    ns: &str,
    name: &str,
    opts: &RemoveVolumeOptions,
) -> Result<(), ApiError> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let written = modify(&vmis, name, false, |vmi| {
        let Some(volume) = vmi.spec.volumes.iter().find(|v| v.name == opts.name) else {
            return Err(ApiError::not_found(format!(
                "Unable to remove volume [{}] because it does not exist",
                opts.name
            )));
        };
        if !volume.is_hotpluggable() {
            return Err(ApiError::bad_request(format!(
                "Unable to remove volume [{}] because it is not hotpluggable",
                opts.name
            )));
        }
        Ok(!dry_run(&opts.dry_run) && remove_from_spec(&mut vmi.spec, &opts.name))
    })
    .await?;
    if matches!(written, Modified::Missing) {
        return Err(vmi_not_found(name));
    }
    tracing::info!(vmi = %format!("{ns}/{name}"), volume = %opts.name, "volume removed from VMI");
    Ok(())
}

/// What a read-modify-write did.
enum Modified<K> {
    Missing,
    Unchanged,
    Written(K),
}

/// Gets `name`, lets `change` edit it (returning whether to write), and
/// replaces it (its status when `status`), retrying on conflicts.
async fn modify<K>(
    api: &Api<K>,
    name: &str,
    status: bool,
    mut change: impl FnMut(&mut K) -> Result<bool, ApiError>,
) -> Result<Modified<K>, ApiError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    for _ in 0..CONFLICT_RETRIES {
        let Some(mut obj) = crate::error::not_found_ok(api.get(name).await)? else {
            return Ok(Modified::Missing);
        };
        let before = status.then(|| serde_json::to_value(&obj)).transpose()?;
        if !change(&mut obj)? {
            return Ok(Modified::Unchanged);
        }
        let written = match before {
            // virt-api may only patch a VM's status: the change as a JSON
            // patch, applied only to the version it was made on.
            Some(before) => {
                let after = serde_json::to_value(&obj)?;
                let rv = obj.meta().resource_version.clone().unwrap_or_default();
                let mut ops =
                    vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
                ops.extend(
                    serde_json::to_value(json_patch::diff(&before, &after))?
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|op| {
                            op["path"]
                                .as_str()
                                .is_some_and(|p| p.starts_with("/status"))
                        }),
                );
                let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
                api.patch_status(name, &PatchParams::default(), &Patch::Json::<()>(patch))
                    .await
            }
            None => api.replace(name, &PostParams::default(), &obj).await,
        };
        match written {
            Ok(obj) => return Ok(Modified::Written(obj)),
            Err(kube::Error::Api(s)) if s.is_conflict() => continue,
            // The patch no longer applies (its version test failed): the
            // object changed meanwhile.
            Err(kube::Error::Api(s)) if s.code == 422 => continue,
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(Modified::Missing),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(format!(
        "{name} kept changing; giving up after {CONFLICT_RETRIES} attempts"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_bodies_are_validated_like_kubevirt() {
        let ok = parse_add(br#"{"name":"pvc-1","disk":{"name":"other","disk":{"bus":"scsi"},"serial":"u"},
                               "volumeSource":{"dataVolume":{"name":"pvc-1","hotpluggable":true}}}"#)
            .expect("valid body");
        assert_eq!(ok.disk.name, "pvc-1", "the disk takes the volume's name");
        let bad = |body: &str| {
            parse_add(body.as_bytes())
                .err()
                .map(|e| (e.code, e.message))
        };
        assert_eq!(bad("not json").map(|e| e.0), Some(400));
        assert_eq!(
            bad(r#"{"disk":{},"volumeSource":{"dataVolume":{"name":"x"}}}"#).map(|e| e.1),
            Some("AddVolumeOptions requires name to be set".into())
        );
        assert_eq!(
            bad(r#"{"name":"x","volumeSource":{"dataVolume":{"name":"x"}}}"#).map(|e| e.1),
            Some("AddVolumeOptions requires disk to not be nil".into())
        );
        assert_eq!(
            bad(r#"{"name":"x","disk":{"name":"x"}}"#).map(|e| e.0),
            Some(400)
        );
        assert_eq!(
            bad(r#"{"name":"x","disk":{"name":"x"},"volumeSource":{}}"#).map(|e| e.0),
            Some(400)
        );
        assert_eq!(
            bad(r#"{"name":"x","disk":{"name":"x"},"volumeSource":{"dataVolume":{"name":"x"},"persistentVolumeClaim":{"claimName":"x"}}}"#).map(|e| e.0),
            Some(400)
        );
        assert_eq!(bad(r#"{"name":"x","disk":{"name":"x","disk":{"bus":"ide"}},"volumeSource":{"dataVolume":{"name":"x"}}}"#).map(|e| e.0), Some(400));
        assert_eq!(parse_remove(b"{}").err().map(|e| e.code), Some(400));
        assert_eq!(
            parse_remove(br#"{"name":"pvc-1"}"#)
                .map(|o| o.name)
                .ok()
                .as_deref(),
            Some("pvc-1")
        );
    }

    #[test]
    fn specs_gain_and_lose_hotplugged_volumes() {
        let opts = AddVolumeOptions::data_volume("pvc-1", "scsi", "serial-1");
        let mut spec = VirtualMachineInstanceSpec::default();
        assert!(add_to_spec(&mut spec, &opts));
        assert!(!add_to_spec(&mut spec, &opts), "second add is refused");
        assert!(spec.volumes[0].is_hotpluggable());
        assert_eq!(
            spec.domain.devices.disks[0].serial.as_deref(),
            Some("serial-1")
        );
        assert!(remove_from_spec(&mut spec, "pvc-1"));
        assert!(spec.volumes.is_empty() && spec.domain.devices.disks.is_empty());
        assert!(!remove_from_spec(&mut spec, "pvc-1"));
        assert_eq!(api_resources().len(), 4);
    }
}
