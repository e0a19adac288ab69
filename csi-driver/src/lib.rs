//! `kubevirt-csi-driver`: the CSI driver `csi.kubevirt.io`. A guest PVC
//! becomes a CDI DataVolume in the tenant's infra namespace, attached to a
//! guest node by hotplugging it into the node's KubeVirt VM.
//!
//! - [`config`]: flags (those of the Go driver, plus ours) and the policy env.
//! - [`app`]: wiring from a [`config::Config`] to running services.
//! - [`controller`], [`identity`], [`node`]: the CSI services; [`bus`]: the
//!   disk bus both the controller and the node read from a volume.
//! - [`server`], [`http`], [`metrics`], [`health`], [`telemetry`]: serving;
//!   [`authority`]: the unix socket's HTTP/2 `:authority` made acceptable.

pub mod node;

pub mod app;
pub mod authority;
pub mod bus;
pub mod config;
pub mod controller;
pub mod endpoint;
pub mod enforcement;
pub mod error;
pub mod health;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod server;
pub mod telemetry;
