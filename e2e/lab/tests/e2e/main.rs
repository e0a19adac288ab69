//! The lab's end-to-end tests, one test binary (linking one binary instead
//! of one per file keeps the build small and quick). Each module is one
//! scenario family and starts its own lab; the `*_support` modules are the
//! harnesses they share. Run one family with
//! `cargo test -p kubevirt-lab --test e2e storage_pod::`.
//!
//! The daemons run as real processes: build the workspace's binaries first
//! (`cargo build --workspace --all-targets`, as `scripts/test.sh` does).

mod ccm_support;
mod common;
mod csi_support;
mod fault_support;
mod manager_support;
mod net_support;
mod storage_support;

mod bench_smoke;
mod ccm_eps;
mod ccm_leader;
mod ccm_nodes;
mod ccm_scale;
mod ccm_service;
mod ccm_tenants;
mod clients;
mod csi_bad_input;
mod csi_conformance;
mod csi_lifecycle;
mod csi_sanity;
mod csi_snapshot_api;
mod fault_api_errors;
mod fault_ccm;
mod fault_csi_controller;
mod fault_hosted;
mod fault_manager;
mod lab_kubelet;
mod lab_start;
mod lab_up;
mod manager_bad_input;
mod manager_hosted;
mod manager_hostedcluster;
mod manager_join;
mod manager_leader;
mod manager_nodepool;
mod manager_scale;
mod manager_tenants;
mod net_ingress;
mod rbac_tenants;
mod sim_cdi;
mod sim_devices;
mod sim_hotplug;
mod sim_kubevirt;
mod sim_lb;
mod sim_snapshot;
mod storage_cleanup;
mod storage_crowd;
mod storage_expand;
mod storage_multinode;
mod storage_pod;
mod storage_sharing;
mod storage_snapshot;
mod suite_outage;
mod watchdog;
