//! `kubevirt-cloud-controller-manager`: the cloud controller manager of
//! Kubernetes clusters whose nodes are KubeVirt virtual machines, a drop-in
//! replacement for kubevirt/cloud-provider-kubevirt (same flags, cloud
//! config, object names and labels) written as kube-rs controllers.
//!
//! Pure translations live in [`loadbalancer`], [`endpoints`] and
//! [`instances`]; the controllers that apply them in [`controllers`]; the
//! shared watch caches in [`watch`]; process plumbing in [`app`], [`cli`],
//! [`config`], [`clients`], [`leader`], [`serve`] and [`metrics`].

pub mod app;
pub mod cli;
pub mod clients;
pub mod config;
pub mod controllers;
pub mod endpoints;
pub mod error;
pub mod fresh;
pub mod instances;
pub mod leader;
pub mod loadbalancer;
pub mod manager;
pub mod metrics;
pub mod serve;
pub mod validate;
pub mod watch;
