//! A Kubernetes-API-compatible HTTP server for the lab, as a library: one in-memory
//! store behind the real REST and watch protocol (discovery, CRUD, all patch types,
//! status and scale subresources, finalizers, garbage collection, namespaces, CRDs,
//! selectors, pagination, bookmarks), bearer-token authentication, request counters
//! and fault injection. kube-rs clients and `kubectl` work against it unchanged.
//!
//! One port serves plain HTTP ([`ApiServer::url`], used by [`ApiServer::client`]) and
//! TLS with a lab-only CA ([`ApiServer::https_url`], used by the kubeconfigs, because
//! client-go sends bearer tokens only over https). Fault control and request counters
//! are also served under `/lab/` for other processes (admin token only):
//! `GET|DELETE /lab/counters`, `GET|POST /lab/faults` ([`FaultSpec`]) and
//! `POST /lab/tokens`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lab_apiserver::Error> {
//! let server = lab_apiserver::ApiServer::start(Default::default()).await?;
//! let client = server.client().await;
//! # drop(client);
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod auth;
mod config;
mod controllers;
mod counters;
mod error;
mod faults;
mod http;
mod kubeconfig;
mod machinery;
mod meta;
mod ops;
mod resources;
mod server;
mod store;
mod tls;

pub use config::ApiServerConfig;
pub use counters::{CounterEntry, RequestCounters};
pub use error::Error;
pub use faults::{ErrorRate, FaultSpec, Faults};
pub use server::ApiServer;
