//! Pure Kubernetes API machinery over `serde_json::Value` for the lab's API server:
//! label and field selectors, the three patch types, server-side apply with managed
//! fields, static defaulting and Service IP/port allocation, name and metadata
//! validation. No I/O, no async; every function is deterministic given its inputs.
//!
//! Behaviour and messages follow k8s.io/apimachinery and kube-apiserver 1.33, so a
//! client sees the answers (and the errors) a real cluster gives.

mod json;

pub mod apply;
pub mod defaults;
pub mod patch;
pub mod selector;
pub mod validation;
